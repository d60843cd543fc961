//! The IETF rate limit fields (draft-ietf-httpapi-ratelimit-headers-10):
//! `RateLimit-Policy` says what each policy allows (`q` units per `w`
//! seconds, in unit `qu`), `RateLimit` what is left of it (`r`) and when it
//! resets (`t` seconds). Both are structured-field lists (RFC 9651) with
//! one item per policy, named by a string.
//!
//! Clients written against the standard read these instead of each
//! vendor's `x-ratelimit-*`; operators switch them on (`ietf_headers`)
//! beside the others, which stay.

use std::fmt::Write;
use std::time::Duration;

/// One policy's limit and its state after a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    /// The policy's name (a limit kind, a rule name).
    pub name: String,
    /// Units per window.
    pub quota: u64,
    /// The unit (`qu`); `None` for the draft's default, `requests`.
    pub unit: Option<String>,
    pub window: Duration,
    pub remaining: u64,
    pub reset_after: Duration,
}

/// The `RateLimit-Policy` and `RateLimit` values for `states`, or `None`
/// when there is no policy to report.
pub fn fields(states: &[PolicyState]) -> Option<(String, String)> {
    if states.is_empty() {
        return None;
    }
    let (mut policy, mut state) = (String::new(), String::new());
    for (i, s) in states.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let name = sf_string(&s.name);
        // Writing to a String cannot fail.
        let _ = write!(policy, "{sep}{name};q={}", s.quota);
        if let Some(unit) = &s.unit {
            let _ = write!(policy, ";qu={}", sf_string(unit));
        }
        let window = s.window.as_millis().div_ceil(1000);
        if window > 0 {
            let _ = write!(policy, ";w={window}");
        }
        let reset = s.reset_after.as_millis().div_ceil(1000);
        let _ = write!(state, "{sep}{name};r={};t={reset}", s.remaining);
    }
    Some((policy, state))
}

/// A structured-field string: printable ASCII, `"` and `\` escaped; any
/// other character (a config name in another script) becomes `?`.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, unit: Option<&str>) -> PolicyState {
        PolicyState {
            name: name.into(),
            quota: 1000,
            unit: unit.map(str::to_string),
            window: Duration::from_secs(60),
            remaining: 250,
            reset_after: Duration::from_millis(29_001),
        }
    }

    #[test]
    fn one_item_per_policy_in_the_drafts_syntax() {
        let (policy, state) = fields(&[state("tokens", Some("tokens")), state("requests", None)])
            .expect("two policies");
        assert_eq!(
            policy,
            r#""tokens";q=1000;qu="tokens";w=60, "requests";q=1000;w=60"#
        );
        // The reset rounds up: a client waiting 29 s would be early.
        assert_eq!(state, r#""tokens";r=250;t=30, "requests";r=250;t=30"#);
    }

    #[test]
    fn names_cannot_break_the_list() {
        let (policy, _) = fields(&[state("a\"b\\c,d;é", None)]).expect("one");
        assert_eq!(policy, r#""a\"b\\c,d;?";q=1000;w=60"#);
    }

    #[test]
    fn a_window_of_no_fixed_length_is_left_out() {
        // (A calendar month's window varies: the caller gives none.)
        let month = PolicyState {
            window: Duration::ZERO,
            ..state("monthly", None)
        };
        let (policy, state) = fields(&[month]).expect("one");
        assert_eq!(policy, r#""monthly";q=1000"#);
        assert_eq!(state, r#""monthly";r=250;t=30"#);
    }

    #[test]
    fn nothing_to_report_is_no_field() {
        assert_eq!(fields(&[]), None);
    }
}
