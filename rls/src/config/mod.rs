//! Configuration: the TOML a platform team writes, checked whole before a
//! byte of it is used.
//!
//! `tree` parses a file to a spanned tree and deserializes each table on
//! its own into the serde views of `file` (spans kept for error lines),
//! `validate` turns the views into the runtime [`Config`], `error` reports
//! every problem as `file:line: field: what is wrong`, with `suggest`'s
//! nearest valid name for a misspelt one. `ratelimit_yaml` reads
//! envoyproxy/ratelimit's YAML as it is, and `peer` its settings (from
//! `[envoy_ratelimit]`, `[[domain]]` and its environment variables).

mod error;
mod file;
mod import;
mod load;
mod marketplace_view;
mod peer;
mod ratelimit_yaml;
mod redis_url;
mod runtime;
mod suggest;
mod tree;
mod validate;
mod validate_domains;
mod validate_leases;
mod validate_llm;
mod validate_marketplace;
mod validate_price;
mod validate_quota;
mod validate_rule;
mod validate_server;
mod validate_tls;

pub use error::{ConfigError, ConfigErrors};
pub use import::yaml_to_toml;
pub use load::{load, load_with, parse_files, parse_str};
pub use peer::{PeerEnv, VARIABLES as PEER_VARIABLES};
pub use runtime::{
    Config, LogFormat, ServerConfig, ServerTlsFiles, StoreConfig, StoreKind, StoreTlsFiles,
};
