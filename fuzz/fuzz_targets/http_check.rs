//! The HTTP check API's parsing (`GET /check`): a query string and request
//! headers to a `RateLimitRequest`
//! (`service::http_check::from_query_and_headers`, the entry the handler
//! uses), then the shared `check_from_proto`.
//!
//! Byte 0 picks one of two modes.
//!
//! * Raw (even): the rest is a query line, then `name: value` header
//!   lines. Must hold: a denial status is a 4xx; `x-tollgate-entry[-n]`
//!   lines become one descriptor per `n`, in ascending `n`, one entry per
//!   line, each value exactly the text after the line's first `=`; a given
//!   cost is on every descriptor; an accepted check keeps the bounds
//!   (`MAX_DESCRIPTORS`, `MAX_ENTRIES`, `MAX_ENTRY_BYTES`).
//! * Round trip (odd): the rest is descriptors of arbitrary keys and
//!   values (split at 0x1e, entries at 0x1f, key from value at 0x1d),
//!   escaped as docs/nginx.md says (byte 1 picks: the listed characters
//!   only, or everything but letters, digits and `-_.~`) and sent as
//!   `descriptor=` parameters, one `x-tollgate-descriptor` (`;` between
//!   descriptors), repeated `x-tollgate-descriptor` lines, or
//!   `x-tollgate-entry[-n]` lines (values verbatim). Must hold: the parsed
//!   descriptors are exactly the ones sent, so no value can add, split or
//!   change an entry or a descriptor.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use tollgate::service::http_check::from_query_and_headers;
use tollgate::service::ratelimit::{
    check_from_proto, MAX_DESCRIPTORS, MAX_ENTRIES, MAX_ENTRY_BYTES,
};

type Descriptors = Vec<Vec<(String, String)>>;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        raw(rest);
    } else if let Some((&how, rest)) = rest.split_first() {
        round_trip(how, rest);
    }
});

fn raw(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let query = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[colon + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[colon + 1..]);
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let Ok((request, deny_status)) = from_query_and_headers(&query, &headers) else {
        return;
    };
    assert!(deny_status.is_client_error(), "{deny_status}");

    // The entry headers, read here the plain way: canonical names only.
    let mut by_index: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut canonical = true;
    for name in headers.keys() {
        let Some(rest) = name.as_str().strip_prefix("x-tollgate-entry") else {
            continue;
        };
        let index = match rest {
            "" => 1,
            r => match r.strip_prefix('-').and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if format!("-{n}") == r => n,
                _ => {
                    canonical = false;
                    continue;
                }
            },
        };
        for v in headers.get_all(name) {
            let v = std::str::from_utf8(v.as_bytes()).expect("accepted, so UTF-8");
            let (_, value) = v.split_once('=').expect("accepted, so key=value");
            by_index.entry(index).or_default().push(value.to_string());
        }
    }
    if canonical {
        assert!(request.descriptors.len() >= by_index.len());
        for (d, values) in request.descriptors.iter().zip(by_index.values()) {
            let got: Vec<&str> = d.entries.iter().map(|e| e.value.as_str()).collect();
            assert_eq!(&got, values, "one entry per line, value verbatim");
        }
    }
    let hits_given = headers.contains_key("x-tollgate-hits")
        || query.split('&').any(|p| {
            let k = p.split_once('=').map_or(p, |(k, _)| k);
            k == "hits" || k == "hits_addend"
        });
    if hits_given {
        assert!(request.descriptors.iter().all(|d| d.hits_addend.is_some()));
    }

    let Ok(check) = check_from_proto(request) else {
        return;
    };
    assert!(!check.descriptors.is_empty() && check.descriptors.len() <= MAX_DESCRIPTORS);
    for d in &check.descriptors {
        assert!(!d.entries.is_empty() && d.entries.len() <= MAX_ENTRIES);
        for (k, v) in &d.entries {
            assert!(!k.is_empty() && k.len() + v.len() <= MAX_ENTRY_BYTES);
        }
    }
    assert!(check.hits >= 1);
}

fn round_trip(how: u8, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let sent: Descriptors = text
        .split('\u{1e}')
        .take(MAX_DESCRIPTORS)
        .map(|d| {
            d.split('\u{1f}')
                .map(|e| {
                    let (k, v) = e.split_once('\u{1d}').unwrap_or((e, ""));
                    (k.to_string(), v.to_string())
                })
                .collect()
        })
        .collect();
    let full = how & 4 != 0;
    let mut query = String::new();
    let mut headers = HeaderMap::new();
    let header = |v: &str| HeaderValue::from_str(v).expect("escaped text is a header value");
    let entries = |d: &[(String, String)], header: bool| {
        d.iter()
            .map(|(k, v)| format!("{}={}", escape(k, full, header), escape(v, full, header)))
            .collect::<Vec<_>>()
            .join(",")
    };
    match how % 4 {
        0 => {
            query.push_str("domain=d");
            for d in &sent {
                query.push_str("&descriptor=");
                query.push_str(&entries(d, false));
            }
        }
        1 => {
            let all: Vec<String> = sent.iter().map(|d| entries(d, true)).collect();
            headers.append("x-tollgate-descriptor", header(&all.join(";")));
        }
        2 => {
            for d in &sent {
                headers.append("x-tollgate-descriptor", header(&entries(d, true)));
            }
        }
        _ => {
            for (i, d) in sent.iter().enumerate() {
                let name = match i {
                    0 => "x-tollgate-entry".to_string(),
                    i => format!("x-tollgate-entry-{}", i + 1),
                };
                let name = HeaderName::from_bytes(name.as_bytes()).expect("a header name");
                for (k, v) in d {
                    // Verbatim: only what a header cannot carry is left out.
                    let Ok(line) = HeaderValue::from_str(&format!("{}={v}", escape(k, full, true)))
                    else {
                        return;
                    };
                    headers.append(name.clone(), line);
                }
            }
        }
    }
    let (request, _) = from_query_and_headers(&query, &headers)
        .unwrap_or_else(|e| panic!("refused what was escaped: {e}\n{query:?}\n{headers:?}"));
    let got: Descriptors = request
        .descriptors
        .into_iter()
        .map(|d| d.entries.into_iter().map(|e| (e.key, e.value)).collect())
        .collect();
    assert_eq!(got, sent, "\n{query:?}\n{headers:?}");
}

/// The escaping docs/nginx.md asks of a client: `%` `,` `=` `;` `+` (and
/// `&` in a query) as `%XX`, and whitespace at either end (it is trimmed);
/// in a header, also what a header cannot carry (control characters).
/// `full`: every byte but letters, digits and `-_.~`, as
/// `encodeURIComponent` does.
fn escape(s: &str, full: bool, header: bool) -> String {
    let lead = s.len() - s.trim_start().len();
    let trail = s.trim_end().len();
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        let edge_space = c.is_whitespace() && (i < lead || i >= trail);
        let must = if full {
            !(c.is_ascii_alphanumeric() || "-_.~".contains(c))
        } else {
            "%,=;+&".contains(c) || edge_space || (header && c.is_control())
        };
        if must {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}
