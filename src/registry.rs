//! Confluent Schema Registry: register (or look up) the record schema once at
//! start-up, so that records can be framed in the Confluent wire format
//! ([`crate::avro::wire`]).
//!
//! The registry is never on the request path: a background task obtains the
//! schema id, retrying with backoff, and readiness stays false until it has one.
//! From then on framing is a 5-byte prefix (magic byte 0, big-endian id) taken
//! from memory.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::avro::wire::SchemaId;
use crate::avro::{RecordSchema, SCHEMA_JSON};
use crate::config::{RegistryConfig, SubjectStrategy};

/// Media type of the registry's REST API.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// Backoff after a transient failure: from the first to the last value, doubling.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Wait after the registry refused the schema (incompatible, unauthorized, ...):
/// nothing changes until an operator acts, so ask rarely.
const AFTER_REFUSAL: Duration = Duration::from_secs(60);
/// Longest wait for one registry request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl SubjectStrategy {
    pub fn subject(self, topic: &str) -> String {
        let record = RecordSchema::get().full_name();
        match self {
            Self::Topic => format!("{topic}-value"),
            Self::Record => record.to_owned(),
            Self::TopicRecord => format!("{topic}-{record}"),
        }
    }
}

/// Why the registry did not give an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Worth retrying soon: network trouble, 5xx, 429.
    #[error("schema registry unavailable: {0}")]
    Transient(String),
    /// The registry answered and said no (409 incompatible, 401, 404, 422, ...).
    #[error("schema registry refused subject {subject}: HTTP {status}, error {code}: {message}")]
    Refused {
        subject: String,
        status: u16,
        code: i64,
        message: String,
    },
}

/// A client for the few registry calls the bridge makes.
pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    credentials: Option<(String, SecretString)>,
    subject: String,
    auto_register: bool,
}

#[derive(Deserialize)]
struct IdResponse {
    id: u32,
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    #[serde(default)]
    error_code: i64,
    #[serde(default)]
    message: String,
}

impl RegistryClient {
    /// A client for the registry at `config.url`; `None` when none is configured.
    pub fn new(config: &RegistryConfig, topic: &str) -> anyhow::Result<Option<Self>> {
        let Some(url) = config.url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let mut http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                anyhow::anyhow!("cannot read the registry CA file {}: {e}", ca.display())
            })?;
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        let credentials = config.username.clone().map(|user| {
            (
                user,
                config
                    .password
                    .clone()
                    .unwrap_or_else(|| SecretString::from("")),
            )
        });
        Ok(Some(Self {
            http: http.build()?,
            base: url.trim_end_matches('/').to_owned(),
            credentials,
            subject: config.subject_strategy.subject(topic),
            auto_register: config.auto_register,
        }))
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Registers the schema under the subject (or, with auto-registration off,
    /// looks it up) and returns its id.
    pub async fn schema_id(&self) -> Result<u32, RegistryError> {
        let subject = urlencode(&self.subject);
        let url = if self.auto_register {
            format!("{}/subjects/{subject}/versions", self.base)
        } else {
            format!("{}/subjects/{subject}", self.base)
        };
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(reqwest::header::ACCEPT, CONTENT_TYPE)
            .json(&serde_json::json!({"schema": SCHEMA_JSON, "schemaType": "AVRO"}));
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password.expose_secret()));
        }
        let response = request
            .send()
            .await
            .map_err(|e| RegistryError::Transient(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() {
            let body: IdResponse = response
                .json()
                .await
                .map_err(|e| RegistryError::Transient(format!("unexpected answer: {e}")))?;
            return Ok(body.id);
        }
        let body: ErrorResponse = response.json().await.unwrap_or_default();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(RegistryError::Transient(format!(
                "HTTP {}, error {}: {}",
                status.as_u16(),
                body.error_code,
                body.message
            )));
        }
        Err(RegistryError::Refused {
            subject: self.subject.clone(),
            status: status.as_u16(),
            code: body.error_code,
            message: body.message,
        })
    }
}

/// Obtains the schema id, retrying until it succeeds: transient failures with
/// exponential backoff, refusals rarely (an operator must act). Each distinct
/// problem is logged once, in one line. Returns once `id` is set (the caller
/// then turns readiness on).
pub async fn register(client: RegistryClient, id: Arc<SchemaId>) {
    let mut backoff = BACKOFF_FIRST;
    let mut last_problem = None;
    loop {
        match client.schema_id().await {
            Ok(schema_id) => {
                id.set(schema_id);
                tracing::info!(
                    subject = client.subject(),
                    id = schema_id,
                    "schema registered"
                );
                return;
            }
            Err(error) => {
                let wait = match &error {
                    RegistryError::Transient(_) => {
                        let wait = backoff;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        wait
                    }
                    RegistryError::Refused { .. } => AFTER_REFUSAL,
                };
                let problem = error.to_string();
                if last_problem.as_ref() != Some(&problem) {
                    tracing::error!(subject = client.subject(), retry_in = ?wait, "not ready: {problem}");
                    last_problem = Some(problem);
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Percent-encodes a subject for a URL path (subjects may contain `/` or spaces).
fn urlencode(subject: &str) -> String {
    form_urlencoded::byte_serialize(subject.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_names_follow_the_confluent_strategies() {
        assert_eq!(
            SubjectStrategy::Topic.subject("css.push-errors"),
            "css.push-errors-value"
        );
        assert_eq!(
            SubjectStrategy::Record.subject("t"),
            "css.push_error.PushErrorRecord"
        );
        assert_eq!(
            SubjectStrategy::TopicRecord.subject("t"),
            "t-css.push_error.PushErrorRecord"
        );
    }

    #[test]
    fn subjects_are_escaped_in_urls() {
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
        assert_eq!(urlencode("css.push-errors-value"), "css.push-errors-value");
    }
}
