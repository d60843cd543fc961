//! The health probe: a write on this instance's own probe counter.

use super::script::Mode;
use super::RedisStore;
use crate::rules::{Algorithm, Limit, Period};
use crate::store::{Counter, Hit, StoreError};

/// The probe counter's key, before the instance id: outside every rule's
/// `tg:{...}` space, under the same `tg:` prefix (one ACL pattern covers
/// both). One key per instance per second, expiring with its window.
const PROBE_PREFIX: &str = "tg:probe:";

/// The probe counter: a per-second window that never fills (one take a
/// second) and never denies (not enforced).
const PROBE_LIMIT: Limit = Limit {
    amount: 1_000_000,
    period: Period::Second,
    algorithm: Algorithm::FixedWindow,
    zone: crate::rules::Zone::Utc,
};

impl RedisStore {
    /// `Store::ping`: one take on this instance's probe counter, which
    /// never denies, so only a failing Redis makes it fail.
    pub(super) async fn probe(&self) -> Result<(), StoreError> {
        let probe = Hit {
            key: format!("{PROBE_PREFIX}{}", self.instance),
            counter: Counter::Rate(PROBE_LIMIT),
            cost: 1,
            enforce: false,
        };
        let now_ms = crate::engine::Clock::System.now_ms();
        self.run(&[&probe], None, false, now_ms, Mode::Take)
            .await
            .map(|_| ())
    }
}
