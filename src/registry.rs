//! Confluent Schema Registry: register (or look up) the record schema at
//! start-up, so that records can be framed in the Confluent wire format
//! ([`crate::avro::wire`]), and ask again now and then.
//!
//! The registry is never on the request path: a background task obtains the
//! schema id, retrying with backoff, and readiness stays false until it has one.
//! From then on framing is a 5-byte prefix (magic byte 0, big-endian id) taken
//! from memory, and the same task asks for the id every [`RECHECK_EVERY`]
//! ([`recheck`]): a registry rebuilt from scratch gives the schema a new id.

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
/// Longest wait for the subject's compatibility level, which is only advice.
const COMPATIBILITY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the id is asked for again once known. A registry rebuilt from
/// scratch (its storage lost and the schemas registered again) can give the
/// schema another id, and its old id to another schema: records framed with
/// the old id would then be read with that schema, or not at all.
pub const RECHECK_EVERY: Duration = Duration::from_secs(300);

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

/// The registry's error codes (in the body of its 404s) for a subject it
/// does not have, and for a schema it does not have under the subject or at
/// all.
const SUBJECT_NOT_FOUND: i64 = 40401;
const SCHEMA_NOT_FOUND: i64 = 40403;

/// A schema by its id (`GET /schemas/ids/<id>`).
#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
}

/// A subject's compatibility level (`GET /config/<subject>`).
#[derive(Deserialize)]
struct ConfigResponse {
    #[serde(rename = "compatibilityLevel", alias = "compatibility")]
    level: String,
}

/// Whether a compatibility level lets the registry refuse what the schema's
/// evolution rules forbid (docs/consuming.md, "Schema evolution"): a version
/// that old and new jobs both read, in both directions, against every
/// version before it. Weaker levels take a version that removes a field or
/// widens a type, which fails a job still reading with an older table; plain
/// `FULL` checks a version against the one before it only, and so takes a
/// field removed and then added back with another type.
fn holds_to_the_rules(level: &str) -> bool {
    level == "FULL_TRANSITIVE"
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
        check_url(url, config.username.is_some())?;
        if config.password.is_some() && config.username.is_none() {
            anyhow::bail!(
                "--schema-registry-password is set without --schema-registry-username, so it \
                 would not be sent: set the username (or, with the credentials in the URL, \
                 unset the password)"
            );
        }
        let mut http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                anyhow::anyhow!("cannot read the registry CA file {}: {e}", ca.display())
            })?;
            // Every certificate of the file: a chain's intermediate and root,
            // or the old and new CA of a rotation.
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)?;
            if certificates.is_empty() {
                anyhow::bail!(
                    "the registry CA file {} holds no PEM certificate",
                    ca.display()
                );
            }
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
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

    /// The schema's id under the subject: looked up, and registered only
    /// where auto-registration is on and the subject lacks it. Looked up
    /// first, at start-up too, so that a registry that takes no writes (a
    /// read-only mode, a principal allowed only to read) serves a schema
    /// registered beforehand, where a registration would be refused.
    pub async fn current_schema_id(&self) -> Result<u32, RegistryError> {
        match self.ask(false).await {
            Err(RegistryError::Refused { status: 404, .. }) if self.auto_register => {
                self.ask(true).await
            }
            answer => answer,
        }
    }

    /// Whether schema `id` is, in the registry, the bridge's schema: another
    /// schema (or none) under it means records framed with it are read with
    /// that schema, or not at all. Schemas are compared in Avro's Parsing
    /// Canonical Form, which leaves out what the registry may rewrite (docs,
    /// defaults, whitespace).
    pub async fn names_the_schema(&self, id: u32) -> Result<bool, RegistryError> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let response = self
            .request(reqwest::Method::GET, url)
            .send()
            .await
            .map_err(|e| RegistryError::Transient(with_causes(e)))?;
        let status = response.status();
        if !status.is_success() {
            let body: ErrorResponse = response.json().await.unwrap_or_default();
            // The registry's own "no schema with this id", not a 404 of a
            // proxy in front of it.
            if body.error_code == SCHEMA_NOT_FOUND {
                return Ok(false);
            }
            return Err(RegistryError::Transient(format!(
                "HTTP {}, error {} for schema id {id}: {}",
                status.as_u16(),
                body.error_code,
                body.message
            )));
        }
        let body: SchemaResponse = response
            .json()
            .await
            .map_err(|e| RegistryError::Transient(format!("unexpected answer: {e}")))?;
        let ours = RecordSchema::get().schema().canonical_form();
        Ok(apache_avro::Schema::parse_str(&body.schema)
            .is_ok_and(|theirs| theirs.canonical_form() == ours))
    }

    /// The subject's compatibility level, or the registry's when the subject
    /// has none of its own.
    pub async fn compatibility(&self) -> Result<String, RegistryError> {
        let url = format!(
            "{}/config/{}?defaultToGlobal=true",
            self.base,
            urlencode(&self.subject)
        );
        // Asked before readiness turns on: a registry slow to answer it must
        // not hold the replica back for long.
        let response = self
            .request(reqwest::Method::GET, url)
            .timeout(COMPATIBILITY_TIMEOUT)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| RegistryError::Transient(with_causes(e)))?;
        let config: ConfigResponse = response
            .json()
            .await
            .map_err(|e| RegistryError::Transient(format!("unexpected answer: {e}")))?;
        Ok(config.level)
    }

    /// A request to the registry, with its media type and credentials.
    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, url)
            .header(reqwest::header::ACCEPT, CONTENT_TYPE);
        match &self.credentials {
            Some((user, password)) => request.basic_auth(user, Some(password.expose_secret())),
            None => request,
        }
    }

    /// Registers the schema (`register`) or looks it up, and returns its id.
    async fn ask(&self, register: bool) -> Result<u32, RegistryError> {
        let subject = urlencode(&self.subject);
        let url = if register {
            format!("{}/subjects/{subject}/versions", self.base)
        } else {
            format!("{}/subjects/{subject}", self.base)
        };
        let response = self
            .request(reqwest::Method::POST, url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .json(&serde_json::json!({"schema": SCHEMA_JSON, "schemaType": "AVRO"}))
            .send()
            .await
            .map_err(|e| RegistryError::Transient(with_causes(e)))?;
        let status = response.status();
        if status.is_success() {
            let body: IdResponse = response
                .json()
                .await
                .map_err(|e| RegistryError::Transient(format!("unexpected answer: {e}")))?;
            // Ids are positive: 0 would leave every record unframed (see
            // `SchemaId`), the bridge ready and every callback answered 503.
            if body.id == 0 {
                return Err(RegistryError::Transient(
                    "unexpected answer: schema id 0".to_owned(),
                ));
            }
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
pub async fn register(client: &RegistryClient, id: &SchemaId) {
    let mut backoff = BACKOFF_FIRST;
    let mut problems = Problems::default();
    loop {
        match client.current_schema_id().await {
            Ok(schema_id) => {
                id.set(schema_id);
                tracing::info!(
                    subject = client.subject(),
                    id = schema_id,
                    "schema registered"
                );
                warn_unless_full(client).await;
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
                problems.log_once(client, &error, wait, "not ready");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Says once, at WARN, when the subject's compatibility level lets the
/// registry take versions that fail running jobs. A registry that does not
/// say is left alone: the level is advice, not a condition of serving.
async fn warn_unless_full(client: &RegistryClient) {
    match client.compatibility().await {
        Ok(level) if !holds_to_the_rules(&level) => tracing::warn!(
            subject = client.subject(),
            level,
            "the subject's compatibility level takes versions that fail jobs still reading \
             with an older table (a field removed, a type widened, or, with FULL, a field \
             removed and added back with another type): set it to FULL_TRANSITIVE"
        ),
        Ok(_) => {}
        Err(error) => tracing::debug!(%error, "no compatibility level from the registry"),
    }
}

/// Asks for the schema's id every `every`, and frames records with the new
/// one when it changed. A failed check keeps the id in use (the registry is
/// off the request path, and its outage must not become the bridge's); each
/// distinct problem is logged once.
///
/// Returns, with the id forgotten, once the registry no longer has the
/// schema under the subject (without auto-registration: a registry rebuilt
/// and not yet filled again) and the id in use now names another schema or
/// none: records framed with it would be read with that schema, or not at
/// all. The caller then turns readiness off and registers again; callbacks
/// get 503 meanwhile, and CSS sends them again. An id that still names the
/// schema is kept.
pub async fn recheck(client: &RegistryClient, id: &SchemaId, every: Duration) {
    let mut problems = Problems::default();
    loop {
        tokio::time::sleep(every).await;
        match client.current_schema_id().await {
            Ok(schema_id) => {
                problems = Problems::default();
                let previous = id.get();
                if previous != Some(schema_id) {
                    id.set(schema_id);
                    tracing::warn!(
                        subject = client.subject(),
                        previous,
                        id = schema_id,
                        "the registry gives the schema another id: records are framed with it from now on"
                    );
                }
            }
            // The registry's own answer that it lacks the schema under the
            // subject (a 404 of a proxy in front of it says nothing of it),
            // where nothing registers it.
            Err(
                error @ RegistryError::Refused {
                    status: 404,
                    code: SUBJECT_NOT_FOUND | SCHEMA_NOT_FOUND,
                    ..
                },
            ) if !client.auto_register => {
                let Some(held) = id.get() else { return };
                match client.names_the_schema(held).await {
                    Ok(false) => {
                        id.forget();
                        tracing::error!(
                            subject = client.subject(),
                            id = held,
                            %error,
                            "the registry no longer has the schema, and its id names another schema or none: \
                             records are no longer framed with it, and callbacks get 503 until the schema is \
                             registered under the subject again"
                        );
                        return;
                    }
                    Ok(true) => problems.log_once(
                        client,
                        &error,
                        every,
                        "schema id kept, it still names the schema",
                    ),
                    Err(check) => problems.log_once(client, &check, every, "schema id not checked"),
                }
            }
            Err(error) => problems.log_once(client, &error, every, "schema id not checked"),
        }
    }
}

/// The last problem logged, so that each distinct one is logged once.
#[derive(Default)]
struct Problems(Option<String>);

impl Problems {
    fn log_once(
        &mut self,
        client: &RegistryClient,
        error: &RegistryError,
        wait: Duration,
        what: &str,
    ) {
        let problem = error.to_string();
        if self.0.as_ref() != Some(&problem) {
            tracing::error!(subject = client.subject(), retry_in = ?wait, "{what}: {problem}");
            self.0 = Some(problem);
        }
    }
}

/// An `http://` or `https://` URL with a host; credentials come from the
/// username and password settings or the URL, not both (both would send two
/// `Authorization` headers). The URL is not quoted: it may hold a password.
fn check_url(url: &str, username_set: bool) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        anyhow::anyhow!(
            "--schema-registry-url is not a URL ({e}); expected e.g. http://registry:8081"
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
        anyhow::bail!(
            "--schema-registry-url must be an http:// or https:// URL with a host, \
             e.g. http://registry:8081 (its scheme is `{}`)",
            parsed.scheme()
        );
    }
    if username_set && (!parsed.username().is_empty() || parsed.password().is_some()) {
        anyhow::bail!(
            "the registry credentials are given twice: in --schema-registry-url and in \
             --schema-registry-username; keep one"
        );
    }
    Ok(())
}

/// What went wrong with a request, with its causes (connection refused, the
/// name not found, a certificate not trusted): reqwest's own message names
/// only the kind. Without the URL, which may hold a password.
fn with_causes(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
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
    use std::sync::{Arc, Mutex};

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

    fn config(url: &str) -> RegistryConfig {
        RegistryConfig {
            url: Some(url.to_owned()),
            subject_strategy: SubjectStrategy::Topic,
            auto_register: true,
            username: None,
            password: None,
            ca_file: None,
        }
    }

    #[test]
    fn a_registry_url_that_is_not_http_stops_start_up_without_quoting_it() {
        for url in [
            "registry:8081",
            "user:s3cret@registry:8081",
            "ftp://registry",
            "not a url",
        ] {
            let error = RegistryClient::new(&config(url), "t")
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains("http://registry:8081"), "{url}: {error}");
            assert!(!error.contains("s3cret"), "{error}");
        }
        assert!(RegistryClient::new(&config("https://registry:8081/"), "t").is_ok());
    }

    #[test]
    fn credentials_in_the_url_and_the_flags_at_once_stop_start_up() {
        let config = RegistryConfig {
            username: Some("u".into()),
            ..config("http://u:p@registry:8081")
        };
        let error = RegistryClient::new(&config, "t").err().unwrap().to_string();
        assert!(error.contains("given twice"), "{error}");
    }

    #[test]
    fn a_password_without_a_username_stops_start_up_rather_than_being_dropped() {
        let config = RegistryConfig {
            password: Some(SecretString::from("hunter2")),
            ..config("http://registry:8081")
        };
        let error = RegistryClient::new(&config, "t").err().unwrap().to_string();
        assert!(error.contains("--schema-registry-username"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        let config = RegistryConfig {
            username: Some("u".into()),
            ..config
        };
        assert!(RegistryClient::new(&config, "t").is_ok());
    }

    #[test]
    fn a_ca_file_is_read_whole_and_one_without_a_certificate_is_refused() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let pem = std::fs::read(fixtures.join("two-test-cas.pem")).unwrap();
        assert_eq!(
            reqwest::Certificate::from_pem_bundle(&pem).unwrap().len(),
            2
        );
        let with_ca = |path| RegistryConfig {
            ca_file: Some(path),
            ..config("https://registry:8081")
        };
        assert!(RegistryClient::new(&with_ca(fixtures.join("two-test-cas.pem")), "t").is_ok());
        let error = RegistryClient::new(&with_ca(fixtures.join("seed-sample.json")), "t")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("holds no PEM certificate"), "{error}");
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_reported_with_its_cause() {
        let client = RegistryClient::new(&config("http://127.0.0.1:1"), "t")
            .unwrap()
            .unwrap();
        let error = client.current_schema_id().await.unwrap_err().to_string();
        assert!(error.to_lowercase().contains("connect"), "{error}");
        assert!(error.contains("refused"), "{error}");
    }

    /// A registry stand-in on loopback that answers its n-th request with the
    /// n-th of `bodies` (the last one from then on); its URL, and the request
    /// lines it got.
    async fn answering(bodies: Vec<String>) -> (String, Arc<Mutex<Vec<String>>>) {
        answering_with(bodies.into_iter().map(|body| (200, body)).collect()).await
    }

    /// [`answering`] with the status of each answer.
    async fn answering_with(answers: Vec<(u16, String)>) -> (String, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = [0; 4096];
                let read = stream.read(&mut request).await.unwrap();
                let text = String::from_utf8_lossy(&request[..read]);
                seen.lock()
                    .unwrap()
                    .push(text.lines().next().unwrap_or("").to_owned());
                let (status, body) = &answers[n.min(answers.len() - 1)];
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        (url, requests)
    }

    #[test]
    fn only_transitive_full_compatibility_holds_to_the_evolution_rules() {
        assert!(holds_to_the_rules("FULL_TRANSITIVE"));
        for level in ["FULL", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "NONE"] {
            assert!(!holds_to_the_rules(level), "{level}");
        }
    }

    #[tokio::test]
    async fn the_subject_s_compatibility_level_is_asked_for_with_the_global_default() {
        let (url, requests) = answering(vec![r#"{"compatibilityLevel":"BACKWARD"}"#.into()]).await;
        let client = RegistryClient::new(&config(&url), "t").unwrap().unwrap();
        assert_eq!(client.compatibility().await.unwrap(), "BACKWARD");
        assert_eq!(
            requests.lock().unwrap()[0],
            "GET /config/t-value?defaultToGlobal=true HTTP/1.1"
        );
    }

    #[tokio::test]
    async fn a_schema_id_of_0_is_not_taken() {
        let (url, _) = answering(vec![r#"{"id":0}"#.into()]).await;
        let client = RegistryClient::new(&config(&url), "t").unwrap().unwrap();
        let error = client.current_schema_id().await.unwrap_err();
        assert!(matches!(error, RegistryError::Transient(_)), "{error}");
        assert!(error.to_string().contains("schema id 0"), "{error}");
    }

    #[tokio::test]
    async fn a_new_id_from_a_rebuilt_registry_is_taken_at_the_next_check() {
        let (url, requests) = answering(vec![
            r#"{"id":7}"#.into(),
            r#"{"compatibilityLevel":"FULL_TRANSITIVE"}"#.into(),
            r#"{"id":7}"#.into(),
            r#"{"id":9}"#.into(),
        ])
        .await;
        let client = RegistryClient::new(&config(&url), "t").unwrap().unwrap();
        let id = SchemaId::default();
        register(&client, &id).await;
        assert_eq!(id.get(), Some(7));
        let checking = recheck(&client, &id, Duration::from_millis(10));
        let changed = async {
            while id.get() != Some(9) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            () = checking => unreachable!("checks for ever"),
            () = changed => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => panic!("still {:?}", id.get()),
        }
        let requests = requests.lock().unwrap().clone();
        assert!(
            requests[0].starts_with("POST /subjects/t-value "),
            "looked up: {requests:?}"
        );
        assert!(
            requests[1].starts_with("GET /config/t-value"),
            "its compatibility level asked for: {requests:?}"
        );
        assert!(
            requests[2..]
                .iter()
                .all(|r| r.starts_with("POST /subjects/t-value ")),
            "then only looked up: {requests:?}"
        );
    }

    /// A registry that takes no writes (read-only mode, a principal allowed
    /// only to read) refuses a registration even of a schema it holds: the
    /// schema registered beforehand is looked up, never registered.
    #[tokio::test]
    async fn start_up_looks_the_schema_up_before_registering_it() {
        let read_only = r#"{"error_code":42205,"message":"Subject is read-only"}"#;
        let (url, requests) = answering_with(vec![
            (200, r#"{"id":7}"#.into()),
            (200, r#"{"compatibilityLevel":"FULL_TRANSITIVE"}"#.into()),
            (422, read_only.into()),
        ])
        .await;
        let client = RegistryClient::new(&config(&url), "t").unwrap().unwrap();
        let id = SchemaId::default();
        register(&client, &id).await;
        assert_eq!(id.get(), Some(7));
        let requests = requests.lock().unwrap().clone();
        assert!(
            !requests.iter().any(|r| r.contains("/versions")),
            "{requests:?}"
        );

        let not_found = r#"{"error_code":40403,"message":"Schema not found"}"#;
        let (url, requests) = answering_with(vec![
            (404, not_found.into()),
            (200, r#"{"id":8}"#.into()),
            (200, r#"{"compatibilityLevel":"FULL_TRANSITIVE"}"#.into()),
        ])
        .await;
        let client = RegistryClient::new(&config(&url), "t").unwrap().unwrap();
        register(&client, &id).await;
        assert_eq!(id.get(), Some(8), "registered where the subject lacks it");
        let requests = requests.lock().unwrap().clone();
        assert!(
            requests[1].starts_with("POST /subjects/t-value/versions "),
            "{requests:?}"
        );
    }

    /// A registry rebuilt without the schema, with auto-registration off,
    /// and which answers `GET /schemas/ids/7` with `schema` (or 404): what
    /// `recheck` makes of id 7 then, and the requests it made.
    async fn recheck_after_a_rebuild(schema: Option<&str>) -> (Option<u32>, Vec<String>) {
        let not_found = r#"{"error_code":40401,"message":"Subject not found"}"#;
        let by_id = match schema {
            Some(schema) => (200, serde_json::json!({ "schema": schema }).to_string()),
            None => (
                404,
                r#"{"error_code":40403,"message":"Schema not found"}"#.into(),
            ),
        };
        recheck_of_7(vec![(404, not_found.into()), by_id]).await
    }

    /// Runs `checking` until it returns or the registry has received
    /// `wanted` requests (within 10 s): enough rounds to tell, however slowly
    /// a loaded machine runs them.
    async fn check_until(checking: impl Future, requests: &Mutex<Vec<String>>, wanted: usize) {
        let enough = async {
            while requests.lock().unwrap().len() < wanted {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let either = async {
            tokio::select! {
                _ = checking => {}
                () = enough => {}
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), either).await;
    }

    /// What `recheck`, without auto-registration, makes of id 7 against a
    /// registry that gives `answers`, until it returns or has asked two
    /// rounds' worth, and the requests it made.
    async fn recheck_of_7(answers: Vec<(u16, String)>) -> (Option<u32>, Vec<String>) {
        let (url, requests) = answering_with(answers).await;
        let config = RegistryConfig {
            auto_register: false,
            ..config(&url)
        };
        let client = RegistryClient::new(&config, "t").unwrap().unwrap();
        let id = SchemaId::default();
        id.set(7);
        let checking = recheck(&client, &id, Duration::from_millis(10));
        check_until(checking, &requests, 4).await;
        let requests = requests.lock().unwrap().clone();
        (id.get(), requests)
    }

    /// Records framed with an id the rebuilt registry gives another schema
    /// would be read with that schema: the id is forgotten (callbacks get 503
    /// until the schema is registered again), and `recheck` returns for the
    /// caller to register again.
    #[tokio::test]
    async fn an_id_a_rebuilt_registry_gives_another_schema_is_forgotten() {
        let (id, requests) = recheck_after_a_rebuild(Some(r#"{"type":"string"}"#)).await;
        assert_eq!(id, None);
        assert!(
            requests[0].starts_with("POST /subjects/t-value "),
            "{requests:?}"
        );
        assert!(
            requests[1].starts_with("GET /schemas/ids/7 "),
            "{requests:?}"
        );
        assert_eq!(requests.len(), 2, "then returns: {requests:?}");

        let (id, _) = recheck_after_a_rebuild(None).await;
        assert_eq!(id, None, "an id that names no schema is forgotten too");
    }

    /// A 404 without the registry's error code (a proxy in front of it with
    /// no backend, a wrong path) says nothing of the schema: the id is kept,
    /// and nothing is asked of it.
    #[tokio::test]
    async fn a_404_that_is_not_the_registry_s_keeps_the_id() {
        let (id, requests) = recheck_of_7(vec![(404, "no backend".into())]).await;
        assert_eq!(id, Some(7));
        assert!(
            requests
                .iter()
                .all(|r| r.starts_with("POST /subjects/t-value ")),
            "{requests:?}"
        );
    }

    /// The registry's own 404 for the subject, then a 404 for the id that is
    /// not its own (no error code): nothing is known of the id, which is
    /// kept.
    #[tokio::test]
    async fn an_id_the_registry_does_not_answer_for_is_kept() {
        let not_found = r#"{"error_code":40401,"message":"Subject not found"}"#;
        let (id, requests) =
            recheck_of_7(vec![(404, not_found.into()), (404, "no backend".into())]).await;
        assert_eq!(id, Some(7));
        assert!(
            requests[1].starts_with("GET /schemas/ids/7 "),
            "{requests:?}"
        );
    }

    /// With auto-registration on, the bridge registers what the registry
    /// lacks: its 404s (here to the registration too) never drop the id.
    #[tokio::test]
    async fn with_auto_registration_the_registry_s_404s_keep_the_id() {
        let not_found = r#"{"error_code":40401,"message":"Subject not found"}"#;
        let (url, requests) = answering_with(vec![(404, not_found.into())]).await;
        let client = RegistryClient::new(&config(&url), "t").unwrap().unwrap();
        let id = SchemaId::default();
        id.set(7);
        let checking = recheck(&client, &id, Duration::from_millis(10));
        // The registration's 404 handled: the next round has begun.
        check_until(checking, &requests, 3).await;
        assert_eq!(id.get(), Some(7));
        let requests = requests.lock().unwrap().clone();
        assert!(
            requests[1].starts_with("POST /subjects/t-value/versions "),
            "registered: {requests:?}"
        );
        assert!(
            !requests.iter().any(|r| r.contains("/schemas/ids/")),
            "{requests:?}"
        );
    }

    /// The subject may lack the schema while its id still names it (the
    /// subject deleted, the schema kept): records framed with it are read
    /// right, so it is kept.
    #[tokio::test]
    async fn an_id_that_still_names_the_schema_is_kept_when_the_subject_lacks_it() {
        let (id, requests) = recheck_after_a_rebuild(Some(SCHEMA_JSON)).await;
        assert_eq!(id, Some(7));
        assert!(requests.len() > 2, "checks on: {requests:?}");
    }

    #[tokio::test]
    async fn a_failed_check_keeps_the_id_in_use() {
        let client = RegistryClient::new(&config("http://127.0.0.1:1"), "t")
            .unwrap()
            .unwrap();
        let id = SchemaId::default();
        id.set(7);
        let checking = recheck(&client, &id, Duration::from_millis(10));
        let _ = tokio::time::timeout(Duration::from_millis(100), checking).await;
        assert_eq!(id.get(), Some(7));
    }

    #[test]
    fn subjects_are_escaped_in_urls() {
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
        assert_eq!(urlencode("css.push-errors-value"), "css.push-errors-value");
    }
}
