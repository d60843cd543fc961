//! `Store::count`, envoyproxy/ratelimit's per-descriptor `INCRBY`: every
//! hit is counted, over its limit or not, each on its own; the memory
//! store, a real redis-server and a real Redis Cluster answer alike.

use tollgate::rules::{Algorithm, Limit, Period};
use tollgate::store::{Counter, Hit};

const T0: u64 = 1_800_000_000_000; // a whole day boundary, in ms

mod common;

use common::{subject, Subject};

for_each_store!(
    super::subject;
    counting_passes_the_limit_and_remembers_it,
    counting_never_denies_the_others,
    counting_a_bucket_runs_into_debt,
    a_zero_limit_blocks,
);

fn hit(key: &str, amount: u64, algorithm: Algorithm, cost: u64) -> Hit {
    Hit {
        key: format!("tg:{{{key}}}:m"),
        counter: Counter::Rate(Limit::new(amount, Period::Minute, algorithm)),
        cost,
        enforce: true,
    }
}

/// 11 hits against 10: over, and counted, so the next single hit is over
/// too, and a check (cost 0) says so (the peer's `TestRedis`).
async fn counting_passes_the_limit_and_remembers_it(s: &Subject) {
    let h = |cost| hit("a", 10, Algorithm::FixedWindow, cost);
    let st = s.store.count(&[h(11)], T0).await.unwrap();
    assert!(st[0].over);
    assert_eq!(st[0].remaining, 0);
    let st = s.store.count(&[h(1)], T0 + 1).await.unwrap();
    assert!(st[0].over, "the denied hits were counted");
    let st = s.store.count(&[h(0)], T0 + 2).await.unwrap();
    assert!(st[0].over, "a check of a counter past its limit");
    // A new window starts from nothing.
    let st = s.store.count(&[h(1)], T0 + 60_000).await.unwrap();
    assert!(!st[0].over);
    assert_eq!(st[0].remaining, 9);
}

/// One hit over its limit does not stop another being counted.
async fn counting_never_denies_the_others(s: &Subject) {
    let st = s
        .store
        .count(
            &[
                hit("b", 1, Algorithm::FixedWindow, 2),
                hit("c", 5, Algorithm::FixedWindow, 1),
            ],
            T0,
        )
        .await
        .unwrap();
    assert!(st[0].over);
    assert!(!st[1].over);
    assert_eq!(st[1].remaining, 4);
    let st = s
        .store
        .count(&[hit("c", 5, Algorithm::FixedWindow, 0)], T0)
        .await
        .unwrap();
    assert_eq!(st[0].remaining, 4, "counted, and only once");
}

/// A bucket counted past empty owes the difference, paid by refill.
async fn counting_a_bucket_runs_into_debt(s: &Subject) {
    let h = |cost| hit("d", 60, Algorithm::TokenBucket, cost);
    let st = s.store.count(&[h(70)], T0).await.unwrap();
    assert!(st[0].over);
    assert_eq!(st[0].remaining, 0);
    // 10 owed: after 10 s (10 tokens) the bucket is back at zero.
    let st = s.store.count(&[h(1)], T0 + 10_000).await.unwrap();
    assert!(st[0].over, "still nothing left after paying the debt");
    let st = s.store.count(&[h(1)], T0 + 12_000).await.unwrap();
    assert!(!st[0].over, "{st:?}");
}

/// `requests_per_unit: 0`: every hit is over, a check is not.
async fn a_zero_limit_blocks(s: &Subject) {
    let h = |cost| hit("e", 0, Algorithm::FixedWindow, cost);
    assert!(s.store.count(&[h(1)], T0).await.unwrap()[0].over);
    let taken = s.store.take(&[h(1)], None, T0).await.unwrap();
    assert!(!taken.admitted);
}
