//! Downstream consumers of the topic: the generated Flink tables in
//! `examples/` stay what `css-kafka-bridge schema` prints. (A stock Confluent
//! consumer reading the bridge's registry-framed records is in `registry.rs`.)
//!
//! `BLESS=1 cargo test --test api downstream::` rewrites the generated blocks of the
//! examples after a schema change. `scripts/check-downstream` runs the generated
//! schemas and the examples in Spark and Flink themselves.

use crate::common;

use clap::Parser;
use common::repo_path;
use css_kafka_bridge::downstream::{SchemaArgs, render};

const FLINK_EXAMPLE: &str = "examples/flink/push_errors.sql";
const BEGIN: &str = "-- >>> generated: ";
const END: &str = "-- <<< generated";

#[derive(Parser)]
#[command(name = "css-kafka-bridge schema")]
struct SchemaCommand {
    #[command(flatten)]
    args: SchemaArgs,
}

/// `text` with every generated block replaced by what its marker's command
/// prints now.
fn regenerate(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.split_inclusive('\n');
    let mut blocks = 0;
    while let Some(line) = lines.next() {
        out.push_str(line);
        let Some(command) = line.trim_end().strip_prefix(BEGIN) else {
            continue;
        };
        let args = command
            .strip_prefix("css-kafka-bridge schema")
            .unwrap_or_else(|| panic!("not a schema command: {command}"));
        let args =
            SchemaCommand::try_parse_from(std::iter::once("schema").chain(args.split_whitespace()))
                .unwrap_or_else(|e| panic!("{command}: {e}"))
                .args;
        out.push_str(&render(args.format, &args.flink).unwrap());
        for skipped in lines.by_ref() {
            if skipped.trim_end() == END {
                out.push_str(skipped);
                break;
            }
        }
        assert!(
            out.ends_with(&format!("{END}\n")),
            "unterminated block: {command}"
        );
        blocks += 1;
    }
    assert!(blocks > 0, "no generated block");
    out
}

#[test]
fn flink_example_tables_are_generated_from_the_schema() {
    let path = repo_path(FLINK_EXAMPLE);
    let text = std::fs::read_to_string(&path).unwrap();
    let fresh = regenerate(&text);
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    assert!(
        text == fresh,
        "{FLINK_EXAMPLE} is out of date with the schema: run `BLESS=1 cargo test --test api downstream::`"
    );
    assert!(text.contains("'value.format' = 'avro-confluent'"));
    assert!(text.contains("'value.format' = 'avro'"));
}

#[test]
fn spark_example_reads_the_schema_file_itself() {
    let script =
        std::fs::read_to_string(repo_path("examples/spark/push_errors_stream.py")).unwrap();
    assert!(script.contains("schemas/push_error_record.avsc"));
    assert!(script.contains("substring(value, 6, length(value) - 5)"));
}
