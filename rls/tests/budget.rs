#![allow(clippy::cloned_ref_to_slice_refs)] // `&[hit.clone()]` reads better in tests
//! Token budgets at the engine level, against both stores: reserve an
//! estimate, settle the usage, refunds and overage as the arithmetic says.

use std::sync::Arc;
use std::time::Duration;
use tollgate::config::parse_str;
use tollgate::engine::{Clock, Engine, Reserved, Settlement};
use tollgate::metrics::Metrics;
use tollgate::rules::{Identity, LlmConfig, Tokens};

mod common;

const QUOTAS: &str = r#"
[[model]]
name = "gpt-4o"
context_window = 128000
default_max_output = 1000

[[quota]]
name = "acme"
match = { tenant = "acme" }
tokens_per_minute = 1000
requests_per_minute = 100
max_concurrent = 2

[[quota]]
name = "per-tenant-day"
match = { tenant = "*" }
tokens_per_day = 10000
algorithm = "token_bucket"
count = { prompt = 1, completion = 2 }
"#;

struct Harness {
    engine: Engine,
    llm: Arc<LlmConfig>,
    _redis: common::Servers,
}

impl Harness {
    async fn new(kind: common::Kind) -> Harness {
        let config = parse_str("quotas.toml", QUOTAS).unwrap();
        let common::Subject {
            store,
            _redis: server,
        } = common::subject(kind).await;
        Harness {
            engine: Engine::new(store, Arc::new(Metrics::default()))
                .with_clock(Clock::manual(1_800_000_010_000)),
            llm: config.llm,
            _redis: server,
        }
    }

    async fn reserve(&self, tenant: &str, prompt: u64, completion: u64) -> Reserved {
        let id = Identity {
            tenant: Some(tenant.into()),
            model: "gpt-4o".into(),
            route: "/v1/chat/completions".into(),
            ..Default::default()
        };
        let estimate = Tokens {
            prompt,
            completion,
            cached: 0,
        };
        self.engine
            .budgets
            .reserve(&self.llm, &id, estimate, Duration::from_secs(600))
            .await
    }
}

fn admitted(r: Reserved) -> tollgate::engine::Reservation {
    match r {
        Reserved::Admitted { reservation, .. } => reservation,
        Reserved::Denied { quota, .. } => panic!("denied by {quota}"),
    }
}

for_each_store!(
    super::Harness::new;
    refunds_readmit_what_the_estimate_held,
    overage_is_charged_and_settle_is_idempotent,
    concurrency_slots_free_on_settle,
    a_denial_takes_nothing,
);

async fn refunds_readmit_what_the_estimate_held(h: &Harness) {
    // Two requests estimated at 500 tokens fill the 1000/min budget.
    let a = admitted(h.reserve("acme", 100, 400).await);
    let b = admitted(h.reserve("acme", 100, 400).await);
    match h.reserve("acme", 100, 400).await {
        Reserved::Denied {
            quota,
            retry_after,
            headers,
            line,
            on_release,
        } => {
            assert_eq!(quota, "acme");
            assert!(
                line.contains(":tminutew:"),
                "the tokens-per-minute counter: {line}"
            );
            assert!(!on_release);
            assert_eq!(
                retry_after,
                Duration::from_secs(50),
                "the window resets in 50 s"
            );
            assert_eq!(headers.tokens.unwrap().remaining, 0);
        }
        Reserved::Admitted { .. } => panic!("a third estimate of 500 exceeds 1000"),
    }
    // Each actually used 150: 350 each comes back, 700 in all.
    let used = Tokens {
        prompt: 100,
        completion: 50,
        cached: 0,
    };
    assert!(h
        .engine
        .budgets
        .settle(&a, Settlement::Usage(used))
        .await
        .unwrap());
    assert!(h
        .engine
        .budgets
        .settle(&b, Settlement::Usage(used))
        .await
        .unwrap());
    // 1000 - 300 = 700 left: one more 500, not two.
    admitted(h.reserve("acme", 100, 400).await);
    assert!(matches!(
        h.reserve("acme", 100, 400).await,
        Reserved::Denied { .. }
    ));
}

async fn overage_is_charged_and_settle_is_idempotent(h: &Harness) {
    let r = admitted(h.reserve("acme", 100, 100).await);
    let used = Tokens {
        prompt: 100,
        completion: 600,
        cached: 0,
    };
    assert!(h
        .engine
        .budgets
        .settle(&r, Settlement::Usage(used))
        .await
        .unwrap());
    assert!(
        !h.engine
            .budgets
            .settle(&r, Settlement::Usage(used))
            .await
            .unwrap(),
        "twice changes nothing"
    );
    // 700 used of 1000: a 400 estimate no longer fits, a 300 one does.
    assert!(matches!(
        h.reserve("acme", 200, 200).await,
        Reserved::Denied { .. }
    ));
    admitted(h.reserve("acme", 150, 150).await);
}

async fn concurrency_slots_free_on_settle(h: &Harness) {
    let a = admitted(h.reserve("acme", 1, 1).await);
    let _b = admitted(h.reserve("acme", 1, 1).await);
    assert!(
        matches!(h.reserve("acme", 1, 1).await, Reserved::Denied { .. }),
        "max_concurrent = 2"
    );
    let same = Tokens {
        prompt: 1,
        completion: 1,
        cached: 0,
    };
    h.engine
        .budgets
        .settle(&a, Settlement::Assumed(same))
        .await
        .unwrap();
    admitted(h.reserve("acme", 1, 1).await);
}

async fn a_denial_takes_nothing(h: &Harness) {
    // The per-tenant daily quota weighs completion twice: 4000 + 2 × 3000 = 10000 fits exactly.
    let r = admitted(h.reserve("beta", 4000, 3000).await);
    assert!(matches!(
        h.reserve("beta", 1, 0).await,
        Reserved::Denied { .. }
    ));
    assert!(h
        .engine
        .budgets
        .settle(
            &r,
            Settlement::Usage(Tokens {
                prompt: 4000,
                completion: 0,
                cached: 0
            })
        )
        .await
        .unwrap());
    // 6000 refunded to the bucket: a second request of 6000 fits, a third does not.
    admitted(h.reserve("beta", 6000, 0).await);
    assert!(matches!(
        h.reserve("beta", 1, 0).await,
        Reserved::Denied { .. }
    ));
    // Another tenant has its own daily bucket.
    admitted(h.reserve("gamma", 6000, 0).await);
}
