//! Wiring: build the store and engine, bind both listeners, start the
//! background work, serve until a signal, then cancel and drain within the
//! grace period.

use crate::admin;
use crate::app::App;
use crate::background::Background;
use crate::config::{Config, StoreKind};
use crate::engine::{self, Clock, Counters, Engine, Instances, Leases};
use crate::listen::{self, Gate};
use crate::metrics::{Listener, Metrics};
use crate::service::{ExtProcGrpc, RateLimitGrpc};
use crate::store::{Breaker, Health, MemoryStore, RedisStore, Store};
use crate::tls::ServerTls;
use anyhow::Context;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Options that come from the command line, not the config file.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// The config file or directory, watched for changes.
    pub config_path: Option<PathBuf>,
    /// Where to write `{"grpc": ..., "admin": ...}` once both listeners are
    /// bound (tests and supervisors use it to learn `:0` ports).
    pub ready_file: Option<PathBuf>,
}

/// Runs tollgate until SIGINT or SIGTERM: build, spawn the background
/// work, serve, and on the signal cancel everything and drain within the
/// grace period.
pub async fn run(config: Config, options: RunOptions) -> anyhow::Result<()> {
    crate::tls::install_crypto_provider();
    let metrics = Arc::new(Metrics::default());
    let grpc_tls = match config.server.tls.clone() {
        Some(files) => Some(Arc::new(
            ServerTls::load(files, metrics.clone()).context("server tls")?,
        )),
        None => None,
    };
    let instance = Arc::new(Instances::new(instance_id()));
    let built = build_store(&config, &instance.id)?;
    let mut counters = Counters::new(built.store.clone(), metrics.clone())
        .with_failure_policy(config.store.on_error)
        .with_instances(instance.clone());
    if built.store.is_shared() {
        let leases = Leases::new(config.leases, instance, metrics.clone());
        counters = counters.with_leases(Arc::new(leases));
    }
    let engine = Engine::from_counters(counters);
    let server = config.server.clone();
    let app = App::new(config, engine, metrics.clone(), built.health.clone());

    let grpc = TcpListener::bind(server.grpc_listen)
        .await
        .with_context(|| format!("cannot bind grpc_listen {}", server.grpc_listen))?;
    let admin = TcpListener::bind(server.admin_listen)
        .await
        .with_context(|| format!("cannot bind admin_listen {}", server.admin_listen))?;
    let grpc_addr = grpc.local_addr()?;
    let admin_addr = admin.local_addr()?;

    let background = Background::new();
    spawn_background(&background, &app, &options, built, grpc_tls.as_ref());
    tracing::info!(%grpc_addr, %admin_addr, version = %app.config.load().version, "tollgate listening");
    if let Some(path) = &options.ready_file {
        write_ready_file(path, grpc_addr, admin_addr)?;
    }
    let stop = background.token();
    let grpc_gate = Gate::new(Listener::Grpc, &server, metrics.clone());
    let admin_gate = Gate::new(Listener::Admin, &server, metrics.clone());
    let grpc_task = tokio::spawn(serve_grpc(
        app.clone(),
        grpc,
        grpc_gate,
        grpc_tls,
        stop.clone(),
    ));
    let admin_task = tokio::spawn(listen::serve_admin(
        admin,
        admin::router(app.clone()),
        admin_gate,
        stop.clone(),
    ));

    shutdown_signal().await;
    tracing::info!(grace = ?server.shutdown_grace, "shutting down: no new connections, draining");
    let drained = tokio::time::timeout(server.shutdown_grace, async {
        // Cancels the listeners and the background work alike.
        let background_done = background.stop(server.shutdown_grace).await;
        let _ = grpc_task.await;
        let _ = admin_task.await;
        background_done
    })
    .await;
    match drained {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            running = background.running(),
            "background tasks still running at exit"
        ),
        Err(_) => tracing::warn!("grace period over; exiting with requests in flight"),
    }
    Ok(())
}

/// The work beside the listeners, all stopped by `background`'s token: the
/// store prober, the file watchers, the freed-capacity listener, the
/// sweeper.
fn spawn_background(
    background: &Background,
    app: &Arc<App>,
    options: &RunOptions,
    built: Built,
    grpc_tls: Option<&Arc<ServerTls>>,
) {
    let Built {
        store,
        memory,
        health,
    } = built;
    if health.is_some() {
        background.spawn("store prober", |cancel| probe_store(store, cancel));
        let (counters, policy) = (app.engine.counters().clone(), app.config.load().leases);
        background.spawn("registry", |cancel| {
            engine::keep_registered(counters, policy, cancel)
        });
    }
    if let Some(leases) = app.engine.counters().leases() {
        let (counters, leases) = (app.engine.counters().clone(), leases.clone());
        background.spawn("lease returns", |cancel| {
            engine::return_unused(counters, leases, cancel)
        });
    }
    if let Some(path) = &options.config_path {
        crate::reload::spawn(background, app.clone(), path.clone());
    }
    if let Some(tls) = grpc_tls {
        crate::tls::spawn_watcher(background, tls.clone());
    }
    let budgets = app.engine.budgets.clone();
    background.spawn("freed capacity listener", |cancel| async move {
        budgets.wake_on_freed_elsewhere(cancel).await
    });
    let mut sweep = vec![app.engine.local_store().clone()];
    sweep.extend(memory);
    let engine = app.engine.clone();
    background.spawn("sweeper", |cancel| sweep_expired(sweep, engine, cancel));
    // The vocabularies the configured models count with, built now off
    // the reactor (none without [[model]]s); a reload builds new ones.
    crate::vocabularies::load_for(&app.config.load().llm);
}

/// Serves the gRPC services (RLS, ext_proc, health) until `stop` fires.
/// A connection silent for `idle_timeout` is pinged and closed unless it
/// answers within `read_timeout` (`listen`).
async fn serve_grpc(
    app: Arc<App>,
    listener: TcpListener,
    gate: Arc<Gate>,
    tls: Option<Arc<ServerTls>>,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let server = app.config.load().server.clone();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<RateLimitServiceServer<RateLimitGrpc>>()
        .await;
    health
        .set_serving::<ExternalProcessorServer<ExtProcGrpc>>()
        .await;
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(server.idle_timeout))
        .http2_keepalive_timeout(Some(server.read_timeout))
        .add_service(health_service)
        .add_service(RateLimitServiceServer::new(RateLimitGrpc::new(app.clone())))
        .add_service(ExternalProcessorServer::new(ExtProcGrpc::new(app)));
    match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(tls.incoming(listener, gate), stop.cancelled_owned())
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(
                    listen::grpc_incoming(listener, gate),
                    stop.cancelled_owned(),
                )
                .await
        }
    }
}

/// The configured store; the same store as a `MemoryStore` when it is one
/// (the sweeper needs the concrete type); and a shared store's breaker.
struct Built {
    store: Arc<dyn Store>,
    memory: Option<Arc<MemoryStore>>,
    health: Option<Arc<Health>>,
}

fn build_store(config: &Config, instance: &str) -> anyhow::Result<Built> {
    Ok(match config.store.kind {
        StoreKind::Memory => {
            let memory = Arc::new(MemoryStore::new());
            Built {
                store: memory.clone(),
                memory: Some(memory),
                health: None,
            }
        }
        StoreKind::Redis => {
            // Connects lazily: tollgate starts and answers by `on_error`
            // while Redis is down, and uses it as soon as it answers.
            let certs = crate::tls::redis_certificates(&config.store.tls).context("store tls")?;
            let redis = RedisStore::new(
                &config.store.urls,
                config.store.cluster,
                certs,
                config.store.connect_timeout,
                config.store.timeout,
            )
            .context("bad store.url")?
            .with_instance(instance.to_string());
            let health = Arc::new(Health::new(BREAKER_COOLDOWN));
            let store = Arc::new(Breaker::new(Arc::new(redis), health.clone()));
            Built {
                store,
                memory: None,
                health: Some(health),
            }
        }
    })
}

/// Class shares of a budget nobody used for this long start over.
const SHARES_IDLE_MS: u64 = 600_000;

/// How long an open breaker waits before its next probe.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);

/// This instance's name in the registry, logs and metrics: the host's
/// name (a pod's name on Kubernetes) and a random suffix, so two processes
/// on one host are two instances.
fn instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tollgate".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

/// Pings the shared store once a second: finds a dead store without
/// traffic (so `/readyz` turns 503), and probes an open breaker closed.
async fn probe_store(store: Arc<dyn Store>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        if let Err(e) = store.ping().await {
            tracing::debug!(error = %e, "store ping failed");
        }
    }
}

/// Drops expired counters from the in-memory maps once a second, and class
/// shares of budgets idle for ten minutes.
async fn sweep_expired(stores: Vec<Arc<MemoryStore>>, engine: Engine, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let now = Clock::System.now_ms();
        for store in &stores {
            store.sweep(now);
        }
        engine.budgets.shares().sweep(now, SHARES_IDLE_MS);
    }
}

fn write_ready_file(path: &PathBuf, grpc: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    let body = serde_json::json!({ "grpc": grpc.to_string(), "admin": admin.to_string() });
    // Write then rename, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body.to_string())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
