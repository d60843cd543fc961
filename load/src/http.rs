//! HTTP/1.1 load, for requests through Envoy: one keep-alive connection per
//! worker (as wrk does), an optional rotating tenant header (one counter
//! per tenant behind the rate limit filter), an optional body (LLM
//! requests for ext_proc), and, with `--first-byte`, the time to the first
//! body byte of each answer (a streamed answer's first token). With
//! `--abort-fraction`, some connections drop every answer after its first
//! body bytes, as a client that goes away mid-stream (`scripts/soak.sh`).

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
    /// The tenants' names are this and a number (`t0`, `t1`, ...). With
    /// more tenants than requests, connection `c`'s `k`-th request names
    /// tenant `c × 7919 + k`: a count that names one request.
    #[arg(long, default_value = "t")]
    pub tenant_prefix: String,
    /// Also measure the time to the first byte of each answer's body.
    #[arg(long)]
    pub first_byte: bool,
    /// Share of the connections (rounded to whole connections) that close
    /// each answer's connection after its first body bytes: clients gone
    /// mid-stream. They reconnect for their next request.
    #[arg(long, default_value_t = 0.0)]
    pub abort_fraction: f64,
}

/// Whether connection `worker` of `concurrency` is one of the
/// `--abort-fraction` that abort: the first round(fraction × concurrency).
fn aborts(worker: usize, concurrency: usize, fraction: f64) -> bool {
    let n = (fraction.clamp(0.0, 1.0) * concurrency as f64).round() as usize;
    worker < n
}

/// What every request shares, parsed once.
struct Template {
    addr: String,
    uri: Uri,
    method: Method,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
    tenant_header: Option<HeaderName>,
    /// The tenants' names: the prefix (checked to make a header value)
    /// and how many numbers follow it.
    tenant_prefix: String,
    tenants: u64,
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
        HeaderValue::from_str(&args.tenant_prefix)
            .with_context(|| format!("--tenant-prefix {:?}", args.tenant_prefix))?;
        Ok(Template {
            addr,
            uri,
            method,
            body,
            headers,
            tenant_header,
            tenant_prefix: args.tenant_prefix.clone(),
            tenants: args.tenants.max(1),
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
            let tenant = format!("{}{}", self.tenant_prefix, n % self.tenants);
            // The prefix makes a header value and digits follow it.
            if let Ok(v) = HeaderValue::from_str(&tenant) {
                h.insert(name.clone(), v);
            }
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
    let concurrency = concurrency.max(1);
    for w in 0..concurrency {
        tasks.push(tokio::spawn(worker(
            w as u64,
            aborts(w, concurrency, args.abort_fraction),
            template.clone(),
            pace.clone(),
        )));
    }
    Tally::gather(tasks).await
}

/// One keep-alive connection: the handle that sends on it, and its task
/// (aborted to close the socket at once).
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(addr: &str) -> anyhow::Result<Connection> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Connection { sender, task })
}

/// How one exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The whole answer was read.
    Read(StatusCode),
    /// The client dropped it after its first body bytes (`abort`).
    Aborted,
}

async fn worker(id: u64, abort: bool, t: std::sync::Arc<Template>, pace: Pace) -> Tally {
    let mut tally = Tally::new();
    let mut conn: Option<Connection> = None;
    let mut n = id.wrapping_mul(7919);
    while let Some(turn) = pace.next().await {
        n = n.wrapping_add(1);
        let sent = Instant::now();
        let result = async {
            if conn.as_ref().is_none_or(|c| c.sender.is_closed()) {
                conn = Some(connect(&t.addr).await?);
            }
            let s = &mut conn.as_mut().context("no connection")?.sender;
            s.ready().await?;
            exchange(s, &t, n, abort, |at| {
                if t.first_byte {
                    tally.record_first_byte(turn.measured, turn.latency(at));
                }
            })
            .await
        }
        .await;
        let outcome = match result {
            Ok(Ended::Read(status)) if status.is_success() => Outcome::Ok,
            Ok(Ended::Read(StatusCode::TOO_MANY_REQUESTS)) => Outcome::Denied,
            Ok(Ended::Read(_)) => Outcome::Error,
            Ok(Ended::Aborted) => {
                // Dropping the connection closes its socket: the server
                // sees the client go away mid-answer.
                conn = None;
                Outcome::Aborted
            }
            Err(_) => {
                conn = None;
                Outcome::Error
            }
        };
        tally.record(turn.measured, outcome, turn.latency(sent));
    }
    tally
}

/// Sends one request and reads its answer to the end (with `abort`, a
/// successful answer only to its first body bytes); `first_byte` is
/// called when the first non-empty body chunk arrives, with the instant
/// the request was sent.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    t: &Template,
    n: u64,
    abort: bool,
    mut first_byte: impl FnMut(Instant),
) -> anyhow::Result<Ended> {
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
            if abort && status.is_success() {
                return Ok(Ended::Aborted);
            }
        }
    }
    Ok(Ended::Read(status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_abort_fraction_is_rounded_to_whole_connections() {
        let count = |c: usize, f: f64| (0..c).filter(|&w| aborts(w, c, f)).count();
        assert_eq!(count(10, 0.1), 1);
        assert_eq!(count(20, 0.1), 2);
        assert_eq!(count(10, 0.0), 0);
        assert_eq!(count(4, 1.0), 4);
        assert_eq!(count(3, 0.1), 0, "0.3 of a connection rounds to none");
    }

    /// A server that sends headers and one chunk of a streamed answer and
    /// then waits: an aborting client ends the exchange after that chunk
    /// and its dropped connection reaches the server as end of file.
    #[tokio::test]
    async fn an_aborting_client_closes_its_connection_after_the_first_bytes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "request cut short");
                got.extend_from_slice(&buf[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
                .await
                .unwrap();
            // The rest never comes: the client must hang up by itself
            // (what it still sends, the request body, is read past).
            loop {
                match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    Ok(Ok(_)) => continue,
                    Err(_) => return false,
                }
            }
        });
        let args = HttpArgs {
            url: format!("http://{addr}/v1/chat/completions"),
            method: None,
            body: Some("{}".into()),
            body_file: None,
            headers: vec![],
            tenant_header: None,
            tenants: 1,
            tenant_prefix: "t".into(),
            first_byte: false,
            abort_fraction: 1.0,
        };
        let t = Template::new(&args).unwrap();
        let mut conn = connect(&t.addr).await.unwrap();
        let ended = tokio::time::timeout(
            Duration::from_secs(5),
            exchange(&mut conn.sender, &t, 0, true, |_| {}),
        )
        .await
        .expect("the exchange ends after the first chunk")
        .unwrap();
        assert_eq!(ended, Ended::Aborted);
        drop(conn);
        assert!(server.await.unwrap(), "the server saw the connection close");
    }
}
