//! What an error of the Redis client means for tollgate: the store is
//! down or unreachable (`Timeout`, `Unavailable`), refuses our credentials
//! (`Auth`), answers but cannot serve anyone (`Refused`: OOM, READONLY,
//! ...), or rejected what we sent (`Protocol`). The first four are outages
//! and open the circuit; the last is not.

use super::error::{Refusal, StoreError};
use redis::{ErrorKind, RedisError};
use std::time::Duration;

/// Whether Redis refused our credentials: a wrong password or ACL user
/// (`AUTH` failed), none given (`NOAUTH`), or a user without the rights
/// for `EVALSHA` (`NOPERM`). The messages never carry the password.
/// Redis also answers `ERR Protocol error: unauthenticated multibulk
/// length` (and closes the connection) to a client without credentials
/// that sends a long command, as a script call is.
pub(super) fn is_auth(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
        || (e.code() == Some("ERR") && e.detail().is_some_and(|d| d.contains("unauthenticated")))
}

/// The meaning of `e`, from a call bounded by `timeout`.
pub(super) fn classify(e: &RedisError, timeout: Duration) -> StoreError {
    if is_auth(e) {
        return StoreError::Auth(e.to_string());
    }
    if let Some(r) = refusal(e.code(), e.detail()) {
        return StoreError::Refused(r, e.to_string());
    }
    if e.is_timeout() {
        return StoreError::Timeout(timeout);
    }
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound | ErrorKind::InvalidClientConfig
        )
    {
        return StoreError::Unavailable(e.to_string());
    }
    StoreError::Protocol(e.to_string())
}

/// A store-side condition in an error reply: its own code, or (Redis
/// before 7 wraps the error of a command a script called in `ERR Error
/// running script ...: -OOM command not allowed ...`) the code inside.
fn refusal(code: Option<&str>, detail: Option<&str>) -> Option<Refusal> {
    let code = code?;
    if let Some(r) = Refusal::from_code(code) {
        return Some(r);
    }
    if code != "ERR" {
        return None;
    }
    detail?
        .split_whitespace()
        .filter_map(|word| word.strip_prefix('-'))
        .find_map(Refusal::from_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_side_codes_are_refusals() {
        assert_eq!(
            refusal(Some("OOM"), Some("command not allowed when used memory > 'maxmemory'. script: abc, on @user_script:1.")),
            Some(Refusal::OutOfMemory)
        );
        assert_eq!(refusal(Some("READONLY"), None), Some(Refusal::ReadOnly));
        assert_eq!(
            refusal(
                Some("ERR"),
                Some("Error running script (call to f_abc): @user_script:1: @user_script: 1: -OOM command not allowed")
            ),
            Some(Refusal::OutOfMemory),
            "wrapped by Redis 6"
        );
        assert_eq!(
            refusal(
                Some("ERR"),
                Some("user_script:7: attempt to compare nil with number")
            ),
            None,
            "a script bug is ours"
        );
        assert_eq!(
            refusal(Some("WRONGTYPE"), Some("Operation against a key")),
            None
        );
        assert_eq!(refusal(None, Some("-OOM")), None);
    }

    #[test]
    fn io_failures_are_outages_and_client_errors_are_not() {
        let t = Duration::from_millis(50);
        let io = |kind| RedisError::from(std::io::Error::new(kind, "x"));
        assert!(matches!(
            classify(&io(std::io::ErrorKind::ConnectionRefused), t),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            classify(&io(std::io::ErrorKind::TimedOut), t),
            StoreError::Timeout(_)
        ));
        let bad_reply = RedisError::from((ErrorKind::UnexpectedReturnType, "not a list"));
        assert!(matches!(classify(&bad_reply, t), StoreError::Protocol(_)));
        let auth = RedisError::from((ErrorKind::AuthenticationFailed, "nope"));
        assert!(matches!(classify(&auth, t), StoreError::Auth(_)));
    }
}
