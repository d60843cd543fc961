//! A client-controlled value with a newline cannot forge a log line
//! (issue 18, defect 4): the real binary, a query value with `%0A` sent to
//! the HTTP check API on the admin listener, which logs the refused value.

use tollgate_testkit::Tollgate;

const CONFIG: &str = r#"
[server]
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
log_format = "LOG_FORMAT"

[[rule]]
domain = "edge"
match = ["tenant"]
limit = { requests = 5, per = "minute" }
"#;

/// `hits` is echoed in the "invalid HTTP check" log line when it is not a
/// number; its value here holds a newline, a carriage return and an ESC,
/// then what would pass for a log line of its own.
const FORGED: &str = "/check?domain=edge&descriptor=tenant=a&hits=1%0D%0A2026-01-01T00:00:00Z%20ERROR%20forged%1B[2K";

fn send_forged(log_format: &str) -> Tollgate {
    let tollgate = Tollgate::start(
        env!("CARGO_BIN_EXE_tollgate"),
        &CONFIG.replace("LOG_FORMAT", log_format),
    );
    let (status, body) = tollgate.admin_get(FORGED);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("is not a number"), "{body}");
    // The log line is written before the answer; give the writer a moment
    // to reach the file.
    std::thread::sleep(std::time::Duration::from_millis(200));
    tollgate
}

#[test]
fn a_newline_in_a_query_value_stays_inside_its_log_line() {
    let tollgate = send_forged("human");
    let log = tollgate.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("forged")).collect();
    assert_eq!(lines.len(), 1, "the value was not logged once:\n{log}");
    assert!(
        lines[0].contains("invalid HTTP check") && lines[0].contains(r"1\r\n2026-01-01"),
        "the value left its line:\n{log}"
    );
    assert!(!log.contains('\u{1b}'), "a raw ESC reached the log:\n{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "a forged line:\n{log}"
    );
}

#[test]
fn json_lines_stay_one_object_each() {
    let tollgate = send_forged("json");
    let log = tollgate.log_text();
    let mut forged = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}\n{log}"));
        forged += usize::from(v.to_string().contains("forged"));
    }
    assert_eq!(forged, 1, "{log}");
}
