//! The end-to-end harness: start real processes on free loopback ports,
//! wait until they answer, and kill them on drop. A missing tool fails the
//! test loudly (run `scripts/install-test-deps.sh`); nothing is skipped.

mod envoy;
mod mock_llm;
mod process;
mod redis;
mod tollgate;

pub use envoy::Envoy;
pub use mock_llm::{MockLlm, Received};
pub use process::free_port;
pub use redis::RedisServer;
pub use tollgate::Tollgate;
