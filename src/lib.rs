//! css-kafka-bridge: Tencent Cloud CSS push error callbacks in, Avro records out
//! to Kafka.
//!
//! The flow of one callback, module by module:
//!
//! ```text
//! http      POST /css/callback: read the body (size-limited), hand it on
//!   │
//! css       decode JSON → authenticate sign/t → validate     (pure)
//!   │
//! record    flatten: one PushErrorRecord per error detail   (pure)
//!   │
//! avro      encode each record with the embedded schema     (pure)
//!           (avro::wire: Confluent framing with the schema id, which
//!            registry obtains at start-up)
//!   │
//! kafka     publish, await every acknowledgement (or give up at the deadline)
//!   │
//! http      200 {"code":0} | 400 | 401 | 413 | 503 + Retry-After
//! ```
//!
//! [`ingest`] ties the steps together for one request; [`app`] builds the
//! service from [`config`] and runs it until shutdown. Beside the flow:
//! [`health`] (readiness, the Kafka watcher), [`metrics`] (Prometheus),
//! [`outage`] (what the log says while Kafka is away or callbacks are refused),
//! [`registry`] (Schema Registry registration), [`telemetry`] (logging),
//! [`downstream`] (Flink and Spark schemas derived from the Avro schema) and
//! [`tools`] (the `check` and `tail` commands). The process allocator
//! (jemalloc, for librdkafka's allocations too) is set in `allocator`.

mod allocator;
pub mod app;
pub mod avro;
pub mod config;
pub mod css;
pub mod downstream;
pub mod health;
pub mod http;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod outage;
pub mod record;
pub mod registry;
pub mod spool;
pub mod telemetry;
pub mod tools;

pub use app::App;
pub use config::Config;
