//! One publication's delivery: the acknowledgement its request waits for, and
//! what a failure means for the caller.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::budget::Room;
use crate::publish::PublishError;

/// Why Kafka did not take a batch, in Kafka's terms; the seam sees it as a
/// [`PublishError`] (see the `From` below).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Kafka is slow, unreachable or refusing writes for now; CSS should retry.
    #[error("Kafka did not acknowledge within {:.0} ms", .0.as_secs_f64() * 1000.0)]
    Timeout(Duration),
    /// Nothing was sent: the records already in flight filled the in-flight
    /// limits for the whole deadline, Kafka acknowledging slower than
    /// callbacks come.
    #[error(
        "no room for the records within {:.0} ms: the producer holds as many unacknowledged \
         records as it may (--kafka-max-in-flight-records, --kafka-max-in-flight-bytes), and \
         Kafka acknowledges them slower than callbacks come",
        .0.as_secs_f64() * 1000.0
    )]
    NoRoom(Duration),
    #[error("the producer queue is full")]
    QueueFull,
    #[error("Kafka refused the records for now: {0}")]
    Retriable(KafkaError),
    /// The producer hit a fatal error or was fenced; the bridge replaces it by
    /// itself.
    #[error("the Kafka producer failed and is being replaced: {0}")]
    ProducerFailed(KafkaError),
    /// Kafka refuses the bridge's principal: its credentials (authentication)
    /// or its ACLs (authorization). An operator must act, but nothing is wrong
    /// with the records, and the same callback succeeds once the credentials
    /// or ACLs are fixed, with the same producer (librdkafka reconnects and
    /// reads the topic's metadata again by itself). So it is retriable: CSS
    /// keeps sending it again for about 12 minutes while the operator fixes
    /// it, where an answer CSS does not retry would lose the callback.
    #[error(
        "Kafka refused the bridge's principal ({0}); fix its credentials or ACLs, the callback succeeds once they are"
    )]
    NotAuthorized(KafkaError),
    /// Retrying will not help until an operator acts, and then only with other
    /// records or topics (topic missing, record too large, ...).
    #[error("Kafka refused the records: {0}")]
    Permanent(KafkaError),
}

impl From<SendError> for PublishError {
    fn from(error: SendError) -> Self {
        if matches!(error, SendError::NotAuthorized(_)) {
            Self::NotAuthorized(Box::new(error))
        } else if error.is_retriable() {
            Self::Unavailable(Box::new(error))
        } else {
            Self::Refused(Box::new(error))
        }
    }
}

impl SendError {
    /// Whether a later retry of the same callback can succeed: without anyone
    /// changing anything, or once an operator fixed the bridge's credentials
    /// or ACLs ([`SendError::NotAuthorized`]).
    pub fn is_retriable(&self) -> bool {
        !matches!(self, Self::Permanent(_))
    }

    pub(super) fn classify(error: KafkaError) -> Self {
        use RDKafkaErrorCode as Code;
        match error.rdkafka_error_code() {
            Some(Code::QueueFull) => Self::QueueFull,
            Some(Code::Fatal) => Self::ProducerFailed(error),
            Some(code) if is_fencing(code) => Self::ProducerFailed(error),
            // Records purged from a producer that failed: librdkafka purges
            // its queue when it raises a fatal error (a principal never
            // granted Write fails its producer id so), and the bridge purges
            // a producer it replaces (see `renewal`). Nothing else purges.
            Some(Code::PurgeQueue | Code::PurgeInflight) => Self::ProducerFailed(error),
            Some(
                Code::TopicAuthorizationFailed
                | Code::ClusterAuthorizationFailed
                | Code::Authentication
                | Code::SaslAuthenticationFailed,
            ) => Self::NotAuthorized(error),
            Some(
                Code::MessageSizeTooLarge
                | Code::InvalidMessageSize
                | Code::InvalidMessage
                | Code::InvalidRecord
                | Code::UnknownTopic
                | Code::UnknownTopicOrPartition
                | Code::PolicyViolation
                | Code::InvalidRequiredAcks,
            ) => Self::Permanent(error),
            _ => Self::Retriable(error),
        }
    }
}

/// The delivery reports one publication (a callback's records, a spooled
/// batch, or one dead letter) still waits for, shared by its records as their
/// delivery opaque.
///
/// The producer's delivery reports (see [`super::events`]) count down, and the
/// waiting request is woken when the last report comes, and a callback's also
/// at the first failure.
/// This costs one allocation per publication, where a future per record
/// (rdkafka's `FutureProducer`) costs a channel and a box per record and a
/// wake-up of the request per report.
#[derive(Debug)]
pub struct Acknowledgement {
    remaining: AtomicUsize,
    failure: OnceLock<KafkaError>,
    waker: AtomicWaker,
    /// When the records were handed to librdkafka, for a [`Timing::Observed`]
    /// publication: with the last report, how long Kafka (and the serving of
    /// its reports) took, apart from the wait of the request to run again.
    enqueued: Option<Instant>,
    /// The publication's room in the in-flight budget (none in tests): given
    /// back when the last reference goes, which is once every enqueued record
    /// is reported (each holds one) and the request is done, whichever comes
    /// last.
    _room: Option<Room>,
}

/// Whether a publication's time to its acknowledgement is observed (the
/// `kafka_acknowledgement_seconds` histogram): a callback's is. A dead
/// letter's and a spooled batch's are not: the drainer's batches wait up to
/// `message.timeout.ms` through an outage, and neither is what a callback
/// waits for, which is what the histogram tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timing {
    Observed,
    Unobserved,
}

impl Acknowledgement {
    pub(super) fn expecting(records: usize, timing: Timing, room: Option<Room>) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(records),
            failure: OnceLock::new(),
            waker: AtomicWaker::new(),
            enqueued: (timing == Timing::Observed).then(Instant::now),
            _room: room,
        })
    }

    /// One record's delivery report. Returns the time since the records were
    /// enqueued when this was the last one, all of them delivered, and the
    /// publication is [`Timing::Observed`].
    pub(super) fn report(&self, result: Result<(), &KafkaError>) -> Option<Duration> {
        if let Err(error) = result {
            let _ = self.failure.set(error.clone());
            // An observed publication (a callback) answers at the first
            // failure, without waiting for the other reports.
            if self.observed() {
                self.waker.wake();
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return None;
        }
        self.waker.wake();
        if self.failure.get().is_some() {
            return None;
        }
        self.enqueued.map(|enqueued| enqueued.elapsed())
    }

    /// Expects `records` fewer reports: records that were never enqueued.
    pub(super) fn abandon(&self, records: usize) {
        if records > 0 && self.remaining.fetch_sub(records, Ordering::AcqRel) == records {
            self.waker.wake();
        }
    }

    /// Whether the publication is [`Timing::Observed`]: a callback's.
    fn observed(&self) -> bool {
        self.enqueued.is_some()
    }

    /// Resolves once every record is acknowledged, or with the first failure:
    /// at once for an observed publication, once every report has come for
    /// another (the drainer's: a batch it sends again must not still be in
    /// librdkafka, in part).
    pub(super) async fn all_delivered(&self) -> Result<(), KafkaError> {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            let all_reported = self.remaining.load(Ordering::Acquire) == 0;
            match self.failure.get() {
                Some(error) if all_reported || self.observed() => Poll::Ready(Err(error.clone())),
                None if all_reported => Poll::Ready(Ok(())),
                _ => Poll::Pending,
            }
        })
        .await
    }
}

/// Errors by which the broker refuses the producer's identity: its id is taken
/// over or unknown, or its epoch is stale. Only a new producer id repairs them.
pub(super) fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::InvalidProducerIdMapping
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_what_the_caller_should_do() {
        let production = |code| SendError::classify(KafkaError::MessageProduction(code));
        assert!(matches!(
            production(RDKafkaErrorCode::QueueFull),
            SendError::QueueFull
        ));
        assert!(production(RDKafkaErrorCode::MessageTimedOut).is_retriable());
        assert!(production(RDKafkaErrorCode::NotEnoughReplicas).is_retriable());
        assert!(production(RDKafkaErrorCode::AllBrokersDown).is_retriable());
        assert!(!production(RDKafkaErrorCode::MessageSizeTooLarge).is_retriable());
        assert!(!production(RDKafkaErrorCode::UnknownTopicOrPartition).is_retriable());
    }

    #[test]
    fn a_refused_principal_is_retriable_since_an_operator_fixes_it_while_css_retries() {
        let production = |code| SendError::classify(KafkaError::MessageProduction(code));
        for code in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
            RDKafkaErrorCode::Authentication,
            RDKafkaErrorCode::SaslAuthenticationFailed,
        ] {
            let error = production(code);
            assert!(matches!(error, SendError::NotAuthorized(_)), "{code:?}");
            assert!(error.is_retriable(), "{code:?}");
            assert!(
                matches!(PublishError::from(error), PublishError::NotAuthorized(_)),
                "{code:?}: the seam keeps the reason apart, for the answer and the metric"
            );
        }
    }

    #[test]
    fn a_fatal_producer_error_is_retriable_since_the_producer_is_replaced() {
        let fatal = SendError::classify(KafkaError::MessageProduction(RDKafkaErrorCode::Fatal));
        assert!(matches!(fatal, SendError::ProducerFailed(_)), "{fatal:?}");
        assert!(fatal.is_retriable());
    }

    #[test]
    fn records_purged_from_a_failed_producer_say_so() {
        for code in [
            RDKafkaErrorCode::PurgeQueue,
            RDKafkaErrorCode::PurgeInflight,
        ] {
            let purged = SendError::classify(KafkaError::MessageProduction(code));
            assert!(matches!(purged, SendError::ProducerFailed(_)), "{purged:?}");
            assert!(purged.is_retriable());
        }
    }

    mod acknowledgement {
        use super::*;

        const TIMED_OUT: KafkaError =
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);

        #[tokio::test]
        async fn resolves_when_the_last_record_is_delivered() {
            let acknowledgement = Acknowledgement::expecting(3, Timing::Observed, None);
            acknowledgement.report(Ok(()));
            acknowledgement.report(Ok(()));
            let waiting = acknowledgement.all_delivered();
            let mut waiting = std::pin::pin!(waiting);
            assert!(futures::poll!(waiting.as_mut()).is_pending());
            acknowledgement.report(Ok(()));
            assert!(waiting.await.is_ok());
        }

        #[test]
        fn the_last_report_tells_how_long_the_records_took() {
            let acknowledgement = Acknowledgement::expecting(2, Timing::Observed, None);
            assert_eq!(acknowledgement.report(Ok(())), None);
            std::thread::sleep(Duration::from_millis(5));
            let took = acknowledgement.report(Ok(())).expect("the last one");
            assert!(took >= Duration::from_millis(5), "{took:?}");
        }

        #[test]
        fn an_unobserved_publication_tells_no_time() {
            let acknowledgement = Acknowledgement::expecting(1, Timing::Unobserved, None);
            assert_eq!(acknowledgement.report(Ok(())), None);
        }

        #[test]
        fn a_failed_publication_tells_no_time() {
            let acknowledgement = Acknowledgement::expecting(1, Timing::Observed, None);
            assert_eq!(acknowledgement.report(Err(&TIMED_OUT)), None);
        }

        #[tokio::test]
        async fn fails_at_the_first_failed_record() {
            let acknowledgement = Acknowledgement::expecting(3, Timing::Observed, None);
            acknowledgement.report(Ok(()));
            acknowledgement.report(Err(&TIMED_OUT));
            let result = acknowledgement.all_delivered().await;
            assert!(matches!(result, Err(TIMED_OUT)), "{result:?}");
        }

        #[tokio::test]
        async fn an_unobserved_publication_fails_once_every_report_has_come() {
            let acknowledgement = Acknowledgement::expecting(3, Timing::Unobserved, None);
            acknowledgement.report(Err(&TIMED_OUT));
            let waiting = acknowledgement.all_delivered();
            let mut waiting = std::pin::pin!(waiting);
            assert!(futures::poll!(waiting.as_mut()).is_pending());
            acknowledgement.report(Ok(()));
            assert!(
                futures::poll!(waiting.as_mut()).is_pending(),
                "a record still in librdkafka"
            );
            acknowledgement.report(Ok(()));
            let result = waiting.await;
            assert!(matches!(result, Err(TIMED_OUT)), "{result:?}");
        }

        #[tokio::test]
        async fn records_never_enqueued_are_not_waited_for() {
            let acknowledgement = Acknowledgement::expecting(3, Timing::Unobserved, None);
            acknowledgement.abandon(2);
            let waiting = acknowledgement.all_delivered();
            let mut waiting = std::pin::pin!(waiting);
            assert!(futures::poll!(waiting.as_mut()).is_pending());
            acknowledgement.report(Ok(()));
            assert!(waiting.await.is_ok());
        }

        #[tokio::test]
        async fn the_waiting_request_is_woken_by_reports_from_another_thread() {
            let acknowledgement = Acknowledgement::expecting(2, Timing::Observed, None);
            let reporter = acknowledgement.clone();
            std::thread::spawn(move || {
                for _ in 0..2 {
                    std::thread::sleep(Duration::from_millis(20));
                    reporter.report(Ok(()));
                }
            });
            let delivered =
                tokio::time::timeout(Duration::from_secs(10), acknowledgement.all_delivered());
            assert!(delivered.await.expect("woken").is_ok());
        }
    }
}
