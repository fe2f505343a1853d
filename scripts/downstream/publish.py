"""Publishes callbacks through the real bridge and captures what reaches Kafka,
for the engine checks (spark_check.py, flink_check.py), and checks the
Confluent-framed side against a real Schema Registry.

Usage: publish.py BRIDGE_BINARY OUT_DIR BROKERS REGISTRY_URL CALLBACK.json...

BROKERS is an Apache Kafka (scripts/kafka) and REGISTRY_URL the
Confluent-compatible API of a real registry (scripts/registry: Apicurio), both
left running for the engine checks. Starts two bridges on loopback ports: one
publishing plain Avro, one the Confluent wire format through the registry
(subject strategy `topic`). Posts every callback file to both, in the order
given (a file given twice is a CSS retry), then reads each topic back twice,
independently:

- every message as stored (partition, offset, key, headers, value bytes), with
  a plain Kafka consumer: these are the bytes the engines get;
- every record as `css-kafka-bridge tail` decodes it: the values the engines'
  results are compared with.

Checks, against the registry:
- each subject strategy (topic, record, topic-record) registers the .avsc under
  its subject (a bridge per strategy, on a topic of its own), and the schema id
  in every framed message is the one the registry gives for that subject;
- the stock confluent-kafka AvroDeserializer, given only the registry URL,
  decodes every framed message to the record `tail` printed.

Writes to OUT_DIR, for each framing F in (plain, confluent):
  published-F.json   [{"partition", "offset", "key", "headers", "value" (hex)}]
  tail-F.json        [record as JSON]
cluster.json (brokers, registry URL, topics), and what `css-kafka-bridge schema`
prints: spark.ddl, flink-avro-confluent.sql, flink-avro.sql. Runs in the test
virtualenv (.venv: confluent-kafka[avro]).
"""

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "schemas/push_error_record.avsc"
# The plain topic has one partition, so that its records are read in the order
# they were posted: the late retry below is then late for every reader, not
# only for those that happen to read its partition after the others.
PARTITIONS = {"plain": 1, "confluent": 3}
FRAMINGS = ("plain", "confluent")
RECORD_NAME = "css.push_error.PushErrorRecord"
# The subject each strategy registers under, for a topic.
SUBJECTS = {
    "topic": lambda topic: f"{topic}-value",
    "record": lambda topic: RECORD_NAME,
    "topic-record": lambda topic: f"{topic}-{RECORD_NAME}",
}
# Registered before the bridge's schema, so that the bridge's id is not the
# registry's first one: a reader that ignores the header's id would be caught.
DECOY_SUBJECT = "check-downstream-decoy-value"
DECOY_SCHEMA = {"type": "record", "name": "Decoy", "fields": [{"name": "x", "type": "int"}]}


class Failure(Exception):
    """A check that failed, in words."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, ready, timeout, process=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            text = Path(log).read_text(errors="replace")[-3000:] if log else ""
            raise Failure(f"{what} exited with {process.returncode}:\n{text}")
        if ready():
            return
        time.sleep(0.1)
    raise Failure(f"{what} not ready within {timeout} s")


class Processes:
    """The processes this script started, stopped in reverse order on exit."""

    def __init__(self):
        self.started = []

    def start(self, name, args, log):
        process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=open(log, "w"), stdin=subprocess.DEVNULL
        )
        self.started.append((name, process))
        return process

    def stop_all(self):
        for _, process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def post_callback(base, body):
    request = urllib.request.Request(
        f"{base}/css/callback",
        data=body,
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, answer = error.code, error.read()
    if status != 200 or json.loads(answer) != {"code": 0}:
        raise Failure(f"callback answered {status}: {answer[:500]!r}")


def consume_all(brokers, topic, partitions, expected, timeout=60, grace=2):
    """Every message of `topic`, read from the beginning: `expected` of them, and
    none more within `grace` seconds after the last."""
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"check-downstream-{os.getpid()}-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "log.connection.close": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        messages = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                raise Failure(f"consumer: {message.error()}")
            messages.append(
                {
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "key": message.key().decode() if message.key() is not None else None,
                    "headers": [
                        [k, v.decode(errors="replace") if v is not None else None]
                        for k, v in (message.headers() or [])
                    ],
                    "value": message.value().hex(),
                }
            )
            if len(messages) == expected:
                deadline = min(deadline, time.monotonic() + grace)
        if len(messages) != expected:
            raise Failure(f"read {len(messages)} messages from {topic}, expected {expected}")
        return messages
    finally:
        consumer.close()


def tail(bridge, brokers, topic, expected):
    result = subprocess.run(
        [
            bridge,
            "tail",
            "--kafka-brokers",
            brokers,
            "--kafka-topic",
            topic,
            "--from-beginning",
            "--max-records",
            str(expected),
            "--idle-timeout-secs",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise Failure(f"tail failed:\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    if len(records) != expected:
        raise Failure(
            f"tail printed {len(records)} of {expected} records:\n{result.stderr[-3000:]}"
        )
    return records


def check_framing(framing, messages, schema_id):
    """Plain values start with the event_id's length, never 0; Confluent values
    with the magic byte 0 and the id the registry gave for the bridge's schema."""
    for message in messages:
        value = bytes.fromhex(message["value"])
        where = f"{framing} message at {message['partition']}/{message['offset']}"
        if framing == "plain" and value[:1] == b"\0":
            raise Failure(f"{where} starts with a zero byte")
        if framing == "confluent":
            if value[:1] != b"\0" or int.from_bytes(value[1:5], "big") != schema_id:
                raise Failure(
                    f"{where} lacks the header for schema id {schema_id}: {value[:5].hex()}"
                )


def registered_id(registry, subject):
    """The id of the subject's latest version, after checking that it is the .avsc."""
    try:
        latest = registry.get_latest_version(subject)
    except Exception as error:  # the client's own error says what the registry answered
        raise Failure(f"the registry has no schema under subject {subject}: {error}") from None
    if json.loads(latest.schema.schema_str) != json.loads(SCHEMA_FILE.read_text()):
        raise Failure(f"the schema under subject {subject} is not {SCHEMA_FILE.name}")
    return latest.schema_id


def plain_json(value):
    """A value as `tail` prints it: timestamps as Unix milliseconds."""
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    return value


def confluent_decoded(registry_url, topic, messages):
    """Every framed message through the stock AvroDeserializer, which knows only
    the registry's URL and fetches each writer schema by the header's id."""
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_url, "timeout": 30}))
    context = SerializationContext(topic, MessageField.VALUE)
    try:
        return [plain_json(deserializer(bytes.fromhex(m["value"]), context)) for m in messages]
    except Exception as error:
        raise Failure(f"confluent-kafka's AvroDeserializer refused a message of {topic}: {error}")


def canonical(records):
    return sorted(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records)


def record_count(bridge, callback):
    """How many records the bridge makes of a callback (`check` prints one line each)."""
    out = subprocess.run(
        [bridge, "check", str(callback)], capture_output=True, text=True, check=True
    ).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def write_schemas(bridge, out):
    def schema(*args):
        return subprocess.run(
            [bridge, "schema", *args], capture_output=True, text=True, check=True
        ).stdout

    (out / "spark.ddl").write_text(schema("--format", "spark-ddl"))
    (out / "flink-avro-confluent.sql").write_text(schema("--format", "flink-sql"))
    (out / "flink-avro.sql").write_text(schema("--format", "flink-sql", "--flink-format", "avro"))


def start_bridge(processes, bridge, out, name, brokers, topic, flags):
    http_port = free_port()
    log = out / f"bridge-{name}.log"
    process = processes.start(
        f"bridge ({name})",
        [
            bridge,
            "serve",
            "--listen",
            f"127.0.0.1:{http_port}",
            "--kafka-brokers",
            brokers,
            "--kafka-topic",
            topic,
            "--shutdown-delay-secs",
            "0",
            *flags,
        ],
        log,
    )
    base = f"http://127.0.0.1:{http_port}"
    wait_for(f"bridge ({name})", lambda: http_status(f"{base}/readyz") == 200, 60, process, log)
    return base


def check_subject_strategies(processes, bridge, out, brokers, registry_url, registry):
    """A bridge per non-default strategy, on a topic of its own: it registers
    under that strategy's subject, frames with that subject's id, and the stock
    deserializer reads what it published."""
    callback = REPO / "tests/fixtures/seed-sample.json"
    expected = record_count(bridge, callback)
    for strategy in ("record", "topic-record"):
        topic = f"css.push-errors.{strategy}"
        base = start_bridge(
            processes,
            bridge,
            out,
            strategy,
            brokers,
            topic,
            [
                "--schema-registry-url",
                registry_url,
                "--schema-registry-subject-strategy",
                strategy,
            ],
        )
        post_callback(base, callback.read_bytes())
        schema_id = registered_id(registry, SUBJECTS[strategy](topic))
        messages = consume_all(brokers, topic, 1, expected)
        check_framing("confluent", messages, schema_id)
        records = tail(bridge, brokers, topic, expected)
        if canonical(confluent_decoded(registry_url, topic, messages)) != canonical(records):
            raise Failure(f"{strategy} strategy: the deserializer's records differ from tail's")


def main():
    started = time.monotonic()
    bridge, out, brokers, registry_url = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    callbacks = [Path(p) for p in sys.argv[5:]]
    out.mkdir(parents=True, exist_ok=True)
    write_schemas(bridge, out)
    expected = sum(record_count(bridge, callback) for callback in callbacks)

    # Without a timeout the client waits for an answer for ever.
    registry = SchemaRegistryClient({"url": registry_url, "timeout": 30})
    registry.register_schema(DECOY_SUBJECT, Schema(json.dumps(DECOY_SCHEMA), "AVRO"))
    processes = Processes()
    try:
        topics = {framing: f"css.push-errors.{framing}" for framing in FRAMINGS}
        admin = AdminClient({"bootstrap.servers": brokers, "log.connection.close": False})
        new_topics = [NewTopic(topics[f], PARTITIONS[f], 1) for f in FRAMINGS]
        new_topics += [NewTopic(f"css.push-errors.{s}", 1, 1) for s in ("record", "topic-record")]
        for future in admin.create_topics(new_topics).values():
            future.result(timeout=30)

        bases = {}
        for framing, topic in topics.items():
            flags = ["--schema-registry-url", registry_url] if framing == "confluent" else []
            bases[framing] = start_bridge(processes, bridge, out, framing, brokers, topic, flags)

        for callback in callbacks:
            body = callback.read_bytes()
            for base in bases.values():
                post_callback(base, body)

        schema_id = registered_id(registry, SUBJECTS["topic"](topics["confluent"]))
        for framing, topic in topics.items():
            messages = consume_all(brokers, topic, PARTITIONS[framing], expected)
            check_framing(framing, messages, schema_id)
            records = tail(bridge, brokers, topic, expected)
            if framing == "confluent":
                decoded = confluent_decoded(registry_url, topic, messages)
                if canonical(decoded) != canonical(records):
                    raise Failure("confluent-kafka's AvroDeserializer and tail disagree")
            (out / f"published-{framing}.json").write_text(json.dumps(messages, indent=1))
            (out / f"tail-{framing}.json").write_text(
                json.dumps(records, indent=1, ensure_ascii=False)
            )
        check_subject_strategies(processes, bridge, out, brokers, registry_url, registry)
        (out / "cluster.json").write_text(
            json.dumps({"brokers": brokers, "registry": registry_url, "topics": topics}, indent=1)
        )
        print(
            f"published {len(callbacks)} callbacks through the bridge: {expected} records "
            f"per topic, plain and Confluent-framed (schema id {schema_id} from Apicurio "
            "Registry); subject strategies topic, record and topic-record register there; "
            "confluent-kafka's AvroDeserializer reads every framed record equal to tail's; "
            f"in {time.monotonic() - started:.0f} s"
        )
    finally:
        processes.stop_all()


if __name__ == "__main__":
    try:
        main()
    except Failure as failure:
        sys.exit(f"check-downstream: {failure}")
