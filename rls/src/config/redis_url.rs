//! `[store] url`: each URL read the way the redis client will read it at
//! start-up (the `url` parser, then the redis crate's own conversion, then
//! its cluster checks across the seed nodes), so `tollgate check` and a
//! reload refuse what `serve` would; and every URL shown with its
//! credentials masked.

use super::error::Source;
use super::ConfigError;
use redis::IntoConnectionInfo;
use toml::Spanned;

/// Splits `store.url` (comma-separated seed nodes) and checks each URL,
/// then the set as one cluster when it is one. Errors name the URL's line
/// and, in a list, its position; the URLs are returned either way.
pub(super) fn urls(
    src: &Source,
    value: &Spanned<String>,
    cluster: bool,
    errors: &mut Vec<ConfigError>,
) -> Vec<String> {
    let at = value.span().start;
    let urls: Vec<String> = value
        .get_ref()
        .split(',')
        .map(|u| u.trim().to_string())
        .collect();
    let count = urls.len();
    // A part without a scheme means the list was split inside something,
    // most likely a password with a comma in it: then no part is shown
    // past its scheme, since any of them may hold a piece of the password.
    let split_inside = count > 1 && urls.iter().any(|u| !u.contains("://"));
    let mut all_read = true;
    for (i, u) in urls.iter().enumerate() {
        if let Err(why) = check(u) {
            all_read = false;
            let which = if count > 1 {
                format!(" (URL {} of {count})", i + 1)
            } else {
                String::new()
            };
            errors.push(src.error(
                at,
                "store.url",
                format!("`{}`{which}: {why}", shown(u, split_inside)),
            ));
        }
    }
    // The same condition as the store's choice of a cluster client.
    if all_read && (cluster || count > 1) {
        let built = redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str)).build();
        if let Err(e) = built {
            errors.push(src.error(
                at,
                "store.url",
                format!("the seed nodes do not make one cluster: {}", reason(&e)),
            ));
        }
    }
    urls
}

fn shown(url: &str, split_inside: bool) -> String {
    match url.split_once("://") {
        Some((scheme, _)) if split_inside => format!("{scheme}://***"),
        None if split_inside => "***".into(),
        _ => redacted_url(url),
    }
}

/// One URL, as `redis::Client::open` reads it.
fn check(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("empty (one comma too many?)".into());
    }
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err("must start with redis:// or rediss://".into());
    }
    // The redis crate says only "did not parse" for what the URL parser
    // refuses; the parser says why (e.g. "invalid port number").
    url::Url::parse(url).map_err(|e| e.to_string())?;
    url.into_connection_info().map_err(|e| reason(&e))?;
    Ok(())
}

/// The redis crate's message without its error-kind suffix. Its messages
/// for a URL never quote the URL (checked by a test below).
fn reason(e: &redis::RedisError) -> String {
    e.to_string().replace(" - InvalidClientConfig", "")
}

/// A URL fit for a message: the password (and, when there is no user, the
/// whole user part) replaced by `***`, also in a malformed URL, where
/// everything before the last `@` is taken for credentials.
pub(crate) fn redacted_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    if let Some(at) = rest.rfind('@') {
        let user = rest[..at].split_once(':').map_or("", |(u, _)| u);
        return format!("{scheme}{user}:***@{}", masked_query(&rest[at + 1..]));
    }
    // No `@`: text after a colon that is not a port may be part of a
    // password (a list split at a comma inside one).
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once(':') {
        Some((host, port))
            if !authority.ends_with(']') && !port.chars().all(|c| c.is_ascii_digit()) =>
        {
            format!("{host}:***")
        }
        _ => authority.to_string(),
    };
    format!("{scheme}{authority}{}", masked_query(tail))
}

/// `?password=x` and `?pass=x` (unix-socket URLs) masked.
fn masked_query(rest: &str) -> String {
    let Some((before, query)) = rest.split_once('?') else {
        return rest.to_string();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if matches!(k.to_ascii_lowercase().as_str(), "pass" | "password") => {
                format!("{k}=***")
            }
            _ => pair.to_string(),
        })
        .collect();
    format!("{before}?{}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::redacted_url;
    use crate::config::parse_str;

    const SECRET: &str = "S3cr3tPW";

    fn errors(text: &str) -> Vec<String> {
        match parse_str("t.toml", text) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn store(url: &str) -> String {
        format!("[store]\nkind = \"redis\"\nurl = \"{url}\"\n")
    }

    /// Issue 18, defect 5: `redis//:S3cr3tPW@host` was echoed whole.
    #[test]
    fn malformed_urls_are_shown_without_their_password() {
        for url in [
            "redis//:S3cr3tPW@host",
            "redis:/:S3cr3tPW@host",
            "redis:S3cr3tPW@host",
            "S3cr3tPW@host",
            "http://u:S3cr3tPW@host",
            "redis://u:S3cr3tPW@host:99999",
            "redis://u:S3cr3tPW@host/x",
            "redis://:S3cr3tPW@[::1",
            "redis+unix:///tmp/r.sock?pass=S3cr3tPW",
            "redis://h:1,redis://u:S3cr3tPW@h:bad",
            // A comma inside a password splits the list there.
            "redis://:ab,S3cr3tPW@h:6379",
            "redis://:S3cr3tPW,x@h:6379",
            "redis://:S3cr3t,PW@h:6379",
            "redis://:4711,S3cr3tPW@h:6379",
        ] {
            let e = errors(&store(url));
            assert!(!e.is_empty(), "{url} passed");
            for line in &e {
                assert!(!line.contains(SECRET), "the password leaked: {line}");
                assert!(!line.contains("S3cr3t"), "part of the password: {line}");
                assert!(!line.contains("4711"), "part of the password: {line}");
                assert!(line.starts_with("t.toml:3: store.url: "), "{line}");
            }
        }
        assert_eq!(redacted_url("redis//:S3cr3tPW@host"), "redis//:***@host");
        assert_eq!(redacted_url("redis://:pa"), "redis://:***");
        assert_eq!(redacted_url("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redacted_url("redis://[::1]:6379"), "redis://[::1]:6379");
        assert_eq!(
            redacted_url("redis+unix:///s?db=1&pass=x"),
            "redis+unix:///s?db=1&pass=***"
        );
    }

    /// Issue 18, defect 5: these passed `check` and failed `serve`.
    #[test]
    fn check_refuses_what_the_redis_client_refuses() {
        for (url, why) in [
            ("redis://127.0.0.1:99999", "invalid port number"),
            ("redis://127.0.0.1:6379/zero", "Invalid database number"),
            (
                "redis://127.0.0.1:6379/?protocol=resp9",
                "Invalid protocol version",
            ),
            (
                "rediss://127.0.0.1:6379/#unsafe",
                "only #insecure is supported",
            ),
            ("redis://0.0.0.0:6379", "wildcard address"),
            ("redis://", "Missing hostname"),
        ] {
            let e = errors(&store(url));
            assert_eq!(e.len(), 1, "{url}: {e:#?}");
            assert!(
                e[0].starts_with(&format!("t.toml:3: store.url: `{url}`: ")) && e[0].contains(why),
                "{url}: {e:?}"
            );
        }
        let e = errors(&store("redis://127.0.0.1:7000, redis://127.0.0.1:7001/x"));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with("t.toml:3: store.url: `redis://127.0.0.1:7001/x` (URL 2 of 2): Invalid database number"),
            "{e:?}"
        );
        let e = errors(&store("redis://127.0.0.1:7000,"));
        assert!(e[0].contains("(URL 2 of 2): empty"), "{e:?}");
        let e = errors(&store(
            "redis://:a@127.0.0.1:7000,redis://:b@127.0.0.1:7001",
        ));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].contains("different password"), "{e:?}");
        let e = errors(&store("redis://127.0.0.1:7000,rediss://127.0.0.1:7001"));
        assert!(e[0].contains("different TLS modes"), "{e:?}");
    }

    #[test]
    fn good_urls_pass() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://app:s3cret@redis.internal:6380/2",
            "rediss://:s%2Cecret@h/#insecure",
            "redis://[::1]:6379/?protocol=resp3",
            "redis://127.0.0.1:7000, redis://127.0.0.1:7001,redis://127.0.0.1:7002",
        ] {
            assert_eq!(errors(&store(url)), Vec::<String>::new(), "{url}");
        }
    }
}
