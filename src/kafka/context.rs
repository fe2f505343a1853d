//! The producer's context: where librdkafka's events go (statistics, delivery
//! reports, errors, log lines).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::DeliveryResult;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Statistics};

use super::delivery::{Acknowledgement, is_fencing};
use super::events::ServedProducer;
use super::renewal::IdempotenceWatch;
use crate::metrics::{Metrics, StatisticsTotals};
use crate::outage::OutageLog;

/// librdkafka's producer, its delivery reports served on the runtime (see
/// [`super::events`]).
pub type BridgeProducer = ServedProducer<BridgeContext>;

/// The producer's side of librdkafka's events: statistics reports go to the
/// metrics and the idempotence watch, delivery reports to the publication they
/// belong to, error events to the outage log. A fatal error or a fencing
/// refusal also wakes the Kafka watcher (`renewal_due`), which replaces the
/// producer then rather than at its next tick.
pub struct BridgeContext {
    metrics: Arc<Metrics>,
    outage: Arc<OutageLog>,
    pub(super) idempotence: IdempotenceWatch,
    renewal_due: Arc<tokio::sync::Notify>,
    /// This producer's totals in its last statistics report.
    totals: StatisticsTotals,
}

impl BridgeContext {
    pub(super) fn new(
        metrics: Arc<Metrics>,
        outage: Arc<OutageLog>,
        renewal_due: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            metrics,
            outage,
            idempotence: IdempotenceWatch::default(),
            renewal_due,
            totals: StatisticsTotals::default(),
        }
    }
}

impl ClientContext for BridgeContext {
    /// librdkafka raises an error event each time it fails to reach a broker,
    /// dozens a second while Kafka is away: they are counted and summarised (see
    /// [`crate::outage`]), not logged one by one as rdkafka's default does.
    /// rdkafka reports each twice; the second is ignored (see
    /// [`super::events::repeats_last_error`]).
    fn error(&self, error: KafkaError, reason: &str) {
        if super::events::repeats_last_error(reason) {
            return;
        }
        let code = error.rdkafka_error_code();
        // librdkafka raises a fatal error as an error event with the error's
        // own code (rdkafka does not expose the event's fatal flag). For a
        // producer, the idempotence errors come as error events only when they
        // are fatal (otherwise in delivery reports); waking the watcher for
        // nothing would cost one metadata request.
        if code.is_some_and(|code| {
            code == RDKafkaErrorCode::Fatal
                || code == RDKafkaErrorCode::OutOfOrderSequenceNumber
                || code == RDKafkaErrorCode::UnknownProducerId
                || is_fencing(code)
        }) {
            self.renewal_due.notify_one();
        }
        let code = code.map_or_else(|| "Unknown".to_owned(), |code| format!("{code:?}"));
        self.outage.client_error(&code, reason);
    }

    /// librdkafka writes a `FAIL` line for each broker connection it loses or
    /// cannot open: kept for the outage log's lines, written at debug level
    /// only. Everything else as rdkafka does by default.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if facility == "FAIL" {
            self.outage.connection_failed(message);
            tracing::debug!(target: "librdkafka", "librdkafka: {facility} {message}");
        } else {
            DefaultClientContext.log(level, facility, message);
        }
    }

    fn stats(&self, statistics: Statistics) {
        if let Some(eos) = &statistics.eos {
            let age = Duration::from_millis(u64::try_from(eos.idemp_stateage).unwrap_or(0));
            self.idempotence
                .observe(&eos.idemp_state, age, Instant::now());
        }
        self.metrics
            .observe_kafka_statistics(&statistics, &self.totals);
    }
}

impl rdkafka::producer::ProducerContext for BridgeContext {
    type DeliveryOpaque = Arc<Acknowledgement>;

    /// Counts the report against its publication. A panic here loses only
    /// this report (see [`super::events::surviving_panic`]).
    fn delivery(&self, result: &DeliveryResult<'_>, acknowledgement: Arc<Acknowledgement>) {
        super::events::surviving_panic(|| {
            let result = result.as_ref().map(drop).map_err(|(error, _)| error);
            if self.idempotence.delivered(result) {
                self.renewal_due.notify_one();
            }
            if let Some(took) = acknowledgement.report(result) {
                self.metrics.observe_acknowledged(took);
            }
        });
    }
}
