//! The admin HTTP listener: liveness, readiness, metrics, the config in
//! force, and the HTTP check API for nginx and other proxies. Bound to loopback unless configured otherwise: it is for the
//! operator and the scraper, not for clients.

use crate::app::App;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .with_state(app.clone())
        .merge(crate::service::http_check::router(app))
}

/// Ready while the store answers: a load balancer should send traffic to
/// an instance whose decisions come from the shared store.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.store_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response()
    }
}

/// The scrape reads the breaker at the moment it is taken, so
/// `tollgate_store_up` and `/readyz` never disagree.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    if let Some(health) = &app.store_health {
        app.metrics
            .store_circuit(health.is_closed(), health.opens());
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// The rules and LLM quotas in force, their version and when they were
/// loaded.
async fn config(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let c = app.config.load();
    let loaded = c
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Json(json!({
        "version": c.version,
        "loaded_at_unix": loaded,
        "sources": c.sources,
        "server": c.server,
        "store": {
            "kind": c.store.kind,
            // URLs may carry a password; show only how many there are.
            "nodes": c.store.urls.len(),
            "timeout": humantime::format_duration(c.store.timeout).to_string(),
            "on_error": c.store.on_error,
        },
        "instance": {
            "id": app.engine.counters().instances().id,
            // As the registry counted at its last heartbeat (1 for a store
            // nobody shares).
            "live": app.engine.counters().instances().live(),
        },
        "leases": c.leases,
        "rules": c.rules.rules,
        // Models, quotas, classes and the ext_proc settings in force.
        "llm": &*c.llm,
    }))
}
