"""Schema evolution on a running Flink job, then the registry's refusal of an
incompatible schema and what the bridge does about it.

Usage: evolution_check.py BRIDGE_BINARY OUT_DIR   (after publish.py and the
engine checks, with publish.py's Kafka and registry still running; runs in
.venv-flink with $FLINK_CONNECTOR_JARS, and runs evolution_registry.py in the
test virtualenv .venv for what needs confluent-kafka)

1. The next schema version is made here from the .avsc: the same schema plus
   one optional field (`["null", "string"]`, default null) at the end, as
   docs/consuming.md says versions evolve. A streaming Flink job is started on
   the current schema: the generated avro-confluent CREATE TABLE over the
   Confluent-framed topic, bounded at offsets that lie beyond what is
   published yet (the end of each partition now, plus the records about to be
   added to it). Once the job has returned every record the bridge published
   (so it is running and has caught up), records of the next version are
   published with the stock confluent-kafka AvroSerializer, which registers the
   next version under the same subject, set to BACKWARD compatibility. The job
   reads them too and ends at the bound: its rows are the bridge's records and
   the new ones, every column equal, the new field ignored by the old table.
2. The table of the next version (the generated CREATE TABLE with the new
   field's column, as a newer bridge's `schema --format flink-sql` gives it)
   reads the same topic: the bridge's records, written with the older schema,
   come with the new column null, the next version's with its value. A reader
   schema whose new field had no default would fail on the first older
   record.
3. evolution_registry.py refuse: a subject set to BACKWARD holds a schema the
   bridge's cannot read (appid a string); the registry answers the bridge's
   schema 409; a bridge started on that subject with auto-registration stays
   not ready, answers callbacks 503 `schema_unavailable` and logs the
   registry's message.
"""

import hashlib
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from flink_check import (
    Refused,
    execute,
    on_cluster,
    plain_value,
    split_statements,
    table_environment,
)
from published import REPO, SCHEMA_FILE, Mismatch, Published, event_time_ms, expect_equal_records

TEST_PYTHON = REPO / ".venv/bin/python"
REGISTRY_STEP = REPO / "scripts/downstream/evolution_registry.py"
NEW_FIELD = {
    "name": "ingest_region",
    "type": ["null", "string"],
    "default": None,
    "doc": "A field of the next version, for the evolution check only.",
}
# How long the job may take to return each batch of rows.
JOB_TIMEOUT = 120


def next_schema():
    schema = json.loads(SCHEMA_FILE.read_text())
    schema["fields"].append(NEW_FIELD)
    return schema


def next_records(published):
    """One record of the next version per stream the bridge published to, on
    the partition the bridge's records of that stream are on: a copy of the
    stream's first record with a new event_id, a later received_at and the new
    field set."""
    partition_of = {m["key"]: m["partition"] for m in published.messages}
    planned, seen = [], set()
    for record in published.records:
        stream = record["stream_id"]
        if stream in seen:
            continue
        seen.add(stream)
        copy = dict(record)
        copy["event_id"] = hashlib.md5(f"evolution {stream}".encode()).hexdigest()
        copy["received_at"] = record["received_at"] + 1000
        copy[NEW_FIELD["name"]] = "ap-guangzhou"
        planned.append({"partition": partition_of[stream], "record": copy})
    return planned


def with_next_column(statement):
    """The generated table with the next version's column after the last one,
    as `schema --format flink-sql` writes a nullable STRING field."""
    doc = NEW_FIELD["doc"].replace("'", "''")
    column = f"  `{NEW_FIELD['name']}` STRING COMMENT '{doc}',\n"
    statement, added = re.subn(
        r"(\n  `received_at` [^\n]*,\n)", lambda m: m[1] + column, statement, count=1
    )
    if added != 1:
        raise Mismatch("the table statement has no `received_at` column to add after")
    return statement


def registry_step(*args):
    try:
        result = subprocess.run(
            [str(TEST_PYTHON), str(REGISTRY_STEP), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired as timeout:
        # Bytes, whatever `text` says.
        stderr = (timeout.stderr or b"").decode(errors="replace")
        raise Mismatch(
            f"evolution_registry.py {args[0]} did not end within 300 s:\n{stderr[-3000:]}"
        ) from None
    if result.returncode != 0:
        raise Mismatch(f"evolution_registry.py {args[0]} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def bounded_at(statement, offsets):
    """The table statement bounded at the given end offsets instead of the
    latest offsets at the job's start."""
    bound = ";".join(f"partition:{p},offset:{o}" for p, o in sorted(offsets.items()))
    statement, replaced = re.subn(
        r"'scan\.bounded\.mode' = 'latest-offset'",
        f"'scan.bounded.mode' = 'specific-offsets',\n  'scan.bounded.specific-offsets' = '{bound}'",
        statement,
    )
    if replaced != 1:
        raise Mismatch("the table statement has no 'scan.bounded.mode' to replace")
    return statement


class Collector(threading.Thread):
    """Iterates a running query's rows, noting each as it arrives."""

    def __init__(self, result):
        super().__init__(daemon=True)
        self.result, self.rows, self.error = result, [], None
        self.changed = threading.Condition()

    def run(self):
        try:
            with self.result.collect() as rows:
                for row in rows:
                    with self.changed:
                        self.rows.append(list(row))
                        self.changed.notify_all()
        except Exception as error:  # reported by the main thread
            self.error = error
        with self.changed:
            self.changed.notify_all()

    def wait_for_rows(self, count, timeout):
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.rows) < count and self.is_alive() and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            return len(self.rows)


def check_running_job(out, cluster, published, columns):
    planned = next_records(published)
    (out / "next-schema.avsc").write_text(json.dumps(next_schema(), indent=1))
    (out / "evolution-next.json").write_text(json.dumps(planned, indent=1, ensure_ascii=False))
    offsets = {int(p): o for p, o in json.loads(registry_step("offsets", str(out))).items()}
    if sum(offsets.values()) != len(published.messages):
        raise Mismatch(
            f"the topic's end offsets {offsets}: not the {len(published.messages)} published"
        )
    for entry in planned:
        offsets[entry["partition"]] += 1

    env = table_environment()
    label = "evolution (flink-avro-confluent.sql)"
    (statement,) = split_statements((out / "flink-avro-confluent.sql").read_text())
    statement, framing = on_cluster(statement, cluster)
    if framing != "confluent":
        raise Mismatch(f"{label}: a table reading the {framing} topic")
    execute(env, label, 1, bounded_at(statement, offsets))
    table = re.search(r"CREATE TABLE (`(?:[^`]|``)+`)", statement)[1]
    names = columns + ["event_time"]
    result = env.execute_sql(f"SELECT {', '.join(f'`{n}`' for n in names)} FROM {table}")
    job = result.get_job_client()
    collector = Collector(result)
    collector.start()
    try:
        old = len(published.records)
        if collector.wait_for_rows(old, JOB_TIMEOUT) < old or collector.error:
            raise Mismatch(
                f"{label}: the job returned {len(collector.rows)} of the {old} records "
                f"published before the new version: {collector.error or 'timed out'}"
            )
        status = job.get_job_status().result()
        if status.name != "RUNNING":
            raise Mismatch(f"{label}: the job is {status} after the first records, not running")
        before = len(collector.rows)
        published_line = registry_step("publish", str(out)).strip()
        collector.join(JOB_TIMEOUT)
        if collector.is_alive():
            raise Mismatch(
                f"{label}: the job did not end at its bound within {JOB_TIMEOUT} s "
                f"({len(collector.rows)} rows)"
            )
        if collector.error:
            raise Refused(
                f"{label}: the job failed after the next version arrived:\n{collector.error}"
            )
    finally:
        if collector.is_alive():
            job.cancel().result()

    got = [dict(zip(names, [plain_value(v) for v in row])) for row in collector.rows]
    new = [entry["record"] for entry in planned]
    want = [
        dict({c: r[c] for c in columns}, event_time=event_time_ms(r))
        for r in published.records + new
    ]
    expect_equal_records(
        f"{label}: the bridge's records and the next version's, every column", got, want
    )
    return before, len(new), len(got), published_line, offsets


def check_next_table(out, cluster, published, columns, offsets):
    """Step 2: the next version's table reads both versions' records."""
    planned = json.loads((out / "evolution-next.json").read_text())
    env = table_environment()
    label = "evolution (the next version's table)"
    (statement,) = split_statements((out / "flink-avro-confluent.sql").read_text())
    statement, _ = on_cluster(statement, cluster)
    execute(env, label, 1, bounded_at(with_next_column(statement), offsets))
    table = re.search(r"CREATE TABLE (`(?:[^`]|``)+`)", statement)[1]
    names = columns + [NEW_FIELD["name"]]
    query = f"SELECT {', '.join(f'`{n}`' for n in names)} FROM {table}"
    got = [dict(zip(names, row)) for row in execute(env, label, 2, query)]
    new = [entry["record"] for entry in planned]
    want = [{n: r.get(n) for n in names} for r in published.records + new]
    expect_equal_records(
        f"{label}: the older records with {NEW_FIELD['name']} null, the next version's "
        "with its value",
        got,
        want,
    )
    return len(got)


def main():
    bridge, out = sys.argv[1], Path(sys.argv[2])
    started = time.monotonic()
    columns = [field["name"] for field in json.loads(SCHEMA_FILE.read_text())["fields"]]
    cluster = json.loads((out / "cluster.json").read_text())
    try:
        published = Published(out, "confluent")
        before, new, total, published_line, offsets = check_running_job(
            out, cluster, published, columns
        )
        print(published_line)
        print(
            f"a Flink streaming job on the current schema read the bridge's {before} records, "
            f"kept running while {new} records of the next version arrived, and ended with "
            f"{total} rows: both, every column equal, {NEW_FIELD['name']} ignored by the old table"
        )
        rows = check_next_table(out, cluster, published, columns, offsets)
        print(
            f"the next version's table (its column {NEW_FIELD['name']} added) read all {rows} "
            f"records: the bridge's, written with the older schema, with {NEW_FIELD['name']} "
            "null, every other column equal"
        )
        flink_done = time.monotonic()
        print(registry_step("refuse", bridge, str(out)).strip())
    except (Refused, Mismatch) as failure:
        sys.exit(f"check-downstream: {failure}")
    print(
        f"evolution checks took {time.monotonic() - started:.0f} s "
        f"(the running job {flink_done - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
