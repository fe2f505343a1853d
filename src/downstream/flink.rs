//! The Flink SQL `CREATE TABLE` for the topic: the connector options, the
//! columns, the event time and its watermark.

use std::fmt::Write as _;

use apache_avro::Schema;

use super::*;

/// How a Flink table decodes the message values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FlinkFormat {
    /// Confluent wire format (magic byte, schema id, Avro binary): the writer
    /// schema comes from the registry, so tables survive compatible evolution.
    #[default]
    AvroConfluent,
    /// Plain Avro binary, as the bridge writes without a registry: the reader
    /// schema is derived from the table's columns, which must match exactly.
    Avro,
}

impl FlinkFormat {
    /// The Flink format identifier.
    pub fn identifier(self) -> &'static str {
        match self {
            FlinkFormat::AvroConfluent => "avro-confluent",
            FlinkFormat::Avro => "avro",
        }
    }
}

/// Where a new Flink job starts reading (`scan.startup.mode`): the modes
/// the table is complete with. `timestamp` and `specific-offsets` need
/// options of their own: add them to a generated table by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StartupMode {
    /// The whole retained topic.
    #[default]
    EarliestOffset,
    /// Only what comes after the job starts.
    LatestOffset,
    /// Where the consumer group (`--group-id`) committed, and the whole
    /// retained topic where it has not yet.
    GroupOffsets,
}

impl StartupMode {
    /// Flink's name of the mode.
    pub fn identifier(self) -> &'static str {
        match self {
            StartupMode::EarliestOffset => "earliest-offset",
            StartupMode::LatestOffset => "latest-offset",
            StartupMode::GroupOffsets => "group-offsets",
        }
    }
}

/// Connection settings written into the Flink `CREATE TABLE`. They are
/// placeholders for the target environment; the columns come from the schema.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct FlinkOptions {
    /// Flink value format: the Confluent wire format, or plain Avro binary.
    #[arg(
        id = "flink_format",
        long = "flink-format",
        value_enum,
        default_value_t
    )]
    pub format: FlinkFormat,
    /// Kafka topic the table reads.
    #[arg(long, default_value = DEFAULT_TOPIC)]
    pub topic: String,
    /// Kafka bootstrap servers, as reachable from the Flink cluster.
    #[arg(long, default_value = DEFAULT_BOOTSTRAP_SERVERS)]
    pub bootstrap_servers: String,
    /// Schema Registry URL (used by the avro-confluent format only).
    #[arg(long, default_value = DEFAULT_SCHEMA_REGISTRY_URL)]
    pub schema_registry_url: String,
    /// Name of the Flink table.
    #[arg(long = "flink-table", default_value = DEFAULT_TABLE)]
    pub table: String,
    /// Flink 'scan.startup.mode'.
    #[arg(long = "scan-startup-mode", value_enum, default_value_t)]
    pub startup_mode: StartupMode,
    /// Flink 'properties.group.id': the consumer group whose committed
    /// offsets `group-offsets` starts from (required there).
    #[arg(long, required_if_eq("startup_mode", "group-offsets"))]
    pub group_id: Option<String>,
}

impl Default for FlinkOptions {
    fn default() -> Self {
        FlinkOptions {
            format: FlinkFormat::default(),
            topic: DEFAULT_TOPIC.to_owned(),
            bootstrap_servers: DEFAULT_BOOTSTRAP_SERVERS.to_owned(),
            schema_registry_url: DEFAULT_SCHEMA_REGISTRY_URL.to_owned(),
            table: DEFAULT_TABLE.to_owned(),
            startup_mode: StartupMode::default(),
            group_id: None,
        }
    }
}

/// A Flink SQL `CREATE TABLE` reading the bridge's topic with the Kafka
/// connector: one physical column per Avro field (same order, types and
/// nullability, with the field docs as comments), the message key declared as
/// `stream_id` (`raw` key format, value keeps all fields), and an event-time
/// column with a watermark.
///
/// The rowtime is `event_time AS COALESCE(occur_time, report_time)`, not
/// `occur_time` itself: `occur_time` is null for error groups without details,
/// and Flink fails the job on a null rowtime, while `report_time` is never null
/// and is the best time such a record has. It is bounded to
/// [`EVENT_TIME_LEAD_MINUTES`] past `report_time` and `received_at`, so that a
/// time from the far future cannot carry the watermark past the records after
/// it.
pub fn flink_sql(schema: &Schema, options: &FlinkOptions) -> Result<String, DownstreamError> {
    let fields = record_fields(schema)?;
    require(
        &fields,
        KEY_FIELD,
        &Column::required(Type::String),
        "STRING NOT NULL",
    )?;
    require(
        &fields,
        REPORT_TIME_FIELD,
        &Column::required(Type::TimestampMillis),
        "a non-null timestamp-millis",
    )?;
    require_type(
        &fields,
        OCCUR_TIME_FIELD,
        &Type::TimestampMillis,
        "a timestamp-millis",
    )?;
    require(
        &fields,
        RECEIVED_AT_FIELD,
        &Column::required(Type::TimestampMillis),
        "a non-null timestamp-millis",
    )?;

    let mut out = String::new();
    out.push_str(&flink_header(schema, options));
    let _ = writeln!(out, "CREATE TABLE {} (", flink_ident(&options.table));
    for field in &fields {
        let _ = write!(
            out,
            "  {} {}",
            flink_ident(&field.name),
            flink_type(&field.column)
        );
        if let Some(doc) = &field.doc {
            let _ = write!(out, " COMMENT {}", sql_string(&one_line(doc)));
        }
        out.push_str(",\n");
    }
    let event_time = flink_ident(EVENT_TIME_COLUMN);
    let _ = writeln!(
        out,
        "  -- Event time: when the error occurred, or when CSS reported it for error\n  \
         -- groups without details (a rowtime must never be null), at most \
         {EVENT_TIME_LEAD_MINUTES} minute\n  \
         -- past the report and the bridge's receipt: one time from the far future\n  \
         -- would carry the watermark past every record after it. The watermark\n  \
         -- trails it by CSS's retry window (about 12 minutes) plus margin, so that\n  \
         -- a record whose first copy is a late retry is still counted."
    );
    let (occur_time, report_time) = (
        flink_ident(OCCUR_TIME_FIELD),
        flink_ident(REPORT_TIME_FIELD),
    );
    let received_at = flink_ident(RECEIVED_AT_FIELD);
    let lead = format!("INTERVAL '{EVENT_TIME_LEAD_MINUTES}' MINUTE");
    let _ = writeln!(
        out,
        "  {event_time} AS LEAST(COALESCE({occur_time}, {report_time}),\n    \
         {report_time} + {lead}, {received_at} + {lead}),"
    );
    let _ = writeln!(
        out,
        "  WATERMARK FOR {event_time} AS {event_time} - INTERVAL '{WATERMARK_DELAY_MINUTES}' MINUTE"
    );
    out.push_str(&with_clause(options));
    Ok(out)
}

/// How long a partition goes without records before the watermark stops
/// waiting for it (Flink 1.18+).
const IDLE_TIMEOUT: &str = "1 min";

/// The table's `WITH (...)` options: the Kafka connector, the key as the raw
/// stream id, the value in the chosen Avro format.
fn with_clause(options: &FlinkOptions) -> String {
    let mut out = String::from(") WITH (\n");
    let mut with = vec![
        ("connector", "kafka".to_owned()),
        ("topic", options.topic.clone()),
        (
            "properties.bootstrap.servers",
            options.bootstrap_servers.clone(),
        ),
        (
            "scan.startup.mode",
            options.startup_mode.identifier().to_owned(),
        ),
        // The watermark is the least of the partitions'. Records are keyed by
        // stream and errors come in bursts, so a partition can go without
        // records for long: without an idle timeout it would hold every
        // window back until its next record.
        ("scan.watermark.idle-timeout", IDLE_TIMEOUT.to_owned()),
        ("key.format", "raw".to_owned()),
        ("key.fields", KEY_FIELD.to_owned()),
        ("value.format", options.format.identifier().to_owned()),
    ];
    if let Some(group) = &options.group_id {
        with.push(("properties.group.id", group.clone()));
    }
    if options.startup_mode == StartupMode::GroupOffsets {
        // Without it a group that has committed nothing yet has no offset
        // to start from, and the job fails.
        with.push(("properties.auto.offset.reset", "earliest".to_owned()));
    }
    if options.format == FlinkFormat::AvroConfluent {
        with.push((
            "value.avro-confluent.url",
            options.schema_registry_url.clone(),
        ));
    }
    with.push(("value.fields-include", "ALL".to_owned()));
    let last = with.len() - 1;
    for (i, (key, value)) in with.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {} = {}{}",
            sql_string(key),
            sql_string(value),
            if i == last { "" } else { "," }
        );
    }
    out.push_str(");\n");
    out
}

fn flink_header(schema: &Schema, options: &FlinkOptions) -> String {
    let name = match schema {
        Schema::Record(record) => record.name.fullname(None),
        _ => String::new(),
    };
    let mut header = format!(
        "-- Flink SQL table over the css-kafka-bridge topic, generated from the Avro schema\n\
         -- {name} by\n\
         --   {}\n\
         -- Regenerate it rather than editing the columns by hand.\n\
         -- Timestamps are TIMESTAMP(3) holding UTC: the type Flink's Avro formats map\n\
         -- timestamp-millis to by default.\n",
        command_line(options)
    );
    header.push_str(match options.format {
        FlinkFormat::AvroConfluent => {
            "-- avro-confluent: each message carries its writer schema id; Flink fetches that\n\
             -- schema from the registry and resolves it to the reader schema derived from the\n\
             -- columns below, so a table generated from an older or newer compatible schema\n\
             -- keeps reading. (Flink 1.18+ also takes the .avsc itself as the reader schema\n\
             -- via 'value.avro-confluent.schema'.)\n"
        }
        FlinkFormat::Avro => {
            "-- avro (plain Avro binary, no registry): the messages carry no schema and Flink\n\
             -- derives the one it reads with from the physical columns below, so they must\n\
             -- match the .avsc field for field, in order, with the same types and nullability\n\
             -- (hence MAP<STRING NOT NULL, STRING NOT NULL>: nullable map values would be\n\
             -- decoded as unions). Messages of an older schema fail to decode with a newer\n\
             -- table: through an upgrade keep the older table, which reads past the optional\n\
             -- fields a compatible change appends, and regenerate it once no message of the\n\
             -- older schema is left to read (the avro.schema.fingerprint header tells which\n\
             -- schema wrote a message).\n"
        }
    });
    header
}

/// The `css-kafka-bridge schema` command that prints this table: the options
/// that differ from the defaults, shell-quoted where needed.
fn command_line(options: &FlinkOptions) -> String {
    let defaults = FlinkOptions::default();
    let mut command = String::from("css-kafka-bridge schema --format flink-sql");
    let mut flag = |name: &str, value: &str, default: &str| {
        if value != default {
            let _ = write!(command, " --{name} {}", shell_word(value));
        }
    };
    flag(
        "flink-format",
        options.format.identifier(),
        defaults.format.identifier(),
    );
    flag("topic", &options.topic, &defaults.topic);
    flag(
        "bootstrap-servers",
        &options.bootstrap_servers,
        &defaults.bootstrap_servers,
    );
    if options.format == FlinkFormat::AvroConfluent {
        flag(
            "schema-registry-url",
            &options.schema_registry_url,
            &defaults.schema_registry_url,
        );
    }
    flag("flink-table", &options.table, &defaults.table);
    flag(
        "scan-startup-mode",
        options.startup_mode.identifier(),
        defaults.startup_mode.identifier(),
    );
    if let Some(group) = &options.group_id {
        flag("group-id", group, "");
    }
    command
}

fn shell_word(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:/,@=+%".contains(c));
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}

fn flink_type(column: &Column) -> String {
    let base = match &column.ty {
        Type::Boolean => "BOOLEAN".to_owned(),
        Type::Int => "INT".to_owned(),
        Type::Long => "BIGINT".to_owned(),
        Type::Float => "FLOAT".to_owned(),
        Type::Double => "DOUBLE".to_owned(),
        Type::Bytes => "BYTES".to_owned(),
        Type::String => "STRING".to_owned(),
        Type::Date => "DATE".to_owned(),
        Type::TimestampMillis => "TIMESTAMP(3)".to_owned(),
        Type::Array(items) => format!("ARRAY<{}>", flink_type(items)),
        // Avro map keys are strings and never null.
        Type::Map(values) => format!("MAP<STRING NOT NULL, {}>", flink_type(values)),
        Type::Row(fields) => format!(
            "ROW<{}>",
            fields
                .iter()
                .map(|f| format!("{} {}", flink_ident(&f.name), flink_type(&f.column)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    base + not_null(column)
}

fn sql_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
