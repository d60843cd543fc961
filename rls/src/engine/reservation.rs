//! A reservation: the record of what one request took, enough to settle it
//! from any instance, once.
//!
//! Both request paths leave one: ext_proc for every admitted LLM request,
//! RLS for a descriptor of a reserving rule. Settling turns the record and
//! the actual usage into store operations: unused tokens refunded into the
//! window or bucket they came from, usage above the estimate charged to
//! the current one, the concurrency slot freed.

use super::error::RecordError;
use crate::rules::{Algorithm, CountSpec, Limit, Period, Price, Tokens, Zone};
use crate::store::SettleOp;
use serde::{Deserialize, Serialize};

/// What one reservation took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: String,
    pub record_key: String,
    pub model: String,
    pub estimate: Tokens,
    pub taken: Vec<Taken>,
    /// Taken from this instance's memory while the store was down.
    pub local: bool,
    /// The class it was taken for, when classes divide the budgets, and the
    /// budgets (quota and values) whose class shares it used.
    #[serde(default)]
    pub class: Option<String>,
    #[serde(default)]
    pub class_budgets: Vec<String>,
}

/// One counter a reservation took from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Taken {
    pub quota: String,
    /// The counter's key without its window (charges go to the current one).
    pub base_key: String,
    /// The exact key taken from, window included (refunds go back here).
    pub key: String,
    pub what: TakenKind,
    pub cost: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TakenKind {
    Tokens {
        limit: LimitRecord,
        count: CountRecord,
    },
    Requests,
    /// Money at the model's prices, in micro-units.
    Spend {
        limit: LimitRecord,
        price: Price,
    },
    Slot {
        max: u64,
    },
}

impl TakenKind {
    /// What `tokens` cost under a token or spend entry (its limit, and the
    /// cost); `None` for requests and slots, whose cost does not follow the
    /// usage.
    fn metered(&self, tokens: &Tokens) -> Option<(LimitRecord, u64)> {
        match self {
            TakenKind::Tokens { limit, count } => Some((*limit, count.cost(tokens))),
            TakenKind::Spend { limit, price } => Some((*limit, price.cost(tokens))),
            TakenKind::Requests | TakenKind::Slot { .. } => None,
        }
    }
}

/// `Limit` as stored in a record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LimitRecord {
    pub amount: u64,
    /// The period's usual length; what records written before calendar
    /// periods carry alone.
    pub period_ms: u64,
    pub bucket: bool,
    #[serde(default)]
    pub period: Option<Period>,
    #[serde(default, with = "zone_name")]
    pub zone: Zone,
}

/// A zone in a record, by name; a record without one is UTC.
mod zone_name {
    use crate::rules::Zone;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(z: &Zone, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(z.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Zone, D::Error> {
        let name = String::deserialize(d)?;
        Zone::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown time zone `{name}`")))
    }
}

/// `CountSpec` as stored in a record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CountRecord {
    pub prompt: f64,
    pub completion: f64,
    pub cached: f64,
}

impl From<CountSpec> for CountRecord {
    fn from(c: CountSpec) -> Self {
        let (prompt, completion, cached) = match c {
            CountSpec::Prompt => (1.0, 0.0, 1.0),
            CountSpec::Completion => (0.0, 1.0, 0.0),
            CountSpec::Total => (1.0, 1.0, 1.0),
            CountSpec::Weights {
                prompt,
                completion,
                cached,
            } => (prompt, completion, cached),
        };
        CountRecord {
            prompt,
            completion,
            cached,
        }
    }
}

impl CountRecord {
    fn cost(&self, t: &Tokens) -> u64 {
        CountSpec::Weights {
            prompt: self.prompt,
            completion: self.completion,
            cached: self.cached,
        }
        .cost(t)
    }
}

impl LimitRecord {
    pub fn from_limit(l: &Limit) -> LimitRecord {
        LimitRecord {
            amount: l.amount,
            period_ms: l.period.millis(),
            bucket: l.algorithm == Algorithm::TokenBucket,
            period: Some(l.period),
            zone: l.zone,
        }
    }

    fn to_limit(self) -> Option<Limit> {
        let period = match self.period {
            Some(p) => p,
            None => [Period::Second, Period::Minute, Period::Hour, Period::Day]
                .into_iter()
                .find(|p| p.millis() == self.period_ms)?,
        };
        Some(Limit {
            amount: self.amount,
            period,
            algorithm: if self.bucket {
                Algorithm::TokenBucket
            } else {
                Algorithm::FixedWindow
            },
            zone: self.zone,
        })
    }
}

/// What `tokens` cost under a token or spend entry (tokens by its count,
/// micro-units at its price); 0 for other entries.
pub fn metered_cost(what: &TakenKind, tokens: &Tokens) -> u64 {
    what.metered(tokens).map_or(0, |(_, cost)| cost)
}

/// How a reservation ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Settlement {
    /// The upstream reported this usage.
    Usage(Tokens),
    /// No usage: charge as if these were used (the policy decided them).
    Assumed(Tokens),
}

impl Settlement {
    /// The tokens charged, whichever way they were decided.
    pub fn tokens(&self) -> Tokens {
        match *self {
            Settlement::Usage(t) | Settlement::Assumed(t) => t,
        }
    }
}

/// The store operations that settle a reservation, and the counters they
/// give capacity back to (whose waiters may now fit).
#[derive(Debug, Default, PartialEq)]
pub struct SettlePlan {
    pub ops: Vec<SettleOp>,
    pub freed: Vec<String>,
}

impl Reservation {
    /// Corrections for `actual` usage: a refund into the exact window taken
    /// from, an overage charged to the current one, every slot released.
    pub fn settle_plan(&self, actual: &Tokens) -> SettlePlan {
        let mut plan = SettlePlan::default();
        for t in &self.taken {
            if let TakenKind::Slot { max } = t.what {
                plan.freed.push(t.base_key.clone());
                plan.ops.push(SettleOp::Release {
                    key: t.key.clone(),
                    max,
                });
                continue;
            }
            let Some((record, used)) = t.what.metered(actual) else {
                continue;
            };
            let Some(limit) = record.to_limit() else {
                continue;
            };
            if used < t.cost {
                plan.freed.push(t.base_key.clone());
                plan.ops.push(SettleOp::Refund {
                    key: t.key.clone(),
                    limit,
                    cost: t.cost - used,
                });
            } else if used > t.cost {
                plan.ops.push(SettleOp::Charge {
                    key: t.base_key.clone(),
                    limit,
                    cost: used - t.cost,
                });
            }
        }
        plan
    }

    /// The record kept in the store beside the counters.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        serde_json::to_vec(self).map_err(RecordError::Encode)
    }

    /// A record read back from `key`.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Reservation, RecordError> {
        serde_json::from_slice(bytes).map_err(|source| RecordError::Corrupt {
            key: key.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit() -> Limit {
        Limit {
            amount: 1000,
            period: Period::Minute,
            algorithm: Algorithm::FixedWindow,
            zone: crate::rules::Zone::Utc,
        }
    }

    fn reservation() -> Reservation {
        let tokens = TakenKind::Tokens {
            limit: LimitRecord::from_limit(&limit()),
            count: CountSpec::Total.into(),
        };
        Reservation {
            id: "r".into(),
            record_key: "tg:{q}:res:r".into(),
            model: "m".into(),
            estimate: Tokens {
                prompt: 10,
                completion: 90,
                cached: 0,
            },
            taken: vec![
                Taken {
                    quota: "q".into(),
                    base_key: "tg:{q}:tminutew:a".into(),
                    key: "tg:{q}:tminutew:a:60".into(),
                    what: tokens,
                    cost: 100,
                },
                Taken {
                    quota: "q".into(),
                    base_key: "tg:{q}:rminutew:a".into(),
                    key: "tg:{q}:rminutew:a:60".into(),
                    what: TakenKind::Requests,
                    cost: 1,
                },
                Taken {
                    quota: "q".into(),
                    base_key: "tg:{q}:c:a".into(),
                    key: "tg:{q}:c:a".into(),
                    what: TakenKind::Slot { max: 2 },
                    cost: 1,
                },
            ],
            local: false,
            class: None,
            class_budgets: vec![],
        }
    }

    #[test]
    fn unused_tokens_are_refunded_to_their_window_and_overage_charged_to_the_current() {
        let r = reservation();
        let less = r.settle_plan(&Tokens {
            prompt: 10,
            completion: 30,
            cached: 0,
        });
        assert_eq!(
            less.ops,
            [
                SettleOp::Refund {
                    key: "tg:{q}:tminutew:a:60".into(),
                    limit: limit(),
                    cost: 60
                },
                SettleOp::Release {
                    key: "tg:{q}:c:a".into(),
                    max: 2
                }
            ]
        );
        assert_eq!(less.freed, ["tg:{q}:tminutew:a", "tg:{q}:c:a"]);
        let more = r.settle_plan(&Tokens {
            prompt: 10,
            completion: 91,
            cached: 0,
        });
        assert_eq!(
            more.ops[0],
            SettleOp::Charge {
                key: "tg:{q}:tminutew:a".into(),
                limit: limit(),
                cost: 1
            }
        );
        assert_eq!(more.freed, ["tg:{q}:c:a"], "an overage frees nothing");
        let exact = r.settle_plan(&r.estimate);
        assert_eq!(exact.ops.len(), 1, "only the slot: {exact:?}");
    }

    #[test]
    fn a_record_round_trips_and_a_corrupt_one_says_where() {
        let r = reservation();
        let bytes = r.encode().unwrap();
        assert_eq!(Reservation::decode(&r.record_key, &bytes).unwrap(), r);
        let e = Reservation::decode("tg:{q}:res:x", b"{\"id\":").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("corrupt reservation record at tg:{q}:res:x"),
            "{e}"
        );
    }
}
