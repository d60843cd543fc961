//! `mock-llm [--listen 127.0.0.1:8080] [--no-record]`: the test suite's
//! mock LLM upstream (OpenAI and Anthropic, JSON and SSE, steered by
//! `x-mock-*` headers; see `tests/support/mock_llm.rs`), for demos and
//! benchmarks. `--no-record` keeps no copy of the requests (the tests
//! read them; a long benchmark would only grow).

#![forbid(unsafe_code)]

fn main() {
    let mut listen = "127.0.0.1:8080".to_string();
    let mut record = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => match args.next() {
                Some(addr) => listen = addr,
                None => usage("--listen needs an address"),
            },
            "--no-record" => record = false,
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let mock = if record {
        tollgate_testkit::MockLlm::start_on(&listen)
    } else {
        tollgate_testkit::MockLlm::start_unrecorded(&listen)
    };
    eprintln!("mock-llm listening on {}", mock.url());
    loop {
        std::thread::park();
    }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("mock-llm: {problem}");
    }
    eprintln!("usage: mock-llm [--listen ADDR] [--no-record]   (default 127.0.0.1:8080)");
    std::process::exit(if problem.is_empty() { 0 } else { 2 });
}
