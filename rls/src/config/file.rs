//! The serde view of one config file. Fields that validation may refuse
//! are `Spanned`, so the error can name their line.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileView {
    pub server: Option<Spanned<ServerView>>,
    pub store: Option<Spanned<StoreView>>,
    #[serde(default)]
    pub rule: Vec<Spanned<RuleView>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerView {
    pub grpc_listen: Option<Spanned<String>>,
    pub admin_listen: Option<Spanned<String>>,
    pub log_format: Option<Spanned<String>>,
    pub shutdown_grace: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreView {
    pub kind: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub on_error: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleView {
    pub domain: Spanned<String>,
    #[serde(rename = "match")]
    pub path: Spanned<Vec<String>>,
    pub limit: Option<Spanned<LimitView>>,
    pub limits: Option<Spanned<Vec<LimitView>>>,
    pub algorithm: Option<Spanned<String>>,
    pub name: Option<Spanned<String>>,
    #[serde(default)]
    pub replaces: Vec<String>,
    #[serde(default)]
    pub unlimited: bool,
    #[serde(default)]
    pub shadow: bool,
    #[serde(default)]
    pub detailed_metric: bool,
    pub on_error: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitView {
    /// Hits allowed per period; `tokens` reads better when Envoy sends
    /// token counts as `hits_addend`.
    #[serde(alias = "tokens", alias = "hits")]
    pub requests: u64,
    pub per: String,
    pub algorithm: Option<String>,
}
