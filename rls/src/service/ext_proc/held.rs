//! One bound on the request bodies the ext_proc service holds, all streams
//! together (`[llm] max_buffered_bytes`). A body is held from the moment
//! its message is read off the stream until admission is done with it,
//! however long the request waits for capacity; a body that would pass the
//! bound is not kept: its request is answered 503 with `retry-after` at
//! once, counted (`tollgate_llm_requests_total{outcome="overloaded"}`) and
//! logged once, then as a summary. Memory then stays near the bound
//! whatever the number of waiting requests.

use super::reply;
use crate::repeated::Repeats;
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse;
use prometheus::IntGauge;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tollgate_filters::{self as filters, ErrorKind, Provider};

/// The bytes held now, and what to report.
pub(super) struct BodyBytes {
    held: AtomicUsize,
    gauge: IntGauge,
    refusals: Repeats,
}

/// Bytes of one body counted while it is held; given back on drop.
pub(super) struct Hold {
    bytes: usize,
    owner: Arc<BodyBytes>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.owner.held.fetch_sub(self.bytes, Ordering::AcqRel);
        self.owner.gauge.sub(self.bytes as i64);
    }
}

/// A body that would pass the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Over {
    pub held: usize,
    pub bytes: usize,
    pub limit: usize,
}

impl BodyBytes {
    pub fn new(gauge: IntGauge) -> Arc<BodyBytes> {
        Arc::new(BodyBytes {
            held: AtomicUsize::new(0),
            gauge,
            refusals: Repeats::new(Duration::from_secs(30)),
        })
    }

    /// Counts `bytes` against `limit`, or refuses them. A body over
    /// `max_body` is not counted: admission refuses it (413) at once, and it
    /// never waits.
    pub fn hold(
        self: &Arc<Self>,
        bytes: usize,
        limit: usize,
        max_body: usize,
    ) -> Result<Option<Hold>, Over> {
        if bytes == 0 || bytes > max_body {
            return Ok(None);
        }
        let mut held = self.held.load(Ordering::Acquire);
        loop {
            if held.saturating_add(bytes) > limit {
                return Err(Over { held, bytes, limit });
            }
            match self.held.compare_exchange_weak(
                held,
                held + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => held = now,
            }
        }
        self.gauge.add(bytes as i64);
        Ok(Some(Hold {
            bytes,
            owner: self.clone(),
        }))
    }

    /// Logs a refusal: the first at once, then one line every 30 s with
    /// the count.
    pub fn refused(&self, over: Over) {
        if let Some(unlogged) = self.refusals.note() {
            tracing::warn!(
                held = over.held,
                body = over.bytes,
                max_buffered_bytes = over.limit,
                unlogged_since_last = unlogged,
                "request bodies held at [llm] max_buffered_bytes; answering 503 until some are done"
            );
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// 503 with `retry-after: 1`, in the provider's error shape: the request
/// was not looked at, nothing was reserved, a retry may pass.
pub(super) fn overloaded(provider: Provider) -> ProcessingResponse {
    let message =
        "tollgate holds as many request bodies as it may (max_buffered_bytes); retry shortly";
    reply::immediate(
        503,
        vec![reply::header("retry-after", "1")],
        filters::error_body(provider, 503, ErrorKind::ServiceUnavailable, message),
        "tollgate_overloaded",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes() -> Arc<BodyBytes> {
        BodyBytes::new(IntGauge::new("t", "t").unwrap())
    }

    #[test]
    fn bodies_are_held_up_to_the_limit_and_given_back_on_drop() {
        let b = bytes();
        let one = b.hold(600, 1000, 4096).unwrap().expect("counted");
        assert_eq!(b.held(), 600);
        assert_eq!(
            b.hold(500, 1000, 4096).err(),
            Some(Over {
                held: 600,
                bytes: 500,
                limit: 1000
            })
        );
        let two = b
            .hold(400, 1000, 4096)
            .unwrap()
            .expect("exactly at the limit");
        assert_eq!(b.held(), 1000);
        assert_eq!(b.gauge.get(), 1000);
        drop(one);
        assert_eq!(b.held(), 400);
        drop(two);
        assert_eq!(b.held(), 0);
        assert_eq!(b.gauge.get(), 0);
    }

    #[test]
    fn a_body_over_max_body_bytes_is_left_to_admission() {
        let b = bytes();
        assert!(b.hold(5000, 1000, 4096).unwrap().is_none());
        assert!(b.hold(0, 1000, 4096).unwrap().is_none());
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn threads_never_hold_more_than_the_limit_together() {
        let b = bytes();
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, peak) = (b.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Ok(Some(h)) = b.hold(300, 1000, 4096) {
                            peak.fetch_max(b.held(), Ordering::AcqRel);
                            drop(h);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Acquire) <= 1000);
        assert_eq!(b.held(), 0);
    }
}
