//! The Avro contract: the schema embedded from `schemas/`, record encoding, and
//! decoding for the operator tools.
//!
//! The schema file is the single source of truth. It is compiled into the binary
//! and parsed once on first use. The bytes are plain Avro binary (no container
//! header, no framing): consumers read them with the same `.avsc` file, or
//! identify it from the message headers.
//!
//! apache-avro, the reference implementation, handles the schema (canonical
//! form, compatibility checks) and decoding for the tools. Records are written by
//! [`encode_into`], a direct encoder for this one record type: apache-avro's serde
//! writer hashes every field name of every record, which made encoding the most
//! expensive stage of a callback (2.9 µs of the hot path for the sample's four
//! records, against 1.6 µs to decode and validate it). The faster serde Avro
//! crate depends on LGPL code, which the license policy excludes. Avro's binary
//! encoding of a fixed record is small and fully specified; the tests hold the
//! encoder to apache-avro's bytes for any field values, so a schema change that
//! the encoder does not follow fails them.

use std::ffi::CStr;
use std::sync::LazyLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::Schema;
use apache_avro::types::Value;
use sha2::{Digest, Sha256};

use crate::record::{PushErrorRecord, StreamParams};

pub mod wire;

/// The record schema, as kept in `schemas/`.
pub const SCHEMA_JSON: &str = include_str!("../../schemas/push_error_record.avsc");

/// Kafka header carrying the schema's full name.
pub const SCHEMA_NAME_HEADER: &CStr = c"avro.schema.name";
/// Kafka header carrying `sha256:` and the hex SHA-256 of the schema's Parsing
/// Canonical Form (the Avro specification's fingerprint), so a consumer can tell
/// which schema version wrote a message.
pub const SCHEMA_FINGERPRINT_HEADER: &CStr = c"avro.schema.fingerprint";

/// The parsed schema with what the hot path needs precomputed.
pub struct RecordSchema {
    schema: Schema,
    full_name: String,
    fingerprint: String,
}

static RECORD_SCHEMA: LazyLock<RecordSchema> = LazyLock::new(|| {
    // The embedded file is checked by unit tests; failing here is a build defect.
    let schema =
        Schema::parse_str(SCHEMA_JSON).expect("schemas/push_error_record.avsc is valid Avro");
    let full_name = match &schema {
        Schema::Record(record) => record.name.fullname(None),
        _ => unreachable!("the record schema is a record"),
    };
    let fingerprint = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(parsing_canonical_form(SCHEMA_JSON)))
    );
    RecordSchema {
        schema,
        full_name,
        fingerprint,
    }
});

/// The Avro specification's Parsing Canonical Form of `schema_json`.
///
/// apache-avro's `canonical_form` keeps `{"type":"long"}` for a field that had a
/// logical type, where the specification strips the attribute and then writes
/// the primitive as `"long"` (as fastavro and the Java library do). Removing
/// logical types first gives the canonical form, and so the fingerprint, that
/// other implementations compute.
fn parsing_canonical_form(schema_json: &str) -> String {
    fn strip_logical_types(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("logicalType");
                map.values_mut().for_each(strip_logical_types);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip_logical_types),
            _ => {}
        }
    }
    let mut doc: serde_json::Value = serde_json::from_str(schema_json).expect("the schema is JSON");
    strip_logical_types(&mut doc);
    Schema::parse_str(&doc.to_string())
        .expect("the schema without logical types is valid")
        .canonical_form()
}

impl RecordSchema {
    /// The one record schema of this build.
    pub fn get() -> &'static RecordSchema {
        &RECORD_SCHEMA
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Namespace-qualified name, `css.push_error.PushErrorRecord`.
    pub fn full_name(&self) -> &str {
        &self.full_name
    }

    /// See [`SCHEMA_FINGERPRINT_HEADER`].
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// Appends the Avro binary encoding of `record` to `buf`: its fields in the
/// schema's order, each as the specification encodes its type. Writing to a
/// vector cannot fail.
pub fn encode_into(record: &PushErrorRecord<'_>, buf: &mut Vec<u8>) {
    let mut out = Encoder(buf);
    out.string(record.event_id.as_str());
    out.long(record.event_type.into());
    out.long(record.appid);
    out.string(record.stream_id);
    out.optional(record.domain, Encoder::string);
    out.optional(record.path, Encoder::string);
    out.optional(record.sequence, Encoder::string);
    out.optional(record.user_ip, Encoder::string);
    out.long(record.report_time);
    out.optional(record.report_interval_ms, Encoder::long);
    out.map(record.stream_params);
    out.long(record.error_type.into());
    out.string(record.error_name);
    out.optional(record.type_desc_en, Encoder::string);
    out.optional(record.type_desc_cn, Encoder::string);
    out.long(record.error_count);
    out.optional(record.event_key, Encoder::string);
    out.optional(record.detail_index.map(i64::from), Encoder::long);
    out.optional(record.detail_desc, Encoder::string);
    out.optional(record.occur_time, Encoder::long);
    out.optional(record.interval_ms, Encoder::long);
    out.long(record.received_at);
}

/// The longest varint: a 64-bit number, 7 bits a byte.
const MAX_VARINT: usize = 10;

/// The most [`encode_into`] writes for one record besides its texts: the
/// event id (32 hex digits), every number and length prefix at its longest
/// varint, and every union's branch.
const MAX_RECORD_OVERHEAD: usize = {
    // Numbers: event_type, appid, report_time, report_interval_ms,
    // error_type, error_count, detail_index, occur_time, interval_ms,
    // received_at, and the map's entry count.
    let numbers = 11;
    // Length prefixes: event_id, stream_id, domain, path, sequence, user_ip,
    // error_name, type_desc_en, type_desc_cn, event_key, detail_desc.
    let prefixes = 11;
    // `["null", T]` unions: domain, path, sequence, user_ip,
    // report_interval_ms, type_desc_en, type_desc_cn, event_key,
    // detail_index, detail_desc, occur_time, interval_ms.
    let branches = 12;
    // The event id's digits, and the empty block that ends the map.
    32 + (numbers + prefixes) * MAX_VARINT + branches + 1
};

/// The most [`encode_into`] writes for `records` records whose texts
/// (strings other than the event id, and the map's keys and values) take
/// `text_bytes` in all, each with a map of `map_entries` entries. Lets the
/// size of a callback's records be bounded before they are made.
pub fn max_encoded_len(records: usize, text_bytes: usize, map_entries: usize) -> usize {
    let per_record = map_entries.saturating_mul(2 * MAX_VARINT) + MAX_RECORD_OVERHEAD;
    records
        .saturating_mul(per_record)
        .saturating_add(text_bytes)
}

/// Avro's binary encoding of the types the record schema uses.
struct Encoder<'b>(&'b mut Vec<u8>);

impl Encoder<'_> {
    /// `int` and `long` alike: zig-zag, then a little-endian base-128 varint.
    fn long(&mut self, value: i64) {
        let mut n = ((value << 1) ^ (value >> 63)) as u64;
        while n >= 0x80 {
            self.0.push(n as u8 | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
    }

    /// Length, then the UTF-8 bytes.
    fn string(&mut self, value: &str) {
        self.long(value.len() as i64);
        self.0.extend_from_slice(value.as_bytes());
    }

    /// A `["null", T]` union: branch 0 for null, branch 1 then the value.
    fn optional<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut Self, T)) {
        match value {
            None => self.long(0),
            Some(value) => {
                self.long(1);
                write(self, value);
            }
        }
    }

    /// A map of strings as one block: entry count, entries, then the empty
    /// block that ends the map.
    fn map(&mut self, entries: StreamParams<'_>) {
        if !entries.is_empty() {
            self.long(entries.len() as i64);
            for (key, value) in entries {
                self.string(key);
                self.string(value);
            }
        }
        self.long(0);
    }
}

/// Encodes `record` into a new buffer.
pub fn encode(record: &PushErrorRecord<'_>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    encode_into(record, &mut buf);
    buf
}

/// Decodes one published record into JSON, for `tail` and tests. Takes plain
/// Avro and the Confluent wire format alike: a plain record never starts with a
/// zero byte (its first field, `event_id`, is a 32-character string, encoded
/// with the length 32 first), while the Confluent magic byte is zero.
pub fn decode_to_json(mut bytes: &[u8]) -> Result<serde_json::Value, apache_avro::Error> {
    if bytes.len() > 5 && bytes[0] == wire::MAGIC_BYTE {
        bytes = &bytes[5..];
    }
    let reader = GenericDatumReader::builder(&RECORD_SCHEMA.schema).build()?;
    let value: Value = reader.read_value(&mut bytes)?;
    if !bytes.is_empty() {
        return Err(apache_avro::Error::new(
            apache_avro::error::Details::ReadBytes(std::io::Error::other(format!(
                "{} trailing bytes after the record",
                bytes.len()
            ))),
        ));
    }
    serde_json::Value::try_from(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::css::{decode, validate::validate};
    use crate::record::{EventId, flatten};
    use apache_avro::writer::datum::GenericDatumWriter;
    use std::borrow::Cow;
    use std::collections::HashMap;

    const SEED: &str = include_str!("../../tests/fixtures/seed-sample.json");

    #[test]
    fn embedded_schema_is_the_record_schema() {
        let schema = RecordSchema::get();
        assert_eq!(schema.full_name(), "css.push_error.PushErrorRecord");
        assert!(schema.fingerprint().starts_with("sha256:"));
        assert_eq!(schema.fingerprint().len(), "sha256:".len() + 64);
    }

    #[test]
    fn fingerprint_is_the_one_other_avro_implementations_compute() {
        // fastavro: fingerprint(to_parsing_canonical_form(parse_schema(avsc)), "SHA-256");
        // tests/api/callback.rs checks the published header against fastavro at run time.
        let form = parsing_canonical_form(SCHEMA_JSON);
        assert!(
            form.contains(r#"{"name":"report_time","type":"long"}"#),
            "{form}"
        );
        assert!(!form.contains("logicalType") && !form.contains("doc"));
    }

    #[test]
    fn every_optional_field_is_a_null_union_with_a_null_default() {
        let doc: serde_json::Value = serde_json::from_str(SCHEMA_JSON).unwrap();
        for field in doc["fields"].as_array().unwrap() {
            if let Some(union) = field["type"].as_array() {
                assert_eq!(union[0], "null", "{}", field["name"]);
                assert!(
                    field["default"].is_null() && field.get("default").is_some(),
                    "{}",
                    field["name"]
                );
            }
        }
    }

    /// The direct encoder ([`encode_into`]) must produce exactly the bytes of
    /// apache-avro's reference `Value` encoder, for a record with every optional
    /// field set and one with every optional field null.
    #[test]
    fn encoding_matches_the_reference_value_encoder_byte_for_byte() {
        let json = SEED.replacen('{', r#"{"user_ip":"1.2.3.4","#, 1);
        let callback = validate(decode(json.as_bytes()).unwrap()).unwrap();
        let mut records = flatten(&callback, 1_670_588_075_000);
        let mut bare = records[0].clone();
        (
            bare.domain,
            bare.path,
            bare.sequence,
            bare.user_ip,
            bare.report_interval_ms,
        ) = (None, None, None, None, None);
        (bare.type_desc_en, bare.type_desc_cn, bare.event_key) = (None, None, None);
        (
            bare.detail_index,
            bare.detail_desc,
            bare.occur_time,
            bare.interval_ms,
        ) = (None, None, None, None);
        bare.stream_params = &[];
        records.push(bare);
        for record in &records {
            let ours = encode(record);
            let reference = GenericDatumWriter::builder(RecordSchema::get().schema())
                .build()
                .unwrap()
                .write_value_to_vec(reference_value(record))
                .unwrap();
            assert_eq!(ours, reference);
        }
    }

    mod any_record {
        use super::*;
        use proptest::prelude::*;

        /// apache-avro's serde writer keeps the map's entry order, so its bytes
        /// are comparable for maps of any size (the `Value` encoder's are not).
        fn apache_avro_bytes(record: &PushErrorRecord<'_>) -> Vec<u8> {
            let mut bytes = Vec::new();
            GenericDatumWriter::builder(RecordSchema::get().schema())
                .build()
                .unwrap()
                .write_ser(&mut bytes, record)
                .unwrap();
            bytes
        }

        /// The record's optional fields: texts (domain, path, sequence, user_ip,
        /// the two descriptions, event_key, detail_desc) and numbers
        /// (report_interval_ms, detail_index, occur_time, interval_ms).
        const OPTIONAL_TEXTS: usize = 8;
        const OPTIONAL_NUMBERS: usize = 4;

        proptest! {
            /// Any value of every field, including the extremes of each integer
            /// and text that is not ASCII, encodes as apache-avro encodes it.
            #[test]
            fn encodes_as_apache_avro_does(
                stream_id in ".{0,40}",
                texts in prop::collection::vec(".{0,40}", OPTIONAL_TEXTS),
                present in prop::collection::vec(any::<bool>(), OPTIONAL_TEXTS + OPTIONAL_NUMBERS),
                ints in prop::collection::vec(any::<i32>(), 3),
                longs in prop::collection::vec(any::<i64>(), 7),
                params in prop::collection::vec((".{0,8}", ".{0,16}"), 0..4),
                digest in any::<[u8; 16]>(),
            ) {
                let params: Vec<(Cow<'_, str>, Cow<'_, str>)> = params
                    .iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str())))
                    .collect();
                // Optional text i, and whether optional number i is there.
                let text = |i: usize| present[i].then_some(texts[i].as_str());
                let number = |i: usize| present[OPTIONAL_TEXTS + i];
                let record = PushErrorRecord {
                    event_id: EventId::from_digest(&digest),
                    event_type: ints[0],
                    appid: longs[0],
                    stream_id: &stream_id,
                    domain: text(0),
                    path: text(1),
                    sequence: text(2),
                    user_ip: text(3),
                    report_time: longs[1],
                    report_interval_ms: number(0).then_some(longs[2]),
                    stream_params: &params,
                    error_type: ints[1],
                    error_name: "AnyName",
                    type_desc_en: text(4),
                    type_desc_cn: text(5),
                    error_count: longs[3],
                    event_key: text(6),
                    detail_index: number(1).then_some(ints[2]),
                    detail_desc: text(7),
                    occur_time: number(2).then_some(longs[4]),
                    interval_ms: number(3).then_some(longs[5]),
                    received_at: longs[6],
                };
                let encoded = encode(&record);
                prop_assert_eq!(&encoded, &apache_avro_bytes(&record));

                let texts: usize = [Some(stream_id.as_str()), Some(record.error_name)]
                    .into_iter()
                    .chain((0..OPTIONAL_TEXTS).map(text))
                    .flatten()
                    .chain(params.iter().flat_map(|(k, v)| [&**k, &**v]))
                    .map(str::len)
                    .sum();
                prop_assert!(encoded.len() <= max_encoded_len(1, texts, params.len()));
            }
        }
    }

    /// The bound is what a record of empty texts takes with every number at
    /// its longest: tight, not only safe.
    #[test]
    fn the_size_bound_is_reached_by_every_number_at_its_longest() {
        let record = PushErrorRecord {
            event_id: EventId::from_digest(&[0; 16]),
            event_type: i32::MIN,
            appid: i64::MIN,
            stream_id: "",
            domain: Some(""),
            path: Some(""),
            sequence: Some(""),
            user_ip: Some(""),
            report_time: i64::MIN,
            report_interval_ms: Some(i64::MIN),
            stream_params: &[(Cow::Borrowed(""), Cow::Borrowed(""))],
            error_type: i32::MIN,
            error_name: "",
            type_desc_en: Some(""),
            type_desc_cn: Some(""),
            error_count: i64::MIN,
            event_key: Some(""),
            detail_index: Some(i32::MIN),
            detail_desc: Some(""),
            occur_time: Some(i64::MIN),
            interval_ms: Some(i64::MIN),
            received_at: i64::MIN,
        };
        let encoded = encode(&record).len();
        let bound = max_encoded_len(1, 0, 1);
        assert!(encoded <= bound, "{encoded} > {bound}");
        // What takes fewer than 10 bytes: the three i32s (5 bytes each), and
        // the 14 lengths and counts under 64 (1 byte each).
        let slack = 3 * (MAX_VARINT - 5) + 14 * (MAX_VARINT - 1);
        assert_eq!(encoded + slack, bound);
    }

    #[test]
    fn encoded_records_decode_to_the_same_fields() {
        let callback = validate(decode(SEED.as_bytes()).unwrap()).unwrap();
        let record = &flatten(&callback, 1_670_588_075_000)[0];
        let decoded = decode_to_json(&encode(record)).unwrap();
        assert_eq!(decoded, serde_json::to_value(record).unwrap());
    }

    fn reference_value(r: &PushErrorRecord<'_>) -> Value {
        fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
            match v {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(v) => Value::Union(1, Box::new(f(v))),
            }
        }
        let text = |s: &str| Value::String(s.to_owned());
        let params: HashMap<String, Value> = r
            .stream_params
            .iter()
            .map(|(k, v)| (k.to_string(), text(v)))
            .collect();
        Value::Record(vec![
            ("event_id".into(), text(r.event_id.as_str())),
            ("event_type".into(), Value::Int(r.event_type)),
            ("appid".into(), Value::Long(r.appid)),
            ("stream_id".into(), text(r.stream_id)),
            ("domain".into(), opt(r.domain, text)),
            ("path".into(), opt(r.path, text)),
            ("sequence".into(), opt(r.sequence, text)),
            ("user_ip".into(), opt(r.user_ip, text)),
            ("report_time".into(), Value::TimestampMillis(r.report_time)),
            (
                "report_interval_ms".into(),
                opt(r.report_interval_ms, Value::Long),
            ),
            ("stream_params".into(), Value::Map(params)),
            ("error_type".into(), Value::Int(r.error_type)),
            ("error_name".into(), text(r.error_name)),
            ("type_desc_en".into(), opt(r.type_desc_en, text)),
            ("type_desc_cn".into(), opt(r.type_desc_cn, text)),
            ("error_count".into(), Value::Long(r.error_count)),
            ("event_key".into(), opt(r.event_key, text)),
            ("detail_index".into(), opt(r.detail_index, Value::Int)),
            ("detail_desc".into(), opt(r.detail_desc, text)),
            (
                "occur_time".into(),
                opt(r.occur_time, Value::TimestampMillis),
            ),
            ("interval_ms".into(), opt(r.interval_ms, Value::Long)),
            ("received_at".into(), Value::TimestampMillis(r.received_at)),
        ])
    }
}
