#![allow(clippy::cloned_ref_to_slice_refs)] // `&[hit.clone()]` reads better in tests
//! One suite, every store: the memory store and a real `redis-server` must
//! give identical answers for the same calls at the same (manual) times.

use proptest::prelude::*;
use tollgate::rules::{Algorithm, Limit, Period, Zone};
use tollgate::store::{counter_key, Counter, Hit, Hold, SettleOp};

const T0: u64 = 1_800_000_000_000; // a whole hour (not day) boundary, in ms

mod common;

use common::{memory, redis, subject, Subject};

for_each_store!(
    super::subject;
    window_takes_exactly_the_limit,
    a_denied_batch_takes_nothing,
    shadow_hits_never_deny,
    hits_in_one_batch_see_each_other,
    bucket_refills_and_reports_retry,
    give_back_restores_capacity,
    windows_reset_on_the_boundary,
    a_reservation_settles_once,
    slots_are_held_until_release_or_deadline,
    a_refund_into_an_ended_window_is_dropped,
    a_denial_in_a_later_slot_rolls_back_earlier_slots,
    a_window_holds_its_limit_from_its_first_to_its_last_millisecond,
    a_bucket_refills_at_the_tick_and_gives_its_last_token,
    a_lowered_bucket_limit_holds_at_once,
    a_charged_bucket_pays_its_debt_before_it_gives,
    the_last_slot_and_the_deadline_millisecond,
    a_calendar_windows_key_expires_at_its_end,
);

/// On a cluster the two tags live in different slots (taken in tag order,
/// `aaa` first): when `zzz` denies, what `aaa` took is given back. On one
/// Redis or in memory the batch is atomic anyway; the answers must match.
async fn a_denial_in_a_later_slot_rolls_back_earlier_slots(s: &Subject) {
    let store = s.store.as_ref();
    let first = Hit {
        key: "tg:{aaa}:w".into(),
        ..hit("x", 10, Period::Minute, Algorithm::FixedWindow, 4)
    };
    let first_bucket = Hit {
        key: "tg:{aaa}:b".into(),
        ..hit("x", 10, Period::Minute, Algorithm::TokenBucket, 4)
    };
    let slot = Hit {
        key: "tg:{aaa}:c".into(),
        counter: Counter::Slots { max: 1 },
        cost: 1,
        enforce: true,
    };
    let second = Hit {
        key: "tg:{zzz}:w".into(),
        ..hit("x", 3, Period::Minute, Algorithm::FixedWindow, 4)
    };
    let h = Hold {
        record_key: "tg:{aaa}:res:r".into(),
        ..hold("r", 60_000)
    };
    let o = store
        .take(
            &[first.clone(), first_bucket.clone(), slot.clone(), second],
            Some(&h),
            T0,
        )
        .await
        .unwrap();
    assert!(!o.admitted);
    let check = |h: &Hit| Hit {
        cost: 0,
        ..h.clone()
    };
    let o = store
        .take(&[check(&first), check(&first_bucket)], None, T0)
        .await
        .unwrap();
    assert_eq!(o.hits[0].remaining, 10, "the window got its 4 back");
    assert_eq!(o.hits[1].remaining, 10, "the bucket got its 4 back");
    let again = store
        .take(&[slot], Some(&hold("r2", 60_000)), T0)
        .await
        .unwrap();
    assert!(again.admitted, "the slot was released");
}

fn hold(id: &str, ttl_ms: u64) -> Hold {
    Hold {
        holder: id.into(),
        ttl_ms,
        record_key: format!("tg:{{test}}:res:{id}"),
        record: b"opaque".to_vec(),
    }
}

fn limit_of(h: &Hit) -> Limit {
    match h.counter {
        Counter::Rate(l) => l,
        Counter::Slots { .. } => unreachable!(),
    }
}

async fn a_reservation_settles_once(s: &Subject) {
    let store = s.store.as_ref();
    let tpm = hit("tpm", 1_000, Period::Minute, Algorithm::FixedWindow, 600);
    let tpd = hit("tpd", 10_000, Period::Day, Algorithm::TokenBucket, 600);
    let h = hold("r1", 60_000);
    let o = store
        .take(&[tpm.clone(), tpd.clone()], Some(&h), T0)
        .await
        .unwrap();
    assert!(o.admitted);
    assert_eq!(
        store.record(&h.record_key, T0).await.unwrap().as_deref(),
        Some(&b"opaque"[..])
    );
    // Actual use: 400 on the minute (refund 200), 700 on the day (charge 100).
    let ops = [
        SettleOp::Refund {
            key: counter_key(&tpm.key, &tpm.counter, T0),
            limit: limit_of(&tpm),
            cost: 200,
        },
        SettleOp::Charge {
            key: tpd.key.clone(),
            limit: limit_of(&tpd),
            cost: 100,
        },
    ];
    assert!(store
        .settle(&h.record_key, "r1", &ops, T0 + 1_000)
        .await
        .unwrap());
    assert!(
        !store
            .settle(&h.record_key, "r1", &ops, T0 + 1_000)
            .await
            .unwrap(),
        "the second settle changes nothing"
    );
    assert_eq!(store.record(&h.record_key, T0).await.unwrap(), None);
    let check = |h: &Hit| Hit {
        cost: 0,
        ..h.clone()
    };
    let o = store
        .take(&[check(&tpm), check(&tpd)], None, T0 + 1_000)
        .await
        .unwrap();
    assert_eq!(o.hits[0].remaining, 600, "1000 - 400");
    assert_eq!(
        o.hits[1].remaining, 9_300,
        "10000 - 700, one second of refill is 0.11 tokens"
    );
}

async fn slots_are_held_until_release_or_deadline(s: &Subject) {
    let store = s.store.as_ref();
    let slot = Hit {
        key: "tg:{test}:conc".into(),
        counter: Counter::Slots { max: 2 },
        cost: 1,
        enforce: true,
    };
    assert!(
        store
            .take(&[slot.clone()], Some(&hold("a", 10_000)), T0)
            .await
            .unwrap()
            .admitted
    );
    let b = store
        .take(&[slot.clone()], Some(&hold("b", 2_000)), T0)
        .await
        .unwrap();
    assert!(b.admitted);
    assert_eq!(b.hits[0].remaining, 0);
    let c = store
        .take(&[slot.clone()], Some(&hold("c", 10_000)), T0 + 1)
        .await
        .unwrap();
    assert!(!c.admitted);
    assert_eq!(c.hits[0].retry_after_ms, 1_000);
    // b's holder vanished without settling: its deadline frees the slot.
    assert!(
        store
            .take(&[slot.clone()], Some(&hold("c", 10_000)), T0 + 2_000)
            .await
            .unwrap()
            .admitted
    );
    // a settles: its slot is free at once.
    let release = [SettleOp::Release {
        key: slot.key.clone(),
        max: 2,
    }];
    assert!(store
        .settle("tg:{test}:res:a", "a", &release, T0 + 2_001)
        .await
        .unwrap());
    let d = store
        .take(&[slot], Some(&hold("d", 10_000)), T0 + 2_002)
        .await
        .unwrap();
    assert!(d.admitted);
    assert_eq!(d.hits[0].remaining, 0);
}

async fn a_refund_into_an_ended_window_is_dropped(s: &Subject) {
    let store = s.store.as_ref();
    let h = hit("ended", 100, Period::Second, Algorithm::FixedWindow, 60);
    let res = hold("e", 60_000);
    assert!(
        store
            .take(&[h.clone()], Some(&res), T0)
            .await
            .unwrap()
            .admitted
    );
    let key = counter_key(&h.key, &h.counter, T0);
    let ops = [SettleOp::Refund {
        key,
        limit: limit_of(&h),
        cost: 50,
    }];
    assert!(store
        .settle(&res.record_key, "e", &ops, T0 + 1_500)
        .await
        .unwrap());
    let o = store
        .take(&[Hit { cost: 0, ..h }], None, T0 + 1_500)
        .await
        .unwrap();
    assert_eq!(
        o.hits[0].remaining, 100,
        "the new window is untouched by the old refund"
    );
}

fn hit(key: &str, amount: u64, period: Period, algorithm: Algorithm, cost: u64) -> Hit {
    Hit {
        key: format!("tg:{{test}}:{key}"),
        counter: Counter::Rate(Limit {
            amount,
            period,
            algorithm,
            zone: tollgate::rules::Zone::Utc,
        }),
        cost,
        enforce: true,
    }
}

async fn window_takes_exactly_the_limit(s: &Subject) {
    let store = s.store.as_ref();
    let h = hit("w", 3, Period::Minute, Algorithm::FixedWindow, 1);
    for left in [2, 1, 0] {
        let o = store.take(&[h.clone()], None, T0 + 5_000).await.unwrap();
        assert!(o.admitted);
        assert_eq!(o.hits[0].remaining, left);
        assert_eq!(o.hits[0].reset_after_ms, 55_000);
    }
    let o = store.take(&[h], None, T0 + 5_000).await.unwrap();
    assert!(!o.admitted);
    assert!(o.hits[0].over);
}

async fn a_denied_batch_takes_nothing(s: &Subject) {
    let store = s.store.as_ref();
    let roomy = hit("roomy", 100, Period::Minute, Algorithm::FixedWindow, 10);
    let tight = hit("tight", 5, Period::Minute, Algorithm::TokenBucket, 10);
    let o = store
        .take(&[roomy.clone(), tight.clone()], None, T0)
        .await
        .unwrap();
    assert!(!o.admitted);
    assert!(!o.hits[0].over);
    assert!(o.hits[1].over);
    // The roomy counter was not touched: checking with cost 0 shows 100 left.
    let check = Hit { cost: 0, ..roomy };
    let o = store.take(&[check], None, T0).await.unwrap();
    assert_eq!(o.hits[0].remaining, 100);
}

async fn shadow_hits_never_deny(s: &Subject) {
    let store = s.store.as_ref();
    let shadow = Hit {
        enforce: false,
        ..hit("shadow", 1, Period::Minute, Algorithm::FixedWindow, 1)
    };
    let real = hit("real", 10, Period::Minute, Algorithm::FixedWindow, 1);
    for i in 0..3 {
        let o = store
            .take(&[shadow.clone(), real.clone()], None, T0)
            .await
            .unwrap();
        assert!(o.admitted, "call {i}");
        assert_eq!(o.hits[0].over, i > 0, "call {i}");
        assert_eq!(o.hits[1].remaining, 9 - i);
    }
}

async fn hits_in_one_batch_see_each_other(s: &Subject) {
    let store = s.store.as_ref();
    // The same counter twice in one batch: 3 + 3 > 5, so the batch is denied.
    let h = hit("twice", 5, Period::Minute, Algorithm::FixedWindow, 3);
    let o = store.take(&[h.clone(), h.clone()], None, T0).await.unwrap();
    assert!(!o.admitted);
    assert!(!o.hits[0].over);
    assert!(o.hits[1].over);
    let o = store.take(&[h], None, T0).await.unwrap();
    assert!(o.admitted, "nothing was taken by the denied batch");
    assert_eq!(o.hits[0].remaining, 2);
}

async fn bucket_refills_and_reports_retry(s: &Subject) {
    let store = s.store.as_ref();
    // 600 per minute: one token every 100 ms.
    let h = hit("bucket", 600, Period::Minute, Algorithm::TokenBucket, 600);
    let o = store.take(&[h.clone()], None, T0).await.unwrap();
    assert!(o.admitted);
    assert_eq!(o.hits[0].remaining, 0);
    assert_eq!(o.hits[0].reset_after_ms, 60_000);
    let five = Hit { cost: 5, ..h };
    let o = store.take(&[five.clone()], None, T0 + 250).await.unwrap();
    assert!(!o.admitted);
    assert_eq!(o.hits[0].remaining, 2);
    assert_eq!(o.hits[0].retry_after_ms, 250);
    let o = store.take(&[five], None, T0 + 500).await.unwrap();
    assert!(o.admitted);
    assert_eq!(o.hits[0].remaining, 0);
}

async fn give_back_restores_capacity(s: &Subject) {
    let store = s.store.as_ref();
    for algorithm in [Algorithm::FixedWindow, Algorithm::TokenBucket] {
        let h = hit("refund", 10, Period::Hour, algorithm, 10);
        assert!(store.take(&[h.clone()], None, T0).await.unwrap().admitted);
        let back = Hit {
            cost: 4,
            ..h.clone()
        };
        let s = store.give_back(&[back], T0).await.unwrap();
        assert_eq!(s[0].remaining, 4, "{algorithm:?}");
        let four = Hit {
            cost: 4,
            ..h.clone()
        };
        assert!(
            store
                .take(&[four.clone()], None, T0)
                .await
                .unwrap()
                .admitted
        );
        assert!(!store.take(&[four], None, T0).await.unwrap().admitted);
        // Giving back more than was taken never goes past the limit.
        let lots = Hit { cost: 1_000, ..h };
        assert_eq!(store.give_back(&[lots], T0).await.unwrap()[0].remaining, 10);
    }
}

async fn windows_reset_on_the_boundary(s: &Subject) {
    let store = s.store.as_ref();
    let h = hit("boundary", 1, Period::Second, Algorithm::FixedWindow, 1);
    // Taken half a second before the window ends: Redis expires the key by
    // its own clock, so it must outlive the real time until the next call
    // (taken 1 ms before the end, it raced that call on a loaded machine).
    assert!(
        store
            .take(&[h.clone()], None, T0 + 500)
            .await
            .unwrap()
            .admitted
    );
    assert!(
        !store
            .take(&[h.clone()], None, T0 + 999)
            .await
            .unwrap()
            .admitted
    );
    let o = store.take(&[h], None, T0 + 1_000).await.unwrap();
    assert!(o.admitted, "a new window at the boundary");
    assert_eq!(o.hits[0].reset_after_ms, 1_000);
}

/// A window admits the hit that brings it to its limit exactly, not one
/// unit more, from its first millisecond to its last; the next millisecond
/// is a new window.
async fn a_window_holds_its_limit_from_its_first_to_its_last_millisecond(s: &Subject) {
    let store = s.store.as_ref();
    let h = |cost| hit("edges", 10, Period::Minute, Algorithm::FixedWindow, cost);
    let o = store.take(&[h(7)], None, T0).await.unwrap();
    assert!(o.admitted);
    assert_eq!(o.hits[0].remaining, 3);
    assert_eq!(o.hits[0].reset_after_ms, 60_000, "the first millisecond");
    let o = store.take(&[h(4)], None, T0).await.unwrap();
    assert!(!o.admitted, "7 + 4 passes 10");
    assert_eq!(o.hits[0].remaining, 3, "and took nothing");
    let o = store.take(&[h(3)], None, T0).await.unwrap();
    assert!(o.admitted, "7 + 3 is exactly 10");
    assert_eq!(o.hits[0].remaining, 0);
    assert!(
        store.take(&[h(0)], None, T0).await.unwrap().admitted,
        "a check fits"
    );
    let o = store.take(&[h(1)], None, T0 + 59_999).await.unwrap();
    assert!(!o.admitted, "the same window at its last millisecond");
    assert_eq!(o.hits[0].reset_after_ms, 1);
    assert_eq!(o.hits[0].retry_after_ms, 1);
    let o = store.take(&[h(10)], None, T0 + 60_000).await.unwrap();
    assert!(o.admitted, "a new window");
    assert_eq!(o.hits[0].remaining, 0);
    assert_eq!(o.hits[0].reset_after_ms, 60_000);
}

/// A bucket gives its last token and not one more, refills at the tick and
/// not a millisecond before, and a clock that goes back refills nothing.
async fn a_bucket_refills_at_the_tick_and_gives_its_last_token(s: &Subject) {
    let store = s.store.as_ref();
    // 3 600 per hour: one token per 1 s tick.
    let h = |cost| hit("ticks", 3_600, Period::Hour, Algorithm::TokenBucket, cost);
    assert!(store.take(&[h(3_600)], None, T0).await.unwrap().admitted);
    let o = store.take(&[h(1)], None, T0 + 999).await.unwrap();
    assert!(!o.admitted, "the first tick ends at T0 + 1 000");
    assert_eq!(o.hits[0].retry_after_ms, 1);
    let o = store.take(&[h(1)], None, T0 + 1_000).await.unwrap();
    assert!(o.admitted, "one tick, one token");
    assert_eq!(o.hits[0].remaining, 0);
    let o = store.take(&[h(0)], None, T0 + 3_500).await.unwrap();
    assert_eq!(o.hits[0].remaining, 2, "two more whole ticks");
    assert_eq!(o.hits[0].reset_after_ms, 3_598_000 - 500);
    assert!(
        !store
            .take(&[h(3)], None, T0 + 3_500)
            .await
            .unwrap()
            .admitted
    );
    assert!(
        store
            .take(&[h(2)], None, T0 + 3_500)
            .await
            .unwrap()
            .admitted,
        "the last two"
    );
    let o = store.take(&[h(1)], None, T0 + 1_000).await.unwrap();
    assert!(!o.admitted, "back in time: nothing refilled");
    assert_eq!(o.hits[0].remaining, 0);
    assert_eq!(
        o.hits[0].retry_after_ms, 3_000,
        "a tick after the stored one"
    );
}

/// The counter key does not name the amount, so a reload that lowers a
/// bucket's limit finds the bucket the old limit left: it holds at most the
/// new capacity from the first call, even within the same tick.
async fn a_lowered_bucket_limit_holds_at_once(s: &Subject) {
    let store = s.store.as_ref();
    let before = hit("lowered", 1_000, Period::Hour, Algorithm::TokenBucket, 10);
    assert!(store.take(&[before], None, T0).await.unwrap().admitted);
    let after = |cost| hit("lowered", 100, Period::Hour, Algorithm::TokenBucket, cost);
    let o = store.take(&[after(0)], None, T0).await.unwrap();
    assert_eq!(
        o.hits[0].remaining, 100,
        "990 left of the old limit, 100 of the new"
    );
    assert!(!store.take(&[after(101)], None, T0).await.unwrap().admitted);
    let o = store.take(&[after(100)], None, T0).await.unwrap();
    assert!(o.admitted);
    assert_eq!(o.hits[0].remaining, 0);
}

/// An overage charged to a bucket is debt: refill pays it off before a
/// single token can be taken again.
async fn a_charged_bucket_pays_its_debt_before_it_gives(s: &Subject) {
    let store = s.store.as_ref();
    // 60 per minute: one token per second.
    let h = |cost| hit("debt", 60, Period::Minute, Algorithm::TokenBucket, cost);
    let res = hold("debt", 60_000);
    assert!(store.take(&[h(60)], Some(&res), T0).await.unwrap().admitted);
    let charge = [SettleOp::Charge {
        key: h(0).key,
        limit: limit_of(&h(0)),
        cost: 30,
    }];
    assert!(store
        .settle(&res.record_key, "debt", &charge, T0)
        .await
        .unwrap());
    let o = store.take(&[h(1)], None, T0 + 30_999).await.unwrap();
    assert!(
        !o.admitted,
        "30 s pay the debt, the first token is 1 s later"
    );
    assert_eq!(o.hits[0].retry_after_ms, 1);
    assert_eq!(o.hits[0].reset_after_ms, 59_001, "0.999 tokens held");
    let o = store.take(&[h(1)], None, T0 + 31_000).await.unwrap();
    assert!(o.admitted);
    assert_eq!(o.hits[0].remaining, 0);
}

/// The last slot can be taken, one more cannot; a holder counts until its
/// deadline and not at it; a check holds no slot.
async fn the_last_slot_and_the_deadline_millisecond(s: &Subject) {
    let store = s.store.as_ref();
    let slot = Hit {
        key: "tg:{test}:last".into(),
        counter: Counter::Slots { max: 2 },
        cost: 1,
        enforce: true,
    };
    let take = |id: &str, ttl_ms, now| {
        let h = hold(id, ttl_ms);
        let hits = [slot.clone()];
        async move { store.take(&hits, Some(&h), now).await.unwrap() }
    };
    assert!(take("a", 10_000, T0).await.admitted);
    let b = take("b", 50_000, T0).await;
    assert!(b.admitted, "the last of 2");
    assert_eq!(b.hits[0].remaining, 0);
    assert!(
        !take("c", 50_000, T0 + 9_999).await.admitted,
        "a holds until T0 + 10 000"
    );
    let check = store
        .take(&[slot.clone()], None, T0 + 10_000)
        .await
        .unwrap();
    assert!(check.admitted);
    assert_eq!(
        check.hits[0].remaining, 1,
        "a's deadline is now: its slot is free"
    );
    let check = store
        .take(&[slot.clone()], None, T0 + 10_000)
        .await
        .unwrap();
    assert_eq!(check.hits[0].remaining, 1, "the check before held nothing");
    let c = take("c", 50_000, T0 + 10_000).await;
    assert!(c.admitted);
    assert_eq!(c.hits[0].remaining, 0);
    let d = take("d", 50_000, T0 + 10_000).await;
    assert!(!d.admitted);
    assert_eq!(d.hits[0].retry_after_ms, 1_000);
}

/// One random step: a take or a give-back of some hits, some time later.
#[derive(Debug, Clone)]
struct Step {
    after_ms: u64,
    give_back: bool,
    hits: Vec<(usize, u64, bool)>, // (counter index, cost, enforce)
}

fn counters() -> Vec<Limit> {
    vec![
        Limit {
            amount: 7,
            period: Period::Second,
            algorithm: Algorithm::FixedWindow,
            zone: tollgate::rules::Zone::Utc,
        },
        Limit {
            amount: 50,
            period: Period::Minute,
            algorithm: Algorithm::FixedWindow,
            zone: tollgate::rules::Zone::Utc,
        },
        Limit {
            amount: 13,
            period: Period::Second,
            algorithm: Algorithm::TokenBucket,
            zone: tollgate::rules::Zone::Utc,
        },
        Limit {
            amount: 1_000,
            period: Period::Minute,
            algorithm: Algorithm::TokenBucket,
            zone: tollgate::rules::Zone::Utc,
        },
        Limit {
            amount: 100_000,
            period: Period::Day,
            algorithm: Algorithm::TokenBucket,
            zone: tollgate::rules::Zone::Utc,
        },
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![Just(0u64), 0u64..300, 0u64..5_000],
        prop::bool::weighted(0.15),
        prop::collection::vec(
            (
                0usize..5,
                prop_oneof![0u64..4, 0u64..60, 0u64..2_000],
                prop::bool::weighted(0.9),
            ),
            1..4,
        ),
    )
        .prop_map(|(after_ms, give_back, hits)| Step {
            after_ms,
            give_back,
            hits,
        })
}

/// Calendar counters: days in a zone with a DST change, weeks from Monday,
/// months, and a money budget (micro-units; costs of whole cents and more).
fn calendar_counters() -> Vec<Limit> {
    let berlin = Zone::parse("Europe/Berlin").unwrap();
    let new_york = Zone::parse("America/New_York").unwrap();
    let fixed = Algorithm::FixedWindow;
    vec![
        Limit {
            zone: berlin,
            ..Limit::new(40, Period::Day, fixed)
        },
        Limit {
            zone: new_york,
            ..Limit::new(90, Period::Week, fixed)
        },
        Limit::new(200, Period::Month, fixed),
        Limit {
            zone: berlin,
            ..Limit::new(500_000_000, Period::Month, fixed)
        },
        Limit::new(5_000, Period::Year, fixed),
    ]
}

fn calendar_step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![0u64..5_000, 0u64..3_600_000, 0u64..129_600_000],
        prop::bool::weighted(0.15),
        prop::collection::vec(
            (
                0usize..5,
                prop_oneof![0u64..4, 0u64..30, 1_000_000u64..60_000_000],
                prop::bool::weighted(0.9),
            ),
            1..4,
        ),
    )
        .prop_map(|(after_ms, give_back, hits)| Step {
            after_ms,
            give_back,
            hits,
        })
}

/// Runs `steps` on both stores over `limits`, asserting equal answers.
async fn agree(tag: &str, limits: &[Limit], steps: &[Step], start: u64) {
    let mem = memory().await;
    let red = redis().await;
    let mut now = start;
    for (i, s) in steps.iter().enumerate() {
        now += s.after_ms;
        let hits: Vec<Hit> = s
            .hits
            .iter()
            .map(|&(c, cost, enforce)| Hit {
                key: format!("tg:{{{tag}}}:c{c}"),
                counter: Counter::Rate(limits[c % limits.len()]),
                cost,
                enforce,
            })
            .collect();
        if s.give_back {
            let a = mem.store.give_back(&hits, now).await.unwrap();
            let b = red.store.give_back(&hits, now).await.unwrap();
            assert_eq!(a, b, "step {i} at {now}: {s:?}");
        } else {
            let a = mem.store.take(&hits, None, now).await.unwrap();
            let b = red.store.take(&hits, None, now).await.unwrap();
            assert_eq!(a, b, "step {i} at {now}: {s:?}");
        }
    }
}

/// 2027-03-27 00:00 UTC: Europe's DST change is the next night, March
/// ends four days later, and New York's comes in the autumn run below.
const MARCH_2027: u64 = 1_806_105_600_000;
/// 2027-10-30 00:00 UTC: Europe's DST ends the next night, New York's a
/// week later; October and then a week end in between.
const OCTOBER_2027: u64 = 1_824_854_400_000;

/// A month-long Redis key expires when its month ends (in its zone), not
/// 30 days on: the TTL is the window's own.
async fn a_calendar_windows_key_expires_at_its_end(s: &Subject) {
    let berlin = Zone::parse("Europe/Berlin").unwrap();
    let month = Limit {
        zone: berlin,
        ..Limit::new(10, Period::Month, Algorithm::FixedWindow)
    };
    let h = Hit {
        key: "tg:{ttl}:m".into(),
        counter: Counter::Rate(month),
        cost: 1,
        enforce: true,
    };
    let now = MARCH_2027;
    let o = s.store.take(&[h.clone()], None, now).await.unwrap();
    // March in Berlin ends at 2027-03-31 22:00 UTC (CEST, UTC+2).
    let end = MARCH_2027 + 4 * 86_400_000 + 22 * 3_600_000;
    assert_eq!(o.hits[0].reset_after_ms, end - now);
    if let Some(ttl) = s.pttl(&counter_key(&h.key, &h.counter, now)).await {
        let want = (end - now) as i64;
        assert!(
            (want - 5_000..=want).contains(&ttl),
            "PTTL {ttl} ms, window ends in {want} ms"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Calendar windows (zones, DST, weeks, months, money) agree too,
    /// over runs that cross their boundaries.
    #[test]
    fn memory_and_redis_agree_on_calendar_windows(
        steps in prop::collection::vec(calendar_step(), 1..60),
        autumn in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let start = if autumn { OCTOBER_2027 } else { MARCH_2027 };
        rt.block_on(agree("cal", &calendar_counters(), &steps, start));
    }

    /// The same random calls at the same times give the same answers.
    #[test]
    fn memory_and_redis_agree(steps in prop::collection::vec(step(), 1..60), start in 0u64..86_400_000) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mem = memory().await;
            let red = redis().await;
            let limits = counters();
            let mut now = T0 + start;
            for (i, s) in steps.iter().enumerate() {
                now += s.after_ms;
                let hits: Vec<Hit> = s.hits.iter().map(|&(c, cost, enforce)| Hit {
                    key: format!("tg:{{prop}}:c{c}"),
                    counter: Counter::Rate(limits[c]),
                    cost,
                    enforce,
                }).collect();
                if s.give_back {
                    let a = mem.store.give_back(&hits, now).await.unwrap();
                    let b = red.store.give_back(&hits, now).await.unwrap();
                    assert_eq!(a, b, "step {i}: {s:?}");
                } else {
                    let a = mem.store.take(&hits, None, now).await.unwrap();
                    let b = red.store.take(&hits, None, now).await.unwrap();
                    assert_eq!(a, b, "step {i}: {s:?}");
                }
            }
        });
    }
}
