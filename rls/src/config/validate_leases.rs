//! Validation of `[leases]`.

use super::error::Source;
use super::file::LeasesView;
use super::ConfigError;
use crate::rules::LeasePolicy;
use std::time::Duration;
use toml::Spanned;

pub(crate) fn leases(src: &Source, v: LeasesView, errors: &mut Vec<ConfigError>) -> LeasePolicy {
    let mut p = LeasePolicy::default();
    if let Some(e) = v.enabled {
        p.by_default = e;
    }
    let ms = Duration::from_millis;
    if let Some(d) = duration(
        src,
        v.ttl.as_ref(),
        "leases.ttl",
        ms(100),
        ms(3_600_000),
        errors,
    ) {
        p.ttl = d;
    }
    if let Some(s) = v.max_slice {
        let x = *s.get_ref();
        if x > 0.0 && x <= 1.0 {
            p.max_slice = x;
        } else {
            errors.push(src.error(
                s.span().start,
                "leases.max_slice",
                format!("{x}: a fraction of the limit, above 0 and at most 1"),
            ));
        }
    }
    if let Some(n) = v.first_slice {
        match *n.get_ref() {
            0 => errors.push(src.error(n.span().start, "leases.first_slice", "at least 1")),
            x => p.first_slice = x,
        }
    }
    let beat = "leases.heartbeat";
    if let Some(d) = duration(
        src,
        v.heartbeat.as_ref(),
        beat,
        ms(100),
        ms(600_000),
        errors,
    ) {
        p.heartbeat = d;
    }
    let evict_at = v.evict_after.as_ref().map(|e| e.span().start);
    let evict = "leases.evict_after";
    if let Some(d) = duration(
        src,
        v.evict_after.as_ref(),
        evict,
        ms(300),
        ms(3_600_000),
        errors,
    ) {
        p.evict_after = d;
    }
    if p.evict_after < p.heartbeat * 2 {
        errors.push(src.error(
            evict_at.unwrap_or(0),
            evict,
            format!(
                "{}: at least twice the heartbeat ({}), or live instances are evicted between beats",
                humantime::format_duration(p.evict_after),
                humantime::format_duration(p.heartbeat)
            ),
        ));
    }
    p
}

/// An optional duration between `min` and `max`; out of range or
/// unreadable, an error naming the range (also for `[marketplace]`).
pub(super) fn duration(
    src: &Source,
    v: Option<&Spanned<String>>,
    field: &str,
    min: Duration,
    max: Duration,
    errors: &mut Vec<ConfigError>,
) -> Option<Duration> {
    let v = v?;
    match humantime::parse_duration(v.get_ref().trim()) {
        Ok(d) if d >= min && d <= max => Some(d),
        _ => {
            errors.push(src.error(
                v.span().start,
                field,
                format!(
                    "`{}`: a duration between {} and {}",
                    v.get_ref(),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;
    use std::time::Duration;

    #[test]
    fn defaults_and_values() {
        let c = parse_str("t.toml", "").unwrap();
        assert!(!c.leases.by_default);
        let c = parse_str(
            "t.toml",
            "[leases]\nenabled = true\nttl = \"1s\"\nmax_slice = 0.5\nheartbeat = \"1s\"\nevict_after = \"3s\"\n\n[[rule]]\ndomain = \"d\"\nmatch = [\"k\"]\nlimit = { requests = 1, per = \"second\" }\n\n[[rule]]\ndomain = \"d\"\nmatch = [\"j\"]\nlimit = { requests = 1, per = \"second\" }\nlease = false\n",
        )
        .unwrap();
        assert!(c.leases.by_default);
        assert_eq!(c.leases.ttl, Duration::from_secs(1));
        assert_eq!(c.leases.max_slice, 0.5);
        let leases: Vec<bool> = c.rules.rules.iter().map(|r| r.lease).collect();
        assert_eq!(leases, [true, false], "the default, and a rule's own");
    }

    #[test]
    fn bad_values_are_located() {
        let e = parse_str(
            "t.toml",
            "[leases]\nttl = \"1ms\"\nmax_slice = 2.0\nfirst_slice = 0\nheartbeat = \"10s\"\nevict_after = \"15s\"\n",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "t.toml:2: leases.ttl: `1ms`",
            "t.toml:3: leases.max_slice: 2",
            "t.toml:4: leases.first_slice: at least 1",
            "t.toml:6: leases.evict_after: 15s: at least twice the heartbeat",
        ] {
            assert!(e.contains(want), "no `{want}` in\n{e}");
        }
    }
}
