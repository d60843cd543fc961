//! `null-ext-proc`: an ext_proc server that answers every message at once
//! and does nothing else. It is the floor under tollgate's ext_proc
//! figures: Envoy + this server is what any ext_proc service costs on the
//! same Envoy configuration (the gRPC stream per request, one round trip
//! per message, tonic's framing), so the gap between it and tollgate is
//! what tollgate's own work adds.

use envoy_types::pb::envoy::service::ext_proc::v3::{
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    processing_request::Request as Message,
    processing_response::Response as Reply,
    BodyResponse, HeadersResponse, ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use std::{net::SocketAddr, pin::Pin};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Where a do-nothing server listens.
#[derive(clap::Args, Debug)]
pub struct NullArgs {
    /// `host:port` of the gRPC listener.
    #[arg(long)]
    pub listen: SocketAddr,
}

/// The do-nothing processor: each message gets the empty answer of its kind.
struct Null;

type Replies = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Null {
    type ProcessStream = Replies;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Replies>, Status> {
        let replies = request.into_inner().filter_map(|message| {
            let reply = match message.ok()?.request? {
                Message::RequestHeaders(_) => Reply::RequestHeaders(HeadersResponse::default()),
                Message::ResponseHeaders(_) => Reply::ResponseHeaders(HeadersResponse::default()),
                Message::RequestBody(_) => Reply::RequestBody(BodyResponse::default()),
                Message::ResponseBody(_) => Reply::ResponseBody(BodyResponse::default()),
                Message::RequestTrailers(_) => Reply::RequestTrailers(TrailersResponse::default()),
                Message::ResponseTrailers(_) => {
                    Reply::ResponseTrailers(TrailersResponse::default())
                }
            };
            Some(Ok(ProcessingResponse {
                response: Some(reply),
                ..Default::default()
            }))
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

/// Serves until killed, on the caller's (single-threaded) runtime, as
/// tollgate serves by default.
pub async fn serve(args: &NullArgs) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(ExternalProcessorServer::new(Null))
        .serve(args.listen)
        .await?;
    Ok(())
}
