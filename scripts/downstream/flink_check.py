"""The bridge's Flink SQL and the Flink example, run by Flink over the topics.

Usage: flink_check.py OUT_DIR   (as publish.py wrote it, with its Kafka and
registry still running; runs in .venv-flink, with the jars of
scripts/downstream/flink-jars.xml in $FLINK_CONNECTOR_JARS)

Executes, statement by statement, in a streaming TableEnvironment with the real
Kafka connector and Avro formats (pipeline.jars):
1. each generated CREATE TABLE (`schema --format flink-sql`, with
   `--flink-format avro-confluent` and `avro`), then reads the table from its
   topic: the avro-confluent table the Confluent-framed topic through the
   registry, the avro table the plain one; every value equals what `tail`
   decoded, and event_time is COALESCE(occur_time, report_time), bounded to a
   minute past report_time and received_at (a detail dated 2100 is posted);
2. examples/flink/push_errors.sql as it is (SET, both tables, the view, the
   query) as a streaming job over the framed topic: the query's windows hold
   each record once (copies removed by event_id) and the counts per stream per
   minute computed from `tail`'s records; then once more with the view pointed
   at the plain table, as the example says to do without a registry. The
   posted callbacks include a late retry (a callback first published after one
   five minutes newer, then again): it must be counted, once.

In each CREATE TABLE only the connection options change, as a user would change
them: the topic, the bootstrap servers and the registry URL; and two are added:
'scan.bounded.mode' = 'latest-offset', so that the streaming job ends once it has
read what was published, and 'scan.watermark.emit.strategy' = 'on-event', so that
the watermark advances with every record as it does on a live topic, rather than
every 200 ms (which in a catch-up read of a few records could hide lateness).
The plain topic has one partition: the late retry is read after the newer
callback by every reader.
"""

import datetime
import json
import os
import re
import sys
import time
from pathlib import Path

from py4j.protocol import Py4JJavaError
from pyflink.table import EnvironmentSettings, TableEnvironment
from pyflink.util.exceptions import JavaException
from pyflink.version import __version__ as FLINK_VERSION

from published import (
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


def on_cluster(statement, cluster):
    """A Kafka CREATE TABLE pointed at this cluster's topic, servers and registry,
    bounded and with per-record watermarks; every other statement as it is.
    Returns the statement and the framing of the records it reads (or None)."""
    match = WITH_CLAUSE.search(statement) if first_word(statement) == "CREATE" else None
    if not match:
        return statement, None
    options = dict(
        (key.replace("''", "'"), value.replace("''", "'"))
        for key, value in OPTION.findall(match["options"])
    )
    if options.get("connector") != "kafka":
        raise Mismatch(f"a table with connector {options.get('connector')!r}, not kafka")
    value_format = options.get("value.format")
    if value_format not in FRAMING_OF_FORMAT:
        raise Mismatch(f"a table with value.format {value_format!r}: no published records for it")
    framing = FRAMING_OF_FORMAT[value_format]
    options["topic"] = cluster["topics"][framing]
    options["properties.bootstrap.servers"] = cluster["brokers"]
    if "value.avro-confluent.url" in options:
        options["value.avro-confluent.url"] = cluster["registry"]
    options["scan.bounded.mode"] = "latest-offset"
    options["scan.watermark.emit.strategy"] = "on-event"
    with_clause = ",\n".join(f"  {sql_string(k)} = {sql_string(v)}" for k, v in options.items())
    return statement[: match.start()] + f") WITH (\n{with_clause}\n)", framing


# --- Records ------------------------------------------------------------------


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
    jars_dir = Path(os.environ["FLINK_CONNECTOR_JARS"])
    jars = sorted(jars_dir.glob("*.jar"))
    if not jars:
        raise Mismatch(f"no connector jars in {jars_dir} (scripts/downstream/flink-jars.xml)")
    config.set("pipeline.jars", ";".join(jar.as_uri() for jar in jars))
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


def run_script(env, label, sql, cluster):
    """Executes every statement of `sql`; returns the rows of each query."""
    results = []
    for number, statement in enumerate(split_statements(sql), 1):
        statement, _ = on_cluster(statement, cluster)
        answer = execute(env, label, number, statement)
        if answer is not None:
            results.append(answer)
    return results


def check_generated(label, sql, cluster, published, columns):
    env = table_environment()
    statements = split_statements(sql)
    expect_equal(f"{label}: statements", [first_word(s) for s in statements], ["CREATE"])
    table_sql, framing = on_cluster(statements[0], cluster)
    execute(env, label, 1, table_sql)
    table = re.search(r"CREATE TABLE (`(?:[^`]|``)+`)", table_sql)[1]
    names = columns + ["event_time"]
    query = f"SELECT {', '.join(f'`{n}`' for n in names)} FROM {table}"
    got = [dict(zip(names, row)) for row in execute(env, label, 2, query)]
    want = [dict(r, event_time=event_time_ms(r)) for r in published[framing].records]
    expect_equal_records(f"{label}: every column of every record, and event_time", got, want)
    return framing


def check_example(cluster, published):
    env = table_environment()
    sql = EXAMPLE.read_text()
    label = EXAMPLE.relative_to(REPO)
    (counts,) = run_script(env, label, sql, cluster)
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


def main():
    out = Path(sys.argv[1])
    started = time.monotonic()
    schema_json = json.loads(SCHEMA_FILE.read_text())
    columns = [field["name"] for field in schema_json["fields"]]
    published = {framing: Published(out, framing) for framing in FRAMINGS}
    summary = []
    try:
        cluster = json.loads((out / "cluster.json").read_text())
        for name in ("flink-avro-confluent.sql", "flink-avro.sql"):
            framing = check_generated(
                name, (out / name).read_text(), cluster, published, columns
            )
            command = name.removesuffix(".sql").replace("flink-", "flink-sql --flink-format ")
            summary.append(
                f"Flink {FLINK_VERSION}: `schema --format {command}` executes; the table reads "
                f"the {len(published[framing].records)} {framing} records back from Kafka equal to "
                "tail's, "
                "event_time = COALESCE(occur_time, report_time) bounded by report_time "
                "and received_at"
            )
        statements = check_example(cluster, published)
        windows = len(errors_per_minute(published["plain"].records))
        summary.append(
            f"Flink {FLINK_VERSION}: all {statements} statements of "
            f"{EXAMPLE.relative_to(REPO)} execute; its query gives the expected {windows} "
            "windows over Kafka, copies and the late retry counted once, on both tables"
        )
    except (Refused, Mismatch) as failure:
        sys.exit(f"check-downstream: {failure}")
    for line in summary:
        print(line)
    print(f"Flink {FLINK_VERSION} checks took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
