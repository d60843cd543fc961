//! `/quotas`: for each quota and rule of the config in force, the keys in
//! use in the current window, with used / limit / remaining / reset and
//! what reservations in flight hold, the top N by use.
//!
//! One bounded look at the store (`Store::scan`, at most a budget of keys
//! listed), then everything here is in memory: keys are parsed back
//! (`keys::ParsedKey`) and mapped to their owner and limit by id
//! (`owners`), reservation records are summed per exact key ("reserved"),
//! and each counter's figures come from the decision arithmetic
//! (`figures`). An answer cut by the budget says so (`scan.complete`).

use super::figures::{self, Figures};
use super::owners::{OwnedLimit, Owner, OwnerKind, Owners};
use crate::config::Config;
use crate::engine::Reservation;
use crate::rules::format_micros;
use crate::rules::Zone;
use crate::store::arith::Cell;
use crate::store::keys::{KeyKind, ParsedKey};
use crate::store::{counter_key, Counter, LiveKey, ScanQuery, Store, StoreError};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// Keys per quota when the request does not say.
pub const DEFAULT_TOP: usize = 20;
/// The most keys per quota one answer lists.
pub const MAX_TOP: usize = 1_000;

/// What the answer is narrowed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filters {
    /// One quota's name, or one rule's name or label.
    pub quota: Option<String>,
    /// Keys whose `tenant` value is this (owners without a `tenant` key
    /// are left out).
    pub tenant: Option<String>,
    /// Keys per owner, most used first.
    pub top: usize,
}

impl Default for Filters {
    fn default() -> Self {
        Filters {
            quota: None,
            tenant: None,
            top: DEFAULT_TOP,
        }
    }
}

/// Why there is no answer.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("no quota or rule named `{0}` in the config in force")]
    UnknownQuota(String),
    #[error("the store cannot list its keys: {0}")]
    Store(#[from] StoreError),
}

/// The answer to `/quotas`.
#[derive(Debug, Serialize)]
pub struct Answer {
    pub store: &'static str,
    pub config_version: String,
    pub now_unix_ms: u64,
    pub filters: Filters,
    pub scan: ScanReport,
    pub quotas: Vec<OwnerView>,
}

/// How much of the store the answer saw.
#[derive(Debug, Default, Serialize)]
pub struct ScanReport {
    /// The most keys one answer lists (`DEFAULT_SCAN_BUDGET`).
    pub budget: usize,
    pub looked_at: usize,
    /// `false`: the budget ran out before every key was listed, and the
    /// figures below are of the keys that were.
    pub complete: bool,
    /// Reservation records read.
    pub reservations: usize,
    /// Keys of owners or limits not in the config in force (left by an
    /// older config; they expire by themselves).
    pub other_keys: usize,
    /// Keys whose value is not what their kind holds, and records that do
    /// not decode.
    pub unreadable_keys: usize,
    pub unreadable_records: usize,
}

/// One quota or rule and its keys in use.
#[derive(Debug, Serialize)]
pub struct OwnerView {
    pub kind: OwnerKind,
    pub name: String,
    pub id: String,
    pub source: String,
    pub shadow: bool,
    /// The names of the values that tell its keys apart.
    #[serde(rename = "match")]
    pub match_keys: Vec<String>,
    pub limits: Vec<LimitView>,
    /// Reservations in flight that took from it.
    pub in_flight: usize,
    /// Keys in use (after the tenant filter), of which `keys` lists the
    /// top N.
    pub keys_in_use: usize,
    pub keys: Vec<KeyView>,
}

/// One limit, as configured.
#[derive(Debug, Serialize)]
pub struct LimitView {
    pub kind: String,
    pub period: Option<&'static str>,
    pub algorithm: Option<&'static str>,
    /// The IANA zone of a calendar period (`day`, `week`, `month`,
    /// `year`) counted in one; `None` in UTC or for a fixed-length period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// In micro-units of `currency` for a money budget.
    pub limit: u64,
    /// A money budget's currency (`[llm] currency`), and its limit as a
    /// decimal of it (`500.00`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_money: Option<String>,
}

/// One key in use: the values that name it (a tenant, a model, ...), and
/// one set of figures per limit, in the order of `limits`.
#[derive(Debug, Serialize)]
pub struct KeyView {
    pub values: Vec<Value>,
    /// The class whose share of the limits this is; its size is set by
    /// each instance, so `limit` and `remaining` are unknown here.
    pub class: Option<String>,
    pub counters: Vec<Figures>,
}

/// One named value of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Value {
    pub key: String,
    pub value: String,
}

/// One key in use while the answer is built: its values and class, and
/// per limit the live cell and its exact key.
type Budget = (Vec<String>, Option<String>);
type Cells = Vec<Option<(String, Cell)>>;

/// Looks at the store once and builds the answer.
pub async fn quotas(
    config: &Config,
    store: &dyn Store,
    filters: Filters,
    budget: usize,
    now_ms: u64,
) -> Result<Answer, ViewError> {
    let owners = Owners::of(config);
    let only = match &filters.quota {
        Some(name) => Some(
            owners
                .named(name)
                .ok_or_else(|| ViewError::UnknownQuota(name.clone()))?,
        ),
        None => None,
    };
    let query = ScanQuery {
        tag: only.map(|i| owners.list[i].id.as_str().to_string()),
        budget,
    };
    let scanned = store.scan(&query, now_ms).await?;
    let mut report = ScanReport {
        budget,
        looked_at: scanned.looked_at,
        complete: scanned.complete,
        unreadable_keys: scanned.unreadable,
        ..ScanReport::default()
    };
    let held = Held::of(&scanned.keys, &mut report);
    let mut found: Vec<HashMap<Budget, Cells>> = vec![HashMap::new(); owners.list.len()];
    for live in scanned.keys {
        place(&owners, live, now_ms, &mut found, &mut report);
    }
    let currency = config.llm.settings.currency.as_str();
    let quotas = owners
        .list
        .iter()
        .zip(found)
        .enumerate()
        .filter(|(i, (o, _))| only.is_none_or(|only| only == *i) && keeps(o, &filters))
        .map(|(_, (o, budgets))| owner_view(o, budgets, &held, &filters, currency, now_ms))
        .collect();
    Ok(Answer {
        store: store.kind(),
        config_version: config.version.clone(),
        now_unix_ms: now_ms,
        filters,
        scan: report,
        quotas,
    })
}

/// Whether the owner takes part under the filters: with a tenant filter,
/// only owners whose keys carry a tenant.
fn keeps(owner: &Owner, filters: &Filters) -> bool {
    filters.tenant.is_none() || owner.tenant_at.is_some()
}

/// What reservations in flight hold: per exact key (window included), and
/// per owner name the reservations that took from it.
#[derive(Default)]
struct Held {
    by_key: HashMap<String, u64>,
    by_owner: HashMap<String, HashSet<String>>,
}

impl Held {
    fn of(keys: &[LiveKey], report: &mut ScanReport) -> Held {
        let mut held = Held::default();
        for live in keys {
            let Cell::Record(bytes) = &live.cell else {
                continue;
            };
            report.reservations += 1;
            match Reservation::decode(&live.key, bytes) {
                Ok(r) => {
                    for t in &r.taken {
                        let sum = held.by_key.entry(t.key.clone()).or_default();
                        *sum = sum.saturating_add(t.cost);
                        held.by_owner
                            .entry(t.quota.clone())
                            .or_default()
                            .insert(live.key.clone());
                    }
                }
                Err(_) => report.unreadable_records += 1,
            }
        }
        held
    }

    fn on(&self, key: &str) -> u64 {
        self.by_key.get(key).copied().unwrap_or(0)
    }
}

/// Files a live counter under its owner, key in use and limit; counts what
/// belongs to no owner of the config in force.
fn place(
    owners: &Owners,
    live: LiveKey,
    now_ms: u64,
    found: &mut [HashMap<Budget, Cells>],
    report: &mut ScanReport,
) {
    if matches!(live.cell, Cell::Record(_)) {
        return;
    }
    let Some(parsed) = ParsedKey::parse(&live.key) else {
        report.other_keys += 1;
        return;
    };
    let Some(o) = owners.by_tag(parsed.tag) else {
        report.other_keys += 1;
        return;
    };
    let owner = &owners.list[o];
    let Some(l) = owner.limit_of(&parsed.kind) else {
        report.other_keys += 1;
        return;
    };
    let budget = match (&parsed.kind, owner.kind) {
        (KeyKind::Rate { values, .. } | KeyKind::Slots { values }, OwnerKind::Quota) => {
            values.split(owner.keys.len())
        }
        (KeyKind::Rate { values, .. }, OwnerKind::Rule) => Some((values.values(), None)),
        _ => None,
    };
    let Some(budget) = budget else {
        report.other_keys += 1;
        return;
    };
    // A window that has ended but not yet expired is not in use.
    if let (
        KeyKind::Rate {
            window_s: Some(_), ..
        },
        Counter::Rate(_),
    ) = (&parsed.kind, &owner.limits[l].counter)
    {
        let base = live.key.rsplit_once(':').map_or("", |(b, _)| b);
        if counter_key(base, &owner.limits[l].counter, now_ms) != live.key {
            return;
        }
    }
    let cells = found[o]
        .entry(budget)
        .or_insert_with(|| vec![None; owner.limits.len()]);
    cells[l] = Some((live.key, live.cell));
}

/// One owner's answer: its keys in use, filtered by tenant, the top N by
/// how full their fullest counter is.
fn owner_view(
    owner: &Owner,
    budgets: HashMap<Budget, Cells>,
    held: &Held,
    filters: &Filters,
    currency: &str,
    now_ms: u64,
) -> OwnerView {
    let mut keys: Vec<Ranked> = budgets
        .into_iter()
        .filter(|((values, _), _)| tenant_matches(owner, filters, values))
        .filter_map(|((values, class), cells)| key_view(owner, values, class, &cells, held, now_ms))
        .collect();
    let in_use = keys.len();
    // Fullest first; then most used; then by name, so equal keys keep
    // their order from one refresh to the next.
    keys.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(b.1.cmp(&a.1))
            .then_with(|| a.2.cmp(&b.2))
    });
    keys.truncate(filters.top);
    OwnerView {
        kind: owner.kind,
        name: owner.name.clone(),
        id: owner.id.as_str().to_string(),
        source: owner.source.clone(),
        shadow: owner.shadow,
        match_keys: owner.keys.clone(),
        limits: owner
            .limits
            .iter()
            .map(|l| limit_view(l, currency))
            .collect(),
        in_flight: held.by_owner.get(&owner.name).map_or(0, HashSet::len),
        keys_in_use: in_use,
        keys: keys.into_iter().map(|(_, _, _, k)| k).collect(),
    }
}

/// A key in use with what it is sorted by: (fill, used, label, view).
type Ranked = (f64, u64, String, KeyView);

/// Whether a key's values pass the tenant filter (an owner without a
/// tenant level never does while one is asked for).
fn tenant_matches(owner: &Owner, filters: &Filters, values: &[String]) -> bool {
    match (&filters.tenant, owner.tenant_at) {
        (Some(t), Some(at)) => values.get(at) == Some(t),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// One key's view and rank, or `None` for a key not in use.
fn key_view(
    owner: &Owner,
    values: Vec<String>,
    class: Option<String>,
    cells: &Cells,
    held: &Held,
    now_ms: u64,
) -> Option<Ranked> {
    let counters = counter_figures(owner, class.as_deref(), cells, held, now_ms);
    // A key whose counters show nothing used (a full bucket, a
    // window refunded to 0, slots all free) is not in use: the
    // memory store has dropped it or is about to.
    if counters.iter().all(|f| f.used == Some(0)) {
        return None;
    }
    let fill = counters.iter().map(figures::fill).fold(0.0, f64::max);
    let used = counters.iter().filter_map(|f| f.used).sum();
    let order = label(&values, class.as_deref());
    let values = values
        .into_iter()
        .enumerate()
        .map(|(i, value)| Value {
            key: owner
                .keys
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("#{i}")),
            value,
        })
        .collect();
    Some((
        fill,
        used,
        order,
        KeyView {
            values,
            class,
            counters,
        },
    ))
}

/// The figures of each of the owner's limits for one key (a share's when
/// the key is a class's), in money where the limit is.
fn counter_figures(
    owner: &Owner,
    class: Option<&str>,
    cells: &Cells,
    held: &Held,
    now_ms: u64,
) -> Vec<Figures> {
    owner
        .limits
        .iter()
        .zip(cells)
        .map(|(limit, cell)| {
            let reserved = cell.as_ref().map_or(0, |(key, _)| held.on(key));
            let cell = cell.as_ref().map(|(_, c)| c);
            let f = match class {
                None => figures::of(&limit.counter, cell, reserved, now_ms),
                Some(_) => figures::of_share(&limit.counter, cell, reserved, now_ms),
            };
            if limit.money {
                f.in_money()
            } else {
                f
            }
        })
        .collect()
}

/// One limit as configured, a money budget's in its currency too.
fn limit_view(l: &OwnedLimit, currency: &str) -> LimitView {
    let (period, algorithm, time_zone, limit) = match l.counter {
        Counter::Rate(r) => (
            Some(r.period.as_str()),
            Some(r.algorithm.as_str()),
            (r.zone != Zone::Utc).then(|| r.zone.name().to_string()),
            r.amount,
        ),
        Counter::Slots { max } => (None, None, None, max),
    };
    LimitView {
        kind: l.kind.clone(),
        period,
        algorithm,
        time_zone,
        limit,
        currency: l.money.then(|| currency.to_string()),
        limit_money: l.money.then(|| format_micros(limit)),
    }
}

/// A key's values and class as one sortable string.
fn label(values: &[String], class: Option<&str>) -> String {
    let mut out = values.join("\u{0}");
    if let Some(c) = class {
        out.push('\u{1}');
        out.push_str(c);
    }
    out
}
