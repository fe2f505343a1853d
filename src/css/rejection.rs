//! [`Rejection`]: why a callback body is refused (HTTP 400), with the JSON path
//! of the problem. Decoding ([`super::wire`]) and validation
//! ([`super::validate`]) both produce it.

use std::borrow::Cow;
use std::fmt;

/// Longest problem text, and longest field path, a [`Rejection`] keeps, in
/// bytes. Both may quote the caller (serde quotes the offending value), and a
/// rejection reaches a log line, the response and a dead-letter header: a
/// sender must not be able to make those as large as its body.
pub const MAX_REJECTION_TEXT_BYTES: usize = 256;

/// A callback body the bridge refuses (HTTP 400): the problem, and where it is.
/// Its texts are cut to [`MAX_REJECTION_TEXT_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Rejection {
    field: Option<String>,
    problem: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.problem),
            None => f.write_str(&self.problem),
        }
    }
}

impl Rejection {
    /// A problem with the field at JSON path `field`.
    pub fn at(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: Some(bounded_text(field.into())),
            problem: bounded_text(problem.into()),
        }
    }

    /// A required field is absent (or null).
    pub fn missing(field: impl Into<String>) -> Self {
        Self::at(field, "missing required field")
    }

    /// JSON path of the offending field, when the problem has one.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// From a serde error that knows where in the document it happened.
    pub(crate) fn from_serde(error: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if !inner.is_data() {
            return Self::from_json(inner);
        }
        let message = without_position(&inner);
        match (path.as_str(), message.strip_prefix("missing field `")) {
            // serde reports a missing field at its parent; name the field itself.
            (parent, Some(rest)) => {
                let name = rest.trim_end_matches('`');
                Self::missing(join_path(parent, name))
            }
            (".", None) => Self::at("(body)", message),
            (path, None) => Self::at(path, message),
        }
    }

    /// From a serde_json error that is about the JSON text itself.
    pub(crate) fn from_json(error: serde_json::Error) -> Self {
        let what = if error.is_eof() {
            "body is truncated or empty"
        } else if error.is_syntax() {
            "body is not valid JSON"
        } else {
            "body does not match the callback format"
        };
        Self {
            field: None,
            problem: bounded_text(format!(
                "{what}: {} (line {}, column {})",
                without_position(&error),
                error.line(),
                error.column()
            )),
        }
    }
}

/// `text` with any `txSecret` token redacted (serde quotes the value it
/// refuses, which may be a push URL), then cut to [`MAX_REJECTION_TEXT_BYTES`]
/// at a character boundary, with an ellipsis where it was cut: redacted
/// first, so that a cut cannot hide the start of a token.
pub(crate) fn bounded_text(text: String) -> String {
    let text = match super::redact::redact_tx_secret_text(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(redacted) => redacted,
    };
    cut_to(text, MAX_REJECTION_TEXT_BYTES)
}

/// `text` cut to at most `max` bytes at a character boundary, with an ellipsis
/// where it was cut: for any text from outside that reaches a log line.
pub(crate) fn cut_to(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// serde_json's message without its " at line L column C" suffix, which means
/// nothing to a reader of a path-qualified error.
fn without_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    }
}

fn join_path(parent: &str, field: &str) -> String {
    if parent == "." || parent.is_empty() {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_url_quoted_in_a_problem_has_its_tx_secret_redacted() {
        let body = br#"{"event_type": 321, "abnormal_event": [{"type": 1, "count": 1,
            "detail": [{"occur_time": "rtmp://push/live/s?txSecret=f5828cd4a8a0&txTime=1"}]}]}"#;
        let rejection = super::super::wire::decode(body).unwrap_err();
        let text = rejection.to_string();
        assert!(
            text.contains("occur_time") && text.contains("txTime=1"),
            "{text}"
        );
        assert!(!text.contains("f5828cd4a8a0"), "{text}");
    }

    #[test]
    fn a_token_past_the_cut_is_redacted_before_it() {
        let problem = format!("{}txSecret=f5828cd4a8a0", "x".repeat(240));
        let text = Rejection::at("desc", problem).to_string();
        assert!(!text.contains("f582"), "{text}");
    }
}
