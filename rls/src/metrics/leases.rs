//! The families of leases and of the instance registry.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Leases: what was granted, given back and dropped, what is held now, and
/// how many hits were decided from a slice against in the store.
pub struct LeaseFamilies {
    granted: IntCounter,
    grants: IntCounter,
    returned: IntCounter,
    expired: IntCounter,
    /// Capacity granted to this instance and not used yet.
    pub held: IntGauge,
    decisions: IntCounterVec,
    /// Instances sharing the store, as the registry last saw them.
    pub instances: IntGauge,
    instance_info: IntGaugeVec,
}

fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    r.register(Box::new(m.clone()))
        .unwrap_or_else(|e| panic!("lease metric: {e}"));
    m
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        r,
        IntCounter::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}")),
    )
}

impl LeaseFamilies {
    pub fn new(r: &Registry) -> LeaseFamilies {
        LeaseFamilies {
            granted: counter(
                r,
                "tollgate_lease_granted_total",
                "Capacity (hits or tokens) granted to this instance's leases, taken from the shared counters.",
            ),
            grants: counter(
                r,
                "tollgate_lease_grants_total",
                "Slices granted to this instance (each one store call).",
            ),
            returned: counter(
                r,
                "tollgate_lease_returned_total",
                "Unused leased capacity given back to the shared counters (idle slices, shutdown).",
            ),
            expired: counter(
                r,
                "tollgate_lease_expired_total",
                "Unused leased capacity dropped because its window ended.",
            ),
            held: register(
                r,
                IntGauge::new(
                    "tollgate_lease_held",
                    "Capacity granted to this instance's leases and not used yet.",
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            decisions: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tollgate_lease_decisions_total",
                        "Hits of leasing rules, by where they were decided: lease (this instance's slice, no round trip) or store.",
                    ),
                    &["by"],
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            instances: register(
                r,
                IntGauge::new(
                    "tollgate_instances",
                    "tollgate instances sharing the store, as the registry last saw them.",
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            instance_info: register(
                r,
                IntGaugeVec::new(
                    Opts::new("tollgate_instance_info", "1, labelled with this instance's id."),
                    &["id"],
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
        }
    }

    pub fn granted(&self, amount: u64) {
        self.grants.inc();
        self.granted.inc_by(amount);
    }

    pub fn returned(&self, amount: u64) {
        self.returned.inc_by(amount);
    }

    pub fn expired(&self, amount: u64) {
        self.expired.inc_by(amount);
    }

    pub fn decisions(&self, from_lease: usize, from_store: usize) {
        if from_lease > 0 {
            self.decisions
                .with_label_values(&["lease"])
                .inc_by(from_lease as u64);
        }
        if from_store > 0 {
            self.decisions
                .with_label_values(&["store"])
                .inc_by(from_store as u64);
        }
    }

    pub fn instance(&self, id: &str) {
        self.instance_info.reset();
        self.instance_info.with_label_values(&[id]).set(1);
    }
}
