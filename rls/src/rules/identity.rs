//! Who is asking and for what: the facts of one LLM request that quotas
//! and classes match on. Built by the ext_proc service from headers and the
//! body; nothing here knows a quota or a class.

use serde::Serialize;

/// What a request is, for quota matching. Built by the ext_proc service
/// from headers and the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub tenant: Option<String>,
    /// A hash of the API key, never the key itself.
    pub api_key: Option<String>,
    pub class: Option<String>,
    pub model: String,
    pub route: String,
}

/// The identity fields a quota can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKey {
    Tenant,
    ApiKey,
    Class,
    Model,
    Route,
}

impl IdentityKey {
    pub fn parse(s: &str) -> Option<IdentityKey> {
        Some(match s {
            "tenant" => IdentityKey::Tenant,
            "api_key" => IdentityKey::ApiKey,
            "class" => IdentityKey::Class,
            "model" => IdentityKey::Model,
            "route" => IdentityKey::Route,
            _ => return None,
        })
    }

    pub fn of(self, id: &Identity) -> Option<&str> {
        match self {
            IdentityKey::Tenant => id.tenant.as_deref(),
            IdentityKey::ApiKey => id.api_key.as_deref(),
            IdentityKey::Class => id.class.as_deref(),
            IdentityKey::Model => Some(id.model.as_str()),
            IdentityKey::Route => Some(id.route.as_str()),
        }
    }
}

/// A value pattern in a quota's `match`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValuePattern {
    /// This value only.
    Exact(String),
    /// Any value starting with this (written `prefix*`).
    Prefix(String),
    /// Any value, a separate budget per value (written `*`).
    Each,
}

impl ValuePattern {
    pub fn parse(s: &str) -> ValuePattern {
        if s == "*" {
            ValuePattern::Each
        } else if let Some(p) = s.strip_suffix('*') {
            ValuePattern::Prefix(p.to_string())
        } else {
            ValuePattern::Exact(s.to_string())
        }
    }

    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            ValuePattern::Exact(v) => v == value,
            ValuePattern::Prefix(p) => value.starts_with(p.as_str()),
            ValuePattern::Each => true,
        }
    }
}
