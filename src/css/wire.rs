//! The wire model: CSS callbacks exactly as they arrive, before validation.
//!
//! Every field is optional here so that one pass of serde reads any CSS event
//! kind; [`super::validate`] decides what a push error callback requires. Fields
//! this version does not know are ignored, because CSS adds fields over time.
//! Strings borrow from the request body where JSON escapes allow it.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, Unexpected, Visitor};

use super::rejection::Rejection;

/// Most error groups accepted in one callback. CSS sends one group per error type
/// (eleven are documented); the margin leaves room for new types.
pub const MAX_ABNORMAL_EVENTS: usize = 256;
/// Most details accepted in one error group. CSS reports a few per 5 s interval.
pub const MAX_DETAILS_PER_EVENT: usize = 1024;

/// A JSON integer, also accepted as a decimal string (`"1670588074971"`), since
/// some CSS fields have been documented with either representation. 64-bit,
/// because `appid` can exceed 2^31 and times are in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int(pub i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl Visitor<'_> for IntVisitor {
            type Value = Int;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &"a 64-bit integer"))
            }

            /// `5000.0` is an integer written as a float; `5000.5` is not.
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Int, E> {
                // The range check also refuses NaN and infinities.
                if v.fract() == 0.0 && (-9.2e18..9.2e18).contains(&v) {
                    Ok(Int(v as i64))
                } else {
                    Err(E::invalid_type(Unexpected::Float(v), &self))
                }
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Int, E> {
                let digits = v.strip_prefix('-').unwrap_or(v);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(E::invalid_value(Unexpected::Str(v), &self));
                }
                v.parse()
                    .map(Int)
                    .map_err(|_| E::invalid_value(Unexpected::Str(v), &"a 64-bit integer"))
            }
        }

        deserializer.deserialize_any(IntVisitor)
    }
}

/// Any CSS callback, as sent. Only the fields the bridge reads are listed.
#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self")]
pub struct CallbackWire<'a> {
    pub event_type: Option<Int>,
    /// Unix seconds at which `sign` expires.
    pub t: Option<Int>,
    #[serde(borrow, default, deserialize_with = "text")]
    pub sign: Option<Cow<'a, str>>,
    pub appid: Option<Int>,
    #[serde(borrow, default, deserialize_with = "text")]
    pub stream_id: Option<Cow<'a, str>>,
    /// Callback time, Unix milliseconds.
    pub data_time: Option<Int>,
    /// Reporting interval, milliseconds.
    pub report_interval: Option<Int>,
    #[serde(
        borrow,
        default,
        deserialize_with = "at_most::<_, _, MAX_ABNORMAL_EVENTS>"
    )]
    pub abnormal_event: Option<Vec<AbnormalEventWire<'a>>>,
    #[serde(borrow, default, deserialize_with = "text")]
    pub domain: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "text")]
    pub path: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "text")]
    pub sequence: Option<Cow<'a, str>>,
    /// The push URL's query string; carries the `txSecret` auth token.
    #[serde(borrow, default, deserialize_with = "text")]
    pub stream_param: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "text")]
    pub user_ip: Option<Cow<'a, str>>,
}

/// One error group of a push error callback (`abnormal_event[]`).
#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self")]
pub struct AbnormalEventWire<'a> {
    #[serde(rename = "type")]
    pub error_type: Option<Int>,
    pub count: Option<Int>,
    #[serde(
        borrow,
        default,
        deserialize_with = "at_most::<_, _, MAX_DETAILS_PER_EVENT>"
    )]
    pub detail: Option<Vec<ErrorDetailWire<'a>>>,
    #[serde(borrow, default, deserialize_with = "text")]
    pub type_desc_en: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "text")]
    pub type_desc_cn: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "text")]
    pub event_key: Option<Cow<'a, str>>,
}

/// One occurrence of an error (`abnormal_event[].detail[]`).
#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self")]
pub struct ErrorDetailWire<'a> {
    #[serde(borrow, default, deserialize_with = "text")]
    pub desc: Option<Cow<'a, str>>,
    pub occur_time: Option<Int>,
}

/// Implements `Deserialize` for a wire struct so that only a JSON object is
/// accepted. serde's derived code also reads a struct from a JSON array by field
/// position, which no CSS callback uses and which would make `[321, ...]` a valid
/// callback. The derived code (kept with `#[serde(remote = "Self")]`) reads the
/// object's fields.
macro_rules! from_object_only {
    ($($wire:ident),*) => {$(
        impl<'de: 'a, 'a> Deserialize<'de> for $wire<'a> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct ObjectVisitor<'a>(std::marker::PhantomData<&'a ()>);

                impl<'de: 'a, 'a> Visitor<'de> for ObjectVisitor<'a> {
                    type Value = $wire<'a>;

                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a JSON object")
                    }

                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                        $wire::deserialize(MapAccessDeserializer::new(map))
                    }
                }

                deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
            }
        }
    )*};
}

from_object_only!(CallbackWire, AbnormalEventWire, ErrorDetailWire);

/// Reads a callback body into the wire model.
///
/// Errors name the JSON path of the problem, e.g.
/// `abnormal_event[1].detail[0].occur_time: invalid type: string "x", expected an integer`.
pub fn decode(body: &[u8]) -> Result<CallbackWire<'_>, Rejection> {
    // Tracking the path costs time on every field, so it is done only to explain
    // a failure: the fast pass first, the path-tracking pass when it fails.
    if let Ok(wire) = serde_json::from_slice(body) {
        return Ok(wire);
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    let wire: CallbackWire<'_> =
        serde_path_to_error::deserialize(&mut json).map_err(Rejection::from_serde)?;
    json.end().map_err(Rejection::from_json)?;
    Ok(wire)
}

/// Reads an optional JSON array of at most `MAX` items, and stops at the item
/// after: a body is decoded before its signature is checked, and a list of
/// empty objects (`{},{},…`) takes 40 to 130 times its bytes decoded, so an
/// unbounded list let anyone hold tens of megabytes with a 1 MiB body.
fn at_most<'de, D, T, const MAX: usize>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ListVisitor<T, const MAX: usize>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for ListVisitor<T, MAX> {
        type Value = Option<Vec<T>>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "an array of at most {MAX} entries")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX));
            while let Some(item) = seq.next_element()? {
                if items.len() == MAX {
                    return Err(de::Error::custom(format!("more than {MAX} entries")));
                }
                items.push(item);
            }
            Ok(Some(items))
        }
    }

    deserializer.deserialize_option(ListVisitor::<T, MAX>(std::marker::PhantomData))
}

/// Reads an optional JSON string, borrowing it from the body when it has no
/// escape sequences. (serde's own `Cow` support borrows only for a bare `Cow`,
/// not inside an `Option`.)
pub(super) fn text<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct TextVisitor;

    impl<'de> Visitor<'de> for TextVisitor {
        type Value = Option<Cow<'de, str>>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }

        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
    }

    deserializer.deserialize_option(TextVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(json: &str) -> Result<Int, String> {
        serde_json::from_str::<Int>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn integers_are_accepted_as_numbers_or_decimal_strings() {
        assert_eq!(int("1670588074971"), Ok(Int(1_670_588_074_971)));
        assert_eq!(int("\"1670588074971\""), Ok(Int(1_670_588_074_971)));
        assert_eq!(int("\"-5\""), Ok(Int(-5)));
        assert_eq!(int("9223372036854775807"), Ok(Int(i64::MAX)));
    }

    #[test]
    fn lists_stop_at_the_entry_past_their_limit() {
        let groups = vec!["{}"; MAX_ABNORMAL_EVENTS].join(",");
        let body = format!(r#"{{"abnormal_event":[{groups}]}}"#);
        assert_eq!(
            decode(body.as_bytes())
                .unwrap()
                .abnormal_event
                .unwrap()
                .len(),
            MAX_ABNORMAL_EVENTS
        );
        let body = format!(r#"{{"abnormal_event":[{groups},{{}}]}}"#);
        assert_eq!(
            decode(body.as_bytes()).unwrap_err().to_string(),
            "abnormal_event: more than 256 entries"
        );
        let details = vec!["{}"; MAX_DETAILS_PER_EVENT + 1].join(",");
        let body = format!(r#"{{"abnormal_event":[{{}},{{"detail":[{details}]}}]}}"#);
        assert_eq!(
            decode(body.as_bytes()).unwrap_err().to_string(),
            "abnormal_event[1].detail: more than 1024 entries"
        );
    }

    #[test]
    fn integral_floats_are_integers() {
        assert_eq!(int("5000.0"), Ok(Int(5000)));
        assert_eq!(int("-1.0"), Ok(Int(-1)));
    }

    #[test]
    fn arrays_are_not_objects() {
        for body in [
            &br#"[321,null,null,0,"s",1,null,[{"type":6,"count":1}]]"#[..],
            br#"{"event_type":321,"abnormal_event":[[6,1,[[null,5]]]]}"#,
            br#"{"event_type":321,"abnormal_event":[{"type":6,"count":1,"detail":[["d",5]]}]}"#,
        ] {
            let rejection = decode(body).unwrap_err();
            assert!(
                rejection.to_string().contains("expected a JSON object"),
                "{rejection}"
            );
        }
    }

    #[test]
    fn non_integers_are_refused_with_the_expected_kind() {
        assert!(int("\"12a\"").unwrap_err().contains("expected an integer"));
        assert!(int("\"\"").unwrap_err().contains("expected an integer"));
        assert!(int("1.5").unwrap_err().contains("expected an integer"));
        assert!(int("1e300").unwrap_err().contains("expected an integer"));
        assert!(int("true").unwrap_err().contains("expected an integer"));
        assert!(int("9223372036854775808").unwrap_err().contains("64-bit"));
        assert!(
            int("\"99999999999999999999\"")
                .unwrap_err()
                .contains("64-bit")
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let wire = decode(br#"{"event_type":321,"brand_new_field":{"x":[1,2]}}"#).unwrap();
        assert_eq!(wire.event_type, Some(Int(321)));
    }

    #[test]
    fn type_errors_name_the_json_path() {
        let body = br#"{"event_type":321,"abnormal_event":[{"type":6},
            {"type":7,"detail":[{"desc":"x","occur_time":"soon"}]}]}"#;
        let rejection = decode(body).unwrap_err();
        assert_eq!(
            rejection.field(),
            Some("abnormal_event[1].detail[0].occur_time")
        );
        assert!(
            rejection.to_string().contains("expected an integer"),
            "{rejection}"
        );
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let rejection = decode(br#"{"event_type":321,"event_type":1}"#).unwrap_err();
        assert!(
            rejection.to_string().contains("duplicate field"),
            "{rejection}"
        );
    }

    #[test]
    fn strings_without_escapes_are_borrowed_from_the_body() {
        let wire = decode(br#"{"stream_id":"abc","domain":"a\u0062c","path":null}"#).unwrap();
        assert!(matches!(wire.stream_id, Some(Cow::Borrowed("abc"))));
        assert!(matches!(wire.domain, Some(Cow::Owned(ref d)) if d == "abc"));
        assert_eq!(wire.path, None);
        assert!(
            decode(br#"{"stream_id":5}"#)
                .unwrap_err()
                .to_string()
                .contains("expected a string")
        );
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(decode(br#"{"event_type":321} x"#).is_err());
    }
}
