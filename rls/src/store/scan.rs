//! A bounded look at the live keys, for the operator's view (`/quotas`).
//! Never on a request's path, and never the whole keyspace: a look lists
//! at most [`ScanQuery::budget`] keys, and says whether it saw them all.
//!
//! Both stores answer the same question: the memory store walks its shards
//! (one shard locked at a time), Redis `SCAN`s each master (`MATCH
//! tg:{*`) and reads what it found in pipelines, one per hash tag (a
//! Cluster pipeline must stay in one slot).

use super::arith::Cell;
use super::keys::{KeyKind, ParsedKey};

/// Keys listed by one look unless asked otherwise.
pub const DEFAULT_SCAN_BUDGET: usize = 10_000;

/// What one look lists and reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanQuery {
    /// Read only this owner's keys (a rule's or quota's id, the hash tag)
    /// and every reservation record (a record lives in its first quota's
    /// slot but holds what it took from the others). `None`: read every
    /// key of tollgate's layout.
    pub tag: Option<String>,
    /// The most keys listed (and so read).
    pub budget: usize,
}

impl ScanQuery {
    /// Whether a listed key is read: one of tollgate's (the layout of
    /// `keys`), and the owner's or a record when a tag is given.
    pub fn wants(&self, key: &str) -> bool {
        let Some(parsed) = ParsedKey::parse(key) else {
            return false;
        };
        match &self.tag {
            None => true,
            Some(tag) => {
                parsed.tag == tag
                    || matches!(
                        parsed.kind,
                        KeyKind::Reservation { .. } | KeyKind::RlsReservation { .. }
                    )
            }
        }
    }
}

/// One live key and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveKey {
    pub key: String,
    pub cell: Cell,
}

/// The answer to one look.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scanned {
    /// The live keys it wanted, with their state.
    pub keys: Vec<LiveKey>,
    /// Keys listed, wanted or not (at most the budget).
    pub looked_at: usize,
    /// Every key was listed: the budget did not run out first.
    pub complete: bool,
    /// Keys under tollgate's prefix whose value is not what their kind
    /// holds (another application's key, a layout from another version):
    /// left out, and counted.
    pub unreadable: usize,
}

/// Counts keys against a budget.
#[derive(Debug)]
pub(super) struct Budget {
    left: usize,
    looked_at: usize,
    exhausted: bool,
}

impl Budget {
    pub fn new(budget: usize) -> Budget {
        Budget {
            left: budget,
            looked_at: 0,
            exhausted: false,
        }
    }

    /// Takes one key from the budget; `false` (and exhausted from then on)
    /// when none is left.
    pub fn take(&mut self) -> bool {
        if self.left == 0 {
            self.exhausted = true;
            return false;
        }
        self.left -= 1;
        self.looked_at += 1;
        true
    }

    /// The look stops before listing everything (for a reason other than
    /// keys, e.g. Redis's `SCAN` calls).
    pub fn cut(&mut self) {
        self.exhausted = true;
    }

    pub fn is_exhausted(&self) -> bool {
        self.exhausted
    }

    pub fn looked_at(&self) -> usize {
        self.looked_at
    }
}
