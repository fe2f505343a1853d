//! Replacing a producer that cannot publish any more: when to
//! ([`IdempotenceWatch`], [`Renewal`]), how ([`Publisher::renew_if_stuck`]), and
//! ending the old one without blocking a request (`retire`).
//!
//! Renewal is the exception: a new producer id defeats the broker's
//! de-duplication of the old one's retries, so it is done only when the old one
//! cannot publish at all, never for backpressure or a slow broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{Producer, PurgeConfig};

use super::context::{BridgeContext, BridgeProducer};
use super::delivery::is_fencing;
use super::publisher::Publisher;

/// Least time between two renewals, so that a flapping cluster does not make the
/// bridge churn through producers.
const RENEWAL_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// How long an idempotent producer may go without a producer id while Kafka
/// answers, beyond the acknowledgement deadline, before it is replaced. After
/// records time out, librdkafka first waits up to that deadline for the
/// requests in flight, then bumps its epoch, which takes one round trip.
const NO_PRODUCER_ID_GRACE: Duration = Duration::from_secs(10);

/// What the latest statistics report said about the idempotent producer's
/// producer id.
///
/// After records time out, librdkafka bumps the producer's epoch by itself
/// (state `DrainBump`, then `Assigned` again) and, against a healthy cluster,
/// has a usable id again within moments. A producer that stays without one
/// while the cluster answers cannot publish and must be replaced. One that is
/// slow, backpressured or failing for other reasons must not: a new producer id
/// defeats the broker's de-duplication of the old one's retries.
///
/// It also keeps since when the broker has refused the producer's identity
/// (fenced it) with no record delivered since. An idempotent producer that
/// is not transactional repairs most such refusals itself (librdkafka bumps
/// its epoch and sends again), so a fenced producer is replaced only when it
/// stays so for the same grace as one without a producer id.
#[derive(Debug, Default)]
pub struct IdempotenceWatch {
    latest: std::sync::Mutex<Option<IdempotenceReport>>,
    /// Since when the producer has been fenced, with nothing delivered since.
    fenced_since: std::sync::Mutex<Option<Instant>>,
    /// Whether `fenced_since` is set: what every delivered record reads, so
    /// that the delivery path takes no lock.
    fenced: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct IdempotenceReport {
    /// When the report was taken.
    at: Instant,
    /// Since when the producer has had no usable producer id; `None` while it
    /// has one.
    without_id_since: Option<Instant>,
}

impl IdempotenceWatch {
    /// Takes the `idemp_state` and `idemp_stateage` of a report taken at `now`.
    pub fn observe(&self, state: &str, state_age: Duration, now: Instant) {
        let without_id_since =
            (state != "Assigned").then(|| now.checked_sub(state_age).unwrap_or(now));
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(IdempotenceReport {
            at: now,
            without_id_since,
        });
    }

    /// Takes one delivery report: a refusal of the producer's id or epoch marks
    /// the producer fenced, a delivered record clears the mark. Returns whether
    /// the report was such a refusal.
    pub fn delivered(&self, result: Result<(), &KafkaError>) -> bool {
        // Reports come one at a time, from librdkafka's poll: the flag and
        // the time change together, under the lock.
        let since = || self.fenced_since.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            // Loaded first: the delivery path then writes nothing shared.
            Ok(()) if self.fenced.load(Ordering::Acquire) => {
                let mut since = since();
                *since = None;
                self.fenced.store(false, Ordering::Release);
                false
            }
            Err(KafkaError::MessageProduction(code)) if is_fencing(*code) => {
                let mut since = since();
                since.get_or_insert_with(Instant::now);
                self.fenced.store(true, Ordering::Release);
                true
            }
            _ => false,
        }
    }

    /// Whether the broker refused the producer's identity since its last
    /// delivered record.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Whether the producer has been fenced, with nothing delivered since,
    /// for at least `grace` at `now`.
    pub fn is_fenced_for(&self, grace: Duration, now: Instant) -> bool {
        let since = *self.fenced_since.lock().unwrap_or_else(|e| e.into_inner());
        since.is_some_and(|since| now.saturating_duration_since(since) >= grace)
    }

    /// Whether the latest report saw the producer without a producer id for at
    /// least `grace` of a time during which Kafka was reachable (continuously
    /// since `reachable_since`). A state that began in an outage counts only
    /// from the outage's end: the producer gets its chance to recover.
    pub fn is_stuck(&self, reachable_since: Instant, grace: Duration) -> bool {
        match *self.latest.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(IdempotenceReport {
                at,
                without_id_since: Some(since),
            }) => at.saturating_duration_since(since.max(reachable_since)) >= grace,
            _ => false,
        }
    }
}

/// Why a producer was replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// librdkafka raised a fatal error: the producer cannot publish any more.
    Fatal(String),
    /// The broker refused the producer's id or epoch, and no record has been
    /// delivered since, for longer than librdkafka's own repair (an epoch
    /// bump) takes.
    Fenced,
    /// The idempotent producer stayed without a producer id while Kafka
    /// answered (an epoch bump that did not clear).
    NoProducerId,
}

impl Renewal {
    /// The reason as the metrics label it.
    pub fn reason(&self) -> &'static str {
        match self {
            Renewal::Fatal(_) => "fatal",
            Renewal::Fenced => "fenced",
            Renewal::NoProducerId => "no_producer_id",
        }
    }
}

impl Publisher {
    /// Resolves when the producer has shown that it cannot publish any more (a
    /// fatal error, a fencing refusal): the moment for [`Self::renew_if_stuck`]
    /// rather than the watcher's next tick. A signal given while nobody waits
    /// is kept for the next wait.
    pub async fn renewal_due(&self) {
        self.renewal_due.notified().await;
    }

    /// Whether the current producer can publish: no fatal error, and not
    /// fenced for longer than librdkafka's own repair takes. False between
    /// such a failure and the renewal that replaces the producer, which may
    /// be held back ([`RENEWAL_MIN_INTERVAL`]) or fail.
    pub fn can_publish(&self) -> bool {
        self.failure(&self.producer()).is_none()
    }

    /// Why `producer` cannot publish: a fatal error, or fenced for longer
    /// than the grace.
    fn failure(&self, producer: &BridgeProducer) -> Option<Renewal> {
        let grace = self.ack_timeout + NO_PRODUCER_ID_GRACE;
        if let Some((_, reason)) = producer.client().fatal_error() {
            Some(Renewal::Fatal(reason))
        } else if (producer.context().idempotence).is_fenced_for(grace, Instant::now()) {
            Some(Renewal::Fenced)
        } else {
            None
        }
    }

    /// Replaces the producer when it cannot publish any more: it hit a fatal
    /// error, the broker has fenced it for a while (refused its id or epoch,
    /// with nothing delivered since), or it has been without a producer id for a while
    /// although Kafka has been reachable since `reachable_since` (`None`: not reachable now).
    /// Called by the readiness watcher, which knows about reachability; blocks
    /// briefly (creating a producer), so it runs off the async workers. Returns
    /// why it renewed, if it did.
    pub fn renew_if_stuck(&self, reachable_since: Option<Instant>) -> Option<Renewal> {
        let current = self.producer();
        let grace = self.ack_timeout + NO_PRODUCER_ID_GRACE;
        let renewal = if let Some(failure) = self.failure(&current) {
            failure
        } else if reachable_since
            .is_some_and(|since| current.context().idempotence.is_stuck(since, grace))
        {
            Renewal::NoProducerId
        } else {
            return None;
        };
        drop(current);
        let mut last_renewal = self.last_renewal.lock().unwrap_or_else(|e| e.into_inner());
        if last_renewal.is_some_and(|at| at.elapsed() < RENEWAL_MIN_INTERVAL) {
            return None;
        }
        let context = BridgeContext::new(
            self.metrics.clone(),
            self.outage.clone(),
            self.renewal_due.clone(),
        );
        let fresh = match Self::create_producer(&self.client_config, context, &self.topics) {
            Ok(fresh) => fresh,
            Err(error) => {
                // Through ConfigError: rdkafka's own message for a refused
                // property quotes its value, which may be a secret.
                let error = super::config::ConfigError::from(error);
                tracing::error!(%error, "cannot create a replacement Kafka producer");
                return None;
            }
        };
        tracing::warn!(
            ?renewal,
            "replacing the Kafka producer, which cannot publish any more"
        );
        let old = std::mem::replace(
            &mut *self.producer.write().unwrap_or_else(|e| e.into_inner()),
            fresh,
        );
        *last_renewal = Some(Instant::now());
        self.metrics.count_producer_renewal(renewal.reason());
        retire(old, self.ack_timeout);
        Some(renewal)
    }
}

/// Ends a replaced producer on a thread of its own. It first purges what the
/// producer still holds, queued or in flight, so that it sends none of it
/// again: no retry of its can reach Kafka after the new producer's records of
/// the same stream (the requests waiting for them answer 503, and CSS
/// retries). A produce request already sent is not recalled: the broker may
/// still append it, after the new producer's records (an order break, and a
/// duplicate with the same `event_id` once CSS retries the callback). Then
/// it serves the purge's delivery reports, and drops the producer once no
/// request holds it any more, since dropping a producer blocks.
fn retire(old: Arc<BridgeProducer>, timeout: Duration) {
    let retiring = std::thread::Builder::new()
        .name("retire-producer".into())
        .spawn(move || {
            old.purge(PurgeConfig::default().queue().inflight());
            let _ = old.flush(timeout);
            drop_when_unshared(old);
        });
    if let Err(error) = retiring {
        tracing::error!(%error, "cannot start a thread to retire the replaced producer");
    }
}

/// Drops `shared`'s value on the calling thread, once the caller holds the
/// last reference.
fn drop_when_unshared<T>(mut shared: Arc<T>) {
    loop {
        match Arc::try_unwrap(shared) {
            Ok(value) => return drop(value),
            Err(still_shared) => {
                shared = still_shared;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InFlightLimits, KafkaConfig, KafkaConnection, KafkaProperties};
    use crate::kafka::SendError;
    use crate::metrics::Metrics;
    use crate::outage::OutageLog;
    use crate::publish::{Batch, DeadLetter};

    mod renewal {
        use super::*;
        use futures::FutureExt;
        use rdkafka::mocking::MockCluster;

        const AN_HOUR: Duration = Duration::from_secs(3600);

        const TOPIC: &str = "renewal-test";

        fn publisher(brokers: &str, ack_timeout_ms: u64, properties: &[&str]) -> Publisher {
            let config = KafkaConfig {
                ack_timeout_ms,
                ..test_config(properties)
            };
            publisher_for(&config, brokers)
        }

        fn test_config(properties: &[&str]) -> KafkaConfig {
            KafkaConfig {
                connection: KafkaConnection {
                    topic: TOPIC.into(),
                    properties: KafkaProperties {
                        flags: properties.iter().map(|p| p.parse().unwrap()).collect(),
                        file: None,
                    },
                    ..KafkaConnection::default()
                },
                dead_letter_topic: Some("dead-letters".into()),
                ..KafkaConfig::default()
            }
        }

        fn publisher_for(config: &KafkaConfig, brokers: &str) -> Publisher {
            let metrics = Arc::new(Metrics::new(crate::http::CALLBACK_PATH));
            let outage = Arc::new(OutageLog::new(TOPIC, AN_HOUR, metrics.clone()));
            Publisher::new(config, brokers, metrics, outage).unwrap()
        }

        /// A publisher whose brokers never answer (nothing listens on port 1),
        /// with a budget of `max_records` records.
        fn unreachable_with_budget(
            ack_timeout_ms: u64,
            max_records: u32,
            properties: &[&str],
        ) -> Publisher {
            let config = KafkaConfig {
                ack_timeout_ms,
                in_flight: InFlightLimits {
                    max_records,
                    ..InFlightLimits::default()
                },
                ..test_config(properties)
            };
            publisher_for(&config, "127.0.0.1:1")
        }

        /// Publishes within the acknowledgement deadline, as a callback that
        /// waited for nothing else.
        async fn publish(publisher: &Publisher, batch: &Batch) -> Result<(), SendError> {
            let deadline = tokio::time::Instant::now() + publisher.ack_timeout;
            publisher.publish(batch, deadline).await
        }

        fn batch(records: usize) -> Batch {
            Batch {
                key: "stream".into(),
                payloads: vec![0; records],
                ends: (1..=records).collect(),
            }
        }

        /// The records' limit of one callback follows the queue as
        /// configured.
        #[tokio::test]
        async fn a_callback_may_have_half_the_queue_as_configured() {
            let queue = |properties: &[&str]| {
                publisher_for(&test_config(properties), "127.0.0.1:1").max_callback_records()
            };
            assert_eq!(queue(&[]), 50_000);
            assert_eq!(queue(&["queue.buffering.max.messages=300000"]), 150_000);
            assert_eq!(queue(&["queue.buffering.max.messages=20000"]), 16_384);
        }

        /// With a spool a refused Write is spooled and answered 200, so the
        /// refusal itself must be counted where the alert looks for it.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_publication_refused_for_authorization_is_counted_as_a_refusal() {
            use crate::publish::{Publish, PublishError};
            use rdkafka::error::{KafkaError, RDKafkaErrorCode};

            let cluster = MockCluster::new(1).unwrap();
            cluster.create_topic(TOPIC, 1, 1).unwrap();
            let publisher = publisher(&cluster.bootstrap_servers(), 5000, &[]);
            cluster.request_errors(
                rdkafka::types::RDKafkaApiKey::Produce,
                &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
            );
            let deadline = tokio::time::Instant::now() + publisher.ack_timeout;
            let error = Publish::publish(&publisher, &batch(2), deadline)
                .await
                .unwrap_err();
            assert!(matches!(error, PublishError::NotAuthorized(_)), "{error:?}");
            let text = publisher.metrics.encode();
            assert!(
                text.contains(r#"css_bridge_kafka_refusals_total{cause="authorization"} 1"#),
                "{text}"
            );

            // A refused login, also `NotAuthorized`, is the authentication
            // alert's (librdkafka's error events count it), not this one's.
            for code in [
                RDKafkaErrorCode::Authentication,
                RDKafkaErrorCode::SaslAuthenticationFailed,
            ] {
                let refused = SendError::NotAuthorized(KafkaError::MessageProduction(code));
                assert!(publisher.count_refusal::<()>(Err(refused)).is_err());
            }
            let text = publisher.metrics.encode();
            assert!(
                text.contains(r#"css_bridge_kafka_refusals_total{cause="authorization"} 1"#),
                "{text}"
            );
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn records_are_not_enqueued_when_their_deadline_has_passed() {
            let cluster = MockCluster::new(1).unwrap();
            cluster.create_topic(TOPIC, 1, 1).unwrap();
            let publisher = publisher(&cluster.bootstrap_servers(), 5000, &[]);
            let late = publisher
                .publish(&batch(3), tokio::time::Instant::now())
                .await
                .unwrap_err();
            assert!(matches!(late, SendError::Timeout(_)), "{late:?}");
            assert_eq!(publisher.queue_len(), 0, "nothing enqueued");
            publish(&publisher, &batch(3)).await.unwrap();
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn records_answered_at_their_deadline_hold_their_room_until_librdkafka_reports_them()
        {
            // Nothing listens on port 1: librdkafka keeps the records until
            // `message.timeout.ms`, long after their requests' deadlines.
            let publisher = unreachable_with_budget(200, 4, &[]);
            let unanswered = publish(&publisher, &batch(4)).await.unwrap_err();
            assert!(
                matches!(unanswered, SendError::Timeout(_)),
                "{unanswered:?}"
            );

            let waited = publish(&publisher, &batch(1)).await.unwrap_err();
            assert!(matches!(waited, SendError::NoRoom(_)), "{waited:?}");
            assert_eq!(publisher.queue_len(), 4, "the next batch waited for room");

            // Their failure reports give the room back, once served (the
            // queue's length counts reports not yet served).
            publisher
                .producer()
                .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
            let served = Instant::now() + Duration::from_secs(10);
            while publisher.queue_len() > 0 && Instant::now() < served {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let enqueued = publish(&publisher, &batch(1)).await.unwrap_err();
            assert!(matches!(enqueued, SendError::Timeout(_)), "{enqueued:?}");
            assert_eq!(publisher.queue_len(), 1, "the next batch was enqueued");
        }

        /// A dead letter takes room in the in-flight budget as records do:
        /// letters beside it would fill the producer's queue unseen, and a
        /// callback the budget let in would meet that full queue part-way.
        #[tokio::test]
        async fn a_dead_letter_waits_for_room_in_the_budget() {
            // Nothing listens on port 1: a record is held until its message
            // timeout, and its room with it.
            let publisher = unreachable_with_budget(300, 1, &[]);
            let timeout = publish(&publisher, &batch(1)).await.unwrap_err();
            assert!(matches!(timeout, SendError::Timeout(_)), "{timeout:?}");
            let no_room = dead_letter(&publisher).await;
            assert!(matches!(no_room, Err(SendError::NoRoom(_))), "{no_room:?}");
            assert_eq!(publisher.queue_len(), 1, "the letter was not enqueued");
        }

        /// Dead letters take at most a quarter of the budget: letters Kafka
        /// holds (a dead-letter topic without a leader) leave the rest to
        /// valid callbacks.
        #[tokio::test]
        async fn dead_letters_take_at_most_a_quarter_of_the_budget() {
            // Nothing listens on port 1: what is enqueued keeps its room.
            let publisher = unreachable_with_budget(300, 8, &[]);
            for _ in 0..2 {
                let held = dead_letter(&publisher).await.unwrap_err();
                assert!(matches!(held, SendError::Timeout(_)), "{held:?}");
            }
            let beyond_the_share = dead_letter(&publisher).await.unwrap_err();
            assert!(
                matches!(beyond_the_share, SendError::NoRoom(_)),
                "{beyond_the_share:?}"
            );
            let callback = publish(&publisher, &batch(6)).await.unwrap_err();
            assert!(
                matches!(callback, SendError::Timeout(_)),
                "the rest of the budget is the callbacks': {callback:?}"
            );
            assert_eq!(publisher.queue_len(), 8, "2 letters and 6 records");
        }

        /// Writes a dead letter within the acknowledgement deadline.
        async fn dead_letter(publisher: &Publisher) -> Result<(), SendError> {
            let letter = DeadLetter {
                key: "k",
                body: b"{}",
                reason: "r",
                field: None,
            };
            let deadline = tokio::time::Instant::now() + publisher.ack_timeout;
            publisher.publish_dead_letter(letter, deadline).await
        }

        #[tokio::test]
        async fn backpressure_and_dead_letter_failures_never_replace_the_producer() {
            // Nothing listens on port 1: every publication fails. A batch
            // larger than the whole budget takes all of it, and overflows
            // the queue.
            let publisher = unreachable_with_budget(300, 2, &["queue.buffering.max.messages=2"]);
            let full = publish(&publisher, &batch(4)).await.unwrap_err();
            assert!(matches!(full, SendError::QueueFull), "{full:?}");
            for _ in 0..5 {
                // The records enqueued before the queue was full hold the
                // budget: the next batches wait for room until their deadline.
                let full = publish(&publisher, &batch(4)).await.unwrap_err();
                assert!(
                    matches!(full, SendError::QueueFull | SendError::NoRoom(_)),
                    "{full:?}"
                );
            }
            let reachable_for_an_hour = Instant::now().checked_sub(AN_HOUR);
            assert_eq!(publisher.renew_if_stuck(reachable_for_an_hour), None);

            // Dead letters enqueued and never acknowledged, on a publisher
            // with room for them.
            let letters = publisher_for(
                &KafkaConfig {
                    ack_timeout_ms: 300,
                    ..test_config(&[])
                },
                "127.0.0.1:1",
            );
            for _ in 0..5 {
                let failed = dead_letter(&letters).await.unwrap_err();
                assert!(matches!(failed, SendError::Timeout(_)), "{failed:?}");
            }
            assert_eq!(letters.renew_if_stuck(reachable_for_an_hour), None);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_fatal_error_is_retriable_and_the_producer_is_replaced() {
            let cluster = MockCluster::new(1).unwrap();
            cluster.create_topic(TOPIC, 1, 1).unwrap();
            let publisher = publisher(&cluster.bootstrap_servers(), 5000, &[]);
            publish(&publisher, &batch(2)).await.expect("published");

            assert!(publisher.can_publish());
            publisher.fail_fatally_for_test();
            assert!(
                !publisher.can_publish(),
                "readiness turns off until replaced"
            );
            let error = publish(&publisher, &batch(2)).await.unwrap_err();
            assert!(error.is_retriable(), "{error:?}");
            // The watcher is woken for it, not left to its next tick (the
            // timeout only bounds a failing test).
            tokio::time::timeout(Duration::from_secs(10), publisher.renewal_due())
                .await
                .expect("a fatal error asks for a renewal");

            let renewal = tokio::task::spawn_blocking({
                let publisher = Arc::new(publisher);
                move || (publisher.renew_if_stuck(None), publisher)
            });
            let (renewal, publisher) = renewal.await.unwrap();
            assert!(matches!(renewal, Some(Renewal::Fatal(_))), "{renewal:?}");
            assert!(publisher.can_publish());
            publish(&publisher, &batch(2))
                .await
                .expect("published by the new producer");
        }

        /// librdkafka repairs a refusal of the producer's epoch itself
        /// (it bumps the epoch and sends again): a renewal at once would
        /// purge what the producer was about to deliver.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_fenced_producer_that_delivers_again_is_kept() {
            let cluster = MockCluster::new(1).unwrap();
            cluster.create_topic(TOPIC, 1, 1).unwrap();
            let publisher = publisher(&cluster.bootstrap_servers(), 5000, &[]);
            publish(&publisher, &batch(2)).await.expect("published");
            assert_eq!(publisher.renew_if_stuck(None), None, "healthy");
            assert!(
                publisher.renewal_due().now_or_never().is_none(),
                "a healthy producer asks for nothing"
            );

            cluster.request_errors(
                rdkafka::types::RDKafkaApiKey::Produce,
                &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH],
            );
            let error = publish(&publisher, &batch(2)).await.unwrap_err();
            assert!(matches!(error, SendError::ProducerFailed(_)), "{error:?}");
            assert!(
                publisher.renewal_due().now_or_never().is_some(),
                "the refusal woke the watcher"
            );
            let publisher = Arc::new(publisher);
            let renewal = tokio::task::spawn_blocking({
                let publisher = publisher.clone();
                move || publisher.renew_if_stuck(None)
            });
            assert_eq!(renewal.await.unwrap(), None, "kept within the grace");
            publish(&publisher, &batch(2))
                .await
                .expect("published by the same producer");
            assert!(!publisher.producer().context().idempotence.is_fenced());
        }
    }

    mod idempotence_watch {
        use super::*;

        use rdkafka::error::RDKafkaErrorCode;

        fn refused(code: RDKafkaErrorCode) -> KafkaError {
            KafkaError::MessageProduction(code)
        }

        #[test]
        fn a_fencing_refusal_marks_the_producer_until_a_record_is_delivered() {
            let watch = IdempotenceWatch::default();
            assert!(!watch.is_fenced());
            watch.delivered(Err(&refused(RDKafkaErrorCode::ProducerFenced)));
            assert!(watch.is_fenced());
            watch.delivered(Err(&refused(RDKafkaErrorCode::MessageTimedOut)));
            assert!(watch.is_fenced(), "other failures leave the mark");
            watch.delivered(Ok(()));
            assert!(!watch.is_fenced());
        }

        #[test]
        fn a_producer_fenced_for_the_grace_with_nothing_delivered_is_to_be_replaced() {
            let watch = IdempotenceWatch::default();
            let grace = Duration::from_secs(15);
            watch.delivered(Err(&refused(RDKafkaErrorCode::InvalidProducerEpoch)));
            let fenced_at = Instant::now();
            assert!(!watch.is_fenced_for(grace, fenced_at + Duration::from_secs(14)));
            // A later refusal does not start the grace again.
            watch.delivered(Err(&refused(RDKafkaErrorCode::InvalidProducerEpoch)));
            assert!(watch.is_fenced_for(grace, fenced_at + Duration::from_secs(16)));
            watch.delivered(Ok(()));
            assert!(!watch.is_fenced_for(grace, fenced_at + Duration::from_secs(60)));
        }

        #[test]
        fn only_refusals_of_the_producer_s_identity_fence() {
            let watch = IdempotenceWatch::default();
            for code in [
                RDKafkaErrorCode::QueueFull,
                RDKafkaErrorCode::MessageTimedOut,
                RDKafkaErrorCode::NotEnoughReplicas,
                RDKafkaErrorCode::AllBrokersDown,
                RDKafkaErrorCode::TopicAuthorizationFailed,
            ] {
                watch.delivered(Err(&refused(code)));
                assert!(!watch.is_fenced(), "{code:?}");
            }
            for code in [
                RDKafkaErrorCode::InvalidProducerEpoch,
                RDKafkaErrorCode::InvalidProducerIdMapping,
            ] {
                watch.delivered(Ok(()));
                watch.delivered(Err(&refused(code)));
                assert!(watch.is_fenced(), "{code:?}");
            }
        }

        const GRACE: Duration = Duration::from_secs(10);

        fn secs(n: u64) -> Duration {
            Duration::from_secs(n)
        }

        #[test]
        fn a_producer_with_an_id_is_never_stuck() {
            let watch = IdempotenceWatch::default();
            let start = Instant::now();
            assert!(!watch.is_stuck(start, GRACE), "no report yet");
            watch.observe("Assigned", secs(600), start + secs(600));
            assert!(!watch.is_stuck(start, GRACE));
        }

        #[test]
        fn an_epoch_bump_that_clears_within_the_grace_is_not_stuck() {
            let watch = IdempotenceWatch::default();
            let start = Instant::now();
            watch.observe("DrainBump", secs(3), start + secs(20));
            assert!(!watch.is_stuck(start, GRACE));
        }

        #[test]
        fn no_id_for_longer_than_the_grace_while_reachable_is_stuck() {
            let watch = IdempotenceWatch::default();
            let start = Instant::now();
            watch.observe("WaitPID", secs(30), start + secs(40));
            assert!(watch.is_stuck(start, GRACE));
        }

        #[test]
        fn time_spent_in_an_outage_does_not_count() {
            let watch = IdempotenceWatch::default();
            let start = Instant::now();
            // Without an id since t=10, Kafka back at t=35, report at t=40.
            watch.observe("RequestPID", secs(30), start + secs(40));
            assert!(!watch.is_stuck(start + secs(35), GRACE));
            watch.observe("RequestPID", secs(40), start + secs(50));
            assert!(watch.is_stuck(start + secs(35), GRACE));
        }
    }

    #[test]
    fn a_retired_value_is_dropped_by_the_retiring_thread_once_unshared() {
        struct Probe(Arc<std::sync::Mutex<Option<std::thread::ThreadId>>>);
        impl Drop for Probe {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = Some(std::thread::current().id());
            }
        }
        let dropped_on = Arc::new(std::sync::Mutex::new(None));
        let retired = Arc::new(Probe(dropped_on.clone()));
        let held_by_a_request = retired.clone();
        let retiring = std::thread::spawn(move || drop_when_unshared(retired));
        let retiring_id = retiring.thread().id();
        std::thread::sleep(Duration::from_millis(50));
        drop(held_by_a_request);
        retiring.join().unwrap();
        assert_eq!(*dropped_on.lock().unwrap(), Some(retiring_id));
    }
}
