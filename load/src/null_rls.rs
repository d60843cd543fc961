//! `null-rls`: a rate limit service that answers OK to every call at once
//! and does nothing else. It is the floor under tollgate's rate limit
//! figures through Envoy: Envoy + this server is what any rate limit
//! service costs on the same Envoy configuration (the gRPC call per
//! request, tonic's framing), so the gap between it and tollgate is what
//! tollgate's own work adds.

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::{Request, Response, Status};

use crate::null_ext_proc::NullArgs;

/// The do-nothing rate limit service: OK, one OK status per descriptor.
struct Null;

#[tonic::async_trait]
impl RateLimitService for Null {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let statuses = request
            .into_inner()
            .descriptors
            .iter()
            .map(|_| DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses,
            ..Default::default()
        }))
    }
}

/// Serves until killed, on the caller's (single-threaded) runtime, as
/// tollgate serves by default.
pub async fn serve(args: &NullArgs) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(Null))
        .serve(args.listen)
        .await?;
    Ok(())
}
