//! `tollgate-load report`: turns the results `scripts/bench.sh` collects
//! (one JSON line per scenario) and Criterion's estimates into the
//! markdown tables of `docs/benchmarks.md`: figures per scenario, the
//! ratios the benchmark issue asks for, each target met or not.
//!
//! A result line: `{"id", "group", "title", "load", "cpu": {process:
//! seconds}, "result": {...}}`, where `result` is `tollgate-load --json`'s
//! object (wrk's and redis-benchmark's output are converted to the same
//! shape by the script).

use anyhow::Context;
use clap::Args;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// `tollgate-load report`: where the results are.
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// The scenario results, one JSON object per line.
    #[arg(long)]
    pub results: PathBuf,
    /// Criterion's output directory (`target/criterion`), if benches ran.
    #[arg(long)]
    pub criterion: Option<PathBuf>,
}

/// One scenario's line.
struct Row {
    id: String,
    group: String,
    title: String,
    load: String,
    cpu: Vec<(String, f64)>,
    r: Value,
}

impl Row {
    fn rps(&self) -> Option<f64> {
        self.r["requests_per_second"].as_f64()
    }

    fn latency(&self, p: &str) -> Option<f64> {
        self.r["latency_ms"][p].as_f64()
    }

    fn first_byte(&self, p: &str) -> Option<f64> {
        self.r["first_byte_ms"][p].as_f64()
    }

    /// CPU time per request of each watched process, in microseconds.
    fn cpu_per_request(&self) -> String {
        let sent = self.r["sent_total"].as_f64().unwrap_or(0.0);
        if sent <= 0.0 || self.cpu.is_empty() {
            return "–".into();
        }
        self.cpu
            .iter()
            .map(|(name, secs)| format!("{name} {:.0}", secs * 1e6 / sent))
            .collect::<Vec<_>>()
            .join(" · ")
    }

    fn not_ok(&self) -> u64 {
        self.r["denied"].as_u64().unwrap_or(0) + self.r["errors"].as_u64().unwrap_or(0)
    }
}

/// Prints the report to stdout.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.results)
        .with_context(|| format!("cannot read {}", args.results.display()))?;
    let rows = parse(&text)?;
    let mut out = String::new();
    figures(&mut out, &rows);
    first_bytes(&mut out, &rows);
    targets(&mut out, &rows);
    if let Some(dir) = &args.criterion {
        criterion(&mut out, dir)?;
    }
    print!("{out}");
    Ok(())
}

fn parse(text: &str) -> anyhow::Result<Vec<Row>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let v: Value =
                serde_json::from_str(line).with_context(|| format!("results line {}", i + 1))?;
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            let cpu = v["cpu"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, s)| s.as_f64().map(|s| (k.clone(), s)))
                        .collect()
                })
                .unwrap_or_default();
            Ok(Row {
                id: s("id"),
                group: s("group"),
                title: s("title"),
                load: s("load"),
                cpu,
                r: v["result"].clone(),
            })
        })
        .collect()
}

fn num(x: Option<f64>, decimals: usize) -> String {
    match x {
        Some(x) => format!("{x:.decimals$}"),
        None => "–".into(),
    }
}

fn figures(out: &mut String, rows: &[Row]) {
    let mut groups: Vec<&str> = Vec::new();
    for r in rows {
        if !groups.contains(&r.group.as_str()) {
            groups.push(&r.group);
        }
    }
    for g in groups {
        let _ = writeln!(out, "#### {g}\n");
        let _ = writeln!(
            out,
            "| scenario | load | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | not 2xx/OK | CPU µs per request |"
        );
        let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|---|");
        for r in rows.iter().filter(|r| r.group == g) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.title,
                r.load,
                num(r.rps(), 0),
                num(r.latency("p50"), 3),
                num(r.latency("p90"), 3),
                num(r.latency("p99"), 3),
                num(r.latency("p999"), 3),
                r.not_ok(),
                r.cpu_per_request()
            );
        }
        out.push('\n');
    }
}

fn first_bytes(out: &mut String, rows: &[Row]) {
    let with: Vec<&Row> = rows
        .iter()
        .filter(|r| r.first_byte("p50").is_some())
        .collect();
    if with.is_empty() {
        return;
    }
    let _ = writeln!(out, "#### Time to the first streamed byte\n");
    let _ = writeln!(
        out,
        "| scenario | p50 ms | p90 ms | p99 ms | p99.9 ms | last byte p50 ms |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|");
    for r in with {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.title,
            num(r.first_byte("p50"), 3),
            num(r.first_byte("p90"), 3),
            num(r.first_byte("p99"), 3),
            num(r.first_byte("p999"), 3),
            num(r.latency("p50"), 3),
        );
    }
    out.push('\n');
}

/// A target: how it is measured and when it is met.
struct Target {
    name: &'static str,
    measured: Option<f64>,
    unit: &'static str,
    goal: &'static str,
    met: fn(f64) -> bool,
}

fn targets(out: &mut String, rows: &[Row]) {
    let get = |id: &str| rows.iter().find(|r| r.id == id);
    let ratio = |a: &str, b: &str| Some(get(a)?.rps()? / get(b)?.rps()?);
    let lat_ratio = |a: &str, b: &str, p: &str| Some(get(a)?.latency(p)? / get(b)?.latency(p)?);
    let lat_diff = |a: &str, b: &str, p: &str| Some(get(a)?.latency(p)? - get(b)?.latency(p)?);
    let fb_diff = |a: &str, b: &str, p: &str| Some(get(a)?.first_byte(p)? - get(b)?.first_byte(p)?);
    let list = [
        Target {
            name: "Envoy + tollgate (memory) / Envoy alone, max req/s (wrk, 32 connections)",
            measured: ratio("envoy-memory-max", "envoy-alone-max"),
            unit: "",
            goal: "≥ 0.75",
            met: |x| x >= 0.75,
        },
        Target {
            name: "Envoy + tollgate (Redis) / Envoy alone, max req/s (wrk, 32 connections)",
            measured: ratio("envoy-redis-max", "envoy-alone-max"),
            unit: "",
            goal: "≥ 0.60",
            met: |x| x >= 0.60,
        },
        Target {
            name: "Direct gRPC, memory store, decisions/s",
            measured: get("grpc-memory-max").and_then(Row::rps),
            unit: "/s",
            goal: "≥ 50,000",
            met: |x| x >= 50_000.0,
        },
        Target {
            name: "Direct gRPC, Redis store / redis-benchmark (same script, same concurrency)",
            measured: ratio("grpc-redis-max", "redis-benchmark"),
            unit: "",
            goal: "≥ 0.70",
            met: |x| x >= 0.70,
        },
        Target {
            name: "ext_proc added latency at 500 req/s, p50 (JSON)",
            measured: lat_diff("llm-json-ext-proc-500", "llm-json-alone-500", "p50"),
            unit: " ms",
            goal: "≤ 0.5 ms",
            met: |x| x <= 0.5,
        },
        Target {
            name: "ext_proc added latency at 500 req/s, p99 (JSON)",
            measured: lat_diff("llm-json-ext-proc-500", "llm-json-alone-500", "p99"),
            unit: " ms",
            goal: "≤ 2 ms",
            met: |x| x <= 2.0,
        },
        Target {
            name: "ext_proc added time to first SSE byte at 500 req/s, p50",
            measured: fb_diff("llm-sse-ext-proc-500", "llm-sse-alone-500", "p50"),
            unit: " ms",
            goal: "not measurable (≤ 0.5 ms: within the request-side budget)",
            met: |x| x <= 0.5,
        },
    ];
    let _ = writeln!(out, "#### Targets\n");
    let _ = writeln!(out, "| target | measured | goal | met |");
    let _ = writeln!(out, "|---|--:|---|---|");
    for t in &list {
        let (value, met) = match t.measured {
            Some(x) if t.unit == "/s" => (format!("{x:.0}{}", t.unit), (t.met)(x)),
            Some(x) => (format!("{x:.2}{}", t.unit), (t.met)(x)),
            None => ("not run".into(), false),
        };
        let _ = writeln!(
            out,
            "| {} | {value} | {} | {} |",
            t.name,
            t.goal,
            if met { "yes" } else { "**no**" }
        );
    }
    out.push('\n');

    let _ = writeln!(out, "#### Other ratios\n");
    let _ = writeln!(out, "| ratio | p50 | p99 |");
    let _ = writeln!(out, "|---|--:|--:|");
    for (name, a, b) in [
        (
            "Envoy + tollgate (memory) latency / Envoy alone, 1,000 req/s",
            "envoy-memory-1000",
            "envoy-alone-1000",
        ),
        (
            "Envoy + tollgate (Redis) latency / Envoy alone, 1,000 req/s",
            "envoy-redis-1000",
            "envoy-alone-1000",
        ),
        (
            "Envoy + ext_proc latency / Envoy alone, JSON, 500 req/s",
            "llm-json-ext-proc-500",
            "llm-json-alone-500",
        ),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {} | {} |",
            num(lat_ratio(a, b, "p50"), 2),
            num(lat_ratio(a, b, "p99"), 2)
        );
    }
    let fb_ratio = |p: &str| {
        Some(
            get("llm-sse-ext-proc-500")?.first_byte(p)?
                / get("llm-sse-alone-500")?.first_byte(p)?,
        )
    };
    let _ = writeln!(
        out,
        "| time to first SSE byte, with ext_proc / without, 500 req/s | {} | {} |",
        num(fb_ratio("p50"), 2),
        num(fb_ratio("p99"), 2)
    );
    let _ = writeln!(
        out,
        "| tollgate (Redis) / redis-benchmark, throughput at the same concurrency | {} | |",
        num(ratio("grpc-redis-max", "redis-benchmark"), 2)
    );
    out.push('\n');
    ext_proc_split(out, rows);
}

/// The ext_proc latency targets split in two with the null server's runs:
/// what any ext_proc service costs on this Envoy configuration, and what
/// tollgate's own work adds on top.
fn ext_proc_split(out: &mut String, rows: &[Row]) {
    let get = |id: &str| rows.iter().find(|r| r.id == id);
    if get("llm-json-null-500").is_none() {
        return;
    }
    let lat = |a: &str, b: &str, p: &str| Some(get(a)?.latency(p)? - get(b)?.latency(p)?);
    let fb = |a: &str, b: &str, p: &str| Some(get(a)?.first_byte(p)? - get(b)?.first_byte(p)?);
    let _ = writeln!(
        out,
        "#### Where ext_proc's added latency goes, 500 req/s
"
    );
    let _ = writeln!(out, "| added | p50 ms | p99 ms |");
    let _ = writeln!(out, "|---|--:|--:|");
    type Diff<'a> = &'a dyn Fn(&str, &str, &str) -> Option<f64>;
    let lines: [(&str, Diff, &str, &str); 4] = [
        (
            "JSON: Envoy's ext_proc with a server that does nothing (null server − Envoy alone)",
            &lat,
            "llm-json-null-500",
            "llm-json-alone-500",
        ),
        (
            "JSON: tollgate's own work (tollgate − null server)",
            &lat,
            "llm-json-ext-proc-500",
            "llm-json-null-500",
        ),
        (
            "SSE first byte: null server − Envoy alone",
            &fb,
            "llm-sse-null-500",
            "llm-sse-alone-500",
        ),
        (
            "SSE first byte: tollgate − null server",
            &fb,
            "llm-sse-ext-proc-500",
            "llm-sse-null-500",
        ),
    ];
    for (name, diff, a, b) in lines {
        let _ = writeln!(
            out,
            "| {name} | {} | {} |",
            num(diff(a, b, "p50"), 3),
            num(diff(a, b, "p99"), 3)
        );
    }
    out.push('\n');
}

/// Criterion's mean time per iteration and throughput, per benchmark.
fn criterion(out: &mut String, dir: &Path) -> anyhow::Result<()> {
    let mut found = Vec::new();
    collect_estimates(dir, &mut found)?;
    if found.is_empty() {
        return Ok(());
    }
    found.sort();
    let _ = writeln!(out, "#### Criterion (hot functions)\n");
    let _ = writeln!(out, "| benchmark | mean time | throughput |");
    let _ = writeln!(out, "|---|--:|--:|");
    for (name, new_dir) in found {
        let read = |f: &str| -> anyhow::Result<Value> {
            let p = new_dir.join(f);
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
            Ok(serde_json::from_str(&text)?)
        };
        let est = read("estimates.json")?;
        let bench = read("benchmark.json")?;
        let Some(ns) = est["mean"]["point_estimate"].as_f64() else {
            continue;
        };
        let throughput = match &bench["throughput"] {
            Value::Object(m) => match (m.get("Bytes"), m.get("Elements")) {
                (Some(b), _) => b
                    .as_f64()
                    .map(|b| format!("{:.1} MiB/s", b / ns * 1e9 / (1 << 20) as f64)),
                (_, Some(e)) => e.as_f64().map(|e| format!("{:.0} /s", e / ns * 1e9)),
                _ => None,
            },
            _ => None,
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} |",
            duration(ns),
            throughput.unwrap_or_else(|| "–".into())
        );
    }
    out.push('\n');
    Ok(())
}

/// Finds `<group>/<bench>/new/estimates.json` below `dir`.
fn collect_estimates(dir: &Path, found: &mut Vec<(String, PathBuf)>) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        if !p.is_dir() || p.file_name().is_some_and(|n| n == "report") {
            continue;
        }
        let new = p.join("new");
        if new.join("estimates.json").is_file() && new.join("benchmark.json").is_file() {
            let bench: Value = serde_json::from_str(
                &std::fs::read_to_string(new.join("benchmark.json")).unwrap_or_default(),
            )
            .unwrap_or(Value::Null);
            let name = bench["full_id"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| p.display().to_string());
            found.push((name, new));
        } else {
            collect_estimates(&p, found)?;
        }
    }
    Ok(())
}

fn duration(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: &str = r#"
{"id":"envoy-alone-max","group":"g","title":"alone","load":"wrk","cpu":{},"result":{"requests_per_second":1000.0,"latency_ms":{"p50":1.0,"p99":2.0},"sent_total":10}}
{"id":"envoy-memory-max","group":"g","title":"mem","load":"wrk","cpu":{"tollgate":0.001},"result":{"requests_per_second":800.0,"latency_ms":{"p50":1.5,"p99":2.5},"sent_total":10,"denied":1}}
"#;

    #[test]
    fn figures_and_targets_from_result_lines() {
        let rows = parse(LINES).unwrap();
        let mut out = String::new();
        figures(&mut out, &rows);
        targets(&mut out, &rows);
        assert!(out.contains("| mem | wrk | 800 | 1.500 |"), "{out}");
        assert!(out.contains("tollgate 100"), "100 µs per request: {out}");
        assert!(out.contains("| 0.80 | ≥ 0.75 | yes |"), "{out}");
        assert!(out.contains("| not run |"), "{out}");
        assert!(
            !out.contains("Where ext_proc's"),
            "no null-server runs, no split: {out}"
        );
    }

    #[test]
    fn ext_proc_latency_is_split_at_the_null_server() {
        let line = |id: &str, p50: f64| {
            format!(
                r#"{{"id":"{id}","group":"g","title":"{id}","load":"l","cpu":{{}},"result":{{"requests_per_second":500.0,"latency_ms":{{"p50":{p50},"p99":{p50}}},"sent_total":10}}}}"#
            )
        };
        let lines = [
            line("llm-json-alone-500", 2.0),
            line("llm-json-null-500", 2.25),
            line("llm-json-ext-proc-500", 2.5),
        ]
        .join("\n");
        let rows = parse(&lines).unwrap();
        let mut out = String::new();
        targets(&mut out, &rows);
        assert!(
            out.contains("(null server − Envoy alone) | 0.250 | 0.250 |"),
            "{out}"
        );
        assert!(
            out.contains("(tollgate − null server) | 0.250 | 0.250 |"),
            "{out}"
        );
        assert!(
            out.contains("| SSE first byte: null server − Envoy alone | – | – |"),
            "{out}"
        );
    }
}
