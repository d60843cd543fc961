//! `[server]` and `[store]` from their views: where tollgate listens and
//! what it counts in.

use super::error::Source;
use super::file::{ServerView, StoreView};
use super::redis_url;
use super::suggest::{self, LOG_FORMATS, STORE_KINDS};
use super::validate::{failure_policy, parse_into};
use super::validate_tls;
use super::{ConfigError, LogFormat, ServerConfig, StoreConfig, StoreKind};
use std::time::Duration;
use toml::Spanned;

/// `[server]`: listeners and logs, TLS, then connection limits (the order
/// their errors have always been reported in).
pub(super) fn server_config(
    src: &Source,
    v: ServerView,
    errors: &mut Vec<ConfigError>,
) -> ServerConfig {
    let mut c = ServerConfig::default();
    listeners(src, &v, &mut c, errors);
    c.tls = validate_tls::server(src, v.tls_cert, v.tls_key, v.tls_client_ca, errors);
    let timeouts = [
        ("server.read_timeout", v.read_timeout, &mut c.read_timeout),
        ("server.idle_timeout", v.idle_timeout, &mut c.idle_timeout),
    ];
    connection_timeouts(src, timeouts, errors);
    max_connections(src, v.max_connections, &mut c, errors);
    c
}

/// `grpc_listen`, `admin_listen`, `log_format`, `shutdown_grace`.
fn listeners(src: &Source, v: &ServerView, c: &mut ServerConfig, errors: &mut Vec<ConfigError>) {
    if let Some(s) = &v.grpc_listen {
        parse_into(
            src,
            s,
            "server.grpc_listen",
            errors,
            &mut c.grpc_listen,
            |t| {
                t.parse()
                    .map_err(|_| format!("`{t}` is not an address like 127.0.0.1:8081"))
            },
        );
    }
    if let Some(s) = &v.admin_listen {
        parse_into(
            src,
            s,
            "server.admin_listen",
            errors,
            &mut c.admin_listen,
            |t| {
                t.parse()
                    .map_err(|_| format!("`{t}` is not an address like 127.0.0.1:9090"))
            },
        );
    }
    if let Some(s) = &v.log_format {
        parse_into(
            src,
            s,
            "server.log_format",
            errors,
            &mut c.log_format,
            |t| match t {
                "human" => Ok(LogFormat::Human),
                "json" => Ok(LogFormat::Json),
                _ => Err(suggest::expected(t, LOG_FORMATS)),
            },
        );
    }
    if let Some(s) = &v.shutdown_grace {
        parse_into(
            src,
            s,
            "server.shutdown_grace",
            errors,
            &mut c.shutdown_grace,
            duration,
        );
    }
}

/// `read_timeout` and `idle_timeout`: how long a slow or idle client may
/// hold a connection.
fn connection_timeouts(
    src: &Source,
    timeouts: [(&str, Option<Spanned<String>>, &mut Duration); 2],
    errors: &mut Vec<ConfigError>,
) {
    for (field, value, out) in timeouts {
        if let Some(s) = value {
            parse_into(src, &s, field, errors, out, |t| {
                // Zero would close every connection at once; an hour is
                // already no limit for a slow client.
                duration(t).and_then(|d| {
                    if d >= Duration::from_millis(100) && d <= Duration::from_secs(3600) {
                        Ok(d)
                    } else {
                        Err(format!("`{t}`: between 100ms and 1h, like \"10s\""))
                    }
                })
            });
        }
    }
}

/// `max_connections`: how many clients are served at once.
fn max_connections(
    src: &Source,
    n: Option<Spanned<u64>>,
    c: &mut ServerConfig,
    errors: &mut Vec<ConfigError>,
) {
    if let Some(n) = n {
        match usize::try_from(*n.get_ref()) {
            Ok(m) if (1..=1_000_000).contains(&m) => c.max_connections = m,
            _ => errors.push(src.error(
                n.span().start,
                "server.max_connections",
                format!("{}: between 1 and 1000000", n.get_ref()),
            )),
        }
    }
}

/// `[store]`; `url_dropped` says the url was refused already (no second
/// "needs a url" error).
pub(super) fn store_config(
    src: &Source,
    v: StoreView,
    url_dropped: bool,
    errors: &mut Vec<ConfigError>,
) -> StoreConfig {
    let mut c = StoreConfig::default();
    let kind_at = v.kind.as_ref().map(|k| k.span().start).unwrap_or(0);
    if let Some(s) = v.kind {
        parse_into(src, &s, "store.kind", errors, &mut c.kind, |t| match t {
            "memory" => Ok(StoreKind::Memory),
            "redis" => Ok(StoreKind::Redis),
            _ => Err(suggest::expected(t, STORE_KINDS)),
        });
    }
    if let Some(b) = v.cluster {
        c.cluster = b;
    }
    if let Some(s) = &v.url {
        c.urls = redis_url::urls(src, s, c.cluster, errors);
    }
    if let Some(s) = v.connect_timeout {
        parse_into(
            src,
            &s,
            "store.connect_timeout",
            errors,
            &mut c.connect_timeout,
            duration,
        );
    }
    if let Some(s) = v.timeout {
        parse_into(src, &s, "store.timeout", errors, &mut c.timeout, duration);
    }
    if let Some(s) = v.on_error {
        parse_into(
            src,
            &s,
            "store.on_error",
            errors,
            &mut c.on_error,
            failure_policy,
        );
    }
    c.tls = validate_tls::store(src, v.tls_ca, v.tls_cert, v.tls_key, &c.urls, errors);
    if c.kind == StoreKind::Redis && c.urls.is_empty() && !url_dropped {
        errors.push(src.error(kind_at, "store.url", "kind = \"redis\" needs a url"));
    }
    c
}

fn duration(t: &str) -> Result<Duration, String> {
    humantime::parse_duration(t).map_err(|e| format!("`{t}`: {e} (write e.g. \"50ms\", \"5s\")"))
}
