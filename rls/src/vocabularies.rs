//! The BPE vocabularies (some 50 MB each) are built only for the models a
//! config names: a tollgate without `[[model]]`s, or with `estimator =
//! "bytes"`, never builds one. Each is built once per process and shared
//! (`tollgate_filters::Estimator` holds them); the build runs on the
//! blocking pool at start and after a reload that adds a model needing one.
//!
//! A request for a model the config does not name (`allow_unknown_models`)
//! is counted with a BPE only if that vocabulary is already built for a
//! configured model; otherwise by bytes / 4. A client naming `gpt-4` cannot
//! make tollgate build a vocabulary nobody configured.

use crate::rules::{Estimator as Setting, LlmConfig};
use std::time::Instant;
use tollgate_filters::Estimator;

/// The BPE estimators the configured models count with (none when the
/// config says `estimator = "bytes"`).
pub fn wanted(llm: &LlmConfig) -> Vec<Estimator> {
    if llm.settings.estimator != Setting::Bpe {
        return Vec::new();
    }
    let mut out = Vec::new();
    for m in &llm.models {
        let e = Estimator::for_model(&m.name, true);
        if e != Estimator::BytesPerFour && !out.contains(&e) {
            out.push(e);
        }
    }
    out
}

/// Whether a wanted vocabulary is still being built: parse off the event
/// loop until it is, or the first requests would wait on it there.
pub fn loading(llm: &LlmConfig) -> bool {
    wanted(llm).iter().any(|e| !e.is_loaded())
}

/// Builds, on the blocking pool, each vocabulary the configured models
/// need that is not built yet (outside a runtime, right here).
pub fn load_for(llm: &LlmConfig) {
    for e in wanted(llm).into_iter().filter(|e| !e.is_loaded()) {
        let build = move || {
            let started = Instant::now();
            e.load();
            tracing::info!(
                vocabulary = e.as_str(),
                took_ms = started.elapsed().as_millis() as u64,
                "BPE vocabulary loaded for the configured models"
            );
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(build)),
            Err(_) => build(),
        }
    }
}

/// The estimator a request for `model` is counted with: a configured
/// model's own, an unknown model's BPE only when it is already built.
pub fn choose(wanted: &[Estimator], model: &str, bpe: bool) -> Estimator {
    let e = Estimator::for_model(model, bpe);
    if e.is_loaded() || wanted.contains(&e) {
        e
    } else {
        Estimator::BytesPerFour
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    #[test]
    fn only_the_configured_models_vocabularies_are_wanted() {
        let none = parse_str("t.toml", "").unwrap();
        assert!(wanted(&none.llm).is_empty(), "no [[model]]: no vocabulary");
        let models = r#"
[[model]]
name = "gpt-4o"
context_window = 128000
default_max_output = 4096

[[model]]
name = "gpt-4o-mini"
context_window = 128000
default_max_output = 4096

[[model]]
name = "claude-sonnet-4"
context_window = 200000
default_max_output = 4096
"#;
        let c = parse_str("t.toml", models).unwrap();
        assert_eq!(wanted(&c.llm), vec![Estimator::O200k], "one copy, once");
        let bytes =
            parse_str("t.toml", &format!("[llm]\nestimator = \"bytes\"\n{models}")).unwrap();
        assert!(wanted(&bytes.llm).is_empty());
    }

    #[test]
    fn an_unknown_model_gets_a_bpe_only_if_it_is_built() {
        let wanted = [Estimator::O200k];
        assert_eq!(choose(&wanted, "gpt-4o", true), Estimator::O200k);
        assert_eq!(choose(&wanted, "gpt-4o", false), Estimator::BytesPerFour);
        assert_eq!(choose(&wanted, "claude-3", true), Estimator::BytesPerFour);
        let expected = if Estimator::Cl100k.is_loaded() {
            Estimator::Cl100k
        } else {
            Estimator::BytesPerFour
        };
        assert_eq!(choose(&wanted, "gpt-4-turbo", true), expected);
    }
}
