//! Refused callbacks made safe to keep: what the dead-letter topic receives.
//!
//! A callback body carries two secrets. `sign` proves the sender knows the
//! callback key, but it does not cover the body: whoever reads a valid `sign`
//! and `t` can post any body until `t` expires. `stream_param` carries the push
//! URL's `txSecret`, an auth token of the stream. Neither may reach a topic that
//! more people read than the bridge's own configuration.
//!
//! [`dead_letter`] replaces both values with [`REDACTED`] and keeps every other
//! byte of the body as CSS sent it (but for a field whose value holds JSON
//! escapes, written back from its decoded value: an escaped `txSecret=` is
//! one all the same), so that an operator can repair the callback and replay
//! it (signing it anew). Its message key is a hash of the body
//! without `t` and `sign`, the only fields that change when CSS retries a
//! callback, so that all retries of one callback share one key.
//!
//! Pure functions over bytes, no I/O.

use std::borrow::Cow;

use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::lenient::Lenient;
use super::validate::is_secret_stream_param;

/// What replaces a secret value.
pub const REDACTED: &str = "redacted";

/// A refused callback as the dead-letter topic keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    /// The body with `sign` and every `txSecret` value replaced.
    pub body: Vec<u8>,
    /// Hex SHA-256 of the body without `t` and `sign` (of the redacted body,
    /// when it is not a JSON object).
    pub key: String,
}

/// The dead letter of a refused callback body, from its lenient read (the one
/// that refusing it may already have taken). See the module docs.
///
/// A body that is a JSON object is rewritten field by field, each field's
/// value kept verbatim except `sign`, `stream_param`, and a value that holds
/// a JSON escape: that one is rewritten from its decoded strings, redacted,
/// since `\u0074xSecret=` is a `txSecret=` to whoever reads the letter. Any other body (not
/// JSON, truncated, an array) has its `txSecret=` values and `"sign": "..."`
/// strings redacted as text. Either way, a last pass redacts any `txSecret=`
/// value left anywhere in the text, wherever CSS may have put one.
pub fn dead_letter(body: &Lenient<'_>) -> Redacted {
    match body {
        Lenient::Object(fields) => {
            let body = redact_tx_secret_text(&object(fields, |_| true)).into_owned();
            let identity = object(fields, |name| !matches!(name, "t" | "sign"));
            let key = hex::encode(Sha256::digest(redact_tx_secret_text(&identity).as_bytes()));
            Redacted {
                body: body.into_bytes(),
                key,
            }
        }
        Lenient::Other(body) => {
            let text = String::from_utf8_lossy(body);
            let body = redact_sign_text(&redact_tx_secret_text(&text)).into_bytes();
            let key = hex::encode(Sha256::digest(&body));
            Redacted { body, key }
        }
    }
}

/// The JSON object of the `fields` whose name `keep` accepts, with `sign` and
/// `stream_param` redacted.
fn object(fields: &[(Cow<'_, str>, &RawValue)], keep: impl Fn(&str) -> bool) -> String {
    let mut text = String::from("{");
    for (name, value) in fields.iter().filter(|(name, _)| keep(name)) {
        if text.len() > 1 {
            text.push(',');
        }
        // Serializing a string cannot fail.
        text.push_str(&serde_json::to_string(name).unwrap_or_default());
        text.push(':');
        match name.as_ref() {
            "sign" => text.push_str(&format!("\"{REDACTED}\"")),
            "stream_param" => text.push_str(&redact_stream_param(value)),
            _ if value.get().contains('\\') => text.push_str(&redact_escaped(value)),
            _ => text.push_str(value.get()),
        }
    }
    text.push('}');
    text
}

/// A JSON value holding escapes, kept as it is unless one of its strings,
/// decoded, holds a `txSecret=` value: then written back from its decoded
/// form with those values redacted (escapes as serde_json writes them; the
/// letter is still the callback to repair). A value that cannot be decoded
/// (a lone surrogate escape, which the lenient read lets through) could hide
/// one, and is replaced whole.
fn redact_escaped(value: &RawValue) -> String {
    /// Redacts the strings in `value`; whether any changed.
    fn redact(value: &mut serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(text) => match redact_tx_secret_text(text) {
                Cow::Owned(redacted) => {
                    *text = redacted;
                    true
                }
                Cow::Borrowed(_) => false,
            },
            serde_json::Value::Array(items) => items.iter_mut().fold(false, |c, v| redact(v) | c),
            serde_json::Value::Object(fields) => {
                fields.values_mut().fold(false, |c, v| redact(v) | c)
            }
            _ => false,
        }
    }
    let Ok(mut decoded) = serde_json::from_str::<serde_json::Value>(value.get()) else {
        return format!("\"{REDACTED}\"");
    };
    if !redact(&mut decoded) {
        return value.get().to_owned();
    }
    serde_json::to_string(&decoded).unwrap_or_else(|_| format!("\"{REDACTED}\""))
}

/// `stream_param`'s JSON value with the value of every parameter that the
/// validation treats as `txSecret` replaced; a value that is not a JSON string
/// is kept as it is (the last text pass still looks into it).
fn redact_stream_param(value: &RawValue) -> String {
    let Ok(query) = serde_json::from_str::<Cow<'_, str>>(value.get()) else {
        return value.get().to_owned();
    };
    let redacted: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| {
            let secret = form_urlencoded::parse(pair.trim_start_matches('?').as_bytes())
                .next()
                .is_some_and(|(name, value)| {
                    is_secret_stream_param(&name) || holds_tx_secret(&value)
                });
            match pair.split_once('=') {
                Some((name, _)) if secret => Cow::Owned(format!("{name}={REDACTED}")),
                _ => Cow::Borrowed(pair),
            }
        })
        .collect();
    serde_json::to_string(&redacted.join("&")).unwrap_or_default()
}

/// Where the value after each `txSecret=`, or `txSecret%3D` (the same
/// percent-encoded, as in a URL inside a parameter or a description), in any
/// case, starts in `text`, and whether it is the encoded form. Found without
/// allocating, since nearly no text holds one (so [`redact_tx_secret_text`]
/// costs nothing then).
///
/// Every published text goes through it, so it looks only at each `=` and
/// `%` (found with SIMD by memchr) and at the name before it: most texts hold
/// one `=` or none.
fn tx_secret_values(text: &str) -> impl Iterator<Item = (usize, bool)> + '_ {
    tx_secret_values_in(text.as_bytes())
}

/// [`tx_secret_values`] in bytes.
fn tx_secret_values_in(bytes: &[u8]) -> impl Iterator<Item = (usize, bool)> + '_ {
    const NAME: &[u8] = b"txsecret";
    const ENCODED_EQUALS_DIGITS: &[u8] = b"3d";
    memchr::memchr2_iter(b'=', b'%', bytes).filter_map(move |at| {
        let name = &bytes[at.checked_sub(NAME.len())?..at];
        if !name.eq_ignore_ascii_case(NAME) {
            return None;
        }
        if bytes[at] == b'=' {
            return Some((at + 1, false));
        }
        let digits = bytes.get(at + 1..at + 1 + ENCODED_EQUALS_DIGITS.len())?;
        digits
            .eq_ignore_ascii_case(ENCODED_EQUALS_DIGITS)
            .then_some((at + 1 + ENCODED_EQUALS_DIGITS.len(), true))
    })
}

/// Whether `text` holds a `txSecret=` or `txSecret%3D` (any case).
fn holds_tx_secret(text: &str) -> bool {
    tx_secret_values(text).next().is_some()
}

/// Whether a callback body holds a `txSecret=` or `txSecret%3D` (any case)
/// as it is, outside JSON escapes.
pub(crate) fn body_holds_tx_secret(body: &[u8]) -> bool {
    tx_secret_values_in(body).next().is_some()
}

/// `text` with the value after every `txSecret=` or `txSecret%3D` (any case)
/// replaced, up to the next character that ends a query value or a JSON
/// string (and, in the encoded form, the next `%`: `%26` is its `&`).
pub(crate) fn redact_tx_secret_text(text: &str) -> Cow<'_, str> {
    let ends_value =
        |c: char| matches!(c, '&' | '"' | '\\' | '#' | ',' | '}' | ']') || c.is_whitespace();
    let mut redacted = String::new();
    let mut copied = 0;
    for (start, encoded) in tx_secret_values(text) {
        // Inside a value already redacted: skipped before looking for its end,
        // so that every byte is looked at once (`txSecret=txSecret=...` would
        // take quadratic time otherwise).
        if start < copied {
            continue;
        }
        // The value starts after ASCII, so at a character boundary.
        let end = text[start..]
            .find(|c| ends_value(c) || (encoded && c == '%'))
            .map_or(text.len(), |e| start + e);
        if end > start && &text[start..end] != REDACTED {
            redacted.push_str(&text[copied..start]);
            redacted.push_str(REDACTED);
            copied = end;
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    redacted.push_str(&text[copied..]);
    Cow::Owned(redacted)
}

/// `text` with the string value of every `"sign"` member replaced, for bodies
/// that are not a JSON object and so cannot be rewritten field by field.
fn redact_sign_text(text: &str) -> String {
    const NAME: &str = "\"sign\"";
    let mut redacted = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(NAME) {
        let after_name = &rest[at + NAME.len()..];
        let value = after_name
            .trim_start()
            .strip_prefix(':')
            .map(str::trim_start);
        let Some(quoted) = value.and_then(|v| v.strip_prefix('"')) else {
            redacted.push_str(&rest[..at + NAME.len()]);
            rest = after_name;
            continue;
        };
        let value_start = rest.len() - quoted.len();
        let value_end = quoted.find('"').map_or(rest.len(), |e| value_start + e);
        redacted.push_str(&rest[..value_start]);
        redacted.push_str(REDACTED);
        rest = &rest[value_end..];
    }
    redacted.push_str(rest);
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const SEED: &str = include_str!("../../tests/fixtures/seed-sample.json");
    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const SIGN: &str = "5e3f26816a60a0590bfaa8f3ebb4d1dc";

    /// The seed, signed, with a `txSecret` in `stream_param`, and made invalid.
    fn signed_invalid_seed(t: i64) -> Value {
        let mut body: Value = serde_json::from_str(SEED).unwrap();
        body["t"] = json!(t);
        body["sign"] = json!(SIGN);
        body["stream_param"] = json!(format!("txSecret={SECRET}&txTime=5C2ACD80&from=obs"));
        body["abnormal_event"][0]["count"] = json!(-3);
        body
    }

    fn redacted(body: &[u8]) -> Redacted {
        dead_letter(&Lenient::read(body))
    }

    fn kept(body: &[u8]) -> (String, Redacted) {
        let letter = redacted(body);
        (String::from_utf8(letter.body.clone()).unwrap(), letter)
    }

    #[test]
    fn neither_the_signature_nor_the_stream_secret_is_kept() {
        let (text, _) = kept(signed_invalid_seed(1_700_000_600).to_string().as_bytes());
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains(SIGN), "{text}");
        let kept: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(kept["sign"], REDACTED);
        assert_eq!(
            kept["stream_param"],
            "txSecret=redacted&txTime=5C2ACD80&from=obs"
        );
    }

    #[test]
    fn everything_else_is_kept_as_sent() {
        let body = signed_invalid_seed(1_700_000_600);
        let (text, _) = kept(body.to_string().as_bytes());
        let mut expected = body.clone();
        expected["sign"] = json!(REDACTED);
        expected["stream_param"] = json!("txSecret=redacted&txTime=5C2ACD80&from=obs");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), expected);
        // Values are copied verbatim, even numbers no JSON library would keep.
        let (text, _) = kept(br#"{"appid": 123456789012345678901234567890, "t" :1.50}"#);
        assert_eq!(text, r#"{"appid":123456789012345678901234567890,"t":1.50}"#);
    }

    #[test]
    fn retries_of_one_callback_share_a_key() {
        let first = signed_invalid_seed(1_700_000_600);
        let mut retry = signed_invalid_seed(1_700_000_660);
        retry["sign"] = json!("ffffffffffffffffffffffffffffffff");
        let (_, first) = kept(first.to_string().as_bytes());
        let (_, retry) = kept(retry.to_string().as_bytes());
        assert_eq!(first.key, retry.key);
        let mut other = signed_invalid_seed(1_700_000_600);
        other["stream_id"] = json!("another-stream");
        assert_ne!(kept(other.to_string().as_bytes()).1.key, first.key);
    }

    #[test]
    fn secret_stream_params_are_found_by_their_decoded_name_in_any_case() {
        let body = json!({"stream_param": "?a=1&TXSECRET=x1&tx%53ecret=x2&txSecret&b=2"});
        let (text, _) = kept(body.to_string().as_bytes());
        let kept: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            kept["stream_param"],
            "?a=1&TXSECRET=redacted&tx%53ecret=redacted&txSecret&b=2"
        );
    }

    #[test]
    fn a_stream_param_whose_decoded_value_holds_a_tx_secret_is_redacted() {
        let body = json!({"stream_param": "u=http%3A%2F%2Fa%2Fb%3FtxSecret%3Dx9&k=v"});
        let (text, _) = kept(body.to_string().as_bytes());
        let kept: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(kept["stream_param"], "u=redacted&k=v");
    }

    #[test]
    fn a_tx_secret_anywhere_else_is_redacted_too() {
        let body = json!({"abnormal_event": [{"detail": [{"desc": "url?txSecret=abc&x=1"}]}]});
        let (text, _) = kept(body.to_string().as_bytes());
        assert!(text.contains("txSecret=redacted&x=1"), "{text}");
        assert!(!text.contains("abc"), "{text}");
    }

    #[test]
    fn a_percent_encoded_tx_secret_anywhere_is_redacted_too() {
        let desc = "push to rtmp://a/b%3FtxSecret%3Dabc%26x%3D1 failed; TXSECRET%3ddef";
        let body = json!({"abnormal_event": [{"detail": [{"desc": desc}]}]});
        let (text, _) = kept(body.to_string().as_bytes());
        assert!(text.contains("txSecret%3Dredacted%26x%3D1"), "{text}");
        assert!(text.contains("TXSECRET%3dredacted"), "{text}");
        assert!(!text.contains("abc") && !text.contains("def"), "{text}");
    }

    /// Each byte is looked at once: a megabyte of `txsecret=` takes as long
    /// as a megabyte of anything (quadratic time before, minutes).
    #[test]
    fn a_run_of_tx_secrets_is_redacted_in_one_pass() {
        let run = "txsecret=".repeat(100_000);
        let redacted = redact_tx_secret_text(&run);
        assert_eq!(redacted, format!("txsecret={REDACTED}"));
    }

    #[test]
    fn a_body_that_is_not_a_json_object_is_redacted_as_text() {
        let body = format!(r#"{{"sign" : "{SIGN}", "stream_param":"txSecret={SECRET}&a=1", "#);
        let (text, letter) = kept(body.as_bytes());
        assert_eq!(
            text,
            r#"{"sign" : "redacted", "stream_param":"txSecret=redacted&a=1", "#
        );
        use sha2::Digest;
        assert_eq!(letter.key, hex::encode(Sha256::digest(text.as_bytes())));
        assert_eq!(kept(b"not json").0, "not json");
    }

    #[test]
    fn bodies_without_secrets_are_kept_unchanged() {
        let (text, _) = kept(br#"{"event_type":321,"appid":"12x"}"#);
        assert_eq!(text, r#"{"event_type":321,"appid":"12x"}"#);
        // Escapes without a secret behind them stay as sent.
        let escaped = r#"{"type_desc_cn":"\u89c6\u9891","detail":[{"desc":"a\"b\n","k":1,"k":2}]}"#;
        assert_eq!(kept(escaped.as_bytes()).0, escaped);
    }

    mod hostile_input {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_body_gets_a_dead_letter_without_panicking(body in ".{0,300}") {
                let letter = redacted(body.as_bytes());
                prop_assert_eq!(letter.key.len(), 64);
            }

            #[test]
            fn no_secret_value_survives(
                secret in "[A-Za-z0-9]{8,40}",
                junk in "[ -~]{0,40}",
                equals in prop::sample::select(&["=", "%3D", "%3d"][..]),
            ) {
                let body = format!(
                    r#"{{"sign":"{secret}","stream_param":"txSecret={secret}","x":"{junk}","y":"txSecret{equals}{secret}"}}"#
                );
                let text = String::from_utf8(redacted(body.as_bytes()).body).unwrap();
                let json_junk = serde_json::to_string(&junk).unwrap();
                prop_assert!(!text.contains(&secret) || json_junk.contains(&secret), "{}", text);
            }

            /// A `txSecret=` written with JSON escapes is one to whoever
            /// decodes the letter: redacted too, however deep in the body.
            #[test]
            fn no_escaped_secret_survives_in_an_object(
                secret in "[A-Za-z0-9]{8,40}",
                name in prop::sample::select(&["txSecret", "\\u0074xSecret", "tx\\u0053ecret"][..]),
                equals in prop::sample::select(&["=", "\\u003d", "%3D"][..]),
                tail in prop::sample::select(&["", "\\n", "\\ud800"][..]),
            ) {
                let body = format!(
                    r#"{{"sign":"s","y":"{name}{equals}{secret}{tail}","z":[{{"desc":"a?{name}{equals}{secret}\\n"}}]}}"#
                );
                let text = String::from_utf8(redacted(body.as_bytes()).body).unwrap();
                prop_assert!(!text.contains(&secret), "{}", text);
                let decoded: serde_json::Value = serde_json::from_str(&text).unwrap();
                prop_assert!(!decoded.to_string().contains(&secret), "{}", decoded);
            }
        }
    }
}
