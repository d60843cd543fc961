//! The gRPC protocol edge: proto in, domain types to the engine, proto out.

// pub mod ext_proc; (waits for tollgate-filters)
pub mod ratelimit;

pub use ratelimit::RateLimitGrpc;
