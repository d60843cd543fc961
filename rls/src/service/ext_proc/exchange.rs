//! One HTTP request through ext_proc, as a machine of its phases: the
//! request's headers, its body (admission), the response (usage), the end
//! (settle). Each message is translated into a call on the engine and its
//! answer back into Envoy's; the policy is all in `engine::Admission`.

use super::answer;
use super::facts::{Facts, RequestFacts};
use super::reply;
use crate::app::App;
use crate::config::Config;
use crate::engine::{Admitted, Ask, Brokered, Outcome, ResponseEnd, ResponseReader};
use crate::rules::LlmSettings;
use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use envoy_types::pb::google::protobuf::Struct;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the service answers to one message of the stream.
type Answer = Result<Option<ProcessingResponse>, tonic::Status>;

/// Why a body message has no request to admit.
enum Early {
    /// The stream is not an LLM request: it goes on untouched.
    Passthrough,
    /// The stream's request had its body already.
    SecondBody,
}

/// Added to Envoy's message timer beyond the longest wait, for the answer
/// itself to arrive.
pub(super) const TIMER_MARGIN: Duration = Duration::from_secs(1);

type Replies = mpsc::Sender<Result<ProcessingResponse, tonic::Status>>;

pub(super) struct Exchange {
    app: Arc<App>,
    /// The config this request started with, to its end.
    config: Arc<Config>,
    /// For a message sent while the answer waits (Envoy's timer extension).
    replies: Replies,
    /// Cancelled when Envoy closes the stream.
    gone: CancellationToken,
    phase: Phase,
}

enum Phase {
    /// Before the request body; the request's facts once its headers came
    /// (from their message, or with the body when Envoy skips that one).
    Request(Option<RequestFacts>),
    /// Not an LLM request: every message passes untouched.
    Passthrough,
    /// Admitted (on its budgets or through the marketplace) and upstream:
    /// the response is read for its usage.
    Upstream(Box<Upstream>),
    /// Nothing more to do: not an LLM request, answered, or settled.
    Done,
}

struct Upstream {
    served: Served,
    /// Follows the response body once its status is known.
    reader: Option<ResponseReader>,
}

/// Who serves an admitted request: its upstream, on its reservation, or
/// a marketplace supplier, on nothing reserved.
enum Served {
    Budget(Admitted),
    Marketplace(Brokered),
}

impl Served {
    fn endpoint_and_stream(&self) -> (tollgate_filters::Endpoint, bool) {
        match self {
            Served::Budget(a) => (a.endpoint, a.streamed),
            Served::Marketplace(b) => (b.endpoint, b.streamed),
        }
    }

    fn response_headers(&self, settings: &LlmSettings) -> Vec<HeaderValueOption> {
        match self {
            Served::Budget(a) => answer::response_headers(settings, a),
            Served::Marketplace(b) => answer::brokered_response_headers(settings, b),
        }
    }
}

impl Upstream {
    /// A reader for the response these facts describe.
    fn reader(served: &Served, facts: &Facts<'_>) -> ResponseReader {
        let content_type = facts.get("content-type");
        let (endpoint, streamed) = served.endpoint_and_stream();
        ResponseReader::new(endpoint, facts.status(), content_type.as_deref(), streamed)
    }
}

impl Exchange {
    pub fn new(app: Arc<App>, replies: Replies, gone: CancellationToken) -> Exchange {
        let config = app.config.load_full();
        Exchange {
            app,
            config,
            replies,
            gone,
            phase: Phase::Request(None),
        }
    }

    /// Handles one message from Envoy; `Ok(None)` if it needs no answer.
    /// A second request body on one stream is refused: one stream is one
    /// HTTP request, and a second reservation would never be settled.
    ///
    /// Envoy may send the request and response headers as their own
    /// messages, or skip them (one round trip fewer each) and send what
    /// tollgate needs as attributes with the first body message; both work.
    pub async fn on_message(
        &mut self,
        msg: ProcessingRequest,
    ) -> Result<Option<ProcessingResponse>, tonic::Status> {
        let ProcessingRequest {
            request,
            attributes,
            ..
        } = msg;
        let Some(request) = request else {
            return Ok(None);
        };
        Ok(match request {
            Request::RequestHeaders(h) => {
                let facts = Facts::Headers(h.headers.as_ref());
                let settings = &self.config.llm.settings;
                self.phase = Phase::Request(Some(facts.request(settings, h.end_of_stream)));
                Some(reply::request_headers(vec![]))
            }
            Request::RequestBody(b) => {
                let facts = match self.body_facts(&attributes) {
                    Ok(facts) => facts,
                    Err(why) => return self.early(why),
                };
                self.on_request_body(facts, &b.body, b.end_of_stream).await
            }
            Request::ResponseHeaders(h) => {
                self.start_response(&Facts::Headers(h.headers.as_ref()));
                let reply = match &self.phase {
                    Phase::Upstream(u) => u.served.response_headers(&self.config.llm.settings),
                    _ => vec![],
                };
                if h.end_of_stream {
                    self.finish().await;
                }
                Some(reply::response_headers(reply))
            }
            Request::ResponseBody(b) => {
                if let Phase::Upstream(u) = &mut self.phase {
                    // Headers skipped: the status comes as an attribute,
                    // SSE or not from the request's `stream`.
                    let reader = u.reader.get_or_insert_with(|| {
                        Upstream::reader(&u.served, &Facts::Attributes(&attributes))
                    });
                    reader.feed(&b.body);
                }
                if b.end_of_stream {
                    self.finish().await;
                }
                Some(reply::response_body())
            }
            Request::RequestTrailers(_) => Some(ProcessingResponse {
                response: Some(Response::RequestTrailers(Default::default())),
                ..Default::default()
            }),
            Request::ResponseTrailers(_) => {
                self.finish().await;
                Some(ProcessingResponse {
                    response: Some(Response::ResponseTrailers(Default::default())),
                    ..Default::default()
                })
            }
        })
    }

    /// Admission, and its outcome as Envoy's answer.
    async fn on_request_body(
        &mut self,
        facts: RequestFacts,
        body: &[u8],
        end_of_stream: bool,
    ) -> Option<ProcessingResponse> {
        let Some(endpoint) = facts.endpoint else {
            self.phase = Phase::Passthrough;
            return Some(reply::request_body(vec![], None, None));
        };
        let settings = &self.config.llm.settings;
        // Envoy cuts the request at its `max_message_timeout`: the answer
        // must come before, however long the request may wait.
        let allowed = settings.max_message_timeout.saturating_sub(TIMER_MARGIN);
        let replies = self.replies.clone();
        let outcome = self
            .app
            .engine
            .admission
            .admit(
                Ask {
                    llm: &self.config.llm,
                    marketplace: &self.config.marketplace,
                    identity: facts.identity,
                    endpoint,
                    body,
                    complete: end_of_stream,
                    deadline: tokio::time::Instant::now() + allowed,
                    cancel: &self.gone,
                },
                |wait| {
                    // Not an answer: Envoy waits this long for the answer.
                    let _ = replies.try_send(Ok(reply::extend_timer(wait + TIMER_MARGIN)));
                },
            )
            .await;
        let provider = endpoint.provider();
        match outcome {
            Outcome::Admitted(admitted) => {
                let reply = answer::admitted(settings, &admitted);
                self.phase = Phase::Upstream(Box::new(Upstream {
                    served: Served::Budget(*admitted),
                    reader: None,
                }));
                Some(reply)
            }
            Outcome::Brokered(brokered) => {
                let reply = answer::brokered(settings, &brokered, &facts.path);
                self.phase = Phase::Upstream(Box::new(Upstream {
                    served: Served::Marketplace(*brokered),
                    reader: None,
                }));
                Some(reply)
            }
            Outcome::Denied(d) => Some(answer::denied(settings, provider, &d)),
            Outcome::Rejected(r) => Some(answer::rejected(provider, &r)),
            Outcome::Cancelled { .. } => None,
        }
    }

    /// The response's headers came (or the attributes standing in for
    /// them): read its body from now on.
    fn start_response(&mut self, facts: &Facts<'_>) {
        if let Phase::Upstream(u) = &mut self.phase {
            if u.reader.is_none() {
                u.reader = Some(Upstream::reader(&u.served, facts));
            }
        }
    }

    /// The response ended: settle with its usage, or by policy (or, for
    /// a brokered request, report its usage).
    async fn finish(&mut self) {
        let Phase::Upstream(u) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return;
        };
        let Upstream { served, reader } = *u;
        let mut reader = reader.unwrap_or_else(|| {
            let (endpoint, streamed) = served.endpoint_and_stream();
            ResponseReader::new(endpoint, 0, None, streamed)
        });
        let end = reader.completed();
        self.ended(&served, end).await;
    }

    /// Envoy closed the stream before the response ended: the client went
    /// away (or the upstream failed). Frees the slot at once.
    pub async fn on_stream_end(&mut self) {
        let Phase::Upstream(u) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return;
        };
        let end = match &u.reader {
            Some(r) => r.aborted(),
            None => ResponseEnd::Aborted { output_bytes: 0 },
        };
        self.ended(&u.served, end).await;
    }

    async fn ended(&self, served: &Served, end: ResponseEnd) {
        let admission = &self.app.engine.admission;
        match served {
            Served::Budget(a) => {
                admission.finish(&self.config.llm.settings, a, end).await;
            }
            Served::Marketplace(b) => admission.report(b, end),
        }
    }

    /// A request body the service did not keep (over `[llm]
    /// max_buffered_bytes`, `held`): an LLM request is answered 503 at once,
    /// nothing reserved; one that is not an LLM request continues (Envoy
    /// has its own copy); a second body is refused as any second body is.
    pub fn on_refused_body(
        &mut self,
        msg: ProcessingRequest,
    ) -> Result<Option<ProcessingResponse>, tonic::Status> {
        let endpoint = match self.body_facts(&msg.attributes) {
            Ok(facts) => facts.endpoint,
            Err(why) => return self.early(why),
        };
        Ok(Some(match endpoint {
            Some(e) => {
                self.app
                    .metrics
                    .llm_request(crate::engine::OTHER_MODEL, "overloaded");
                super::held::overloaded(e.provider())
            }
            None => {
                self.phase = Phase::Passthrough;
                reply::request_body(vec![], None, None)
            }
        }))
    }

    /// The request's facts for its body message, taken out of the phase:
    /// from the headers message, or from the body's attributes; or why
    /// there are none ([`Exchange::early`] answers it).
    fn body_facts(&mut self, attributes: &HashMap<String, Struct>) -> Result<RequestFacts, Early> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Request(Some(facts)) => Ok(facts),
            Phase::Request(None) => {
                Ok(Facts::Attributes(attributes).request(&self.config.llm.settings, false))
            }
            Phase::Passthrough => {
                self.phase = Phase::Passthrough;
                Err(Early::Passthrough)
            }
            other => {
                self.phase = other;
                Err(Early::SecondBody)
            }
        }
    }

    /// A passthrough stream's body continues; a second body is refused.
    fn early(&self, why: Early) -> Answer {
        match why {
            Early::Passthrough => Ok(Some(reply::request_body(vec![], None, None))),
            Early::SecondBody => Err(self.second_body()),
        }
    }

    fn second_body(&self) -> tonic::Status {
        self.app
            .metrics
            .llm_request(crate::engine::OTHER_MODEL, "second_body");
        tracing::warn!("a second request body on one ext_proc stream: refused (one stream is one HTTP request)");
        tonic::Status::failed_precondition("one HTTP request per ext_proc stream")
    }
}
