//! Token counting. OpenAI models get a real BPE (o200k_base for the gpt-4o
//! generation and later, cl100k_base for gpt-4 and gpt-3.5), through
//! GitHub's `bpe-openai`, whose vocabularies are compiled in (no download).
//! Everything else, and anyone who prefers speed, gets bytes / 4.
//!
//! Each vocabulary is built on its first use (tens to hundreds of
//! milliseconds, some 50 MB each) and then shared by the whole process: one
//! copy, never built for a process that never counts with it.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether each vocabulary has been built (set once its table exists).
static O200K_LOADED: AtomicBool = AtomicBool::new(false);
static CL100K_LOADED: AtomicBool = AtomicBool::new(false);

/// How to count the tokens of a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimator {
    /// ceil(bytes / 4): free, within about ±30% on English prose.
    BytesPerFour,
    /// OpenAI's o200k_base vocabulary (gpt-4o, gpt-4.1, gpt-5, o-series).
    O200k,
    /// OpenAI's cl100k_base vocabulary (gpt-4, gpt-3.5, text-embedding-3).
    Cl100k,
}

impl Estimator {
    /// The best estimator for a model: a BPE for OpenAI model names when
    /// `prefer_bpe`, else bytes / 4.
    pub fn for_model(model: &str, prefer_bpe: bool) -> Estimator {
        if !prefer_bpe {
            return Estimator::BytesPerFour;
        }
        let m = model.to_ascii_lowercase();
        let m = m.rsplit('/').next().unwrap_or(&m);
        if m.starts_with("gpt-4o")
            || m.starts_with("gpt-4.1")
            || m.starts_with("gpt-4.5")
            || m.starts_with("gpt-5")
            || m.starts_with("chatgpt-4o")
            || (m.starts_with('o') && m[1..].starts_with(|c: char| c.is_ascii_digit()))
        {
            Estimator::O200k
        } else if m.starts_with("gpt-4")
            || m.starts_with("gpt-3.5")
            || m.starts_with("text-embedding")
        {
            Estimator::Cl100k
        } else {
            Estimator::BytesPerFour
        }
    }

    /// Tokens in `text`. A BPE estimator builds its vocabulary on its first
    /// call.
    pub fn count(&self, text: &str) -> u64 {
        match self {
            Estimator::BytesPerFour => (text.len() as u64).div_ceil(4),
            Estimator::O200k | Estimator::Cl100k => self.tokenizer().count(text) as u64,
        }
    }

    /// Builds this estimator's vocabulary now (nothing for bytes / 4): a
    /// server calls it, off its event loop, for the models it is configured
    /// with, so their first requests do not pay for it.
    pub fn load(&self) {
        if *self != Estimator::BytesPerFour {
            let _ = self.tokenizer();
        }
    }

    /// Whether counting with this estimator is free of a vocabulary build
    /// (bytes / 4 always is).
    pub fn is_loaded(&self) -> bool {
        match self {
            Estimator::BytesPerFour => true,
            Estimator::O200k => O200K_LOADED.load(Ordering::Acquire),
            Estimator::Cl100k => CL100K_LOADED.load(Ordering::Acquire),
        }
    }

    /// The shared BPE tokenizer, built on first use. Only for the BPE
    /// estimators.
    fn tokenizer(&self) -> &'static bpe_openai::Tokenizer {
        let (tokenizer, loaded) = match self {
            Estimator::Cl100k => (bpe_openai::cl100k_base(), &CL100K_LOADED),
            _ => (bpe_openai::o200k_base(), &O200K_LOADED),
        };
        loaded.store(true, Ordering::Release);
        tokenizer
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Estimator::BytesPerFour => "bytes",
            Estimator::O200k => "o200k_base",
            Estimator::Cl100k => "cl100k_base",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_families() {
        assert_eq!(Estimator::for_model("gpt-4o-mini", true), Estimator::O200k);
        assert_eq!(Estimator::for_model("openai/gpt-5", true), Estimator::O200k);
        assert_eq!(Estimator::for_model("o3-mini", true), Estimator::O200k);
        assert_eq!(Estimator::for_model("gpt-4-turbo", true), Estimator::Cl100k);
        assert_eq!(
            Estimator::for_model("claude-sonnet-4", true),
            Estimator::BytesPerFour
        );
        assert_eq!(
            Estimator::for_model("gpt-4o", false),
            Estimator::BytesPerFour
        );
        assert_eq!(Estimator::for_model("omni", true), Estimator::BytesPerFour);
    }

    #[test]
    fn load_builds_the_vocabulary_and_says_so() {
        // Other tests in this binary may have built it already; what is
        // checked is that `load` leaves it built and reported.
        assert!(Estimator::BytesPerFour.is_loaded());
        Estimator::BytesPerFour.load();
        Estimator::Cl100k.load();
        assert!(Estimator::Cl100k.is_loaded());
        Estimator::O200k.load();
        assert!(Estimator::O200k.is_loaded());
    }

    #[test]
    fn counts() {
        assert_eq!(Estimator::BytesPerFour.count("hello"), 2);
        assert_eq!(Estimator::O200k.count("hello world"), 2);
        assert_eq!(Estimator::Cl100k.count(""), 0);
    }
}
