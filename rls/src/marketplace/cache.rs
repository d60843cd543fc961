//! Supply lists, kept for `cache_ttl` so that "nothing for this model
//! under the cap" is answered without a call. A list in use (looked up
//! within the last `cache_ttl`) is refreshed in the background from half
//! its age, so it never expires while requests need it; one nobody looks
//! up is dropped when it expires.
//!
//! One `std::sync::Mutex` over a small map (one entry per opted-in model):
//! held for a lookup or an insert, never across an `.await`.

use super::protocol::SupplyOffer;
use super::settings::Price;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// What a supply list was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SupplyKey {
    pub model: String,
    pub region: Option<String>,
    pub max_price: Price,
}

#[derive(Debug)]
struct Entry {
    /// Offers for the model, within the cap, with some availability.
    usable: usize,
    fetched: Instant,
    used: Instant,
}

/// The supply lists of the models asked for.
#[derive(Debug)]
pub struct SupplyCache {
    ttl: Duration,
    entries: Mutex<HashMap<SupplyKey, Entry>>,
}

impl SupplyCache {
    pub fn new(ttl: Duration) -> SupplyCache {
        SupplyCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SupplyKey, Entry>> {
        // Entries are replaced whole: a panic elsewhere leaves none half
        // written.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the list for `key` has usable offers, if a list younger
    /// than the TTL is kept; marks it in use.
    pub fn lookup(&self, key: &SupplyKey, now: Instant) -> Option<bool> {
        let mut entries = self.lock();
        let entry = entries.get_mut(key)?;
        if now.saturating_duration_since(entry.fetched) >= self.ttl {
            return None;
        }
        entry.used = now;
        Some(entry.usable > 0)
    }

    /// Keeps the list fetched for `key` at `now`, counting the offers that
    /// could serve it. Returns whether any can.
    pub fn store(&self, key: &SupplyKey, offers: &[SupplyOffer], now: Instant) -> bool {
        let usable = offers.iter().filter(|o| usable(o, key)).count();
        let mut entries = self.lock();
        let used = entries.get(key).map_or(now, |e| e.used);
        entries.insert(
            key.clone(),
            Entry {
                usable,
                fetched: now,
                used,
            },
        );
        usable > 0
    }

    /// The lists to refresh now: in use, and at least half the TTL old.
    /// Lists nobody used within the TTL are dropped once expired.
    pub fn due(&self, now: Instant) -> Vec<SupplyKey> {
        let mut entries = self.lock();
        entries.retain(|_, e| {
            now.saturating_duration_since(e.used) < self.ttl
                || now.saturating_duration_since(e.fetched) < self.ttl
        });
        entries
            .iter()
            .filter(|(_, e)| {
                now.saturating_duration_since(e.used) < self.ttl
                    && now.saturating_duration_since(e.fetched) >= self.ttl / 2
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Age of the oldest list kept (for the metric), if any.
    pub fn oldest_age(&self, now: Instant) -> Option<Duration> {
        self.lock()
            .values()
            .map(|e| now.saturating_duration_since(e.fetched))
            .max()
    }

    /// How often the background refresh looks for due lists.
    pub fn tick(&self) -> Duration {
        (self.ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(30))
    }
}

/// An offer that could serve a request of `key`: the model asked, within
/// the cap, with some availability.
fn usable(offer: &SupplyOffer, key: &SupplyKey) -> bool {
    offer.model == key.model
        && offer.availability.is_finite()
        && offer.availability > 0.0
        && Price::from_units(offer.price_per_mtoken).is_some_and(|p| p <= key.max_price)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SupplyKey {
        SupplyKey {
            model: "gpt-4o".into(),
            region: None,
            max_price: Price(5_000_000),
        }
    }

    fn offer(model: &str, price: f64, availability: f64) -> SupplyOffer {
        SupplyOffer {
            model: model.into(),
            price_per_mtoken: price,
            availability,
        }
    }

    #[test]
    fn only_offers_that_could_serve_count() {
        let c = SupplyCache::new(Duration::from_secs(300));
        let now = Instant::now();
        let none = [
            offer("gpt-4o", 5.01, 1.0),
            offer("gpt-4o", 1.0, 0.0),
            offer("other", 1.0, 1.0),
            offer("gpt-4o", f64::NAN, 1.0),
        ];
        assert!(!c.store(&key(), &none, now));
        assert_eq!(c.lookup(&key(), now), Some(false));
        assert!(c.store(&key(), &[offer("gpt-4o", 5.0, 0.1)], now));
        assert_eq!(c.lookup(&key(), now), Some(true));
    }

    #[test]
    fn a_list_in_use_is_due_from_half_its_age_and_an_unused_one_is_dropped() {
        let ttl = Duration::from_secs(300);
        let c = SupplyCache::new(ttl);
        let t0 = Instant::now();
        c.store(&key(), &[offer("gpt-4o", 1.0, 1.0)], t0);
        assert!(c.due(t0 + Duration::from_secs(149)).is_empty());
        assert_eq!(c.due(t0 + Duration::from_secs(150)), vec![key()]);
        assert_eq!(c.lookup(&key(), t0 + Duration::from_secs(299)), Some(true));
        assert_eq!(c.lookup(&key(), t0 + ttl), None, "expired");
        // Used at 299 s: still due at 400 s, kept although expired.
        assert_eq!(c.due(t0 + Duration::from_secs(400)), vec![key()]);
        assert_eq!(
            c.oldest_age(t0 + Duration::from_secs(400)),
            Some(Duration::from_secs(400))
        );
        // Nobody looked it up for a TTL: dropped.
        assert!(c.due(t0 + Duration::from_secs(600)).is_empty());
        assert_eq!(c.oldest_age(t0 + Duration::from_secs(600)), None);
    }
}
