//! The gRPC protocol edge: proto in, domain types to the engine, proto out.

pub mod ext_proc;
pub mod http_check;
pub mod ietf_headers;
pub mod ratelimit;

pub use ext_proc::ExtProcGrpc;
pub use ratelimit::RateLimitGrpc;
