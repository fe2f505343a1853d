"""The bridge's Flink SQL and the Flink example, run by Flink on published records.

Usage: flink_check.py OUT_DIR   (as publish.py wrote it; runs in .venv-flink or
.venv-flink-1.20)

Executes, statement by statement, in a streaming TableEnvironment:
1. each generated CREATE TABLE (`schema --format flink-sql`, with
   `--flink-format avro-confluent` and `avro`), then reads the table: every
   value equals what `tail` decoded, and event_time is COALESCE(occur_time,
   report_time);
2. examples/flink/push_errors.sql as it is (SET, both tables, the view, the
   query): the query's windows hold each record once (duplicates removed by
   event_id) and the counts per stream per minute computed from `tail`'s
   records; then once more with the view pointed at the plain table, as the
   example says to do without a registry.

The apache-flink package ships the table planner and the filesystem connector
with the csv and json formats, but not the Kafka connector nor the Avro
formats, which need Maven. So in each CREATE TABLE the connector and format
options, and only those, are swapped for the filesystem connector and json, and
the published Avro bytes are decoded here (fastavro, with the .avsc as writer
schema, after stripping the Confluent header) into json rows for it: the avro
table reads the plain topic's records, the avro-confluent table the framed one's.
"""

import datetime
import io
import json
import re
import sys
import time
from pathlib import Path

import fastavro
from py4j.protocol import Py4JJavaError
from pyflink.table import EnvironmentSettings, TableEnvironment
from pyflink.util.exceptions import JavaException
from pyflink.version import __version__ as FLINK_VERSION

from published import (
    CONFLUENT_HEADER_BYTES,
    FRAMINGS,
    MINUTE_MS,
    REPO,
    SCHEMA_FILE,
    Mismatch,
    Published,
    errors_per_minute,
    event_time_ms,
    expect_equal,
    expect_equal_records,
)

EXAMPLE = REPO / "examples/flink/push_errors.sql"
EPOCH = datetime.datetime(1970, 1, 1)
# Which topic a table of each value format reads.
FRAMING_OF_FORMAT = {"avro-confluent": "confluent", "avro": "plain"}
# WITH options that only the Kafka connector and its key/value formats take.
KAFKA_OPTIONS = {
    "topic",
    "scan.startup.mode",
    "key.format",
    "key.fields",
    "value.fields-include",
    "value.avro-confluent.url",
}


class Refused(Exception):
    """Flink refused a statement; the message is Flink's own."""


# --- SQL text ---------------------------------------------------------------


def split_statements(sql):
    """The statements of a SQL script, split at `;` outside string literals,
    quoted identifiers and `--` comments. Statements that are only comments are
    left out."""
    statements, start, i = [], 0, 0
    while i < len(sql):
        c = sql[i]
        if sql.startswith("--", i):
            i = sql.find("\n", i)
            i = len(sql) if i < 0 else i
        elif c in "'`":
            # A doubled quote inside a literal or identifier is an escaped quote.
            i += 1
            while i < len(sql) and not (sql[i] == c and sql[i + 1 : i + 2] != c):
                i += 2 if sql[i] == c else 1
        elif c == ";":
            statements.append(sql[start:i])
            start = i + 1
        i += 1
    statements.append(sql[start:])
    return [s.strip() for s in statements if without_comments(s)]


def without_comments(statement):
    return re.sub(r"--[^\n]*", "", statement).strip()


def first_word(statement):
    return without_comments(statement).split()[0].upper()


WITH_CLAUSE = re.compile(
    r"\)\s*WITH\s*\((?P<options>(?:\s*'(?:[^']|'')*'\s*=\s*'(?:[^']|'')*'\s*,?)*)\s*\)\s*$"
)
OPTION = re.compile(r"'((?:[^']|'')*)'\s*=\s*'((?:[^']|'')*)'")


def sql_string(value):
    return "'" + value.replace("'", "''") + "'"


def on_filesystem(statement, rows):
    """A Kafka CREATE TABLE with its connector and format options swapped for the
    filesystem connector reading json rows; every other statement as it is.
    Returns the statement and the framing of the records it reads (or None)."""
    match = WITH_CLAUSE.search(statement) if first_word(statement) == "CREATE" else None
    if not match:
        return statement, None
    options = [
        (key.replace("''", "'"), value.replace("''", "'"))
        for key, value in OPTION.findall(match["options"])
    ]
    value_format = dict(options).get("value.format")
    if value_format not in FRAMING_OF_FORMAT:
        raise Mismatch(f"a table with value.format {value_format!r}: no published records for it")
    framing = FRAMING_OF_FORMAT[value_format]
    swapped = []
    for key, value in options:
        if key == "connector":
            swapped += [("connector", "filesystem"), ("path", str(rows[framing]))]
        elif key == "value.format":
            swapped += [("format", "json"), ("json.fail-on-missing-field", "true")]
        elif key in KAFKA_OPTIONS or key.startswith("properties."):
            continue
        else:
            # Unknown to this script: kept, so that Flink says what it thinks.
            swapped.append((key, value))
    with_clause = ",\n".join(f"  {sql_string(k)} = {sql_string(v)}" for k, v in swapped)
    return statement[: match.start()] + f") WITH (\n{with_clause}\n)", framing


# --- Records ------------------------------------------------------------------


def json_rows(published, schema):
    """The published records as rows of Flink's json format, decoded from the
    messages' Avro bytes. Also checks what the tables' key declaration relies
    on: each message key is the record's stream_id."""
    rows = []
    for message in published.messages:
        value = message["value"]
        buffer = io.BytesIO(value[CONFLUENT_HEADER_BYTES:] if published.confluent else value)
        record = fastavro.schemaless_reader(buffer, schema)
        if buffer.read():
            raise Mismatch(f"{published.framing}: trailing bytes after a record")
        if message["key"] != record["stream_id"]:
            raise Mismatch(
                f"{published.framing}: key {message['key']!r} is not the stream_id {record['stream_id']!r}"
            )
        rows.append({name: flink_json(value) for name, value in record.items()})
    return rows


def flink_json(value):
    # Flink's json format reads TIMESTAMP(3) in its default SQL layout; the
    # tables' TIMESTAMP(3) holds UTC wall-clock time.
    if isinstance(value, datetime.datetime):
        utc = value.astimezone(datetime.timezone.utc)
        return utc.strftime("%Y-%m-%d %H:%M:%S.") + f"{utc.microsecond // 1000:03d}"
    return value


def plain_value(value):
    """A value Flink returned, as `tail` prints it: timestamps as Unix ms."""
    if isinstance(value, datetime.datetime):
        return (value - EPOCH) // datetime.timedelta(milliseconds=1)
    if isinstance(value, dict):
        return {k: plain_value(v) for k, v in value.items()}
    return value


# --- Running -----------------------------------------------------------------


def table_environment():
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    config.set("parallelism.default", "1")
    config.set("table.local-time-zone", "UTC")
    return env


SET_STATEMENT = re.compile(r"SET\s+'((?:[^']|'')*)'\s*=\s*'((?:[^']|'')*)'\s*$", re.IGNORECASE)


def execute(env, label, number, statement):
    """Runs one statement; a query's rows are returned as lists of plain values."""
    code = without_comments(statement)
    try:
        setting = SET_STATEMENT.match(code)
        if setting:
            # SET is a SQL client statement that TableEnvironment.execute_sql
            # refuses; the client applies it to the session's configuration,
            # and so does this.
            env.get_config().set(setting[1].replace("''", "'"), setting[2].replace("''", "'"))
            return None
        result = env.execute_sql(statement)
        if first_word(statement) not in ("SELECT", "WITH"):
            result.wait()
            return None
        with result.collect() as rows:
            return [[plain_value(v) for v in row] for row in rows]
    except (JavaException, Py4JJavaError) as error:
        head = code.splitlines()[0]
        # Flink's message, without the Java stack and py4j's call frame.
        message = "\n".join(
            line.removeprefix(": ")
            for line in str(error).splitlines()
            if not line.lstrip().startswith("at ")
            and not line.startswith("An error occurred while calling")
        ).strip()
        raise Refused(
            f"Flink {FLINK_VERSION} refused statement {number} of {label} ({head} ...):\n{message}"
        ) from None


def run_script(env, label, sql, rows):
    """Executes every statement of `sql`; returns the rows of each query."""
    results = []
    for number, statement in enumerate(split_statements(sql), 1):
        statement, _ = on_filesystem(statement, rows)
        answer = execute(env, label, number, statement)
        if answer is not None:
            results.append(answer)
    return results


def check_generated(label, sql, rows, published, columns):
    env = table_environment()
    statements = split_statements(sql)
    expect_equal(f"{label}: statements", [first_word(s) for s in statements], ["CREATE"])
    table_sql, framing = on_filesystem(statements[0], rows)
    execute(env, label, 1, table_sql)
    table = re.search(r"CREATE TABLE (`(?:[^`]|``)+`)", table_sql)[1]
    names = columns + ["event_time"]
    query = f"SELECT {', '.join(f'`{n}`' for n in names)} FROM {table}"
    got = [dict(zip(names, row)) for row in execute(env, label, 2, query)]
    want = [dict(r, event_time=event_time_ms(r)) for r in published[framing].records]
    expect_equal_records(f"{label}: every column of every record, and event_time", got, want)
    return framing


def check_example(rows, published):
    env = table_environment()
    sql = EXAMPLE.read_text()
    label = EXAMPLE.relative_to(REPO)
    (counts,) = run_script(env, label, sql, rows)
    expect_counts(
        f"{label}, push_errors (Confluent-framed records)", counts, published["confluent"]
    )

    # The same query with the view on the plain table, as the example suggests
    # for a bridge without a registry: the view statement and the query are the
    # example's own, only the table name changes.
    statements = split_statements(sql)
    view = next(s for s in statements if "push_errors_source AS" in s)
    query = next(s for s in statements if first_word(s) == "SELECT")
    execute(env, label, "(view)", "DROP TEMPORARY VIEW push_errors_source")
    plain_view, replaced = re.subn(r"\bFROM push_errors\b", "FROM push_errors_plain", view)
    expect_equal(f"{label}: views reading push_errors", replaced, 1)
    execute(env, label, "(view)", plain_view)
    counts = execute(env, label, "(query)", query)
    expect_counts(f"{label}, push_errors_plain (plain records)", counts, published["plain"])
    return len(statements)


def expect_counts(what, rows, published):
    """The query's rows are (window_start, window_end, stream_id, errors,
    error_kinds): one-minute windows, each record counted once."""
    for row in rows:
        if row[1] - row[0] != MINUTE_MS:
            raise Mismatch(f"{what}: a window that is not one minute: {row}")
    expect_equal(
        f"{what}: errors per stream per minute (window start, stream, errors, kinds)",
        sorted((r[0], r[2], r[3], r[4]) for r in rows),
        sorted(
            (start, stream, errors, kinds)
            for (start, stream), (errors, kinds) in errors_per_minute(published.records).items()
        ),
    )


def write_json_rows(out, published, schema):
    """Writes each topic's records as json rows for the filesystem tables;
    returns the directory of each framing's rows."""
    rows = {}
    for framing in FRAMINGS:
        directory = out / f"flink-{FLINK_VERSION}" / framing
        directory.mkdir(parents=True, exist_ok=True)
        # In event-time order (stable: a retry's copies stay after the originals).
        # Kafka's source keeps a watermark per partition, a file source one for
        # the file; in the topic's order, a record more than the watermark
        # delay (5 s) behind a newer one read before it would be dropped as
        # late, and so would a retry's copies, before the deduplication that
        # this check is about could see them.
        records = sorted(
            json_rows(published[framing], schema),
            key=lambda row: row["occur_time"] or row["report_time"],
        )
        with open(directory / "records.json", "w", encoding="utf-8") as f:
            for row in records:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        rows[framing] = directory
    return rows


def main():
    out = Path(sys.argv[1])
    started = time.monotonic()
    schema_json = json.loads(SCHEMA_FILE.read_text())
    columns = [field["name"] for field in schema_json["fields"]]
    published = {framing: Published(out, framing) for framing in FRAMINGS}
    summary = []
    try:
        rows = write_json_rows(out, published, fastavro.parse_schema(schema_json))
        for name in ("flink-avro-confluent.sql", "flink-avro.sql"):
            framing = check_generated(name, (out / name).read_text(), rows, published, columns)
            command = name.removesuffix(".sql").replace("flink-", "flink-sql --flink-format ")
            summary.append(
                f"Flink {FLINK_VERSION}: `schema --format {command}` executes; the table reads "
                f"the {len(published[framing].records)} {framing} records back equal to tail's, "
                "event_time = COALESCE(occur_time, report_time)"
            )
        statements = check_example(rows, published)
        windows = len(errors_per_minute(published["plain"].records))
        summary.append(
            f"Flink {FLINK_VERSION}: all {statements} statements of "
            f"{EXAMPLE.relative_to(REPO)} execute; its query gives the expected {windows} "
            "windows, duplicates removed, on both tables"
        )
    except (Refused, Mismatch) as failure:
        sys.exit(f"check-downstream: {failure}")
    for line in summary:
        print(line)
    print(f"Flink {FLINK_VERSION} checks took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
