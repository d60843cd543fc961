//! tollgate: rate limits and LLM token budgets for Envoy.
//!
//! The path of one rate limit request:
//!
//! ```text
//! service::ratelimit   proto -> `engine::Check`, answer -> proto
//!        |
//! engine::Engine       find each descriptor's rule (rules::RuleTree), build
//!        |             the hits, ask the store, turn states into a Decision
//! store::Store         memory (sharded maps) or redis (one Lua script):
//!                      take every hit or none
//! ```
//!
//! An LLM request through ext_proc takes the same path with a reservation
//! (`engine::budget`): when it does not fit, it waits in the line of the
//! counter that said no (`engine::wait`, `engine::queue`) until capacity
//! frees, then falls back to other models, then gets 429.
//!
//! Beside it: `config` (TOML -> validated `Config`), `admin` (HTTP:
//! health, readiness, metrics, config, and the HTTP check API for nginx),
//! `metrics` (Prometheus families), `server` (wires listeners and
//! shutdown), `tls` (the gRPC listener's certificates, reloaded when their
//! files change; PEM for `rediss://`). Data flows one way: service ->
//! engine -> store; the engine never sees a proto type and a store never
//! sees a rule.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod background;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod reload;
pub mod repeated;
pub mod rules;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod watch;
