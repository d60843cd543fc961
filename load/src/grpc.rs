//! Rate limit service load: `ShouldRateLimit` calls straight to tollgate's
//! gRPC port, spread over a few HTTP/2 connections as Envoy does, each call
//! carrying one or more descriptors drawn from many distinct keys.
//!
//! The client is plain `h2` with the request bodies encoded up front, not a
//! tonic channel: like Envoy's C++ client it spends little CPU per call, so
//! on a machine it shares with tollgate the figures measure tollgate, not
//! the load tool.

use crate::pace::Pace;
use crate::stats::{Outcome, Tally};
use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use h2::client::SendRequest;
use http::{Request, Uri};
use prost::Message;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpStream;

const PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// `tollgate-load grpc`: what to ask and how.
#[derive(Args, Debug, Clone)]
pub struct GrpcArgs {
    /// gRPC address of tollgate.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub target: String,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    #[arg(long, default_value = "bench")]
    pub domain: String,
    /// Descriptor key; each descriptor uses one of `--keys` distinct values.
    #[arg(long, default_value = "tenant")]
    pub key: String,
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Descriptors per call (the same key, different values).
    #[arg(long, default_value_t = 1)]
    pub descriptors: usize,
}

/// One gRPC message per key: the length-prefixed `RateLimitRequest` whose
/// first descriptor is that key (the others are the next keys).
fn bodies(args: &GrpcArgs) -> Vec<Bytes> {
    let keys = args.keys.max(1);
    (0..keys)
        .map(|k| {
            let descriptors = (0..args.descriptors as u64)
                .map(|i| RateLimitDescriptor {
                    entries: vec![Entry {
                        key: args.key.clone(),
                        value: format!("v{}", (k + i) % keys),
                    }],
                    ..Default::default()
                })
                .collect();
            let req = RateLimitRequest {
                domain: args.domain.clone(),
                descriptors,
                hits_addend: 1,
            };
            let mut buf = BytesMut::with_capacity(5 + req.encoded_len());
            buf.put_u8(0);
            buf.put_u32(req.encoded_len() as u32);
            req.encode(&mut buf)
                .unwrap_or_else(|e| panic!("encode: {e}"));
            buf.freeze()
        })
        .collect()
}

/// Runs `concurrency` workers until `pace` ends and merges their tallies.
pub async fn run(args: &GrpcArgs, concurrency: usize, pace: &Pace) -> anyhow::Result<Tally> {
    let uri: Uri = format!("{}{PATH}", args.target.trim_end_matches('/'))
        .parse()
        .context("bad --target")?;
    let authority = uri.authority().context("--target needs host:port")?.clone();
    let mut senders = Vec::new();
    for _ in 0..args.connections.max(1) {
        let tcp = TcpStream::connect(authority.as_str())
            .await
            .with_context(|| format!("cannot connect to {}", args.target))?;
        tcp.set_nodelay(true)?;
        let (send, conn) = h2::client::handshake(tcp).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        senders.push(send);
    }
    let bodies = Arc::new(bodies(args));
    let mut tasks = Vec::new();
    for w in 0..concurrency.max(1) {
        tasks.push(tokio::spawn(worker(
            w as u64,
            senders[w % senders.len()].clone(),
            uri.clone(),
            bodies.clone(),
            pace.clone(),
        )));
    }
    Tally::gather(tasks).await
}

async fn worker(
    id: u64,
    send: SendRequest<Bytes>,
    uri: Uri,
    bodies: Arc<Vec<Bytes>>,
    pace: Pace,
) -> Tally {
    let mut tally = Tally::new();
    let mut n = id;
    while let Some(turn) = pace.next().await {
        // A cheap LCG: each worker walks the key space on its own sequence.
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let body = bodies[((n >> 16) % bodies.len() as u64) as usize].clone();
        let sent = Instant::now();
        let outcome = match call(send.clone(), &uri, body).await {
            Ok(Code::OverLimit) => Outcome::Denied,
            Ok(_) => Outcome::Ok,
            Err(_) => Outcome::Error,
        };
        tally.record(turn.measured, outcome, turn.latency(sent));
    }
    tally
}

/// One unary call: request headers and body, then the answer's body and
/// `grpc-status` trailer.
async fn call(send: SendRequest<Bytes>, uri: &Uri, body: Bytes) -> anyhow::Result<Code> {
    let mut send = send.ready().await?;
    let req = Request::post(uri.clone())
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let (response, mut stream) = send.send_request(req, false)?;
    stream.send_data(body, true)?;
    let response = response.await?;
    if response.status() != http::StatusCode::OK {
        bail!("http status {}", response.status());
    }
    let mut body = response.into_body();
    let mut message = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        message.extend_from_slice(&chunk);
    }
    let status = body
        .trailers()
        .await?
        .and_then(|t| t.get("grpc-status").cloned());
    if status.as_ref().map(|s| s.as_bytes()) != Some(b"0") {
        bail!("grpc-status {status:?}");
    }
    if message.len() < 5 {
        bail!("short gRPC message");
    }
    let answer = RateLimitResponse::decode(&message[5..])?;
    Ok(Code::try_from(answer.overall_code).unwrap_or(Code::Unknown))
}
