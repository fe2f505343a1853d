-- Push errors in Flink SQL: the css-kafka-bridge topic as a table, and the
-- number of errors per stream per minute of event time, each record counted once.
--
-- Run with the SQL client (examples/README.md lists the jars it needs):
--   ./bin/sql-client.sh -f push_errors.sql
--
-- The two tables are generated from schemas/push_error_record.avsc by the
-- command on their first line, and a test keeps them in step with the schema.
-- Change the topic, servers or registry URL with that command's flags
-- (--topic, --bootstrap-servers, --schema-registry-url) rather than by hand.

SET 'sql-client.execution.result-mode' = 'tableau';

-- The bridge with a Schema Registry: Confluent wire format.
-- >>> generated: css-kafka-bridge schema --format flink-sql
-- Flink SQL table over the css-kafka-bridge topic, generated from the Avro schema
-- css.push_error.PushErrorRecord by
--   css-kafka-bridge schema --format flink-sql
-- Regenerate it rather than editing the columns by hand.
-- Timestamps are TIMESTAMP(3) holding UTC: the type Flink's Avro formats map
-- timestamp-millis to by default.
-- avro-confluent: each message carries its writer schema id; Flink fetches that
-- schema from the registry and resolves it to the reader schema derived from the
-- columns below, so a table generated from an older or newer compatible schema
-- keeps reading. (Flink 1.18+ also takes the .avsc itself as the reader schema
-- via 'value.avro-confluent.schema'.)
CREATE TABLE `push_errors` (
  `event_id` STRING NOT NULL COMMENT 'Stable id of this record: identical when CSS retries the same callback, so consumers can de-duplicate. 32 lowercase hex digits; see README ''Record identity''.',
  `event_type` INT NOT NULL COMMENT 'CSS event type of the callback; always 321 (push error).',
  `appid` BIGINT NOT NULL COMMENT 'Tencent Cloud App ID of the stream owner.',
  `stream_id` STRING NOT NULL COMMENT 'Stream id; also the Kafka message key.',
  `domain` STRING COMMENT 'Push domain.',
  `path` STRING COMMENT 'Push path (app name).',
  `sequence` STRING COMMENT 'CSS sequence number identifying the streaming session.',
  `user_ip` STRING COMMENT 'IP address of the pushing client.',
  `report_time` TIMESTAMP(3) NOT NULL COMMENT 'When CSS produced the callback (data_time).',
  `report_interval_ms` BIGINT COMMENT 'CSS reporting interval in milliseconds (report_interval).',
  `stream_params` MAP<STRING NOT NULL, STRING NOT NULL> NOT NULL COMMENT 'Query parameters of the push URL (stream_param), URL-decoded, with txSecret removed.',
  `error_type` INT NOT NULL COMMENT 'CSS error type (abnormal_event[].type); types unknown to this version are kept as sent.',
  `error_name` STRING NOT NULL COMMENT 'Stable snake_case name of error_type, e.g. video_frame_late; ''unknown'' for types this version does not know.',
  `type_desc_en` STRING COMMENT 'English description of the error type as sent by CSS.',
  `type_desc_cn` STRING COMMENT 'Chinese description of the error type as sent by CSS; null when blank.',
  `error_count` BIGINT NOT NULL COMMENT 'Occurrences of this error type in the reporting interval (abnormal_event[].count); can exceed the number of details.',
  `event_key` STRING COMMENT 'Extra description of the error group (abnormal_event[].event_key).',
  `detail_index` INT COMMENT 'Position of the detail in abnormal_event[].detail; null when the group had no details.',
  `detail_desc` STRING COMMENT 'Free-text description of the occurrence (detail[].desc).',
  `occur_time` TIMESTAMP(3) COMMENT 'When the occurrence happened (detail[].occur_time).',
  `interval_ms` BIGINT COMMENT 'Interval parsed from descriptions such as ''... interval=3046(msec)''; null when the description carries none.',
  `received_at` TIMESTAMP(3) NOT NULL COMMENT 'When the bridge accepted the callback.',
  -- Event time: when the error occurred, or when CSS reported it for error
  -- groups without details (a rowtime must never be null), at most 1 minute
  -- past the report and the bridge's receipt: one time from the far future
  -- would carry the watermark past every record after it. The watermark
  -- trails it by CSS's retry window (about 12 minutes) plus margin, so that
  -- a record whose first copy is a late retry is still counted.
  `event_time` AS LEAST(COALESCE(`occur_time`, `report_time`),
    `report_time` + INTERVAL '1' MINUTE, `received_at` + INTERVAL '1' MINUTE),
  WATERMARK FOR `event_time` AS `event_time` - INTERVAL '15' MINUTE
) WITH (
  'connector' = 'kafka',
  'topic' = 'css.push-errors',
  'properties.bootstrap.servers' = 'kafka:9092',
  'scan.startup.mode' = 'earliest-offset',
  'scan.watermark.idle-timeout' = '1 min',
  'key.format' = 'raw',
  'key.fields' = 'stream_id',
  'value.format' = 'avro-confluent',
  'value.avro-confluent.url' = 'http://schema-registry:8081',
  'value.fields-include' = 'ALL'
);
-- <<< generated

-- The bridge without a registry: plain Avro binary values.
-- >>> generated: css-kafka-bridge schema --format flink-sql --flink-format avro --flink-table push_errors_plain
-- Flink SQL table over the css-kafka-bridge topic, generated from the Avro schema
-- css.push_error.PushErrorRecord by
--   css-kafka-bridge schema --format flink-sql --flink-format avro --flink-table push_errors_plain
-- Regenerate it rather than editing the columns by hand.
-- Timestamps are TIMESTAMP(3) holding UTC: the type Flink's Avro formats map
-- timestamp-millis to by default.
-- avro (plain Avro binary, no registry): the messages carry no schema and Flink
-- derives the one it reads with from the physical columns below, so they must
-- match the .avsc field for field, in order, with the same types and nullability
-- (hence MAP<STRING NOT NULL, STRING NOT NULL>: nullable map values would be
-- decoded as unions). Messages of an older schema fail to decode with a newer
-- table: through an upgrade keep the older table, which reads past the optional
-- fields a compatible change appends, and regenerate it once no message of the
-- older schema is left to read (the avro.schema.fingerprint header tells which
-- schema wrote a message).
CREATE TABLE `push_errors_plain` (
  `event_id` STRING NOT NULL COMMENT 'Stable id of this record: identical when CSS retries the same callback, so consumers can de-duplicate. 32 lowercase hex digits; see README ''Record identity''.',
  `event_type` INT NOT NULL COMMENT 'CSS event type of the callback; always 321 (push error).',
  `appid` BIGINT NOT NULL COMMENT 'Tencent Cloud App ID of the stream owner.',
  `stream_id` STRING NOT NULL COMMENT 'Stream id; also the Kafka message key.',
  `domain` STRING COMMENT 'Push domain.',
  `path` STRING COMMENT 'Push path (app name).',
  `sequence` STRING COMMENT 'CSS sequence number identifying the streaming session.',
  `user_ip` STRING COMMENT 'IP address of the pushing client.',
  `report_time` TIMESTAMP(3) NOT NULL COMMENT 'When CSS produced the callback (data_time).',
  `report_interval_ms` BIGINT COMMENT 'CSS reporting interval in milliseconds (report_interval).',
  `stream_params` MAP<STRING NOT NULL, STRING NOT NULL> NOT NULL COMMENT 'Query parameters of the push URL (stream_param), URL-decoded, with txSecret removed.',
  `error_type` INT NOT NULL COMMENT 'CSS error type (abnormal_event[].type); types unknown to this version are kept as sent.',
  `error_name` STRING NOT NULL COMMENT 'Stable snake_case name of error_type, e.g. video_frame_late; ''unknown'' for types this version does not know.',
  `type_desc_en` STRING COMMENT 'English description of the error type as sent by CSS.',
  `type_desc_cn` STRING COMMENT 'Chinese description of the error type as sent by CSS; null when blank.',
  `error_count` BIGINT NOT NULL COMMENT 'Occurrences of this error type in the reporting interval (abnormal_event[].count); can exceed the number of details.',
  `event_key` STRING COMMENT 'Extra description of the error group (abnormal_event[].event_key).',
  `detail_index` INT COMMENT 'Position of the detail in abnormal_event[].detail; null when the group had no details.',
  `detail_desc` STRING COMMENT 'Free-text description of the occurrence (detail[].desc).',
  `occur_time` TIMESTAMP(3) COMMENT 'When the occurrence happened (detail[].occur_time).',
  `interval_ms` BIGINT COMMENT 'Interval parsed from descriptions such as ''... interval=3046(msec)''; null when the description carries none.',
  `received_at` TIMESTAMP(3) NOT NULL COMMENT 'When the bridge accepted the callback.',
  -- Event time: when the error occurred, or when CSS reported it for error
  -- groups without details (a rowtime must never be null), at most 1 minute
  -- past the report and the bridge's receipt: one time from the far future
  -- would carry the watermark past every record after it. The watermark
  -- trails it by CSS's retry window (about 12 minutes) plus margin, so that
  -- a record whose first copy is a late retry is still counted.
  `event_time` AS LEAST(COALESCE(`occur_time`, `report_time`),
    `report_time` + INTERVAL '1' MINUTE, `received_at` + INTERVAL '1' MINUTE),
  WATERMARK FOR `event_time` AS `event_time` - INTERVAL '15' MINUTE
) WITH (
  'connector' = 'kafka',
  'topic' = 'css.push-errors',
  'properties.bootstrap.servers' = 'kafka:9092',
  'scan.startup.mode' = 'earliest-offset',
  'scan.watermark.idle-timeout' = '1 min',
  'key.format' = 'raw',
  'key.fields' = 'stream_id',
  'value.format' = 'avro',
  'value.fields-include' = 'ALL'
);
-- <<< generated

-- The query reads this view: point it at push_errors_plain when the bridge runs
-- without a registry.
CREATE TEMPORARY VIEW push_errors_source AS SELECT * FROM push_errors;

-- Errors per stream per minute of event time.
--
-- CSS retries a callback until the bridge acknowledges it, for about 12
-- minutes, and a retry yields the same records again: same event_id and same
-- event time (unless its report_time is over a minute ahead of the bridge's
-- clock: examples/README.md), so every copy of a record falls in the same
-- window. The window deduplication (ROW_NUMBER over window_start, window_end
-- and event_id, first row kept) counts each record once; the window
-- aggregation over it emits each window once, final, when the watermark passes
-- the window's end.
--
-- Late retries: when the bridge could not acknowledge a callback (it was down,
-- or answered 503), the first copy of its records to reach the topic can be a
-- retry up to ~12 minutes after the event. The tables' watermark trails the
-- event time by 15 minutes (the retry window plus margin), so such a record is
-- still in its open window and counted, and any later copy of it is dropped
-- by the deduplication, in the window, or as late once the window has closed,
-- never counted twice. What the lateness costs: each window's counts come out
-- 15 minutes after the window ends, and the state holds the records of the
-- windows still open, about 16 minutes of them (the deduplication keeps one row
-- per event_id per window). A record more than 15 minutes late is dropped.
SELECT
  window_start,
  window_end,
  stream_id,
  COUNT(*) AS errors,
  COUNT(DISTINCT error_name) AS error_kinds
FROM (
  SELECT
    *,
    ROW_NUMBER() OVER (
      PARTITION BY window_start, window_end, event_id
      ORDER BY event_time ASC
    ) AS rownum
  FROM TABLE(
    TUMBLE(TABLE push_errors_source, DESCRIPTOR(event_time), INTERVAL '1' MINUTE)
  )
)
WHERE rownum = 1
GROUP BY window_start, window_end, stream_id;
