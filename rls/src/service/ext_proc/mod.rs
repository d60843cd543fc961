//! `envoy.service.ext_proc.v3.ExternalProcessor`: token budgets for LLM
//! requests. One gRPC stream is one HTTP request; an `Exchange` follows it.

mod answer;
mod exchange;
mod facts;
mod reply;

use crate::app::App;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use exchange::Exchange;
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
}

impl ExtProcGrpc {
    pub fn new(app: Arc<App>) -> ExtProcGrpc {
        ExtProcGrpc { app }
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
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        msg = inbound.next() => match msg {
                            Some(Ok(m)) => {
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
                match exchange.on_message(msg).await {
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
