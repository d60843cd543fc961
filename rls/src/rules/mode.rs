//! How a domain answers: tollgate's all-or-nothing decisions, or
//! envoyproxy/ratelimit's (each descriptor counted on its own, every hit
//! counted), and which headers go with the answer. YAML domains get the
//! peer's answers; TOML domains tollgate's unless a `[[domain]]` says
//! otherwise (docs/migrating.md).

use serde::Serialize;

/// How the hits of one request are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Counting {
    /// Every limit of every descriptor in one atomic step; a denied request
    /// takes nothing (tollgate's default for TOML rules).
    #[default]
    AllOrNothing,
    /// envoyproxy/ratelimit's default: each descriptor on its own, and
    /// every hit counted, denied or not (its `INCRBY`), so a request of 11
    /// against 10 leaves the next single hit over the limit too.
    EveryHit,
    /// envoyproxy/ratelimit with `STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT`:
    /// when any descriptor would pass its limit, only those that would are
    /// counted; the others are left as they were.
    StopWhenOver,
}

impl Counting {
    pub fn parse(s: &str) -> Option<Counting> {
        match s {
            "all_or_nothing" => Some(Counting::AllOrNothing),
            "every_hit" => Some(Counting::EveryHit),
            "stop_when_over" => Some(Counting::StopWhenOver),
            _ => None,
        }
    }
}

/// envoyproxy/ratelimit's `LIMIT_RESPONSE_HEADERS_ENABLED` headers: the
/// tightest descriptor's limit, remaining and reset, under these names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitHeaders {
    pub limit: String,
    pub remaining: String,
    pub reset: String,
}

impl Default for LimitHeaders {
    fn default() -> Self {
        LimitHeaders {
            limit: "RateLimit-Limit".into(),
            remaining: "RateLimit-Remaining".into(),
            reset: "RateLimit-Reset".into(),
        }
    }
}

/// Everything about one domain's answers that is not a rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainMode {
    pub counting: Counting,
    /// `retry-after` on a denial (tollgate's; the peer sends none).
    pub retry_after: bool,
    /// The peer's rate limit headers, when on.
    pub headers: Option<LimitHeaders>,
    /// The peer's global `SHADOW_MODE`: a denial is reported per
    /// descriptor, and the request is allowed.
    pub shadow: bool,
    /// The peer's global `QUOTA_MODE`: every descriptor is in quota mode.
    pub quota_mode: bool,
    /// The peer's `RESPONSE_DYNAMIC_METADATA`: the request and the passing
    /// descriptors' `metadata` in the response's dynamic metadata.
    pub dynamic_metadata: bool,
    /// The peer's `NEAR_LIMIT_RATIO`: past this share of a limit a hit
    /// counts as near the limit (metrics only).
    pub near_limit_ratio: f32,
    /// The IETF `RateLimit-Policy` / `RateLimit` fields on every answer
    /// (tollgate's; off unless a `[[domain]]` turns them on).
    pub ietf_headers: bool,
}

impl Default for DomainMode {
    fn default() -> Self {
        DomainMode {
            counting: Counting::AllOrNothing,
            retry_after: true,
            headers: None,
            shadow: false,
            quota_mode: false,
            dynamic_metadata: false,
            near_limit_ratio: 0.8,
            ietf_headers: false,
        }
    }
}

impl DomainMode {
    /// envoyproxy/ratelimit's answers with its default settings.
    pub fn peer() -> DomainMode {
        DomainMode {
            counting: Counting::EveryHit,
            retry_after: false,
            ..DomainMode::default()
        }
    }

    /// The number of hits past which a hit is near the limit, as the peer
    /// computes it (`floor(limit × ratio)` in single precision).
    pub fn near_threshold(&self, amount: u64) -> u64 {
        (amount as f32 * self.near_limit_ratio).floor() as u64
    }
}
