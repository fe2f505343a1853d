"""Reads push error records in the Confluent wire format (magic byte 0, 4-byte
schema id, Avro binary) with confluent-kafka's own consumer and
AvroDeserializer, which fetches each writer schema from the Schema Registry by
id: the stock client path a Python consumer of the topic would take, and an
implementation independent of the bridge's.

Usage:
  confluent_consume.py --bootstrap HOST:PORT --topic TOPIC --registry URL
                       [--count N] [--timeout SECONDS] [--registry-auth USER:PASS]

Reads the topic from the beginning with a fresh consumer group until --count
records are in or --timeout seconds pass. stdout: a JSON array of the decoded
records, in the order read, with timestamp-millis fields as integer
milliseconds (fastavro returns datetimes), so they compare with the bridge's own
decoding. Exits 1 when fewer than --count records arrived, and 2 when a message
cannot be decoded.
"""

import argparse
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from avro_json import plain


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--registry", required=True, help="Schema Registry URL")
    parser.add_argument(
        "--registry-auth", help="USER:PASS for the registry's basic auth"
    )
    parser.add_argument(
        "--count", type=int, help="stop after this many records (default: read until --timeout)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    registry_conf = {"url": args.registry}
    if args.registry_auth:
        registry_conf["basic.auth.user.info"] = args.registry_auth
    deserializer = AvroDeserializer(SchemaRegistryClient(registry_conf))
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"confluent-consume-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    records = []
    deadline = time.monotonic() + args.timeout
    try:
        consumer.subscribe([args.topic])
        while args.count is None or len(records) < args.count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            message = consumer.poll(min(remaining, 0.5))
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise SystemExit(f"consume error: {message.error()}")
            context = SerializationContext(message.topic(), MessageField.VALUE)
            try:
                record = deserializer(message.value(), context)
            except Exception as error:  # report which message, then fail
                print(
                    f"cannot decode partition {message.partition()} offset "
                    f"{message.offset()}: {error!r}",
                    file=sys.stderr,
                )
                return 2
            records.append(plain(record))
    finally:
        consumer.close()
    json.dump(records, sys.stdout)
    if args.count is not None and len(records) < args.count:
        print(
            f"only {len(records)} of {args.count} records within {args.timeout}s",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
