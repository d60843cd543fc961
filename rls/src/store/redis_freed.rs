//! Capacity freed on one instance wakes the waiters of every instance:
//! a settle publishes the counters it gave back on one channel, and each
//! instance keeps one subscription to it, so waking costs one message per
//! settle, not a Redis round trip per waiter.
//!
//! Redis Cluster forwards `PUBLISH` to every node, so one subscription to
//! any node hears all of them. A lost message costs only latency: the head
//! of a line also wakes on its own timer.

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::mpsc;

/// The channel settles publish on.
pub const CHANNEL: &str = "tg:freed";

/// Longest pause between attempts to (re)subscribe while Redis is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Serialize, Deserialize)]
struct Message<'a> {
    /// The publishing instance, which has woken its own waiters already.
    from: &'a str,
    #[serde(borrow)]
    keys: Vec<std::borrow::Cow<'a, str>>,
}

/// The message announcing `keys` from instance `from`.
pub fn encode(from: &str, keys: &[String]) -> Result<String, serde_json::Error> {
    let m = Message {
        from,
        keys: keys.iter().map(|k| k.as_str().into()).collect(),
    };
    serde_json::to_string(&m)
}

/// The keys of a message from another instance; `None` for our own
/// messages and for anything unreadable.
pub fn decode(payload: &[u8], me: &str) -> Option<Vec<String>> {
    let m: Message<'_> = serde_json::from_slice(payload).ok()?;
    (m.from != me).then(|| m.keys.into_iter().map(|k| k.into_owned()).collect())
}

/// Whether a message is this instance's own (which `decode` skips).
fn is_own(payload: &[u8], me: &str) -> bool {
    serde_json::from_slice::<Message<'_>>(payload).is_ok_and(|m| m.from == me)
}

/// Subscribes (and resubscribes after any failure, trying the clients in
/// turn) and forwards other instances' freed keys until the receiver is
/// dropped.
pub fn subscribe(
    clients: Vec<redis::Client>,
    me: String,
    connect_timeout: Duration,
) -> mpsc::Receiver<Vec<String>> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        for client in clients.iter().cycle() {
            if tx.is_closed() {
                return;
            }
            let connected = tokio::time::timeout(connect_timeout, async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(CHANNEL).await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            match connected {
                Ok(Ok(mut pubsub)) => {
                    tracing::debug!("subscribed to {CHANNEL}");
                    backoff = Duration::from_millis(100);
                    let mut messages = pubsub.on_message();
                    loop {
                        let msg = tokio::select! {
                            msg = messages.next() => msg,
                            // The listener stopped (shutdown): so do we.
                            _ = tx.closed() => return,
                        };
                        let Some(msg) = msg else { break };
                        let keys = decode(msg.get_payload_bytes(), &me);
                        if keys.is_none() && !is_own(msg.get_payload_bytes(), &me) {
                            tracing::debug!("an unreadable message on {CHANNEL}: ignored");
                        }
                        if let Some(keys) = keys {
                            // A full queue drops the wake: the heads' own
                            // timers still fire.
                            if tx.try_send(keys).is_err() && tx.is_closed() {
                                return;
                            }
                        }
                    }
                    tracing::debug!("{CHANNEL} subscription ended; resubscribing");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot subscribe to {CHANNEL}"),
                Err(_) => tracing::debug!("subscribing to {CHANNEL} timed out"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = tx.closed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_own_messages_are_skipped() {
        let keys = vec!["tg:{q}:c:a%3Ab".to_string(), "x\ny \"z\"".to_string()];
        let m = encode("me", &keys).unwrap();
        assert_eq!(decode(m.as_bytes(), "other"), Some(keys));
        assert_eq!(decode(m.as_bytes(), "me"), None);
        assert_eq!(decode(b"not json", "other"), None);
    }
}
