//! css-kafka-bridge: Tencent Cloud CSS push error callbacks in, Avro records out
//! to Kafka.
//!
//! The flow of one callback, module by module:
//!
//! ```text
//! http      POST /css/callback: read the body (size-limited), hand it on
//!   │
//! ingest    one callback end to end, over the steps below
//!   │
//! css       decode JSON → authenticate sign/t → validate     (pure)
//!   │
//! record    flatten: one PushErrorRecord per error detail   (pure)
//!   │
//! avro      encode each record with the embedded schema     (pure)
//!           (avro::wire: Confluent framing with the schema id, which
//!            registry obtains at start-up)
//!   │
//! publish   the seam: a Batch of records → Publish → PublishError
//!   │
//! spool     Spooling: Kafka first; the local disk when Kafka cannot take
//!   │       the records, drained to Kafka once it is back
//! kafka     publish, await every acknowledgement (or give up at the deadline)
//!   │
//! http      200 {"code":0} | 400 | 401 | 413 | 503 + Retry-After
//! ```
//!
//! [`publish`] is the bottom of the publishing side: [`ingest`] depends on it
//! alone, [`kafka`] and [`spool`] implement it, and [`app`] composes them
//! (`Spooling` over `kafka::Publisher`) from [`config`] and runs the service
//! until shutdown. Beside the flow: [`health`] (readiness), [`metrics`]
//! (Prometheus), [`outage`] (what the log says while Kafka is away or callbacks
//! are refused), [`registry`] (Schema Registry registration), [`telemetry`]
//! (logging), [`downstream`] (Flink and Spark schemas derived from the Avro
//! schema) and [`commands`] (the `check`, `tail` and `spool drain` commands).
//! The process allocator (jemalloc, for librdkafka's allocations too) is set in
//! `allocator`.

mod allocator;
pub mod app;
pub mod avro;
pub mod commands;
pub mod config;
pub mod css;
pub mod downstream;
pub mod health;
pub mod http;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod outage;
pub mod publish;
pub mod record;
pub mod registry;
pub mod spool;
pub mod telemetry;

pub use app::App;
pub use config::Config;
