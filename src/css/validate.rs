//! Validation: from the wire model ([`super::wire`]) to a push error callback
//! ([`super::callback`]) that cannot be invalid.
//!
//! The rules (each has a unit test below):
//! - required: `appid`, `stream_id` (non-empty), `data_time`, `abnormal_event`;
//!   in each group `type` (a 32-bit integer) and `count` (>= 0); in each detail
//!   `occur_time`; the times are Unix milliseconds from 1970 to the end of the
//!   year 9999 ([`MAX_TIME_MS`]);
//! - optional: everything else, including `detail` (an absent list is an empty one);
//! - limits on the number of groups and details (applied while the body is
//!   read, in [`super::wire`]), and on the length of every text field, bound
//!   the work and the record size one request can cause.
//!
//! A [`Rejection`] names the JSON path of the first problem found.

use std::borrow::Cow;

use super::callback::{AbnormalEvent, ErrorDetail, PushErrorCallback};
use super::redact::{body_holds_tx_secret, redact_tx_secret_text};
use super::rejection::Rejection;
use super::wire::{AbnormalEventWire, CallbackWire, Int};

/// The limits on lists, applied while the body is read (see `wire`).
pub use super::wire::{MAX_ABNORMAL_EVENTS, MAX_DETAILS_PER_EVENT};

/// Longest accepted text field, in bytes. CSS's texts are short descriptions and
/// identifiers; the limit keeps one callback from filling a record with junk.
pub const MAX_TEXT_BYTES: usize = 4096;

/// Latest accepted time, in Unix milliseconds: 9999-12-31T23:59:59.999Z. The
/// times become Avro `timestamp-millis`, and readers fail on later ones:
/// Spark converts them to microseconds and overflows a long, Python's
/// `datetime` ends at the year 9999. A record one of them cannot read would
/// stop its job at that offset.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// Query parameter of `stream_param` that carries the push auth token.
const SECRET_STREAM_PARAM: &str = "txSecret";

/// Validates a decoded push error callback. See the module docs for the rules.
/// Every published text is searched for a `txSecret=` to redact (see
/// [`validate_body`]).
///
/// JSON paths for error messages are only built once an error is found: the
/// happy path allocates nothing here.
pub fn validate(wire: CallbackWire<'_>) -> Result<PushErrorCallback<'_>, Rejection> {
    validate_texts(wire, Published::SearchEvery)
}

/// [`validate`] of a callback decoded from `body`. A text borrowed from the
/// body (one without JSON escapes) can hold a `txSecret=` only if the body
/// does: one search of the body spares searching each of them (the texts with
/// escapes, copies, are searched one by one). CSS's callbacks carry one in
/// `stream_param`, which [`parse_stream_params`] drops, so the body is
/// searched around that value.
pub fn validate_body<'a>(
    wire: CallbackWire<'a>,
    body: &[u8],
) -> Result<PushErrorCallback<'a>, Rejection> {
    let stream_param = wire
        .stream_param
        .as_deref()
        .and_then(|param| span_in(body, param));
    let (before, after) = match stream_param {
        Some(span) => (&body[..span.start], &body[span.end..]),
        None => (body, &[][..]),
    };
    let published = if body_holds_tx_secret(before) || body_holds_tx_secret(after) {
        Published::SearchEvery
    } else {
        Published::SearchUnescaped
    };
    validate_texts(wire, published)
}

/// Where `text` lies in `body`, when it is borrowed from it.
fn span_in(body: &[u8], text: &str) -> Option<std::ops::Range<usize>> {
    let start = (text.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(text.len())?;
    (end <= body.len()).then_some(start..end)
}

/// Which published texts are searched for a `txSecret=` to redact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Published {
    SearchEvery,
    /// Only those that JSON escapes made copies of.
    SearchUnescaped,
}

impl Published {
    /// `text` as published: with the token of any `txSecret=` in it redacted.
    fn text<'a>(self, text: Option<Cow<'a, str>>) -> Option<Cow<'a, str>> {
        match text {
            Some(Cow::Borrowed(text)) if self == Self::SearchUnescaped => Some(Cow::Borrowed(text)),
            text => text.map(without_tx_secret),
        }
    }
}

fn validate_texts(
    wire: CallbackWire<'_>,
    published: Published,
) -> Result<PushErrorCallback<'_>, Rejection> {
    let appid = required(wire.appid, || "appid".into())?;
    let stream_id = wire
        .stream_id
        .ok_or_else(|| Rejection::missing("stream_id"))?;
    if stream_id.is_empty() {
        return Err(Rejection::at("stream_id", "must not be empty"));
    }
    let report_time_ms = time(required(wire.data_time, || "data_time".into())?, || {
        "data_time".into()
    })?;
    let report_interval_ms = wire
        .report_interval
        .map(|Int(v)| non_negative(v, || "report_interval".into()))
        .transpose()?;
    for (field, text) in [
        ("stream_id", Some(&stream_id)),
        ("domain", wire.domain.as_ref()),
        ("path", wire.path.as_ref()),
        ("sequence", wire.sequence.as_ref()),
        ("user_ip", wire.user_ip.as_ref()),
        ("stream_param", wire.stream_param.as_ref()),
    ] {
        bounded(text, || field.into())?;
    }
    // The event id joins them with NUL bytes (`record::event_id`): a NUL of
    // their own could give two occurrences one id, and de-duplication would
    // drop one of them.
    for (field, text) in [
        ("stream_id", Some(&stream_id)),
        ("sequence", wire.sequence.as_ref()),
    ] {
        if text.is_some_and(|text| text.contains('\0')) {
            return Err(Rejection::at(field, "must not contain a NUL character"));
        }
    }
    let groups = wire
        .abnormal_event
        .ok_or_else(|| Rejection::missing("abnormal_event"))?;
    let abnormal_events = groups
        .into_iter()
        .enumerate()
        .map(|(i, group)| validate_group(group, i, published))
        .collect::<Result<_, _>>()?;
    Ok(PushErrorCallback {
        appid,
        stream_id,
        report_time_ms,
        report_interval_ms,
        domain: published.text(wire.domain),
        path: published.text(wire.path),
        sequence: wire.sequence,
        user_ip: published.text(wire.user_ip),
        stream_params: parse_stream_params(wire.stream_param),
        abnormal_events,
    })
}

fn validate_group(
    group: AbnormalEventWire<'_>,
    i: usize,
    published: Published,
) -> Result<AbnormalEvent<'_>, Rejection> {
    let at = |field: &str| format!("abnormal_event[{i}].{field}");
    let error_type = required(group.error_type, || at("type"))?;
    let error_type = i32::try_from(error_type)
        .map_err(|_| Rejection::at(at("type"), "out of range for a 32-bit integer"))?;
    let count = non_negative(required(group.count, || at("count"))?, || at("count"))?;
    bounded(group.type_desc_en.as_ref(), || at("type_desc_en"))?;
    bounded(group.type_desc_cn.as_ref(), || at("type_desc_cn"))?;
    bounded(group.event_key.as_ref(), || at("event_key"))?;
    let details = group
        .detail
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(j, detail)| {
            let at = |field: &str| format!("abnormal_event[{i}].detail[{j}].{field}");
            let occur_time = required(detail.occur_time, || at("occur_time"))?;
            bounded(detail.desc.as_ref(), || at("desc"))?;
            Ok(ErrorDetail {
                desc: published.text(detail.desc),
                occur_time_ms: time(occur_time, || at("occur_time"))?,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(AbnormalEvent {
        error_type,
        count,
        type_desc_en: published.text(group.type_desc_en),
        type_desc_cn: published.text(group.type_desc_cn),
        event_key: published.text(group.event_key),
        details,
    })
}

/// Whether a `stream_param` parameter, by its URL-decoded name, is the push
/// auth token that must never be published or logged: in any letter case,
/// behind any `?` (`??txSecret=`, `a=1&?txSecret=`), also one that ends a
/// name (`x?txSecret=`, a URL's query pasted whole into the parameters).
pub(crate) fn is_secret_stream_param(name: &str) -> bool {
    name.rsplit('?')
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case(SECRET_STREAM_PARAM))
}

/// Parses the push URL's query string, dropping `txSecret` (in any letter case),
/// so that the token goes no further than this function; a name or value that
/// holds a `txSecret=` of its own once decoded (a URL in a parameter, or
/// `txSecret%3D…`, which decodes to a name) has it redacted. A name given
/// more than once keeps its last value (see [`last_of_each_name`]).
pub fn parse_stream_params(query: Option<Cow<'_, str>>) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    last_of_each_name(decode_stream_params(query))
}

/// A parameter given more than once (`from=obs&from=app`) keeps only its last
/// value, where it last came: the record's `stream_params` is an Avro map,
/// and readers disagree on a name written twice (a Java or Python reader
/// keeps the last value, Spark's map lookup finds the first). Most query
/// strings have none twice, and are returned as they are.
fn last_of_each_name<'a>(
    params: Vec<(Cow<'a, str>, Cow<'a, str>)>,
) -> Vec<(Cow<'a, str>, Cow<'a, str>)> {
    use std::collections::HashSet;
    // Without allocating for the few parameters a push URL has.
    let twice = if params.len() <= 8 {
        (1..params.len()).any(|i| params[..i].iter().any(|(name, _)| *name == params[i].0))
    } else {
        let mut names = HashSet::with_capacity(params.len());
        !params.iter().all(|(name, _)| names.insert(name.as_ref()))
    };
    if !twice {
        return params;
    }
    let mut names = HashSet::with_capacity(params.len());
    let mut last: Vec<_> = (params.iter().rev())
        .filter(|(name, _)| names.insert(name.as_ref()))
        .cloned()
        .collect();
    last.reverse();
    last
}

fn decode_stream_params(query: Option<Cow<'_, str>>) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    let strip = |q: &str| q.trim_start_matches('?').to_owned();
    let keep = |(name, _): &(Cow<'_, str>, Cow<'_, str>)| !is_secret_stream_param(name);
    match query {
        None => Vec::new(),
        Some(Cow::Borrowed(query)) => {
            let query = query.trim_start_matches('?');
            form_urlencoded::parse(query.as_bytes())
                .filter(keep)
                .map(|(name, value)| (without_tx_secret(name), without_tx_secret(value)))
                .collect()
        }
        Some(Cow::Owned(query)) => form_urlencoded::parse(strip(&query).as_bytes())
            .filter(keep)
            .map(|(name, value)| {
                let name = without_tx_secret(name).into_owned();
                let value = without_tx_secret(value).into_owned();
                (Cow::Owned(name), Cow::Owned(value))
            })
            .collect(),
    }
}

/// `value` (a parameter's name or value, or a text that is published) with the
/// token of any `txSecret=` (or `txSecret%3D`) inside it redacted: a push URL
/// quoted in a description must not publish its token. `stream_id` and
/// `sequence` are kept as sent: they make the records' `event_id`.
fn without_tx_secret(value: Cow<'_, str>) -> Cow<'_, str> {
    match redact_tx_secret_text(&value) {
        Cow::Borrowed(_) => value,
        Cow::Owned(redacted) => Cow::Owned(redacted),
    }
}

fn required(value: Option<Int>, field: impl FnOnce() -> String) -> Result<i64, Rejection> {
    value
        .map(|Int(v)| v)
        .ok_or_else(|| Rejection::missing(field()))
}

fn non_negative(value: i64, field: impl FnOnce() -> String) -> Result<i64, Rejection> {
    if value < 0 {
        Err(Rejection::at(
            field(),
            format!("must not be negative, got {value}"),
        ))
    } else {
        Ok(value)
    }
}

/// A time in Unix milliseconds that every reader of the topic can read: from
/// 1970 to the end of the year 9999.
fn time(value: i64, field: impl FnOnce() -> String) -> Result<i64, Rejection> {
    if value > MAX_TIME_MS {
        return Err(Rejection::at(
            field(),
            format!(
                "must be Unix milliseconds no later than {MAX_TIME_MS} (the end of the year 9999), got {value}"
            ),
        ));
    }
    non_negative(value, field)
}

fn bounded(text: Option<&Cow<'_, str>>, field: impl FnOnce() -> String) -> Result<(), Rejection> {
    match text {
        Some(text) if text.len() > MAX_TEXT_BYTES => Err(Rejection::at(
            field(),
            format!("longer than {MAX_TEXT_BYTES} bytes"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::rejection::MAX_REJECTION_TEXT_BYTES;
    use super::super::wire::decode;
    use super::*;

    const SEED: &str = include_str!("../../tests/fixtures/seed-sample.json");

    fn validate_json(json: &str) -> Result<PushErrorCallback<'_>, Rejection> {
        validate(decode(json.as_bytes())?)
    }

    /// The seed sample with one JSON pointer replaced (or removed, with `None`).
    fn seed_with(pointer: &str, value: Option<serde_json::Value>) -> String {
        seed_with_in(SEED, pointer, value)
    }

    /// `json` with one JSON pointer replaced (or removed, with `None`).
    fn seed_with_in(json: &str, pointer: &str, value: Option<serde_json::Value>) -> String {
        let mut doc: serde_json::Value = serde_json::from_str(json).unwrap();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let parent = doc.pointer_mut(parent).unwrap();
        match (parent, value) {
            (serde_json::Value::Object(map), Some(v)) => drop(map.insert(key.into(), v)),
            (serde_json::Value::Object(map), None) => drop(map.remove(key)),
            (serde_json::Value::Array(items), Some(v)) => items[key.parse::<usize>().unwrap()] = v,
            _ => unreachable!(),
        }
        doc.to_string()
    }

    fn rejection(json: &str) -> String {
        validate_json(json).unwrap_err().to_string()
    }

    #[test]
    fn the_seed_sample_is_valid() {
        let callback = validate_json(SEED).unwrap();
        assert_eq!(callback.appid, 0);
        assert_eq!(callback.stream_id, "xxxxxx");
        assert_eq!(callback.report_time_ms, 1_670_588_074_971);
        assert_eq!(callback.report_interval_ms, Some(5000));
        assert_eq!(callback.abnormal_events.len(), 2);
        assert_eq!(callback.abnormal_events[1].error_type, 7);
        assert_eq!(
            callback.abnormal_events[1].details[1].occur_time_ms,
            1_670_588_073_486
        );
        assert_eq!(callback.user_ip, None);
    }

    #[test]
    fn appid_is_64_bit() {
        let json = seed_with("/appid", Some(5_000_000_000_i64.into()));
        assert_eq!(validate_json(&json).unwrap().appid, 5_000_000_000);
    }

    #[test]
    fn each_required_field_is_named_when_missing() {
        for (pointer, path) in [
            ("/appid", "appid"),
            ("/stream_id", "stream_id"),
            ("/data_time", "data_time"),
            ("/abnormal_event", "abnormal_event"),
            ("/abnormal_event/1/type", "abnormal_event[1].type"),
            ("/abnormal_event/0/count", "abnormal_event[0].count"),
            (
                "/abnormal_event/1/detail/0/occur_time",
                "abnormal_event[1].detail[0].occur_time",
            ),
        ] {
            assert_eq!(
                rejection(&seed_with(pointer, None)),
                format!("{path}: missing required field")
            );
            assert_eq!(
                rejection(&seed_with(pointer, Some(serde_json::Value::Null))),
                format!("{path}: missing required field"),
                "null counts as missing"
            );
        }
    }

    #[test]
    fn optional_fields_may_be_absent() {
        for pointer in [
            "/domain",
            "/path",
            "/sequence",
            "/stream_param",
            "/report_interval",
            "/abnormal_event/0/detail",
            "/abnormal_event/0/type_desc_en",
            "/abnormal_event/0/detail/1/desc",
        ] {
            assert!(
                validate_json(&seed_with(pointer, None)).is_ok(),
                "{pointer}"
            );
        }
    }

    #[test]
    fn empty_stream_id_is_refused() {
        assert_eq!(
            rejection(&seed_with("/stream_id", Some("".into()))),
            "stream_id: must not be empty"
        );
    }

    /// With NULs allowed, stream `s\01` of sequence `x` and stream `s` of
    /// sequence `1\0x` would share their records' event ids.
    #[test]
    fn a_nul_in_the_fields_of_the_event_id_is_refused() {
        assert_eq!(
            rejection(&seed_with("/stream_id", Some("s\u{0}1".into()))),
            "stream_id: must not contain a NUL character"
        );
        assert_eq!(
            rejection(&seed_with("/sequence", Some("1\u{0}x".into()))),
            "sequence: must not contain a NUL character"
        );
    }

    #[test]
    fn times_after_the_year_9999_are_refused() {
        let end_of_9999 = seed_with("/data_time", Some(MAX_TIME_MS.into()));
        assert_eq!(
            validate_json(&end_of_9999).unwrap().report_time_ms,
            MAX_TIME_MS
        );
        assert_eq!(
            rejection(&seed_with("/data_time", Some((MAX_TIME_MS + 1).into()))),
            "data_time: must be Unix milliseconds no later than 253402300799999 \
             (the end of the year 9999), got 253402300800000"
        );
        assert!(
            rejection(&seed_with(
                "/abnormal_event/0/detail/1/occur_time",
                Some(10_000_000_000_000_000_i64.into())
            ))
            .starts_with("abnormal_event[0].detail[1].occur_time: must be Unix milliseconds")
        );
    }

    #[test]
    fn negative_counts_and_times_are_refused() {
        assert_eq!(
            rejection(&seed_with("/abnormal_event/0/count", Some((-1).into()))),
            "abnormal_event[0].count: must not be negative, got -1"
        );
        assert!(rejection(&seed_with("/data_time", Some((-1).into()))).starts_with("data_time:"));
        assert!(
            rejection(&seed_with(
                "/abnormal_event/0/detail/1/occur_time",
                Some((-5).into())
            ))
            .starts_with("abnormal_event[0].detail[1].occur_time:")
        );
    }

    #[test]
    fn error_type_must_fit_32_bits() {
        assert_eq!(
            rejection(&seed_with(
                "/abnormal_event/0/type",
                Some(4_294_967_296_i64.into())
            )),
            "abnormal_event[0].type: out of range for a 32-bit integer"
        );
    }

    #[test]
    fn wrong_types_are_named_with_their_path() {
        let json = seed_with(
            "/abnormal_event/1/detail/0/occur_time",
            Some("later".into()),
        );
        assert_eq!(
            rejection(&json),
            "abnormal_event[1].detail[0].occur_time: invalid value: string \"later\", expected an integer"
        );
        let json = seed_with("/stream_id", Some(42.into()));
        assert!(rejection(&json).starts_with("stream_id: invalid type: integer `42`"));
    }

    #[test]
    fn malformed_json_is_described_with_its_position() {
        let message = rejection("{\"event_type\": 321,");
        assert!(
            message.starts_with("body is truncated or empty"),
            "{message}"
        );
        let message = rejection("{\"event_type\" 321}");
        assert!(message.starts_with("body is not valid JSON"), "{message}");
        assert!(message.contains("line 1, column"), "{message}");
        let message = rejection("[]");
        assert!(message.starts_with("(body): "), "{message}");
    }

    #[test]
    fn too_many_groups_or_details_are_refused() {
        let group = r#"{"type":6,"count":1,"detail":[]}"#;
        let groups = vec![group; MAX_ABNORMAL_EVENTS + 1].join(",");
        let json =
            format!(r#"{{"appid":1,"stream_id":"s","data_time":1,"abnormal_event":[{groups}]}}"#);
        assert_eq!(
            rejection(&json),
            format!("abnormal_event: more than {MAX_ABNORMAL_EVENTS} entries")
        );

        let detail = r#"{"occur_time":1}"#;
        let details = vec![detail; MAX_DETAILS_PER_EVENT + 1].join(",");
        let json = format!(
            r#"{{"appid":1,"stream_id":"s","data_time":1,"abnormal_event":[{{"type":6,"count":1,"detail":[{details}]}}]}}"#
        );
        assert!(rejection(&json).starts_with("abnormal_event[0].detail: more than"));
    }

    #[test]
    fn a_tx_secret_quoted_in_a_published_text_is_redacted() {
        let url = "rtmp://push.example.com/live/s?txSecret=0123abcd&txTime=665982e4";
        let json = seed_with(
            "/abnormal_event/0/detail/0/desc",
            Some(format!("pushed to {url}, interval=3046(msec)").into()),
        );
        let json = seed_with_in(&json, "/abnormal_event/1/event_key", Some(url.into()));
        let json = seed_with_in(&json, "/domain", Some("d?TXSECRET%3D0123abcd".into()));
        let callback = validate_json(&json).unwrap();
        let redacted = "rtmp://push.example.com/live/s?txSecret=redacted&txTime=665982e4";
        assert_eq!(
            callback.abnormal_events[0].details[0].desc.as_deref(),
            Some(format!("pushed to {redacted}, interval=3046(msec)").as_str())
        );
        assert_eq!(
            callback.abnormal_events[1].event_key.as_deref(),
            Some(redacted)
        );
        assert_eq!(callback.domain.as_deref(), Some("d?TXSECRET%3Dredacted"));
        let from_body = validate_body(decode(json.as_bytes()).unwrap(), json.as_bytes()).unwrap();
        assert_eq!(
            from_body.abnormal_events[1].event_key.as_deref(),
            Some(redacted)
        );

        // Behind a JSON escape the body holds no `txSecret=` as it is: the
        // text, a copy, is searched on its own.
        let escaped = seed_with("/domain", Some("d?txSecret=0123abcd".into()))
            .replace("txSecret=", "txSecret\\u003d");
        assert!(escaped.contains(r"txSecret\u003d0123abcd"), "{escaped}");
        let from_body =
            validate_body(decode(escaped.as_bytes()).unwrap(), escaped.as_bytes()).unwrap();
        assert_eq!(from_body.domain.as_deref(), Some("d?txSecret=redacted"));
    }

    #[test]
    fn stream_params_are_decoded_without_tx_secret() {
        let params = |q: &'static str| parse_stream_params(Some(Cow::Borrowed(q)));
        assert_eq!(
            params("?a=1&TXSECRET=x&b=hello%20world&c"),
            [
                ("a".into(), "1".into()),
                ("b".into(), "hello world".into()),
                ("c".into(), "".into())
            ]
        );
        assert_eq!(
            parse_stream_params(Some(Cow::Owned("txSecret=x&k=v".into()))),
            [("k".into(), "v".into())]
        );
        assert_eq!(
            params("rtmp://push/live/s?txSecret=x&k=v"),
            [("k".into(), "v".into())],
            "behind a URL pasted whole: its name ends in ?txSecret"
        );
        assert_eq!(
            params("u=http%3A%2F%2Fa%2Fb%3FTxSecret%3Dx%26t%3D1&k=v"),
            [
                ("u".into(), "http://a/b?TxSecret=redacted&t=1".into()),
                ("k".into(), "v".into())
            ],
            "a txSecret inside a value, once decoded"
        );
        assert_eq!(
            params("u=http%3A%2F%2Fa%2Fb%253FtxSecret%253Dx%2526t%253D1"),
            [(
                "u".into(),
                "http://a/b%3FtxSecret%3Dredacted%26t%3D1".into()
            )],
            "a txSecret still percent-encoded once decoded"
        );
        assert_eq!(
            params("txSecret%3Df5828cd4&txTime=665982e4"),
            [
                ("txSecret=redacted".into(), "".into()),
                ("txTime".into(), "665982e4".into())
            ],
            "an encoded = makes the token part of the name"
        );
        for behind_question_marks in ["??txSecret=x&k=v", "k=v&?TxSecret=x", "k=v&??txsecret=x"] {
            assert_eq!(
                params(behind_question_marks),
                [("k".into(), "v".into())],
                "{behind_question_marks}"
            );
        }
        assert!(parse_stream_params(None).is_empty());
        assert_eq!(
            params("from=obs&k=v&from=app"),
            [("k".into(), "v".into()), ("from".into(), "app".into())],
            "a name given twice keeps its last value"
        );
        let many = (0..10)
            .map(|i| format!("p{i}={i}"))
            .collect::<Vec<_>>()
            .join("&");
        let kept = parse_stream_params(Some(Cow::Owned(format!("{many}&p0=last"))));
        assert_eq!(kept.len(), 10);
        assert_eq!(kept[9], ("p0".into(), "last".into()));
        let callback = validate_json(SEED).unwrap();
        assert_eq!(
            callback.stream_params,
            [("txTime".into(), "665982e4".into())]
        );
        assert!(!format!("{callback:?}").contains("f5828cd4a8a09109304b060172fb3960"));
    }

    #[test]
    fn overlong_text_is_refused() {
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        assert_eq!(
            rejection(&seed_with(
                "/abnormal_event/1/detail/0/desc",
                Some(long.clone().into())
            )),
            format!("abnormal_event[1].detail[0].desc: longer than {MAX_TEXT_BYTES} bytes")
        );
        assert!(
            rejection(&seed_with("/stream_id", Some(long.into()))).starts_with("stream_id: longer")
        );
        let fits = "x".repeat(MAX_TEXT_BYTES);
        assert!(validate_json(&seed_with("/domain", Some(fits.into()))).is_ok());
    }

    #[test]
    fn caller_text_quoted_in_a_rejection_is_cut_short() {
        // serde quotes the offending value: a megabyte-long string where an
        // integer belongs must not come back in the answer, a log line or a
        // dead-letter header.
        let long = "好".repeat(200_000);
        let rejection = validate_json(&seed_with("/appid", Some(long.into()))).unwrap_err();
        let message = rejection.to_string();
        assert!(
            message.starts_with("appid: invalid value: string \"好好"),
            "{message}"
        );
        // "appid: " and the problem.
        assert!(message.len() <= "appid: ".len() + MAX_REJECTION_TEXT_BYTES);
        assert!(message.ends_with('…'), "{message}");
        let at = Rejection::at("x".repeat(10_000), "y".repeat(10_000));
        assert!(at.field().unwrap().len() <= MAX_REJECTION_TEXT_BYTES);
        assert!(at.to_string().len() <= 2 * MAX_REJECTION_TEXT_BYTES + ": ".len());
        let syntax = format!("{{\"event_type\": 321, \"{}\" 1}}", "k".repeat(5000));
        let rejection = validate_json(&syntax).unwrap_err();
        assert!(rejection.field().is_none());
        assert!(rejection.to_string().len() <= MAX_REJECTION_TEXT_BYTES);
    }

    #[test]
    fn integers_may_arrive_as_decimal_strings() {
        let json = seed_with("/data_time", Some("1670588074971".into()));
        assert_eq!(
            validate_json(&json).unwrap().report_time_ms,
            1_670_588_074_971
        );
    }
}
