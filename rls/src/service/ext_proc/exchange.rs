//! One HTTP request through ext_proc, from request headers to the end of
//! the response: identify, estimate, reserve, pass the response through,
//! extract usage, settle.

use super::reply;
use crate::app::App;
use crate::config::Config;
use crate::engine::{BudgetView, Reservation, Settlement, WaitFor, Waited};
use crate::rules::{Identity, SettlePolicy, Tokens};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValueOption};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::Struct;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tollgate_filters::{self as filters, Endpoint, ErrorKind, Provider, SseUsage};

/// Largest non-streamed response body kept to read its usage; above it the
/// body still passes through, only the usage is not read.
const MAX_JSON_RESPONSE: usize = 8 << 20;

/// Request bodies above this are parsed off the async reactor.
const BLOCKING_PARSE_BYTES: usize = 32 << 10;

enum Body {
    None,
    Json(Vec<u8>),
    Sse(Box<SseUsage>),
}

pub(super) struct Exchange {
    app: Arc<App>,
    config: Arc<Config>,
    /// For a message sent while the answer waits (Envoy's timer extension).
    replies: Replies,
    /// Cancelled when Envoy closes the stream.
    gone: CancellationToken,
    endpoint: Option<Endpoint>,
    identity: Identity,
    reservation: Option<Reservation>,
    budget: BudgetView,
    /// `model` label for metrics: a configured model name, or `_other`.
    model_label: String,
    status: u16,
    body: Body,
    too_big: bool,
    /// Response headers that say how the request was served: the model,
    /// the model it fell back from, how long it waited.
    served: Vec<HeaderValueOption>,
    /// The request's headers were read (from their message, or from the
    /// attributes sent with the body when Envoy skips that message).
    request_seen: bool,
    /// The response's status was read (likewise).
    response_seen: bool,
    /// The request asked for a streamed (SSE) response.
    streamed: bool,
}

type Replies = mpsc::Sender<Result<ProcessingResponse, tonic::Status>>;

/// Added to Envoy's message timer beyond the longest wait, for the answer
/// itself to arrive.
const TIMER_MARGIN: Duration = Duration::from_secs(1);

impl Exchange {
    pub fn new(app: Arc<App>, replies: Replies, gone: CancellationToken) -> Exchange {
        let config = app.config.load_full();
        Exchange {
            app,
            config,
            replies,
            gone,
            endpoint: None,
            identity: Identity::default(),
            reservation: None,
            budget: BudgetView::default(),
            model_label: "_other".into(),
            status: 0,
            body: Body::None,
            too_big: false,
            served: Vec::new(),
            request_seen: false,
            response_seen: false,
            streamed: false,
        }
    }

    /// Handles one message from Envoy; `None` if it needs no answer.
    ///
    /// Envoy may send the request and response headers as their own
    /// messages, or skip them (one round trip fewer each) and send what
    /// tollgate needs as attributes with the first body message; both work.
    pub async fn on_message(&mut self, msg: ProcessingRequest) -> Option<ProcessingResponse> {
        let ProcessingRequest {
            request,
            attributes,
            ..
        } = msg;
        match request? {
            Request::RequestHeaders(h) => {
                self.request_seen = true;
                Some(self.on_request_headers(Facts::Headers(h.headers.as_ref()), h.end_of_stream))
            }
            Request::RequestBody(b) => {
                if !self.request_seen {
                    self.request_seen = true;
                    self.on_request_headers(Facts::Attributes(&attributes), false);
                }
                self.on_request_body(&b.body, b.end_of_stream).await
            }
            Request::ResponseHeaders(h) => {
                let r = self.on_response_headers(Facts::Headers(h.headers.as_ref()));
                if h.end_of_stream {
                    self.finish().await;
                }
                Some(r)
            }
            Request::ResponseBody(b) => {
                if !self.response_seen {
                    // Headers skipped: the status comes as an attribute,
                    // SSE or not from the request's `stream`.
                    self.on_response_headers(Facts::Attributes(&attributes));
                }
                self.on_response_chunk(&b.body);
                if b.end_of_stream {
                    self.finish().await;
                }
                Some(reply::response_body())
            }
            Request::RequestTrailers(_) => Some(ProcessingResponse {
                response: Some(envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response::RequestTrailers(Default::default())),
                ..Default::default()
            }),
            Request::ResponseTrailers(_) => {
                self.finish().await;
                Some(ProcessingResponse {
                    response: Some(envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response::ResponseTrailers(Default::default())),
                    ..Default::default()
                })
            }
        }
    }

    fn on_request_headers(&mut self, facts: Facts<'_>, end_of_stream: bool) -> ProcessingResponse {
        let settings = &self.config.llm.settings;
        let path = facts.get(":path").unwrap_or_default();
        let method = facts.get(":method").unwrap_or_default();
        let route = path.split('?').next().unwrap_or_default().to_string();
        if method.eq_ignore_ascii_case("POST") && !end_of_stream {
            self.endpoint = Endpoint::from_path(&route);
        }
        self.identity = Identity {
            tenant: facts.get(&settings.tenant_header).filter(|t| !t.is_empty()),
            api_key: facts.get(&settings.api_key_header).map(|k| key_hash(&k)),
            class: facts.get(&settings.class_header).filter(|c| !c.is_empty()),
            model: String::new(),
            route,
        };
        reply::request_headers(vec![])
    }

    async fn on_request_body(
        &mut self,
        body: &[u8],
        end_of_stream: bool,
    ) -> Option<ProcessingResponse> {
        let Some(endpoint) = self.endpoint else {
            return Some(reply::request_body(vec![], None, None));
        };
        let provider = endpoint.provider();
        let settings = self.config.llm.settings.clone();
        if body.len() > settings.max_body_bytes || !end_of_stream {
            // Envoy sends the whole body in BUFFERED mode; a partial one
            // means it exceeded Envoy's buffer.
            self.app.metrics.llm_request("_other", "too_large");
            tracing::info!(bytes = body.len(), "request body over max_body_bytes");
            return Some(error(
                provider,
                413,
                ErrorKind::InvalidRequest,
                "request body too large",
            ));
        }
        let bpe = settings.estimator == "bpe";
        // BPE runs at about 50 MB/s: past ~32 KiB a prompt would hold the
        // reactor for more than half a millisecond, so large bodies are
        // counted on the blocking pool.
        let parsed = if body.len() > BLOCKING_PARSE_BYTES {
            let owned = body.to_vec();
            tokio::task::spawn_blocking(move || filters::parse_request(endpoint, &owned, bpe))
                .await
                .unwrap_or(Err(filters::RequestError::NotAnObject))
        } else {
            filters::parse_request(endpoint, body, bpe)
        };
        let request = match parsed {
            Ok(r) => r,
            Err(e) => {
                self.app.metrics.llm_request("_other", "invalid");
                tracing::info!(reason = %e, endpoint = endpoint.as_str(), "unreadable LLM request");
                return Some(error(
                    provider,
                    400,
                    ErrorKind::InvalidRequest,
                    &e.to_string(),
                ));
            }
        };
        self.streamed = request.stream;
        let llm = self.config.llm.clone();
        let model = llm.model(&request.model);
        self.model_label = model
            .map(|m| m.name.clone())
            .unwrap_or_else(|| "_other".into());
        let (context, default_output) = match model {
            Some(m) => (m.context_window, m.default_max_output),
            None if settings.allow_unknown_models => (u64::MAX, settings.unknown_model_max_output),
            None => {
                self.app.metrics.llm_request("_other", "unknown_model");
                return Some(error(
                    provider,
                    400,
                    ErrorKind::InvalidRequest,
                    "unknown model",
                ));
            }
        };
        let prompt = request.prompt_tokens_estimate;
        let asked = request.max_output_tokens;
        if prompt > context || asked.is_some_and(|a| prompt.saturating_add(a) > context) {
            self.app
                .metrics
                .llm_request(&self.model_label, "context_exceeded");
            let msg = format!(
                "this model's maximum context length is {context} tokens; the request needs about {} (prompt) + {} (output)",
                prompt,
                asked.unwrap_or(0)
            );
            return Some(error(provider, 400, ErrorKind::ContextLengthExceeded, &msg));
        }
        let class = llm
            .classes
            .of(self.identity.class.as_deref(), &self.identity)
            .cloned();
        if let Some(c) = &class {
            self.identity.class = Some(c.name.clone());
        }
        // The requested model, then its fallbacks that can hold the request.
        let mut candidates = vec![(request.model.clone(), context, default_output)];
        for name in model.map(|m| m.fallback.as_slice()).unwrap_or_default() {
            if let Some(f) = llm.model(name) {
                if prompt.saturating_add(asked.unwrap_or(0)) <= f.context_window {
                    candidates.push((f.name.clone(), f.context_window, f.default_max_output));
                }
            }
        }
        let latest = tokio::time::Instant::now() + settings.max_wait_cap;
        let mut timer_extended = false;
        let mut denied = None;
        for (i, (name, context, default_output)) in candidates.iter().enumerate() {
            let output =
                asked.unwrap_or_else(|| (*default_output).min(context.saturating_sub(prompt)));
            let estimate = Tokens {
                prompt,
                completion: output,
                cached: 0,
            };
            self.identity.model = name.clone();
            let replies = self.replies.clone();
            let waited = self
                .app
                .engine
                .reserve_or_wait(
                    WaitFor {
                        llm: &llm,
                        id: &self.identity,
                        class: class.as_ref(),
                        estimate,
                        ttl: settings.reservation_ttl,
                        latest,
                    },
                    &self.gone,
                    || {
                        // Envoy takes one extension per message: cover
                        // every wait still possible, fallbacks included.
                        if !timer_extended {
                            timer_extended = true;
                            let left =
                                latest.saturating_duration_since(tokio::time::Instant::now());
                            let _ = replies.try_send(Ok(reply::extend_timer(left + TIMER_MARGIN)));
                        }
                    },
                )
                .await;
            match waited {
                Waited::Cancelled => {
                    self.app.metrics.llm_request(&self.model_label, "cancelled");
                    tracing::info!(model = %self.model_label, "client went away while waiting for capacity");
                    return None;
                }
                Waited::Denied {
                    quota,
                    retry_after,
                    headers,
                    ..
                } => {
                    denied = Some((quota, retry_after, headers));
                }
                Waited::Admitted {
                    reservation,
                    headers,
                    waited,
                } => {
                    let fallback_from = (i > 0).then(|| request.model.clone());
                    return Some(self.admitted(
                        endpoint,
                        body,
                        reservation,
                        headers,
                        estimate,
                        fallback_from,
                        waited,
                    ));
                }
            }
        }
        let (quota, retry_after, headers) = denied.unwrap_or_default();
        self.app.metrics.llm_request(&self.model_label, "denied");
        tracing::info!(quota = %quota, model = %self.model_label, retry_after = ?retry_after, "LLM request over budget");
        let secs = retry_after.as_millis().div_ceil(1000).max(1);
        let mut h = budget_headers(&headers);
        h.push(reply::header("retry-after", secs.to_string()));
        let msg = format!("rate limit reached for quota `{quota}`; retry in {secs}s");
        Some(reply::immediate(
            429,
            h,
            filters::error_body(provider, 429, ErrorKind::RateLimited, &msg),
            "tollgate_over_budget",
        ))
    }

    /// The request goes upstream: record the reservation, rewrite the
    /// model if it fell back, add the routing header and metadata.
    #[allow(clippy::too_many_arguments)]
    fn admitted(
        &mut self,
        endpoint: Endpoint,
        body: &[u8],
        reservation: Reservation,
        headers: BudgetView,
        estimate: Tokens,
        fallback_from: Option<String>,
        waited: Duration,
    ) -> ProcessingResponse {
        let settings = &self.config.llm.settings;
        let model = reservation.model.clone();
        if let Some(from) = &fallback_from {
            self.app.metrics.llm_fallback(&self.model_label, &model);
            tracing::info!(from = %self.model_label, to = %model, "model fell back");
            self.model_label = model.clone();
            self.served
                .push(reply::header("x-tollgate-fallback-from", from.clone()));
        }
        self.served
            .push(reply::header("x-tollgate-model", model.clone()));
        if waited >= Duration::from_millis(1) {
            self.served.push(reply::header(
                "x-tollgate-waited-ms",
                waited.as_millis().to_string(),
            ));
        }
        self.app.metrics.llm_request(&self.model_label, "admitted");
        self.app.metrics.llm_tokens(
            &self.model_label,
            "reserved",
            estimate.prompt + estimate.completion,
        );
        for t in &reservation.taken {
            if matches!(t.what, crate::engine::TakenKind::Tokens { .. }) {
                self.app.metrics.quota_tokens(&t.quota, "reserved", t.cost);
            }
        }
        let reservation_id = reservation.id.clone();
        self.reservation = Some(reservation);
        self.budget = headers;
        let mut fields = vec![
            (
                "reservation_id".to_string(),
                Kind::StringValue(reservation_id),
            ),
            ("model".to_string(), Kind::StringValue(model.clone())),
            (
                "estimated_tokens".to_string(),
                Kind::NumberValue((estimate.prompt + estimate.completion) as f64),
            ),
        ];
        // The response headers again, by name, for an Envoy that skips the
        // response headers message and adds them with the route's
        // `response_headers_to_add: %DYNAMIC_METADATA(tollgate:<name>)%`.
        for h in self.response_header_values() {
            if let Some(v) = h.header {
                let value = String::from_utf8_lossy(&v.raw_value).into_owned();
                fields.push((v.key, Kind::StringValue(value)));
            }
        }
        let meta = reply::metadata(fields);
        let mut new_body = None;
        if fallback_from.is_some() {
            new_body = filters::rewrite_model(body, &model).ok();
        }
        if settings.inject_stream_usage {
            let current = new_body.as_deref().unwrap_or(body);
            if let Ok(Some(b)) = filters::ensure_stream_usage(endpoint, current) {
                new_body = Some(b);
            }
        }
        let mut upstream = vec![reply::header(&settings.model_header, model)];
        if let Some(b) = &new_body {
            upstream.push(reply::header("content-length", b.len().to_string()));
        }
        reply::request_body_routed(upstream, new_body, Some(meta))
    }

    fn on_response_headers(&mut self, facts: Facts<'_>) -> ProcessingResponse {
        self.response_seen = true;
        self.status = facts
            .get(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let Some(endpoint) = self.endpoint.filter(|_| self.reservation.is_some()) else {
            return reply::response_headers(vec![]);
        };
        let sse = match facts.get("content-type") {
            Some(c) => c.to_ascii_lowercase().starts_with("text/event-stream"),
            None => self.streamed,
        };
        self.body = if sse {
            Body::Sse(Box::new(SseUsage::new(endpoint)))
        } else {
            Body::Json(Vec::new())
        };
        reply::response_headers(self.response_header_values())
    }

    /// `x-ratelimit-*` and `x-tollgate-*` for the client's response.
    fn response_header_values(&self) -> Vec<HeaderValueOption> {
        let mut h = budget_headers(&self.budget);
        h.extend(self.served.iter().cloned());
        h
    }

    fn on_response_chunk(&mut self, chunk: &[u8]) {
        match &mut self.body {
            Body::Sse(p) => p.feed(chunk),
            Body::Json(buf) => {
                if buf.len() + chunk.len() <= MAX_JSON_RESPONSE {
                    buf.extend_from_slice(chunk);
                } else {
                    self.too_big = true;
                }
            }
            Body::None => {}
        }
    }

    /// The response ended: settle with its usage, or by policy.
    async fn finish(&mut self) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let endpoint = self.endpoint.unwrap_or(Endpoint::ChatCompletions);
        let settings = &self.config.llm.settings;
        let (usage, output_bytes) = match &mut self.body {
            Body::Sse(p) => {
                p.finish();
                (p.usage(), p.output_bytes())
            }
            Body::Json(b) if !self.too_big => {
                (filters::usage_from_json(endpoint, b).ok().flatten(), 0)
            }
            _ => (None, 0),
        };
        let (settlement, how) = match usage {
            Some(u) if self.status < 400 => (Settlement::Usage(tokens(&u)), "usage"),
            _ if self.status >= 400 || self.status == 0 => (
                assumed(settings.on_upstream_error, &reservation, output_bytes),
                "upstream_error",
            ),
            _ => (
                assumed(SettlePolicy::KeepEstimate, &reservation, output_bytes),
                "no_usage",
            ),
        };
        self.settle(reservation, settlement, how).await;
    }

    /// Envoy closed the stream before the response ended: the client went
    /// away (or the upstream failed). Frees the slot at once.
    pub async fn on_stream_end(&mut self) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let output_bytes = match &self.body {
            Body::Sse(p) => p.output_bytes(),
            _ => 0,
        };
        let policy = self.config.llm.settings.on_abort;
        tracing::info!(model = %self.model_label, "stream ended before the response did; settling by on_abort");
        let settlement = assumed(policy, &reservation, output_bytes);
        self.settle(reservation, settlement, "aborted").await;
    }

    async fn settle(&self, reservation: Reservation, settlement: Settlement, how: &str) {
        let m = &self.app.metrics;
        let actual = match settlement {
            Settlement::Usage(t) | Settlement::Assumed(t) => t,
        };
        // Per model in raw tokens; per quota in the quota's own count.
        let est = reservation.estimate.prompt + reservation.estimate.completion;
        let used = actual.prompt + actual.completion;
        if let Settlement::Usage(_) = settlement {
            m.llm_tokens(&self.model_label, "actual", used);
            m.estimate_error(&self.model_label, est, used);
        }
        m.llm_tokens(&self.model_label, "refunded", est.saturating_sub(used));
        m.llm_tokens(&self.model_label, "overage", used.saturating_sub(est));
        for t in &reservation.taken {
            if let crate::engine::TakenKind::Tokens { .. } = t.what {
                let cost = crate::engine::token_cost(&t.what, &actual);
                m.quota_tokens(&t.quota, "refunded", t.cost.saturating_sub(cost));
                m.quota_tokens(&t.quota, "overage", cost.saturating_sub(t.cost));
            }
        }
        match self.app.engine.settle(&reservation, settlement).await {
            Ok(true) => m.llm_settled(how),
            Ok(false) => m.llm_settled("already_settled"),
            Err(e) => {
                // The record's TTL frees the slot and keeps the estimate.
                m.llm_settled("failed");
                tracing::warn!(error = %e, "settle failed; the reservation expires by its TTL");
            }
        }
    }
}

/// The tokens a policy charges when no usage was reported.
fn assumed(policy: SettlePolicy, r: &Reservation, output_bytes: u64) -> Settlement {
    Settlement::Assumed(match policy {
        SettlePolicy::KeepEstimate => r.estimate,
        SettlePolicy::Refund => Tokens::default(),
        SettlePolicy::ChargeStreamed => Tokens {
            prompt: r.estimate.prompt,
            completion: output_bytes.div_ceil(4),
            cached: 0,
        },
    })
}

fn tokens(u: &filters::Usage) -> Tokens {
    Tokens {
        prompt: u.prompt_tokens,
        completion: u.completion_tokens,
        cached: u.cached_prompt_tokens,
    }
}

fn error(provider: Provider, status: u16, kind: ErrorKind, message: &str) -> ProcessingResponse {
    reply::immediate(
        status,
        vec![],
        filters::error_body(provider, status, kind, message),
        "tollgate_invalid_request",
    )
}

/// `x-ratelimit-*` headers in OpenAI's naming.
fn budget_headers(b: &BudgetView) -> Vec<HeaderValueOption> {
    let mut h = Vec::new();
    for (what, r) in [("tokens", b.tokens), ("requests", b.requests)] {
        if let Some(r) = r {
            h.push(reply::header(
                &format!("x-ratelimit-limit-{what}"),
                r.limit.to_string(),
            ));
            h.push(reply::header(
                &format!("x-ratelimit-remaining-{what}"),
                r.remaining.to_string(),
            ));
            h.push(reply::header(
                &format!("x-ratelimit-reset-{what}"),
                format_reset(r.reset_after),
            ));
        }
    }
    h
}

fn format_reset(d: Duration) -> String {
    format!("{}s", d.as_millis().div_ceil(1000))
}

/// Where the request's (or response's) headers come from: their own
/// message, or the attributes Envoy sends with the first body message when
/// it skips that one.
enum Facts<'a> {
    Headers(Option<&'a HeaderMap>),
    Attributes(&'a HashMap<String, Struct>),
}

impl Facts<'_> {
    fn get(&self, name: &str) -> Option<String> {
        match self {
            Facts::Headers(h) => header_value(*h, name),
            Facts::Attributes(a) => attribute(a, name),
        }
    }
}

/// A header as an ext_proc attribute: `:path` is `request.path`, `:method`
/// `request.method`, `:status` `response.code`, any other header `x` the
/// CEL expression `request.headers['x']`, written exactly so in Envoy's
/// `request_attributes`.
fn attribute(attrs: &HashMap<String, Struct>, name: &str) -> Option<String> {
    let keys = match name {
        ":path" => vec!["request.path".to_string()],
        ":method" => vec!["request.method".to_string()],
        ":status" => vec!["response.code".to_string()],
        // Read from the request headers message only; in attributes mode
        // SSE is known from the request.
        "content-type" => vec![],
        n => vec![
            format!("request.headers['{n}']"),
            format!("request.headers[\"{n}\"]"),
        ],
    };
    attrs
        .values()
        .flat_map(|s| keys.iter().filter_map(move |k| s.fields.get(k)))
        .find_map(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            Some(Kind::NumberValue(n)) if n.is_finite() => Some(format!("{}", *n as i64)),
            _ => None,
        })
}

fn header_value(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    headers?
        .headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| {
            if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            }
        })
}

/// API keys are matched and counted by a hash: the key never reaches a
/// store, a log or a metric.
fn key_hash(raw: &str) -> String {
    let key = raw.strip_prefix("Bearer ").unwrap_or(raw).trim();
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}
