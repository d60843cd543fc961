//! What an LLM request asks for: the model, whether it streams, how many
//! output tokens it may produce, and an estimate of its prompt tokens.

use crate::{Endpoint, Estimator};
use serde_json::{Map, Value};

/// OpenAI's documented framing: about 3 tokens per message, 3 to prime the
/// reply.
const PER_MESSAGE: u64 = 3;
const PER_REPLY: u64 = 3;
/// An image part, unknown size: OpenAI's low-detail cost. Anthropic bills
/// images by area; about 1600 tokens for a typical 1092×1092 image.
const IMAGE_OPENAI: u64 = 85;
const IMAGE_ANTHROPIC: u64 = 1600;
/// Any other non-text part (audio, file): a flat guess.
const OTHER_PART: u64 = 256;

/// The parts of a request that budgets need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmRequest {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage` is already true.
    pub stream_usage_requested: bool,
    /// The output the request allows (`max_completion_tokens`,
    /// `max_tokens`, `max_output_tokens`) times `n` choices; `None` when it
    /// names none. Embeddings produce none: `Some(0)`.
    pub max_output_tokens: Option<u64>,
    pub prompt_tokens_estimate: u64,
    /// Which estimator counted the prompt (for metrics and docs).
    pub estimator: Estimator,
}

/// Why a body is not a request we can budget. Messages never quote the
/// body: it may hold a prompt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request body is not valid JSON ({0})")]
    InvalidJson(String),
    #[error("request body must be a JSON object")]
    NotAnObject,
    #[error("request names no `model`")]
    MissingModel,
    #[error("`{field}` has the wrong type")]
    WrongType { field: &'static str },
    #[error("cannot re-encode the request body ({0})")]
    Rewrite(String),
}

/// Parses a request body. `prefer_bpe` picks a real tokenizer for OpenAI
/// models ([`Estimator::for_model`]).
pub fn parse_request(
    endpoint: Endpoint,
    body: &[u8],
    prefer_bpe: bool,
) -> Result<LlmRequest, RequestError> {
    parse_request_with(endpoint, body, |model| {
        Estimator::for_model(model, prefer_bpe)
    })
}

/// Parses a request body, counting its prompt with the estimator `choose`
/// picks for the model it names: a server that builds a vocabulary only
/// for the models it is configured with chooses here what the others get.
pub fn parse_request_with(
    endpoint: Endpoint,
    body: &[u8],
    choose: impl FnOnce(&str) -> Estimator,
) -> Result<LlmRequest, RequestError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        // serde_json's messages name a line and column, never the content.
        RequestError::InvalidJson(format!(
            "{} at line {} column {}",
            category(&e),
            e.line(),
            e.column()
        ))
    })?;
    let obj = value.as_object().ok_or(RequestError::NotAnObject)?;
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
        Some(Value::String(_)) | None => return Err(RequestError::MissingModel),
        Some(_) => return Err(RequestError::WrongType { field: "model" }),
    };
    let estimator = choose(&model);
    let stream = bool_field(obj, "stream")?.unwrap_or(false);
    let stream_usage_requested = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let max_output_tokens = match endpoint {
        Endpoint::Embeddings => Some(0),
        Endpoint::ChatCompletions => {
            let max = uint_field(obj, "max_completion_tokens")?.or(uint_field(obj, "max_tokens")?);
            let n = uint_field(obj, "n")?.unwrap_or(1).max(1);
            max.map(|m| m.saturating_mul(n))
        }
        Endpoint::Completions => {
            let max = uint_field(obj, "max_tokens")?;
            let n = uint_field(obj, "n")?.unwrap_or(1).max(1);
            let best_of = uint_field(obj, "best_of")?.unwrap_or(1).max(n);
            max.map(|m| m.saturating_mul(best_of))
        }
        Endpoint::Responses => uint_field(obj, "max_output_tokens")?,
        Endpoint::AnthropicMessages => uint_field(obj, "max_tokens")?,
    };
    let mut counter = Counter {
        estimator,
        tokens: 0,
    };
    match endpoint {
        Endpoint::ChatCompletions => {
            counter.messages(obj.get("messages"), IMAGE_OPENAI);
            counter.json(obj.get("tools"));
            counter.json(obj.get("functions"));
            counter.json(obj.get("response_format"));
        }
        Endpoint::Completions => counter.prompt(obj.get("prompt")),
        Endpoint::Embeddings => counter.prompt(obj.get("input")),
        Endpoint::Responses => {
            counter.text_value(obj.get("instructions"));
            match obj.get("input") {
                Some(Value::Array(_)) => counter.messages(obj.get("input"), IMAGE_OPENAI),
                other => counter.text_value(other),
            }
            counter.json(obj.get("tools"));
        }
        Endpoint::AnthropicMessages => {
            counter.content(obj.get("system"), IMAGE_ANTHROPIC);
            counter.messages(obj.get("messages"), IMAGE_ANTHROPIC);
            counter.json(obj.get("tools"));
        }
    }
    Ok(LlmRequest {
        endpoint,
        model,
        stream,
        stream_usage_requested,
        max_output_tokens,
        prompt_tokens_estimate: counter.tokens,
        estimator,
    })
}

fn category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Io => "read error",
    }
}

fn bool_field(obj: &Map<String, Value>, field: &'static str) -> Result<Option<bool>, RequestError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(RequestError::WrongType { field }),
    }
}

fn uint_field(obj: &Map<String, Value>, field: &'static str) -> Result<Option<u64>, RequestError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or(RequestError::WrongType { field }),
        Some(_) => Err(RequestError::WrongType { field }),
    }
}

/// Walks the parts of a request that become prompt tokens.
struct Counter {
    estimator: Estimator,
    tokens: u64,
}

impl Counter {
    fn text(&mut self, s: &str) {
        self.tokens = self.tokens.saturating_add(self.estimator.count(s));
    }

    fn text_value(&mut self, v: Option<&Value>) {
        if let Some(Value::String(s)) = v {
            self.text(s);
        }
    }

    /// Tool and schema definitions are sent to the model as JSON text.
    fn json(&mut self, v: Option<&Value>) {
        if let Some(v) = v.filter(|v| !v.is_null()) {
            self.text(&v.to_string());
        }
    }

    fn messages(&mut self, v: Option<&Value>, image: u64) {
        let Some(Value::Array(messages)) = v else {
            return;
        };
        for m in messages {
            self.tokens = self.tokens.saturating_add(PER_MESSAGE);
            match m {
                Value::Object(o) => {
                    self.text_value(o.get("role"));
                    self.text_value(o.get("name"));
                    self.content(o.get("content"), image);
                    self.json(o.get("tool_calls"));
                    self.json(o.get("function_call"));
                }
                Value::String(s) => self.text(s),
                _ => {}
            }
        }
        self.tokens = self.tokens.saturating_add(PER_REPLY);
    }

    /// A message's content: a string, or an array of typed parts.
    fn content(&mut self, v: Option<&Value>, image: u64) {
        match v {
            Some(Value::String(s)) => self.text(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    self.part(p, image);
                }
            }
            _ => {}
        }
    }

    fn part(&mut self, p: &Value, image: u64) {
        let Value::Object(o) = p else {
            if let Value::String(s) = p {
                self.text(s);
            }
            return;
        };
        let kind = o.get("type").and_then(Value::as_str).unwrap_or("text");
        match kind {
            "text" | "input_text" | "output_text" => self.text_value(o.get("text")),
            "image_url" | "image" | "input_image" => {
                self.tokens = self.tokens.saturating_add(image)
            }
            "tool_use" => self.json(o.get("input")),
            "tool_result" => self.content(o.get("content"), image),
            _ => {
                if o.get("text").is_some() {
                    self.text_value(o.get("text"));
                } else {
                    self.tokens = self.tokens.saturating_add(OTHER_PART);
                }
            }
        }
    }

    /// `prompt` / `input`: a string, strings, or token ids (their count).
    fn prompt(&mut self, v: Option<&Value>) {
        match v {
            Some(Value::String(s)) => self.text(s),
            Some(Value::Array(items)) => {
                for item in items {
                    match item {
                        Value::String(s) => self.text(s),
                        Value::Number(_) => self.tokens = self.tokens.saturating_add(1),
                        Value::Array(ids) => {
                            self.tokens = self.tokens.saturating_add(ids.len() as u64)
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(endpoint: Endpoint, body: &str) -> LlmRequest {
        parse_request(endpoint, body.as_bytes(), false).unwrap()
    }

    #[test]
    fn chat_fields() {
        let r = parse(
            Endpoint::ChatCompletions,
            r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"max_tokens":100,"n":2,
                "messages":[{"role":"user","content":"12345678"}]}"#,
        );
        assert_eq!(r.model, "gpt-4o");
        assert!(r.stream && r.stream_usage_requested);
        assert_eq!(r.max_output_tokens, Some(200));
        // role "user" (1) + content (2) + 3 per message + 3 reply.
        assert_eq!(r.prompt_tokens_estimate, 1 + 2 + 3 + 3);
    }

    #[test]
    fn max_output_field_per_api() {
        let chat = parse(
            Endpoint::ChatCompletions,
            r#"{"model":"m","max_completion_tokens":7,"max_tokens":9,"messages":[]}"#,
        );
        assert_eq!(chat.max_output_tokens, Some(7));
        let none = parse(Endpoint::ChatCompletions, r#"{"model":"m","messages":[]}"#);
        assert_eq!(none.max_output_tokens, None);
        let resp = parse(
            Endpoint::Responses,
            r#"{"model":"m","input":"hi","max_output_tokens":5}"#,
        );
        assert_eq!(resp.max_output_tokens, Some(5));
        let ant = parse(
            Endpoint::AnthropicMessages,
            r#"{"model":"claude","max_tokens":1024,"system":"be brief","messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image","source":{}}]}]}"#,
        );
        assert_eq!(ant.max_output_tokens, Some(1024));
        assert!(ant.prompt_tokens_estimate >= IMAGE_ANTHROPIC);
        let emb = parse(
            Endpoint::Embeddings,
            r#"{"model":"text-embedding-3-small","input":["abcd","efgh",[1,2,3]]}"#,
        );
        assert_eq!(emb.max_output_tokens, Some(0));
        assert_eq!(emb.prompt_tokens_estimate, 1 + 1 + 3);
        let cmp = parse(
            Endpoint::Completions,
            r#"{"model":"m","prompt":"abcdefgh","max_tokens":10,"best_of":3}"#,
        );
        assert_eq!(cmp.max_output_tokens, Some(30));
        assert_eq!(cmp.prompt_tokens_estimate, 2);
    }

    #[test]
    fn bad_bodies_say_why_without_quoting() {
        let e = parse_request(
            Endpoint::ChatCompletions,
            b"{\"model\": \"secret prompt",
            false,
        )
        .unwrap_err();
        assert!(matches!(e, RequestError::InvalidJson(_)));
        assert!(!e.to_string().contains("secret"));
        assert_eq!(
            parse_request(Endpoint::ChatCompletions, b"[1]", false).unwrap_err(),
            RequestError::NotAnObject
        );
        assert_eq!(
            parse_request(Endpoint::ChatCompletions, b"{}", false).unwrap_err(),
            RequestError::MissingModel
        );
        assert_eq!(
            parse_request(
                Endpoint::ChatCompletions,
                br#"{"model":"m","max_tokens":"9"}"#,
                false
            )
            .unwrap_err(),
            RequestError::WrongType {
                field: "max_tokens"
            }
        );
        assert_eq!(
            parse_request(
                Endpoint::ChatCompletions,
                br#"{"model":"m","max_tokens":-1}"#,
                false
            )
            .unwrap_err(),
            RequestError::WrongType {
                field: "max_tokens"
            }
        );
    }

    #[test]
    fn bpe_is_used_for_openai_models() {
        let r = parse_request(
            Endpoint::ChatCompletions,
            br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello world"}]}"#,
            true,
        )
        .unwrap();
        assert_eq!(r.estimator, Estimator::O200k);
        assert_eq!(r.prompt_tokens_estimate, 1 + 2 + 3 + 3);
    }

    #[test]
    fn the_chooser_is_asked_with_the_model_and_its_estimator_counts() {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello world"}]}"#;
        let mut asked = None;
        let r = parse_request_with(Endpoint::ChatCompletions, body, |m| {
            asked = Some(m.to_string());
            Estimator::BytesPerFour
        })
        .unwrap();
        assert_eq!(asked.as_deref(), Some("gpt-4o"));
        assert_eq!(r.estimator, Estimator::BytesPerFour);
        // role "user" (1) + "hello world" as bytes / 4 (3) + 3 per
        // message + 3 reply.
        assert_eq!(r.prompt_tokens_estimate, 1 + 3 + 3 + 3);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::{ensure_stream_usage, usage_from_json};
    use proptest::prelude::*;

    const ALL: [Endpoint; 5] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Responses,
        Endpoint::Embeddings,
        Endpoint::AnthropicMessages,
    ];

    fn jsonish() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            "[\\[\\]{}\":,0-9a-z_ \\\\-]{0,200}".prop_map(|s| s.into_bytes()),
            Just(br#"{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":"x"},{"type":"image_url"},3,null]}],"n":0,"max_tokens":18446744073709551615}"#.to_vec()),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in jsonish(), bpe in any::<bool>()) {
            for e in ALL {
                let _ = parse_request(e, &body, bpe);
                let _ = usage_from_json(e, &body);
                if let Ok(Some(out)) = ensure_stream_usage(e, &body) {
                    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
                    prop_assert_eq!(v.pointer("/stream_options/include_usage"), Some(&serde_json::Value::Bool(true)));
                }
            }
        }

        #[test]
        fn injected_usage_keeps_the_request(model in "[a-z0-9-]{1,20}", max in 0u64..100_000) {
            let body = format!(r#"{{"model":"{model}","stream":true,"max_tokens":{max},"messages":[{{"role":"user","content":"hi"}}]}}"#);
            let out = ensure_stream_usage(Endpoint::ChatCompletions, body.as_bytes()).unwrap().unwrap();
            let a = parse_request(Endpoint::ChatCompletions, body.as_bytes(), false).unwrap();
            let b = parse_request(Endpoint::ChatCompletions, &out, false).unwrap();
            prop_assert_eq!(&a.model, &b.model);
            prop_assert_eq!(a.max_output_tokens, b.max_output_tokens);
            prop_assert!(b.stream_usage_requested);
        }
    }
}
