//! The flattened record, and flattening: one validated callback in, one
//! [`PushErrorRecord`] per error detail out.
//!
//! An error group whose `detail` list is empty still yields one record, with the
//! detail fields null, so that its `count` reaches Kafka. Everything here is a
//! pure function of the callback and the time it was received.

use std::borrow::Cow;
use std::convert::Infallible;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use sha2::{Digest, Sha256};

use crate::css::{self, AbnormalEvent, ErrorDetail, PUSH_ERROR_EVENT_TYPE, PushErrorCallback};

/// One occurrence of a push error, as published to Kafka.
///
/// The field order and types follow `schemas/push_error_record.avsc`, which is the
/// contract; `avro::tests` checks that the two agree byte for byte.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PushErrorRecord<'a> {
    pub event_id: EventId,
    pub event_type: i32,
    pub appid: i64,
    pub stream_id: &'a str,
    pub domain: Option<&'a str>,
    pub path: Option<&'a str>,
    pub sequence: Option<&'a str>,
    pub user_ip: Option<&'a str>,
    pub report_time: i64,
    pub report_interval_ms: Option<i64>,
    #[serde(serialize_with = "serialize_pairs_as_map")]
    pub stream_params: StreamParams<'a>,
    pub error_type: i32,
    pub error_name: &'static str,
    pub type_desc_en: Option<&'a str>,
    pub type_desc_cn: Option<&'a str>,
    pub error_count: i64,
    pub event_key: Option<&'a str>,
    pub detail_index: Option<i32>,
    pub detail_desc: Option<&'a str>,
    pub occur_time: Option<i64>,
    pub interval_ms: Option<i64>,
    pub received_at: i64,
}

/// The push URL's query parameters (see [`PushErrorCallback::stream_params`]),
/// shared by all records of one callback.
pub type StreamParams<'a> = &'a [(Cow<'a, str>, Cow<'a, str>)];

/// Flattens a validated callback into its records, in document order.
pub fn flatten<'a>(
    callback: &'a PushErrorCallback<'a>,
    received_at_ms: i64,
) -> Vec<PushErrorRecord<'a>> {
    let mut records = Vec::with_capacity(record_count(callback));
    let all: Result<(), Infallible> = for_each_record(callback, received_at_ms, |record| {
        records.push(record);
        Ok(())
    });
    let Ok(()) = all;
    records
}

/// Hands [`flatten`]'s records to `each` one at a time, in document order,
/// until `each` fails: for a caller that need not hold them all. Each record
/// repeats its callback's texts, so together they can be far larger than the
/// body.
pub fn for_each_record<'a, E>(
    callback: &'a PushErrorCallback<'a>,
    received_at_ms: i64,
    mut each: impl FnMut(PushErrorRecord<'a>) -> Result<(), E>,
) -> Result<(), E> {
    for (group_index, group) in callback.abnormal_events.iter().enumerate() {
        let record = |detail: Option<(usize, &'a ErrorDetail<'a>)>| PushErrorRecord {
            event_id: event_id(callback, group_index, detail.map(|(i, _)| i)),
            event_type: PUSH_ERROR_EVENT_TYPE as i32,
            appid: callback.appid,
            stream_id: &callback.stream_id,
            domain: callback.domain.as_deref(),
            path: callback.path.as_deref(),
            sequence: callback.sequence.as_deref(),
            user_ip: callback.user_ip.as_deref(),
            report_time: callback.report_time_ms,
            report_interval_ms: callback.report_interval_ms,
            stream_params: &callback.stream_params,
            error_type: group.error_type,
            error_name: css::error_name(group.error_type),
            type_desc_en: non_blank(&group.type_desc_en),
            type_desc_cn: non_blank(&group.type_desc_cn),
            error_count: group.count,
            event_key: non_blank(&group.event_key),
            detail_index: detail.map(|(i, _)| i as i32),
            detail_desc: detail.and_then(|(_, d)| d.desc.as_deref()),
            occur_time: detail.map(|(_, d)| d.occur_time_ms),
            interval_ms: detail.and_then(|(_, d)| d.desc.as_deref().and_then(interval_ms)),
            received_at: received_at_ms,
        };
        if group.details.is_empty() {
            each(record(None))?;
        }
        for detail in group.details.iter().enumerate() {
            each(record(Some(detail)))?;
        }
    }
    Ok(())
}

/// How many records [`flatten`] makes of `callback`.
pub fn record_count(callback: &PushErrorCallback<'_>) -> usize {
    callback
        .abnormal_events
        .iter()
        .map(group_record_count)
        .sum()
}

/// How many records [`flatten`] makes of one error group: one per detail, and
/// one for a group without details, so that its count is not lost.
pub fn group_record_count(group: &AbnormalEvent<'_>) -> usize {
    group.details.len().max(1)
}

/// The bytes of text `callback`'s records hold in all (every string but the
/// event id, and the map's keys and values): each record repeats its
/// callback's texts and its group's. Counted without making a record, so that
/// the records' size can be bounded before they exist (see
/// `avro::max_encoded_len`).
pub fn text_len(callback: &PushErrorCallback<'_>) -> usize {
    let len = |text: &Option<Cow<'_, str>>| text.as_deref().map_or(0, str::len);
    let callback_texts = callback.stream_id.len()
        + [
            &callback.domain,
            &callback.path,
            &callback.sequence,
            &callback.user_ip,
        ]
        .into_iter()
        .map(len)
        .sum::<usize>()
        + (callback.stream_params.iter())
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    callback
        .abnormal_events
        .iter()
        .map(|group| {
            let repeated = callback_texts
                + css::error_name(group.error_type).len()
                + [&group.type_desc_en, &group.type_desc_cn, &group.event_key]
                    .into_iter()
                    .map(len)
                    .sum::<usize>();
            let descs: usize = group.details.iter().map(|d| len(&d.desc)).sum();
            group_record_count(group) * repeated + descs
        })
        .sum()
}

/// The record's stable id: the first 16 bytes, in lowercase hex, of the SHA-256 of
///
/// ```text
/// appid \0 stream_id \0 sequence \0 data_time \0 group_index \0 detail_index
/// ```
///
/// with numbers in decimal, an absent `sequence` as the empty string and an
/// absent `detail_index` (group without details) as `-`. These are exactly the
/// fields that identify an occurrence and that CSS repeats verbatim when it retries
/// a callback (`t` and `sign` may change between attempts, so they are left out).
/// The validation refuses a NUL in `stream_id` and `sequence`, so that the
/// joined text is one occurrence's only.
pub fn event_id(
    callback: &PushErrorCallback<'_>,
    group_index: usize,
    detail_index: Option<usize>,
) -> EventId {
    let mut sha = Sha256::new();
    let mut number = itoa::Buffer::new();
    sha.update(number.format(callback.appid));
    sha.update([0]);
    sha.update(callback.stream_id.as_bytes());
    sha.update([0]);
    sha.update(callback.sequence.as_deref().unwrap_or_default());
    sha.update([0]);
    sha.update(number.format(callback.report_time_ms));
    sha.update([0]);
    sha.update(number.format(group_index));
    sha.update([0]);
    match detail_index {
        Some(i) => sha.update(number.format(i)),
        None => sha.update("-"),
    }
    let digest = sha.finalize();
    EventId::from_digest(digest[..16].try_into().expect("SHA-256 has 32 bytes"))
}

/// A record's [`event_id`]: 32 lowercase hex digits, held inline rather than
/// in a `String`, since a record is made per error detail and the id would
/// be an allocation of its own for each.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId([u8; 32]);

impl EventId {
    /// The id of 16 bytes of a digest, in lowercase hex.
    pub fn from_digest(digest: &[u8; 16]) -> Self {
        let mut digits = [0; 32];
        hex::encode_to_slice(digest, &mut digits).expect("16 bytes are 32 hex digits");
        Self(digits)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The number in `interval=NNN(msec)` inside a detail description, such as
/// `video frame arrive interval too long, interval=3046(msec)`: the first
/// `interval=` that is a word of its own (not the end of `report_interval=`),
/// its number signed or not, in milliseconds when it says `(msec)` or `(ms)`
/// or no unit. A number in another unit is not one in milliseconds: `None`
/// rather than a value a thousand times off.
pub fn interval_ms(desc: &str) -> Option<i64> {
    const KEY: &str = "interval=";
    let at = desc.match_indices(KEY).map(|(at, _)| at).find(|&at| {
        desc[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    })?;
    let after = &desc[at + KEY.len()..];
    let sign = usize::from(after.starts_with('-'));
    let digits = after[sign..].bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = after.split_at(sign + digits);
    // Milliseconds by name, or by the number ending where a word would.
    let in_ms = unit.starts_with("(msec)")
        || unit.starts_with("(ms)")
        || unit
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || matches!(c, '.' | '(' | '_')));
    if digits == 0 || !in_ms {
        return None;
    }
    number.parse().ok()
}

/// Blank text (CSS sends `" "` for an empty Chinese description) becomes null.
fn non_blank<'a>(text: &'a Option<Cow<'a, str>>) -> Option<&'a str> {
    text.as_deref().filter(|t| !t.trim().is_empty())
}

fn serialize_pairs_as_map<S: Serializer>(
    pairs: &StreamParams<'_>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(pairs.len()))?;
    for (name, value) in pairs.iter() {
        map.serialize_entry(name, value)?;
    }
    map.end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::css::{decode, validate::validate};

    const SEED: &str = include_str!("../tests/fixtures/seed-sample.json");
    const RECEIVED_AT: i64 = 1_670_588_075_000;

    fn callback(json: &str) -> PushErrorCallback<'_> {
        validate(decode(json.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn one_record_per_detail_in_document_order() {
        let cb = callback(SEED);
        let records = flatten(&cb, RECEIVED_AT);
        assert_eq!(records.len(), 4);
        assert_eq!(record_count(&cb), 4);
        let summary: Vec<_> = records
            .iter()
            .map(|r| {
                (
                    r.error_type,
                    r.error_name,
                    r.detail_index,
                    r.occur_time,
                    r.interval_ms,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    6,
                    "video_frame_late",
                    Some(0),
                    Some(1_670_588_070_569),
                    Some(3046)
                ),
                (
                    6,
                    "video_frame_late",
                    Some(1),
                    Some(1_670_588_073_522),
                    Some(2953)
                ),
                (
                    7,
                    "audio_frame_late",
                    Some(0),
                    Some(1_670_588_070_532),
                    Some(3009)
                ),
                (
                    7,
                    "audio_frame_late",
                    Some(1),
                    Some(1_670_588_073_486),
                    Some(2917)
                ),
            ]
        );
    }

    #[test]
    fn every_record_carries_the_envelope_and_its_group() {
        let cb = callback(SEED);
        let record = &flatten(&cb, RECEIVED_AT)[1];
        assert_eq!(record.event_type, 321);
        assert_eq!(record.appid, 0);
        assert_eq!(record.stream_id, "xxxxxx");
        assert_eq!(record.domain, Some("xxxx.xxxxx.xxxx.xxxx"));
        assert_eq!(record.path, Some("xxxx"));
        assert_eq!(record.sequence, Some("000000000000000000"));
        assert_eq!(record.user_ip, None);
        assert_eq!(record.report_time, 1_670_588_074_971);
        assert_eq!(record.report_interval_ms, Some(5000));
        assert_eq!(record.error_count, 2);
        assert_eq!(
            record.type_desc_en,
            Some("video frame arrive interval bigger than 1000(ms)")
        );
        assert_eq!(record.type_desc_cn, None, "blank description becomes null");
        assert_eq!(record.event_key, None);
        assert_eq!(
            record.detail_desc,
            Some("video frame arrive interval too long, interval=2953(msec)")
        );
        assert_eq!(record.received_at, RECEIVED_AT);
    }

    #[test]
    fn empty_detail_list_still_yields_one_record() {
        let json = r#"{"appid":1,"stream_id":"s","data_time":5,"abnormal_event":[
            {"type":8,"count":3,"detail":[],"event_key":"codec h264 -> h265"}]}"#;
        let cb = callback(json);
        let records = flatten(&cb, RECEIVED_AT);
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(
            (record.error_type, record.error_name, record.error_count),
            (8, "video_codec_changed", 3)
        );
        assert_eq!(record.event_key, Some("codec h264 -> h265"));
        assert_eq!(
            (
                record.detail_index,
                record.detail_desc,
                record.occur_time,
                record.interval_ms
            ),
            (None, None, None, None)
        );
    }

    #[test]
    fn unknown_error_types_are_kept() {
        let json =
            r#"{"appid":1,"stream_id":"s","data_time":5,"abnormal_event":[{"type":42,"count":1}]}"#;
        let cb = callback(json);
        let record = &flatten(&cb, RECEIVED_AT)[0];
        assert_eq!((record.error_type, record.error_name), (42, "unknown"));
    }

    #[test]
    fn stream_params_drop_tx_secret() {
        let cb = callback(SEED);
        let record = &flatten(&cb, RECEIVED_AT)[0];
        assert_eq!(record.stream_params, [("txTime".into(), "665982e4".into())]);
    }

    #[test]
    fn event_id_is_stable_and_distinct_per_detail() {
        let cb = callback(SEED);
        let first: Vec<_> = flatten(&cb, RECEIVED_AT)
            .into_iter()
            .map(|r| r.event_id)
            .collect();
        // A retry of the same callback, received later, with a new signature.
        let retry_json = SEED.replacen('{', r#"{"t":1900000000,"sign":"abc","#, 1);
        let retry = callback(&retry_json);
        let again: Vec<_> = flatten(&retry, RECEIVED_AT + 60_000)
            .into_iter()
            .map(|r| r.event_id)
            .collect();
        assert_eq!(first, again);
        let mut distinct = first.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 4);
        // The documented derivation, spelled out.
        let mut sha = Sha256::new();
        sha.update(
            [
                "0",
                "xxxxxx",
                "000000000000000000",
                "1670588074971",
                "0",
                "1",
            ]
            .join("\0"),
        );
        assert_eq!(first[1].as_str(), hex::encode(&sha.finalize()[..16]));
    }

    #[test]
    fn interval_is_parsed_from_descriptions() {
        assert_eq!(
            interval_ms("video frame arrive interval too long, interval=3046(msec)"),
            Some(3046)
        );
        assert_eq!(interval_ms("interval=12"), Some(12));
        assert_eq!(interval_ms("interval=12(ms), more"), Some(12));
        assert_eq!(interval_ms("interval=(msec)"), None);
        assert_eq!(interval_ms("interval=-(msec)"), None);
        // A timestamp that went back: the interval is negative.
        assert_eq!(
            interval_ms("timestamp rollback, interval=-40(msec)"),
            Some(-40)
        );
        // Not the end of another word.
        assert_eq!(
            interval_ms("report_interval=5000, interval=3046(msec)"),
            Some(3046)
        );
        assert_eq!(interval_ms("report_interval=5000"), None);
        // Not milliseconds: no value rather than one a thousand times off.
        assert_eq!(interval_ms("interval=3(s)"), None);
        assert_eq!(interval_ms("interval=3s"), None);
        assert_eq!(interval_ms("interval=1.5(s)"), None);
        assert_eq!(interval_ms("video codec changed"), None);
        assert_eq!(interval_ms("interval=99999999999999999999999(msec)"), None);
    }
}
