//! The Spark DDL schema string for the record.

use apache_avro::Schema;

use super::*;

/// A Spark SQL DDL schema string with one column per Avro field, as Spark's
/// `from_avro` types the record: `timestamp-millis` is `TIMESTAMP_LTZ` (spelt
/// out: a bare `TIMESTAMP` follows the session's `spark.sql.timestampType`,
/// and reads as `TIMESTAMP_NTZ` where that is set), `["null", T]`
/// is a nullable `T`, everything else `NOT NULL`. Use it to declare the expected
/// schema (`StructType.fromDDL`, `spark.read.schema(...)`) or to check a stream's
/// schema against the contract.
///
/// Array items and map values are never null in the Avro record, and Spark's
/// conversion of the `.avsc` (`SchemaConverters`, behind `from_avro` and the Avro
/// reader) says so (`containsNull` / `valueContainsNull = false`), but the DDL
/// cannot: Spark's grammar takes `NOT NULL` after a column or struct field only
/// (`MAP<STRING, STRING NOT NULL>` is a syntax error in Spark 4.3). So
/// `stream_params` parses with `valueContainsNull = true`, the one difference
/// between the two schemas (`scripts/check-downstream` compares them field by
/// field, and fails should Spark learn that syntax). Reading is unaffected: a
/// reader schema that allows nulls the data never has reads the same values.
/// Spark writing Avro from a DataFrame of this schema would declare the values
/// `["string", "null"]`, though. The `.avsc` does not give way instead: nullable
/// values would change an existing field's type, which the evolution rules
/// forbid, and Flink's plain-Avro table would then read the values as unions.
pub fn spark_ddl(schema: &Schema) -> Result<String, DownstreamError> {
    let fields = record_fields(schema)?;
    Ok(fields
        .iter()
        .map(|field| {
            format!(
                "{} {}{}",
                spark_ident(&field.name),
                spark_type(&field.column.ty),
                not_null(&field.column)
            )
        })
        .collect::<Vec<_>>()
        .join(", "))
}

fn spark_type(ty: &Type) -> String {
    match ty {
        Type::Boolean => "BOOLEAN".to_owned(),
        Type::Int => "INT".to_owned(),
        Type::Long => "BIGINT".to_owned(),
        Type::Float => "FLOAT".to_owned(),
        Type::Double => "DOUBLE".to_owned(),
        Type::Bytes => "BINARY".to_owned(),
        Type::String => "STRING".to_owned(),
        Type::Date => "DATE".to_owned(),
        Type::TimestampMillis => "TIMESTAMP_LTZ".to_owned(),
        // No DDL syntax for containsNull / valueContainsNull: see `spark_ddl`.
        Type::Array(items) => format!("ARRAY<{}>", spark_type(&items.ty)),
        Type::Map(values) => format!("MAP<STRING, {}>", spark_type(&values.ty)),
        Type::Row(fields) => format!(
            "STRUCT<{}>",
            fields
                .iter()
                .map(|f| format!(
                    "{}: {}{}",
                    spark_ident(&f.name),
                    spark_type(&f.column.ty),
                    not_null(&f.column)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
