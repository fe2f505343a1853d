//! Schema Registry settings.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use secrecy::SecretString;

use super::parse_secret;

/// How the subject name is derived, as in Confluent's serializers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum SubjectStrategy {
    /// `<topic>-value` (TopicNameStrategy).
    #[default]
    Topic,
    /// The record's full name (RecordNameStrategy).
    Record,
    /// `<topic>-<record full name>` (TopicRecordNameStrategy).
    TopicRecord,
}

/// Confluent Schema Registry settings. Without a URL, records are plain Avro.
#[derive(Clone, Args)]
pub struct RegistryConfig {
    /// Schema Registry URL (http or https). When set, the schema is registered at
    /// start-up and every record is framed in the Confluent wire format (magic
    /// byte 0, 4-byte schema id, Avro binary). It may carry credentials
    /// (`https://user:password@host`), so `--help` does not show its value.
    #[arg(
        long = "schema-registry-url",
        env = "BRIDGE_SCHEMA_REGISTRY_URL",
        hide_env_values = true
    )]
    pub url: Option<String>,

    /// How the subject name is derived: topic (`<topic>-value`), record (the
    /// record's full name) or topic-record (`<topic>-<record full name>`).
    #[arg(
        long = "schema-registry-subject-strategy",
        env = "BRIDGE_SCHEMA_REGISTRY_SUBJECT_STRATEGY",
        value_enum,
        default_value_t
    )]
    pub subject_strategy: SubjectStrategy,

    /// Register the schema if the subject lacks it (true), or only look it up and
    /// stay not-ready until someone registers it (false).
    #[arg(
        long = "schema-registry-auto-register",
        env = "BRIDGE_SCHEMA_REGISTRY_AUTO_REGISTER",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub auto_register: bool,

    /// Basic-auth user for the registry.
    #[arg(
        long = "schema-registry-username",
        env = "BRIDGE_SCHEMA_REGISTRY_USERNAME"
    )]
    pub username: Option<String>,

    /// Basic-auth password for the registry.
    #[arg(
        long = "schema-registry-password",
        env = "BRIDGE_SCHEMA_REGISTRY_PASSWORD",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub password: Option<SecretString>,

    /// PEM file of the CA that signs the registry's TLS certificate, when it is
    /// not in the system's trust store.
    #[arg(
        long = "schema-registry-ca-file",
        env = "BRIDGE_SCHEMA_REGISTRY_CA_FILE"
    )]
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for RegistryConfig {
    /// The URL may carry credentials: it is shown without them (see
    /// [`without_credentials`]). The password is a `SecretString`, which
    /// shows none of itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &self.url.as_deref().map(without_credentials))
            .field("subject_strategy", &self.subject_strategy)
            .field("auto_register", &self.auto_register)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// An http(s) `url` with its user and password replaced by `redacted`, or a
/// placeholder for anything else: without its scheme, `user:password@host`
/// parses as a URL of scheme `user` whose password is in its path.
fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            if !url.username().is_empty() || url.password().is_some() {
                // Both succeed on an http(s) URL with a host.
                let _ = url.set_username("redacted");
                let _ = url.set_password(None);
            }
            url.to_string()
        }
        _ => "<not an http(s) URL: not shown>".to_owned(),
    }
}
