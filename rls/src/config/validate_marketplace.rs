//! Validation of `[marketplace]`. Values are checked whenever they are
//! written; what an enabled marketplace needs (endpoint, key, models,
//! price cap, allowlist) is required only when it is on (`enabled = true`
//! without `offline_mode`), and then the key's variable or file is read
//! now, so `tollgate check` says what a start would. An inline `api_key`
//! is refused, always, without echoing it.

use super::error::Source;
use super::marketplace_view::MarketplaceView;
use super::suggest;
use super::validate_leases::duration;
use super::ConfigError;
use crate::marketplace::{AllowedHost, ApiKeySource, MarketplaceConfig, Price};
use crate::rules::LlmConfig;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// Where `models` and `classes` were written, for [`cross_check`] once
/// every file's `[[model]]` and `[[class]]` are known.
#[derive(Debug, Default)]
pub(crate) struct Written {
    models: Option<String>,
    classes: Option<String>,
}

/// What every step of [`section`] needs: where the table starts and whether
/// the marketplace is on (then its required fields are required).
struct Ctx<'s> {
    src: &'s Source<'s>,
    at: usize,
    on: bool,
}

impl Ctx<'_> {
    /// Names a field: `marketplace.endpoint`.
    fn field(&self, name: &str) -> String {
        format!("marketplace.{name}")
    }

    /// A field an enabled marketplace needs is missing.
    fn required(&self, errors: &mut Vec<ConfigError>, name: &str, what: &str) {
        if self.on {
            errors.push(self.src.error(
                self.at,
                self.field(name),
                format!("missing: an enabled marketplace needs {what}"),
            ));
        }
    }
}

/// `[marketplace]` from its view.
pub(crate) fn section(
    src: &Source,
    view: Spanned<MarketplaceView>,
    errors: &mut Vec<ConfigError>,
) -> (MarketplaceConfig, Written) {
    let at = view.span().start;
    let v = view.into_inner();
    let mut c = MarketplaceConfig::default();
    let mut written = Written::default();
    c.enabled = v.enabled.unwrap_or(false);
    c.offline_mode = v.offline_mode.unwrap_or(false);
    let cx = Ctx {
        src,
        at,
        on: c.active(),
    };
    c.api_key = api_key(&cx, &v, errors);
    endpoint_and_models(&cx, &v, &mut c, &mut written, errors);
    price_and_hosts(&cx, &v, &mut c, errors);
    region(&cx, &v, &mut c, errors);
    timings(&cx, &v, &mut c, errors);
    queue_limits(&cx, &v, &mut c, errors);
    (c, written)
}

/// `api_key_env` or `api_key_file` (never an inline `api_key`); when on,
/// the variable or file is read now so a bad key fails the check.
fn api_key(cx: &Ctx, v: &MarketplaceView, errors: &mut Vec<ConfigError>) -> Option<ApiKeySource> {
    let (src, on) = (cx.src, cx.on);
    if let Some(k) = &v.api_key {
        errors.push(src.error(
            k.span().start,
            cx.field("api_key"),
            "never written in the config: name an environment variable (api_key_env) or a file (api_key_file) that holds it",
        ));
    }
    match (&v.api_key_env, &v.api_key_file) {
        (Some(e), Some(_)) => {
            errors.push(src.error(
                e.span().start,
                cx.field("api_key_env"),
                "set api_key_env or api_key_file, not both",
            ));
            None
        }
        (Some(e), None) => {
            let name = e.get_ref().trim().to_string();
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                errors.push(src.error(
                    e.span().start,
                    cx.field("api_key_env"),
                    "not an environment variable name",
                ));
                None
            } else {
                if on && std::env::var(&name).map_or(true, |k| k.trim().is_empty()) {
                    errors.push(src.error(
                        e.span().start,
                        cx.field("api_key_env"),
                        format!("environment variable {name} is not set (or empty)"),
                    ));
                }
                Some(ApiKeySource::Env(name))
            }
        }
        (None, Some(f)) => {
            let path = resolve(src, f.get_ref().trim());
            if on {
                match std::fs::read_to_string(&path) {
                    Ok(k) if !k.trim().is_empty() => {}
                    Ok(_) => errors.push(src.error(
                        f.span().start,
                        cx.field("api_key_file"),
                        format!("{}: the file is empty", path.display()),
                    )),
                    Err(e) => errors.push(src.error(
                        f.span().start,
                        cx.field("api_key_file"),
                        format!("{}: cannot read: {e}", path.display()),
                    )),
                }
            }
            Some(ApiKeySource::File(path))
        }
        (None, None) => {
            cx.required(errors, "api_key_env", "api_key_env or api_key_file");
            None
        }
    }
}

/// Where to ask (`endpoint`) and for what (`models`, `classes`, whose
/// places are kept for [`cross_check`]).
fn endpoint_and_models(
    cx: &Ctx,
    v: &MarketplaceView,
    c: &mut MarketplaceConfig,
    written: &mut Written,
    errors: &mut Vec<ConfigError>,
) {
    let src = cx.src;
    match &v.endpoint {
        Some(e) => match endpoint(e.get_ref()) {
            Ok(url) => c.endpoint = url,
            Err(m) => errors.push(src.error(e.span().start, cx.field("endpoint"), m)),
        },
        None => cx.required(errors, "endpoint", "the marketplace's https:// URL"),
    }
    match &v.models {
        Some(m) => {
            if m.get_ref().is_empty() && cx.on {
                errors.push(src.error(
                    m.span().start,
                    cx.field("models"),
                    "empty: name the [[model]]s it may be asked for",
                ));
            }
            c.models = m.get_ref().iter().map(|s| s.trim().to_string()).collect();
            written.models = Some(format!("{}:{}", src.name, src.line_of(m.span().start)));
        }
        None => cx.required(
            errors,
            "models",
            "models = [\"...\"], the [[model]]s it may be asked for",
        ),
    }
    if let Some(k) = &v.classes {
        c.classes = Some(k.get_ref().iter().map(|s| s.trim().to_string()).collect());
        written.classes = Some(format!("{}:{}", src.name, src.line_of(k.span().start)));
    }
}

/// What a quote may cost (`max_price_per_mtoken`) and whose it may be
/// (`allowed_hosts`).
fn price_and_hosts(
    cx: &Ctx,
    v: &MarketplaceView,
    c: &mut MarketplaceConfig,
    errors: &mut Vec<ConfigError>,
) {
    let src = cx.src;
    match &v.max_price_per_mtoken {
        Some(p) => match Price::from_units(*p.get_ref()) {
            Some(price) if price.0 > 0 => c.max_price = price,
            _ => errors.push(src.error(
                p.span().start,
                cx.field("max_price_per_mtoken"),
                format!(
                    "{}: a price per million tokens above 0 and at most {}",
                    p.get_ref(),
                    Price::MAX_UNITS
                ),
            )),
        },
        None => cx.required(
            errors,
            "max_price_per_mtoken",
            "a price cap per million tokens",
        ),
    }
    match &v.allowed_hosts {
        Some(h) => {
            for host in h.get_ref() {
                match allowed_host(host) {
                    Ok(a) => c.allowed_hosts.push(a),
                    Err(m) => errors.push(src.error(h.span().start, cx.field("allowed_hosts"), m)),
                }
            }
            if h.get_ref().is_empty() && cx.on {
                errors.push(src.error(
                    h.span().start,
                    cx.field("allowed_hosts"),
                    "empty: no supplier would ever be accepted",
                ));
            }
        }
        None => cx.required(
            errors,
            "allowed_hosts",
            "allowed_hosts, the supplier hosts a quote may name",
        ),
    }
}

/// `region`: a short printable name sent with each ask.
fn region(cx: &Ctx, v: &MarketplaceView, c: &mut MarketplaceConfig, errors: &mut Vec<ConfigError>) {
    if let Some(r) = &v.region {
        let region = r.get_ref().trim();
        if region.is_empty() || region.len() > 64 || !region.bytes().all(|b| b.is_ascii_graphic()) {
            errors.push(cx.src.error(
                r.span().start,
                cx.field("region"),
                format!("`{region}`: a region name like \"eu-west\""),
            ));
        } else {
            c.region = Some(region.to_string());
        }
    }
}

/// `timeout`, `cache_ttl`, `breaker_open`, each within its bounds.
fn timings(
    cx: &Ctx,
    v: &MarketplaceView,
    c: &mut MarketplaceConfig,
    errors: &mut Vec<ConfigError>,
) {
    let src = cx.src;
    let ms = Duration::from_millis;
    let secs = Duration::from_secs;
    if let Some(d) = duration(
        src,
        v.timeout.as_ref(),
        &cx.field("timeout"),
        ms(10),
        secs(5),
        errors,
    ) {
        c.timeout = d;
    }
    if let Some(d) = duration(
        src,
        v.cache_ttl.as_ref(),
        &cx.field("cache_ttl"),
        secs(1),
        secs(3600),
        errors,
    ) {
        c.cache_ttl = d;
    }
    if let Some(d) = duration(
        src,
        v.breaker_open.as_ref(),
        &cx.field("breaker_open"),
        ms(100),
        secs(3600),
        errors,
    ) {
        c.breaker.open_for = d;
    }
}

/// `breaker_failures`, `usage_queue`, `usage_attempts`, each within its
/// bounds.
fn queue_limits(
    cx: &Ctx,
    v: &MarketplaceView,
    c: &mut MarketplaceConfig,
    errors: &mut Vec<ConfigError>,
) {
    let src = cx.src;
    if let Some(n) = &v.breaker_failures {
        match *n.get_ref() {
            n @ 1..=100 => c.breaker.failures = n,
            n => errors.push(src.error(
                n_at(&v.breaker_failures),
                cx.field("breaker_failures"),
                format!("{n}: between 1 and 100"),
            )),
        }
    }
    if let Some(n) = &v.usage_queue {
        match *n.get_ref() {
            n @ 1..=100_000 => c.reports.queue = n as usize,
            n => errors.push(src.error(
                n_at(&v.usage_queue),
                cx.field("usage_queue"),
                format!("{n}: between 1 and 100000"),
            )),
        }
    }
    if let Some(n) = &v.usage_attempts {
        match *n.get_ref() {
            n @ 1..=20 => c.reports.attempts = n,
            n => errors.push(src.error(
                n_at(&v.usage_attempts),
                cx.field("usage_attempts"),
                format!("{n}: between 1 and 20"),
            )),
        }
    }
}

/// The models and classes named must be configured ones.
pub(crate) fn cross_check(
    c: &MarketplaceConfig,
    written: &Written,
    llm: &LlmConfig,
    errors: &mut Vec<ConfigError>,
) {
    if let Some(at) = &written.models {
        let names: Vec<&str> = llm.models.iter().map(|m| m.name.as_str()).collect();
        for m in &c.models {
            if !names.contains(&m.as_str()) {
                errors.push(ConfigError::at(
                    at,
                    "marketplace.models",
                    format!(
                        "no [[model]] is named `{m}`{}",
                        suggest::hint(m, names.iter().copied())
                    ),
                ));
            }
        }
    }
    if let (Some(at), Some(classes)) = (&written.classes, &c.classes) {
        let names: Vec<&str> = llm.classes.0.iter().map(|k| k.name.as_str()).collect();
        for k in classes {
            if !names.contains(&k.as_str()) {
                errors.push(ConfigError::at(
                    at,
                    "marketplace.classes",
                    format!(
                        "no [[class]] is named `{k}`{}",
                        suggest::hint(k, names.iter().copied())
                    ),
                ));
            }
        }
    }
}

fn n_at<T>(v: &Option<Spanned<T>>) -> usize {
    v.as_ref().map_or(0, |s| s.span().start)
}

/// `https://host[:port][/path]`, or `http://` to a loopback address (a
/// local sidecar); no credentials, query or fragment.
fn endpoint(text: &str) -> Result<String, String> {
    let text = text.trim();
    let url = url::Url::parse(text).map_err(|e| format!("`{text}`: not a URL ({e})"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err(format!("`{text}`: https:// only (http:// only to a loopback address): the API key goes with every call")),
        s => return Err(format!("`{text}`: scheme `{s}`: expected https://")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "no credentials in the URL: the key comes from api_key_env or api_key_file".into(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{text}`: a base URL, without ? or #"));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// `host` or `host:port`, nothing else.
fn allowed_host(text: &str) -> Result<AllowedHost, String> {
    let t = text.trim().to_ascii_lowercase();
    let bad = || format!("`{text}`: a host name, or host:port (no scheme, path or wildcard)");
    if t.is_empty() || t.contains("://") || t.contains('/') || t.contains('*') || t.contains('@') {
        return Err(bad());
    }
    let port = |p: &str| p.parse::<u16>().map_err(|_| bad());
    let (host, port) = match t.strip_prefix('[') {
        // An IPv6 address, as a URL writes it: `[::1]` or `[::1]:8443`.
        Some(rest) => match rest.split_once(']') {
            Some((h, "")) => (format!("[{h}]"), None),
            Some((h, p)) => (
                format!("[{h}]"),
                Some(port(p.strip_prefix(':').ok_or_else(bad)?)?),
            ),
            None => return Err(bad()),
        },
        None => match t.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(port(p)?)),
            None => (t.clone(), None),
        },
    };
    let parsed = url::Url::parse(&format!("https://{host}/")).map_err(|_| bad())?;
    if parsed.host_str() != Some(host.as_str()) {
        return Err(bad());
    }
    Ok(AllowedHost { host, port })
}

/// A relative path is relative to the directory of the file that names it.
fn resolve(src: &Source, path: &str) -> std::path::PathBuf {
    let p = Path::new(path);
    match Path::new(src.name).parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;
    use crate::marketplace::{ApiKeySource, Price};
    use std::time::Duration;

    const MODELS: &str = "[[model]]\nname = \"gpt-4o\"\ncontext_window = 1000\ndefault_max_output = 10\n\n[[class]]\nname = \"batch\"\n";

    fn errors(text: &str) -> Vec<String> {
        match parse_str("t.toml", text) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn enabled(extra: &str) -> String {
        format!(
            "[marketplace]\nenabled = true\nendpoint = \"https://market.example\"\napi_key_env = \"PATH\"\nmodels = [\"gpt-4o\"]\nmax_price_per_mtoken = 2.5\nallowed_hosts = [\"supplier.example\", \"localhost:8443\"]\n{extra}\n{MODELS}"
        )
    }

    #[test]
    fn off_by_default_and_nothing_required_while_off() {
        let c = parse_str("t.toml", "").unwrap();
        assert!(!c.marketplace.enabled && !c.marketplace.active());
        let c = parse_str(
            "t.toml",
            "[marketplace]\nenabled = true\noffline_mode = true\n",
        )
        .unwrap();
        assert!(!c.marketplace.active(), "offline_mode overrides");
        assert_eq!(c.marketplace.timeout, Duration::from_millis(500));
        assert_eq!(c.marketplace.cache_ttl, Duration::from_secs(300));
        assert_eq!(c.marketplace.breaker.failures, 3);
        assert_eq!(c.marketplace.breaker.open_for, Duration::from_secs(30));
    }

    #[test]
    fn an_enabled_marketplace_is_read_whole() {
        let c = parse_str(
            "t.toml",
            &enabled("region = \"eu-west\"\nclasses = [\"batch\"]\ntimeout = \"250ms\""),
        )
        .unwrap();
        let m = &c.marketplace;
        assert!(m.active());
        assert_eq!(m.endpoint, "https://market.example");
        assert_eq!(m.api_key, Some(ApiKeySource::Env("PATH".into())));
        assert_eq!(m.max_price, Price(2_500_000));
        assert_eq!(m.allowed_hosts[1].port, Some(8443));
        assert_eq!(m.classes.as_deref(), Some(&["batch".to_string()][..]));
        assert_eq!(m.timeout, Duration::from_millis(250));
    }

    #[test]
    fn what_an_enabled_marketplace_needs_is_named_with_its_line() {
        let e = errors("[marketplace]\nenabled = true\n");
        for f in [
            "api_key_env",
            "endpoint",
            "models",
            "max_price_per_mtoken",
            "allowed_hosts",
        ] {
            assert!(
                e.iter()
                    .any(|l| l.starts_with(&format!("t.toml:1: marketplace.{f}: missing"))),
                "no {f} in {e:#?}"
            );
        }
        assert_eq!(e.len(), 5, "{e:#?}");
    }

    #[test]
    fn an_inline_key_is_refused_without_being_echoed() {
        let e = errors("[marketplace]\napi_key = \"sk-live-123456\"\n");
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with("t.toml:2: marketplace.api_key: never written in the config"),
            "{e:?}"
        );
        assert!(!e[0].contains("sk-live"), "{e:?}");
    }

    #[test]
    fn bad_values_are_located_and_near_names_suggested() {
        let e = errors(&format!(
            "[marketplace]\nenabled = true\nendpoint = \"http://market.example\"\napi_key_env = \"TOLLGATE_UNSET_TEST_VAR\"\nmodels = [\"gpt-4\"]\nclasses = [\"bacth\"]\nmax_price_per_mtoken = -1\nallowed_hosts = [\"https://x.example/\"]\ntimeout = \"9s\"\ncache_tll = \"1m\"\n{MODELS}"
        ));
        let want = [
            "t.toml:3: marketplace.endpoint: `http://market.example`: https:// only",
            "t.toml:4: marketplace.api_key_env: environment variable TOLLGATE_UNSET_TEST_VAR is not set",
            "t.toml:5: marketplace.models: no [[model]] is named `gpt-4`; did you mean `gpt-4o`?",
            "t.toml:6: marketplace.classes: no [[class]] is named `bacth`; did you mean `batch`?",
            "t.toml:7: marketplace.max_price_per_mtoken: -1",
            "t.toml:8: marketplace.allowed_hosts: `https://x.example/`",
            "t.toml:9: marketplace.timeout: `9s`: a duration between 10ms and 5s",
            "t.toml:10: marketplace.cache_tll: unknown field `cache_tll`, did you mean `cache_ttl`?",
        ];
        for w in want {
            assert!(e.iter().any(|l| l.starts_with(w)), "no `{w}` in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    #[test]
    fn http_only_to_loopback_and_key_files_are_read() {
        let dir = std::env::temp_dir().join(format!("tollgate-mcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), "k\n").unwrap();
        let file = dir.join("t.toml");
        let text = |endpoint: &str, key: &str| {
            format!("[marketplace]\nenabled = true\nendpoint = \"{endpoint}\"\napi_key_file = \"{key}\"\nmodels = [\"gpt-4o\"]\nmax_price_per_mtoken = 1\nallowed_hosts = [\"localhost\"]\n{MODELS}")
        };
        std::fs::write(&file, text("http://127.0.0.1:9999/", "key")).unwrap();
        let c = crate::config::load(&file).unwrap();
        assert_eq!(c.marketplace.endpoint, "http://127.0.0.1:9999");
        assert_eq!(
            c.marketplace.api_key,
            Some(ApiKeySource::File(dir.join("key")))
        );
        std::fs::write(&file, text("https://m.example", "missing")).unwrap();
        let e = crate::config::load(&file).unwrap_err().0;
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].field, "marketplace.api_key_file");
        assert!(e[0].message.contains("cannot read"), "{e:?}");
    }
}
