//! The serde view of `[marketplace]` (validated by
//! `validate_marketplace`). Every field is optional here: which ones are
//! required depends on `enabled`, and validation says so with the line.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct MarketplaceView {
    pub enabled: Option<bool>,
    pub offline_mode: Option<bool>,
    pub endpoint: Option<Spanned<String>>,
    /// Never accepted: read only to refuse it with a clear error (an
    /// unknown field would say less).
    pub api_key: Option<Spanned<toml::Value>>,
    pub api_key_env: Option<Spanned<String>>,
    pub api_key_file: Option<Spanned<String>>,
    pub models: Option<Spanned<Vec<String>>>,
    pub classes: Option<Spanned<Vec<String>>>,
    pub max_price_per_mtoken: Option<Spanned<f64>>,
    pub allowed_hosts: Option<Spanned<Vec<String>>>,
    pub region: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub cache_ttl: Option<Spanned<String>>,
    pub breaker_failures: Option<Spanned<u32>>,
    pub breaker_open: Option<Spanned<String>>,
    pub usage_queue: Option<Spanned<u64>>,
    pub usage_attempts: Option<Spanned<u32>>,
}
