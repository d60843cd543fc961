//! TLS: the gRPC listener's certificates (loaded, served, watched and
//! reloaded without a restart) and the PEM reading that config validation
//! and the Redis client share.

mod pem;
mod server;
mod store;
mod watch;

pub use pem::{certificates, private_key, roots, TlsError};
pub use server::{install_crypto_provider, server_config, ServerTls};
pub use store::redis_certificates;
pub use watch::spawn as spawn_watcher;
