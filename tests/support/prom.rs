//! Reading Prometheus text exposition in assertions, and keeping
//! window-based assertions away from window boundaries.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The value of the sample of `family` whose labels include all of
/// `labels` (label order does not matter), or `None`. With several
/// matches, the first.
///
/// `metric(&text, "tollgate_rule_shadow_mode_total", &[("rule", "trial")])`
pub fn metric(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if name != family {
                return None;
            }
            let has = |(k, v): &(&str, &str)| label_text.contains(&format!("{k}=\"{v}\""));
            if !labels.iter().all(has) {
                return None;
            }
            value.trim().parse().ok()
        })
}

/// Sleeps, if needed, so that at least `margin` is left before the next
/// epoch-aligned boundary of `window` (fixed windows start at multiples of
/// their length, as in envoyproxy/ratelimit). Call before a burst that must
/// land in one window.
pub fn avoid_window_edge(window: Duration, margin: Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    let into = Duration::from_nanos((now.as_nanos() % window.as_nanos()) as u64);
    let left = window - into;
    if left < margin {
        std::thread::sleep(left + Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x_total help\n# TYPE x_total counter\n\
        x_total{domain=\"edge\",rule=\"a\"} 3\n\
        x_total{domain=\"edge\",rule=\"b\"} 1\n\
        x_total_other{domain=\"edge\",rule=\"a\"} 9\n\
        y 2.5\n";

    #[test]
    fn finds_a_sample_by_some_labels() {
        assert_eq!(metric(TEXT, "x_total", &[("rule", "b")]), Some(1.0));
        assert_eq!(
            metric(TEXT, "x_total", &[("rule", "a"), ("domain", "edge")]),
            Some(3.0)
        );
        assert_eq!(metric(TEXT, "x_total", &[("rule", "c")]), None);
        assert_eq!(metric(TEXT, "y", &[]), Some(2.5));
        assert_eq!(metric(TEXT, "x", &[]), None);
    }
}
