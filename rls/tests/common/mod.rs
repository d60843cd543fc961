//! What the store, engine and budget suites share: a store under test,
//! memory or a real redis-server, and the macro that runs a body on both.

use std::sync::Arc;
use std::time::Duration;
use tollgate::store::{MemoryStore, RedisStore, Store};
use tollgate_testkit::RedisServer;

/// A store under test, holding the server it talks to alive.
pub struct Subject {
    pub store: Arc<dyn Store>,
    pub _redis: Option<RedisServer>,
}

pub async fn memory() -> Subject {
    Subject {
        store: Arc::new(MemoryStore::new()),
        _redis: None,
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
        _redis: Some(server),
    }
}

pub async fn subject(redis_store: bool) -> Subject {
    if redis_store {
        redis().await
    } else {
        memory().await
    }
}

/// Runs each named test body against both stores: `$make(redis: bool)`
/// builds what the body gets a reference to.
#[macro_export]
macro_rules! for_each_store {
    ($make:path; $($name:ident),* $(,)?) => {
        mod memory_store {
            $( #[tokio::test] async fn $name() { super::$name(&$make(false).await).await } )*
        }
        mod redis_store {
            $( #[tokio::test] async fn $name() { super::$name(&$make(true).await).await } )*
        }
    };
}
