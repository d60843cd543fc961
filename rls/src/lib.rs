//! tollgate: rate limits and LLM token budgets for Envoy.
//!
//! The path of one rate limit request (RLS, or the HTTP check API):
//!
//! ```text
//! service::ratelimit        proto -> `engine::Check`, `Decision` -> proto
//!        |
//! engine::RateLimiter       find each descriptor's rule (rules::RuleTree),
//!        |                  plan one hit per limit, fold states into a Decision
//! engine::Counters          take every hit or none; on store failure,
//!        |                  each hit by its `on_error`
//! store::Store              memory (sharded maps) or redis (one Lua script)
//! ```
//!
//! The path of one LLM request (ext_proc):
//!
//! ```text
//! service::ext_proc         Exchange: the stream's phases; headers or
//!        |                  attributes + body -> `engine::Ask`
//! engine::Admission         read body -> model -> context -> class ->
//!        |                  candidates -> reserve or wait -> fallback -> deny;
//!        |                  at the response's end, finish (settle)
//! engine::Budgets           reserve every matching quota's limits, wait in
//!        |                  line (budget::wait, budget::queue), class shares,
//!        |                  settle refunds/overage and wake the line
//! engine::Counters -> store::Store
//! ```
//!
//! Beside them: `config` (TOML -> validated `Config`, read into the model
//! of `rules`), `admin` (HTTP: health, readiness, metrics, config, and the
//! HTTP check API for nginx), `listen` (both listeners' connection limits), `metrics` (Prometheus families), `server`
//! (build, serve, drain), `background` (every background task, one
//! cancellation token), `watch` + `reload` (config hot reload), `tls` (the
//! gRPC listener's certificates, reloaded when their files change; PEM for
//! `rediss://`), `repeated` (log a repeating condition once, then
//! summarise), `vocabularies` (BPE tables built only for configured
//! models). Data flows one way: service -> engine -> store; the engine
//! never sees a proto type and a store never sees a rule.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod background;
pub mod config;
pub mod engine;
pub mod listen;
pub mod metrics;
pub mod reload;
pub mod repeated;
pub mod rules;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod vocabularies;
pub mod watch;
