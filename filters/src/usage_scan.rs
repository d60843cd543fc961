//! Usage from a JSON response body fed in chunks, without keeping the body.
//!
//! [`JsonUsage`] answers exactly what [`usage_from_json`] answers for the
//! whole body, but holds a few hundred bytes whatever the body's size: it
//! validates the JSON as it passes, byte by byte, as `serde_json` would
//! (the same grammar, the same 127-level nesting limit, the same number
//! range, UTF-8 and surrogate rules, last duplicate key wins), and keeps
//! only a skeleton of the values the usage is read from (`usage` and
//! `response.usage`: their objects and the counts in them). At the end the
//! skeleton goes through the same reading as a parsed body
//! ([`usage_of_value`]). An 8 MB completion costs nothing to hold.
//!
//! [`usage_from_json`]: crate::usage_from_json

use crate::usage::{usage_of_value, Usage, UsageError};
use crate::Endpoint;
use serde_json::{Map, Value};

/// serde_json refuses the 128th nested array or object.
const MAX_DEPTH: usize = 127;

/// Keys longer than this are never a usage key (the longest is
/// `cache_creation_input_tokens`, 27 bytes); their bytes are not kept.
const MAX_KEY: usize = 32;

/// The keys under which a usage is read, by depth: `usage` or `response`
/// at the top, `usage` in `response`, the counts in a usage, and
/// `cached_tokens` in the details.
fn wanted(path: &[String], key: &[u8]) -> bool {
    let k = |s: &str| key == s.as_bytes();
    let usage_field = || {
        [
            "prompt_tokens",
            "completion_tokens",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "prompt_tokens_details",
            "input_tokens_details",
        ]
        .iter()
        .any(|f| k(f))
    };
    let details = |d: &str| d == "prompt_tokens_details" || d == "input_tokens_details";
    match path {
        [] => k("usage") || k("response"),
        [r] if r == "response" => k("usage"),
        [u] if u == "usage" => usage_field(),
        [r, u] if r == "response" && u == "usage" => usage_field(),
        [u, d] if u == "usage" && details(d) => k("cached_tokens"),
        [r, u, d] if r == "response" && u == "usage" && details(d) => k("cached_tokens"),
        _ => false,
    }
}

/// Reads one JSON response body as it passes.
#[derive(Debug, Clone)]
pub struct JsonUsage {
    endpoint: Endpoint,
    lex: Lex,
    /// Open arrays and objects, outermost first.
    stack: Vec<Frame>,
    /// Where the next value goes in the skeleton, if it is wanted.
    target: Option<Vec<String>>,
    /// The top-level value has been read.
    done: bool,
    /// The body is not JSON (or not as serde_json reads it).
    invalid: bool,
    skeleton: Value,
}

#[derive(Debug, Clone)]
struct Frame {
    object: bool,
    expect: Expect,
    /// This object's path in the skeleton when its keys may be wanted.
    path: Option<Vec<String>>,
}

/// What a container expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Just opened: a member (key or value) or the close.
    FirstOrClose,
    /// After a comma: a member.
    Member,
    /// After a key: the colon.
    Colon,
    /// After a colon: the value.
    Value,
    /// After a member: a comma or the close.
    CommaOrClose,
}

/// The token being read.
#[derive(Debug, Clone)]
enum Lex {
    /// Between tokens.
    Between,
    Str(Str),
    Num(Num),
    /// A literal: the bytes still expected.
    Word(&'static [u8]),
}

#[derive(Debug, Clone)]
struct Str {
    /// A key (its bytes are collected when they may be wanted).
    key: Option<Vec<u8>>,
    state: StrState,
    /// UTF-8 continuation bytes still expected, and the range of the next.
    cont: u8,
    lo: u8,
    hi: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrState {
    Plain,
    /// After a backslash.
    Escape,
    /// In `\uXXXX`: digits read, the value so far, the high surrogate it
    /// completes (for the second of a pair).
    Hex {
        digits: u8,
        value: u16,
        high: Option<u16>,
    },
    /// After a high surrogate: `\` expected, then `u`.
    PairBackslash(u16),
    PairU(u16),
}

/// A number, read as serde_json reads it: a `u64` significand, digits
/// past its range counted as powers of ten, and the check that the value
/// is finite.
#[derive(Debug, Clone, Copy)]
struct Num {
    positive: bool,
    state: NumState,
    significand: u64,
    /// Decimal exponent from digits (past the `u64` or after the point).
    exponent: i32,
    /// The integer part passed the `u64`: its further digits only count
    /// as powers of ten (`parse_long_integer`).
    overflowed: bool,
    /// A fraction digit passed the `u64`: the rest of the fraction is
    /// ignored (`parse_decimal_overflow`).
    fraction_overflowed: bool,
    exp_positive: bool,
    exp: i32,
    /// The exponent passed `i32::MAX`.
    exp_overflow: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumState {
    /// After `-`.
    Sign,
    /// After a leading `0`.
    Zero,
    Int,
    /// After `.`.
    Point,
    Fraction,
    /// After `e`.
    E,
    /// After the exponent's sign.
    ESign,
    Exp,
}

/// serde_json's `overflow!(a * 10 + b, max)`.
fn overflows(a: u64, b: u64) -> bool {
    a >= u64::MAX / 10 && (a > u64::MAX / 10 || b > u64::MAX % 10)
}

fn overflows_i32(a: i32, b: i32) -> bool {
    a >= i32::MAX / 10 && (a > i32::MAX / 10 || b > i32::MAX % 10)
}

impl Num {
    fn new(positive: bool, state: NumState, first: u64) -> Num {
        Num {
            positive,
            state,
            significand: first,
            exponent: 0,
            overflowed: false,
            fraction_overflowed: false,
            exp_positive: true,
            exp: 0,
            exp_overflow: false,
        }
    }

    /// Takes `b` if it belongs to the number: `Ok(true)` taken, `Ok(false)`
    /// the number ended before `b`, `Err` the number is malformed.
    fn take(&mut self, b: u8) -> Result<bool, ()> {
        let digit = b.is_ascii_digit();
        let d = u64::from(b.wrapping_sub(b'0'));
        match self.state {
            NumState::Sign => match b {
                b'0' => self.state = NumState::Zero,
                b'1'..=b'9' => {
                    self.significand = d;
                    self.state = NumState::Int;
                }
                _ => return Err(()),
            },
            NumState::Zero => match b {
                b'0'..=b'9' => return Err(()),
                b'.' => self.state = NumState::Point,
                b'e' | b'E' => self.state = NumState::E,
                _ => return Ok(false),
            },
            NumState::Int => match b {
                _ if digit => {
                    if self.overflowed {
                        self.exponent = self.exponent.wrapping_add(1);
                    } else if overflows(self.significand, d) {
                        self.overflowed = true;
                        self.exponent = self.exponent.wrapping_add(1);
                    } else {
                        self.significand = self.significand * 10 + d;
                    }
                }
                b'.' => self.state = NumState::Point,
                b'e' | b'E' => self.state = NumState::E,
                _ => return Ok(false),
            },
            NumState::Point | NumState::Fraction => match b {
                _ if digit => {
                    self.state = NumState::Fraction;
                    // Each digit is checked, even after a long integer part;
                    // from the first that passes the `u64` on, the rest are
                    // ignored.
                    if !self.fraction_overflowed {
                        if overflows(self.significand, d) {
                            self.fraction_overflowed = true;
                        } else {
                            self.significand = self.significand * 10 + d;
                            self.exponent = self.exponent.wrapping_sub(1);
                        }
                    }
                }
                _ if self.state == NumState::Point => return Err(()),
                b'e' | b'E' => self.state = NumState::E,
                _ => return Ok(false),
            },
            NumState::E => match b {
                b'+' => self.state = NumState::ESign,
                b'-' => {
                    self.exp_positive = false;
                    self.state = NumState::ESign;
                }
                _ if digit => {
                    self.exp = i32::from(b - b'0');
                    self.state = NumState::Exp;
                }
                _ => return Err(()),
            },
            NumState::ESign => match b {
                _ if digit => {
                    self.exp = i32::from(b - b'0');
                    self.state = NumState::Exp;
                }
                _ => return Err(()),
            },
            NumState::Exp => match b {
                _ if digit => {
                    let d = i32::from(b - b'0');
                    if !self.exp_overflow {
                        if overflows_i32(self.exp, d) {
                            self.exp_overflow = true;
                        } else {
                            self.exp = self.exp * 10 + d;
                        }
                    }
                }
                _ => return Ok(false),
            },
        }
        Ok(true)
    }

    /// The number ended: whether it is in range, and its value when it is
    /// an unsigned integer (what `Value::as_u64` gives).
    fn end(&self) -> Result<Option<u64>, ()> {
        match self.state {
            NumState::Sign | NumState::Point | NumState::E | NumState::ESign => Err(()),
            NumState::Zero | NumState::Int if !self.overflowed => {
                // An integer: u64, i64 or -0.0, never out of range.
                Ok(self.positive.then_some(self.significand))
            }
            NumState::Zero | NumState::Int | NumState::Fraction => {
                finite(self.significand, self.exponent).map(|_| None)
            }
            NumState::Exp => {
                if self.exp_overflow {
                    // Infinity is an error; zero (or a negative exponent) is 0.
                    return if self.significand != 0 && self.exp_positive {
                        Err(())
                    } else {
                        Ok(None)
                    };
                }
                let exponent = if self.exp_positive {
                    self.exponent.saturating_add(self.exp)
                } else {
                    self.exponent.saturating_sub(self.exp)
                };
                finite(self.significand, exponent).map(|_| None)
            }
        }
    }
}

/// serde_json's `f64_from_parts` (without `float_roundtrip`), only for
/// whether the value is finite: a negative exponent divides and cannot
/// overflow; a positive one multiplies by `1eN`.
fn finite(significand: u64, exponent: i32) -> Result<(), ()> {
    if exponent < 0 || significand == 0 {
        return Ok(());
    }
    if exponent > 308 {
        return Err(());
    }
    // `1eN` as a literal is correctly rounded, as parsing it is.
    let pow: f64 = format!("1e{exponent}").parse().map_err(|_| ())?;
    if (significand as f64 * pow).is_infinite() {
        Err(())
    } else {
        Ok(())
    }
}

impl JsonUsage {
    pub fn new(endpoint: Endpoint) -> JsonUsage {
        JsonUsage {
            endpoint,
            lex: Lex::Between,
            stack: Vec::new(),
            target: Some(Vec::new()),
            done: false,
            invalid: false,
            skeleton: Value::Null,
        }
    }

    /// Feeds the next bytes of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut i = 0;
        while i < chunk.len() && !self.invalid {
            // Plain string bytes, the bulk of a completion, skipped in a
            // tight loop.
            if let Lex::Str(s) = &mut self.lex {
                if s.state == StrState::Plain && s.cont == 0 && s.key.is_none() {
                    while i < chunk.len() {
                        let b = chunk[i];
                        if !(0x20..0x80).contains(&b) || b == b'"' || b == b'\\' {
                            break;
                        }
                        i += 1;
                    }
                    if i == chunk.len() {
                        break;
                    }
                }
            }
            if self.byte(chunk[i]).is_err() {
                self.invalid = true;
            }
            i += 1;
        }
    }

    /// The body ended: the usage it reports, as [`usage_from_json`] would
    /// answer for the whole body.
    ///
    /// [`usage_from_json`]: crate::usage_from_json
    pub fn finish(&mut self) -> Result<Option<Usage>, UsageError> {
        if !self.invalid {
            // A number is the one token the end of the input can end.
            if let Lex::Num(n) = self.lex {
                self.lex = Lex::Between;
                match n.end() {
                    Ok(v) => self.value_ended(number(v)),
                    Err(()) => self.invalid = true,
                }
            }
        }
        if self.invalid || !self.done || !matches!(self.lex, Lex::Between) {
            return Err(UsageError::InvalidJson);
        }
        Ok(usage_of_value(self.endpoint, &self.skeleton))
    }

    fn byte(&mut self, b: u8) -> Result<(), ()> {
        match &mut self.lex {
            Lex::Between => self.between(b),
            Lex::Word(rest) => {
                if rest.first() != Some(&b) {
                    return Err(());
                }
                *rest = &rest[1..];
                if rest.is_empty() {
                    self.lex = Lex::Between;
                    self.value_ended(Value::Null);
                }
                Ok(())
            }
            Lex::Num(n) => match n.take(b)? {
                true => Ok(()),
                false => {
                    let v = n.end()?;
                    self.lex = Lex::Between;
                    self.value_ended(number(v));
                    self.between(b)
                }
            },
            Lex::Str(_) => self.string_byte(b),
        }
    }

    /// A byte between tokens: structure, whitespace, or a token's start.
    fn between(&mut self, b: u8) -> Result<(), ()> {
        if matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
            return Ok(());
        }
        if self.done {
            // Only whitespace may follow the top-level value.
            return Err(());
        }
        let expect = self.stack.last().map(|f| (f.object, f.expect));
        match expect {
            // A value: at the top, after a colon, or in an array.
            None
            | Some((true, Expect::Value))
            | Some((false, Expect::FirstOrClose | Expect::Member)) => {
                if b == b']' && expect == Some((false, Expect::FirstOrClose)) {
                    return self.close(false);
                }
                self.value_start(b)
            }
            Some((true, Expect::FirstOrClose | Expect::Member)) => match b {
                b'"' => {
                    self.lex = Lex::Str(Str::new(true));
                    Ok(())
                }
                b'}' if expect == Some((true, Expect::FirstOrClose)) => self.close(true),
                _ => Err(()),
            },
            Some((true, Expect::Colon)) => match b {
                b':' => {
                    self.set_expect(Expect::Value);
                    Ok(())
                }
                _ => Err(()),
            },
            Some((object, Expect::CommaOrClose)) => match b {
                b',' => {
                    self.set_expect(Expect::Member);
                    Ok(())
                }
                b'}' if object => self.close(true),
                b']' if !object => self.close(false),
                _ => Err(()),
            },
            Some((false, Expect::Colon | Expect::Value)) => Err(()),
        }
    }

    fn set_expect(&mut self, e: Expect) {
        if let Some(f) = self.stack.last_mut() {
            f.expect = e;
        }
    }

    fn value_start(&mut self, b: u8) -> Result<(), ()> {
        match b {
            b'{' | b'[' => {
                if self.stack.len() + 1 > MAX_DEPTH {
                    return Err(());
                }
                let object = b == b'{';
                let target = self.target.take();
                let path = match target {
                    Some(path) if object => {
                        self.write(&path, Value::Object(Map::new()));
                        Some(path)
                    }
                    Some(path) => {
                        self.write(&path, Value::Null);
                        None
                    }
                    None => None,
                };
                self.stack.push(Frame {
                    object,
                    expect: Expect::FirstOrClose,
                    path,
                });
                Ok(())
            }
            b'"' => {
                self.lex = Lex::Str(Str::new(false));
                Ok(())
            }
            b'-' => {
                self.lex = Lex::Num(Num::new(false, NumState::Sign, 0));
                Ok(())
            }
            b'0' => {
                self.lex = Lex::Num(Num::new(true, NumState::Zero, 0));
                Ok(())
            }
            b'1'..=b'9' => {
                self.lex = Lex::Num(Num::new(true, NumState::Int, u64::from(b - b'0')));
                Ok(())
            }
            b't' => {
                self.lex = Lex::Word(b"rue");
                Ok(())
            }
            b'f' => {
                self.lex = Lex::Word(b"alse");
                Ok(())
            }
            b'n' => {
                self.lex = Lex::Word(b"ull");
                Ok(())
            }
            _ => Err(()),
        }
    }

    fn close(&mut self, object: bool) -> Result<(), ()> {
        match self.stack.pop() {
            Some(f) if f.object == object => {
                self.member_ended();
                Ok(())
            }
            _ => Err(()),
        }
    }

    /// A scalar value ended (strings, literals and numbers): written where
    /// it is wanted.
    fn value_ended(&mut self, v: Value) {
        if let Some(path) = self.target.take() {
            self.write(&path, v);
        }
        self.member_ended();
    }

    /// A value (scalar, or a container just closed) ended: its container
    /// expects a comma or its close, or the top-level value is read.
    fn member_ended(&mut self) {
        match self.stack.last_mut() {
            Some(f) => f.expect = Expect::CommaOrClose,
            None => self.done = true,
        }
    }

    /// A key ended: the colon comes next, then its value, which is wanted
    /// when the key is on a usage path.
    fn key_ended(&mut self, key: Vec<u8>) {
        let Some(frame) = self.stack.last_mut() else {
            return;
        };
        frame.expect = Expect::Colon;
        self.target = match &frame.path {
            Some(path) if wanted(path, &key) => {
                let mut p = path.clone();
                p.push(String::from_utf8_lossy(&key).into_owned());
                Some(p)
            }
            _ => None,
        };
    }

    /// Sets the skeleton's value at `path` (every parent is an object
    /// already: its `{` wrote it). A later duplicate key replaces the
    /// earlier value whole, as serde_json's map does.
    fn write(&mut self, path: &[String], v: Value) {
        let mut at = &mut self.skeleton;
        for k in path {
            match at {
                Value::Object(m) => at = m.entry(k.clone()).or_insert(Value::Null),
                _ => return,
            }
        }
        *at = v;
    }

    fn string_byte(&mut self, b: u8) -> Result<(), ()> {
        let Lex::Str(s) = &mut self.lex else {
            return Ok(());
        };
        if s.cont > 0 {
            // Inside a UTF-8 sequence.
            if b < s.lo || b > s.hi {
                return Err(());
            }
            s.cont -= 1;
            s.lo = 0x80;
            s.hi = 0xBF;
            s.push_non_ascii();
            return Ok(());
        }
        match s.state {
            StrState::Plain => match b {
                b'"' => {
                    match std::mem::replace(&mut self.lex, Lex::Between) {
                        Lex::Str(Str { key: Some(k), .. }) => self.key_ended(k),
                        _ => self.value_ended(Value::Null),
                    }
                    Ok(())
                }
                b'\\' => {
                    s.state = StrState::Escape;
                    Ok(())
                }
                0x00..=0x1F => Err(()),
                0x20..=0x7F => {
                    s.push(b);
                    Ok(())
                }
                // UTF-8: the lead byte fixes the length and the range of the
                // next byte (no overlongs, no surrogates, nothing past
                // U+10FFFF).
                0xC2..=0xDF => s.lead(1, 0x80, 0xBF),
                0xE0 => s.lead(2, 0xA0, 0xBF),
                0xE1..=0xEC | 0xEE..=0xEF => s.lead(2, 0x80, 0xBF),
                0xED => s.lead(2, 0x80, 0x9F),
                0xF0 => s.lead(3, 0x90, 0xBF),
                0xF1..=0xF3 => s.lead(3, 0x80, 0xBF),
                0xF4 => s.lead(3, 0x80, 0x8F),
                _ => Err(()),
            },
            StrState::Escape => {
                let c = match b {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'/' => b'/',
                    b'b' => 0x08,
                    b'f' => 0x0C,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        s.state = StrState::Hex {
                            digits: 0,
                            value: 0,
                            high: None,
                        };
                        return Ok(());
                    }
                    _ => return Err(()),
                };
                s.push(c);
                s.state = StrState::Plain;
                Ok(())
            }
            StrState::Hex {
                digits,
                value,
                high,
            } => {
                let h = match b {
                    b'0'..=b'9' => b - b'0',
                    b'a'..=b'f' => b - b'a' + 10,
                    b'A'..=b'F' => b - b'A' + 10,
                    _ => return Err(()),
                };
                let value = (value << 4) | u16::from(h);
                if digits < 3 {
                    s.state = StrState::Hex {
                        digits: digits + 1,
                        value,
                        high,
                    };
                    return Ok(());
                }
                match (high, value) {
                    (None, 0xDC00..=0xDFFF) => Err(()),
                    (None, 0xD800..=0xDBFF) => {
                        s.state = StrState::PairBackslash(value);
                        Ok(())
                    }
                    (None, _) => {
                        s.push_char(u32::from(value));
                        s.state = StrState::Plain;
                        Ok(())
                    }
                    (Some(_), 0xDC00..=0xDFFF) => {
                        s.push_non_ascii();
                        s.state = StrState::Plain;
                        Ok(())
                    }
                    (Some(_), _) => Err(()),
                }
            }
            StrState::PairBackslash(high) => match b {
                b'\\' => {
                    s.state = StrState::PairU(high);
                    Ok(())
                }
                _ => Err(()),
            },
            StrState::PairU(high) => match b {
                b'u' => {
                    s.state = StrState::Hex {
                        digits: 0,
                        value: 0,
                        high: Some(high),
                    };
                    Ok(())
                }
                _ => Err(()),
            },
        }
    }
}

fn number(v: Option<u64>) -> Value {
    // Anything that is not a u64 reads as no count, as `as_u64` gives.
    v.map_or(Value::Null, Value::from)
}

impl Str {
    fn new(key: bool) -> Str {
        Str {
            key: key.then(Vec::new),
            state: StrState::Plain,
            cont: 0,
            lo: 0x80,
            hi: 0xBF,
        }
    }

    fn lead(&mut self, cont: u8, lo: u8, hi: u8) -> Result<(), ()> {
        self.cont = cont;
        self.lo = lo;
        self.hi = hi;
        self.push_non_ascii();
        Ok(())
    }

    /// One byte of a key (kept while the key is short enough to be wanted).
    fn push(&mut self, b: u8) {
        if let Some(k) = &mut self.key {
            if k.len() <= MAX_KEY {
                k.push(b);
            }
        }
    }

    /// Wanted keys are ASCII: any other character rules the key out.
    fn push_non_ascii(&mut self) {
        if let Some(k) = &mut self.key {
            if k.len() <= MAX_KEY {
                k.resize(MAX_KEY + 1, 0);
            }
        }
    }

    fn push_char(&mut self, c: u32) {
        match u8::try_from(c) {
            Ok(b) if b < 0x80 => self.push(b),
            _ => self.push_non_ascii(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage_from_json;

    const ALL: [Endpoint; 5] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Responses,
        Endpoint::Embeddings,
        Endpoint::AnthropicMessages,
    ];

    fn scan(endpoint: Endpoint, body: &[u8], chunk: usize) -> Result<Option<Usage>, UsageError> {
        let mut s = JsonUsage::new(endpoint);
        for c in body.chunks(chunk.max(1)) {
            s.feed(c);
        }
        s.finish()
    }

    /// Same answer as the whole-body parser, in one chunk and byte by byte.
    fn same(body: &[u8]) {
        for e in ALL {
            let want = usage_from_json(e, body);
            for chunk in [body.len().max(1), 1, 7] {
                assert_eq!(
                    scan(e, body, chunk),
                    want,
                    "{e:?}, chunks of {chunk}: {}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn provider_bodies_read_as_the_parser_reads_them() {
        for body in [
            &br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":10,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":4}}}"#[..],
            br#"{"usage":{"input_tokens":5,"output_tokens":6,"input_tokens_details":{"cached_tokens":1}}}"#,
            br#"{"usage":{"input_tokens":3,"output_tokens":9,"cache_read_input_tokens":100,"cache_creation_input_tokens":2}}"#,
            br#"{"type":"response.completed","response":{"usage":{"input_tokens":8,"output_tokens":2}}}"#,
            br#"{"usage":{"input_tokens":1},"response":{"usage":{"input_tokens":8}}}"#,
            br#"{"usage":{"prompt_tokens":7,"total_tokens":7}}"#,
            b"{}",
            b"[]",
            b"  {\"usage\" : { \"prompt_tokens\" : 3 } }\n",
        ] {
            same(body);
        }
    }

    #[test]
    fn duplicates_escapes_and_odd_values_as_the_parser_reads_them() {
        for body in [
            // The last duplicate wins, whole.
            &br#"{"usage":{"prompt_tokens":1,"completion_tokens":9},"usage":{"prompt_tokens":2}}"#
                [..],
            br#"{"usage":{"prompt_tokens":1,"prompt_tokens":"x"}}"#,
            br#"{"usage":{"prompt_tokens":1},"usage":null}"#,
            br#"{"response":{"usage":{"input_tokens":8}},"response":[1]}"#,
            // An escaped key is the same key.
            br#"{"us\u0061ge":{"prompt_\u0074okens":5}}"#,
            br#"{"usage":{"prompt_tokens":5e0}}"#,
            br#"{"usage":{"prompt_tokens":-0}}"#,
            br#"{"usage":{"prompt_tokens":18446744073709551615}}"#,
            br#"{"usage":{"prompt_tokens":18446744073709551616}}"#,
            br#"{"usage":{"prompt_tokens":1.0}}"#,
            br#"{"usage":{"prompt_tokens":[1]},"x":{"usage":{"prompt_tokens":3}}}"#,
            br#"{"x":{"usage":{"prompt_tokens":3}}}"#,
            br#"{"usage":{"prompt_tokens_details":{"cached_tokens":2},"prompt_tokens":4}}"#,
            "{\"k\":\"h\u{e9}llo \u{1F600}\",\"usage\":{\"prompt_tokens\":1}}".as_bytes(),
            br#"{"k":"\ud83d\ude00","usage":{"prompt_tokens":1}}"#,
        ] {
            same(body);
        }
    }

    #[test]
    fn what_the_parser_refuses_is_refused() {
        for body in [
            &b""[..],
            b"   ",
            b"{",
            b"{\"usage\":{\"prompt_tokens\":1}",
            b"{\"usage\":{\"prompt_tokens\":1}}}",
            b"{\"a\":1,}",
            b"[1,]",
            b"[01]",
            b"[1.]",
            b"[1e]",
            b"[1e+]",
            b"[-]",
            b"[.5]",
            b"[1e400]",
            b"[1e309]",
            b"[17976931348623159e292]",
            b"[1e99999999999]",
            b"[0e99999999999]",
            b"[1e-99999999999]",
            b"[tru]",
            b"[truex]",
            b"{\"a\" 1}",
            b"{1:2}",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"\\ud800\\u0041\"",
            b"\"\\ud800x\"",
            b"\"\\x\"",
            b"\"\\u12g4\"",
            b"\"a\x01b\"",
            b"\"\xff\"",
            b"\"\xc3\"",
            b"\"\xed\xa0\x80\"",
            b"\"\xe0\x80\x80\"",
            b"\"\xf4\x90\x80\x80\"",
            b"\xef\xbb\xbf{}",
            b"{} {}",
            b"nul",
        ] {
            same(body);
        }
    }

    #[test]
    fn nesting_is_limited_where_the_parser_limits_it() {
        for depth in [1, 126, 127, 128, 200] {
            let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            same(body.as_bytes());
            let body = format!(
                "{{\"usage\":{{\"prompt_tokens\":1}},\"x\":{}{}}}",
                "[".repeat(depth),
                "]".repeat(depth)
            );
            same(body.as_bytes());
        }
    }

    #[test]
    fn numbers_at_the_edge_of_the_range_read_as_the_parser_reads_them() {
        for n in [
            "1.7976931348623157e308",
            "1.7976931348623158e308",
            "1.7976931348623159e308",
            "17976931348623157e292",
            "179769313486231580000000000000000000000e270",
            "184467440737095516150000e300",
            "18446744073709551615.9e289",
            "18446744073709551616.5",
            "0.00000000000000000000000000000000001e400",
            "123456789012345678901234567890e-5",
            "1E2",
            "1e-2",
            "-1e400",
            "-0.0",
            "0e0",
        ] {
            same(format!("{{\"usage\":{{\"prompt_tokens\":{n}}}}}").as_bytes());
            same(format!("[{n}]").as_bytes());
            same(n.as_bytes());
        }
    }

    #[test]
    fn a_huge_body_is_read_without_keeping_it() {
        let content = "x".repeat(20 << 20);
        let body = format!(
            "{{\"choices\":[{{\"message\":{{\"content\":\"{content}\"}}}}],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":5000000}}}}"
        );
        let mut s = JsonUsage::new(Endpoint::ChatCompletions);
        for c in body.as_bytes().chunks(64 << 10) {
            s.feed(c);
        }
        assert!(s.stack.capacity() < 16, "only the nesting is kept");
        assert_eq!(
            s.finish(),
            Ok(Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 5_000_000,
                cached_prompt_tokens: 0
            }))
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::usage_from_json;
    use proptest::prelude::*;

    /// JSON-ish text: mostly valid, with usage keys and odd numbers.
    fn jsonish() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:e}")),
            "[0-9]{1,25}(\\.[0-9]{0,5})?([eE][+-]?[0-9]{0,4})?",
            "\"([a-z]|\\\\u[0-9a-fA-F]{4}|\\\\[nt\"]|é)*\"",
        ];
        let key = prop_oneof![
            Just("usage"),
            Just("response"),
            Just("prompt_tokens"),
            Just("completion_tokens"),
            Just("input_tokens"),
            Just("output_tokens"),
            Just("cache_read_input_tokens"),
            Just("prompt_tokens_details"),
            Just("cached_tokens"),
            Just("x"),
        ];
        let value = leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((key.clone(), inner), 0..5).prop_map(|v| {
                    let members: Vec<String> =
                        v.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        });
        (value, any::<Option<(usize, u8)>>()).prop_map(|(v, damage)| {
            let mut b = v.into_bytes();
            // Sometimes one byte is changed: near-JSON must be refused alike.
            if let Some((at, byte)) = damage {
                if !b.is_empty() {
                    let at = at % b.len();
                    b[at] = byte;
                }
            }
            b
        })
    }

    proptest! {
        #[test]
        fn any_chunking_answers_as_the_whole_body_parser(
            body in jsonish(),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
            pick in 0usize..5,
        ) {
            let endpoint = [
                Endpoint::ChatCompletions,
                Endpoint::Completions,
                Endpoint::Responses,
                Endpoint::Embeddings,
                Endpoint::AnthropicMessages,
            ][pick];
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
            at.sort_unstable();
            let mut s = JsonUsage::new(endpoint);
            let mut from = 0;
            for cut in at {
                s.feed(&body[from..cut]);
                from = cut;
            }
            s.feed(&body[from..]);
            prop_assert_eq!(s.finish(), usage_from_json(endpoint, &body));
        }
    }
}
