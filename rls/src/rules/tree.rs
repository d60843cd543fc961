//! envoyproxy/ratelimit's descriptor tree, built from flat match paths.
//!
//! At each level of a request descriptor the lookup tries, in order, the
//! exact `key=value`, then the `key=prefix*` wildcards in config order, then
//! the bare `key`; it never backtracks. A rule applies only when its node is
//! reached by the descriptor's last entry.

use super::{EntryPattern, Rule};
use std::collections::HashMap;

#[derive(Debug, Default)]
struct Level {
    /// key → value → node: two `&str` lookups, no allocation per request.
    exact: HashMap<String, HashMap<String, usize>>,
    prefixes: Vec<(String, String, usize)>,
    any_value: HashMap<String, usize>,
}

#[derive(Debug, Default)]
struct Node {
    rule: Option<usize>,
    children: Level,
}

/// Finds the rule for a descriptor in time linear in its length.
#[derive(Debug, Default)]
pub struct RuleTree {
    domains: HashMap<String, Level>,
    nodes: Vec<Node>,
}

impl RuleTree {
    /// Builds the tree; `Err((first, second))` names two rules with the same
    /// domain and path.
    pub fn build(rules: &[Rule]) -> Result<RuleTree, (usize, usize)> {
        let mut tree = RuleTree::default();
        for (index, rule) in rules.iter().enumerate() {
            let mut node = None;
            for pattern in &rule.pattern {
                node = Some(tree.child(&rule.domain, node, pattern));
            }
            let Some(node) = node else { continue };
            match tree.nodes[node].rule {
                Some(first) => return Err((first, index)),
                None => tree.nodes[node].rule = Some(index),
            }
        }
        Ok(tree)
    }

    fn child(&mut self, domain: &str, parent: Option<usize>, pattern: &EntryPattern) -> usize {
        let fresh = self.nodes.len();
        let level = match parent {
            None => self.domains.entry(domain.to_string()).or_default(),
            Some(p) => &mut self.nodes[p].children,
        };
        let found = match pattern {
            EntryPattern::Exact { key, value } => *level
                .exact
                .entry(key.clone())
                .or_default()
                .entry(value.clone())
                .or_insert(fresh),
            EntryPattern::AnyValue { key } => *level.any_value.entry(key.clone()).or_insert(fresh),
            EntryPattern::Prefix { key, prefix } => {
                match level
                    .prefixes
                    .iter()
                    .find(|(k, p, _)| k == key && p == prefix)
                {
                    Some((_, _, n)) => *n,
                    None => {
                        level.prefixes.push((key.clone(), prefix.clone(), fresh));
                        fresh
                    }
                }
            }
        };
        if found == fresh {
            self.nodes.push(Node::default());
        }
        found
    }

    /// The index of the rule that governs this descriptor, if any.
    pub fn lookup<'a, I>(&self, domain: &str, entries: I) -> Option<usize>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
        I::IntoIter: ExactSizeIterator,
    {
        let mut level = self.domains.get(domain)?;
        let entries = entries.into_iter();
        let last = entries.len().checked_sub(1)?;
        for (i, (key, value)) in entries.enumerate() {
            let node = Self::step(level, key, value)?;
            let node = &self.nodes[node];
            if i == last {
                return node.rule;
            }
            level = &node.children;
        }
        None
    }

    fn step(level: &Level, key: &str, value: &str) -> Option<usize> {
        if let Some(n) = level.exact.get(key).and_then(|values| values.get(value)) {
            return Some(*n);
        }
        level
            .prefixes
            .iter()
            .find(|(k, p, _)| k == key && value.starts_with(p.as_str()))
            .map(|(_, _, n)| *n)
            .or_else(|| level.any_value.get(key).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Algorithm, Limit, Period, RuleId};

    fn rule(domain: &str, path: &[&str]) -> Rule {
        let pattern: Vec<_> = path
            .iter()
            .map(|p| EntryPattern::parse(p).unwrap())
            .collect();
        Rule {
            id: RuleId::new(domain, &pattern),
            label: path.join("."),
            name: None,
            domain: domain.into(),
            pattern,
            limits: vec![Limit {
                amount: 1,
                period: Period::Second,
                algorithm: Algorithm::FixedWindow,
            }],
            unlimited: false,
            shadow: false,
            detailed_metric: false,
            replaces: vec![],
            on_error: None,
            reserve: None,
            source: String::new(),
        }
    }

    fn tree(rules: &[Rule]) -> RuleTree {
        RuleTree::build(rules).unwrap()
    }

    #[test]
    fn exact_beats_wildcard_beats_bare_key() {
        let rules = [
            rule("d", &["k"]),
            rule("d", &["k=v*"]),
            rule("d", &["k=value"]),
        ];
        let t = tree(&rules);
        assert_eq!(t.lookup("d", [("k", "value")]), Some(2));
        assert_eq!(t.lookup("d", [("k", "vx")]), Some(1));
        assert_eq!(t.lookup("d", [("k", "other")]), Some(0));
        assert_eq!(t.lookup("d", [("x", "value")]), None);
        assert_eq!(t.lookup("other", [("k", "value")]), None);
    }

    #[test]
    fn a_limit_applies_only_at_the_last_entry() {
        let rules = [rule("d", &["a"]), rule("d", &["a", "b=1"])];
        let t = tree(&rules);
        assert_eq!(t.lookup("d", [("a", "x")]), Some(0));
        assert_eq!(t.lookup("d", [("a", "x"), ("b", "1")]), Some(1));
        // Deeper than the tree: no rule, even though a parent has one.
        assert_eq!(t.lookup("d", [("a", "x"), ("b", "1"), ("c", "2")]), None);
        // The path leads through a node without a rule.
        assert_eq!(t.lookup("d", [("a", "x"), ("b", "2")]), None);
        let empty: [(&str, &str); 0] = [];
        assert_eq!(t.lookup("d", empty), None);
    }

    #[test]
    fn no_backtracking_after_an_exact_match() {
        // envoyproxy/ratelimit picks the exact node at level one and does not
        // fall back to the bare key when level two fails there.
        let rules = [rule("d", &["a=1", "b=1"]), rule("d", &["a", "b=2"])];
        let t = tree(&rules);
        assert_eq!(t.lookup("d", [("a", "1"), ("b", "2")]), None);
        assert_eq!(t.lookup("d", [("a", "9"), ("b", "2")]), Some(1));
    }

    #[test]
    fn wildcards_match_in_config_order() {
        let rules = [rule("d", &["p=/v1/*"]), rule("d", &["p=/v1/chat*"])];
        let t = tree(&rules);
        assert_eq!(t.lookup("d", [("p", "/v1/chat/completions")]), Some(0));
        assert_eq!(t.lookup("d", [("p", "/v2")]), None);
    }

    #[test]
    fn duplicate_paths_are_reported() {
        let rules = [rule("d", &["a", "b"]), rule("d", &["a", "b"])];
        assert_eq!(RuleTree::build(&rules).unwrap_err(), (0, 1));
        let rules = [rule("d", &["a", "b"]), rule("e", &["a", "b"])];
        assert!(RuleTree::build(&rules).is_ok());
    }
}
