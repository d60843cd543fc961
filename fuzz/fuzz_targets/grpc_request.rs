//! The gRPC rate limit service's input: any bytes decoded as a
//! `RateLimitRequest` (as tonic decodes a message), then
//! `service::ratelimit::check_from_proto`, the one conversion to the
//! engine's `Check` that the gRPC service and the HTTP check API share.
//!
//! Must hold: a request is accepted exactly when it keeps the documented
//! bounds (a domain, 1 to `MAX_DESCRIPTORS` descriptors, each with 1 to
//! `MAX_ENTRIES` entries, a key in every entry, at most `MAX_ENTRY_BYTES`
//! of key and value, a known unit in an own limit), and an accepted one
//! keeps every descriptor and entry in order with the proto's hit
//! semantics: the request's `hits_addend` 0 means 1, and a descriptor's
//! own `hits_addend` (0 included: check only) overrides it.
#![no_main]

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tollgate::service::ratelimit::{
    check_from_proto, MAX_DESCRIPTORS, MAX_ENTRIES, MAX_ENTRY_BYTES,
};

/// Units `envoy.type.v3.RateLimitUnit` names (1 to 6), and 7 (`WEEK` in
/// newer protos and in the response's `Unit`).
fn known_unit(unit: i32) -> bool {
    (1..=7).contains(&unit)
}

fn within_bounds(req: &RateLimitRequest) -> bool {
    !req.domain.trim().is_empty()
        && (1..=MAX_DESCRIPTORS).contains(&req.descriptors.len())
        && req.descriptors.iter().all(|d| {
            (1..=MAX_ENTRIES).contains(&d.entries.len())
                && d.entries
                    .iter()
                    .all(|e| !e.key.is_empty() && e.key.len() + e.value.len() <= MAX_ENTRY_BYTES)
                && d.limit.as_ref().is_none_or(|l| known_unit(l.unit))
        })
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = RateLimitRequest::decode(data) else {
        return;
    };
    let expected = within_bounds(&req);
    let check = match check_from_proto(req.clone()) {
        Ok(c) => c,
        Err(e) => {
            assert!(!expected, "refused a request within bounds: {e}: {req:?}");
            assert!(!e.is_empty());
            return;
        }
    };
    assert!(expected, "accepted a request out of bounds: {req:?}");
    assert_eq!(check.domain, req.domain);
    assert_eq!(check.hits, u64::from(req.hits_addend.max(1)), "0 means 1");
    assert!(check.hits >= 1);
    assert_eq!(check.descriptors.len(), req.descriptors.len());
    assert!(check.descriptors.len() <= MAX_DESCRIPTORS);
    for (d, p) in check.descriptors.iter().zip(&req.descriptors) {
        assert!(!d.entries.is_empty() && d.entries.len() <= MAX_ENTRIES);
        let sent: Vec<(&str, &str)> = p
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        let kept: Vec<(&str, &str)> = d
            .entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(kept, sent, "entries kept as sent, in order");
        for (k, v) in &d.entries {
            assert!(!k.is_empty() && k.len() + v.len() <= MAX_ENTRY_BYTES);
        }
        // The descriptor's own hits_addend overrides the request's, 0 too.
        assert_eq!(d.hits, p.hits_addend.as_ref().map(|h| h.value));
        let cost = d.hits.unwrap_or(check.hits);
        match &p.hits_addend {
            Some(h) => assert_eq!(cost, h.value),
            None => assert_eq!(cost, u64::from(req.hits_addend.max(1))),
        }
        assert_eq!(d.negative, p.is_negative_hits);
        match (&d.limit, &p.limit) {
            (None, None) => {}
            (Some(l), Some(o)) => assert_eq!(l.amount, u64::from(o.requests_per_unit)),
            (l, o) => panic!("own limit {l:?} from {o:?}"),
        }
    }
});
