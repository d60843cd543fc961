//! Prices: a `[[model]]`'s own `price`, `[[price]]` tables for models by
//! pattern, and the check that every model a spend quota counts is priced.

use super::error::Source;
use super::file::PriceView;
use super::tree::Document;
use super::ConfigError;
use crate::rules::{micros, IdentityKey, LlmConfig, Price};
use std::collections::BTreeMap;
use toml::Spanned;

/// A price per million tokens as micro-units per million.
pub(crate) fn price(
    src: &Source,
    v: &Spanned<PriceView>,
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Price> {
    let p = v.get_ref();
    let mut one = |x: f64, what: &str| match micros(x) {
        Ok(m) => Some(m),
        Err(e) => {
            errors.push(src.error(v.span().start, format!("{field}.{what}"), e.to_string()));
            None
        }
    };
    let input = one(p.input, "input");
    let output = one(p.output, "output");
    let cached_input = match p.cached_input {
        Some(c) => one(c, "cached_input"),
        None => input,
    };
    Some(Price {
        input: input?,
        output: output?,
        cached_input: cached_input?,
    })
}

/// `[prices]`: model name → price, beside (not instead of) the `[[model]]`
/// tables; one price per model across all files.
pub(crate) fn prices(
    src: &Source,
    doc: &mut Document<'_>,
    llm: &mut LlmConfig,
    errors: &mut Vec<ConfigError>,
) {
    let Some(table) = doc.table::<BTreeMap<String, Spanned<PriceView>>>(src, "prices", errors)
    else {
        return;
    };
    for (name, v) in table.view.into_inner() {
        let field = format!("prices.{name}");
        let Some(price) = price(src, &v, &field, errors) else {
            continue;
        };
        if llm.prices.insert(name.clone(), price).is_some() {
            errors.push(src.error(v.span().start, field, format!("`{name}` is priced twice")));
        }
    }
}

/// A model has one price, and every `[[model]]` a quota that limits spend
/// may match has one (a model the config does not know is refused at
/// request time instead).
pub(crate) fn check_prices(llm: &LlmConfig, sources: &[String], errors: &mut Vec<ConfigError>) {
    for (m, source) in llm.models.iter().zip(sources) {
        if m.price.is_some() && llm.prices.contains_key(&m.name) {
            errors.push(ConfigError::at(
                source,
                "model.price",
                format!("`{}` has a price here and in [prices]; keep one", m.name),
            ));
        }
    }
    for q in llm.quotas.iter().filter(|q| q.limits_spend()) {
        let models = q
            .matchers
            .iter()
            .find(|(k, _)| *k == IdentityKey::Model)
            .map(|(_, p)| p);
        for m in &llm.models {
            if models.is_some_and(|p| !p.matches(&m.name)) || llm.price(&m.name).is_some() {
                continue;
            }
            errors.push(ConfigError::at(
                &q.source,
                "quota.spend",
                format!(
                    "quota `{}` limits spend, but model `{}` has no price: give its [[model]] \
                     `price = {{ input = …, output = … }}` (per million tokens) or add it to [prices]",
                    q.name, m.name
                ),
            ));
        }
    }
}
