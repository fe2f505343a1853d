//! Downstream schemas (Flink SQL, Spark) generated from the Avro schema.
