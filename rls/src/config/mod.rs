//! Configuration: the TOML a platform team writes, checked whole before a
//! byte of it is used.
//!
//! `file` is the serde view of one file (spans kept for error lines),
//! `validate` turns the views into the runtime [`Config`], `error` reports
//! every problem as `file:line: field: what is wrong`.

mod error;
mod file;
mod load;
mod runtime;
mod validate;
mod validate_llm;
mod validate_tls;

pub use error::{ConfigError, ConfigErrors};
pub use load::{load, parse_str};
pub use runtime::{
    Config, LogFormat, ServerConfig, ServerTlsFiles, StoreConfig, StoreKind, StoreTlsFiles,
};
