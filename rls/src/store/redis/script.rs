//! The wire format of the Lua scripts: the arguments one counter takes
//! (`common.lua`'s `spec()`), take.lua's mode and reply, and the hash tag
//! that decides which cluster slot a key lives in.

use crate::rules::Algorithm;
use crate::store::arith::HitState;
use crate::store::{Counter, SettleOp, StoreError};
use redis::ScriptInvocation;

/// What take.lua does with its counters (its `ARGV[2]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Give the costs back (refunds; never denies).
    GiveBack = 0,
    /// Take all or nothing.
    Take = 1,
    /// Count each whatever its limit (envoyproxy/ratelimit's `INCRBY`).
    Count = 2,
}

/// The 7 values `common.lua`'s `spec()` reads for one counter.
pub(super) fn push_spec(
    call: &mut ScriptInvocation<'_>,
    counter: &Counter,
    cost: u64,
    flag: &str,
    now_ms: u64,
) {
    let (algorithm, amount, ticks, tick_ms, anchor) = match counter {
        // A window's length is this window's (a calendar month is 28 to 31
        // days): the script reads `ticks * tick_ms` as the length.
        Counter::Rate(l) => match l.algorithm {
            Algorithm::FixedWindow => {
                let (start, end) = l.window(now_ms);
                (0, l.amount, 1, end - start, start)
            }
            Algorithm::TokenBucket => (
                1,
                l.amount,
                l.period.ticks(),
                l.period.tick_millis(),
                now_ms / l.period.tick_millis(),
            ),
        },
        Counter::Slots { max } => (2, *max, 1, 1, 0),
    };
    call.arg(algorithm)
        .arg(amount)
        .arg(ticks)
        .arg(tick_ms)
        .arg(cost)
        .arg(flag)
        .arg(anchor);
}

/// The hash tag of a key (`{...}`), which decides its cluster slot.
pub(super) fn tag(key: &str) -> &str {
    key.find('{')
        .and_then(|start| {
            let rest = &key[start + 1..];
            rest.find('}').map(|end| &rest[..end])
        })
        .filter(|t| !t.is_empty())
        .unwrap_or(key)
}

/// A state for a hit whose slot was never asked (an earlier one denied).
pub(super) const UNKNOWN: HitState = HitState {
    over: false,
    remaining: 0,
    reset_after_ms: 0,
    retry_after_ms: 0,
};

/// The key a settle step is sent with (its slot decides where it runs).
pub(super) fn op_key(op: &SettleOp) -> &str {
    match op {
        SettleOp::Refund { key, .. }
        | SettleOp::Charge { key, .. }
        | SettleOp::Release { key, .. } => key,
    }
}

/// take.lua's reply: the admitted flag, then 4 values per counter.
pub(super) fn parse_states(reply: &[i64], n: usize) -> Result<Vec<HitState>, StoreError> {
    if reply.len() != 1 + 4 * n {
        return Err(StoreError::Protocol(format!(
            "take.lua returned {} values for {n} counters",
            reply.len()
        )));
    }
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(reply[1..]
        .chunks_exact(4)
        .map(|c| HitState {
            over: c[0] == 1,
            remaining: u(c[1]),
            reset_after_ms: u(c[2]),
            retry_after_ms: u(c[3]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::tag;

    #[test]
    fn hash_tags() {
        assert_eq!(tag("tg:{abc}:minute:x"), "abc");
        assert_eq!(
            tag("tg:{}:x"),
            "tg:{}:x",
            "an empty tag hashes the whole key"
        );
        assert_eq!(tag("plain"), "plain");
    }
}
