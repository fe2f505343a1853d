//! Callback authentication settings, and the exposure policy they decide with
//! the listen address ([`super::Config::exposure`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::css::CallbackKey;

/// Callback authentication settings.
#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// Callback keys (the "callback key" of the CSS callback template), separated
    /// by commas. Several keys are accepted at once during a key rotation. A
    /// blank key is refused. Without any key, callbacks are not authenticated,
    /// which the bridge allows on a loopback address only, unless
    /// --insecure-no-callback-auth says otherwise.
    #[arg(long, env = "BRIDGE_CALLBACK_KEYS", value_delimiter = ',', hide_env_values = true,
          value_parser = CallbackKey::parse)]
    pub callback_keys: Vec<CallbackKey>,

    /// File holding callback keys, one per line (e.g. a mounted Kubernetes Secret).
    /// Adds to --callback-keys.
    #[arg(long, env = "BRIDGE_CALLBACK_KEYS_FILE")]
    pub callback_keys_file: Option<PathBuf>,

    /// How many seconds past its `t` a signature is still accepted. CSS sets `t`
    /// ten minutes ahead and may retry a callback for about twelve minutes, so a
    /// few minutes keeps late retries from being refused.
    #[arg(long, env = "BRIDGE_MAX_CLOCK_SKEW_SECS", default_value_t = 300)]
    pub max_clock_skew_secs: u64,

    /// How many seconds ahead of now a signature's `t` may lie. `sign` does not
    /// cover the body, so a captured signature with a far-future `t` could be
    /// replayed with any body until then. Default: the ten minutes CSS sets `t`
    /// ahead, plus --max-clock-skew-secs.
    #[arg(long, env = "BRIDGE_MAX_SIGNATURE_HORIZON_SECS")]
    pub max_signature_horizon_secs: Option<u64>,

    /// Accept callbacks without checking signatures on a non-loopback address,
    /// when no callback key is configured: anyone who can reach the bridge can
    /// then publish to Kafka. For demos and closed test networks only.
    #[arg(
        long,
        env = "BRIDGE_INSECURE_NO_CALLBACK_AUTH",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub insecure_no_callback_auth: bool,
}

/// Why the authentication settings cannot be served with.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("cannot read the callback keys file {path}: {source}")]
    KeysFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the callback keys file {path} holds no key; put the key of the CSS callback template in it"
    )]
    EmptyKeysFile { path: PathBuf },
    #[error("in the callback keys file {path}: {error}")]
    KeyInFile {
        path: PathBuf,
        error: crate::css::KeyError,
    },
    #[error(
        "no callback key is configured and {listen} is not a loopback address, so anyone who can \
         reach it could publish to Kafka. Set BRIDGE_CALLBACK_KEYS (--callback-keys) or \
         BRIDGE_CALLBACK_KEYS_FILE (--callback-keys-file) to the key of the CSS callback template; \
         or listen on a loopback address only; or, to accept unsigned callbacks from anyone, set \
         BRIDGE_INSECURE_NO_CALLBACK_AUTH=true (--insecure-no-callback-auth)"
    )]
    Unauthenticated { listen: SocketAddr },
}

/// How callbacks are authenticated, as decided at start-up from the keys, the
/// listen address and the opt-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Callback keys are configured: every callback must be signed.
    Signed,
    /// No key, and reachable from this machine only: for trying the bridge out.
    UnsignedLoopback,
    /// No key, reachable from the network, by explicit opt-in.
    UnsignedExposed,
}

impl AuthConfig {
    /// All configured keys: the flag's, then the file's (blank lines and `#`
    /// comments skipped). A keys file without any key is an error: it is most
    /// likely an empty Secret, and serving unauthenticated instead would be the
    /// wrong way to fail.
    pub fn keys(&self) -> Result<Vec<CallbackKey>, AuthConfigError> {
        let mut keys = self.callback_keys.clone();
        if let Some(path) = &self.callback_keys_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| AuthConfigError::KeysFile {
                    path: path.clone(),
                    source,
                })?;
            let from_file = text
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(|line| {
                    CallbackKey::parse(line).map_err(|error| AuthConfigError::KeyInFile {
                        path: path.clone(),
                        error,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if from_file.is_empty() {
                return Err(AuthConfigError::EmptyKeysFile { path: path.clone() });
            }
            keys.extend(from_file);
        }
        Ok(keys)
    }

    /// The signature horizon in force: the configured one, or CSS's ten minutes
    /// plus the clock skew.
    pub fn max_signature_horizon_secs(&self) -> u64 {
        self.max_signature_horizon_secs
            .unwrap_or_else(|| crate::css::Verifier::default_horizon_secs(self.max_clock_skew_secs))
    }
}
