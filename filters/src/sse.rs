//! Usage from a Server-Sent Events stream, fed as it arrives.
//!
//! Chunks may split anywhere: inside a line, a UTF-8 sequence, or a CRLF.
//! Bytes are collected per line (a line over [`MAX_LINE`] is dropped and
//! counted as malformed, so memory stays bounded); a blank line dispatches
//! the event. An incomplete event is not an error, only not yet an event.

use crate::usage::{from_usage_object, Usage};
use crate::Endpoint;
use serde_json::Value;

/// Longest line kept; providers' usage events are far smaller.
pub const MAX_LINE: usize = 1 << 20;

/// Reads usage and generated-text volume from an SSE stream.
#[derive(Debug, Clone)]
pub struct SseUsage {
    endpoint: Endpoint,
    line: Vec<u8>,
    overlong: bool,
    after_cr: bool,
    data: Vec<u8>,
    has_data: bool,
    usage: Option<Usage>,
    output_bytes: u64,
    done: bool,
    malformed: u64,
}

impl SseUsage {
    pub fn new(endpoint: Endpoint) -> SseUsage {
        SseUsage {
            endpoint,
            line: Vec::new(),
            overlong: false,
            after_cr: false,
            data: Vec::new(),
            has_data: false,
            usage: None,
            output_bytes: 0,
            done: false,
            malformed: 0,
        }
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    self.end_line();
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() < MAX_LINE {
                        self.line.push(b);
                    } else {
                        self.overlong = true;
                    }
                }
            }
        }
    }

    /// The stream ended: an event without its closing blank line counts.
    pub fn finish(&mut self) {
        if !self.line.is_empty() || self.overlong {
            self.end_line();
        }
        self.dispatch();
    }

    /// The usage reported so far (the last report wins).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Bytes of generated text seen so far, to charge a stream that broke
    /// before it reported usage.
    pub fn output_bytes(&self) -> u64 {
        self.output_bytes
    }

    /// The stream said it was complete (`[DONE]`, `message_stop`,
    /// `response.completed`).
    pub fn saw_done(&self) -> bool {
        self.done
    }

    pub fn malformed_events(&self) -> u64 {
        self.malformed
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.overlong) {
            self.malformed += 1;
            return;
        }
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line.first() == Some(&b':') {
            return; // a comment
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (&line[..], &[][..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            if self.data.len() + value.len() <= MAX_LINE {
                self.data.extend_from_slice(value);
            } else {
                self.overlong = true;
            }
            self.has_data = true;
        }
        // `event:` names are not needed: every provider repeats the event
        // type inside its JSON (`type`), or has only one kind of event.
    }

    fn dispatch(&mut self) {
        if !std::mem::take(&mut self.has_data) {
            return;
        }
        let data = std::mem::take(&mut self.data);
        if std::mem::take(&mut self.overlong) {
            self.malformed += 1;
            return;
        }
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        match serde_json::from_slice::<Value>(&data) {
            Ok(v) => self.event(&v),
            Err(_) => self.malformed += 1,
        }
    }

    fn event(&mut self, v: &Value) {
        let text_len = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .map_or(0, |s| s.len() as u64)
        };
        match self.endpoint {
            Endpoint::AnthropicMessages => match v.get("type").and_then(Value::as_str) {
                Some("message_start") => {
                    if let Some(u) = v.pointer("/message/usage") {
                        self.usage = from_usage_object(self.endpoint, u);
                    }
                }
                Some("message_delta") => {
                    let out = v.pointer("/usage/output_tokens").and_then(Value::as_u64);
                    if let (Some(u), Some(out)) = (self.usage.as_mut(), out) {
                        u.completion_tokens = out;
                    } else if let Some(u) = v.get("usage") {
                        self.usage = from_usage_object(self.endpoint, u);
                    }
                }
                Some("content_block_delta") => {
                    self.output_bytes += text_len("/delta/text") + text_len("/delta/partial_json");
                }
                Some("message_stop") => self.done = true,
                _ => {}
            },
            Endpoint::Responses => match v.get("type").and_then(Value::as_str) {
                Some("response.output_text.delta") => self.output_bytes += text_len("/delta"),
                Some("response.completed") | Some("response.incomplete") => {
                    if let Some(u) = v.pointer("/response/usage") {
                        self.usage = from_usage_object(self.endpoint, u);
                    }
                    self.done = true;
                }
                _ => {}
            },
            _ => {
                if let Some(choices) = v.get("choices").and_then(Value::as_array) {
                    for c in choices {
                        let len = |p: &str| {
                            c.pointer(p)
                                .and_then(Value::as_str)
                                .map_or(0, |s| s.len() as u64)
                        };
                        self.output_bytes += len("/delta/content") + len("/text");
                    }
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    self.usage = from_usage_object(self.endpoint, u);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAI: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\r\n\r\n\
: keep-alive\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":3}}}\n\n\
data: [DONE]\n\n";

    const ANTHROPIC: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1,\"cache_read_input_tokens\":20}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"héllo\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn whole(endpoint: Endpoint, s: &str) -> SseUsage {
        let mut p = SseUsage::new(endpoint);
        p.feed(s.as_bytes());
        p.finish();
        p
    }

    #[test]
    fn openai_final_usage_chunk() {
        let p = whole(Endpoint::ChatCompletions, OPENAI);
        assert_eq!(
            p.usage(),
            Some(Usage {
                prompt_tokens: 11,
                completion_tokens: 2,
                cached_prompt_tokens: 3
            })
        );
        assert_eq!(p.output_bytes(), 5);
        assert!(p.saw_done());
        assert_eq!(p.malformed_events(), 0);
    }

    #[test]
    fn anthropic_start_and_delta() {
        let p = whole(Endpoint::AnthropicMessages, ANTHROPIC);
        assert_eq!(
            p.usage(),
            Some(Usage {
                prompt_tokens: 25,
                completion_tokens: 42,
                cached_prompt_tokens: 20
            })
        );
        assert_eq!(p.output_bytes(), "héllo".len() as u64);
        assert!(p.saw_done());
    }

    #[test]
    fn responses_completed() {
        let s = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"abc\"}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":4,\"output_tokens\":3}}}\n\n";
        let p = whole(Endpoint::Responses, s);
        assert_eq!(p.usage().unwrap().completion_tokens, 3);
        assert_eq!(p.output_bytes(), 3);
    }

    #[test]
    fn broken_events_are_counted_not_fatal() {
        let p = whole(
            Endpoint::ChatCompletions,
            "data: {not json\n\ndata: {\"usage\":{\"prompt_tokens\":1}}\n\n",
        );
        assert_eq!(p.malformed_events(), 1);
        assert_eq!(p.usage().unwrap().prompt_tokens, 1);
        let mut p = SseUsage::new(Endpoint::ChatCompletions);
        p.feed(&vec![b'x'; MAX_LINE + 10]);
        p.feed(b"\n\ndata: {\"usage\":{\"prompt_tokens\":2}}\n\n");
        assert_eq!(p.malformed_events(), 1);
        assert_eq!(p.usage().unwrap().prompt_tokens, 2);
    }

    #[test]
    fn one_byte_chunks_and_cr_line_endings() {
        for s in [OPENAI.to_string(), OPENAI.replace("\n", "\r")] {
            let mut p = SseUsage::new(Endpoint::ChatCompletions);
            for b in s.as_bytes() {
                p.feed(std::slice::from_ref(b));
            }
            p.finish();
            assert_eq!(p.usage().unwrap().prompt_tokens, 11, "{s:?}");
            assert_eq!(p.output_bytes(), 5);
        }
    }

    #[cfg(test)]
    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..20)) {
                for e in [Endpoint::ChatCompletions, Endpoint::AnthropicMessages, Endpoint::Responses] {
                    let mut p = SseUsage::new(e);
                    for c in &chunks { p.feed(c); }
                    p.finish();
                    let _ = (p.usage(), p.output_bytes(), p.malformed_events());
                }
            }

            /// Any split of a valid stream gives what the whole stream gives.
            #[test]
            fn chunking_does_not_change_the_answer(cuts in prop::collection::vec(0usize..2000, 0..30), anthropic in any::<bool>()) {
                let (e, s) = if anthropic { (Endpoint::AnthropicMessages, ANTHROPIC) } else { (Endpoint::ChatCompletions, OPENAI) };
                let bytes = s.as_bytes();
                let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
                cuts.sort_unstable();
                let mut p = SseUsage::new(e);
                let mut at = 0;
                for c in cuts { p.feed(&bytes[at..c.max(at)]); at = c.max(at); }
                p.feed(&bytes[at..]);
                p.finish();
                let w = whole(e, s);
                prop_assert_eq!(p.usage(), w.usage());
                prop_assert_eq!(p.output_bytes(), w.output_bytes());
                prop_assert_eq!(p.saw_done(), w.saw_done());
            }
        }
    }
}
