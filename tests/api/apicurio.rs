//! The bridge's registry client against Apicurio Registry itself
//! (`common/apicurio.rs`), not the stand-in: the error codes the client tells
//! apart, the schema text it compares with its own, and the check that drops
//! the schema id once a rebuilt registry gives it to another schema.

use crate::common;

use std::time::Duration;

use common::apicurio::Apicurio;
use common::{TcpProxy, unique_suffix};
use css_kafka_bridge::avro::wire::SchemaId;
use css_kafka_bridge::config::{RegistryConfig, SubjectStrategy};
use css_kafka_bridge::registry::{RegistryClient, RegistryError, recheck, register};
use serde_json::{Value, json};

/// A schema that is not the bridge's.
const OTHER_SCHEMA: &str =
    r#"{"type":"record","name":"Other","fields":[{"name":"a","type":"int"}]}"#;

/// How often the client asks again here; in the service, every 5 minutes.
const CHECK_EVERY: Duration = Duration::from_millis(20);

/// The bridge's client for the registry at `url`, subject `<topic>-value`.
fn client(url: &str, topic: &str, auto_register: bool) -> RegistryClient {
    let config = RegistryConfig {
        url: Some(url.to_owned()),
        subject_strategy: SubjectStrategy::Topic,
        auto_register,
        username: None,
        password: None,
        ca_file: None,
    };
    RegistryClient::new(&config, topic).unwrap().unwrap()
}

/// A request to the registry's Confluent-compatible API, as an operator (or
/// another producer) makes it; its status and body.
async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .header("content-type", "application/vnd.schemaregistry.v1+json");
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.expect("the registry answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Registers `schema` under `subject`; its id.
async fn register_schema(url: &str, subject: &str, schema: &str) -> u32 {
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{url}/subjects/{subject}/versions"),
        Some(json!({"schema": schema, "schemaType": "AVRO"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["id"].as_u64().unwrap() as u32
}

/// Deletes `subject` softly, as an operator cleaning up does first: its
/// versions are gone from it, but their ids still name their schemas (until a
/// permanent delete, after which an id can name none).
async fn delete_subject(url: &str, subject: &str) {
    let (status, body) = call(
        reqwest::Method::DELETE,
        format!("{url}/subjects/{subject}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "DELETE {subject}: {body}");
}

fn refused_with(answer: Result<u32, RegistryError>) -> (u16, i64) {
    match answer {
        Err(RegistryError::Refused { status, code, .. }) => (status, code),
        other => panic!("expected the registry's refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn apicurio_s_answers_are_the_ones_the_client_tells_apart() {
    let registry = Apicurio::start();
    let url = registry.url();
    let topic = format!("t-{}", unique_suffix());
    let looking_up = client(url, &topic, false);
    let subject = looking_up.subject().to_owned();

    // The registry's codes for "no such subject" and "not under this
    // subject": where auto-registration is off, the check asks what the id
    // names only after one of them.
    assert_eq!(
        refused_with(looking_up.current_schema_id().await),
        (404, 40401)
    );
    let other = register_schema(url, &subject, OTHER_SCHEMA).await;
    assert_eq!(
        refused_with(looking_up.current_schema_id().await),
        (404, 40403)
    );

    // Registered once, then found by a lookup under the same id.
    let id = client(url, &topic, true)
        .current_schema_id()
        .await
        .expect("registered");
    assert_ne!(id, other);
    assert_eq!(looking_up.current_schema_id().await, Ok(id));

    // What an id names: the schema as Apicurio gives it back still compares
    // equal to the bridge's; another schema, or none, does not.
    assert_eq!(looking_up.names_the_schema(id).await, Ok(true));
    assert_eq!(looking_up.names_the_schema(other).await, Ok(false));
    assert_eq!(looking_up.names_the_schema(id + 1000).await, Ok(false));

    // The subject's compatibility level, which start-up warns about.
    let (status, body) = call(
        reqwest::Method::PUT,
        format!("{url}/config/{subject}"),
        Some(json!({"compatibility": "FULL_TRANSITIVE"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        looking_up.compatibility().await.as_deref(),
        Ok("FULL_TRANSITIVE")
    );
}

#[tokio::test]
async fn the_id_is_dropped_only_once_it_names_another_schema() {
    let [first, rebuilt]: [Apicurio; 2] = Apicurio::start_several(2).try_into().ok().unwrap();
    // The bridge reaches the registry by one address, behind which the
    // registry is rebuilt: its storage lost, other schemas registered first.
    let proxy = TcpProxy::start();
    proxy.forward_to(first.port());
    let url = format!("http://127.0.0.1:{}{}", proxy.port, first.path());
    let topic = format!("t-{}", unique_suffix());

    let id = SchemaId::default();
    register(&client(&url, &topic, true), &id).await;
    let held = id.get().expect("an id");
    let looking_up = client(&url, &topic, false);
    let subject = looking_up.subject().to_owned();

    // The subject deleted: the registry no longer has the schema under it,
    // but the id still names it, so records framed with it still read.
    delete_subject(&url, &subject).await;
    let (status, code) = refused_with(looking_up.current_schema_id().await);
    assert!(
        status == 404 && [40401, 40403].contains(&code),
        "{status} {code}"
    );
    let still_checking = tokio::time::timeout(
        Duration::from_secs(1),
        recheck(&looking_up, &id, CHECK_EVERY),
    )
    .await;
    assert!(
        still_checking.is_err(),
        "the check gave up on an id that names the schema"
    );
    assert_eq!(id.get(), Some(held));

    // Rebuilt: a fresh registry in its place, with another schema under the
    // id the bridge holds.
    let other = register_schema(rebuilt.url(), "another-value", OTHER_SCHEMA).await;
    assert_eq!(
        other, held,
        "a fresh registry gives its first schema the first id"
    );
    proxy.forward_to(rebuilt.port());
    drop(first); // its connections close with it
    tokio::time::timeout(
        Duration::from_secs(30),
        recheck(&looking_up, &id, CHECK_EVERY),
    )
    .await
    .expect("the check drops the id and returns");
    assert_eq!(id.get(), None, "records would be read with another schema");
}
