//! What the store, engine and budget suites share: a store under test
//! (memory, a real redis-server, a real 3-node Redis Cluster) and the macro
//! that runs a body on each.

use std::sync::Arc;
use std::time::Duration;
use tollgate::store::{MemoryStore, RedisStore, Store};
use tollgate_testkit::{RedisCluster, RedisServer};

/// Which store a suite runs against.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Memory,
    Redis,
    /// A real 3-node Redis Cluster: requests spanning rules take per-slot
    /// steps with rollback.
    Cluster,
}

/// What keeps a store's servers alive for the test (held, never read).
#[allow(dead_code)]
pub enum Servers {
    None,
    Redis(RedisServer),
    Cluster(RedisCluster),
}

/// A store under test, holding the servers it talks to alive.
pub struct Subject {
    pub store: Arc<dyn Store>,
    pub _redis: Servers,
}

impl Subject {
    /// A key's TTL in ms as the single Redis reports it; `None` for the
    /// memory store and the cluster (whose scripts are the same).
    #[allow(dead_code)]
    pub async fn pttl(&self, key: &str) -> Option<i64> {
        match &self._redis {
            Servers::Redis(r) => {
                let out = r.cli(&["PTTL", key]);
                Some(out.trim().parse().expect("PTTL answers a number"))
            }
            _ => None,
        }
    }
}

pub async fn memory() -> Subject {
    Subject {
        store: Arc::new(MemoryStore::new()),
        _redis: Servers::None,
    }
}

pub async fn redis() -> Subject {
    let server = RedisServer::start();
    let store = RedisStore::connect(
        &server.url(),
        Duration::from_secs(2),
        Duration::from_secs(2),
    )
    .await
    .expect("connect to the test redis-server");
    Subject {
        store: Arc::new(store),
        _redis: Servers::Redis(server),
    }
}

pub async fn cluster() -> Subject {
    let cluster = RedisCluster::start(3);
    let store = RedisStore::connect_cluster(
        &cluster.urls(),
        Duration::from_secs(2),
        Duration::from_secs(2),
    )
    .await
    .expect("connect to the test redis cluster");
    Subject {
        store: Arc::new(store),
        _redis: Servers::Cluster(cluster),
    }
}

pub async fn subject(kind: Kind) -> Subject {
    match kind {
        Kind::Memory => memory().await,
        Kind::Redis => redis().await,
        Kind::Cluster => cluster().await,
    }
}

/// Runs each named test body against every store: `$make(Kind)` builds
/// what the body gets a reference to.
#[macro_export]
macro_rules! for_each_store {
    ($make:path; $($name:ident),* $(,)?) => {
        mod memory_store {
            $( #[tokio::test] async fn $name() { super::$name(&$make(super::common::Kind::Memory).await).await } )*
        }
        mod redis_store {
            $( #[tokio::test] async fn $name() { super::$name(&$make(super::common::Kind::Redis).await).await } )*
        }
        mod redis_cluster {
            $( #[tokio::test] async fn $name() { super::$name(&$make(super::common::Kind::Cluster).await).await } )*
        }
    };
}
