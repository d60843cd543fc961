//! Configuration: the TOML a platform team writes, checked whole before a
//! byte of it is used.
//!
//! `tree` parses a file to a spanned tree and deserializes each table on
//! its own into the serde views of `file` (spans kept for error lines),
//! `validate` turns the views into the runtime [`Config`], `error` reports
//! every problem as `file:line: field: what is wrong`, with `suggest`'s
//! nearest valid name for a misspelt one.

mod error;
mod file;
mod load;
mod marketplace_view;
mod redis_url;
mod runtime;
mod suggest;
mod tree;
mod validate;
mod validate_leases;
mod validate_llm;
mod validate_marketplace;
mod validate_tls;

pub use error::{ConfigError, ConfigErrors};
pub use load::{load, parse_str};
pub use runtime::{
    Config, LogFormat, ServerConfig, ServerTlsFiles, StoreConfig, StoreKind, StoreTlsFiles,
};
