"""Publishes callbacks through the real bridge and captures what reaches Kafka,
for the engine checks (spark_check.py, flink_check.py).

Usage: publish.py BRIDGE_BINARY OUT_DIR CALLBACK.json...

Starts a one-node Apache Kafka (scripts/kafka, in OUT_DIR/kafka), a Schema Registry stand-in
and two bridges on loopback ports: one publishing plain Avro, one the Confluent
wire format. Posts every callback file to both, in the order given (a file given
twice is a CSS retry), then reads each topic back twice, independently:

- every message as stored (partition, offset, key, headers, value bytes), with
  a plain Kafka consumer: these are the bytes the engines get;
- every record as `css-kafka-bridge tail` decodes it: the values the engines'
  results are compared with.

Writes to OUT_DIR, for each framing F in (plain, confluent):
  published-F.json   [{"partition", "offset", "key", "headers", "value" (hex)}]
  tail-F.json        [record as JSON]
and what `css-kafka-bridge schema` prints: spark.ddl, flink-avro-confluent.sql,
flink-avro.sql. Runs in the test virtualenv (.venv: confluent-kafka).
"""

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "schemas/push_error_record.avsc"
KAFKA = REPO / "scripts/kafka"
PARTITIONS = 3
FRAMINGS = ("plain", "confluent")
# The id the registry stand-in hands out, deliberately not 1, so that a reader
# that ignores the header's id would be caught.
SCHEMA_ID = 42


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


class Registry(http.server.ThreadingHTTPServer):
    """The two Schema Registry calls that matter here: the bridge registers its
    schema (POST /subjects/{subject}/versions) and a reader fetches a writer
    schema by the id in a message's header (GET /schemas/ids/{id})."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RegistryHandler)
        self.schema = None
        self.subjects = []


class RegistryHandler(http.server.BaseHTTPRequestHandler):
    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/vnd.schemaregistry.v1+json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        parts = self.path.strip("/").split("/")
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
            self.server.schema = body["schema"]
            self.server.subjects.append(parts[1])
            self.answer(200, {"id": SCHEMA_ID})
        else:
            self.answer(404, {"error_code": 404, "message": "not served by the stand-in"})

    def do_GET(self):
        if self.path == f"/schemas/ids/{SCHEMA_ID}" and self.server.schema:
            self.answer(200, {"schema": self.server.schema})
        else:
            self.answer(404, {"error_code": 40403, "message": "Schema not found"})

    def log_message(self, *args):
        pass


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


def consume_all(brokers, topic, expected, timeout=60, grace=2):
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
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
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


def check_framing(framing, messages, registry):
    """Plain values start with the event_id's length, never 0; Confluent values
    with the magic byte 0 and the id the registry gave for the bridge's schema."""
    for message in messages:
        value = bytes.fromhex(message["value"])
        where = f"{framing} message at {message['partition']}/{message['offset']}"
        if framing == "plain" and value[:1] == b"\0":
            raise Failure(f"{where} starts with a zero byte")
        if framing == "confluent":
            if value[:1] != b"\0" or int.from_bytes(value[1:5], "big") != SCHEMA_ID:
                raise Failure(
                    f"{where} lacks the header for schema id {SCHEMA_ID}: {value[:5].hex()}"
                )
    if framing == "confluent":
        url = f"http://127.0.0.1:{registry.server_port}/schemas/ids/{SCHEMA_ID}"
        with urllib.request.urlopen(url) as response:
            registered = json.loads(json.load(response)["schema"])
        if registered != json.loads(SCHEMA_FILE.read_text()):
            raise Failure(f"the schema registered under id {SCHEMA_ID} is not {SCHEMA_FILE.name}")


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


def main():
    started = time.monotonic()
    bridge, out, callbacks = sys.argv[1], Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
    out.mkdir(parents=True, exist_ok=True)
    write_schemas(bridge, out)
    expected = sum(record_count(bridge, callback) for callback in callbacks)

    processes = Processes()
    kafka_dir = out / "kafka"
    registry = Registry()
    threading.Thread(target=registry.serve_forever, daemon=True).start()
    try:
        brokers = subprocess.run(
            [str(KAFKA), "start", str(kafka_dir)], capture_output=True, text=True
        )
        if brokers.returncode != 0:
            raise Failure(f"Apache Kafka did not start:\n{brokers.stderr}")
        brokers = brokers.stdout.strip()

        topics = {framing: f"css.push-errors.{framing}" for framing in FRAMINGS}
        admin = AdminClient({"bootstrap.servers": brokers, "log.connection.close": False})
        for future in admin.create_topics(
            [NewTopic(topic, PARTITIONS, 1) for topic in topics.values()]
        ).values():
            future.result(timeout=30)

        bases = {}
        for framing, topic in topics.items():
            http_port = free_port()
            log = out / f"bridge-{framing}.log"
            registry_flags = (
                ["--schema-registry-url", f"http://127.0.0.1:{registry.server_port}"]
                if framing == "confluent"
                else []
            )
            process = processes.start(
                f"bridge ({framing})",
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
                    *registry_flags,
                ],
                log,
            )
            base = f"http://127.0.0.1:{http_port}"
            wait_for(
                f"bridge ({framing})",
                lambda: http_status(f"{base}/readyz") == 200,
                60,
                process,
                log,
            )
            bases[framing] = base

        for callback in callbacks:
            body = callback.read_bytes()
            for base in bases.values():
                post_callback(base, body)

        for framing, topic in topics.items():
            messages = consume_all(brokers, topic, expected)
            check_framing(framing, messages, registry)
            records = tail(bridge, brokers, topic, expected)
            (out / f"published-{framing}.json").write_text(json.dumps(messages, indent=1))
            (out / f"tail-{framing}.json").write_text(
                json.dumps(records, indent=1, ensure_ascii=False)
            )
        print(
            f"published {len(callbacks)} callbacks through the bridge: {expected} records "
            f"per topic, plain and Confluent-framed (schema id {SCHEMA_ID}), "
            f"in {time.monotonic() - started:.0f} s"
        )
    finally:
        processes.stop_all()
        subprocess.run([str(KAFKA), "down", str(kafka_dir)], check=False)
        registry.shutdown()


if __name__ == "__main__":
    try:
        main()
    except Failure as failure:
        sys.exit(f"check-downstream: {failure}")
