//! envoyproxy/ratelimit's descriptor tree, built from flat match paths.
//!
//! At each level of a request descriptor the lookup tries, in order, the
//! exact `key=value`, then the wildcards (`key=prefix*`, `key=a*b*c`) in
//! config order, then the bare `key`; it never backtracks. A rule applies
//! only when its node is reached by the descriptor's last entry.

use super::rule::glob_matches;
use super::{EntryPattern, Rule};
use std::collections::HashMap;

#[derive(Debug, Default)]
struct Level {
    /// key → value → node: two `&str` lookups, no allocation per request.
    exact: HashMap<String, HashMap<String, usize>>,
    /// key → the `key=prefix*` patterns of this level.
    prefixes: HashMap<String, Prefixes>,
    /// Wildcard patterns added so far: a pattern's place in config order.
    prefix_count: usize,
    /// key → the `*`-anywhere patterns of this level: (order, parts, node).
    globs: HashMap<String, Vec<Glob>>,
    any_value: HashMap<String, usize>,
}

/// A `*`-anywhere pattern: its place in config order, its parts, its node.
#[derive(Debug)]
struct Glob {
    order: usize,
    parts: Vec<String>,
    node: usize,
}

/// The prefix patterns of one key, grouped by prefix length: a value is
/// checked with one map lookup per distinct length instead of a scan of
/// every pattern, and the earliest pattern in config order still wins.
#[derive(Debug, Default)]
struct Prefixes {
    /// (length, prefix → pattern), by ascending length.
    by_len: Vec<(usize, HashMap<String, Pattern>)>,
}

/// A prefix pattern's place in config order, and its node.
type Pattern = (usize, usize);

impl Prefixes {
    fn find(&self, prefix: &str) -> Option<usize> {
        self.by_len
            .iter()
            .find(|(len, _)| *len == prefix.len())
            .and_then(|(_, m)| m.get(prefix))
            .map(|&(_, node)| node)
    }

    fn insert(&mut self, prefix: &str, order: usize, node: usize) {
        let at = match self.by_len.binary_search_by_key(&prefix.len(), |(l, _)| *l) {
            Ok(i) => i,
            Err(i) => {
                self.by_len.insert(i, (prefix.len(), HashMap::new()));
                i
            }
        };
        self.by_len[at].1.insert(prefix.to_string(), (order, node));
    }

    /// The earliest pattern (in config order) that `value` starts with:
    /// (order, node).
    fn matching(&self, value: &str) -> Option<Pattern> {
        self.by_len
            .iter()
            .take_while(|(len, _)| *len <= value.len())
            .filter_map(|(len, m)| m.get(value.get(..*len)?))
            .min_by_key(|(order, _)| *order)
            .copied()
    }
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
                let order = level.prefix_count;
                let patterns = level.prefixes.entry(key.clone()).or_default();
                match patterns.find(prefix) {
                    Some(n) => n,
                    None => {
                        patterns.insert(prefix, order, fresh);
                        level.prefix_count += 1;
                        fresh
                    }
                }
            }
            EntryPattern::Glob { key, parts, .. } => {
                let order = level.prefix_count;
                let globs = level.globs.entry(key.clone()).or_default();
                match globs.iter().find(|g| g.parts == *parts) {
                    Some(g) => g.node,
                    None => {
                        globs.push(Glob {
                            order,
                            parts: parts.clone(),
                            node: fresh,
                        });
                        level.prefix_count += 1;
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
        let prefix = level.prefixes.get(key).and_then(|p| p.matching(value));
        let glob = level.globs.get(key).and_then(|globs| {
            globs
                .iter()
                .find(|g| glob_matches(&g.parts, value))
                .map(|g| (g.order, g.node))
        });
        let wildcard = match (prefix, glob) {
            (Some(p), Some(g)) => Some(if p.0 < g.0 { p } else { g }),
            (p, g) => p.or(g),
        };
        wildcard
            .map(|(_, node)| node)
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
                zone: crate::rules::Zone::Utc,
            }],
            unlimited: false,
            shadow: false,
            detailed_metric: false,
            replaces: vec![],
            on_error: None,
            reserve: None,
            lease: false,
            source: String::new(),
            quota_mode: false,
            metadata: None,
            share: vec![],
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
    fn the_earliest_wildcard_wins_whatever_its_length() {
        let rules = [
            rule("d", &["p=/v1/chat/*"]),
            rule("d", &["p=/v1/*"]),
            rule("d", &["p=/v1/chat/x*"]),
            rule("d", &["q=/v1/*"]),
            rule("d", &["p=*"]),
        ];
        let t = tree(&rules);
        assert_eq!(t.lookup("d", [("p", "/v1/chat/xyz")]), Some(0));
        assert_eq!(t.lookup("d", [("p", "/v1/models")]), Some(1));
        assert_eq!(t.lookup("d", [("q", "/v1/models")]), Some(3));
        assert_eq!(
            t.lookup("d", [("p", "/v2")]),
            Some(4),
            "an empty prefix matches all"
        );
        assert_eq!(t.lookup("d", [("q", "/v2")]), None);
        // A prefix that would end inside a multi-byte character never matches.
        assert_eq!(t.lookup("d", [("q", "/v1")]), None);
        assert_eq!(t.lookup("d", [("q", "é")]), None);
    }

    /// envoyproxy/ratelimit config_test.go TestWildcardConfig: `*` in the
    /// middle or several times, in config order with trailing ones.
    #[test]
    fn globs_take_their_place_in_config_order() {
        let rules = [
            rule("d", &["p=foo*bar*baz"]),
            rule("d", &["p=foo*"]),
            rule("d", &["p=/api*v1"]),
            rule("d", &["p"]),
        ];
        let t = tree(&rules);
        assert_eq!(t.lookup("d", [("p", "foo-bar-baz")]), Some(0));
        assert_eq!(t.lookup("d", [("p", "foo-baz")]), Some(1));
        assert_eq!(t.lookup("d", [("p", "/api/x/v1")]), Some(2));
        assert_eq!(t.lookup("d", [("p", "/api/x/v2")]), Some(3));
        let rules = [rule("d", &["p=foo*"]), rule("d", &["p=foo*bar*baz"])];
        let t = tree(&rules);
        assert_eq!(t.lookup("d", [("p", "foo-bar-baz")]), Some(0), "first wins");
    }

    #[test]
    fn duplicate_paths_are_reported() {
        let rules = [rule("d", &["a", "b"]), rule("d", &["a", "b"])];
        assert_eq!(RuleTree::build(&rules).unwrap_err(), (0, 1));
        let rules = [rule("d", &["a", "b"]), rule("e", &["a", "b"])];
        assert!(RuleTree::build(&rules).is_ok());
    }
}
