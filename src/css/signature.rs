//! CSS callback authentication: `sign = hex(md5(key + decimal(t)))`.
//!
//! `t` is the Unix time (seconds) at which the signature expires; CSS sets it ten
//! minutes after sending. A callback is accepted when its `sign` matches one of the
//! configured keys (several may be configured during a key rotation), `t` is not
//! further in the past than the allowed clock skew, and not further ahead than the
//! horizon: `sign` does not cover the body, so a captured signature must not stay
//! usable for longer than CSS itself would make it. With no key configured, every
//! callback is accepted: authentication is optional in the CSS console, and the
//! service only runs that way when told to (see `config`).

use md5::{Digest, Md5};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// Why a callback failed authentication (HTTP 401). The messages never include
/// the expected signature or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the callback carries no `sign` or no `t`, but callback keys are configured")]
    MissingSignature,
    /// The body is not a JSON object, or names `t` or `sign` twice or with
    /// the wrong type, so no signature can be read; counted as `missing`.
    #[error(
        "no `sign` and `t` can be read: the body is not a JSON object naming each once, \
         and callback keys are configured"
    )]
    UnreadableSignature,
    #[error("the signature expired at t={t}, {late_secs} s ago (beyond the allowed clock skew)")]
    Expired { t: i64, late_secs: i64 },
    #[error(
        "the signature's t={t} lies {ahead_secs} s ahead, beyond the allowed horizon (CSS sets t ten minutes ahead)"
    )]
    TooFarAhead { t: i64, ahead_secs: i64 },
    #[error("`sign` does not match any configured callback key")]
    BadSignature,
}

impl AuthError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingSignature | Self::UnreadableSignature => "missing",
            Self::Expired { .. } => "expired",
            Self::TooFarAhead { .. } => "future",
            Self::BadSignature => "mismatch",
        }
    }
}

/// Keys shorter than this get a warning at start-up: the signature is an
/// unsalted MD5 of key and `t`, so a short key can be found by brute force from
/// one captured callback.
pub const MIN_RECOMMENDED_KEY_BYTES: usize = 16;

/// How far ahead CSS sets `t` when it signs a callback: ten minutes after sending.
pub const CSS_SIGNATURE_LIFETIME_SECS: u64 = 600;

/// A callback key: never blank, never printed.
///
/// A blank key would make `sign = md5(t)` valid, which anyone can compute, so
/// the only way to get a key is [`CallbackKey::parse`], which refuses it.
#[derive(Clone)]
pub struct CallbackKey(SecretString);

/// How the placeholder keys of the deployment examples begin
/// (`deploy/base/secrets/callback-keys`): a key anyone can read in the
/// project's sources.
const PLACEHOLDER_KEY_PREFIX: &str = "REPLACE-ME";

/// A configured callback key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "a callback key must not be blank (look for a trailing or doubled comma, or an empty value)"
    )]
    Blank,
    #[error(
        "a callback key is a placeholder of the deployment examples (it begins with \
         {PLACEHOLDER_KEY_PREFIX}), which anyone can read: put the key of the CSS callback \
         template in its place"
    )]
    Placeholder,
}

impl CallbackKey {
    /// The key in `text`, without surrounding white space; refuses a blank
    /// one, and a placeholder left from the deployment examples.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let key = text.trim();
        if key.is_empty() {
            return Err(KeyError::Blank);
        }
        if key.starts_with(PLACEHOLDER_KEY_PREFIX) {
            return Err(KeyError::Placeholder);
        }
        Ok(Self(SecretString::from(key.to_owned())))
    }

    /// Whether the key is shorter than [`MIN_RECOMMENDED_KEY_BYTES`].
    pub fn is_short(&self) -> bool {
        self.0.expose_secret().len() < MIN_RECOMMENDED_KEY_BYTES
    }
}

impl std::fmt::Debug for CallbackKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackKey(<redacted>)")
    }
}

impl std::str::FromStr for CallbackKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        Self::parse(text)
    }
}

/// Checks `sign`/`t` against the configured callback keys.
#[derive(Clone, Default)]
pub struct Verifier {
    keys: Vec<CallbackKey>,
    max_clock_skew_secs: i64,
    max_horizon_secs: i64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &format_args!("[{} redacted]", self.keys.len()))
            .field("max_clock_skew_secs", &self.max_clock_skew_secs)
            .field("max_horizon_secs", &self.max_horizon_secs)
            .finish()
    }
}

impl Verifier {
    /// A verifier for `keys`; an empty list disables authentication. A
    /// signature is accepted from `max_horizon_secs` before its `t` until
    /// `max_clock_skew_secs` after it.
    pub fn new(keys: Vec<CallbackKey>, max_clock_skew_secs: u64, max_horizon_secs: u64) -> Self {
        let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
        Self {
            keys,
            max_clock_skew_secs: secs(max_clock_skew_secs),
            max_horizon_secs: secs(max_horizon_secs),
        }
    }

    /// The horizon that matches CSS's own signatures: `t` is set ten minutes
    /// ahead, and the receiver's clock may be behind by the allowed skew.
    pub fn default_horizon_secs(max_clock_skew_secs: u64) -> u64 {
        CSS_SIGNATURE_LIFETIME_SECS.saturating_add(max_clock_skew_secs)
    }

    /// Whether callbacks must be signed.
    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Accepts or refuses one callback's credentials at time `now_unix_secs`.
    pub fn verify(
        &self,
        t: Option<i64>,
        sign: Option<&str>,
        now_unix_secs: i64,
    ) -> Result<(), AuthError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let (Some(t), Some(sign)) = (t, sign) else {
            return Err(AuthError::MissingSignature);
        };
        let late_secs = now_unix_secs.saturating_sub(t);
        if late_secs > self.max_clock_skew_secs {
            return Err(AuthError::Expired { t, late_secs });
        }
        let ahead_secs = t.saturating_sub(now_unix_secs);
        if ahead_secs > self.max_horizon_secs {
            return Err(AuthError::TooFarAhead { t, ahead_secs });
        }
        // Try every key without stopping at the first match, and compare in
        // constant time, so timing tells nothing about the keys.
        // CSS sends lowercase hex; hex digits in upper case mean the same bytes.
        let sign = sign.to_ascii_lowercase();
        let sign = sign.as_bytes();
        let matched = self
            .keys
            .iter()
            .fold(subtle::Choice::from(0), |matched, key| {
                matched
                    | expected_sign(key.0.expose_secret(), t)
                        .as_bytes()
                        .ct_eq(sign)
            });
        if bool::from(matched) {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        }
    }
}

/// The signature CSS computes for `key` and `t`: lowercase hex MD5 of the key
/// followed by `t` in decimal.
pub fn expected_sign(key: &str, t: i64) -> String {
    let mut md5 = Md5::new();
    md5.update(key.as_bytes());
    md5.update(t.to_string().as_bytes());
    hex::encode(md5.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn verifier(keys: &[&str]) -> Verifier {
        Verifier::new(
            keys.iter()
                .map(|k| CallbackKey::parse(k).unwrap())
                .collect(),
            60,
            660,
        )
    }

    #[test]
    fn sign_is_lowercase_hex_md5_of_key_then_t() {
        // md5("secret1700000600"), computed independently with coreutils' md5sum.
        assert_eq!(
            expected_sign("secret", 1_700_000_600),
            "5e3f26816a60a0590bfaa8f3ebb4d1dc"
        );
    }

    #[test]
    fn accepts_a_valid_signature() {
        let t = NOW + 600;
        assert_eq!(
            verifier(&["secret"]).verify(Some(t), Some(&expected_sign("secret", t)), NOW),
            Ok(())
        );
    }

    #[test]
    fn accepts_any_configured_key_during_rotation() {
        let v = verifier(&["old", "new"]);
        let t = NOW + 600;
        assert_eq!(
            v.verify(Some(t), Some(&expected_sign("old", t)), NOW),
            Ok(())
        );
        assert_eq!(
            v.verify(Some(t), Some(&expected_sign("new", t)), NOW),
            Ok(())
        );
        assert_eq!(
            v.verify(Some(t), Some(&expected_sign("other", t)), NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn rejects_a_wrong_or_missing_signature() {
        let v = verifier(&["secret"]);
        let t = NOW + 600;
        assert_eq!(
            v.verify(Some(t), Some("0123"), NOW),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify(Some(t), None, NOW),
            Err(AuthError::MissingSignature)
        );
        assert_eq!(
            v.verify(None, Some(&expected_sign("secret", t)), NOW),
            Err(AuthError::MissingSignature)
        );
        // The signature covers t: a valid sign moved to another t fails.
        assert_eq!(
            v.verify(Some(t + 1), Some(&expected_sign("secret", t)), NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn rejects_an_expired_t_beyond_the_clock_skew() {
        let v = verifier(&["secret"]);
        let within = NOW - 60;
        assert_eq!(
            v.verify(Some(within), Some(&expected_sign("secret", within)), NOW),
            Ok(())
        );
        let expired = NOW - 61;
        assert_eq!(
            v.verify(Some(expired), Some(&expected_sign("secret", expired)), NOW),
            Err(AuthError::Expired {
                t: expired,
                late_secs: 61
            })
        );
    }

    #[test]
    fn rejects_a_t_beyond_the_horizon() {
        let v = verifier(&["secret"]);
        let within = NOW + 660;
        assert_eq!(
            v.verify(Some(within), Some(&expected_sign("secret", within)), NOW),
            Ok(())
        );
        let far = NOW + 661;
        let error = v
            .verify(Some(far), Some(&expected_sign("secret", far)), NOW)
            .unwrap_err();
        assert_eq!(
            error,
            AuthError::TooFarAhead {
                t: far,
                ahead_secs: 661
            }
        );
        assert_eq!(error.reason(), "future");
    }

    #[test]
    fn the_default_horizon_is_css_lifetime_plus_the_clock_skew() {
        assert_eq!(Verifier::default_horizon_secs(300), 900);
    }

    #[test]
    fn a_blank_key_cannot_be_made() {
        for blank in ["", " ", "\t\n"] {
            assert_eq!(CallbackKey::parse(blank).unwrap_err(), KeyError::Blank);
        }
        assert!(CallbackKey::parse(" k ").is_ok());
    }

    #[test]
    fn the_placeholder_of_the_deployment_examples_cannot_be_a_key() {
        let shipped = include_str!("../../deploy/base/secrets/callback-keys");
        let placeholder = (shipped.lines())
            .find(|line| !line.starts_with('#') && !line.trim().is_empty())
            .unwrap();
        assert_eq!(
            CallbackKey::parse(placeholder).unwrap_err(),
            KeyError::Placeholder
        );
    }

    #[test]
    fn keys_under_the_recommended_length_are_flagged_short() {
        assert!(CallbackKey::parse("short").unwrap().is_short());
        assert!(!CallbackKey::parse("0123456789abcdef").unwrap().is_short());
    }

    #[test]
    fn hex_case_does_not_matter() {
        let t = NOW + 600;
        let upper = expected_sign("secret", t).to_uppercase();
        assert_eq!(
            verifier(&["secret"]).verify(Some(t), Some(&upper), NOW),
            Ok(())
        );
    }

    #[test]
    fn without_keys_everything_is_accepted() {
        assert_eq!(Verifier::default().verify(None, None, NOW), Ok(()));
    }

    #[test]
    fn debug_output_hides_the_keys() {
        assert!(!format!("{:?}", verifier(&["topsecret"])).contains("topsecret"));
        let key = CallbackKey::parse("topsecret").unwrap();
        assert!(!format!("{key:?}").contains("topsecret"));
    }
}
