//! Counter keys: `tg:{<rule id>}:<period><algorithm>:<values>`.
//!
//! The rule id is a hash tag, so one rule's counters share a Redis Cluster
//! slot. Descriptor values are escaped so that `a:b` + `c` and `a` + `b:c`
//! never share a key.

use crate::rules::{Algorithm, Limit, Rule};

/// The key of `rule`'s counter for `limit` and these descriptor entries,
/// leaving out the entry named `skip` (a reserving rule's request id,
/// which names the reservation, not the counter).
pub(crate) fn counter_base(
    rule: &Rule,
    limit: &Limit,
    entries: &[(String, String)],
    skip: Option<&str>,
) -> String {
    let mut key = String::with_capacity(32 + entries.len() * 16);
    key.push_str("tg:{");
    key.push_str(rule.id.as_str());
    key.push_str("}:");
    key.push_str(limit.period.as_str());
    key.push(match limit.algorithm {
        Algorithm::FixedWindow => 'w',
        Algorithm::TokenBucket => 'b',
    });
    for (_, value) in entries.iter().filter(|(k, _)| Some(k.as_str()) != skip) {
        key.push(':');
        escape_into(&mut key, value);
    }
    key
}

/// Appends `value` with `%` and `:` escaped, so separators in values never
/// make two counters share a key.
pub(crate) fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_in_values_do_not_collide() {
        let mut a = String::new();
        escape_into(&mut a, "a:b");
        a.push(':');
        escape_into(&mut a, "c");
        let mut b = String::new();
        escape_into(&mut b, "a");
        b.push(':');
        escape_into(&mut b, "b:c");
        assert_ne!(a, b);
    }
}
