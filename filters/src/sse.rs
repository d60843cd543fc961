//! Usage from a Server-Sent Events stream, fed as it arrives.
//!
//! Chunks may split anywhere: inside a line, a UTF-8 sequence, or a CRLF.
//! Bytes are collected per line; a blank line dispatches the event. Memory
//! stays bounded: a line over [`MAX_LINE`] is dropped and counted as
//! malformed, and an event whose data passes [`MAX_LINE`] (in one line or
//! in all of them) is lost, counted once; the events after it are read as
//! usual. An incomplete event is not an error, only not yet an event.

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
    /// The line being read passed `MAX_LINE`: the rest of it is skipped.
    overlong: bool,
    after_cr: bool,
    data: Vec<u8>,
    has_data: bool,
    /// The event's data passed `MAX_LINE`: the event is lost, and nothing
    /// more of it is kept until the blank line that ends it.
    data_overlong: bool,
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
            data_overlong: false,
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
        // An over-long line holds its first MAX_LINE bytes, so it is never
        // empty and its field can still be named.
        let overlong = std::mem::take(&mut self.overlong);
        if line.is_empty() {
            self.dispatch();
            return;
        }
        // A comment (`: ...`) has an empty field name: it is not data.
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (&line[..], &[][..]),
        };
        if field == b"data" {
            self.data_line(value, overlong);
        } else if overlong {
            // Any other field is not needed: the line is dropped, counted,
            // and the event goes on.
            self.malformed += 1;
        }
        // `event:` names are not needed: every provider repeats the event
        // type inside its JSON (`type`), or has only one kind of event.
    }

    /// Appends one `data:` line's value to the event's data, joined by a
    /// newline. Past `MAX_LINE` in all (or a line cut short) the event is
    /// lost: nothing more of it is kept, and it is counted once, when it
    /// ends.
    fn data_line(&mut self, value: &[u8], overlong: bool) {
        let joined = self.has_data;
        self.has_data = true;
        if self.data_overlong {
            return;
        }
        if overlong || self.data.len() + usize::from(joined) + value.len() > MAX_LINE {
            self.data_overlong = true;
            self.data = Vec::new();
            return;
        }
        if joined {
            self.data.push(b'\n');
        }
        self.data.extend_from_slice(value);
    }

    fn dispatch(&mut self) {
        if !std::mem::take(&mut self.has_data) {
            return;
        }
        let data = std::mem::take(&mut self.data);
        if std::mem::take(&mut self.data_overlong) {
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

    fn chat(s: &str) -> SseUsage {
        whole(Endpoint::ChatCompletions, s)
    }

    /// `data: {"usage":{"prompt_tokens":N}}` padded with JSON whitespace
    /// (outside any string) to exactly `len` bytes of data, split over two
    /// `data:` lines when `lines` is 2.
    fn padded_event(n: u64, len: usize, lines: usize) -> String {
        let json = format!("{{\"usage\":{{\"prompt_tokens\":{n}}}}}");
        let (head, tail) = json.split_at(json.len() - 1);
        match lines {
            1 => format!("data: {head}{}{tail}\n\n", " ".repeat(len - json.len())),
            _ => {
                // head + pads + "\n" + pads + tail
                let pad = len - json.len() - 1;
                let first = pad / 2;
                format!(
                    "data: {head}{}\ndata: {}{tail}\n\n",
                    " ".repeat(first),
                    " ".repeat(pad - first)
                )
            }
        }
    }

    #[test]
    fn an_event_without_its_closing_blank_line_counts_when_the_stream_ends() {
        for tail in ["", "\n", "\r\n"] {
            let p = chat(&format!(
                "data: {{\"usage\":{{\"prompt_tokens\":4}}}}{tail}"
            ));
            assert_eq!(p.usage().map(|u| u.prompt_tokens), Some(4), "{tail:?}");
        }
        let mut p = SseUsage::new(Endpoint::ChatCompletions);
        p.feed(b"data: {\"usage\":{\"prompt_tokens\":4}}");
        assert_eq!(p.usage(), None, "not an event before the stream ends");
    }

    #[test]
    fn a_stream_cut_before_its_end_says_so() {
        let cut = &OPENAI[..OPENAI.find("data: [DONE]").unwrap()];
        let p = chat(cut);
        assert!(!p.saw_done());
        assert_eq!(p.usage().map(|u| u.prompt_tokens), Some(11));
        let p = whole(
            Endpoint::AnthropicMessages,
            &ANTHROPIC[..ANTHROPIC.find("event: message_stop").unwrap()],
        );
        assert!(!p.saw_done());
        let p = whole(
            Endpoint::Responses,
            "data: {\"type\":\"response.output_text.delta\",\"delta\":\"a\"}\n\n",
        );
        assert!(!p.saw_done());
    }

    #[test]
    fn crlf_is_one_line_ending_so_a_data_field_may_span_crlf_lines() {
        let s = "data: {\"usage\":\r\ndata: {\"prompt_tokens\":6}}\r\n\r\n";
        let p = chat(s);
        assert_eq!(p.usage().map(|u| u.prompt_tokens), Some(6));
        assert_eq!(p.malformed_events(), 0);
        // The same with LF and with CR alone.
        for ending in ["\n", "\r"] {
            let p = chat(&s.replace("\r\n", ending));
            assert_eq!(p.usage().map(|u| u.prompt_tokens), Some(6), "{ending:?}");
        }
        // CR then a blank line (CR CR) ends the event, as LF LF does.
        let p = chat("data: {\"usage\":{\"prompt_tokens\":1}}\r\rdata: {\"usage\":{\"prompt_tokens\":2}}\r\r");
        assert_eq!(p.usage().map(|u| u.prompt_tokens), Some(2));
        assert_eq!(p.malformed_events(), 0);
    }

    #[test]
    fn a_line_of_max_line_bytes_is_kept_and_one_byte_more_is_dropped() {
        let exact = chat(&padded_event(7, MAX_LINE - "data: ".len(), 1));
        assert_eq!(exact.usage().map(|u| u.prompt_tokens), Some(7));
        assert_eq!(exact.malformed_events(), 0);
        let over = chat(&padded_event(7, MAX_LINE - "data: ".len() + 1, 1));
        assert_eq!(over.usage(), None);
        assert_eq!(over.malformed_events(), 1);
    }

    #[test]
    fn a_data_field_over_lines_is_one_event_of_at_most_max_line_bytes() {
        let small = chat(&padded_event(3, 5_000, 2));
        assert_eq!(small.usage().map(|u| u.prompt_tokens), Some(3));
        assert_eq!(small.malformed_events(), 0);
        let exact = chat(&padded_event(3, MAX_LINE, 2));
        assert_eq!(exact.usage().map(|u| u.prompt_tokens), Some(3));
        assert_eq!(exact.malformed_events(), 0);
        let over = chat(&padded_event(3, MAX_LINE + 1, 2));
        assert_eq!(over.usage(), None);
        assert_eq!(over.malformed_events(), 1);
    }

    #[test]
    fn a_data_line_cut_short_is_lost_even_if_its_kept_bytes_parse() {
        // Valid JSON, then spaces past MAX_LINE: what was cut is unknown.
        let json = "{\"usage\":{\"prompt_tokens\":3}}";
        let s = format!("data: {json}{}\n\n", " ".repeat(MAX_LINE));
        let p = chat(&s);
        assert_eq!(p.usage(), None);
        assert_eq!(p.malformed_events(), 1);
    }

    #[test]
    fn an_event_too_large_loses_only_itself() {
        let next = "data: {\"usage\":{\"prompt_tokens\":9}}\n\n";
        for lines in [1, 2] {
            let p = chat(&(padded_event(3, MAX_LINE + 1, lines) + next));
            assert_eq!(p.malformed_events(), 1, "{lines} lines");
            assert_eq!(p.usage().map(|u| u.prompt_tokens), Some(9), "{lines} lines");
        }
        // The stream ends right after the oversized event.
        for lines in [1, 2] {
            let big = padded_event(3, MAX_LINE + 1, lines);
            let p = chat(big.trim_end());
            assert_eq!(p.malformed_events(), 1, "{lines} lines");
            assert_eq!(p.usage(), None, "{lines} lines");
        }
    }

    #[test]
    fn nothing_of_an_oversized_event_is_kept_however_many_lines_follow() {
        let mut p = SseUsage::new(Endpoint::ChatCompletions);
        let big = padded_event(3, MAX_LINE + 1, 2);
        p.feed(big.trim_end().as_bytes());
        p.feed(b"\n");
        for _ in 0..100_000 {
            p.feed(b"data:\n");
        }
        assert!(p.data.is_empty(), "{} bytes kept", p.data.len());
        p.feed(b"\n");
        assert_eq!(p.malformed_events(), 1);
    }

    #[test]
    fn comments_and_other_fields_are_not_data() {
        let p = chat(": {\"usage\":{\"prompt_tokens\":1}}\nevent: x\nid: 3\nretry: 10\ndata: {\"usage\":{\"prompt_tokens\":2}}\n\n");
        assert_eq!(p.usage().map(|u| u.prompt_tokens), Some(2));
        assert_eq!(p.malformed_events(), 0);
        let long = chat(&format!(
            ": {}\ndata: {{\"usage\":{{\"prompt_tokens\":2}}}}\n\n",
            "x".repeat(MAX_LINE)
        ));
        assert_eq!(
            long.usage().map(|u| u.prompt_tokens),
            Some(2),
            "the event goes on"
        );
        assert_eq!(long.malformed_events(), 1, "an over-long line is counted");
        let bare = chat("data:{\"usage\":{\"prompt_tokens\":5}}\n\n");
        assert_eq!(
            bare.usage().map(|u| u.prompt_tokens),
            Some(5),
            "the space after the colon is optional"
        );
    }

    #[test]
    fn a_null_usage_does_not_erase_the_reported_one() {
        let p = chat("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}\n\n");
        assert_eq!(p.usage().map(|u| u.prompt_tokens), Some(3));
        assert_eq!(p.output_bytes(), 1);
    }

    #[test]
    fn every_kind_of_generated_text_counts_as_output() {
        // Legacy completions stream `text`, chat streams `delta.content`,
        // with one entry per choice.
        let p = whole(
            Endpoint::Completions,
            "data: {\"choices\":[{\"text\":\"abcd\"},{\"text\":\"ef\"}]}\n\n",
        );
        assert_eq!(p.output_bytes(), 6);
        // Anthropic tool use streams JSON deltas beside text deltas.
        let p = whole(
            Endpoint::AnthropicMessages,
            "data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}}\n\n\
data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
        );
        assert_eq!(p.output_bytes(), 7);
    }

    #[test]
    fn an_anthropic_delta_without_a_start_still_reports_usage() {
        let p = whole(
            Endpoint::AnthropicMessages,
            "data: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":2,\"output_tokens\":8}}\n\n",
        );
        assert_eq!(
            p.usage(),
            Some(Usage {
                prompt_tokens: 2,
                completion_tokens: 8,
                cached_prompt_tokens: 0
            })
        );
    }

    #[test]
    fn an_incomplete_response_reports_its_usage_and_ends_the_stream() {
        let p = whole(
            Endpoint::Responses,
            "data: {\"type\":\"response.incomplete\",\"response\":{\"usage\":{\"input_tokens\":4,\"output_tokens\":1}}}\n\n",
        );
        assert_eq!(p.usage().map(|u| u.completion_tokens), Some(1));
        assert!(p.saw_done());
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
