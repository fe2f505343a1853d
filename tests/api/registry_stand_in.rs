//! The Schema Registry stand-in (`common/registry.rs`) answers like the
//! real one: these pin its endpoints, response shapes and error codes, so tests
//! that rely on it test against the real API.

use crate::common;

use common::registry::{CONTENT_TYPE, TestRegistry, base64};
use css_kafka_bridge::avro::SCHEMA_JSON;
use serde_json::{Value, json};

const SUBJECT: &str = "css.push-errors-value";

/// An HTTP answer, read.
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: Value,
}

async fn call(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.expect("a JSON body");
    Answer {
        status,
        content_type,
        body,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn register(registry: &TestRegistry, subject: &str, schema: &str) -> Answer {
    call(
        client()
            .post(format!("{}/subjects/{subject}/versions", registry.url()))
            .header("content-type", CONTENT_TYPE)
            .body(json!({"schema": schema, "schemaType": "AVRO"}).to_string()),
    )
    .await
}

async fn lookup(registry: &TestRegistry, subject: &str, schema: &str) -> Answer {
    call(
        client()
            .post(format!("{}/subjects/{subject}", registry.url()))
            .header("content-type", CONTENT_TYPE)
            .body(json!({"schema": schema}).to_string()),
    )
    .await
}

async fn get(registry: &TestRegistry, path: &str) -> Answer {
    call(client().get(format!("{}{path}", registry.url()))).await
}

/// The record schema with one more optional field: a compatible evolution.
fn evolved_schema() -> String {
    let mut doc: Value = serde_json::from_str(SCHEMA_JSON).unwrap();
    doc["fields"].as_array_mut().unwrap().push(json!({
        "name": "region", "type": ["null", "string"], "default": null
    }));
    doc.to_string()
}

#[tokio::test]
async fn register_then_read_back_by_id_subject_and_version() {
    let registry = TestRegistry::start().await;
    let registered = register(&registry, SUBJECT, SCHEMA_JSON).await;
    assert_eq!(registered.status, 200);
    assert_eq!(registered.content_type.as_deref(), Some(CONTENT_TYPE));
    assert_eq!(registered.body, json!({"id": 1}));

    let by_id = get(&registry, "/schemas/ids/1").await;
    assert_eq!(by_id.status, 200);
    let text = by_id.body["schema"].as_str().unwrap();
    let expected: Value = serde_json::from_str(SCHEMA_JSON).unwrap();
    assert_eq!(serde_json::from_str::<Value>(text).unwrap(), expected);
    assert_eq!(by_id.body.as_object().unwrap().len(), 1);

    assert_eq!(get(&registry, "/subjects").await.body, json!([SUBJECT]));
    assert_eq!(
        get(&registry, &format!("/subjects/{SUBJECT}/versions"))
            .await
            .body,
        json!([1])
    );
    for version in ["1", "latest", "-1"] {
        let answer = get(
            &registry,
            &format!("/subjects/{SUBJECT}/versions/{version}"),
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.body,
            json!({"subject": SUBJECT, "version": 1, "id": 1, "schema": text})
        );
    }
    let raw = get(&registry, &format!("/subjects/{SUBJECT}/versions/1/schema")).await;
    assert_eq!(raw.body, expected);
    // Clients add query parameters; they are accepted.
    assert_eq!(
        get(&registry, "/schemas/ids/1?subject=x&format=")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn same_schema_same_id_whatever_the_formatting_or_subject() {
    let registry = TestRegistry::start().await;
    assert_eq!(
        register(&registry, SUBJECT, SCHEMA_JSON).await.body,
        json!({"id": 1})
    );
    // Compact, keys reordered: the same schema.
    let doc: Value = serde_json::from_str(SCHEMA_JSON).unwrap();
    let mut reordered = serde_json::Map::new();
    for (key, value) in doc.as_object().unwrap().iter().rev() {
        reordered.insert(key.clone(), value.clone());
    }
    let compact = Value::Object(reordered).to_string();
    assert_eq!(
        register(&registry, SUBJECT, &compact).await.body,
        json!({"id": 1})
    );
    assert_eq!(registry.versions(SUBJECT), vec![1]);
    // Another subject (RecordNameStrategy): same global id, its own version 1.
    let record_subject = "css.push_error.PushErrorRecord";
    assert_eq!(
        register(&registry, record_subject, SCHEMA_JSON).await.body,
        json!({"id": 1})
    );
    assert_eq!(
        get(&registry, "/subjects").await.body,
        json!([SUBJECT, record_subject])
    );
    // A new version gets a new id and version.
    assert_eq!(
        register(&registry, SUBJECT, &evolved_schema()).await.body,
        json!({"id": 2})
    );
    assert_eq!(
        get(&registry, &format!("/subjects/{SUBJECT}/versions"))
            .await
            .body,
        json!([1, 2])
    );
    let latest = get(&registry, &format!("/subjects/{SUBJECT}/versions/latest")).await;
    assert_eq!(
        (latest.body["version"].clone(), latest.body["id"].clone()),
        (json!(2), json!(2))
    );
}

#[tokio::test]
async fn lookup_finds_the_version_or_answers_40401_or_40403() {
    let registry = TestRegistry::start().await;
    let missing = lookup(&registry, SUBJECT, SCHEMA_JSON).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.body,
        json!({"error_code": 40401, "message": format!("Subject '{SUBJECT}' not found.")})
    );

    let id = registry.register(SUBJECT, SCHEMA_JSON);
    let found = lookup(&registry, SUBJECT, SCHEMA_JSON).await;
    assert_eq!(found.status, 200);
    assert_eq!(found.body["subject"], SUBJECT);
    assert_eq!(found.body["id"], id);
    assert_eq!(found.body["version"], 1);
    assert_eq!(found.body["schema"], registry.schema(id).unwrap());

    let other = lookup(&registry, SUBJECT, &evolved_schema()).await;
    assert_eq!(other.status, 404);
    assert_eq!(other.body["error_code"], 40403);
}

#[tokio::test]
async fn not_found_and_invalid_answers_carry_registry_error_codes() {
    let registry = TestRegistry::start().await;
    let cases = [
        ("/schemas/ids/7", 404, 40403),
        ("/schemas/ids/abc", 404, 40403),
        ("/subjects/nope/versions", 404, 40401),
        ("/subjects/nope/versions/1", 404, 40401),
        ("/no/such/endpoint", 404, 404),
    ];
    for (path, status, code) in cases {
        let answer = get(&registry, path).await;
        assert_eq!(
            (answer.status, answer.body["error_code"].clone()),
            (status, json!(code)),
            "{path}"
        );
        assert!(answer.body["message"].is_string(), "{path}");
    }
    registry.register(SUBJECT, SCHEMA_JSON);
    let missing_version = get(&registry, &format!("/subjects/{SUBJECT}/versions/9")).await;
    assert_eq!(missing_version.status, 404);
    assert_eq!(missing_version.body["error_code"], 40402);
    let bad_version = get(&registry, &format!("/subjects/{SUBJECT}/versions/0")).await;
    assert_eq!(bad_version.status, 422);
    assert_eq!(bad_version.body["error_code"], 42202);
}

#[tokio::test]
async fn invalid_schemas_are_422_42201() {
    let registry = TestRegistry::start().await;
    for schema in [
        "not json",
        r#"{"type": "record", "name": "R"}"#,
        r#"{"type": "nonsense"}"#,
    ] {
        let answer = register(&registry, SUBJECT, schema).await;
        assert_eq!(answer.status, 422, "{schema}");
        assert_eq!(answer.body["error_code"], 42201, "{schema}");
    }
    let protobuf = call(
        client()
            .post(format!("{}/subjects/{SUBJECT}/versions", registry.url()))
            .body(json!({"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"}).to_string()),
    )
    .await;
    assert_eq!(protobuf.status, 422);
    assert_eq!(protobuf.body["error_code"], 42201);
    assert!(registry.versions(SUBJECT).is_empty());
}

#[tokio::test]
async fn incompatible_registrations_are_409() {
    let registry = TestRegistry::start().await;
    registry.register(SUBJECT, SCHEMA_JSON);

    // Breaks BACKWARD: a new required field that old data lacks.
    let mut doc: Value = serde_json::from_str(SCHEMA_JSON).unwrap();
    doc["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "region", "type": "string"}));
    let answer = register(&registry, SUBJECT, &doc.to_string()).await;
    assert_eq!(answer.status, 409);
    assert_eq!(answer.body["error_code"], 409);
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .starts_with("Schema being registered is incompatible with an earlier schema"),
        "{}",
        answer.body
    );

    // The knob rejects even a compatible one; an already registered schema
    // still gets its id.
    registry.set_incompatible(SUBJECT);
    assert_eq!(
        register(&registry, SUBJECT, &evolved_schema()).await.status,
        409
    );
    assert_eq!(
        register(&registry, SUBJECT, SCHEMA_JSON).await.body,
        json!({"id": 1})
    );
    // Other subjects are unaffected.
    assert_eq!(
        register(&registry, "other-value", SCHEMA_JSON).await.status,
        200
    );
}

#[tokio::test]
async fn injected_failures_answer_the_next_n_requests() {
    let registry = TestRegistry::start().await;
    registry.fail_next(2, 500);
    for _ in 0..2 {
        let answer = register(&registry, SUBJECT, SCHEMA_JSON).await;
        assert_eq!(answer.status, 500);
        assert_eq!(
            answer.body,
            json!({"error_code": 50001, "message": "Error in the backend data store"})
        );
    }
    assert_eq!(
        register(&registry, SUBJECT, SCHEMA_JSON).await.body,
        json!({"id": 1})
    );
    registry.fail_next(1, 503);
    let answer = get(&registry, "/schemas/ids/1").await;
    assert_eq!(
        (answer.status, answer.body["error_code"].clone()),
        (503, json!(50301))
    );
    assert_eq!(get(&registry, "/schemas/ids/1").await.status, 200);
    assert_eq!(registry.request_count(), 5);
    assert_eq!(
        registry.requests(),
        vec![
            format!("POST /subjects/{SUBJECT}/versions"),
            format!("POST /subjects/{SUBJECT}/versions"),
            format!("POST /subjects/{SUBJECT}/versions"),
            "GET /schemas/ids/1".to_owned(),
            "GET /schemas/ids/1".to_owned(),
        ]
    );
}

#[tokio::test]
async fn basic_auth_is_enforced_once_required() {
    let registry = TestRegistry::start().await;
    registry.require_basic_auth("bridge", "s3cret");
    let url = format!("{}/subjects", registry.url());

    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error_code"], 401);

    let wrong = call(
        client()
            .get(&url)
            .header("authorization", format!("Basic {}", base64(b"bridge:nope"))),
    )
    .await;
    assert_eq!(wrong.status, 401);

    let right = call(client().get(&url).header(
        "authorization",
        format!("Basic {}", base64(b"bridge:s3cret")),
    ))
    .await;
    assert_eq!(right.status, 200);
    assert_eq!(right.body, json!([]));
    assert_eq!(registry.request_count(), 3);
}

#[test]
fn base64_matches_the_standard_alphabet_and_padding() {
    for (input, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("user:pass", "dXNlcjpwYXNz"),
        ("\u{ff}\u{fe}", "w7/Dvg=="),
    ] {
        assert_eq!(base64(input.as_bytes()), encoded, "{input:?}");
    }
}

#[tokio::test]
async fn the_server_stops_when_dropped() {
    let registry = TestRegistry::start().await;
    let url = registry.url();
    assert_eq!(get(&registry, "/subjects").await.status, 200);
    drop(registry);
    let mut stopped = false;
    for _ in 0..50 {
        // A fresh connection each time: a pooled one may outlive the listener.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        if client.get(format!("{url}/subjects")).send().await.is_err() {
            stopped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(stopped, "the registry still answers after being dropped");
}
