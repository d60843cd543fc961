//! The pure stages of admission, each a small decision on the request and
//! the config: which model, does it fit, which class, which models may
//! serve it, what to reserve, how long it may wait.

use super::outcome::Rejection;
use crate::rules::{Class, Identity, LlmConfig, MaxWait, Tokens};
use std::time::Duration;
use tollgate_filters::LlmRequest;

/// The metric label of requests for a model without `[[model]]`.
pub const OTHER_MODEL: &str = "_other";

/// A model that may serve the request, with what it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Candidate {
    pub name: String,
    pub context: u64,
    pub default_output: u64,
    /// The model's metric label: its name if configured, else `_other`.
    pub label: String,
}

/// The model the request names: a `[[model]]`, or an unknown one when the
/// config allows those (then with no context limit and the configured
/// output bound).
pub(super) fn model(llm: &LlmConfig, request: &LlmRequest) -> Result<Candidate, Rejection> {
    match llm.model(&request.model) {
        Some(m) => Ok(Candidate {
            name: request.model.clone(),
            context: m.context_window,
            default_output: m.default_max_output,
            label: m.name.clone(),
        }),
        None if llm.settings.allow_unknown_models => Ok(Candidate {
            name: request.model.clone(),
            context: u64::MAX,
            default_output: llm.settings.unknown_model_max_output,
            label: OTHER_MODEL.into(),
        }),
        None => Err(Rejection::UnknownModel),
    }
}

/// A model whose requests a quota limits in money must have a price:
/// without one the budget could not be kept, so the request is refused
/// (the config check makes sure every `[[model]]` such a quota matches has
/// one; this catches models the config does not know).
pub(super) fn priced(llm: &LlmConfig, id: &Identity, model: &Candidate) -> Result<(), Rejection> {
    if llm.price(&model.name).is_some() {
        return Ok(());
    }
    let id = Identity {
        model: model.name.clone(),
        ..id.clone()
    };
    let spending = llm
        .quotas_for(&id)
        .find(|q| q.limits_spend())
        .map(|q| q.name.clone());
    match spending {
        Some(quota) => Err(Rejection::Unpriced {
            model_label: model.label.clone(),
            quota,
        }),
        None => Ok(()),
    }
}

/// The prompt, and the output it asks for, fit the model's context.
pub(super) fn context(model: &Candidate, request: &LlmRequest) -> Result<(), Rejection> {
    let prompt = request.prompt_tokens_estimate;
    let asked = request.max_output_tokens;
    if prompt > model.context || asked.is_some_and(|a| prompt.saturating_add(a) > model.context) {
        return Err(Rejection::ContextExceeded {
            model_label: model.label.clone(),
            context: model.context,
            prompt,
            output: asked.unwrap_or(0),
        });
    }
    Ok(())
}

/// The request's class (named by its class header, else matched, else the
/// default), written into its identity so quotas can match on it.
pub(super) fn class<'c>(llm: &'c LlmConfig, identity: &mut Identity) -> Option<&'c Class> {
    let class = llm.classes.of(identity.class.as_deref(), identity);
    if let Some(c) = class {
        identity.class = Some(c.name.clone());
    }
    class
}

/// The requested model, then its fallbacks that can hold the request, in
/// order.
pub(super) fn candidates(
    llm: &LlmConfig,
    first: Candidate,
    request: &LlmRequest,
) -> Vec<Candidate> {
    let needs = request
        .prompt_tokens_estimate
        .saturating_add(request.max_output_tokens.unwrap_or(0));
    let fallbacks = llm
        .model(&first.name)
        .map(|m| m.fallback.as_slice())
        .unwrap_or_default();
    let mut out = vec![first];
    for f in fallbacks.iter().filter_map(|name| llm.model(name)) {
        if needs <= f.context_window {
            out.push(Candidate {
                name: f.name.clone(),
                context: f.context_window,
                default_output: f.default_max_output,
                label: f.name.clone(),
            });
        }
    }
    out
}

/// What a request reserves on `model`: its prompt estimate, and the output
/// it asks for, else the model's default (never past the context).
pub(super) fn estimate(model: &Candidate, request: &LlmRequest) -> Tokens {
    let prompt = request.prompt_tokens_estimate;
    let output = request.max_output_tokens.unwrap_or_else(|| {
        model
            .default_output
            .min(model.context.saturating_sub(prompt))
    });
    Tokens {
        prompt,
        completion: output,
        cached: 0,
    }
}

/// The longest a request of `id` (its model set) and `class` can wait for
/// the quotas that match it: the class's `max_wait`, else the longest of
/// its quotas' (each the quota's, else the model's, else `[llm]`'s).
/// `None` when one of them is `"auto"` (bounded only by the request's
/// deadline); zero when no quota matches (nothing to wait for).
pub(super) fn longest_wait(
    llm: &LlmConfig,
    id: &Identity,
    class: Option<&Class>,
) -> Option<Duration> {
    let bound = |w: MaxWait| match w {
        MaxWait::For(d) => Some(d),
        MaxWait::Auto => None,
    };
    if let Some(w) = class.and_then(|c| c.max_wait) {
        return bound(w);
    }
    let model = llm.model(&id.model);
    let mut longest = Some(Duration::ZERO);
    for q in llm.quotas.iter().filter(|q| q.matches(id)) {
        let w = q
            .max_wait
            .or(model.and_then(|m| m.max_wait))
            .unwrap_or(llm.settings.max_wait);
        longest = match (longest, bound(w)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    longest
}
