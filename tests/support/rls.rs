//! The rate limit request most end-to-end tests send: one descriptor
//! with one `tenant` entry, one hit.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

/// `domain` with the descriptor `tenant=<tenant>`, one hit
/// (`hits_addend` 0, which the protocol reads as 1).
pub fn tenant_request(domain: &str, tenant: &str) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "tenant".into(),
                value: tenant.into(),
            }],
            ..Default::default()
        }],
        hits_addend: 0,
    }
}
