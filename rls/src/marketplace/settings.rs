//! `[marketplace]` once validated: whether the marketplace may be asked at
//! all, how the client reaches it, and the policy each quote must meet.
//! `config/validate_marketplace.rs` builds it; nothing here reads TOML.

use std::path::PathBuf;
use std::time::Duration;

/// Money per million tokens, in integer micro-units of the marketplace's
/// currency (`12.5` is `12_500_000`), as the rest of tollgate counts spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Price(pub u64);

impl Price {
    /// Largest price accepted from a config or a quote: a million units
    /// per million tokens is far beyond any real price and keeps the
    /// micro-units well inside `u64`.
    pub const MAX_UNITS: f64 = 1_000_000.0;

    /// A price as JSON or TOML write it (`12.5`); `None` when negative,
    /// not finite or above [`Price::MAX_UNITS`].
    pub fn from_units(units: f64) -> Option<Price> {
        if !units.is_finite() || !(0.0..=Price::MAX_UNITS).contains(&units) {
            return None;
        }
        Some(Price((units * 1_000_000.0).round() as u64))
    }

    /// The price in units again, for the wire and for logs.
    pub fn units(self) -> f64 {
        self.0 as f64 / 1_000_000.0
    }
}

/// Where the marketplace API key is read from: never the config itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeySource {
    /// An environment variable of the tollgate process.
    Env(String),
    /// A file (a mounted secret); surrounding whitespace is trimmed.
    File(PathBuf),
}

/// One supplier host the operator accepts, with its port when it names
/// one (`api.supplier.example` or `api.supplier.example:8443`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    pub host: String,
    pub port: Option<u16>,
}

impl AllowedHost {
    /// Whether a supplier endpoint's host and port are this entry: the
    /// host exactly (ASCII case ignored), and the port when one is named.
    pub fn admits(&self, host: &str, port: u16) -> bool {
        self.host.eq_ignore_ascii_case(host) && self.port.is_none_or(|p| p == port)
    }
}

/// The circuit breaker in front of every marketplace call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open it.
    pub failures: u32,
    /// How long it stays open before one probe may go out.
    pub open_for: Duration,
}

/// How usage reports are queued and retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportSettings {
    /// Reports waiting to be sent at most; more are dropped (and counted).
    pub queue: usize,
    /// Tries per report, the first included.
    pub attempts: u32,
    /// The pause before the second try; it doubles up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
}

/// The validated `[marketplace]` section. Off unless `enabled = true`, and
/// `offline_mode = true` turns it off whatever else is set.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketplaceConfig {
    pub enabled: bool,
    pub offline_mode: bool,
    /// The marketplace's base URL (`https://...`, or `http://` to a
    /// loopback address), without a trailing slash.
    pub endpoint: String,
    pub api_key: Option<ApiKeySource>,
    /// The `[[model]]` names it may be asked for.
    pub models: Vec<String>,
    /// The classes it may be asked for; `None`: every request of those
    /// models, with a class or without.
    pub classes: Option<Vec<String>>,
    /// The most a quote may cost per million tokens.
    pub max_price: Price,
    /// Supplier hosts a quote may send a request to.
    pub allowed_hosts: Vec<AllowedHost>,
    /// Sent as the region hint, and as the supplies' `region`.
    pub region: Option<String>,
    /// The longest the marketplace step may add to one request (every
    /// call it makes for that request together).
    pub timeout: Duration,
    /// How long a supply list is trusted.
    pub cache_ttl: Duration,
    pub breaker: BreakerSettings,
    pub reports: ReportSettings,
}

impl Default for MarketplaceConfig {
    fn default() -> Self {
        MarketplaceConfig {
            enabled: false,
            offline_mode: false,
            endpoint: String::new(),
            api_key: None,
            models: Vec::new(),
            classes: None,
            max_price: Price::default(),
            allowed_hosts: Vec::new(),
            region: None,
            timeout: Duration::from_millis(500),
            cache_ttl: Duration::from_secs(300),
            breaker: BreakerSettings {
                failures: 3,
                open_for: Duration::from_secs(30),
            },
            reports: ReportSettings {
                queue: 1024,
                attempts: 5,
                backoff: Duration::from_millis(200),
                backoff_max: Duration::from_secs(5),
            },
        }
    }
}

impl MarketplaceConfig {
    /// Whether the marketplace may be used at all: enabled, and not
    /// overridden by `offline_mode`. When false no client exists, so no
    /// lookup, socket or background task can happen.
    pub fn active(&self) -> bool {
        self.enabled && !self.offline_mode
    }

    /// Whether a request for `model` in `class` may be offered to the
    /// marketplace.
    pub fn opted_in(&self, model: &str, class: Option<&str>) -> bool {
        self.active()
            && self.models.iter().any(|m| m == model)
            && match &self.classes {
                None => true,
                Some(classes) => class.is_some_and(|c| classes.iter().any(|k| k == c)),
            }
    }

    /// Whether going from `self` to `new` changes what the client was
    /// built from at start (on or off, endpoint, key, cache, breaker,
    /// reports): those need a restart. The policy (models, classes, price
    /// cap, allowlist, region, timeout) applies from the next request, and
    /// turning it off applies at once.
    pub fn needs_restart(&self, new: &MarketplaceConfig) -> bool {
        (new.active() && !self.active())
            || (new.active()
                && (self.endpoint != new.endpoint
                    || self.api_key != new.api_key
                    || self.cache_ttl != new.cache_ttl
                    || self.breaker != new.breaker
                    || self.reports != new.reports))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_micro_units() {
        assert_eq!(Price::from_units(12.5), Some(Price(12_500_000)));
        assert_eq!(Price::from_units(0.0), Some(Price(0)));
        assert_eq!(Price::from_units(-1.0), None);
        assert_eq!(Price::from_units(f64::NAN), None);
        assert_eq!(Price::from_units(2e6), None);
        assert_eq!(Price(1_250_000).units(), 1.25);
    }

    #[test]
    fn offline_mode_overrides_enabled() {
        let mut c = MarketplaceConfig {
            enabled: true,
            models: vec!["m".into()],
            ..Default::default()
        };
        assert!(c.opted_in("m", None));
        assert!(!c.opted_in("other", None));
        c.offline_mode = true;
        assert!(!c.active());
        assert!(!c.opted_in("m", None));
        assert!(!MarketplaceConfig::default().active());
    }

    #[test]
    fn classes_narrow_the_opt_in() {
        let c = MarketplaceConfig {
            enabled: true,
            models: vec!["m".into()],
            classes: Some(vec!["batch".into()]),
            ..Default::default()
        };
        assert!(c.opted_in("m", Some("batch")));
        assert!(!c.opted_in("m", Some("interactive")));
        assert!(!c.opted_in("m", None));
    }

    #[test]
    fn allowed_hosts_match_host_and_port() {
        let any_port = AllowedHost {
            host: "supplier.example".into(),
            port: None,
        };
        assert!(any_port.admits("Supplier.Example", 443));
        assert!(!any_port.admits("evil.supplier.example", 443));
        let one_port = AllowedHost {
            host: "localhost".into(),
            port: Some(8443),
        };
        assert!(one_port.admits("localhost", 8443));
        assert!(!one_port.admits("localhost", 443));
    }
}
