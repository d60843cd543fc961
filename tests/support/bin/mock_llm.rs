//! `mock-llm --listen 127.0.0.1:8080`: the test suite's mock LLM upstream,
//! for demos and benchmarks.

fn main() {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:8080".to_string();
    while let Some(a) = args.next() {
        if a == "--listen" {
            listen = args.next().unwrap_or(listen);
        }
    }
    let mock = tollgate_testkit::MockLlm::start_on(&listen);
    eprintln!("mock-llm listening on 127.0.0.1:{}", mock.port());
    loop {
        std::thread::park();
    }
}
