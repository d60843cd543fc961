//! A quote as tollgate may use it, or why it may not: checked for shape
//! first (anything that goes into a header, a log or Envoy's routing must
//! be safe there), then against the policy: not expired, within the price
//! cap, to an allowlisted supplier over https.

use super::protocol::QuoteAnswer;
use super::refusal::Refusal;
use super::settings::{MarketplaceConfig, Price};
use std::time::SystemTime;

/// Longest id (quote, supply) accepted.
const MAX_ID: usize = 128;
/// Longest signed token accepted (it becomes one request header).
const MAX_TOKEN: usize = 4096;
/// Longest model name accepted.
const MAX_MODEL: usize = 256;

/// A quote that passed every check. Its `Debug` leaves the token out.
#[derive(Clone, PartialEq, Eq)]
pub struct Quote {
    pub quote_id: String,
    pub supply_id: String,
    pub supplier: Supplier,
    /// The credential for the supplier, sent only to it.
    pub token: String,
    pub price: Price,
    /// The supplier's name for the model, when it differs.
    pub model: Option<String>,
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for Quote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quote")
            .field("quote_id", &self.quote_id)
            .field("supply_id", &self.supply_id)
            .field("supplier", &self.supplier)
            .field("token", &"<redacted>")
            .field("price", &self.price)
            .field("model", &self.model)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Where the request goes: Envoy routes on `authority` and the request's
/// path is appended to `path_prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supplier {
    pub host: String,
    /// `host`, or `host:port` when the port is not 443.
    pub authority: String,
    /// The endpoint's path without its trailing `/` (`""` for none).
    pub path_prefix: String,
}

impl Supplier {
    /// The path the supplier is asked for, given the client's.
    pub fn path(&self, client_path: &str) -> String {
        format!("{}{client_path}", self.path_prefix)
    }
}

/// Checks a quote answer against the policy at `now`.
pub fn check(
    answer: QuoteAnswer,
    policy: &MarketplaceConfig,
    now: SystemTime,
) -> Result<Quote, Refusal> {
    let QuoteAnswer {
        quote_id,
        supply,
        expires_at,
    } = answer;
    if !is_id(&quote_id) || !is_id(&supply.supply_id) || !is_token(&supply.signed_token) {
        return Err(Refusal::Malformed);
    }
    if supply.model.as_deref().is_some_and(|m| !is_model(m)) {
        return Err(Refusal::Malformed);
    }
    let expires_at = humantime::parse_rfc3339(expires_at.trim()).map_err(|_| Refusal::Malformed)?;
    let price = Price::from_units(supply.price_per_mtoken).ok_or(Refusal::Malformed)?;
    let (supplier, port) = supplier(&supply.endpoint).ok_or(Refusal::Malformed)?;
    if expires_at <= now {
        return Err(Refusal::Expired);
    }
    if price > policy.max_price {
        return Err(Refusal::OverPrice);
    }
    if !policy
        .allowed_hosts
        .iter()
        .any(|h| h.admits(&supplier.host, port))
    {
        return Err(Refusal::HostNotAllowed);
    }
    Ok(Quote {
        quote_id,
        supply_id: supply.supply_id,
        supplier,
        token: supply.signed_token,
        price,
        model: supply.model,
        expires_at,
    })
}

/// An `https://host[:port][/path]` endpoint with nothing else in it (no
/// credentials, query or fragment), and its port.
fn supplier(endpoint: &str) -> Option<(Supplier, u16)> {
    let url = url::Url::parse(endpoint.trim()).ok()?;
    if url.scheme() != "https"
        || !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return None;
    }
    let host = url.host_str()?.to_ascii_lowercase();
    let port = url.port_or_known_default()?;
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let path_prefix = url.path().trim_end_matches('/').to_string();
    if !path_prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some((
        Supplier {
            host,
            authority,
            path_prefix,
        },
        port,
    ))
}

fn is_id(s: &str) -> bool {
    (1..=MAX_ID).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// A header value without spaces or control characters.
fn is_token(s: &str) -> bool {
    (1..=MAX_TOKEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

fn is_model(s: &str) -> bool {
    (1..=MAX_MODEL).contains(&s.len()) && !s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketplace::protocol::QuotedSupply;
    use crate::marketplace::settings::AllowedHost;
    use std::time::Duration;

    fn policy() -> MarketplaceConfig {
        MarketplaceConfig {
            enabled: true,
            max_price: Price(10_000_000),
            allowed_hosts: vec![
                AllowedHost {
                    host: "supplier.example".into(),
                    port: None,
                },
                AllowedHost {
                    host: "localhost".into(),
                    port: Some(8443),
                },
            ],
            ..Default::default()
        }
    }

    fn answer() -> QuoteAnswer {
        QuoteAnswer {
            quote_id: "q-1".into(),
            expires_at: "2030-01-01T00:00:00Z".into(),
            supply: QuotedSupply {
                supply_id: "s-1".into(),
                endpoint: "https://Supplier.Example/openai/".into(),
                signed_token: "sig.abc".into(),
                price_per_mtoken: 9.99,
                model: Some("gpt-4o-2024".into()),
            },
        }
    }

    fn now() -> SystemTime {
        humantime::parse_rfc3339("2029-12-31T23:59:00Z").unwrap()
    }

    fn with(f: impl FnOnce(&mut QuoteAnswer)) -> Result<Quote, Refusal> {
        let mut a = answer();
        f(&mut a);
        check(a, &policy(), now())
    }

    #[test]
    fn a_good_quote_names_the_supplier() {
        let q = with(|_| {}).unwrap();
        assert_eq!(q.supplier.authority, "supplier.example");
        assert_eq!(
            q.supplier.path("/v1/chat/completions"),
            "/openai/v1/chat/completions"
        );
        assert_eq!(q.price, Price(9_990_000));
        let q = with(|a| a.supply.endpoint = "https://localhost:8443".into()).unwrap();
        assert_eq!(q.supplier.authority, "localhost:8443");
        assert_eq!(q.supplier.path("/v1/x"), "/v1/x");
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let q = with(|_| {}).unwrap();
        assert!(!format!("{q:?}").contains("sig.abc"));
    }

    #[test]
    fn expired_over_price_and_foreign_hosts_are_refused() {
        let past = now() - Duration::from_secs(1);
        assert_eq!(
            with(|a| a.expires_at = humantime::format_rfc3339(past).to_string()),
            Err(Refusal::Expired)
        );
        assert_eq!(
            with(|a| a.supply.price_per_mtoken = 10.01),
            Err(Refusal::OverPrice)
        );
        assert!(
            with(|a| a.supply.price_per_mtoken = 10.0).is_ok(),
            "at the cap"
        );
        for endpoint in [
            "https://evil.example",
            "https://supplier.example.evil.example",
            "https://localhost:9443",
            "https://localhost",
        ] {
            assert_eq!(
                with(|a| a.supply.endpoint = endpoint.into()),
                Err(Refusal::HostNotAllowed),
                "{endpoint}"
            );
        }
    }

    #[test]
    fn what_cannot_go_into_a_header_or_a_route_is_malformed() {
        type Change = Box<dyn Fn(&mut QuoteAnswer)>;
        let cases: Vec<Change> = vec![
            Box::new(|a| a.quote_id = String::new()),
            Box::new(|a| a.quote_id = "q 1".into()),
            Box::new(|a| a.supply.supply_id = "s\r\nx-evil: 1".into()),
            Box::new(|a| a.supply.signed_token = "tok\nen".into()),
            Box::new(|a| a.supply.signed_token = "x".repeat(MAX_TOKEN + 1)),
            Box::new(|a| a.supply.model = Some("m\u{0}".into())),
            Box::new(|a| a.expires_at = "tomorrow".into()),
            Box::new(|a| a.supply.price_per_mtoken = -1.0),
            Box::new(|a| a.supply.endpoint = "http://supplier.example".into()),
            Box::new(|a| a.supply.endpoint = "https://u:p@supplier.example".into()),
            Box::new(|a| a.supply.endpoint = "https://supplier.example/?a=1".into()),
            Box::new(|a| a.supply.endpoint = "not a url".into()),
        ];
        for (i, f) in cases.iter().enumerate() {
            assert_eq!(with(f), Err(Refusal::Malformed), "case {i}");
        }
    }
}
