//! What a run measured: answers by kind and latency histograms, merged
//! from every worker, printed as a human table or one JSON line.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::time::Duration;

/// One worker's (or, merged, the whole run's) counts and latencies.
pub struct Tally {
    /// Request to last byte, in microseconds.
    pub latency: Histogram<u64>,
    /// Request to first body byte, in microseconds (HTTP `--first-byte`).
    pub first_byte: Histogram<u64>,
    /// Answers that allowed the request.
    pub ok: u64,
    /// Rate limit denials (OVER_LIMIT, HTTP 429).
    pub denied: u64,
    /// Transport errors and any other status.
    pub errors: u64,
    /// Answers the client dropped after their first body bytes on purpose
    /// (`http --abort-fraction`): a client gone mid-stream.
    pub aborted: u64,
    /// Every request sent, warm-up included (for CPU time per request).
    pub sent_total: u64,
}

fn histogram() -> Histogram<u64> {
    // Three significant digits, auto-resizing: exact enough for p99.9.
    Histogram::new(3).unwrap_or_else(|e| panic!("histogram: {e}"))
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Denied,
    Error,
    /// Dropped by the client after the first body bytes, on purpose.
    Aborted,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            latency: histogram(),
            first_byte: histogram(),
            ok: 0,
            denied: 0,
            errors: 0,
            aborted: 0,
            sent_total: 0,
        }
    }

    /// Counts a request; only measured ones enter the figures.
    pub fn record(&mut self, measured: bool, outcome: Outcome, latency: Duration) {
        self.sent_total += 1;
        if !measured {
            return;
        }
        let _ = self.latency.record(micros(latency));
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Denied => self.denied += 1,
            Outcome::Error => self.errors += 1,
            Outcome::Aborted => self.aborted += 1,
        }
    }

    pub fn record_first_byte(&mut self, measured: bool, latency: Duration) {
        if measured {
            let _ = self.first_byte.record(micros(latency));
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        let _ = self.latency.add(&other.latency);
        let _ = self.first_byte.add(&other.first_byte);
        self.ok += other.ok;
        self.denied += other.denied;
        self.errors += other.errors;
        self.aborted += other.aborted;
        self.sent_total += other.sent_total;
    }

    /// The workers' tallies, merged once each has finished: one set of
    /// figures per run, whatever the number of connections.
    pub async fn gather(workers: Vec<tokio::task::JoinHandle<Tally>>) -> anyhow::Result<Tally> {
        let mut all = Tally::new();
        for w in workers {
            all.merge(&w.await?);
        }
        Ok(all)
    }

    pub fn measured(&self) -> u64 {
        self.ok + self.denied + self.errors + self.aborted
    }

    /// The figures as one JSON object; `settings` (what was asked) is
    /// copied in.
    pub fn to_json(&self, measured: Duration, settings: Value) -> Value {
        let mut v = json!({
            "requests": self.measured(),
            "seconds": measured.as_secs_f64(),
            "requests_per_second": self.measured() as f64 / measured.as_secs_f64(),
            "ok": self.ok,
            "denied": self.denied,
            "errors": self.errors,
            "aborted": self.aborted,
            "sent_total": self.sent_total,
            "latency_ms": percentiles(&self.latency),
        });
        if !self.first_byte.is_empty() {
            v["first_byte_ms"] = percentiles(&self.first_byte);
        }
        if let (Value::Object(out), Value::Object(s)) = (&mut v, settings) {
            out.extend(s);
        }
        v
    }

    /// The figures for a person.
    pub fn print(&self, measured: Duration) {
        let rps = self.measured() as f64 / measured.as_secs_f64();
        println!(
            "{} requests in {:?}: {rps:.0} req/s (ok {}, denied {}, errors {}, aborted {})",
            self.measured(),
            measured,
            self.ok,
            self.denied,
            self.errors,
            self.aborted
        );
        print_line("latency", &self.latency);
        if !self.first_byte.is_empty() {
            print_line("first byte", &self.first_byte);
        }
    }
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "p50": ms(h, 0.5), "p90": ms(h, 0.9), "p99": ms(h, 0.99), "p999": ms(h, 0.999),
        "max": h.max() as f64 / 1000.0,
    })
}

fn print_line(what: &str, h: &Histogram<u64>) {
    println!(
        "{what} ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        ms(h, 0.5),
        ms(h, 0.9),
        ms(h, 0.99),
        ms(h, 0.999),
        h.max() as f64 / 1000.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_is_sent_but_not_measured() {
        let mut a = Tally::new();
        a.record(false, Outcome::Ok, Duration::from_millis(50));
        a.record(true, Outcome::Ok, Duration::from_millis(1));
        let mut b = Tally::new();
        b.record(true, Outcome::Denied, Duration::from_millis(3));
        a.merge(&b);
        let v = a.to_json(Duration::from_secs(1), json!({"id": "x"}));
        assert_eq!(v["requests"], 2);
        assert_eq!(v["sent_total"], 3);
        assert_eq!(v["denied"], 1);
        assert_eq!(v["id"], "x");
        assert!(v["latency_ms"]["max"].as_f64().unwrap_or(0.0) < 4.0);
        assert!(v.get("first_byte_ms").is_none());
    }
}
