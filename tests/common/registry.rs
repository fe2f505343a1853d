//! A Confluent Schema Registry stand-in for the tests.
