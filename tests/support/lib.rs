//! The end-to-end harness: real processes on loopback ports, each waited
//! for (bounded) until it answers and killed when dropped.
//!
//! * [`process`]: `free_port`, tool lookup, scratch dirs and logs under
//!   `target/tollgate-test/<name>-<pid>-<n>/`, bounded waits that print the
//!   last 50 log lines when they fail.
//! * [`RedisServer`], [`RedisCluster`]: `redis-server` without persistence;
//!   kill and restart on the same ports for failure tests; a server behind
//!   a password or TLS-only.
//! * [`NetNs`]: a network namespace joined to the root one by a link
//!   whose faults a test sets (latency, loss, a partition), e.g. for a
//!   [`RedisServer`] started in it.
//! * [`Envoy`]: a bootstrap from `envoy/` with `{{PLACEHOLDER}}`s filled;
//!   ports read back from Envoy's admin.
//! * [`Tollgate`]: the real binary on a config given as text; addresses
//!   read back from its `--ready-file`.
//! * [`Nginx`]: an `http {}` block in a private prefix.
//! * [`metric`]: one sample from a `/metrics` scrape; [`avoid_window_edge`]
//!   keeps a burst inside one fixed window.
//! * [`tenant_request`]: the one-tenant rate limit request.
//! * [`Pki`]: a private CA and certificates it signs, as PEM files, made
//!   at run time; [`replace_file`] swaps a file by atomic rename.
//! * [`MockLlm`]: an in-process OpenAI/Anthropic upstream (JSON and SSE),
//!   steered by `x-mock-*` request headers; also the `mock-llm` binary.
//! * [`MockMarketplace`]: a capacity marketplace (supplies, quotes, usage
//!   reports) over plain HTTP, scripted per quote, counting every accepted
//!   socket and keeping every byte it receives; [`MockSupplier`]: an
//!   OpenAI-compatible supplier over TLS that checks its signed token.
//! * [`deploy`]: YAML, kustomize, kubernetes-validate, CRD schemas and
//!   promtool for the tests of `deploy/`, and Istio `EnvoyFilter` patches
//!   applied to a static Envoy bootstrap.
//!
//! A missing tool fails the test with a message naming
//! `scripts/install-test-deps.sh`; nothing is ever skipped.

#![forbid(unsafe_code)]

pub mod deploy;
mod envoy;
mod mock_llm;
mod mock_marketplace;
mod mock_supplier;
mod netns;
mod nginx;
mod pki;
pub mod process;
mod prom;
mod redis;
mod rls;
mod tollgate;

pub use envoy::{envoy_bin, ext_proc_with_header_messages, http_get, render_template, Envoy};
pub use mock_llm::{MockLlm, Received};
pub use mock_marketplace::{MockMarketplace, Quote, Supply};
pub use mock_supplier::{MockSupplier, SUPPLIER_PREFIX};
pub use netns::{Fault, NetNs};
pub use nginx::Nginx;
pub use pki::{replace_file, Issued, Pki};
pub use process::{find_tool, free_port, repo_root, scratch_dir, wait_until, Signal};
pub use prom::{avoid_window_edge, metric};
pub use redis::{RedisCluster, RedisServer};
pub use rls::tenant_request;
pub use tollgate::Tollgate;
