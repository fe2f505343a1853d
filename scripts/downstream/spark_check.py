"""The bridge's Spark DDL and the Spark example, run by Spark over the topics.

Usage: spark_check.py OUT_DIR   (as publish.py wrote it, with its Kafka still
running; runs in .venv-spark, with the jars of scripts/downstream/spark-jars.xml
in $SPARK_CONNECTOR_JARS: spark-sql-kafka-0-10 and spark-avro)

1. Spark parses `css-kafka-bridge schema --format spark-ddl` (StructType.fromDDL)
   and the result equals, field by field, Spark's own conversion of the .avsc
   (SchemaConverters.toSqlType: the types from_avro and the Avro reader give),
   but for the one difference the DDL grammar forces (see `ddl_cannot_say`).
2. For each topic (plain, Confluent-framed), Structured Streaming queries built
   from the example's own functions (read_messages: format("kafka");
   avro_values: the header strip; decode: from_avro; with_event_time;
   deduplicate with its default watermark), run with trigger(availableNow=True)
   into memory tables (the deduplication a few messages per micro-batch, so that
   its watermark moves between batches): every decoded record equals what `tail` printed, and
   the deduplication keeps each event_id once, the late retry included (after
   a detail dated 2100, whose event time is bounded: see with_event_time).
3. The example's counts per stream per minute, on the deduplicated records,
   give the results computed from `tail`'s records.
"""

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

from pyspark.errors import PySparkException
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, MapType, StructType, TimestampType

from published import (
    FRAMINGS,
    REPO,
    SCHEMA_FILE,
    CONFLUENT_HEADER_BYTES,
    MINUTE_MS,
    Mismatch,
    Published,
    errors_per_minute,
    event_time_ms,
    expect_equal,
    expect_equal_records,
    unique_records,
)

# Messages per micro-batch of the deduplication: the watermark advances between
# batches, as it does on a live topic, instead of once after all records.
MAX_OFFSETS_PER_TRIGGER = 8
EXAMPLE = REPO / "examples/spark/push_errors_stream.py"
LOG_CONFIG = Path(__file__).with_name("log4j2-spark.properties")



def load_example():
    spec = importlib.util.spec_from_file_location("push_errors_stream", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def struct_from_jvm(jvm_struct):
    return StructType.fromJson(json.loads(jvm_struct.json()))


def differences(path, ddl, avro):
    """(path, property, DDL's, Avro conversion's) for every way the two types differ."""
    if type(ddl) is not type(avro):
        yield path, "type", ddl.simpleString(), avro.simpleString()
    elif isinstance(ddl, StructType):
        if ddl.names != avro.names:
            yield path, "fields", ddl.names, avro.names
            return
        for d, a in zip(ddl.fields, avro.fields):
            field = f"{path}.{d.name}" if path else d.name
            if d.nullable != a.nullable:
                yield field, "nullable", d.nullable, a.nullable
            yield from differences(field, d.dataType, a.dataType)
    elif isinstance(ddl, ArrayType):
        if ddl.containsNull != avro.containsNull:
            yield path, "containsNull", ddl.containsNull, avro.containsNull
        yield from differences(f"{path}[]", ddl.elementType, avro.elementType)
    elif isinstance(ddl, MapType):
        yield from differences(f"{path}{{key}}", ddl.keyType, avro.keyType)
        if ddl.valueContainsNull != avro.valueContainsNull:
            yield path, "valueContainsNull", ddl.valueContainsNull, avro.valueContainsNull
        yield from differences(f"{path}{{}}", ddl.valueType, avro.valueType)
    elif ddl != avro:
        yield path, "type", ddl.simpleString(), avro.simpleString()


def ddl_cannot_say(jvm, difference):
    """Whether a difference is one Spark's DDL has no words for: array items and
    map values that are never null. The grammar takes NOT NULL after a column or
    a struct field only (ARRAY<STRING NOT NULL> is a syntax error), so the DDL
    reads them as nullable, where the Avro conversion knows they are not. A
    reader schema that allows nulls the data never has reads the same values.

    Checked against the engine each run: if Spark learns to parse NOT NULL there,
    this stops excusing the difference and the DDL generator must write it."""
    _, prop, ddl_value, avro_value = difference
    nullable_in_ddl_only = ddl_value is True and avro_value is False
    if prop not in ("containsNull", "valueContainsNull") or not nullable_in_ddl_only:
        return False
    probe = (
        "x ARRAY<STRING NOT NULL>" if prop == "containsNull" else "x MAP<STRING, STRING NOT NULL>"
    )
    try:
        jvm.org.apache.spark.sql.types.StructType.fromDDL(probe)
    except PySparkException:
        return True
    return False


def check_schema(spark, ddl):
    jvm = spark._jvm
    parsed = struct_from_jvm(jvm.org.apache.spark.sql.types.StructType.fromDDL(ddl))
    avro_schema = jvm.org.apache.avro.Schema.Parser().parse(SCHEMA_FILE.read_text())
    converted = struct_from_jvm(
        jvm.org.apache.spark.sql.avro.SchemaConverters.toSqlType(avro_schema).dataType()
    )
    excused, wrong = [], []
    for difference in differences("", parsed, converted):
        (excused if ddl_cannot_say(jvm, difference) else wrong).append(difference)
    if wrong:
        raise Mismatch(
            "the Spark DDL differs from Spark's conversion of the .avsc:\n"
            + "".join(
                f"  {p}: {prop} is {d} in the DDL, {a} from the .avsc\n" for p, prop, d, a in wrong
            )
        )
    return parsed, len(parsed.fields), excused


def as_json_values(frame):
    """Rows as JSON-like dicts: timestamps as Unix milliseconds, as `tail` prints them."""
    columns = [
        (
            F.unix_millis(F.col(f.name)).alias(f.name)
            if isinstance(f.dataType, TimestampType)
            else F.col(f.name)
        )
        for f in frame.schema.fields
    ]
    return [row.asDict(recursive=True) for row in frame.select(columns).collect()]


def run_to_memory(frame, name, work):
    """Runs a streaming DataFrame to the end of what the topic holds now
    (trigger availableNow) into a memory table; returns the table."""
    query = (
        frame.writeStream.format("memory")
        .queryName(name)
        .outputMode("append")
        .option("checkpointLocation", str(work / f"checkpoint-{name}"))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    if query.exception() is not None:
        raise query.exception()
    return frame.sparkSession.table(name)


def check_topic(spark, example, cluster, published, work):
    framing = published.framing
    schema_json = SCHEMA_FILE.read_text()
    stream = lambda options=None: example.with_event_time(
        example.decode(
            example.avro_values(
                example.read_messages(
                    spark,
                    cluster["brokers"],
                    cluster["topics"][framing],
                    "earliest",
                    options,
                ),
                published.confluent,
            ),
            schema_json,
        )
    )
    records = run_to_memory(stream(), f"records_{framing}", work)
    expect_equal_records(
        f"{framing}: the example's Kafka read and from_avro vs tail",
        as_json_values(records.drop("event_time")),
        published.records,
    )
    expect_equal_records(
        f"{framing}: the example's event_time",
        as_json_values(records.select("event_id", "received_at", "event_time")),
        [
            {
                "event_id": r["event_id"],
                "received_at": r["received_at"],
                "event_time": event_time_ms(r),
            }
            for r in published.records
        ],
    )

    unique = run_to_memory(
        example.deduplicate(
            stream({"maxOffsetsPerTrigger": str(MAX_OFFSETS_PER_TRIGGER)}),
            example.DEFAULT_WATERMARK,
        ), f"unique_{framing}", work
    )
    expect_equal(
        f"{framing}: event_ids after the example's deduplication",
        sorted(row.event_id for row in unique.select("event_id").collect()),
        sorted(r["event_id"] for r in unique_records(published.records)),
    )

    counts = as_json_values(example.errors_per_minute(unique))
    for row in counts:
        if row["end"] - row["start"] != MINUTE_MS:
            raise Mismatch(f"{framing}: a window that is not one minute: {row}")
    expect_equal(
        f"{framing}: the example's errors per stream per minute",
        sorted((row["start"], row["stream_id"], row["errors"]) for row in counts),
        sorted(
            (start, stream, errors)
            for (start, stream), (errors, _) in errors_per_minute(published.records).items()
        ),
    )
    return len(published.messages), len(counts)


def connector_jars(spark_home):
    """The connector jars, without those pyspark already ships (the Maven
    closure repeats Scala's and Hadoop's client jars)."""
    jars_dir = Path(os.environ["SPARK_CONNECTOR_JARS"])
    shipped = {artifact(jar.name) for jar in (spark_home / "jars").glob("*.jar")}
    jars = [str(jar) for jar in sorted(jars_dir.glob("*.jar")) if artifact(jar.name) not in shipped]
    if not jars:
        raise Mismatch(f"no connector jars in {jars_dir} (scripts/downstream/spark-jars.xml)")
    return ",".join(jars)


def artifact(jar_name):
    """`kafka-clients-3.9.2.jar` -> `kafka-clients`."""
    parts = jar_name.removesuffix(".jar").split("-")
    while len(parts) > 1 and parts[-1][:1].isdigit():
        parts.pop()
    return "-".join(parts)


def main():
    out = Path(sys.argv[1])
    work = out / "spark"
    work.mkdir(exist_ok=True)
    started = time.monotonic()
    import pyspark

    jars = connector_jars(Path(pyspark.__file__).parent)
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("check-downstream")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.jars", jars)
        .config("spark.driver.extraJavaOptions", f"-Dlog4j.configurationFile={LOG_CONFIG}")
        .getOrCreate()
    )
    stage = "parsing the generated DDL"
    try:
        ddl = (out / "spark.ddl").read_text().strip()
        schema, columns, excused = check_schema(spark, ddl)
        summary = [
            f"Spark {spark.version}: the DDL parses, {columns} columns equal to Spark's conversion "
            f"of the .avsc"
            + "".join(
                f"; {p} {prop} {d} (DDL cannot say NOT NULL there)" for p, prop, d, _ in excused
            )
        ]
        example = load_example()
        cluster = json.loads((out / "cluster.json").read_text())
        for framing in FRAMINGS:
            stage = f"reading the {framing} topic"
            records, windows = check_topic(spark, example, cluster, Published(out, framing), work)
            summary.append(
                f"Spark {spark.version}, {framing}: the example's streaming read of the topic "
                f"(format kafka, from_avro) gives the {records} published records equal to "
                f"tail's; its deduplication ({example.DEFAULT_WATERMARK} watermark, the late retry "
                f"kept once) and counts give the expected {windows} windows"
            )
    except PySparkException as error:
        sys.exit(f"check-downstream: Spark refused it ({stage}):\n{error}")
    except Mismatch as mismatch:
        sys.exit(f"check-downstream: {mismatch}")
    finally:
        spark.stop()
    for line in summary:
        print(line)
    print(f"Spark checks took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
