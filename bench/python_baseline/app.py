"""The Python baseline: what a hand-written FastAPI service doing the bridge's job
looks like, for `bench/run` to compare against.

Same contract as the bridge, minus authentication (the bridge is benchmarked
without callback keys too):

- `POST /css/callback` with a CSS callback as JSON;
- event types other than 321: `200 {"code":0}`, nothing published;
- push error callbacks (321) are validated, flattened into one record per
  `abnormal_event[].detail[]` element (one record with null detail fields for a
  group without details), encoded with fastavro's schemaless writer and the same
  `schemas/push_error_record.avsc`, and produced with key `stream_id` and the
  `avro.schema.name` / `avro.schema.fingerprint` headers;
- the producer is idempotent, `acks=all`, lz4, `linger.ms=1` (the bridge's
  defaults), and the answer is `200 {"code":0}` only once every record of the
  callback is acknowledged; `503` when Kafka does not acknowledge within
  ACK_TIMEOUT_MS or the producer queue is full; `400` for an invalid body.

Delivery reports are served by one thread per worker calling `producer.poll`;
each request waits on one asyncio future, resolved from that thread through
`call_soon_threadsafe` when the request's last record is acknowledged.

Run (one producer per worker, created after the worker starts):

    KAFKA_BROKERS=127.0.0.1:9092 KAFKA_TOPIC=css.push-errors \
    uvicorn app:app --workers 2 --no-access-log --loop uvloop --http httptools

Settings (environment): KAFKA_BROKERS (required), KAFKA_TOPIC
(default css.push-errors), ACK_TIMEOUT_MS (default 5000), SCHEMA_PATH (default:
the repository's schemas/push_error_record.avsc).
"""

import asyncio
import contextlib
import hashlib
import io
import json
import os
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl

import fastavro
from confluent_kafka import KafkaException, Producer
from fastapi import FastAPI, Request
from fastapi.responses import Response

try:
    import orjson

    loads = orjson.loads
    dumps = orjson.dumps
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    loads = json.loads

    def dumps(value):
        return json.dumps(value, separators=(",", ":")).encode()


PUSH_ERROR_EVENT_TYPE = 321
MAX_ABNORMAL_EVENTS = 1024
MAX_DETAILS_PER_EVENT = 4096
MAX_BODY_BYTES = 1024 * 1024

SCHEMA_PATH = Path(
    os.environ.get(
        "SCHEMA_PATH",
        Path(__file__).resolve().parents[2] / "schemas" / "push_error_record.avsc",
    )
)
SCHEMA_TEXT = SCHEMA_PATH.read_text()
SCHEMA = fastavro.parse_schema(json.loads(SCHEMA_TEXT))
# Same headers as the bridge: the full name, and the SHA-256 of the schema's
# Parsing Canonical Form.
SCHEMA_FINGERPRINT = "sha256:" + hashlib.sha256(
    fastavro.schema.to_parsing_canonical_form(json.loads(SCHEMA_TEXT)).encode()
).hexdigest()
HEADERS = [
    ("avro.schema.name", b"css.push_error.PushErrorRecord"),
    ("avro.schema.fingerprint", SCHEMA_FINGERPRINT.encode()),
]

ERROR_NAMES = {
    1: "video_timestamp_backward",
    2: "audio_timestamp_backward",
    3: "video_timestamp_jump",
    4: "audio_timestamp_jump",
    5: "chunk_size_too_big",
    6: "video_frame_late",
    7: "audio_frame_late",
    8: "video_codec_changed",
    9: "audio_codec_changed",
    10: "video_header_missing",
    11: "audio_header_missing",
}

OK_BODY = b'{"code":0}'


# --- validation -----------------------------------------------------------------


class Rejected(Exception):
    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def as_int(value, field):
    """A JSON integer, or a decimal string, as the bridge accepts."""
    if type(value) is int:
        return value
    if isinstance(value, str):
        digits = value[1:] if value.startswith("-") else value
        if digits.isascii() and digits.isdigit():
            return int(value)
    raise Rejected(field, f"invalid value {value!r}, expected an integer")


def required_int(obj, key, field, non_negative=True):
    value = obj.get(key)
    if value is None:
        raise Rejected(field, "missing required field")
    value = as_int(value, field)
    if non_negative and value < 0:
        raise Rejected(field, f"must not be negative, got {value}")
    return value


def optional_str(obj, key, field):
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise Rejected(field, "expected a string")


def stream_params(query):
    if not query:
        return {}
    if query.startswith("?"):
        query = query[1:]
    return {
        name: value
        for name, value in parse_qsl(query, keep_blank_values=True)
        if name.lower() != "txsecret"
    }


def non_blank(text):
    return text if text is not None and text.strip() else None


def interval_ms(desc):
    if desc is None:
        return None
    _, found, after = desc.partition("interval=")
    if not found:
        return None
    end = 0
    while end < len(after) and after[end].isascii() and after[end].isdigit():
        end += 1
    return int(after[:end]) if end else None


def event_id(appid, stream_id, sequence, data_time, group_index, detail_index):
    material = "\0".join(
        (
            str(appid),
            stream_id,
            sequence or "",
            str(data_time),
            str(group_index),
            "-" if detail_index is None else str(detail_index),
        )
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def flatten(body, received_at_ms):
    """Validates a push error callback and returns its records, in order."""
    appid = required_int(body, "appid", "appid", non_negative=False)
    stream_id = optional_str(body, "stream_id", "stream_id")
    if stream_id is None:
        raise Rejected("stream_id", "missing required field")
    if not stream_id:
        raise Rejected("stream_id", "must not be empty")
    data_time = required_int(body, "data_time", "data_time")
    report_interval = body.get("report_interval")
    if report_interval is not None:
        report_interval = as_int(report_interval, "report_interval")
        if report_interval < 0:
            raise Rejected("report_interval", "must not be negative")
    groups = body.get("abnormal_event")
    if not isinstance(groups, list):
        raise Rejected("abnormal_event", "missing required field or not a list")
    if len(groups) > MAX_ABNORMAL_EVENTS:
        raise Rejected("abnormal_event", f"more than {MAX_ABNORMAL_EVENTS} entries")
    domain = optional_str(body, "domain", "domain")
    path = optional_str(body, "path", "path")
    sequence = optional_str(body, "sequence", "sequence")
    user_ip = optional_str(body, "user_ip", "user_ip")
    params = stream_params(optional_str(body, "stream_param", "stream_param"))

    records = []
    for g, group in enumerate(groups):
        at = f"abnormal_event[{g}]"
        if not isinstance(group, dict):
            raise Rejected(at, "expected an object")
        error_type = required_int(group, "type", f"{at}.type", non_negative=False)
        if not -(2**31) <= error_type < 2**31:
            raise Rejected(f"{at}.type", "out of range for a 32-bit integer")
        count = required_int(group, "count", f"{at}.count")
        details = group.get("detail") or []
        if not isinstance(details, list):
            raise Rejected(f"{at}.detail", "expected a list")
        if len(details) > MAX_DETAILS_PER_EVENT:
            raise Rejected(f"{at}.detail", f"more than {MAX_DETAILS_PER_EVENT} entries")
        common = {
            "event_type": PUSH_ERROR_EVENT_TYPE,
            "appid": appid,
            "stream_id": stream_id,
            "domain": domain,
            "path": path,
            "sequence": sequence,
            "user_ip": user_ip,
            "report_time": data_time,
            "report_interval_ms": report_interval,
            "stream_params": params,
            "error_type": error_type,
            "error_name": ERROR_NAMES.get(error_type, "unknown"),
            "type_desc_en": non_blank(optional_str(group, "type_desc_en", f"{at}.type_desc_en")),
            "type_desc_cn": non_blank(optional_str(group, "type_desc_cn", f"{at}.type_desc_cn")),
            "error_count": count,
            "event_key": non_blank(optional_str(group, "event_key", f"{at}.event_key")),
            "received_at": received_at_ms,
        }
        if not details:
            records.append(
                {
                    **common,
                    "event_id": event_id(appid, stream_id, sequence, data_time, g, None),
                    "detail_index": None,
                    "detail_desc": None,
                    "occur_time": None,
                    "interval_ms": None,
                }
            )
            continue
        for d, detail in enumerate(details):
            field = f"{at}.detail[{d}]"
            if not isinstance(detail, dict):
                raise Rejected(field, "expected an object")
            desc = optional_str(detail, "desc", f"{field}.desc")
            records.append(
                {
                    **common,
                    "event_id": event_id(appid, stream_id, sequence, data_time, g, d),
                    "detail_index": d,
                    "detail_desc": desc,
                    "occur_time": required_int(detail, "occur_time", f"{field}.occur_time"),
                    "interval_ms": interval_ms(desc),
                }
            )
    return stream_id, records


def encode(record):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SCHEMA, record)
    return buf.getvalue()


# --- Kafka ----------------------------------------------------------------------


class Publisher:
    """One idempotent producer per worker process, with a delivery-report thread."""

    def __init__(self, brokers, topic, ack_timeout_ms):
        self.topic = topic
        self.ack_timeout = ack_timeout_ms / 1000
        self.producer = Producer(
            {
                "bootstrap.servers": brokers,
                "client.id": "css-python-baseline",
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": "lz4",
                "linger.ms": 1,
                "queue.buffering.max.kbytes": 32768,
                "message.timeout.ms": ack_timeout_ms,
            }
        )
        self.running = True
        self.poller = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self.poller.start()

    def _poll(self):
        while self.running:
            self.producer.poll(0.1)

    async def publish(self, key, payloads):
        """Produces every payload; returns once all are acknowledged. Raises
        KafkaException (refused), BufferError (queue full) or TimeoutError."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        state = {"remaining": len(payloads), "error": None}

        def settle(error):
            if not done.done():
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(KafkaException(error))

        # Runs on the poll thread; only that thread touches `state` after produce.
        def on_delivery(error, _message):
            if error is not None and state["error"] is None:
                state["error"] = error
                loop.call_soon_threadsafe(settle, error)
                return
            state["remaining"] -= 1
            if state["remaining"] == 0 and state["error"] is None:
                loop.call_soon_threadsafe(settle, None)

        key = key.encode()
        for payload in payloads:
            self.producer.produce(
                self.topic, payload, key, on_delivery=on_delivery, headers=HEADERS
            )
        await asyncio.wait_for(done, self.ack_timeout)

    def close(self, timeout=5.0):
        self.producer.flush(timeout)
        self.running = False
        self.poller.join(1.0)


# --- HTTP -----------------------------------------------------------------------


def json_response(status, body):
    return Response(content=dumps(body), status_code=status, media_type="application/json")


@contextlib.asynccontextmanager
async def lifespan(app):
    # Created here, in the worker process, not at import time in the parent.
    app.state.publisher = Publisher(
        os.environ["KAFKA_BROKERS"],
        os.environ.get("KAFKA_TOPIC", "css.push-errors"),
        int(os.environ.get("ACK_TIMEOUT_MS", "5000")),
    )
    yield
    app.state.publisher.close()


app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/healthz")
async def healthz():
    return Response(content=b"ok", media_type="text/plain")


@app.post("/css/callback")
async def callback(request: Request):
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        return json_response(413, {"code": 413, "error": "body_too_large"})
    received_at_ms = time.time_ns() // 1_000_000
    try:
        body = loads(raw)
        if not isinstance(body, dict):
            raise Rejected(".", "expected a JSON object")
        event_type = body.get("event_type")
        if event_type is None:
            raise Rejected("event_type", "missing required field")
        if as_int(event_type, "event_type") != PUSH_ERROR_EVENT_TYPE:
            return Response(content=OK_BODY, media_type="application/json")
        key, records = flatten(body, received_at_ms)
        payloads = [encode(record) for record in records]
    except Rejected as rejected:
        return json_response(
            400,
            {"code": 400, "error": "invalid_callback", "field": rejected.field,
             "message": str(rejected)},
        )
    except ValueError as error:  # malformed JSON
        return json_response(400, {"code": 400, "error": "invalid_callback", "message": str(error)})
    try:
        await request.app.state.publisher.publish(key, payloads)
    except (BufferError, TimeoutError, KafkaException) as error:
        return json_response(
            503, {"code": 503, "error": "kafka_unavailable", "message": str(error)}
        )
    return Response(content=OK_BODY, media_type="application/json")
