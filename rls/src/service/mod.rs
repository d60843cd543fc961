//! The gRPC protocol edge: proto in, domain types to the engine, proto out.

pub mod ratelimit;

pub use ratelimit::RateLimitGrpc;
