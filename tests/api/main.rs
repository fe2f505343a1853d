//! The integration tests, one binary (linked once, not once per file): the
//! bridge on a random port against Apache Kafka, read back with a separate
//! consumer. `common` holds the clusters, the proxy, the app, the consumer and
//! the Schema Registries (the stand-in, and Apicurio for real answers).

mod common;

mod apicurio;
mod callback;
mod docs;
mod downstream;
mod failover;
mod kafka_script;
mod layout;
mod openapi;
mod operations;
mod outage;
mod registry;
mod registry_stand_in;
mod schema_evolution;
mod secured;
mod slow_clients;
mod spool;
mod tools;
mod zero_loss;
