"""Push errors in Spark Structured Streaming.

Reads the css-kafka-bridge topic, decodes the Avro records with the schema file
the bridge itself is built from, drops the copies that CSS callback retries
produce, and prints the records, or the number of errors per stream per minute
of event time, to the console.

Run (examples/README.md explains the packages and the options):

  spark-submit \\
    --packages org.apache.spark:spark-sql-kafka-0-10_2.13:4.2.0,org.apache.spark:spark-avro_2.13:4.2.0 \\
    examples/spark/push_errors_stream.py --bootstrap-servers kafka:9092 --confluent

(the connectors' version must equal Spark's). Each step is a function, so that
scripts/check-downstream runs the same steps over the topics the bridge
published to.
"""

import argparse
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql.avro.functions import from_avro
from pyspark.sql.functions import coalesce, col, count, expr, least, window

DEFAULT_SCHEMA = (
    Path(__file__).resolve().parents[2] / "schemas/push_error_record.avsc"
)

# How late a record may arrive and still be deduplicated and counted: CSS
# retries an unacknowledged callback for about 12 minutes; 15 gives a margin.
DEFAULT_WATERMARK = "15 minutes"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap-servers", default="localhost:9092")
    parser.add_argument("--topic", default="css.push-errors")
    parser.add_argument(
        "--schema",
        default=str(DEFAULT_SCHEMA),
        help="the .avsc the bridge writes with (default: schemas/push_error_record.avsc)",
    )
    parser.add_argument(
        "--confluent",
        action="store_true",
        help="values are in the Confluent wire format (the bridge runs with a "
        "Schema Registry): strip the 5-byte header before decoding",
    )
    parser.add_argument("--starting-offsets", default="earliest")
    parser.add_argument(
        "--watermark",
        default=DEFAULT_WATERMARK,
        help="how late a record may arrive and still be deduplicated and counted "
        "(CSS retries a callback for about 12 minutes)",
    )
    parser.add_argument(
        "--counts",
        action="store_true",
        help="print errors per stream per minute instead of the records",
    )
    parser.add_argument("--checkpoint", help="checkpoint directory (default: temporary)")
    return parser.parse_args()


def read_messages(spark, bootstrap_servers, topic, starting_offsets, options=None):
    """The topic's messages as a streaming DataFrame (key, value, partition, ...)."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", starting_offsets)
    )
    for key, value in (options or {}).items():
        reader = reader.option(key, value)
    return reader.load()


def avro_values(messages, confluent):
    """The Avro binary of each Kafka message, as column `avro`."""
    if confluent:
        # Confluent wire format: magic byte 0, 4-byte big-endian schema id, then
        # the Avro binary. Spark's from_avro reads plain Avro only, so keep the
        # Avro part (substring is 1-based) of the messages that carry the header.
        return messages.where(expr("substring(value, 1, 1) = X'00'")).select(
            expr("substring(value, 6, length(value) - 5)").alias("avro")
        )
    return messages.select(col("value").alias("avro"))


def decode(avro, schema_json):
    """The records, one column per Avro field."""
    # from_avro decodes with this schema as the writer's. After a schema change,
    # decode each message with the schema that wrote it (by Confluent schema id,
    # or by the avro.schema.fingerprint header of plain messages, which the Kafka
    # source gives with .option("includeHeaders", "true")) and pass the
    # newest schema as the "avroSchema" option to read every version alike.
    # FAILFAST: a message that does not decode stops the query instead of
    # turning into a row of nulls.
    return avro.select(
        from_avro(col("avro"), schema_json, {"mode": "FAILFAST"}).alias("r")
    ).select("r.*")


def with_event_time(records):
    """Adds `event_time`: when the error occurred, or when CSS reported it for
    error groups without details (occur_time is null there), at most a minute
    past the report and the bridge's receipt: the bridge keeps any time CSS
    sends, and one from the far future would carry the watermark past every
    record after it, dropping them as late."""
    lead = expr("INTERVAL 1 MINUTE")
    event_time = least(
        coalesce(col("occur_time"), col("report_time")),
        col("report_time") + lead,
        col("received_at") + lead,
    )
    return records.withColumn("event_time", event_time)


def deduplicate(records, watermark):
    """Drops the copies of a record that retried callbacks produce."""
    # A retried callback yields the same records: same event_id, same event
    # time (but for a report_time over a minute ahead of the bridge's clock:
    # see with_event_time and examples/README.md). Keying on both lets Spark
    # forget an event_id once the watermark has passed its event time, so the
    # deduplication state stays bounded. CSS retries for about 12 minutes, and
    # the first copy to arrive can be a late retry: a watermark of 15 minutes
    # (the default) keeps such a record, and drops its later copies; the price
    # is 15 minutes of event_ids in the state and, for the counts, each window
    # printed 15 minutes after it ends.
    return records.withWatermark("event_time", watermark).dropDuplicates(
        ["event_id", "event_time"]
    )


def errors_per_minute(unique):
    """Errors per stream per minute of event time."""
    # Chained stateful operators need Spark 3.4+. In append mode each window
    # is printed once, when the watermark passes its end.
    return (
        unique.groupBy(window("event_time", "1 minute"), "stream_id")
        .agg(count("*").alias("errors"))
        .select("window.start", "window.end", "stream_id", "errors")
    )


def main():
    args = parse_args()
    schema_json = Path(args.schema).read_text(encoding="utf-8")

    spark = (
        SparkSession.builder.appName("css-push-errors")
        # The timestamps are instants; show them in UTC, as the bridge logs them.
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )

    messages = read_messages(spark, args.bootstrap_servers, args.topic, args.starting_offsets)

    records = with_event_time(decode(avro_values(messages, args.confluent), schema_json))
    unique = deduplicate(records, args.watermark)
    output = errors_per_minute(unique) if args.counts else unique

    writer = output.writeStream.format("console").option("truncate", False).outputMode(
        "append"
    )
    if args.checkpoint:
        writer = writer.option("checkpointLocation", args.checkpoint)
    writer.start().awaitTermination()


if __name__ == "__main__":
    main()
