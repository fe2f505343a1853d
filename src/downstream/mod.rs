//! Downstream schemas (Flink SQL, Spark) generated from the Avro schema.
//!
//! The `.avsc` in `schemas/` is the only hand-written description of a record.
//! Stream processors that read the topic need the same shape in their own type
//! systems: a Flink `CREATE TABLE` and a Spark DDL schema string. Both are
//! generated here from the parsed Avro schema, so they cannot drift from what the
//! bridge writes; `css-kafka-bridge schema --format flink-sql|spark-ddl` prints
//! them and `examples/` holds generated copies that a test keeps in step.
//!
//! Only Avro types whose mapping is the same in Flink's Avro formats and in
//! Spark's `from_avro` are accepted, and only in the shapes that Flink's derived
//! Avro schema reproduces byte for byte (optional values as `["null", T]`, null
//! first). Anything else is a [`DownstreamError`] naming the field, never a guess:
//! a wrong type here would only surface as garbage or a failed job downstream.
//!
//! | Avro                         | Flink SQL                  | Spark DDL          |
//! |------------------------------|----------------------------|--------------------|
//! | `boolean`                    | `BOOLEAN`                  | `BOOLEAN`          |
//! | `int`                        | `INT`                      | `INT`              |
//! | `long`                       | `BIGINT`                   | `BIGINT`           |
//! | `float` / `double`           | `FLOAT` / `DOUBLE`         | `FLOAT` / `DOUBLE` |
//! | `bytes`                      | `BYTES`                    | `BINARY`           |
//! | `string`                     | `STRING`                   | `STRING`           |
//! | `int` + `date`               | `DATE`                     | `DATE`             |
//! | `long` + `timestamp-millis`  | `TIMESTAMP(3)` (UTC)       | `TIMESTAMP_LTZ`    |
//! | `array<T>`                   | `ARRAY<T>`                 | `ARRAY<T>`         |
//! | `map<T>`                     | `MAP<STRING NOT NULL, T>`  | `MAP<STRING, T>`   |
//! | `record`                     | `ROW<...>`                 | `STRUCT<...>`      |
//! | `["null", T]`                | `T` (nullable)             | `T` (nullable)     |
//! | any other non-union `T`      | `T NOT NULL`               | `T NOT NULL`       |
//!
//! Why `TIMESTAMP(3)` and not `TIMESTAMP_LTZ(3)` for `timestamp-millis` (an
//! instant): Flink's `avro` and `avro-confluent` formats map `timestamp-millis` to
//! `TIMESTAMP(3)`, holding the instant as UTC wall-clock time, under their
//! default ("legacy") timestamp mapping, which is the only one before Flink 1.19;
//! `TIMESTAMP_LTZ(3)` is accepted by the `avro` format only with its
//! `timestamp_mapping.legacy` option set to `false` (Flink 1.19+; in a Kafka
//! table `value.avro.timestamp_mapping.legacy`). `TIMESTAMP(3)` works on every
//! supported Flink version and both formats, and is a valid rowtime type.

use apache_avro::Schema;
use apache_avro::schema::RecordField;

use crate::avro::{RecordSchema, SCHEMA_JSON};
use crate::config::DEFAULT_TOPIC;

mod flink;
mod spark;

pub use flink::{FlinkFormat, FlinkOptions, StartupMode, flink_sql};
pub use spark::spark_ddl;

/// Bootstrap servers as seen from a Flink cluster next to Kafka (compose naming).
pub const DEFAULT_BOOTSTRAP_SERVERS: &str = "kafka:9092";
/// Schema Registry URL as seen from a Flink cluster next to it (compose naming).
pub const DEFAULT_SCHEMA_REGISTRY_URL: &str = "http://schema-registry:8081";
/// Name of the generated Flink table.
pub const DEFAULT_TABLE: &str = "push_errors";

/// The record field that the bridge uses as the Kafka message key.
pub const KEY_FIELD: &str = "stream_id";
/// When the occurrence happened; null for error groups without details.
pub const OCCUR_TIME_FIELD: &str = "occur_time";
/// When CSS produced the callback; never null.
pub const REPORT_TIME_FIELD: &str = "report_time";
/// When the bridge accepted the callback; never null.
pub const RECEIVED_AT_FIELD: &str = "received_at";
/// The computed Flink rowtime column: `COALESCE(occur_time, report_time)`,
/// at most [`EVENT_TIME_LEAD_MINUTES`] past `report_time` and `received_at`.
pub const EVENT_TIME_COLUMN: &str = "event_time";
/// How far past its report, and past its receipt by the bridge, a record's
/// event time may go. The bridge keeps any `occur_time` and `report_time` CSS
/// sends (up to the year 9999); a watermark follows the largest event time
/// seen, so one record from the far future would make every record after it
/// late, and windows would drop them for good. An occurrence comes before
/// its report, which the bridge receives after it: a minute covers the
/// clocks' differences, and keeps a bounded record's lead well within
/// [`WATERMARK_DELAY_MINUTES`].
pub const EVENT_TIME_LEAD_MINUTES: u32 = 1;
/// How far the Flink watermark trails the largest event time seen, in minutes.
/// CSS retries an unacknowledged callback for about 12 minutes with the same
/// content, so the first copy of a record can reach the topic that late; 15
/// minutes (the retry window plus margin) keeps such a record in its window.
/// The price: a window's result is final, and emitted, 15 minutes after the
/// window ends, and the window state holds 15 minutes more of records.
pub const WATERMARK_DELAY_MINUTES: u32 = 15;

/// What `css-kafka-bridge schema` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SchemaFormat {
    /// The Avro schema itself, as embedded in the binary.
    #[default]
    Avsc,
    /// A Flink SQL `CREATE TABLE` for the Kafka connector.
    FlinkSql,
    /// A Spark DDL schema string, as `from_avro` produces for the record.
    SparkDdl,
}

/// The arguments of `css-kafka-bridge schema`, ready to be used as
/// `Schema(SchemaArgs)` in the command enum.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct SchemaArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: SchemaFormat,
    #[command(flatten)]
    pub flink: FlinkOptions,
}

/// An Avro schema that has no faithful downstream equivalent, or lacks a field
/// the Flink table is built around.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownstreamError {
    #[error("the top-level Avro schema must be a record")]
    NotARecord,
    #[error("field `{path}`: Avro type {avro} is not supported downstream: {reason}")]
    Unsupported {
        /// Dotted path of the field, e.g. `detail.occur_time`; `[]` marks array
        /// items and `{}` map values.
        path: String,
        /// The offending type, as Avro JSON.
        avro: String,
        reason: &'static str,
    },
    #[error("the Flink table needs field `{field}` as {expected}")]
    MissingField {
        field: &'static str,
        expected: &'static str,
    },
}

/// Prints what `css-kafka-bridge schema --format <format>` shows, for the
/// schema embedded in this build. The embedded schema always converts (the unit
/// tests prove it), so an error here means the schema file gained a type this
/// module does not map yet.
pub fn render(format: SchemaFormat, options: &FlinkOptions) -> Result<String, DownstreamError> {
    let schema = RecordSchema::get().schema();
    Ok(match format {
        SchemaFormat::Avsc => SCHEMA_JSON.to_owned(),
        SchemaFormat::FlinkSql => flink_sql(schema, options)?,
        SchemaFormat::SparkDdl => spark_ddl(schema)? + "\n",
    })
}

/// A field's type in the terms both engines share.
#[derive(Debug, Clone, PartialEq)]
enum Type {
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Date,
    TimestampMillis,
    Array(Box<Column>),
    Map(Box<Column>),
    Row(Vec<Field>),
}

#[derive(Debug, Clone, PartialEq)]
struct Column {
    ty: Type,
    nullable: bool,
}

impl Column {
    fn required(ty: Type) -> Column {
        Column {
            ty,
            nullable: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Field {
    name: String,
    doc: Option<String>,
    column: Column,
}

fn record_fields(schema: &Schema) -> Result<Vec<Field>, DownstreamError> {
    match schema {
        Schema::Record(record) => fields(&record.fields, ""),
        _ => Err(DownstreamError::NotARecord),
    }
}

fn fields(fields: &[RecordField], prefix: &str) -> Result<Vec<Field>, DownstreamError> {
    fields
        .iter()
        .map(|field| {
            let path = format!("{prefix}{}", field.name);
            Ok(Field {
                name: field.name.clone(),
                doc: field.doc.clone(),
                column: column(&field.schema, &path)?,
            })
        })
        .collect()
}

fn column(schema: &Schema, path: &str) -> Result<Column, DownstreamError> {
    let unsupported = |reason| DownstreamError::Unsupported {
        path: path.to_owned(),
        avro: serde_json::to_string(schema).unwrap_or_else(|_| format!("{schema:?}")),
        reason,
    };
    let ty = match schema {
        Schema::Union(union) => {
            return match union.variants() {
                [Schema::Null, inner] if !matches!(inner, Schema::Union(_)) => {
                    let inner = column(inner, path)?;
                    Ok(Column {
                        ty: inner.ty,
                        nullable: true,
                    })
                }
                [_, Schema::Null] => Err(unsupported(
                    "optional values must be [\"null\", T] with null first, the shape Flink derives",
                )),
                _ => Err(unsupported(
                    "only [\"null\", T] unions have a column equivalent",
                )),
            };
        }
        Schema::Boolean => Type::Boolean,
        Schema::Int => Type::Int,
        Schema::Long => Type::Long,
        Schema::Float => Type::Float,
        Schema::Double => Type::Double,
        Schema::Bytes => Type::Bytes,
        Schema::String => Type::String,
        Schema::Date => Type::Date,
        Schema::TimestampMillis => Type::TimestampMillis,
        Schema::Array(array) => Type::Array(Box::new(column(&array.items, &format!("{path}[]"))?)),
        Schema::Map(map) => Type::Map(Box::new(column(&map.types, &format!("{path}{{}}"))?)),
        Schema::Record(record) => Type::Row(fields(&record.fields, &format!("{path}."))?),
        Schema::Null => return Err(unsupported("a column cannot be always null")),
        Schema::Enum(_) => {
            return Err(unsupported(
                "Flink reads enums only as STRING, which an Avro enum does not resolve to",
            ));
        }
        Schema::Ref { .. } => {
            return Err(unsupported(
                "named type references (reused or recursive types) are not expanded",
            ));
        }
        _ => {
            return Err(unsupported(
                "its Flink and Spark mappings differ or depend on engine settings",
            ));
        }
    };
    Ok(Column::required(ty))
}

fn require(
    fields: &[Field],
    name: &'static str,
    column: &Column,
    expected: &'static str,
) -> Result<(), DownstreamError> {
    match fields.iter().find(|f| f.name == name) {
        Some(field) if &field.column == column => Ok(()),
        _ => Err(DownstreamError::MissingField {
            field: name,
            expected,
        }),
    }
}

fn require_type(
    fields: &[Field],
    name: &'static str,
    ty: &Type,
    expected: &'static str,
) -> Result<(), DownstreamError> {
    match fields.iter().find(|f| f.name == name) {
        Some(field) if &field.column.ty == ty => Ok(()),
        _ => Err(DownstreamError::MissingField {
            field: name,
            expected,
        }),
    }
}

fn not_null(column: &Column) -> &'static str {
    if column.nullable { "" } else { " NOT NULL" }
}

/// Backquoted, so that names such as `path`, `domain` or `sequence` (reserved
/// words in Flink SQL) need no care.
fn flink_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn spark_ident(name: &str) -> String {
    flink_ident(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn current() -> &'static Schema {
        RecordSchema::get().schema()
    }

    /// Expected (Flink, Spark, nullable) types of one field, read straight from
    /// the schema's JSON, independently of the conversion above.
    fn expected_types(field: &serde_json::Value) -> (String, String, bool) {
        fn base(ty: &serde_json::Value) -> (String, String) {
            if let Some(name) = ty.as_str() {
                return match name {
                    "string" => ("STRING".into(), "STRING".into()),
                    "int" => ("INT".into(), "INT".into()),
                    "long" => ("BIGINT".into(), "BIGINT".into()),
                    other => panic!("add an expectation for Avro type {other}"),
                };
            }
            match (ty["type"].as_str(), ty["logicalType"].as_str()) {
                (Some("long"), Some("timestamp-millis")) => {
                    ("TIMESTAMP(3)".into(), "TIMESTAMP_LTZ".into())
                }
                (Some("map"), None) => {
                    let (flink, spark) = base(&ty["values"]);
                    (
                        format!("MAP<STRING NOT NULL, {flink} NOT NULL>"),
                        format!("MAP<STRING, {spark}>"),
                    )
                }
                other => panic!("add an expectation for Avro type {other:?}"),
            }
        }
        let ty = &field["type"];
        match ty.as_array() {
            Some(union) => {
                assert_eq!(union.len(), 2, "{field}");
                assert_eq!(union[0], "null", "{field}");
                let (flink, spark) = base(&union[1]);
                (flink, spark, true)
            }
            None => {
                let (flink, spark) = base(ty);
                (flink, spark, false)
            }
        }
    }

    fn schema_fields() -> Vec<serde_json::Value> {
        let doc: serde_json::Value = serde_json::from_str(SCHEMA_JSON).unwrap();
        doc["fields"].as_array().unwrap().clone()
    }

    fn parse(json: &str) -> Schema {
        Schema::parse_str(json).unwrap()
    }

    /// A record with what the Flink table needs, plus `extra` fields.
    fn record_with(extra: &str) -> Schema {
        parse(&format!(
            r#"{{"type": "record", "name": "R", "fields": [
                {{"name": "stream_id", "type": "string"}},
                {{"name": "report_time", "type": {{"type": "long", "logicalType": "timestamp-millis"}}}},
                {{"name": "occur_time", "type": ["null", {{"type": "long", "logicalType": "timestamp-millis"}}], "default": null}},
                {{"name": "received_at", "type": {{"type": "long", "logicalType": "timestamp-millis"}}}}
                {extra}
            ]}}"#
        ))
    }

    #[test]
    fn every_field_is_a_flink_column_with_its_type_nullability_and_doc() {
        let sql = flink_sql(current(), &FlinkOptions::default()).unwrap();
        let column_lines: Vec<&str> = sql
            .lines()
            .filter(|l| l.starts_with("  `") && !l.contains(" AS "))
            .collect();
        let fields = schema_fields();
        assert_eq!(column_lines.len(), fields.len(), "{sql}");
        for (field, line) in fields.iter().zip(&column_lines) {
            let name = field["name"].as_str().unwrap();
            let (flink, _, nullable) = expected_types(field);
            let not_null = if nullable { "" } else { " NOT NULL" };
            let expected = format!("  `{name}` {flink}{not_null} COMMENT '");
            assert!(
                line.starts_with(&expected),
                "{line:?} should start with {expected:?}"
            );
            let doc = field["doc"].as_str().unwrap().replace('\'', "''");
            assert!(line.ends_with(&format!("'{doc}',")), "{line}");
        }
    }

    #[test]
    fn flink_columns_by_hand() {
        let sql = flink_sql(current(), &FlinkOptions::default()).unwrap();
        for line in [
            "  `event_id` STRING NOT NULL COMMENT ",
            "  `event_type` INT NOT NULL COMMENT ",
            "  `appid` BIGINT NOT NULL COMMENT ",
            "  `domain` STRING COMMENT 'Push domain.',",
            "  `path` STRING COMMENT ",
            "  `report_time` TIMESTAMP(3) NOT NULL COMMENT ",
            "  `report_interval_ms` BIGINT COMMENT ",
            "  `stream_params` MAP<STRING NOT NULL, STRING NOT NULL> NOT NULL COMMENT ",
            "  `detail_index` INT COMMENT ",
            "  `occur_time` TIMESTAMP(3) COMMENT ",
            "  `received_at` TIMESTAMP(3) NOT NULL COMMENT ",
            "  `event_time` AS LEAST(COALESCE(`occur_time`, `report_time`),\n    \
             `report_time` + INTERVAL '1' MINUTE, `received_at` + INTERVAL '1' MINUTE),\n",
            "  WATERMARK FOR `event_time` AS `event_time` - INTERVAL '15' MINUTE\n) WITH (\n",
        ] {
            assert!(sql.contains(line), "missing {line:?} in\n{sql}");
        }
        // A quote inside a doc is doubled, not closing the literal.
        assert!(sql.contains("e.g. video_frame_late; ''unknown'' for types"));
    }

    #[test]
    fn flink_avro_confluent_options() {
        let sql = flink_sql(current(), &FlinkOptions::default()).unwrap();
        assert!(sql.starts_with("-- Flink SQL table"), "{sql}");
        assert!(sql.contains("\n--   css-kafka-bridge schema --format flink-sql\n"));
        assert!(sql.contains("\nCREATE TABLE `push_errors` (\n"));
        assert!(sql.ends_with(
            ") WITH (\n  \
             'connector' = 'kafka',\n  \
             'topic' = 'css.push-errors',\n  \
             'properties.bootstrap.servers' = 'kafka:9092',\n  \
             'scan.startup.mode' = 'earliest-offset',\n  \
             'scan.watermark.idle-timeout' = '1 min',\n  \
             'key.format' = 'raw',\n  \
             'key.fields' = 'stream_id',\n  \
             'value.format' = 'avro-confluent',\n  \
             'value.avro-confluent.url' = 'http://schema-registry:8081',\n  \
             'value.fields-include' = 'ALL'\n\
             );\n"
        ));
    }

    /// A job that starts from its group's offsets names the group, and
    /// starts a group that has committed nothing at the earliest offset
    /// (Flink fails the job otherwise).
    #[test]
    fn flink_group_offsets_name_the_group_and_where_a_new_group_starts() {
        let options = FlinkOptions {
            startup_mode: StartupMode::GroupOffsets,
            group_id: Some("push-error-stats".into()),
            ..FlinkOptions::default()
        };
        let sql = flink_sql(current(), &options).unwrap();
        assert!(sql.contains("  'scan.startup.mode' = 'group-offsets',\n"));
        assert!(sql.contains("  'properties.group.id' = 'push-error-stats',\n"));
        assert!(sql.contains("  'properties.auto.offset.reset' = 'earliest',\n"));
        assert!(sql.contains("--scan-startup-mode group-offsets --group-id push-error-stats\n"));
    }

    #[test]
    fn flink_plain_avro_options_and_quoting() {
        let options = FlinkOptions {
            format: FlinkFormat::Avro,
            topic: "it's".into(),
            bootstrap_servers: "a:9092,b:9092".into(),
            table: "odd`name".into(),
            startup_mode: StartupMode::LatestOffset,
            ..FlinkOptions::default()
        };
        let sql = flink_sql(current(), &options).unwrap();
        assert!(sql.contains("CREATE TABLE `odd``name` ("));
        assert!(sql.contains(
            "\n--   css-kafka-bridge schema --format flink-sql --flink-format avro \
             --topic 'it'\\''s' --bootstrap-servers a:9092,b:9092 \
             --flink-table 'odd`name' --scan-startup-mode latest-offset\n"
        ));
        assert!(sql.contains("  'topic' = 'it''s',\n"));
        assert!(sql.contains("  'properties.bootstrap.servers' = 'a:9092,b:9092',\n"));
        assert!(sql.contains("  'scan.startup.mode' = 'latest-offset',\n"));
        assert!(sql.contains("  'value.format' = 'avro',\n"));
        assert!(!sql.contains("'value.avro-confluent.url'"));
        assert!(!sql.contains("schema-registry"));
        // Same columns as the registry variant.
        let columns = |sql: &str| -> Vec<String> {
            sql.lines()
                .skip_while(|l| !l.starts_with("CREATE TABLE"))
                .skip(1)
                .take_while(|l| !l.starts_with(')'))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            columns(&sql),
            columns(&flink_sql(current(), &FlinkOptions::default()).unwrap())
        );
    }

    #[test]
    fn spark_ddl_of_the_record_schema() {
        assert_eq!(
            spark_ddl(current()).unwrap(),
            "`event_id` STRING NOT NULL, `event_type` INT NOT NULL, `appid` BIGINT NOT NULL, \
             `stream_id` STRING NOT NULL, `domain` STRING, `path` STRING, `sequence` STRING, \
             `user_ip` STRING, `report_time` TIMESTAMP_LTZ NOT NULL, `report_interval_ms` BIGINT, \
             `stream_params` MAP<STRING, STRING> NOT NULL, `error_type` INT NOT NULL, \
             `error_name` STRING NOT NULL, `type_desc_en` STRING, `type_desc_cn` STRING, \
             `error_count` BIGINT NOT NULL, `event_key` STRING, `detail_index` INT, \
             `detail_desc` STRING, `occur_time` TIMESTAMP_LTZ, `interval_ms` BIGINT, \
             `received_at` TIMESTAMP_LTZ NOT NULL"
        );
    }

    #[test]
    fn every_field_is_a_spark_column_with_its_type_and_nullability() {
        let ddl = spark_ddl(current()).unwrap();
        let columns: Vec<&str> = ddl.split(", `").collect();
        let fields = schema_fields();
        assert_eq!(columns.len(), fields.len());
        for (field, column) in fields.iter().zip(columns) {
            let name = field["name"].as_str().unwrap();
            let (_, spark, nullable) = expected_types(field);
            let not_null = if nullable { "" } else { " NOT NULL" };
            assert_eq!(
                column.trim_start_matches('`'),
                format!("{name}` {spark}{not_null}")
            );
        }
    }

    #[test]
    fn nested_types_map_recursively() {
        let schema = record_with(
            r#", {"name": "tags", "type": {"type": "array", "items": "string"}},
                {"name": "scores", "type": ["null", {"type": "map", "values": ["null", "double"]}], "default": null},
                {"name": "origin", "type": {"type": "record", "name": "Origin", "fields": [
                    {"name": "ok", "type": "boolean"},
                    {"name": "day", "type": ["null", {"type": "int", "logicalType": "date"}], "default": null},
                    {"name": "raw", "type": "bytes"}
                ]}}"#,
        );
        let sql = flink_sql(&schema, &FlinkOptions::default()).unwrap();
        assert!(
            sql.contains("  `tags` ARRAY<STRING NOT NULL> NOT NULL,\n"),
            "{sql}"
        );
        assert!(
            sql.contains("  `scores` MAP<STRING NOT NULL, DOUBLE>,\n"),
            "{sql}"
        );
        assert!(
            sql.contains("  `origin` ROW<`ok` BOOLEAN NOT NULL, `day` DATE, `raw` BYTES NOT NULL> NOT NULL,\n"),
            "{sql}"
        );
        let ddl = spark_ddl(&schema).unwrap();
        assert!(ddl.ends_with(
            "`tags` ARRAY<STRING> NOT NULL, `scores` MAP<STRING, DOUBLE>, \
             `origin` STRUCT<`ok`: BOOLEAN NOT NULL, `day`: DATE, `raw`: BINARY NOT NULL> NOT NULL"
        ));
    }

    #[test]
    fn unsupported_types_are_errors_naming_the_field() {
        let cases = [
            (
                r#", {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}}"#,
                "kind",
            ),
            (r#", {"name": "late", "type": ["string", "null"]}"#, "late"),
            (
                r#", {"name": "either", "type": ["null", "string", "long"]}"#,
                "either",
            ),
            (
                r#", {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}}"#,
                "amount",
            ),
            (
                r#", {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}}"#,
                "at",
            ),
            (
                r#", {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 16}}"#,
                "hash",
            ),
            (
                r#", {"name": "nested", "type": {"type": "array", "items": {"type": "enum", "name": "E", "symbols": ["X"]}}}"#,
                "nested[]",
            ),
        ];
        for (extra, path) in cases {
            let schema = record_with(extra);
            for result in [
                flink_sql(&schema, &FlinkOptions::default()),
                spark_ddl(&schema),
            ] {
                match result {
                    Err(DownstreamError::Unsupported { path: p, .. }) => {
                        assert_eq!(p, path, "{extra}");
                    }
                    other => panic!("{extra}: expected an error, got {other:?}"),
                }
            }
        }
        let message = spark_ddl(&record_with(cases[1].0)).unwrap_err().to_string();
        assert!(
            message.contains("`late`") && message.contains("null first"),
            "{message}"
        );
    }

    #[test]
    fn non_records_and_missing_table_fields_are_errors() {
        assert_eq!(spark_ddl(&Schema::String), Err(DownstreamError::NotARecord));
        let bare =
            parse(r#"{"type": "record", "name": "R", "fields": [{"name": "x", "type": "int"}]}"#);
        assert_eq!(spark_ddl(&bare).unwrap(), "`x` INT NOT NULL");
        assert_eq!(
            flink_sql(&bare, &FlinkOptions::default()),
            Err(DownstreamError::MissingField {
                field: KEY_FIELD,
                expected: "STRING NOT NULL"
            })
        );
        let nullable_report_time = parse(
            r#"{"type": "record", "name": "R", "fields": [
                {"name": "stream_id", "type": "string"},
                {"name": "report_time", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": null},
                {"name": "occur_time", "type": {"type": "long", "logicalType": "timestamp-millis"}}
            ]}"#,
        );
        assert!(matches!(
            flink_sql(&nullable_report_time, &FlinkOptions::default()),
            Err(DownstreamError::MissingField {
                field: REPORT_TIME_FIELD,
                ..
            })
        ));
        // The event time is bounded by received_at: the table needs it.
        let without_received_at = parse(
            r#"{"type": "record", "name": "R", "fields": [
                {"name": "stream_id", "type": "string"},
                {"name": "report_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                {"name": "occur_time", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": null}
            ]}"#,
        );
        assert!(matches!(
            flink_sql(&without_received_at, &FlinkOptions::default()),
            Err(DownstreamError::MissingField {
                field: RECEIVED_AT_FIELD,
                ..
            })
        ));
    }

    #[test]
    fn render_prints_each_format() {
        let options = FlinkOptions::default();
        assert_eq!(render(SchemaFormat::Avsc, &options).unwrap(), SCHEMA_JSON);
        assert_eq!(
            render(SchemaFormat::FlinkSql, &options).unwrap(),
            flink_sql(current(), &options).unwrap()
        );
        assert_eq!(
            render(SchemaFormat::SparkDdl, &options).unwrap(),
            spark_ddl(current()).unwrap() + "\n"
        );
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SchemaArgs,
    }

    #[test]
    fn schema_args_parse_with_defaults() {
        let args = Cli::try_parse_from(["schema"]).unwrap().args;
        assert_eq!(args.format, SchemaFormat::Avsc);
        assert_eq!(args.flink, FlinkOptions::default());

        let args = Cli::try_parse_from([
            "schema",
            "--format",
            "flink-sql",
            "--flink-format",
            "avro",
            "--topic",
            "t",
            "--bootstrap-servers",
            "b:9092",
            "--schema-registry-url",
            "http://r:8081",
        ])
        .unwrap()
        .args;
        assert_eq!(args.format, SchemaFormat::FlinkSql);
        assert_eq!(args.flink.format, FlinkFormat::Avro);
        assert_eq!(args.flink.topic, "t");
        assert_eq!(args.flink.bootstrap_servers, "b:9092");
        assert_eq!(args.flink.schema_registry_url, "http://r:8081");
        assert_eq!(args.flink.table, DEFAULT_TABLE);

        let args = Cli::try_parse_from(["schema", "--format", "spark-ddl"])
            .unwrap()
            .args;
        assert_eq!(args.format, SchemaFormat::SparkDdl);
        assert!(Cli::try_parse_from(["schema", "--format", "sql"]).is_err());
        assert!(Cli::try_parse_from(["schema", "--flink-format", "json"]).is_err());
    }
}
