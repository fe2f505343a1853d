//! Kafka: the producer, delivery with a deadline, error classification, and the
//! embedded in-memory cluster for a first run.
//!
//! The bridge answers CSS only after Kafka has acknowledged every record of a
//! callback, so [`Publisher::publish`] enqueues all records, then waits for all
//! delivery reports, bounded by the acknowledgement deadline. librdkafka's own
//! `message.timeout.ms` is set to the same deadline: a record the bridge has given
//! up on is also given up by librdkafka, instead of landing later unannounced.
//! (A record that was acknowledged while the bridge was already answering 503 is
//! possible at the edge; CSS then retries and consumers drop the duplicate by
//! `event_id`.)
//!
//! - [`config`]: the producer's configuration and its guards;
//! - [`delivery`]: a batch, its acknowledgement, and failure classification;
//! - [`publisher`]: the shared producer, its renewal, dead letters;
//! - [`events`]: the producer's delivery reports served on the runtime;
//! - [`topic`]: records sent through librdkafka's handle on their topic;
//! - [`embedded`]: the in-memory cluster for a first run.

pub mod config;
pub mod delivery;
pub mod embedded;
pub mod events;
pub mod publisher;
pub mod topic;

pub use config::{ConfigError, canonical_property, producer_config};
pub use delivery::{Acknowledgement, Batch, PublishError};
pub use embedded::EmbeddedKafka;
pub use publisher::{
    BridgeContext, DEAD_LETTER_FIELD_HEADER, DEAD_LETTER_REASON_HEADER, IdempotenceWatch,
    Publisher, Renewal, record_headers,
};
