//! Kafka, one implementation of the [`crate::publish::Publish`] seam: the
//! producer, delivery with a deadline, error classification, the producer's
//! lifecycle, and the embedded in-memory cluster for a first run.
//!
//! The bridge answers CSS only after Kafka has acknowledged every record of a
//! callback, so [`Publisher::publish`] enqueues all records, then waits for all
//! delivery reports, bounded by the acknowledgement deadline. librdkafka's own
//! `message.timeout.ms` outlasts a leader failover (see
//! [`config::message_timeout`]), so a record the bridge answered 503 for may
//! still land; CSS's retry then carries the same `event_id`, by which
//! consumers drop the duplicate.
//!
//! - [`config`]: the producer's configuration and its guards;
//! - [`budget`]: the records and bytes the requests may have in the producer;
//! - [`delivery`]: a publication's acknowledgement, and failure classification;
//! - [`publisher`]: the shared producer, records and dead letters;
//! - [`context`]: where librdkafka's events go;
//! - [`renewal`]: replacing a producer that cannot publish any more;
//! - [`watch`]: the metadata check and renewal, on a timer;
//! - [`events`]: the producer's delivery reports served on the runtime;
//! - [`topic`]: records sent through librdkafka's handle on their topic;
//! - [`embedded`]: the in-memory cluster for a first run.

pub mod budget;
pub mod config;
pub mod context;
pub mod delivery;
pub mod embedded;
pub mod events;
pub mod publisher;
pub mod renewal;
pub mod topic;
pub mod watch;

pub use config::{ConfigError, canonical_property, producer_config};
pub use context::BridgeContext;
pub use delivery::{Acknowledgement, SendError};
pub use embedded::EmbeddedKafka;
pub use publisher::{
    DEAD_LETTER_FIELD_HEADER, DEAD_LETTER_REASON_HEADER, Publisher, record_headers,
};
pub use renewal::{IdempotenceWatch, Renewal};
