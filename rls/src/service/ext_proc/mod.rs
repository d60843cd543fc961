//! `envoy.service.ext_proc.v3.ExternalProcessor`: token budgets for LLM
//! requests. One gRPC stream is one HTTP request; an `Exchange` follows it.
//! Request bodies are counted against one bound for all streams from the
//! moment they are read (`held`).

mod answer;
mod exchange;
mod facts;
mod held;
mod reply;

use crate::app::App;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use exchange::Exchange;
use held::{BodyBytes, Hold};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// The external processor service.
pub struct ExtProcGrpc {
    app: Arc<App>,
    /// Request bodies held by every stream together.
    bodies: Arc<BodyBytes>,
}

impl ExtProcGrpc {
    pub fn new(app: Arc<App>) -> ExtProcGrpc {
        let bodies = BodyBytes::new(app.metrics.guard.buffered_bytes.clone());
        ExtProcGrpc { app, bodies }
    }
}

/// A message on its way from the stream to the exchange.
enum Inbound {
    /// With the hold on its body's bytes, if it carries a body.
    Message(ProcessingRequest, Option<Hold>),
    /// A request body that was not kept: over the bound.
    Refused(ProcessingRequest),
}

/// Reads `msg`'s body against the bound: the message with its hold, or a
/// refusal with the body dropped.
fn count_body(app: &App, bodies: &Arc<BodyBytes>, msg: ProcessingRequest) -> Inbound {
    let bytes = match &msg.request {
        Some(Message::RequestBody(b)) => b.body.len(),
        _ => return Inbound::Message(msg, None),
    };
    let settings = &app.config.load().llm.settings;
    match bodies.hold(bytes, settings.max_buffered_bytes, settings.max_body_bytes) {
        Ok(hold) => Inbound::Message(msg, hold),
        Err(over) => {
            bodies.refused(over);
            let mut msg = msg;
            if let Some(Message::RequestBody(b)) = &mut msg.request {
                b.body = Vec::new();
            }
            Inbound::Refused(msg)
        }
    }
}

type Replies = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProcGrpc {
    type ProcessStream = Replies;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        // Fires when Envoy closes either direction: the request is gone,
        // and a request waiting for capacity stops waiting.
        let gone = CancellationToken::new();
        let (messages_tx, mut messages) = mpsc::channel(8);
        {
            let gone = gone.clone();
            let replies = tx.clone();
            let (app, bodies) = (self.app.clone(), self.bodies.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        msg = inbound.next() => match msg {
                            Some(Ok(m)) => {
                                // Counted as soon as it is read: a body
                                // waiting in this channel is held too.
                                let m = count_body(&app, &bodies, m);
                                if messages_tx.send(m).await.is_err() {
                                    break;
                                }
                            }
                            _ => break,
                        },
                        _ = replies.closed() => break,
                    }
                }
                gone.cancel();
            });
        }
        let mut exchange = Exchange::new(self.app.clone(), tx.clone(), gone.clone());
        tokio::spawn(async move {
            // Runs until Envoy closes the stream; whatever is still
            // reserved then is settled by policy, so a client that goes
            // away mid-stream frees its slot at once.
            while let Some(msg) = messages.recv().await {
                // The hold ends when the exchange is done with the body:
                // after admission, however long it waited.
                let answered = match msg {
                    Inbound::Message(msg, _hold) => exchange.on_message(msg).await,
                    Inbound::Refused(msg) => exchange.on_refused_body(msg),
                };
                match answered {
                    Ok(Some(reply)) => {
                        if tx.send(Ok(reply)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                }
            }
            exchange.on_stream_end().await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
