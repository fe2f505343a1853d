"""What the engine checks share (standard library only: each engine has its own
virtualenv): the records publish.py captured, the results the examples' queries
must give on them, and the comparisons.

The expected results are computed here from `css-kafka-bridge tail`'s JSON,
never from an engine's output, so an engine is always compared with something
it did not produce.
"""

import json
import os
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "schemas/push_error_record.avsc"
FRAMINGS = ("plain", "confluent")
MINUTE_MS = 60_000
# The Confluent wire format: magic byte 0, then the 4-byte big-endian schema id.
CONFLUENT_HEADER_BYTES = 5


class Mismatch(Exception):
    """An engine disagreed with the bridge; the message says where."""


class Published:
    """One topic's messages as stored, and the same records as `tail` decoded them."""

    def __init__(self, out, framing):
        self.framing = framing
        self.messages = json.loads((Path(out) / f"published-{framing}.json").read_text())
        for message in self.messages:
            message["value"] = bytes.fromhex(message["value"])
        self.records = json.loads((Path(out) / f"tail-{framing}.json").read_text())

    @property
    def confluent(self):
        return self.framing == "confluent"


# How far past its report and its receipt a record's event time may go.
EVENT_TIME_LEAD_MS = 60_000


def event_time_ms(record):
    """The example jobs' event time: COALESCE(occur_time, report_time), but
    never more than a minute past report_time or received_at, so that one
    record from the far future cannot carry the watermark past every record
    after it."""
    occur = record["occur_time"]
    event = occur if occur is not None else record["report_time"]
    return min(
        event,
        record["report_time"] + EVENT_TIME_LEAD_MS,
        record["received_at"] + EVENT_TIME_LEAD_MS,
    )


def unique_records(records):
    """One record per event_id: a CSS retry repeats the records with the same
    event_id (only received_at differs)."""
    return list({record["event_id"]: record for record in records}.values())


def errors_per_minute(records):
    """{(window start ms, stream_id): (errors, error kinds)} of the unique records,
    in tumbling one-minute windows of event time."""
    errors = defaultdict(int)
    kinds = defaultdict(set)
    for record in unique_records(records):
        start = event_time_ms(record) // MINUTE_MS * MINUTE_MS
        errors[start, record["stream_id"]] += 1
        kinds[start, record["stream_id"]].add(record["error_name"])
    return {key: (errors[key], len(kinds[key])) for key in errors}


def expect_equal_records(what, got, want):
    """`got` and `want` hold the same records, in any order (compared as JSON)."""

    def canonical(rows):
        return sorted(json.dumps(row, sort_keys=True, ensure_ascii=False) for row in rows)

    got_rows, want_rows = canonical(got), canonical(want)
    if got_rows == want_rows:
        return
    missing = [row for row in want_rows if row not in got_rows]
    extra = [row for row in got_rows if row not in want_rows]
    raise Mismatch(
        f"{what}: {len(got)} rows, expected {len(want)}\n"
        + "".join(f"  expected, not found: {row}\n" for row in missing[:5])
        + "".join(f"  found, not expected: {row}\n" for row in extra[:5])
    )


def expect_equal(what, got, want):
    if got != want:
        raise Mismatch(f"{what}:\n  got      {got}\n  expected {want}")


def avro_container(schema_json, datums):
    """An Avro object container file (uncompressed, one block) holding `datums`,
    each already Avro binary, byte for byte: the published bytes are not decoded
    and re-encoded on the way to the engine."""

    def long(n):
        n = (n << 1) ^ (n >> 63)  # zigzag
        out = bytearray()
        while n > 0x7F:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out)

    def blob(b):
        return long(len(b)) + b

    sync = os.urandom(16)
    metadata = {b"avro.schema": schema_json.encode(), b"avro.codec": b"null"}
    header = b"Obj\x01" + long(len(metadata))
    header += b"".join(blob(key) + blob(value) for key, value in metadata.items())
    header += long(0) + sync
    block = long(len(datums)) + long(sum(map(len, datums))) + b"".join(datums) + sync
    return header + block
