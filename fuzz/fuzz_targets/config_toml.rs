//! The config loader on any text: never panics, and every error it reports
//! points at a line of the text it was given (1 to the number of lines),
//! with a field.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Err(errors) = tollgate::config::parse_str("fuzz.toml", text) else {
        return;
    };
    let lines = text.lines().count().max(1);
    assert!(!errors.0.is_empty(), "an Err with no error");
    for e in &errors.0 {
        assert_eq!(e.file, "fuzz.toml", "{e}");
        assert!(
            e.line >= 1 && e.line <= lines,
            "line {} of {lines}: {e}",
            e.line
        );
        assert!(!e.field.is_empty(), "{e}");
    }
});
