//! One callback, end to end, in three steps: [`Ingestor::inspect`] decodes,
//! authenticates and validates it, and [`Ingestor::encode`] flattens and
//! encodes it, both without I/O; [`Ingestor::publish`] publishes the records
//! through the [`Publish`] seam and awaits their acknowledgement. Between the
//! first two the caller knows a bound on the records' size
//! ([`Inspected::max_encoded_len`]) and can wait for room for them before they
//! exist. Nothing encoded refers to the body, so the caller can release the
//! body before the wait on Kafka. A body refused after authentication is kept
//! as a dead letter by [`Ingestor::keep_refused`]. The HTTP handler calls
//! these and only maps their results to a status.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::avro;
use crate::avro::wire::{CONFLUENT_HEADER_LEN, WireFormat, confluent_header};
use crate::css::redact::Redacted;
use crate::css::{self, Inbound, InboundError, Lenient, PushErrorCallback, Rejection, Verifier};
use crate::metrics::Metrics;
use crate::publish::{Batch, DeadLetter, Publish, PublishError};
use crate::record;

/// A callback [`Ingestor::inspect`] let in, for [`Ingestor::encode`]. It
/// borrows the body.
#[derive(Debug)]
pub struct Inspected<'b> {
    inbound: Inbound<'b>,
    /// For the dead letter of a callback whose records are too large.
    body: &'b [u8],
    received_at_ms: i64,
    max_encoded_len: usize,
}

impl Inspected<'_> {
    /// At least what [`Ingestor::encode`] makes of it, known before it is
    /// encoded, so that room can be found for the records before they exist;
    /// at most what the records may take (encoding stops there: see
    /// [`RecordsTooLarge`]).
    pub fn max_encoded_len(&self) -> usize {
        self.max_encoded_len
    }
}

/// A callback [`Ingestor::encode`] encoded, for [`Ingestor::publish`]. It
/// holds nothing of the body.
#[derive(Debug)]
pub enum Admitted {
    /// Push errors: their records, to publish.
    Records(Records),
    /// A CSS event kind other than push errors: acknowledged, not published.
    Ignored { event_type: i64 },
}

/// The encoded records of an admitted push error callback.
#[derive(Debug)]
pub struct Records {
    batch: Batch,
    /// Records per CSS error type, counted in the metrics once acknowledged.
    records_by_error_type: Vec<(i32, u64)>,
}

/// What happened to an accepted callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every record is acknowledged by Kafka.
    Published { records: usize },
    /// A CSS event kind other than push errors: acknowledged, not published.
    Ignored { event_type: i64 },
}

/// Why a callback was not accepted, split by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The body is malformed or invalid (400); sending it again will not help.
    #[error("{rejection}")]
    Rejected {
        rejection: Rejection,
        /// The `stream_id` the body names, for the log line.
        stream_id: Option<String>,
        /// The body without its secrets, when it is to be kept as a dead
        /// letter: its sender was authenticated, and there is a dead-letter
        /// topic.
        dead_letter: Option<Box<Redacted>>,
    },
    /// Authentication failed (401).
    #[error("{error}")]
    Unauthorized {
        error: css::AuthError,
        stream_id: Option<String>,
    },
    /// The records could not be published (503 when retriable, 500 otherwise).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The Schema Registry has not given the schema an id yet (503).
    #[error("the record schema is not registered with the Schema Registry yet")]
    SchemaNotRegistered,
}

impl IngestError {
    /// The `stream_id` a refused body names (nothing vouches for it), for the
    /// log line that helps an operator find the sender.
    pub fn claimed_stream_id(&self) -> Option<&str> {
        match self {
            Self::Rejected { stream_id, .. } | Self::Unauthorized { stream_id, .. } => {
                stream_id.as_deref()
            }
            _ => None,
        }
    }
}

/// The service's core, shared by all requests.
pub struct Ingestor {
    verifier: Verifier,
    publisher: Arc<dyn Publish>,
    metrics: Arc<Metrics>,
    wire_format: WireFormat,
    /// The most records a callback may have: what the producer's queue
    /// holds (see `kafka::config::max_callback_records`). Beyond it the
    /// callback is refused (see [`TooManyRecords`]).
    max_records: usize,
    /// The most a callback's records may take encoded: what the producer
    /// may hold at once (`--kafka-max-in-flight-bytes`). Beyond it the
    /// callback is refused before its records are all encoded.
    max_records_bytes: usize,
}

impl Ingestor {
    pub fn new(
        verifier: Verifier,
        publisher: Arc<dyn Publish>,
        metrics: Arc<Metrics>,
        wire_format: WireFormat,
        max_records: usize,
        max_records_bytes: usize,
    ) -> Self {
        Self {
            verifier,
            publisher,
            metrics,
            wire_format,
            max_records,
            max_records_bytes,
        }
    }

    pub fn publisher(&self) -> &dyn Publish {
        &*self.publisher
    }

    /// Decodes, authenticates and validates one callback body; for a refused
    /// body to keep, it makes the dead letter. Pure but for the counters:
    /// nothing leaves the process.
    pub fn inspect<'b>(&self, body: &'b [u8]) -> Result<Inspected<'b>, IngestError> {
        let received_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let inbound = match css::inspect(body, &self.verifier, received_at.as_secs() as i64) {
            Ok(inbound) => inbound,
            Err(InboundError::Unauthorized { error, stream_id }) => {
                self.metrics.count_signature_failure(error.reason());
                return Err(IngestError::Unauthorized { error, stream_id });
            }
            Err(InboundError::Rejected {
                rejection,
                stream_id,
                lenient,
            }) => {
                return Err(IngestError::Rejected {
                    rejection,
                    stream_id,
                    dead_letter: self.dead_letter(body, lenient),
                });
            }
        };
        let max_encoded_len = match &inbound {
            Inbound::PushError(callback) => {
                tracing::Span::current().record("stream_id", &*callback.stream_id);
                if let Err(too_many) = check_record_count(callback, self.max_records) {
                    return Err(self.too_large(callback, body, too_many));
                }
                let header = matches!(self.wire_format, WireFormat::Confluent(_));
                let bounds = batch_len_bounds(callback, header);
                // Refused now rather than once encoded: it would first wait
                // for all the room for records, and every callback behind it
                // with it.
                if *bounds.start() > self.max_records_bytes {
                    let too_large = RecordsTooLarge {
                        records: record::record_count(callback),
                        limit: self.max_records_bytes,
                    };
                    return Err(self.too_large(callback, body, too_large));
                }
                (*bounds.end()).min(self.max_records_bytes)
            }
            Inbound::Ignored { .. } => 0,
        };
        Ok(Inspected {
            inbound,
            body,
            received_at_ms: received_at.as_millis() as i64,
            max_encoded_len,
        })
    }

    /// Encodes the records of an inspected callback.
    pub fn encode(&self, inspected: &Inspected<'_>) -> Result<Admitted, IngestError> {
        let callback = match inspected.inbound {
            Inbound::PushError(ref callback) => callback,
            Inbound::Ignored { event_type } => return Ok(Admitted::Ignored { event_type }),
        };
        let header = match &self.wire_format {
            WireFormat::Plain => None,
            WireFormat::Confluent(id) => Some(confluent_header(
                id.get().ok_or(IngestError::SchemaNotRegistered)?,
            )),
        };
        let batch = encode_callback(
            callback,
            inspected.received_at_ms,
            header,
            self.max_records_bytes,
        )
        .map_err(|too_large| self.too_large(callback, inspected.body, too_large))?;
        let records_by_error_type = callback
            .abnormal_events
            .iter()
            .map(|group| (group.error_type, record::group_record_count(group) as u64))
            .collect();
        Ok(Admitted::Records(Records {
            batch,
            records_by_error_type,
        }))
    }

    /// The refusal of an authenticated callback whose records are too large
    /// or too many.
    fn too_large(
        &self,
        callback: &PushErrorCallback<'_>,
        body: &[u8],
        too_large: impl std::fmt::Display,
    ) -> IngestError {
        IngestError::Rejected {
            rejection: Rejection::at("abnormal_event", too_large.to_string()),
            stream_id: Some(callback.stream_id.to_string()),
            dead_letter: self.dead_letter(body, None),
        }
    }

    /// The dead letter of a body refused as invalid (its sender was
    /// authenticated), made while the body is at hand (from the read that
    /// refused it when there was one): when there is a dead-letter topic.
    fn dead_letter(&self, body: &[u8], lenient: Option<Lenient>) -> Option<Box<Redacted>> {
        self.publisher.keeps_dead_letters().then(|| {
            let lenient = lenient.unwrap_or_else(|| Lenient::read(body));
            Box::new(css::redact::dead_letter(&lenient))
        })
    }

    /// Publishes what [`Self::encode`] encoded. Returns only once every record
    /// is acknowledged by Kafka, or with the reason it is not by `deadline`.
    pub async fn publish(
        &self,
        admitted: Admitted,
        deadline: Instant,
    ) -> Result<Outcome, IngestError> {
        let records = match admitted {
            Admitted::Records(records) => records,
            Admitted::Ignored { event_type } => {
                self.metrics.count_ignored(event_type);
                return Ok(Outcome::Ignored { event_type });
            }
        };
        let started = Instant::now();
        let published = self.publisher.publish(&records.batch, deadline).await;
        // Whatever the answer: the waits that end in a 503 at the deadline are
        // the ones an operator looks for.
        self.metrics.observe_publish(started.elapsed());
        published?;
        for &(error_type, count) in &records.records_by_error_type {
            self.metrics.count_records(error_type, count);
        }
        Ok(Outcome::Published {
            records: records.batch.len(),
        })
    }

    /// Keeps a body [`Self::inspect`] or [`Self::encode`] refused as invalid
    /// after authenticating its sender, without its secrets (see
    /// [`css::redact`]), in the dead-letter topic when there is one, by
    /// `deadline`. Returns how the write went, `None` when the body is not
    /// kept, for the refusal's log line; its failure is counted, never turned
    /// into another answer: the callback stays refused.
    pub async fn keep_refused(
        &self,
        error: &IngestError,
        deadline: Instant,
    ) -> Option<Result<(), PublishError>> {
        let IngestError::Rejected {
            rejection,
            dead_letter: Some(letter),
            ..
        } = error
        else {
            return None;
        };
        let reason = rejection.to_string();
        let letter = DeadLetter {
            key: &letter.key,
            body: &letter.body,
            reason: &reason,
            field: rejection.field(),
        };
        let written = self.publisher.publish_dead_letter(letter, deadline).await;
        let outcome = if written.is_ok() { "written" } else { "failed" };
        self.metrics.count_dead_letter(outcome);
        Some(written)
    }
}

/// A callback's records outgrow what the producer may hold at once.
///
/// Every record repeats its callback's texts and its group's, so a body of a
/// few long texts and thousands of tiny details makes records thousands of
/// times its size: one signed body of 1 MiB took the process to 2.3 GB
/// before this bound.
#[derive(Debug, thiserror::Error)]
#[error(
    "its {records} records take more than {limit} bytes encoded, more than the \
     producer may hold at once (--kafka-max-in-flight-bytes)"
)]
pub struct RecordsTooLarge {
    pub records: usize,
    pub limit: usize,
}

/// A callback has more records than the producer's queue holds.
///
/// Such a callback would take all of the in-flight budget and still not fit
/// in the producer's queue: its first records would go out and the rest be
/// refused as a full queue, on every retry of CSS's, and a spooled one would
/// stop the spool's drain for good. Refused before anything is sent; a
/// callback of tiny details reaches it within `--max-body-bytes` where the
/// bytes bound does not.
#[derive(Debug, thiserror::Error)]
#[error(
    "its {records} records are more than the producer's queue takes from one callback, {limit} \
     (the larger of --kafka-max-in-flight-records and half of queue.buffering.max.messages)"
)]
pub struct TooManyRecords {
    pub records: usize,
    pub limit: usize,
}

/// Refuses a callback with more than `max_records` records (see
/// [`TooManyRecords`]).
pub fn check_record_count(
    callback: &PushErrorCallback<'_>,
    max_records: usize,
) -> Result<(), TooManyRecords> {
    let records = record::record_count(callback);
    if records > max_records {
        return Err(TooManyRecords {
            records,
            limit: max_records,
        });
    }
    Ok(())
}

/// Bounds on what [`encode_callback`] makes of `callback`, each record with a
/// `header` or without, from the lengths of the texts its records repeat,
/// without making a record. At least the texts and the headers, which every
/// record writes verbatim; at most [`max_batch_len`].
pub fn batch_len_bounds(callback: &PushErrorCallback<'_>, header: bool) -> RangeInclusive<usize> {
    let records = record::record_count(callback);
    let headers = records * if header { CONFLUENT_HEADER_LEN } else { 0 };
    let texts = record::text_len(callback);
    let params = callback.stream_params.len();
    (texts + headers)..=(avro::max_encoded_len(records, texts, params) + headers)
}

/// At least what [`encode_callback`] makes of `callback`, each record with a
/// `header` or without, and under twice that for CSS's usual callbacks (the
/// more text, the closer).
pub fn max_batch_len(callback: &PushErrorCallback<'_>, header: bool) -> usize {
    *batch_len_bounds(callback, header).end()
}

/// Flattens and encodes a callback into the batch of messages to publish, each
/// record behind `header` when given (the Confluent wire format's 5 bytes),
/// the records taking at most `limit` bytes in all: encoding stops there.
pub fn encode_callback(
    callback: &PushErrorCallback<'_>,
    received_at_ms: i64,
    header: Option<[u8; CONFLUENT_HEADER_LEN]>,
    limit: usize,
) -> Result<Batch, RecordsTooLarge> {
    let records = record::record_count(callback);
    // Never grown: the buffer a callback holds is the room admission gave it.
    let capacity = max_batch_len(callback, header.is_some()).min(limit);
    let mut batch = Batch {
        key: callback.stream_id.to_string(),
        payloads: Vec::with_capacity(capacity),
        ends: Vec::with_capacity(records),
    };
    record::for_each_record(callback, received_at_ms, |record| {
        if let Some(header) = header {
            batch.payloads.extend_from_slice(&header);
        }
        avro::encode_into(&record, &mut batch.payloads);
        if batch.payloads.len() > limit {
            return Err(RecordsTooLarge { records, limit });
        }
        batch.ends.push(batch.payloads.len());
        Ok(())
    })?;
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::css::{decode, validate::validate};

    const SEED: &str = include_str!("../tests/fixtures/seed-sample.json");

    #[test]
    fn a_callback_becomes_one_message_per_record_keyed_by_stream() {
        let callback = validate(decode(SEED.as_bytes()).unwrap()).unwrap();
        let batch = encode_callback(&callback, 1, None, usize::MAX).unwrap();
        assert_eq!(batch.key, "xxxxxx");
        let records = record::flatten(&callback, 1);
        let payloads: Vec<_> = batch.payloads().collect();
        assert_eq!(payloads.len(), records.len());
        for (payload, record) in payloads.iter().zip(&records) {
            assert_eq!(*payload, avro::encode(record));
        }
    }

    #[test]
    fn a_callback_may_have_as_many_records_as_the_producer_holds_and_no_more() {
        let callback = validate(decode(SEED.as_bytes()).unwrap()).unwrap();
        assert!(check_record_count(&callback, 4).is_ok());
        let too_many = check_record_count(&callback, 3).unwrap_err();
        assert_eq!((too_many.records, too_many.limit), (4, 3));
        assert!(
            too_many.to_string().contains("from one callback, 3"),
            "{too_many}"
        );
    }

    #[test]
    fn encoding_stops_once_the_records_outgrow_the_limit() {
        let mut body: serde_json::Value = serde_json::from_str(SEED).unwrap();
        body["domain"] = "x".repeat(4000).into();
        let body = body.to_string();
        let callback = validate(decode(body.as_bytes()).unwrap()).unwrap();
        let all = encode_callback(&callback, 1, None, usize::MAX).unwrap();
        assert!(all.payloads.len() > 16_000, "{}", all.payloads.len());

        let too_large = encode_callback(&callback, 1, None, 8_000).unwrap_err();
        assert_eq!((too_large.records, too_large.limit), (4, 8_000));
        let exact = encode_callback(&callback, 1, None, all.payloads.len()).unwrap();
        assert_eq!(exact.len(), 4);
    }

    /// The bound admission weighs a callback by before encoding it holds, and
    /// stays within twice the records for CSS's own shapes.
    #[test]
    fn the_records_are_within_their_bound_known_before_encoding() {
        let details_300 = include_str!("../bench/bodies/details-300.json");
        for body in [SEED, details_300] {
            let callback = validate(decode(body.as_bytes()).unwrap()).unwrap();
            for header in [None, Some(confluent_header(7))] {
                let batch = encode_callback(&callback, 1, header, usize::MAX).unwrap();
                let encoded = batch.payloads.len();
                let bounds = batch_len_bounds(&callback, header.is_some());
                let bound = *bounds.end();
                assert!(bounds.contains(&encoded), "{encoded} {bounds:?}");
                assert!(bound < 2 * encoded, "{encoded} {bound}");
                assert_eq!(batch.payloads.capacity(), bound, "never grown");
            }
        }
    }

    /// Property tests of the pure path (inspect → flatten → encode) against
    /// hostile input: whatever the body, no panic, and an accepted callback
    /// always yields exactly its records. Run longer with e.g.
    /// `PROPTEST_CASES=200000 cargo test --lib hostile_input`.
    mod hostile_input {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        /// Inspects, and for a push error callback flattens and encodes.
        fn run(body: &[u8]) -> Option<usize> {
            match css::inspect(body, &Verifier::default(), 0) {
                Ok(Inbound::PushError(callback)) => {
                    let batch = encode_callback(&callback, 0, None, usize::MAX).unwrap();
                    assert_eq!(batch.len(), record::record_count(&callback));
                    let bounds = batch_len_bounds(&callback, false);
                    assert!(bounds.contains(&batch.payloads.len()), "{bounds:?}");
                    Some(batch.len())
                }
                _ => None,
            }
        }

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_map(
                    |f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                ),
                ".{0,40}".prop_map(Value::String),
                "-?[0-9]{1,25}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                    prop::collection::btree_map("[a-z_]{1,12}", inner, 0..8)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// JSON pointers of the seed's fields, where mutations are planted.
        const PLACES: [&str; 12] = [
            "/event_type",
            "/appid",
            "/stream_id",
            "/data_time",
            "/abnormal_event",
            "/abnormal_event/0",
            "/abnormal_event/0/type",
            "/abnormal_event/0/count",
            "/abnormal_event/0/detail",
            "/abnormal_event/1/detail/0",
            "/abnormal_event/1/detail/0/occur_time",
            "/abnormal_event/1/detail/1/desc",
        ];

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..2048)) {
                run(&body);
            }

            #[test]
            fn arbitrary_json_never_panics(value in json_value()) {
                run(value.to_string().as_bytes());
            }

            #[test]
            fn the_seed_with_any_field_replaced_never_panics(
                place in prop::sample::select(&PLACES[..]),
                value in json_value(),
            ) {
                let mut doc: Value = serde_json::from_str(SEED).unwrap();
                *doc.pointer_mut(place).unwrap() = value;
                run(doc.to_string().as_bytes());
            }
        }

        #[test]
        fn invalid_utf8_is_refused_with_a_clear_error() {
            let body = b"{\"event_type\":321,\"stream_id\":\"\xff\xfe\"}";
            let error = css::inspect(body, &Verifier::default(), 0).unwrap_err();
            assert!(error.to_string().contains("invalid unicode"), "{error}");
        }

        #[test]
        fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
            let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
            for body in [
                format!(r#"{{"event_type":321,"unknown_field":{nested}}}"#),
                format!(r#"{{"event_type":321,"abnormal_event":{nested}}}"#),
                nested.clone(),
            ] {
                assert!(css::inspect(body.as_bytes(), &Verifier::default(), 0).is_err());
            }
        }
    }
}
