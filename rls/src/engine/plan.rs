//! The hits of one decision, each with what it belongs to.

use crate::store::{Hit, HitState};

/// Hits to take in one all-or-nothing step, each with its owner (the rule
/// and descriptor, or the quota and budget, it was planned for).
///
/// The store takes a slice of hits, so hits are kept contiguous; owners
/// are only ever reached together with their hit (`push`, `iter`,
/// `with_states`), so the two can never drift apart.
#[derive(Debug)]
pub struct Plan<O> {
    hits: Vec<Hit>,
    owners: Vec<O>,
}

impl<O> Default for Plan<O> {
    fn default() -> Self {
        Plan {
            hits: Vec::new(),
            owners: Vec::new(),
        }
    }
}

impl<O> Plan<O> {
    pub fn push(&mut self, hit: Hit, owner: O) {
        self.hits.push(hit);
        self.owners.push(owner);
    }

    /// The hits alone, in order, for the store.
    pub fn hits(&self) -> &[Hit] {
        &self.hits
    }

    pub fn is_empty(&self) -> bool {
        self.hits.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Hit, &O)> {
        self.hits.iter().zip(&self.owners)
    }

    /// Each hit with its owner and the state the store answered for it
    /// (`states` is the store's answer to [`Plan::hits`], in order).
    pub fn with_states<'a>(
        &'a self,
        states: &'a [HitState],
    ) -> impl Iterator<Item = (&'a Hit, &'a O, &'a HitState)> {
        self.iter().zip(states).map(|((h, o), s)| (h, o, s))
    }
}
