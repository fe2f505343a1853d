//! One callback, end to end: inspect (decode, authenticate, validate), flatten,
//! encode, publish and await acknowledgement. The HTTP handler calls
//! [`Ingestor::ingest`] and only maps its result to a status.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::avro::{self, EncodeError};
use crate::css::{self, Inbound, InboundError, PushErrorCallback, Verifier};
use crate::kafka::{Batch, PublishError, Publisher};
use crate::record;

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
    #[error(transparent)]
    Rejected(#[from] css::Rejection),
    /// Authentication failed (401).
    #[error(transparent)]
    Unauthorized(#[from] css::AuthError),
    /// Kafka could not take the records (503 when retriable, 500 otherwise).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A defect in the bridge (500).
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl From<InboundError> for IngestError {
    fn from(error: InboundError) -> Self {
        match error {
            InboundError::Rejected(rejection) => Self::Rejected(rejection),
            InboundError::Unauthorized(auth) => Self::Unauthorized(auth),
        }
    }
}

/// The service's core, shared by all requests.
pub struct Ingestor {
    verifier: Verifier,
    publisher: Publisher,
}

impl Ingestor {
    pub fn new(verifier: Verifier, publisher: Publisher) -> Self {
        Self {
            verifier,
            publisher,
        }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Handles one callback body. Returns only once every record is acknowledged
    /// by Kafka, or with the reason it is not.
    pub async fn ingest(&self, body: &[u8]) -> Result<Outcome, IngestError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let callback = match css::inspect(body, &self.verifier, now.as_secs() as i64)? {
            Inbound::PushError(callback) => callback,
            Inbound::Ignored { event_type } => return Ok(Outcome::Ignored { event_type }),
        };
        let batch = encode_callback(&callback, now.as_millis() as i64)?;
        self.publisher.publish(&batch).await?;
        Ok(Outcome::Published {
            records: batch.len(),
        })
    }
}

/// Flattens and encodes a callback into the batch of messages to publish.
pub fn encode_callback(
    callback: &PushErrorCallback<'_>,
    received_at_ms: i64,
) -> Result<Batch, EncodeError> {
    let records = record::flatten(callback, received_at_ms);
    let mut batch = Batch {
        key: callback.stream_id.to_string(),
        payloads: Vec::with_capacity(records.len() * 384),
        ends: Vec::with_capacity(records.len()),
    };
    for record in &records {
        avro::encode_into(record, &mut batch.payloads)?;
        batch.ends.push(batch.payloads.len());
    }
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
        let batch = encode_callback(&callback, 1).unwrap();
        assert_eq!(batch.key, "xxxxxx");
        let records = record::flatten(&callback, 1);
        let payloads: Vec<_> = batch.payloads().collect();
        assert_eq!(payloads.len(), records.len());
        for (payload, record) in payloads.iter().zip(&records) {
            assert_eq!(*payload, avro::encode(record).unwrap());
        }
    }
}
