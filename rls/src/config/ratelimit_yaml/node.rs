//! YAML text → a tree of [`Node`]s with lines, anchors resolved, and
//! yaml.v2's reading of plain scalars (null, bool, int, float, string).

use super::{Kind, Node};
use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Builds nodes from the parser's events.
#[derive(Default)]
pub(super) struct Builder {
    /// Open collections: the node, a map's pending key, its anchor.
    stack: Vec<(Node, Option<Node>, usize)>,
    anchors: HashMap<usize, Node>,
    pub(super) root: Option<Node>,
    /// The file's last line: a node the parser marks at the end of the
    /// text (after a last newline) is on the line after it; it is given
    /// this one, so every error names a line of the file (found by
    /// fuzzing).
    pub(super) last_line: usize,
}

impl Builder {
    /// A builder for a file of `last_line` lines.
    pub(super) fn new(last_line: usize) -> Builder {
        Builder {
            last_line,
            ..Builder::default()
        }
    }

    fn push(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        self.attach(node);
    }

    fn attach(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some((parent, key, _)) => match &mut parent.kind {
                Kind::Seq(items) => items.push(node),
                Kind::Map(entries) => match key.take() {
                    None => *key = Some(node),
                    Some(k) => entries.push((k, node)),
                },
                Kind::Scalar(..) => {}
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line().clamp(1, self.last_line.max(1));
        match ev {
            Event::Scalar(text, style, anchor, _) => {
                let quoted = style != TScalarStyle::Plain;
                self.push(
                    Node {
                        line,
                        kind: Kind::Scalar(text, quoted),
                    },
                    anchor,
                );
            }
            Event::SequenceStart(anchor, _) => self.stack.push((
                Node {
                    line,
                    kind: Kind::Seq(vec![]),
                },
                None,
                anchor,
            )),
            Event::MappingStart(anchor, _) => self.stack.push((
                Node {
                    line,
                    kind: Kind::Map(vec![]),
                },
                None,
                anchor,
            )),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _, anchor)) = self.stack.pop() {
                    self.push(node, anchor);
                }
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().unwrap_or(Node {
                    line,
                    kind: Kind::Scalar(String::new(), false),
                });
                self.attach(node);
            }
            _ => {}
        }
    }
}

/// What a plain scalar resolves to, as the peer's YAML library (yaml.v2,
/// YAML 1.1) reads it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Resolved {
    Null,
    Bool(bool),
    Int(i128),
    Float,
    Str,
}

pub(super) fn resolve(text: &str, quoted: bool) -> Resolved {
    if quoted {
        return Resolved::Str;
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => {
            return Resolved::Bool(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => {
            return Resolved::Bool(false)
        }
        _ => {}
    }
    let plain = text.replace('_', "");
    let (neg, digits) = match plain.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, plain.strip_prefix('+').unwrap_or(&plain)),
    };
    let int = if let Some(h) = digits.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()
    } else if let Some(b) = digits.strip_prefix("0b") {
        i128::from_str_radix(b, 2).ok()
    } else if digits.len() > 1
        && digits.starts_with('0')
        && digits.bytes().all(|c| c.is_ascii_digit())
    {
        i128::from_str_radix(&digits[1..], 8).ok()
    } else if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    };
    if let Some(i) = int {
        return Resolved::Int(if neg { -i } else { i });
    }
    let lower = text.to_ascii_lowercase();
    if matches!(lower.as_str(), ".inf" | "-.inf" | "+.inf" | ".nan")
        || (text.parse::<f64>().is_ok() && text.bytes().any(|c| c.is_ascii_digit()))
    {
        return Resolved::Float;
    }
    Resolved::Str
}
