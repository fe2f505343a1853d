"""Decodes Avro-encoded push error records with fastavro, an Avro
implementation independent of the bridge's (apache-avro, Rust).

Usage: decode_avro.py SCHEMA.avsc < payloads.json

stdin: a JSON array of hex-encoded message payloads. stdout: a JSON array of the
decoded records, with timestamp-millis fields as integer milliseconds (fastavro
returns them as datetimes) so they compare with the bridge's own decoding.
"""

import io
import json
import sys

import fastavro

from avro_json import plain


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        schema = fastavro.parse_schema(json.load(f))
    records = []
    for payload in json.load(sys.stdin):
        buffer = io.BytesIO(bytes.fromhex(payload))
        records.append(plain(fastavro.schemaless_reader(buffer, schema)))
        if buffer.read():
            raise SystemExit("trailing bytes after a record")
    json.dump(records, sys.stdout)


if __name__ == "__main__":
    main()
