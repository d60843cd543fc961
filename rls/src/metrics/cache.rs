//! Metric children resolved once per pair of label values.
//!
//! `MetricVec::with_label_values` hashes the label values, takes the
//! family's lock and clones an `Arc` on every call; a decision makes
//! several such calls. Here a hit costs one read lock and two `&str` map
//! lookups, and each child is still created on its first use, so
//! `/metrics` shows exactly the series it showed before.

use prometheus::core::{MetricVec, MetricVecBuilder};
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

/// One child of a family, created on first use.
pub(super) struct Lazy<M>(OnceLock<M>);

impl<M> Lazy<M> {
    fn new() -> Lazy<M> {
        Lazy(OnceLock::new())
    }

    /// The child for `labels` in `family`.
    pub(super) fn get<B>(&self, family: &MetricVec<B>, labels: &[&str; 2]) -> &M
    where
        B: MetricVecBuilder<M = M>,
    {
        self.0.get_or_init(|| family.with_label_values(labels))
    }
}

/// First label value → second label value → the pair's children.
type Pairs<M, const N: usize> = HashMap<String, HashMap<String, [Lazy<M>; N]>>;

/// `N` lazily created children per pair of label values.
pub(super) struct PairCache<M, const N: usize> {
    map: RwLock<Pairs<M, N>>,
}

impl<M, const N: usize> PairCache<M, N> {
    pub(super) fn new() -> PairCache<M, N> {
        PairCache {
            map: RwLock::new(HashMap::new()),
        }
    }

    /// Runs `f` on the children of `(a, b)`, adding them (still unresolved)
    /// on the pair's first use. The label values come from the config or
    /// closed sets, so the map stays as small as the families themselves.
    pub(super) fn with<R>(&self, a: &str, b: &str, f: impl FnOnce(&[Lazy<M>; N]) -> R) -> R {
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            if let Some(children) = map.get(a).and_then(|m| m.get(b)) {
                return f(children);
            }
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let children = map
            .entry(a.to_string())
            .or_default()
            .entry(b.to_string())
            .or_insert_with(|| std::array::from_fn(|_| Lazy::new()));
        f(children)
    }
}
