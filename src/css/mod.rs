//! The inbound protocol: what Tencent Cloud CSS POSTs to the bridge.
//!
//! The flow through this module is *decode → authenticate → validate*:
//!
//! 1. [`decode`] reads the JSON body into the wire model ([`wire`]) in one pass,
//!    borrowing strings from the body. Type errors are reported with the JSON path
//!    of the offending field.
//! 2. [`signature::Verifier`] checks CSS's `sign`/`t` pair.
//! 3. [`validate`] turns the wire model of a push error callback (`event_type` 321)
//!    into [`PushErrorCallback`] ([`callback`], the domain model), a type that
//!    cannot be invalid.
//!
//! [`inspect`] runs the three steps in the order the service needs them. Nothing
//! here does I/O; Kafka and HTTP live elsewhere.

pub mod callback;
pub mod lenient;
pub mod redact;
pub mod rejection;
pub mod signature;
pub mod validate;
pub mod wire;

pub use callback::{AbnormalEvent, ErrorDetail, PushErrorCallback};
pub use lenient::Lenient;
pub use rejection::Rejection;
pub use signature::{AuthError, CallbackKey, KeyError, Verifier};
pub use wire::{CallbackWire, Int, decode};

/// `event_type` of a push error callback, the only kind the bridge publishes.
pub const PUSH_ERROR_EVENT_TYPE: i64 = 321;

/// Stable snake_case name of a CSS error type; `unknown` for types added to CSS
/// after this version (the numeric type is kept in `error_type`).
pub fn error_name(error_type: i32) -> &'static str {
    match error_type {
        1 => "video_timestamp_backward",
        2 => "audio_timestamp_backward",
        3 => "video_timestamp_jump",
        4 => "audio_timestamp_jump",
        5 => "chunk_size_too_big",
        6 => "video_frame_late",
        7 => "audio_frame_late",
        8 => "video_codec_changed",
        9 => "audio_codec_changed",
        10 => "video_header_missing",
        11 => "audio_header_missing",
        _ => "unknown",
    }
}

/// What an authenticated, well-formed callback turned out to be.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// A push error callback, validated: ready to be flattened into records.
    PushError(PushErrorCallback<'a>),
    /// Any other CSS event (push start, interruption, recording, ...). CSS must get
    /// a 200 so it does not retry, but nothing is published.
    Ignored { event_type: i64 },
}

/// Why a callback was refused before anything was published.
#[derive(Debug, thiserror::Error)]
pub enum InboundError<'a> {
    /// Malformed or invalid body of an authenticated sender (every sender
    /// without keys): it must fix it (HTTP 400), and the body is worth keeping
    /// as a dead letter.
    #[error("{rejection}")]
    Rejected {
        rejection: Rejection,
        /// The `stream_id` the body names (see [`Lenient::claimed_stream_id`]),
        /// read in the passes that refused it.
        stream_id: Option<String>,
        /// The body's lenient read, when refusing it took one: what a dead
        /// letter is made from, so that the body is not read again for it.
        lenient: Option<Lenient<'a>>,
    },
    /// Missing, wrong or expired signature (HTTP 401).
    #[error("{error}")]
    Unauthorized {
        error: AuthError,
        stream_id: Option<String>,
    },
}

/// Decodes, authenticates and validates one callback body.
///
/// Authentication comes before validation, so that an unauthenticated sender
/// learns nothing about what the bridge would accept. When the body does not
/// match the wire model (say, a string where an integer belongs), the bridge
/// still reads the envelope leniently to authenticate it and to learn the event
/// type: a type mismatch in an event kind the bridge ignores must not make CSS
/// retry it for twelve minutes.
pub fn inspect<'a>(
    body: &'a [u8],
    verifier: &Verifier,
    now_unix_secs: i64,
) -> Result<Inbound<'a>, InboundError<'a>> {
    let wire = match decode(body) {
        Ok(wire) => wire,
        Err(rejection) => return inspect_envelope(body, rejection, verifier, now_unix_secs),
    };
    // Borrowed from the body: nothing is copied unless the callback is refused.
    let stream_id = wire.stream_id.clone();
    let claimed = || stream_id.as_deref().map(lenient::claimed_text);
    let rejected = |rejection| InboundError::Rejected {
        rejection,
        stream_id: claimed(),
        lenient: None,
    };
    verifier
        .verify(wire.t.map(|t| t.0), wire.sign.as_deref(), now_unix_secs)
        .map_err(|error| InboundError::Unauthorized {
            error,
            stream_id: claimed(),
        })?;
    match wire.event_type {
        None => Err(rejected(Rejection::missing("event_type"))),
        Some(Int(PUSH_ERROR_EVENT_TYPE)) => validate::validate_body(wire, body)
            .map(Inbound::PushError)
            .map_err(rejected),
        Some(Int(event_type)) => Ok(Inbound::Ignored { event_type }),
    }
}

/// [`inspect`] of a body the wire model refused: its envelope, read leniently
/// in the one pass that also gives the claimed stream id and, later, the dead
/// letter, authenticates it and tells its event type.
fn inspect_envelope<'a>(
    body: &'a [u8],
    rejection: Rejection,
    verifier: &Verifier,
    now_unix_secs: i64,
) -> Result<Inbound<'a>, InboundError<'a>> {
    let lenient = Lenient::read(body);
    let Some(envelope) = lenient.envelope() else {
        // Nothing vouches for the body: its sender learns nothing about
        // validation, as with a wrong signature.
        if verifier.is_enabled() {
            return Err(InboundError::Unauthorized {
                error: AuthError::UnreadableSignature,
                stream_id: lenient.claimed_stream_id(),
            });
        }
        return Err(InboundError::Rejected {
            rejection,
            stream_id: lenient.claimed_stream_id(),
            lenient: Some(lenient),
        });
    };
    if let Err(error) = verifier.verify(envelope.t, envelope.sign.as_deref(), now_unix_secs) {
        return Err(InboundError::Unauthorized {
            error,
            stream_id: envelope.stream_id,
        });
    }
    match envelope.event_type {
        Some(event_type) if event_type != PUSH_ERROR_EVENT_TYPE => {
            Ok(Inbound::Ignored { event_type })
        }
        _ => Err(InboundError::Rejected {
            rejection,
            stream_id: envelope.stream_id,
            lenient: Some(lenient),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_keys_a_body_whose_signature_cannot_be_read_is_unauthorized_not_invalid() {
        let with_key = Verifier::new(vec![CallbackKey::parse("k").unwrap()], 60, 900);
        for body in [
            &b"not json"[..],
            br#"[1, 2]"#,
            br#"{"t": "x", "sign": "s", "event_type": 321}"#,
            br#"{"t": 1, "t": 2, "sign": "s", "event_type": 321}"#,
        ] {
            let text = String::from_utf8_lossy(body);
            match inspect(body, &with_key, 0) {
                Err(InboundError::Unauthorized { error, .. }) => {
                    assert_eq!(error, AuthError::UnreadableSignature, "{text}");
                    assert_eq!(error.reason(), "missing", "{text}");
                }
                other => panic!("{text}: {other:?}"),
            }
            // Without keys every sender is trusted: the body is invalid.
            let without_keys = Verifier::new(Vec::new(), 60, 900);
            assert!(
                matches!(
                    inspect(body, &without_keys, 0),
                    Err(InboundError::Rejected { .. })
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn a_signed_body_with_an_unclear_event_type_is_invalid_not_unauthorized() {
        let with_key = Verifier::new(vec![CallbackKey::parse("k").unwrap()], 60, 900);
        let sign = signature::expected_sign("k", 100);
        for event_type in [r#""abc""#, "321, \"event_type\": 0"] {
            let body = format!(r#"{{"t": 100, "sign": "{sign}", "event_type": {event_type}}}"#);
            assert!(
                matches!(
                    inspect(body.as_bytes(), &with_key, 0),
                    Err(InboundError::Rejected { .. })
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn every_documented_error_type_has_a_name() {
        for t in 1..=11 {
            assert_ne!(error_name(t), "unknown", "type {t}");
        }
        assert_eq!(error_name(0), "unknown");
    }
}
