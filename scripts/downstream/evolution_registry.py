"""The registry side of schema evolution, against the check's real Kafka and
Schema Registry (cluster.json, as publish.py wrote it). Runs in the test
virtualenv (.venv: confluent-kafka[avro]).

Usage:
  evolution_registry.py offsets OUT_DIR
      prints {"partition": end offset} of the Confluent-framed topic, as JSON
  evolution_registry.py publish OUT_DIR
      sets the topic's subject to BACKWARD compatibility, then publishes the
      records of OUT_DIR/evolution-next.json ([{"partition", "record"}]) with the
      stock confluent-kafka AvroSerializer, which registers
      OUT_DIR/next-schema.avsc as the subject's next version (the registry's
      compatibility check lets it in); prints a line saying so
  evolution_registry.py refuse BRIDGE_BINARY OUT_DIR
      a subject set to BACKWARD whose schema (the .avsc with appid a string) the
      bridge's schema cannot read: the registry answers 409 to the bridge's
      schema; a bridge started on that subject (auto-registration on) stays not
      ready, answers callbacks 503 `schema_unavailable`, and logs the
      registry's message; the subject still holds only its one version
"""

import faulthandler
import json
import sys
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from publish import REPO, SCHEMA_FILE, Failure, Processes, free_port, wait_for

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
INCOMPATIBLE_TOPIC = "css.push-errors.incompatible"


def registry_call(registry, method, path, body=None):
    """(status, answer as JSON) of one call to the Confluent-compatible API."""
    request = urllib.request.Request(
        registry + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"content-type": MEDIA_TYPE, "accept": MEDIA_TYPE},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def set_backward(registry, subject):
    status, answer = registry_call(
        registry, "PUT", f"/config/{subject}", {"compatibility": "BACKWARD"}
    )
    if status != 200:
        raise Failure(f"PUT /config/{subject} answered {status}: {answer}")
    status, answer = registry_call(registry, "GET", f"/config/{subject}")
    if status != 200 or answer.get("compatibilityLevel") != "BACKWARD":
        raise Failure(f"GET /config/{subject} answered {status}: {answer}")


def end_offsets(cluster, topic):
    consumer = Consumer(
        {"bootstrap.servers": cluster["brokers"], "group.id": "check-downstream-evolution"}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in sorted(partitions)
        }
    finally:
        consumer.close()


def publish_next(out, cluster):
    topic = cluster["topics"]["confluent"]
    subject = f"{topic}-value"
    # Without a timeout the client waits for an answer for ever.
    registry = SchemaRegistryClient({"url": cluster["registry"], "timeout": 30})
    set_backward(cluster["registry"], subject)
    before = registry.get_versions(subject)
    next_schema = (out / "next-schema.avsc").read_text()
    serializer = AvroSerializer(registry, next_schema)
    context = SerializationContext(topic, MessageField.VALUE)
    producer = Producer({"bootstrap.servers": cluster["brokers"], "linger.ms": 0})
    failures = []

    def delivered(error, _message):
        if error is not None:
            failures.append(str(error))

    planned = json.loads((out / "evolution-next.json").read_text())
    try:
        for entry in planned:
            record = entry["record"]
            producer.produce(
                topic,
                key=record["stream_id"].encode(),
                value=serializer(record, context),
                partition=entry["partition"],
                on_delivery=delivered,
            )
    except Exception as error:  # the serializer's error carries the registry's answer
        raise Failure(f"the AvroSerializer refused the next schema version: {error}") from None
    if producer.flush(30) or failures:
        raise Failure(f"the next version's records were not all delivered: {failures}")
    latest = registry.get_latest_version(subject)
    if json.loads(latest.schema.schema_str) != json.loads(next_schema):
        raise Failure(f"the latest version under {subject} is not the next schema")
    bridge_id = registry.get_version(subject, before[-1]).schema_id
    if latest.schema_id == bridge_id:
        raise Failure(f"the next version has the bridge schema's id {bridge_id}")
    print(
        f"{len(planned)} records of the next version (one more optional field) published "
        f"with confluent-kafka's AvroSerializer; under BACKWARD compatibility the registry "
        f"took it as version {latest.version} of {subject} (versions before: {before}), "
        f"schema id {latest.schema_id} (the bridge's: {bridge_id})"
    )


def incompatible_schema():
    """The .avsc with appid a string: a schema the bridge's (appid a long) cannot
    read data of, so BACKWARD compatibility refuses the bridge's after it."""
    schema = json.loads(SCHEMA_FILE.read_text())
    (appid,) = [f for f in schema["fields"] if f["name"] == "appid"]
    appid["type"] = "string"
    return schema


def refuse(bridge, out, cluster):
    registry = cluster["registry"]
    subject = f"{INCOMPATIBLE_TOPIC}-value"
    status, answer = registry_call(
        registry,
        "POST",
        f"/subjects/{subject}/versions",
        {"schema": json.dumps(incompatible_schema()), "schemaType": "AVRO"},
    )
    if status != 200:
        raise Failure(f"registering the subject's first schema answered {status}: {answer}")
    set_backward(registry, subject)

    # The registry itself refuses the bridge's schema after that one.
    status, answer = registry_call(
        registry,
        "POST",
        f"/subjects/{subject}/versions",
        {"schema": SCHEMA_FILE.read_text(), "schemaType": "AVRO"},
    )
    if status != 409 or answer.get("error_code") != 409 or not answer.get("message"):
        raise Failure(f"the registry took an incompatible schema: {status} {answer}")
    message = answer["message"]

    # The topic exists, so that Kafka is no reason for the bridge not to be ready.
    admin = AdminClient({"bootstrap.servers": cluster["brokers"], "log.connection.close": False})
    for future in admin.create_topics([NewTopic(INCOMPATIBLE_TOPIC, 1, 1)]).values():
        future.result(timeout=30)

    processes = Processes()
    try:
        http_port = free_port()
        log = out / "bridge-incompatible.log"
        process = processes.start(
            "bridge (incompatible subject)",
            [
                bridge,
                "--log-format",
                "json",
                "serve",
                "--listen",
                f"127.0.0.1:{http_port}",
                "--kafka-brokers",
                cluster["brokers"],
                "--kafka-topic",
                INCOMPATIBLE_TOPIC,
                "--schema-registry-url",
                registry,
                "--schema-registry-auto-register",
                "true",
                "--shutdown-delay-secs",
                "0",
            ],
            log,
        )
        base = f"http://127.0.0.1:{http_port}"

        def refusal_lines():
            lines = []
            for text in log.read_text().splitlines():
                try:
                    line = json.loads(text)
                except ValueError:
                    continue
                if line.get("level") == "ERROR" and "409" in line.get("message", ""):
                    lines.append(line)
            return lines

        wait_for("the bridge's log line about the refusal", refusal_lines, 60, process, log)
        (line,) = refusal_lines()
        logged = line["message"]
        if message not in logged or subject not in logged:
            raise Failure(
                f"the bridge's log line lacks the registry's message {message!r} "
                f"or the subject {subject}: {logged}"
            )

        def readyz():
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=10) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        wait_for("the bridge reaching Kafka", lambda: readyz()[1]["kafka"] == "reachable", 60)
        ready, readiness = readyz()
        if ready != 503 or readiness.get("blockers") != ["schema not registered"]:
            raise Failure(
                f"/readyz answered {ready} {readiness}, expected 503 for the schema alone"
            )
        request = urllib.request.Request(
            f"{base}/css/callback",
            data=(REPO / "tests/fixtures/seed-sample.json").read_bytes(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        try:
            error_name = json.loads(body).get("error")
        except ValueError:
            error_name = None
        if status != 503 or error_name != "schema_unavailable":
            raise Failure(
                f"a callback answered {status} {body[:300]!r}, expected 503 schema_unavailable"
            )
        if process.poll() is not None:
            raise Failure(f"the bridge exited with {process.returncode}")
    finally:
        processes.stop_all()

    status, versions = registry_call(registry, "GET", f"/subjects/{subject}/versions")
    if status != 200 or versions != [1]:
        raise Failure(f"the subject {subject} holds versions {versions} ({status}), expected [1]")
    published = end_offsets(cluster, INCOMPATIBLE_TOPIC)
    if any(published.values()):
        raise Failure(f"the refused bridge published to {INCOMPATIBLE_TOPIC}: {published}")
    print(f"the registry refuses the bridge's schema under {subject} (BACKWARD): 409 {message}")
    print(
        f"the bridge on that subject stays not ready (/readyz 503, blockers "
        f"{readiness.get('blockers')}, Kafka reachable), answers callbacks "
        f"503 ({body.decode(errors='replace').strip()}), publishes nothing, and logs "
        f"({line['level']}, {line['target']}): {logged}"
    )


def main():
    # Where a step hangs, told before the caller's timeout (300 s) ends it.
    faulthandler.dump_traceback_later(240, exit=True)
    command = sys.argv[1]
    if command == "refuse":
        bridge, out = sys.argv[2], Path(sys.argv[3])
    else:
        bridge, out = None, Path(sys.argv[2])
    cluster = json.loads((out / "cluster.json").read_text())
    if command == "offsets":
        print(json.dumps(end_offsets(cluster, cluster["topics"]["confluent"])))
    elif command == "publish":
        publish_next(out, cluster)
    elif command == "refuse":
        started = time.monotonic()
        refuse(bridge, out, cluster)
        print(f"the compatibility check took {time.monotonic() - started:.0f} s")
    else:
        sys.exit(f"evolution_registry.py: unknown command {command!r}")


if __name__ == "__main__":
    try:
        main()
    except Failure as failure:
        sys.exit(f"check-downstream: {failure}")
