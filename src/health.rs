//! Liveness and readiness: the conditions `/readyz` reports. Kafka's
//! reachability comes from the Kafka watcher ([`crate::kafka::watch`]), the
//! schema's registration from [`crate::registry`]; [`crate::app`] wires them.
//!
//! Liveness (`/healthz`) only says the process serves. Readiness (`/readyz`) says
//! whether this replica should get callbacks: Kafka's metadata for the topic is
//! reachable (or, with a spool, the spool has room), the schema is registered
//! when a registry is used, and the replica is not draining for shutdown.
//! Kubernetes stops routing to a replica that is not ready, so CSS's requests go
//! to the healthy ones instead of getting 503s. With a spool, taking callbacks
//! while Kafka is away is the point: Kafka's state is then in the body and the
//! metrics, not a blocker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::metrics::Metrics;
use crate::spool::Spool;

/// The conditions readiness depends on.
pub struct Readiness {
    kafka: AtomicBool,
    /// Whether the producer can publish (see `Publisher::can_publish`).
    producer: AtomicBool,
    schema: AtomicBool,
    draining: AtomicBool,
    spool: Option<Arc<Spool>>,
    metrics: Arc<Metrics>,
}

impl Readiness {
    /// Not ready until the first Kafka check succeeds. `schema_ready` is false when
    /// a schema registration is still to come.
    pub fn new(metrics: Arc<Metrics>, schema_ready: bool) -> Self {
        Self {
            kafka: AtomicBool::new(false),
            producer: AtomicBool::new(true),
            schema: AtomicBool::new(schema_ready),
            draining: AtomicBool::new(false),
            spool: None,
            metrics,
        }
    }

    /// Callbacks go to `spool` when Kafka is away: Kafka's reachability no
    /// longer decides readiness, the spool's room does.
    pub fn with_spool(mut self, spool: Arc<Spool>) -> Self {
        self.spool = Some(spool);
        self
    }

    /// Why the replica is not ready; empty when it is.
    pub fn blockers(&self) -> Vec<&'static str> {
        let mut blockers = Vec::new();
        if self.draining.load(Ordering::Relaxed) {
            blockers.push("draining for shutdown");
        }
        match &self.spool {
            None if !self.kafka_reachable() => blockers.push("Kafka topic metadata unreachable"),
            // Metadata may still answer a producer that cannot publish; with
            // a spool, the spool takes the callbacks meanwhile.
            None if !self.producer.load(Ordering::Relaxed) => {
                blockers.push("Kafka producer failed, being replaced")
            }
            Some(spool) if spool.is_full() => blockers.push("spool full"),
            // Needed (Kafka away, or records waiting ahead of new ones) and
            // failing: every callback would get 503 here.
            Some(spool)
                if spool.cannot_write() && (spool.holds_records() || !self.kafka_reachable()) =>
            {
                blockers.push("spool cannot write to disk")
            }
            _ => {}
        }
        if !self.schema.load(Ordering::Relaxed) {
            blockers.push("schema not registered");
        }
        blockers
    }

    /// Whether Kafka answered the last metadata check.
    pub fn kafka_reachable(&self) -> bool {
        self.kafka.load(Ordering::Relaxed)
    }

    pub fn spool(&self) -> Option<&Arc<Spool>> {
        self.spool.as_ref()
    }

    pub fn is_ready(&self) -> bool {
        self.blockers().is_empty()
    }

    pub fn set_kafka(&self, reachable: bool) {
        self.kafka.store(reachable, Ordering::Relaxed);
        self.publish();
    }

    pub fn set_producer(&self, can_publish: bool) {
        self.producer.store(can_publish, Ordering::Relaxed);
        self.publish();
    }

    pub fn set_schema(&self, registered: bool) {
        self.schema.store(registered, Ordering::Relaxed);
        self.publish();
    }

    /// Turns readiness off for good: the first step of a graceful shutdown.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.publish();
    }

    fn publish(&self) {
        self.metrics.set_ready(self.is_ready());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_condition_holds() {
        let readiness = Readiness::new(Arc::new(Metrics::new(crate::http::CALLBACK_PATH)), false);
        assert_eq!(
            readiness.blockers(),
            ["Kafka topic metadata unreachable", "schema not registered"]
        );
        readiness.set_kafka(true);
        assert!(!readiness.is_ready());
        readiness.set_schema(true);
        assert!(readiness.is_ready());
        readiness.start_draining();
        assert_eq!(readiness.blockers(), ["draining for shutdown"]);
    }

    /// A disk that fails below the spool's own limit (full, read-only, gone)
    /// makes every callback 503 while the spool is needed: the replica leaves
    /// the Service then, and is tried again once the failure is old.
    #[tokio::test]
    async fn a_spool_that_cannot_write_blocks_readiness_while_it_is_needed() {
        let metrics = Arc::new(Metrics::new(crate::http::CALLBACK_PATH));
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, metrics.clone()).unwrap();
        let readiness = Readiness::new(metrics, true).with_spool(spool.clone());
        readiness.set_kafka(true);
        spool.fail_writes_for_test();
        assert!(readiness.is_ready(), "Kafka takes the callbacks");
        readiness.set_kafka(false);
        assert_eq!(readiness.blockers(), ["spool cannot write to disk"]);
        // A write that succeeds clears it.
        let batch = crate::publish::Batch {
            key: "s".into(),
            payloads: b"@record".to_vec(),
            ends: vec![7],
        };
        spool.append(&batch).await.unwrap();
        assert!(readiness.is_ready());
    }

    /// A producer left failed (its replacement held back, or not created)
    /// answers every callback 503, while metadata may still answer.
    #[test]
    fn a_producer_that_cannot_publish_blocks_readiness_without_a_spool() {
        let readiness = Readiness::new(Arc::new(Metrics::new(crate::http::CALLBACK_PATH)), true);
        readiness.set_kafka(true);
        readiness.set_producer(false);
        assert_eq!(
            readiness.blockers(),
            ["Kafka producer failed, being replaced"]
        );
        readiness.set_producer(true);
        assert!(readiness.is_ready());
    }

    #[test]
    fn the_ready_gauge_follows() {
        let metrics = Arc::new(Metrics::new(crate::http::CALLBACK_PATH));
        let readiness = Readiness::new(metrics.clone(), true);
        readiness.set_kafka(true);
        assert!(metrics.encode().contains("css_bridge_ready 1"));
        readiness.start_draining();
        assert!(metrics.encode().contains("css_bridge_ready 0"));
    }
}
