//! The marketplace protocol on the wire, as `docs/marketplace.md` states
//! it: what tollgate sends (only these fields, all metadata) and what it
//! reads back. Answers may carry more fields than these; they are ignored.
//! Nothing here decides anything: `quote` checks what a quote says.

use serde::{Deserialize, Serialize};

/// `GET {endpoint}/v1/supplies?model=M&region=R&max_price=P`: the offers
/// available now.
#[derive(Debug, Deserialize)]
pub struct SuppliesAnswer {
    pub supplies: Vec<SupplyOffer>,
}

/// One offer of a supply list, as far as tollgate reads it: whether it
/// could serve (the offer's `supply_id`, `region` and `p99_latency_ms` are
/// for the marketplace's choice in the quote, not read here).
#[derive(Debug, Clone, Deserialize)]
pub struct SupplyOffer {
    pub model: String,
    pub price_per_mtoken: f64,
    /// 0 (none left) to 1 (all free).
    pub availability: f64,
}

/// `POST {endpoint}/v1/marketplace/quote`: the body, and every byte of
/// the request that describes the client's request.
#[derive(Debug, Clone, Serialize)]
pub struct QuoteRequest<'a> {
    /// A fresh id per request, made by tollgate (no client id).
    pub request_id: &'a str,
    pub model: &'a str,
    /// Prompt estimate plus the output asked for.
    pub estimated_tokens: u64,
    pub region_hint: Option<&'a str>,
    pub max_price_per_mtoken: f64,
}

/// A quote: a supplier that will serve this request now.
#[derive(Debug, Clone, Deserialize)]
pub struct QuoteAnswer {
    pub quote_id: String,
    pub supply: QuotedSupply,
    /// RFC 3339, UTC (`2026-11-05T10:00:00Z`).
    pub expires_at: String,
}

/// The supplier a quote names.
#[derive(Debug, Clone, Deserialize)]
pub struct QuotedSupply {
    pub supply_id: String,
    /// The supplier's base URL; the client's path is appended to it.
    pub endpoint: String,
    /// Sent to the supplier as `authorization: Bearer <signed_token>`.
    pub signed_token: String,
    pub price_per_mtoken: f64,
    /// The supplier's name for the model, when it is not the one asked.
    #[serde(default)]
    pub model: Option<String>,
}

/// The body of a 429 from the marketplace.
#[derive(Debug, Default, Deserialize)]
pub struct BusyAnswer {
    #[serde(default)]
    pub retry_after_seconds: Option<f64>,
}

/// `POST {endpoint}/v1/marketplace/usage`, after the response ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageReport {
    pub request_id: String,
    pub quote_id: String,
    pub supply_id: String,
    pub model: String,
    /// As the supplier's response reported them; `null` when it reported
    /// none.
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// From admission to the end of the response.
    pub latency_ms: u64,
    pub status: UsageStatus,
}

/// How the supplier's response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageStatus {
    /// A success status.
    Ok,
    /// 408 or 504: the supplier (or Envoy waiting on it) timed out.
    Timeout,
    /// Any other error status, no response, or the stream cut short.
    Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quote_request_is_these_five_fields() {
        let body = serde_json::to_value(QuoteRequest {
            request_id: "r",
            model: "gpt-4o",
            estimated_tokens: 120,
            region_hint: Some("eu"),
            max_price_per_mtoken: 2.5,
        })
        .unwrap();
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "estimated_tokens",
                "max_price_per_mtoken",
                "model",
                "region_hint",
                "request_id"
            ]
        );
    }

    #[test]
    fn usage_statuses_are_lowercase_words() {
        let r = UsageReport {
            request_id: "r".into(),
            quote_id: "q".into(),
            supply_id: "s".into(),
            model: "m".into(),
            prompt_tokens: None,
            completion_tokens: Some(3),
            latency_ms: 7,
            status: UsageStatus::Timeout,
        };
        let v = serde_json::to_value(r).unwrap();
        assert_eq!(v["status"], "timeout");
        assert!(v["prompt_tokens"].is_null());
    }

    #[test]
    fn answers_may_carry_more_fields() {
        let q: QuoteAnswer = serde_json::from_str(
            r#"{"quote_id":"q","expires_at":"2030-01-01T00:00:00Z","extra":1,
                "supply":{"supply_id":"s","endpoint":"https://h","signed_token":"t","price_per_mtoken":1,"x":2}}"#,
        )
        .unwrap();
        assert_eq!(q.supply.model, None);
    }
}
