//! The most a response may charge. Usage comes from the upstream, which
//! tollgate does not trust further than physics: a request cannot read more
//! prompt tokens than its model's context window holds, nor generate more
//! than the output it asked for (or, when it asked for none, than the
//! context). A report past that (`u64::MAX`, `1e12`: a broken or hostile
//! upstream) is charged at the bound, counted
//! (`tollgate_llm_usage_anomalies_total`) and logged, once and then as a
//! summary.

use super::outcome::{Admitted, ResponseEnd};
use crate::metrics::Metrics;
use crate::repeated::Repeats;
use crate::rules::Tokens;
use std::sync::LazyLock;
use std::time::Duration;

/// The context assumed for a model without `[[model]]` (allowed by
/// `allow_unknown_models`): above every model's window today.
pub const UNKNOWN_MODEL_CONTEXT: u64 = 10_000_000;

/// What one admitted request could use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageBound {
    /// The model's context window (prompt tokens, cached included).
    pub context: u64,
    /// The output the request asked for (`max_tokens` and its kin, times
    /// `n`), if it asked.
    pub max_output: Option<u64>,
}

impl UsageBound {
    /// The bound of a request to a model of `context` (`u64::MAX` for an
    /// unknown model) asking for `max_output`.
    pub fn new(context: u64, max_output: Option<u64>) -> UsageBound {
        UsageBound {
            context: context.min(UNKNOWN_MODEL_CONTEXT),
            max_output,
        }
    }

    fn completion(&self) -> u64 {
        self.max_output.unwrap_or(self.context)
    }

    /// `reported` within the bound.
    pub fn apply(&self, reported: Tokens) -> Tokens {
        let prompt = reported.prompt.min(self.context);
        Tokens {
            prompt,
            completion: reported.completion.min(self.completion()),
            cached: reported.cached.min(prompt),
        }
    }
}

/// One line at once, then one every 30 s with the count.
static LOGGED: LazyLock<Repeats> = LazyLock::new(|| Repeats::new(Duration::from_secs(30)));

/// `end` with its usage (and the streamed output `charge_streamed` charges)
/// within `admitted`'s bound; an anomaly is counted and logged.
pub(super) fn checked(m: &Metrics, admitted: &Admitted, end: ResponseEnd) -> ResponseEnd {
    let bound = admitted.usage_bound;
    // Four bytes a token is what `charge_streamed` assumes.
    let max_bytes = bound.completion().saturating_mul(4);
    match end {
        ResponseEnd::Completed {
            status,
            usage: Some(reported),
            output_bytes,
        } => {
            let bounded = bound.apply(reported);
            if bounded != reported {
                m.guard.usage_anomaly(&admitted.model_label);
                if let Some(unlogged) = LOGGED.note() {
                    tracing::warn!(
                        model = %admitted.model_label,
                        reported_prompt = reported.prompt,
                        reported_completion = reported.completion,
                        reported_cached = reported.cached,
                        context = bound.context,
                        max_output = ?bound.max_output,
                        unlogged_since_last = unlogged,
                        "upstream reported more usage than the request could use; charged the bound"
                    );
                }
            }
            ResponseEnd::Completed {
                status,
                usage: Some(bounded),
                output_bytes: output_bytes.min(max_bytes),
            }
        }
        ResponseEnd::Completed {
            status,
            usage: None,
            output_bytes,
        } => ResponseEnd::Completed {
            status,
            usage: None,
            output_bytes: output_bytes.min(max_bytes),
        },
        ResponseEnd::Aborted { output_bytes } => ResponseEnd::Aborted {
            output_bytes: output_bytes.min(max_bytes),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(prompt: u64, completion: u64, cached: u64) -> Tokens {
        Tokens {
            prompt,
            completion,
            cached,
        }
    }

    #[test]
    fn plausible_usage_is_charged_as_reported() {
        let b = UsageBound::new(128_000, Some(500));
        assert_eq!(b.apply(t(127_000, 500, 100_000)), t(127_000, 500, 100_000));
        let unasked = UsageBound::new(128_000, None);
        assert_eq!(unasked.apply(t(10, 90_000, 0)), t(10, 90_000, 0));
    }

    #[test]
    fn absurd_usage_is_cut_to_the_context_and_the_output_asked_for() {
        let b = UsageBound::new(128_000, Some(500));
        assert_eq!(
            b.apply(t(u64::MAX, u64::MAX, u64::MAX)),
            t(128_000, 500, 128_000)
        );
        assert_eq!(b.apply(t(1_000_000_000_000, 10, 0)), t(128_000, 10, 0));
        let unasked = UsageBound::new(8_000, None);
        assert_eq!(
            unasked.apply(t(5, u64::MAX, 7)),
            t(5, 8_000, 5),
            "cached within the prompt"
        );
    }

    #[test]
    fn an_unknown_model_is_bounded_too() {
        let b = UsageBound::new(u64::MAX, None);
        assert_eq!(b.context, UNKNOWN_MODEL_CONTEXT);
        assert_eq!(
            b.apply(t(u64::MAX, u64::MAX, 0)),
            t(UNKNOWN_MODEL_CONTEXT, UNKNOWN_MODEL_CONTEXT, 0)
        );
    }
}
