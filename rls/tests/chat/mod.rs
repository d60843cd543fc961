//! What the admission suites share: one chat-completions request for a
//! tenant, handed to the engine as the ext_proc edge hands it.

use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tollgate::config::Config;
use tollgate::engine::{Ask, Engine, Outcome};
use tollgate::rules::Identity;
use tollgate_filters::Endpoint;

/// Admits `body` (an OpenAI chat request, whole) for `tenant` on
/// `/v1/chat/completions` under `config`, waiting for capacity at most
/// until `deadline`; `on_wait` sees each wait announced to the proxy.
pub async fn admit(
    engine: &Engine,
    config: &Config,
    tenant: &str,
    body: &serde_json::Value,
    deadline: Instant,
    on_wait: impl FnMut(Duration),
) -> Outcome {
    let body = serde_json::to_vec(body).expect("a JSON value serialises");
    let cancel = CancellationToken::new();
    engine
        .admission
        .admit(
            Ask {
                llm: &config.llm,
                marketplace: &config.marketplace,
                identity: Identity {
                    tenant: Some(tenant.into()),
                    route: "/v1/chat/completions".into(),
                    ..Default::default()
                },
                endpoint: Endpoint::ChatCompletions,
                body: &body,
                complete: true,
                deadline,
                cancel: &cancel,
            },
            on_wait,
        )
        .await
}
