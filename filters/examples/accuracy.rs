//! How far bytes/4 is from a real tokenizer: prints, per sample, the
//! o200k_base count (ground truth for gpt-4o and later), cl100k_base, and
//! bytes/4, and the relative error of bytes/4.
//! `cargo run --release -p tollgate-filters --example accuracy`

use tollgate_filters::Estimator;

const SAMPLES: &[(&str, &str)] = &[
    ("english prose", "The committee met on Tuesday to discuss the budget for next year. After a long debate, members agreed to postpone the vote until the finance office could provide updated figures for the third quarter, which had been delayed by the migration to a new accounting system."),
    ("short question", "What is the capital of Australia, and why isn't it Sydney?"),
    ("support email", "Hi team, since this morning our dashboard shows 'Error 502: bad gateway' whenever we open the billing page. We haven't changed anything on our side. Could you take a look? Thanks, Maria"),
    ("rust code", "fn main() {\n    let v: Vec<u64> = (1..=10).map(|x| x * x).collect();\n    for (i, x) in v.iter().enumerate() {\n        println!(\"{i}: {x}\");\n    }\n}\n"),
    ("python code", "import json\n\ndef load(path):\n    with open(path) as f:\n        data = json.load(f)\n    return {k: v for k, v in data.items() if v is not None}\n"),
    ("json payload", "{\"user_id\": 48213, \"items\": [{\"sku\": \"A-1042\", \"qty\": 2, \"price\": 19.99}, {\"sku\": \"B-77\", \"qty\": 1, \"price\": 5.5}], \"currency\": \"EUR\", \"coupon\": null}"),
    ("numbers", "3.14159 2.71828 1.41421 1.73205 6.02214e23 299792458 0.000001 123456789 987654321 42"),
    ("chinese", "人工智能正在改变我们的工作方式。许多公司已经开始使用大型语言模型来回答客户的问题、撰写文档以及分析数据。"),
    ("japanese", "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。毎年多くの観光客が訪れます。"),
    ("german", "Die Bundesregierung hat am Mittwoch ein umfangreiches Maßnahmenpaket zur Förderung erneuerbarer Energien beschlossen."),
    ("markdown", "## Results\n\n| model | accuracy | latency |\n|---|---|---|\n| small | 71.2% | 120 ms |\n| large | 84.9% | 410 ms |\n\n* **Note**: figures are averages over 5 runs."),
    ("url and ids", "https://api.example.com/v1/orders/ord_8f3a2c91b7e44d0a?expand=customer&limit=50 request-id: 5d1f0c2e-7a8b-4c3d-9e0f-1a2b3c4d5e6f"),
];

fn main() {
    println!("| sample | bytes | o200k | cl100k | bytes/4 | bytes/4 error |");
    println!("|---|---|---|---|---|---|");
    let (mut sum, mut max) = (0.0f64, 0.0f64);
    for (name, text) in SAMPLES {
        let truth = Estimator::O200k.count(text);
        let cl = Estimator::Cl100k.count(text);
        let quarter = Estimator::BytesPerFour.count(text);
        let err = (quarter as f64 - truth as f64) / truth as f64;
        sum += err.abs();
        max = max.max(err.abs());
        println!(
            "| {name} | {} | {truth} | {cl} | {quarter} | {:+.0}% |",
            text.len(),
            err * 100.0
        );
    }
    println!();
    println!(
        "bytes/4 vs o200k_base: mean absolute error {:.0}%, max {:.0}% over {} samples",
        sum / SAMPLES.len() as f64 * 100.0,
        max * 100.0,
        SAMPLES.len()
    );
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(24_000);
    for e in [Estimator::O200k, Estimator::Cl100k, Estimator::BytesPerFour] {
        let t = std::time::Instant::now();
        let _ = e.count("warm up");
        println!(
            "{}: first use (loads the vocabulary once) {:?}",
            e.as_str(),
            t.elapsed()
        );
        let t = std::time::Instant::now();
        let n = e.count(&text);
        let s = t.elapsed().as_secs_f64();
        println!(
            "{}: {n} tokens in {:.1} ms over {:.2} MB = {:.0} MB/s",
            e.as_str(),
            s * 1e3,
            text.len() as f64 / 1e6,
            text.len() as f64 / 1e6 / s
        );
    }
}
