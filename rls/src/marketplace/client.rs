//! The marketplace's three HTTP calls, each bounded by the time it is
//! given (connection, DNS and body included), answers read up to
//! [`MAX_ANSWER`]. HTTP/1.1 with rustls; no redirects followed and no proxy
//! from the environment, so every byte goes to `endpoint` and nowhere else.
//! Built only when the marketplace is enabled: building opens no socket.

use super::protocol::{
    BusyAnswer, QuoteAnswer, QuoteRequest, SuppliesAnswer, SupplyOffer, UsageReport,
};
use super::refusal::Failure;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::{Response, StatusCode};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// The largest answer read; a longer one is not the protocol's.
pub const MAX_ANSWER: usize = 256 << 10;

/// Longest pause a 429's `retry_after_seconds` is taken for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// A call that did not get an answer of the protocol.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no answer in time")]
    Timeout,
    #[error("cannot reach the marketplace: {0}")]
    Unreachable(String),
    #[error("the marketplace answered {0}")]
    Status(u16),
    #[error("not an answer of the protocol: {0}")]
    Garbage(String),
}

impl CallError {
    /// The failure this is, for the breaker and the metrics.
    pub fn failure(&self) -> Failure {
        match self {
            CallError::Timeout => Failure::Timeout,
            CallError::Unreachable(_) => Failure::Unreachable,
            CallError::Status(_) => Failure::Status,
            CallError::Garbage(_) => Failure::Garbage,
        }
    }
}

/// A client that cannot be built (a key that is not a header value, or
/// TLS roots that cannot be loaded).
#[derive(Debug, thiserror::Error)]
#[error("marketplace client: {0}")]
pub struct BuildError(pub String);

/// What the marketplace answered, when it answered as the protocol says.
#[derive(Debug)]
pub enum Reply<T> {
    Ok(T),
    /// 404: nothing for this model and price now.
    NoSupply,
    /// 429: busy; ask again after this (when it says).
    Busy(Option<Duration>),
}

/// What the marketplace answered to a usage report.
#[derive(Debug)]
pub enum Ack {
    /// A 2xx.
    Taken,
    /// 429: try again after this (when it says).
    Busy(Option<Duration>),
}

/// The HTTP client for one marketplace endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// `Bearer <key>`, marked sensitive so that no debug output shows it.
    key: HeaderValue,
}

impl Client {
    /// A client for `endpoint` (a base URL without trailing slash) with
    /// its API key. Connections are made on the first call, not here.
    pub fn new(endpoint: &str, key: &str, connect_timeout: Duration) -> Result<Client, BuildError> {
        let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| BuildError("the API key is not a valid header value".into()))?;
        value.set_sensitive(true);
        let http = reqwest::Client::builder()
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| BuildError(e.to_string()))?;
        Ok(Client {
            http,
            base: endpoint.trim_end_matches('/').to_string(),
            key: value,
        })
    }

    /// `GET /v1/supplies?model=M&region=R&max_price=P`.
    pub async fn supplies(
        &self,
        model: &str,
        region: Option<&str>,
        max_price: f64,
        time: Duration,
    ) -> Result<Reply<Vec<SupplyOffer>>, CallError> {
        let mut query = vec![("model", model.to_string())];
        if let Some(r) = region {
            query.push(("region", r.to_string()));
        }
        query.push(("max_price", max_price.to_string()));
        let request = self
            .http
            .get(format!("{}/v1/supplies", self.base))
            .query(&query);
        let reply = self.call::<SuppliesAnswer>(request, time).await?;
        Ok(match reply {
            Reply::Ok(a) => Reply::Ok(a.supplies),
            Reply::NoSupply => Reply::NoSupply,
            Reply::Busy(d) => Reply::Busy(d),
        })
    }

    /// `POST /v1/marketplace/quote`.
    pub async fn quote(
        &self,
        ask: &QuoteRequest<'_>,
        time: Duration,
    ) -> Result<Reply<QuoteAnswer>, CallError> {
        let request = self
            .http
            .post(format!("{}/v1/marketplace/quote", self.base))
            .json(ask);
        self.call(request, time).await
    }

    /// `POST /v1/marketplace/usage`; any 2xx is an acknowledgement.
    pub async fn usage(&self, report: &UsageReport, time: Duration) -> Result<Ack, CallError> {
        let request = self
            .http
            .post(format!("{}/v1/marketplace/usage", self.base))
            .json(report);
        let sent = async {
            let response = self.send(request).await?;
            match response.status() {
                s if s.is_success() => Ok(Ack::Taken),
                StatusCode::TOO_MANY_REQUESTS => Ok(Ack::Busy(retry_after(response).await)),
                s => Err(CallError::Status(s.as_u16())),
            }
        };
        tokio::time::timeout(time, sent)
            .await
            .unwrap_or(Err(CallError::Timeout))
    }

    /// Sends `request` and reads its JSON answer, all within `time`.
    async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        time: Duration,
    ) -> Result<Reply<T>, CallError> {
        let answered = async {
            let response = self.send(request).await?;
            match response.status() {
                StatusCode::OK => {
                    let body = read(response).await?;
                    serde_json::from_slice(&body)
                        .map(Reply::Ok)
                        .map_err(|e| CallError::Garbage(e.to_string()))
                }
                StatusCode::NOT_FOUND => Ok(Reply::NoSupply),
                StatusCode::TOO_MANY_REQUESTS => Ok(Reply::Busy(retry_after(response).await)),
                s => Err(CallError::Status(s.as_u16())),
            }
        };
        tokio::time::timeout(time, answered)
            .await
            .unwrap_or(Err(CallError::Timeout))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, CallError> {
        request
            .header(AUTHORIZATION, self.key.clone())
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    CallError::Timeout
                } else {
                    CallError::Unreachable(chain(&e))
                }
            })
    }
}

/// The answer's body, refused past [`MAX_ANSWER`].
async fn read(mut response: Response) -> Result<Vec<u8>, CallError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| CallError::Unreachable(chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(CallError::Garbage(format!(
                "answer over {MAX_ANSWER} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A 429's `retry_after_seconds`, if its body says (bounded).
async fn retry_after(response: Response) -> Option<Duration> {
    let body = read(response).await.ok()?;
    let busy: BusyAnswer = serde_json::from_slice(&body).unwrap_or_default();
    let secs = busy
        .retry_after_seconds
        .filter(|s| s.is_finite() && *s > 0.0)?;
    Some(Duration::from_secs_f64(
        secs.min(MAX_RETRY_AFTER.as_secs_f64()),
    ))
}

/// reqwest's error with its causes (the URL it names is the endpoint's,
/// with the metadata of the query at most).
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
