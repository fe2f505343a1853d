//! CSS callback authentication: `sign = hex(md5(key + decimal(t)))`.
//!
//! `t` is the Unix time (seconds) at which the signature expires; CSS sets it some
//! minutes after sending. A callback is accepted when its `sign` matches one of the
//! configured keys (several may be configured during a key rotation) and `t` is not
//! further in the past than the allowed clock skew. With no key configured, every
//! callback is accepted: authentication is optional in the CSS console.

use md5::{Digest, Md5};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// Why a callback failed authentication (HTTP 401). The messages never include
/// the expected signature or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the callback carries no `sign` or no `t`, but callback keys are configured")]
    MissingSignature,
    #[error("the signature expired at t={t}, {late_secs} s ago (beyond the allowed clock skew)")]
    Expired { t: i64, late_secs: i64 },
    #[error("`sign` does not match any configured callback key")]
    BadSignature,
}

impl AuthError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingSignature => "missing",
            Self::Expired { .. } => "expired",
            Self::BadSignature => "mismatch",
        }
    }
}

/// Checks `sign`/`t` against the configured callback keys.
#[derive(Clone, Default)]
pub struct Verifier {
    keys: Vec<SecretString>,
    max_clock_skew_secs: i64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &format_args!("[{} redacted]", self.keys.len()))
            .field("max_clock_skew_secs", &self.max_clock_skew_secs)
            .finish()
    }
}

impl Verifier {
    /// A verifier for `keys`; an empty list disables authentication.
    pub fn new(keys: Vec<SecretString>, max_clock_skew_secs: u64) -> Self {
        Self {
            keys,
            max_clock_skew_secs: i64::try_from(max_clock_skew_secs).unwrap_or(i64::MAX),
        }
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
        // Try every key without stopping at the first match, and compare in
        // constant time, so timing tells nothing about the keys.
        // CSS sends lowercase hex; hex digits in upper case mean the same bytes.
        let sign = sign.to_ascii_lowercase();
        let sign = sign.as_bytes();
        let matched = self
            .keys
            .iter()
            .fold(subtle::Choice::from(0), |matched, key| {
                matched | expected_sign(key.expose_secret(), t).as_bytes().ct_eq(sign)
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
                .map(|k| SecretString::from(k.to_string()))
                .collect(),
            60,
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
    }
}
