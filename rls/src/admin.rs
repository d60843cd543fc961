//! The admin HTTP listener: liveness, readiness, metrics, the config in
//! force, the live view of budgets (`/quotas` and its page, `view`), and
//! the HTTP check API for nginx and other proxies. Bound to loopback
//! unless configured otherwise: it is for the operator and the scraper,
//! not for clients (the live view shows tenants' values).

use crate::app::App;
use crate::view::{self, Filters, ViewError};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .route("/quotas", get(quotas))
        .route("/", get(page))
        .route("/ui", get(page))
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

/// `/quotas?quota=NAME&tenant=T&top=N`: the keys in use, from one bounded
/// look at the store (`view::quotas`).
async fn quotas(
    State(app): State<Arc<App>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let filters = match filters(&params) {
        Ok(f) => f,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let config = app.config.load_full();
    let counters = app.engine.counters();
    let answer = view::quotas(
        &config,
        counters.store().as_ref(),
        filters,
        crate::store::DEFAULT_SCAN_BUDGET,
        counters.now_ms(),
    )
    .await;
    match answer {
        Ok(a) => ([(header::CACHE_CONTROL, "no-store")], Json(a)).into_response(),
        Err(e @ ViewError::UnknownQuota(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ ViewError::Store(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// The longest `quota` or `tenant` filter: a tenant's value is user data,
/// so a filter is only ever compared, never kept, and a longer one is
/// refused without being echoed back.
const MAX_FILTER_BYTES: usize = 1_024;

/// The query of `/quotas`, checked: unknown parameters and a `top` that is
/// not a number from 1 to `MAX_TOP` are refused, not ignored.
fn filters(params: &HashMap<String, String>) -> Result<Filters, String> {
    if let Some(unknown) = params
        .keys()
        .find(|k| !["quota", "tenant", "top"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown parameter `{}`: expected quota, tenant or top",
            cut(unknown)
        ));
    }
    let top = match params.get("top") {
        None => view::DEFAULT_TOP,
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=view::MAX_TOP).contains(&n) => n,
            _ => {
                return Err(format!(
                    "top: `{}`: expected a number from 1 to {}",
                    cut(t),
                    view::MAX_TOP
                ))
            }
        },
    };
    let given = |name: &str| match params.get(name).filter(|v| !v.is_empty()) {
        Some(v) if v.len() > MAX_FILTER_BYTES => Err(format!(
            "{name}: longer than {MAX_FILTER_BYTES} bytes ({})",
            v.len()
        )),
        v => Ok(v.cloned()),
    };
    Ok(Filters {
        quota: given("quota")?,
        tenant: given("tenant")?,
        top,
    })
}

/// What an error echoes of a refused parameter: its first 40 characters.
fn cut(s: &str) -> String {
    const SHOWN: usize = 40;
    match s.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The quota page (`view::page`), with a policy that lets it load nothing
/// from anywhere else.
async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, view::PAGE_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        view::PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, String)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn filter_values_are_bounded_and_not_echoed_back() {
        let long = "t".repeat(MAX_FILTER_BYTES + 1);
        for name in ["quota", "tenant"] {
            let e = filters(&query(&[(name, long.clone())])).expect_err(name);
            assert!(e.starts_with(&format!("{name}: longer than")), "{e}");
            assert!(!e.contains(&long[..100]), "the value is not echoed: {e}");
        }
        let most = "t".repeat(MAX_FILTER_BYTES);
        let f = filters(&query(&[("tenant", most.clone())])).expect("at the bound");
        assert_eq!(f.tenant, Some(most));
    }

    #[test]
    fn refused_parameters_are_echoed_cut_short() {
        let long = "x".repeat(10_000);
        for q in [
            query(&[(long.as_str(), "1".into())]),
            query(&[("top", long.clone())]),
        ] {
            let e = filters(&q).expect_err("refused");
            assert!(e.len() < 200, "{} bytes: {e}", e.len());
        }
        assert_eq!(
            filters(&query(&[("top", "0".into())])).expect_err("top 0"),
            "top: `0`: expected a number from 1 to 1000"
        );
    }
}
