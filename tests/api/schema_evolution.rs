//! The schema evolution contract of `schemas/push_error_record.avsc`.
//!
//! Records live in Kafka longer than any one version of the bridge, and
//! consumers upgrade on their own schedule, so every released schema must read
//! data written with every other one, in both directions (Schema Registry's
//! FULL_TRANSITIVE compatibility). The rules that keep it so:
//!
//! 1. Add a field only as `["null", T]` with `"default": null`, and only at
//!    the end of the record. (At the end, so that plain-Avro consumers
//!    decoding with an older schema, and Flink tables derived from one, still
//!    read every older field in place. Nullable, since a required field with a
//!    default passes every compatibility check but not Flink: its
//!    `avro-confluent` format reads with a schema derived from the table,
//!    whose `NOT NULL` columns have no default, so a table regenerated after
//!    the change fails on the first older record.)
//! 2. Never remove a field that has no default, never change a field's type (not
//!    even int → long: old readers cannot read the wider type; nor its logical
//!    type), and never make a required field optional or the reverse.
//! 3. Never rename a field. Aliases let a new reader find a renamed field in old
//!    data, but old readers still miss it; a rename is a remove plus an add, and
//!    rules 1 and 2 apply to both halves.
//! 4. Every released schema is kept, unchanged, as
//!    `schemas/history/push_error_record.vN.avsc` (N = 1, 2, ...), and the
//!    newest of them is the current schema: changing the schema means adding the
//!    next vN (or editing it, while it is unreleased).
//! 5. A change these rules forbid needs a new record name and topic, not a new
//!    version.
//!
//! The checks use apache-avro's schema resolution rules: its compatibility
//! checker for the schemas, and its reader with a reader schema for the data.
//! The negative tests prove that the checker catches each kind of breakage.

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use common::registry::TestRegistry;
use common::repo_path;
use css_kafka_bridge::avro::{self, RecordSchema, SCHEMA_JSON};
use css_kafka_bridge::css::{decode, validate::validate};
use css_kafka_bridge::record::flatten;

const HISTORY_DIR: &str = "schemas/history";
const PREFIX: &str = "push_error_record.v";

/// One released schema.
struct Released {
    version: u32,
    path: PathBuf,
    text: String,
    schema: Schema,
}

/// `schemas/history/`, oldest first.
fn history() -> Vec<Released> {
    let mut released: Vec<Released> = std::fs::read_dir(repo_path(HISTORY_DIR))
        .expect("schemas/history exists")
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let version = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.strip_suffix(".avsc"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| {
                    panic!("{HISTORY_DIR}/{name}: expected {PREFIX}<N>.avsc, nothing else")
                });
            let text = std::fs::read_to_string(&path).unwrap();
            let schema = Schema::parse_str(&text)
                .unwrap_or_else(|e| panic!("{}: not a valid Avro schema: {e}", path.display()));
            Released {
                version,
                path,
                text,
                schema,
            }
        })
        .collect();
    released.sort_by_key(|r| r.version);
    released
}

fn current() -> &'static Schema {
    RecordSchema::get().schema()
}

/// Both directions must resolve fully: `Partial` means some data would fail.
fn full_compatibility(old: &Schema, new: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(old, new) {
        Ok(Compatibility::Full) => {}
        other => return Err(format!("backward (new reads old): {other:?}")),
    }
    match SchemaCompatibility::can_read(new, old) {
        Ok(Compatibility::Full) => {}
        other => return Err(format!("forward (old reads new): {other:?}")),
    }
    same_logical_types(old, new)
}

/// apache-avro's checker, like Avro's resolution, takes a `long` and every
/// timestamp logical type for one another: a reader would take microseconds
/// for milliseconds. A field keeps its logical types across versions.
fn same_logical_types(old: &Schema, new: &Schema) -> Result<(), String> {
    fn logical_types(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(object) => {
                if let Some(serde_json::Value::String(logical)) = object.get("logicalType") {
                    found.push(logical.clone());
                }
                object.values().for_each(|v| logical_types(v, found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| logical_types(v, found)),
            _ => {}
        }
    }
    let of = |schema: &Schema| -> HashMap<String, Vec<String>> {
        record_fields(schema)
            .iter()
            .map(|field| {
                let mut found = Vec::new();
                logical_types(&serde_json::to_value(&field.schema).unwrap(), &mut found);
                (field.name.clone(), found)
            })
            .collect()
    };
    let (old, new) = (of(old), of(new));
    for (name, types) in &old {
        if new.get(name).is_some_and(|new_types| new_types != types) {
            return Err(format!(
                "logical types of {name}: {types:?} became {:?}",
                new[name]
            ));
        }
    }
    Ok(())
}

fn encode(schema: &Schema, value: Value) -> Vec<u8> {
    GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap()
}

/// Decodes `bytes` written with `writer` as `reader` sees them, as JSON.
fn read_as(writer: &Schema, reader: &Schema, bytes: &[u8]) -> serde_json::Value {
    let mut input = bytes;
    let value = GenericDatumReader::builder(writer)
        .reader_schema(reader)
        .build()
        .unwrap()
        .read_value(&mut input)
        .unwrap();
    assert!(input.is_empty(), "{} bytes left over", input.len());
    serde_json::Value::try_from(value).unwrap()
}

/// A value of `schema` with every field set, optional ones too (`filled`), or
/// with every optional field null. Strings carry their field name, so a field
/// read into the wrong place shows.
fn sample(schema: &Schema, filled: bool, name: &str) -> Value {
    match schema {
        Schema::Null => Value::Null,
        Schema::Boolean => Value::Boolean(true),
        Schema::Int => Value::Int(321),
        Schema::Long => Value::Long(1_251_234_567),
        Schema::Float => Value::Float(1.5),
        Schema::Double => Value::Double(2.5),
        Schema::Bytes => Value::Bytes(name.as_bytes().to_vec()),
        Schema::String => Value::String(format!("{name}-value")),
        Schema::Date => Value::Date(19_335),
        Schema::TimestampMillis => Value::TimestampMillis(1_670_588_075_123),
        Schema::Array(array) => Value::Array(vec![sample(&array.items, filled, name)]),
        Schema::Map(map) => Value::Map(HashMap::from([(
            format!("{name}-key"),
            sample(&map.types, filled, name),
        )])),
        Schema::Enum(e) => Value::Enum(0, e.symbols[0].clone()),
        Schema::Union(union) => {
            let variants = union.variants();
            let index = variants
                .iter()
                .position(|v| (*v == Schema::Null) != filled)
                .unwrap_or(0);
            Value::Union(
                index as u32,
                Box::new(sample(&variants[index], filled, name)),
            )
        }
        Schema::Record(record) => Value::Record(
            record
                .fields
                .iter()
                .map(|f| (f.name.clone(), sample(&f.schema, filled, &f.name)))
                .collect(),
        ),
        other => panic!("add a sample value for {other:?}"),
    }
}

fn record_fields(schema: &Schema) -> &[apache_avro::schema::RecordField] {
    match schema {
        Schema::Record(record) => &record.fields,
        _ => panic!("the schema is a record"),
    }
}

/// What `reader` should see of `written` (a record decoded as JSON, written
/// with another schema): shared fields as written, the reader's new fields at
/// their defaults.
fn expected_view(reader: &Schema, written: &serde_json::Value) -> serde_json::Value {
    let mut view = serde_json::Map::new();
    for field in record_fields(reader) {
        let value = match written.get(&field.name) {
            Some(value) => value.clone(),
            None => field.default.clone().unwrap_or_else(|| {
                panic!("field {} has no default and no written value", field.name)
            }),
        };
        view.insert(field.name.clone(), value);
    }
    serde_json::Value::Object(view)
}

/// The current schema, edited as JSON.
fn current_edited(edit: impl FnOnce(&mut Vec<serde_json::Value>)) -> Schema {
    let mut doc: serde_json::Value = serde_json::from_str(SCHEMA_JSON).unwrap();
    edit(doc["fields"].as_array_mut().unwrap());
    Schema::parse(&doc).unwrap()
}

fn field_mut<'a>(fields: &'a mut [serde_json::Value], name: &str) -> &'a mut serde_json::Value {
    fields
        .iter_mut()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no field {name}"))
}

#[test]
fn history_is_numbered_from_v1_without_gaps() {
    let versions: Vec<u32> = history().iter().map(|r| r.version).collect();
    assert!(!versions.is_empty(), "{HISTORY_DIR} holds no schema");
    assert_eq!(versions, (1..=versions.len() as u32).collect::<Vec<_>>());
}

#[test]
fn v1_is_the_first_released_record_schema() {
    let history = history();
    let v1 = &history[0];
    assert_eq!(v1.version, 1);
    match &v1.schema {
        Schema::Record(record) => {
            assert_eq!(record.name.fullname(None), "css.push_error.PushErrorRecord");
        }
        _ => panic!("v1 is a record"),
    }
}

/// Rule 4: a change to `schemas/push_error_record.avsc` must come with its
/// history file. Compared as parsed JSON, so defaults and docs count (the
/// Schema Registry treats any change as a new version) and formatting does not.
#[test]
fn newest_history_file_is_the_current_schema() {
    let history = history();
    let newest = history.last().unwrap();
    let current: serde_json::Value = serde_json::from_str(SCHEMA_JSON).unwrap();
    let released: serde_json::Value = serde_json::from_str(&newest.text).unwrap();
    assert!(
        current == released,
        "schemas/push_error_record.avsc differs from {}: a changed schema is a new \
         version; copy it to {HISTORY_DIR}/{PREFIX}{}.avsc (or update {} if that \
         version is unreleased), following the rules at the top of this file",
        newest.path.display(),
        newest.version + 1,
        newest.path.display(),
    );
    assert_eq!(current_schema_canonical(), newest.schema.canonical_form());
}

fn current_schema_canonical() -> String {
    current().canonical_form()
}

#[test]
fn every_released_schema_and_the_current_one_read_each_other() {
    for old in &history() {
        if let Err(e) = full_compatibility(&old.schema, current()) {
            panic!("{} vs the current schema: {e}", old.path.display());
        }
    }
}

/// Rule 1: every field a version adds is nullable with a null default.
#[test]
fn every_added_field_is_nullable_with_a_null_default() {
    let history = history();
    let versions = history
        .iter()
        .map(|r| (format!("v{}", r.version), r.text.as_str()));
    let versions: Vec<_> = versions
        .chain([("the current schema".into(), SCHEMA_JSON)])
        .collect();
    for pair in versions.windows(2) {
        let ((_, older), (name, newer)) = (&pair[0], &pair[1]);
        let wrong = added_fields_not_optional(older, newer);
        assert!(
            wrong.is_empty(),
            "{name} adds {wrong:?}: not [\"null\", T] with a null default (rule 1)"
        );
    }
}

#[test]
fn a_field_added_required_or_with_a_wider_union_breaks_rule_1() {
    let added = |field: serde_json::Value| {
        let mut newer: serde_json::Value = serde_json::from_str(SCHEMA_JSON).unwrap();
        newer["fields"].as_array_mut().unwrap().push(field);
        added_fields_not_optional(SCHEMA_JSON, &newer.to_string())
    };
    let required = serde_json::json!({"name": "region", "type": "string", "default": ""});
    assert_eq!(added(required), ["region"]);
    let wider =
        serde_json::json!({"name": "region", "type": ["null", "string", "long"], "default": null});
    assert_eq!(added(wider), ["region"]);
    let optional =
        serde_json::json!({"name": "region", "type": ["null", "string"], "default": null});
    assert!(added(optional).is_empty());
}

/// The fields `newer` adds to `older` (schemas as JSON text, defaults
/// included) that are not `["null", T]` with a null default.
fn added_fields_not_optional(older: &str, newer: &str) -> Vec<String> {
    let fields = |text: &str| -> Vec<serde_json::Value> {
        let schema: serde_json::Value = serde_json::from_str(text).unwrap();
        schema["fields"].as_array().unwrap().clone()
    };
    let known: Vec<_> = fields(older).iter().map(|f| f["name"].clone()).collect();
    fields(newer)
        .into_iter()
        .filter(|f| !known.contains(&f["name"]))
        .filter(|f| {
            let optional = f["type"]
                .as_array()
                .is_some_and(|t| t.len() == 2 && t[0] == "null");
            !(optional && f.get("default") == Some(&serde_json::Value::Null))
        })
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect()
}

/// FULL_TRANSITIVE: any two released versions, not only neighbours.
#[test]
fn released_schemas_read_each_other_pairwise() {
    let history = history();
    for (i, a) in history.iter().enumerate() {
        for b in &history[i + 1..] {
            if let Err(e) = full_compatibility(&a.schema, &b.schema) {
                panic!("v{} vs v{}: {e}", a.version, b.version);
            }
        }
    }
}

/// Backward, on data: what each released schema wrote, the current one reads.
#[test]
fn data_written_with_each_released_schema_reads_with_the_current_one() {
    for old in &history() {
        for filled in [true, false] {
            let value = sample(&old.schema, filled, "");
            let written = serde_json::Value::try_from(value.clone()).unwrap();
            let bytes = encode(&old.schema, value);
            let read = read_as(&old.schema, current(), &bytes);
            assert_eq!(
                read,
                expected_view(current(), &written),
                "v{} (filled: {filled})",
                old.version
            );
        }
    }
}

/// Forward, on data: records the bridge writes today, each released schema
/// reads.
#[test]
fn bridge_records_read_with_every_released_schema() {
    let seed = std::fs::read(repo_path("tests/fixtures/seed-sample.json")).unwrap();
    let callback = validate(decode(&seed).unwrap()).unwrap();
    let records = flatten(&callback, 1_670_588_075_000);
    assert!(records.len() > 1);
    for old in &history() {
        for record in &records {
            let bytes = avro::encode(record);
            let written = avro::decode_to_json(&bytes).unwrap();
            let read = read_as(current(), &old.schema, &bytes);
            assert_eq!(
                read,
                expected_view(&old.schema, &written),
                "v{}",
                old.version
            );
        }
        // And the sample with optional fields both set and null.
        for filled in [true, false] {
            let value = sample(current(), filled, "");
            let written = serde_json::Value::try_from(value.clone()).unwrap();
            let read = read_as(current(), &old.schema, &encode(current(), value));
            assert_eq!(read, expected_view(&old.schema, &written));
        }
    }
}

/// The history registers in order under one subject of a registry enforcing
/// compatibility, as a release pipeline would register it.
#[tokio::test]
async fn history_registers_in_order_under_one_subject() {
    let registry = TestRegistry::start().await;
    let subject = "css.push-errors-value";
    let ids: Vec<u32> = history()
        .iter()
        .map(|r| registry.register(subject, &r.text))
        .collect();
    assert_eq!(registry.versions(subject), ids);
    assert_eq!(
        registry.register(subject, SCHEMA_JSON),
        *ids.last().unwrap()
    );
}

// The checker catches breakage.

#[test]
fn a_compatible_evolution_passes() {
    let evolved = current_edited(|fields| {
        fields.push(serde_json::json!({
            "name": "region", "type": ["null", "string"], "default": null,
            "doc": "An optional field added with a null default: allowed."
        }));
    });
    full_compatibility(current(), &evolved).unwrap();
    // And on data, both ways.
    let old = sample(current(), true, "");
    let read = read_as(current(), &evolved, &encode(current(), old.clone()));
    assert_eq!(read["region"], serde_json::Value::Null);
    let new = sample(&evolved, true, "");
    let read = read_as(&evolved, current(), &encode(&evolved, new));
    assert!(read.get("region").is_none());
}

#[test]
fn adding_a_field_without_a_default_breaks_backward_compatibility() {
    let evolved = current_edited(|fields| {
        fields.push(serde_json::json!({"name": "region", "type": "string"}));
    });
    let error = full_compatibility(current(), &evolved).unwrap_err();
    assert!(error.starts_with("backward"), "{error}");
    assert!(SchemaCompatibility::can_read(current(), &evolved).is_err());
    // Old data cannot be read: there is nothing to fill `region` with.
    let bytes = encode(current(), sample(current(), true, ""));
    let mut input = bytes.as_slice();
    let result = GenericDatumReader::builder(current())
        .reader_schema(&evolved)
        .build()
        .and_then(|reader| reader.read_value(&mut input));
    assert!(result.is_err(), "{result:?}");
}

#[test]
fn removing_a_field_without_a_default_breaks_forward_compatibility() {
    let evolved = current_edited(|fields| fields.retain(|f| f["name"] != "error_name"));
    let error = full_compatibility(current(), &evolved).unwrap_err();
    assert!(error.starts_with("forward"), "{error}");
    assert!(SchemaCompatibility::can_read(&evolved, current()).is_err());
    // Old readers cannot read new data: `error_name` is missing.
    let bytes = encode(&evolved, sample(&evolved, true, ""));
    let mut input = bytes.as_slice();
    let result = GenericDatumReader::builder(&evolved)
        .reader_schema(current())
        .build()
        .and_then(|reader| reader.read_value(&mut input));
    assert!(result.is_err(), "{result:?}");
}

#[test]
fn changing_a_field_type_is_caught() {
    // Narrowing: long → int breaks backward.
    let narrowed = current_edited(|fields| field_mut(fields, "appid")["type"] = "int".into());
    let error = full_compatibility(current(), &narrowed).unwrap_err();
    assert!(error.starts_with("backward"), "{error}");

    // Widening: int → long is a valid promotion for new readers, but old
    // readers cannot read a long as an int.
    let widened = current_edited(|fields| field_mut(fields, "event_type")["type"] = "long".into());
    let error = full_compatibility(current(), &widened).unwrap_err();
    assert!(error.starts_with("forward"), "{error}");

    // Unrelated type: string → long breaks both.
    let replaced = current_edited(|fields| field_mut(fields, "stream_id")["type"] = "long".into());
    assert!(SchemaCompatibility::can_read(current(), &replaced).is_err());
    assert!(SchemaCompatibility::can_read(&replaced, current()).is_err());
}

#[test]
fn changing_a_logical_type_is_caught() {
    let micros = current_edited(|fields| {
        field_mut(fields, "received_at")["type"]["logicalType"] = "timestamp-micros".into();
    });
    let error = full_compatibility(current(), &micros).unwrap_err();
    assert!(error.starts_with("logical types of received_at"), "{error}");
}

#[test]
fn making_a_required_field_optional_is_caught() {
    let loosened = current_edited(|fields| {
        let field = field_mut(fields, "error_name");
        field["type"] = serde_json::json!(["null", "string"]);
        field["default"] = serde_json::Value::Null;
    });
    // New readers read old data, but old readers would fail on a null.
    let error = full_compatibility(current(), &loosened).unwrap_err();
    assert!(error.starts_with("forward"), "{error}");
}

#[test]
fn renaming_a_field_is_caught_even_with_an_alias() {
    let renamed = current_edited(|fields| {
        let field = field_mut(fields, "error_name");
        field["name"] = "error_label".into();
        field["aliases"] = serde_json::json!(["error_name"]);
    });
    let error = full_compatibility(current(), &renamed).unwrap_err();
    assert!(error.starts_with("forward"), "{error}");
}
