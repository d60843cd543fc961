/// Why the store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Redis refused the credentials of `store.url` (or has none): transient
    /// as far as the breaker goes, since an operator fixes it on either side.
    #[error("store refused our credentials (auth failed): {0}")]
    Auth(String),
    /// The store answered, with an error that says it cannot serve anyone
    /// now (out of memory, a read-only replica, loading, no master, ...):
    /// an outage as much as a dead store, whatever was asked.
    #[error("store cannot serve ({0}): {1}")]
    Refused(Refusal, String),
    /// The store answered, and rejected this call or answered it in a shape
    /// we do not expect (a script bug, a key of another type under our
    /// prefix): the store itself is fine, so this is not an outage.
    #[error("store rejected the call: {0}")]
    Protocol(String),
}

/// A store-side condition that makes every call fail until it clears: the
/// Redis error codes that say so, as a closed set (bounded metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `OOM`: `maxmemory` reached under `noeviction` (writes refused).
    OutOfMemory,
    /// `READONLY`: a replica, e.g. after a failover we were not told of.
    ReadOnly,
    /// `LOADING`: the dataset is still being loaded after a restart.
    Loading,
    /// `MASTERDOWN`: a replica that lost its master (stale data refused).
    MasterDown,
    /// `CLUSTERDOWN`: the cluster cannot serve the slot.
    ClusterDown,
    /// `TRYAGAIN`: a cluster slot in the middle of a migration.
    TryAgain,
    /// `BUSY`: another client's script is running past its time limit.
    Busy,
    /// `MISCONF`: Redis refuses writes because it cannot persist.
    Misconf,
    /// `NOREPLICAS`: not enough replicas for `min-replicas-to-write`.
    NoReplicas,
    /// `NOSCRIPT` even after the script was loaded again: the script cache
    /// does not keep it (flushed in a loop, or a proxy in front).
    NoScript,
}

impl Refusal {
    /// The condition of a Redis error code, if it is one of these.
    pub fn from_code(code: &str) -> Option<Refusal> {
        Some(match code {
            "OOM" => Refusal::OutOfMemory,
            "READONLY" => Refusal::ReadOnly,
            "LOADING" => Refusal::Loading,
            "MASTERDOWN" => Refusal::MasterDown,
            "CLUSTERDOWN" => Refusal::ClusterDown,
            "TRYAGAIN" => Refusal::TryAgain,
            "BUSY" => Refusal::Busy,
            "MISCONF" => Refusal::Misconf,
            "NOREPLICAS" => Refusal::NoReplicas,
            "NOSCRIPT" => Refusal::NoScript,
            _ => return None,
        })
    }

    /// The Redis error code, as Redis writes it.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::OutOfMemory => "OOM",
            Refusal::ReadOnly => "READONLY",
            Refusal::Loading => "LOADING",
            Refusal::MasterDown => "MASTERDOWN",
            Refusal::ClusterDown => "CLUSTERDOWN",
            Refusal::TryAgain => "TRYAGAIN",
            Refusal::Busy => "BUSY",
            Refusal::Misconf => "MISCONF",
            Refusal::NoReplicas => "NOREPLICAS",
            Refusal::NoScript => "NOSCRIPT",
        }
    }

    /// The metric label: the code in lower case.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::OutOfMemory => "oom",
            Refusal::ReadOnly => "readonly",
            Refusal::Loading => "loading",
            Refusal::MasterDown => "masterdown",
            Refusal::ClusterDown => "clusterdown",
            Refusal::TryAgain => "tryagain",
            Refusal::Busy => "busy",
            Refusal::Misconf => "misconf",
            Refusal::NoReplicas => "noreplicas",
            Refusal::NoScript => "noscript",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl StoreError {
    /// Whether asking again later may succeed (the failure is in the store
    /// or the network, not in what we sent). Transient errors count
    /// towards opening the circuit; the others show the store answering.
    pub fn is_transient(&self) -> bool {
        !matches!(self, StoreError::Protocol(_))
    }

    /// A bounded label for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Auth(_) => "auth",
            StoreError::Refused(r, _) => r.label(),
            StoreError::Protocol(_) => "protocol",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_round_trip_and_are_transient() {
        for code in [
            "OOM",
            "READONLY",
            "LOADING",
            "MASTERDOWN",
            "CLUSTERDOWN",
            "TRYAGAIN",
            "BUSY",
            "MISCONF",
            "NOREPLICAS",
            "NOSCRIPT",
        ] {
            let r = Refusal::from_code(code).expect(code);
            assert_eq!(r.code(), code);
            assert_eq!(r.label(), code.to_lowercase());
            let e = StoreError::Refused(r, "x".into());
            assert!(e.is_transient(), "{code}");
            assert_eq!(e.kind(), r.label());
        }
        for code in ["ERR", "WRONGTYPE", "CROSSSLOT", "NOPERM", ""] {
            assert_eq!(Refusal::from_code(code), None, "{code}");
        }
        assert!(!StoreError::Protocol("x".into()).is_transient());
        assert_eq!(
            StoreError::Refused(Refusal::OutOfMemory, "command not allowed".into()).to_string(),
            "store cannot serve (OOM): command not allowed"
        );
    }
}
