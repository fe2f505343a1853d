//! A Confluent Schema Registry stand-in for the tests.
//!
//! It speaks the subset of the Schema Registry REST API that Avro serializers
//! and deserializers use, with the real response shapes, status codes and
//! `error_code`s, so a client tested against it behaves the same against a real
//! registry:
//!
//! | endpoint                                           | answer                                        |
//! |----------------------------------------------------|-----------------------------------------------|
//! | `POST /subjects/{subject}/versions`                | `{"id": N}`; 409, 42201                        |
//! | `POST /subjects/{subject}` (lookup)                | `{"subject","id","version","schema"}`; 40401, 40403 |
//! | `GET /schemas/ids/{id}`                            | `{"schema": "..."}`; 40403                    |
//! | `GET /subjects`                                    | `["subject", ...]`                            |
//! | `GET /subjects/{subject}/versions`                 | `[1, 2, ...]`; 40401                          |
//! | `GET /subjects/{subject}/versions/{version\|latest}` | `{"subject","id","version","schema"}`; 40401, 40402, 42202 |
//! | `GET /subjects/{subject}/versions/{version}/schema` | the schema itself                            |
//! | `GET /config`                                      | `{"compatibilityLevel": "BACKWARD"}`          |
//!
//! Like the real registry, ids are global (the same schema under two subjects
//! has one id), registering a schema a subject already has returns its id, and a
//! new version must be BACKWARD compatible with the subject's latest (checked with
//! apache-avro's schema resolution rules). Schemas are identified by their parsed
//! JSON, so whitespace and key order do not matter. Only AVRO schemas are
//! accepted; schema references are not supported.
//!
//! Knobs inject the failures a client must survive: [`TestRegistry::fail_next`],
//! [`TestRegistry::require_basic_auth`], [`TestRegistry::set_incompatible`].
//!
//! The server runs on its own thread and runtime, so it keeps answering while a
//! test blocks its own thread (a synchronous consumer, a child process).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The registry's media type, sent on every answer.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A Schema Registry on a free loopback port, stopped when dropped.
pub struct TestRegistry {
    addr: SocketAddr,
    state: Arc<Mutex<Registry>>,
    shutdown: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Registry {
    /// Schema id N is `schemas[N - 1]`.
    schemas: Vec<Stored>,
    /// Subject → schema id of each version; version N is `[N - 1]`.
    subjects: BTreeMap<String, Vec<u32>>,
    incompatible: HashSet<String>,
    /// Remaining injected failures and their status.
    failures: Option<(usize, StatusCode)>,
    /// The expected `Authorization` header, when auth is on.
    authorization: Option<String>,
    /// `METHOD /path?query` of every request received, in order.
    requests: Vec<String>,
}

struct Stored {
    /// Parsed, for identity.
    json: Value,
    /// Compact text, as answered.
    text: String,
}

/// An error answer: `{"error_code": code, "message": message}`.
struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn subject_not_found(subject: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        )
    }

    fn invalid_schema(details: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema: {details}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = registry_json(
            self.status,
            &json!({"error_code": self.code, "message": self.message}),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"SchemaRegistry\""),
            );
        }
        response
    }
}

fn registry_json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

type Answer = Result<Response, ApiError>;

fn ok(body: Value) -> Answer {
    Ok(registry_json(StatusCode::OK, &body))
}

impl TestRegistry {
    /// Starts an empty registry on `127.0.0.1` and a free port.
    pub async fn start() -> TestRegistry {
        let state = Arc::new(Mutex::new(Registry::default()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let app = router(state.clone());
        let (shutdown, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("test-schema-registry".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("registry runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    tokio::select! {
                        result = axum::serve(listener, app) => result.expect("registry serves"),
                        _ = stopped => {}
                    }
                });
            })
            .expect("registry thread");
        TestRegistry {
            addr,
            state,
            shutdown: Some(shutdown),
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers the next `n` requests, whatever they are, with `status` and a
    /// registry error body (`50001` "Error in the backend data store" for 500).
    pub fn fail_next(&self, n: usize, status: u16) {
        let status = StatusCode::from_u16(status).expect("a valid HTTP status");
        self.lock().failures = (n > 0).then_some((n, status));
    }

    /// From now on, answers 401 `{"error_code":401,...}` to requests without
    /// `Authorization: Basic base64(user:pass)`.
    pub fn require_basic_auth(&self, user: &str, pass: &str) {
        self.lock().authorization = Some(format!(
            "Basic {}",
            base64(format!("{user}:{pass}").as_bytes())
        ));
    }

    /// From now on, registering a new schema under `subject` answers 409, as
    /// for a schema that breaks the subject's compatibility level.
    pub fn set_incompatible(&self, subject: &str) {
        self.lock().incompatible.insert(subject.to_owned());
    }

    /// How many requests reached the registry, including failed ones.
    pub fn request_count(&self) -> usize {
        self.lock().requests.len()
    }

    /// `METHOD /path?query` of every request so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Registers `schema` under `subject` directly (no request, no injected
    /// failure, no auth) and returns its id, as an operator would beforehand.
    /// Panics if the schema is invalid or incompatible.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        let mut registry = self.lock();
        match registry.register(subject, schema) {
            Ok(id) => id,
            Err(e) => panic!("cannot pre-register under {subject}: {}", e.message),
        }
    }

    /// The schema text with this id, as `GET /schemas/ids/{id}` answers it.
    pub fn schema(&self, id: u32) -> Option<String> {
        self.lock().stored(id).map(|s| s.text.clone())
    }

    /// The schema id of each version of `subject`, oldest first.
    pub fn versions(&self, subject: &str) -> Vec<u32> {
        self.lock()
            .subjects
            .get(subject)
            .cloned()
            .unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        lock(&self.state)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

fn lock(state: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    // A panicking test thread must not take the registry down with it.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

type Shared = Arc<Mutex<Registry>>;

fn router(state: Shared) -> Router {
    Router::new()
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route("/subjects/{subject}/versions/{version}", get(get_version))
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route("/schemas/ids/{id}", get(get_by_id))
        .route("/config", get(config))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

/// Records the request, then answers an injected failure or a missing
/// credential before any endpoint sees it.
async fn gate(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let rejection = {
        let mut registry = lock(&state);
        let target = request
            .uri()
            .path_and_query()
            .map_or_else(|| request.uri().path().to_owned(), |pq| pq.to_string());
        registry
            .requests
            .push(format!("{} {target}", request.method()));
        if let Some((remaining, status)) = registry.failures {
            registry.failures = (remaining > 1).then_some((remaining - 1, status));
            Some(injected_failure(status))
        } else if let Some(expected) = &registry.authorization {
            let given = request.headers().get(header::AUTHORIZATION);
            (given.and_then(|v| v.to_str().ok()) != Some(expected.as_str()))
                .then(|| ApiError::new(StatusCode::UNAUTHORIZED, 401, "Unauthorized"))
        } else {
            None
        }
    };
    match rejection {
        Some(error) => error.into_response(),
        None => next.run(request).await,
    }
}

fn injected_failure(status: StatusCode) -> ApiError {
    let code = u32::from(status.as_u16());
    match status {
        StatusCode::INTERNAL_SERVER_ERROR => {
            ApiError::new(status, 50001, "Error in the backend data store")
        }
        StatusCode::GATEWAY_TIMEOUT => ApiError::new(status, 50002, "Operation timed out"),
        s if s.is_server_error() => ApiError::new(status, code * 100 + 1, "Injected failure"),
        _ => ApiError::new(status, code, "Injected failure"),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found")
}

async fn config() -> Answer {
    ok(json!({"compatibilityLevel": "BACKWARD"}))
}

async fn list_subjects(State(state): State<Shared>) -> Answer {
    let registry = lock(&state);
    ok(json!(registry.subjects.keys().collect::<Vec<_>>()))
}

async fn list_versions(State(state): State<Shared>, Path(subject): Path<String>) -> Answer {
    let registry = lock(&state);
    let versions = registry
        .subjects
        .get(&subject)
        .ok_or_else(|| ApiError::subject_not_found(&subject))?;
    ok(json!((1..=versions.len()).collect::<Vec<_>>()))
}

async fn get_version(
    State(state): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> Answer {
    let registry = lock(&state);
    let (version, id) = registry.version(&subject, &version)?;
    ok(registry.subject_schema(&subject, version, id))
}

async fn get_version_schema(
    State(state): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> Answer {
    let registry = lock(&state);
    let (_, id) = registry.version(&subject, &version)?;
    ok(registry
        .stored(id)
        .expect("versions name stored ids")
        .json
        .clone())
}

async fn get_by_id(State(state): State<Shared>, Path(id): Path<String>) -> Answer {
    let registry = lock(&state);
    let stored = id
        .parse::<u32>()
        .ok()
        .and_then(|n| registry.stored(n))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                40403,
                format!("Schema {id} not found"),
            )
        })?;
    ok(json!({"schema": stored.text}))
}

async fn register(State(state): State<Shared>, Path(subject): Path<String>, body: Bytes) -> Answer {
    let schema = schema_from_body(&body)?;
    let id = lock(&state).register(&subject, &schema)?;
    ok(json!({"id": id}))
}

async fn lookup(State(state): State<Shared>, Path(subject): Path<String>, body: Bytes) -> Answer {
    let schema = schema_from_body(&body)?;
    let registry = lock(&state);
    let versions = registry
        .subjects
        .get(&subject)
        .ok_or_else(|| ApiError::subject_not_found(&subject))?;
    let (json, _) = parse_schema(&schema)?;
    let (index, id) = versions
        .iter()
        .enumerate()
        .find(|(_, id)| registry.stored(**id).is_some_and(|s| s.json == json))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, 40403, "Schema not found"))?;
    ok(registry.subject_schema(&subject, index + 1, *id))
}

/// The `schema` of a `{"schema": "...", "schemaType": "AVRO"}` request body.
fn schema_from_body(body: &[u8]) -> Result<String, ApiError> {
    let request: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            400,
            format!("Unrecognized request body: {e}"),
        )
    })?;
    match request.get("schemaType").and_then(Value::as_str) {
        None | Some("AVRO") => {}
        Some(other) => {
            return Err(ApiError::invalid_schema(format!(
                "schema type {other} is not supported by this registry (AVRO only)"
            )));
        }
    }
    if request
        .get("references")
        .and_then(Value::as_array)
        .is_some_and(|r| !r.is_empty())
    {
        return Err(ApiError::invalid_schema(
            "schema references are not supported by this registry",
        ));
    }
    request
        .get("schema")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid_schema("the request has no \"schema\" string"))
}

/// The schema's JSON (for identity) and parsed Avro form, or 42201.
fn parse_schema(text: &str) -> Result<(Value, Schema), ApiError> {
    let json: Value = serde_json::from_str(text).map_err(ApiError::invalid_schema)?;
    let schema = Schema::parse(&json).map_err(ApiError::invalid_schema)?;
    Ok((json, schema))
}

impl Registry {
    fn stored(&self, id: u32) -> Option<&Stored> {
        self.schemas.get((id as usize).checked_sub(1)?)
    }

    fn register(&mut self, subject: &str, text: &str) -> Result<u32, ApiError> {
        let (json, schema) = parse_schema(text)?;
        let versions = self.subjects.get(subject).cloned().unwrap_or_default();
        if let Some(id) = versions
            .iter()
            .find(|id| self.stored(**id).is_some_and(|s| s.json == json))
        {
            return Ok(*id);
        }
        let incompatible = |details: String| {
            ApiError::new(
                StatusCode::CONFLICT,
                409,
                format!(
                    "Schema being registered is incompatible with an earlier schema for \
                     subject \"{subject}\", details: [{details}]"
                ),
            )
        };
        if self.incompatible.contains(subject) {
            return Err(incompatible(
                "the subject is set to reject new schemas".into(),
            ));
        }
        if let Some(latest) = versions.last().and_then(|id| self.stored(*id)) {
            let latest = Schema::parse(&latest.json).expect("stored schemas are valid");
            // BACKWARD: the new schema must read what the latest one wrote.
            SchemaCompatibility::can_read(&latest, &schema)
                .map_err(|e| incompatible(e.to_string()))?;
        }
        let id = match self.schemas.iter().position(|s| s.json == json) {
            Some(index) => index as u32 + 1,
            None => {
                self.schemas.push(Stored {
                    text: json.to_string(),
                    json,
                });
                self.schemas.len() as u32
            }
        };
        self.subjects
            .entry(subject.to_owned())
            .or_default()
            .push(id);
        Ok(id)
    }

    /// Resolves `version` (a number, `latest` or `-1`) to (version, schema id).
    fn version(&self, subject: &str, version: &str) -> Result<(usize, u32), ApiError> {
        let versions = self
            .subjects
            .get(subject)
            .ok_or_else(|| ApiError::subject_not_found(subject))?;
        let number = match version {
            "latest" | "-1" => versions.len(),
            other => match other.parse::<i32>() {
                Ok(n) if n >= 1 => n as usize,
                _ => {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        42202,
                        format!(
                            "The specified version '{other}' is not a valid version id. \
                             Allowed values are between [1, 2^31-1] and the string \"latest\""
                        ),
                    ));
                }
            },
        };
        versions
            .get(number.wrapping_sub(1))
            .map(|id| (number, *id))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    40402,
                    format!("Version {version} not found."),
                )
            })
    }

    fn subject_schema(&self, subject: &str, version: usize, id: u32) -> Value {
        json!({
            "subject": subject,
            "version": version,
            "id": id,
            "schema": self.stored(id).expect("versions name stored ids").text,
        })
    }
}

/// Standard base64 with padding, for the `Authorization: Basic` header.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
