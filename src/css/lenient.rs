//! A refused body, read leniently and once.
//!
//! When the wire model refuses a body (a type error anywhere in it), the bridge
//! still needs three things from it: the envelope (`t`, `sign`, `event_type`),
//! to authenticate the sender and learn the event kind; the `stream_id` it
//! claims, for the log line that leads an operator to the sender; and, for a
//! dead letter, every field as it was sent. [`Lenient::read`] reads the body
//! once into its top-level fields, each value kept as its raw JSON text, and
//! all three are taken from that: only the few envelope values are parsed
//! again, from their own bytes.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use super::rejection::bounded_text;
use super::wire::{Int, text};

/// A body as the lenient read found it.
#[derive(Debug)]
pub enum Lenient<'a> {
    /// A JSON object: its fields in their order, names decoded, values as raw
    /// text, duplicates kept.
    Object(Vec<(Cow<'a, str>, &'a RawValue)>),
    /// Anything else: not JSON, truncated, an array, a string.
    Other(&'a [u8]),
}

/// The few envelope fields needed to authenticate a callback and route it by
/// event type; any other field may have any type.
#[derive(Debug, Default)]
pub struct Envelope<'a> {
    pub event_type: Option<i64>,
    pub t: Option<i64>,
    pub sign: Option<Cow<'a, str>>,
    /// As [`Lenient::claimed_stream_id`] reads it.
    pub stream_id: Option<String>,
}

impl<'a> Lenient<'a> {
    /// Reads `body`'s top-level fields; never fails, since a body that is not
    /// a JSON object is [`Lenient::Other`].
    pub fn read(body: &'a [u8]) -> Self {
        match serde_json::from_slice::<Fields<'a>>(body) {
            Ok(Fields(fields)) => Self::Object(fields),
            Err(_) => Self::Other(body),
        }
    }

    /// The envelope. `None` when the body is not a JSON object, or when `t`
    /// or `sign` is malformed or named twice: a sender's `t` and `sign` are
    /// trusted only when they say one thing. An `event_type` that does not say
    /// one thing is `None`: the body is then judged as a push error callback,
    /// once its signature is checked.
    pub fn envelope(&self) -> Option<Envelope<'a>> {
        let int = |name| -> Result<Option<i64>, Unclear> {
            self.single(name)?
                .map(|raw| serde_json::from_str::<Option<Int>>(raw.get()).map_err(|_| Unclear))
                .transpose()
                .map(|int| int.flatten().map(|Int(value)| value))
        };
        let sign = match self.single("sign").ok()? {
            Some(raw) => text(&mut serde_json::Deserializer::from_str(raw.get())).ok()?,
            None => None,
        };
        Some(Envelope {
            event_type: int("event_type").ok().flatten(),
            t: int("t").ok()?,
            sign,
            // Not part of the envelope's trust: a `stream_id` named twice
            // leaves the claim out, not the envelope (which would answer a
            // wrong signature 400 and tell its sender about validation).
            stream_id: self.claimed_stream_id(),
        })
    }

    /// The `stream_id` the body names, whatever else is wrong with it. `None`
    /// when the body is not a JSON object, or its `stream_id` is missing, not
    /// a string, or named twice. Nothing vouches for it (an unauthenticated
    /// body may name any stream), and since a sender chooses it, it is made
    /// printable and cut (see [`claimed_text`]).
    pub fn claimed_stream_id(&self) -> Option<String> {
        self.single("stream_id").ok()?.and_then(claimed_string)
    }

    /// The value of the field `name`, `Ok(None)` when there is none; [`Unclear`]
    /// when the body is not an object or names the field twice.
    fn single(&self, name: &str) -> Result<Option<&'a RawValue>, Unclear> {
        let Self::Object(fields) = self else {
            return Err(Unclear);
        };
        let mut values = fields
            .iter()
            .filter(|(field, _)| field == name)
            .map(|&(_, raw)| raw);
        let first = values.next();
        match values.next() {
            Some(_) => Err(Unclear),
            None => Ok(first),
        }
    }
}

/// A field the body does not give one clear value for.
struct Unclear;

/// A claimed JSON value as [`Lenient::claimed_stream_id`] keeps it: a string,
/// made printable and bounded; `None` for any other JSON type.
fn claimed_string(raw: &RawValue) -> Option<String> {
    let text: String = serde_json::from_str(raw.get()).ok()?;
    Some(claimed_text(&text))
}

/// A sender's text made fit for a log line: control characters replaced, cut
/// to [`MAX_REJECTION_TEXT_BYTES`](super::rejection::MAX_REJECTION_TEXT_BYTES).
pub fn claimed_text(text: &str) -> String {
    let printable = text
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    bounded_text(printable)
}

/// The top-level fields of a JSON object, as [`Lenient::Object`] holds them.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    fields.push(field);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(body: &str) -> Option<Envelope<'_>> {
        Lenient::read(body.as_bytes()).envelope()
    }

    fn claimed(body: &str) -> Option<String> {
        Lenient::read(body.as_bytes()).claimed_stream_id()
    }

    #[test]
    fn the_envelope_is_read_whatever_type_other_fields_have() {
        let body = r#"{"event_type":"1","t":"1700000000","sign":"abc","appid":"not a number"}"#;
        let envelope = envelope(body).unwrap();
        assert_eq!(envelope.event_type, Some(1));
        assert_eq!(envelope.t, Some(1_700_000_000));
        assert_eq!(envelope.sign.as_deref(), Some("abc"));
    }

    #[test]
    fn the_sign_is_borrowed_from_the_body() {
        let envelope = envelope(r#"{"sign":"abc","detail":[1,"x"]}"#).unwrap();
        assert!(matches!(envelope.sign, Some(Cow::Borrowed("abc"))));
    }

    #[test]
    fn missing_and_null_envelope_fields_are_absent() {
        let envelope = envelope(r#"{"t":null,"sign":null}"#).unwrap();
        assert_eq!((envelope.event_type, envelope.t), (None, None));
        assert_eq!(envelope.sign, None);
    }

    #[test]
    fn a_malformed_or_repeated_t_or_sign_gives_no_envelope() {
        for body in [
            r#"{"t":"soon","sign":"abc"}"#,
            r#"{"t":1,"sign":5}"#,
            r#"{"t":1,"sign":"abc","t":2}"#,
        ] {
            assert!(envelope(body).is_none(), "{body}");
        }
    }

    #[test]
    fn a_malformed_or_repeated_event_type_is_absent_from_the_envelope() {
        for body in [
            r#"{"t":1,"sign":"abc","event_type":[321]}"#,
            r#"{"t":1,"sign":"abc","event_type":321,"event_type":0}"#,
        ] {
            let envelope = envelope(body).expect("t and sign say one thing");
            assert_eq!((envelope.event_type, envelope.t), (None, Some(1)), "{body}");
        }
    }

    #[test]
    fn a_repeated_stream_id_leaves_out_the_claim_not_the_envelope() {
        let envelope = envelope(r#"{"t":1,"sign":"abc","stream_id":"a","stream_id":"b"}"#)
            .expect("t and sign say one thing");
        assert_eq!((envelope.t, envelope.stream_id), (Some(1), None));
    }

    #[test]
    fn bodies_that_are_not_objects_give_no_envelope() {
        for body in ["[1,null,null]", "[1,2]", "not json", "", r#"{"t":1} x"#] {
            assert!(envelope(body).is_none(), "{body}");
            assert!(matches!(Lenient::read(body.as_bytes()), Lenient::Other(_)));
        }
    }

    #[test]
    fn the_claimed_stream_id_is_read_from_any_json_object_and_made_printable() {
        assert_eq!(
            claimed(r#"{"appid":"twelve","stream_id":"live-1"}"#).as_deref(),
            Some("live-1")
        );
        assert_eq!(
            claimed(r#"{"stream_id":"a\nb\u0000"}"#).as_deref(),
            Some("a\u{fffd}b\u{fffd}")
        );
        let long = format!(r#"{{"stream_id":"{}"}}"#, "s".repeat(10_000));
        let cut = claimed(&long).unwrap();
        assert!(cut.len() <= crate::css::rejection::MAX_REJECTION_TEXT_BYTES);
        for body in [r#"{"stream_id":5}"#, "{}", "[1]", "not json", ""] {
            assert_eq!(claimed(body), None, "{body}");
        }
    }

    #[test]
    fn the_envelope_carries_the_claimed_stream_id() {
        let envelope = envelope(r#"{"stream_id":"live-1","appid":"x"}"#).unwrap();
        assert_eq!(envelope.stream_id.as_deref(), Some("live-1"));
    }
}
