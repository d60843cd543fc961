//! HTTP/1.1 load, for requests through Envoy: one keep-alive connection per
//! worker (as wrk does), an optional rotating tenant header (one counter
//! per tenant behind the rate limit filter), an optional body (LLM
//! requests for ext_proc), and, with `--first-byte`, the time to the first
//! body byte of each answer (a streamed answer's first token).

use crate::pace::Pace;
use crate::stats::{Outcome, Tally};
use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderName, HeaderValue, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::time::Instant;
use tokio::net::TcpStream;

/// `tollgate-load http`: what to send and where.
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// `http://host:port/path`.
    #[arg(long)]
    pub url: String,
    /// Defaults to POST with a body, GET without.
    #[arg(long)]
    pub method: Option<String>,
    /// Request body, inline.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Request body, from a file.
    #[arg(long)]
    pub body_file: Option<PathBuf>,
    /// Extra header, `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Header that carries a tenant: each request names one of `--tenants`.
    #[arg(long)]
    pub tenant_header: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub tenants: u64,
    /// Also measure the time to the first byte of each answer's body.
    #[arg(long)]
    pub first_byte: bool,
}

/// What every request shares, parsed once.
struct Template {
    addr: String,
    uri: Uri,
    method: Method,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
    tenant_header: Option<HeaderName>,
    tenants: Vec<HeaderValue>,
    first_byte: bool,
}

impl Template {
    fn new(args: &HttpArgs) -> anyhow::Result<Template> {
        let uri: Uri = args.url.parse().context("bad --url")?;
        let authority = uri.authority().context("--url needs host:port")?.clone();
        let addr = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        let body = match (&args.body, &args.body_file) {
            (Some(b), _) => Bytes::from(b.clone()),
            (None, Some(f)) => Bytes::from(
                std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?,
            ),
            (None, None) => Bytes::new(),
        };
        let method = match &args.method {
            Some(m) => m.parse().context("bad --method")?,
            None if body.is_empty() => Method::GET,
            None => Method::POST,
        };
        let mut headers = vec![(HOST, HeaderValue::from_str(authority.as_str())?)];
        for h in &args.headers {
            let Some((name, value)) = h.split_once(':') else {
                bail!("--header {h:?}: expected `name: value`");
            };
            headers.push((name.trim().parse()?, HeaderValue::from_str(value.trim())?));
        }
        let tenant_header = args.tenant_header.as_deref().map(str::parse).transpose()?;
        let tenants = (0..args.tenants.max(1))
            .map(|i| HeaderValue::from_str(&format!("t{i}")))
            .collect::<Result<_, _>>()?;
        Ok(Template {
            addr,
            uri,
            method,
            body,
            headers,
            tenant_header,
            tenants,
            first_byte: args.first_byte,
        })
    }

    fn request(&self, n: u64) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        for (k, v) in &self.headers {
            h.insert(k.clone(), v.clone());
        }
        if let Some(name) = &self.tenant_header {
            let i = (n % self.tenants.len() as u64) as usize;
            h.insert(name.clone(), self.tenants[i].clone());
        }
        req
    }
}

/// Runs `concurrency` connections until `pace` ends and merges their
/// tallies.
pub async fn run(args: &HttpArgs, concurrency: usize, pace: &Pace) -> anyhow::Result<Tally> {
    let template = std::sync::Arc::new(Template::new(args)?);
    // Fail fast on a wrong address, before the workers start.
    connect(&template.addr).await?;
    let mut tasks = Vec::new();
    for w in 0..concurrency.max(1) {
        tasks.push(tokio::spawn(worker(
            w as u64,
            template.clone(),
            pace.clone(),
        )));
    }
    Tally::gather(tasks).await
}

async fn connect(addr: &str) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn worker(id: u64, t: std::sync::Arc<Template>, pace: Pace) -> Tally {
    let mut tally = Tally::new();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut n = id.wrapping_mul(7919);
    while let Some(turn) = pace.next().await {
        n = n.wrapping_add(1);
        let sent = Instant::now();
        let result = async {
            if sender.as_ref().is_none_or(|s| s.is_closed()) {
                sender = Some(connect(&t.addr).await?);
            }
            let s = sender.as_mut().context("no connection")?;
            s.ready().await?;
            exchange(s, &t, n, |at| {
                if t.first_byte {
                    tally.record_first_byte(turn.measured, turn.latency(at));
                }
            })
            .await
        }
        .await;
        let outcome = match result {
            Ok(status) if status.is_success() => Outcome::Ok,
            Ok(StatusCode::TOO_MANY_REQUESTS) => Outcome::Denied,
            Ok(_) => Outcome::Error,
            Err(_) => {
                sender = None;
                Outcome::Error
            }
        };
        tally.record(turn.measured, outcome, turn.latency(sent));
    }
    tally
}

/// Sends one request and reads its answer to the end; `first_byte` is
/// called when the first non-empty body chunk arrives, with the instant
/// the request was sent.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    t: &Template,
    n: u64,
    mut first_byte: impl FnMut(Instant),
) -> anyhow::Result<StatusCode> {
    let sent = Instant::now();
    let response = sender.send_request(t.request(n)).await?;
    let status = response.status();
    let mut body = response.into_body();
    let mut seen = false;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if !seen && frame.data_ref().is_some_and(|d| !d.is_empty()) {
            seen = true;
            first_byte(sent);
        }
    }
    Ok(status)
}
