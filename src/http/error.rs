//! Error → response: every status the bridge answers with, in one place.
//!
//! | error                                   | status |
//! |-----------------------------------------|--------|
//! | malformed or invalid callback           | 400    |
//! | missing, wrong or expired signature     | 401    |
//! | body over the size limit                | 413    |
//! | Kafka slow, down or queue full; the     | 503 + `Retry-After` |
//! | producer failed and is being replaced   |        |
//! | ... and the spool full or failing       | 503 + `Retry-After` |
//! | Kafka refuses the bridge's credentials  | 503 + `Retry-After` |
//! | or ACLs (CSS retries while they are fixed) |     |
//! | too many callbacks in flight            | 503 + `Retry-After` |
//! | still starting (reading the spool)      | 503 + `Retry-After` |
//! | Kafka refuses permanently, or a defect  | 500    |
//! | unknown route / wrong method            | 404 / 405 |
//!
//! Bodies are JSON: `{"code": <status>, "error": <kind>, "message": <what to do>}`,
//! plus `"field"` (JSON path) for an invalid callback.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::ingest::IngestError;
use crate::publish::PublishError;

/// An error answered to the client.
#[derive(Debug)]
pub enum ApiError {
    Ingest {
        error: IngestError,
        retry_after: Duration,
    },
    /// The body could not be read: too large, or the connection failed.
    Body {
        status: StatusCode,
        message: String,
    },
    /// The in-flight limit is reached.
    Overloaded {
        retry_after: Duration,
    },
    /// The bridge is still starting: it reads its spool before it serves.
    Starting {
        retry_after: Duration,
    },
    NotFound,
    MethodNotAllowed,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u16,
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// The status and the short machine-readable kind of this error.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Ingest { error, .. } => match error {
                IngestError::Rejected { .. } => (StatusCode::BAD_REQUEST, "invalid_callback"),
                IngestError::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "unauthorized"),
                IngestError::Publish(PublishError::SpoolUnavailable(_)) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "spool_unavailable")
                }
                IngestError::Publish(PublishError::NotAuthorized(_)) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "kafka_not_authorized")
                }
                IngestError::Publish(e) if e.is_retriable() => {
                    (StatusCode::SERVICE_UNAVAILABLE, "kafka_unavailable")
                }
                IngestError::Publish(_) => (StatusCode::INTERNAL_SERVER_ERROR, "kafka_refused"),
                IngestError::SchemaNotRegistered => {
                    (StatusCode::SERVICE_UNAVAILABLE, "schema_unavailable")
                }
            },
            Self::Body { status, .. } if *status == StatusCode::PAYLOAD_TOO_LARGE => {
                (*status, "body_too_large")
            }
            Self::Body { status, .. } if *status == StatusCode::REQUEST_TIMEOUT => {
                (*status, "body_timeout")
            }
            Self::Body { status, .. } => (*status, "unreadable_body"),
            Self::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Self::Starting { .. } => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        }
    }

    /// What went wrong, in words a user can act on.
    pub fn message(&self) -> String {
        match self {
            Self::Ingest { error, .. } => error.to_string(),
            Self::Body { message, .. } => message.clone(),
            Self::Overloaded { .. } => "too many callbacks in flight; retry later".to_owned(),
            Self::Starting { .. } => {
                "the bridge is starting (reading its spool); retry later".to_owned()
            }
            Self::NotFound => "no such route; CSS callbacks go to POST /css/callback".to_owned(),
            Self::MethodNotAllowed => {
                "method not allowed on this route (see the Allow header)".to_owned()
            }
        }
    }

    /// The `stream_id` a refused body names, for its log line.
    pub fn claimed_stream_id(&self) -> Option<&str> {
        match self {
            Self::Ingest { error, .. } => error.claimed_stream_id(),
            _ => None,
        }
    }

    /// The JSON path at fault, for an invalid callback.
    fn field(&self) -> Option<&str> {
        match self {
            Self::Ingest {
                error: IngestError::Rejected { rejection, .. },
                ..
            } => rejection.field(),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Ingest { retry_after, .. }
            | Self::Overloaded { retry_after }
            | Self::Starting { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status();
        let body = ErrorBody {
            code: status.as_u16(),
            error: kind,
            message: self.message(),
            field: self.field(),
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(retry_after) = self.retry_after()
            && status == StatusCode::SERVICE_UNAVAILABLE
        {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs()),
            );
        }
        response
    }
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::css::{AuthError, Rejection};
    use crate::kafka::SendError;

    fn status_of(error: IngestError) -> (StatusCode, Option<String>) {
        let response = ApiError::Ingest {
            error,
            retry_after: Duration::from_secs(7),
        }
        .into_response();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        (response.status(), retry_after)
    }

    fn kafka(error: SendError) -> IngestError {
        IngestError::Publish(error.into())
    }

    #[test]
    fn each_error_maps_to_its_status() {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        let invalid = IngestError::Rejected {
            rejection: Rejection::missing("appid"),
            stream_id: None,
            dead_letter: None,
        };
        assert_eq!(status_of(invalid), (StatusCode::BAD_REQUEST, None));
        assert_eq!(
            status_of(IngestError::Unauthorized {
                error: AuthError::BadSignature,
                stream_id: None,
            }),
            (StatusCode::UNAUTHORIZED, None)
        );
        assert_eq!(
            status_of(kafka(SendError::Timeout(Duration::from_secs(5)))),
            (StatusCode::SERVICE_UNAVAILABLE, Some("7".into()))
        );
        assert_eq!(
            status_of(kafka(SendError::NoRoom(Duration::from_secs(5)))),
            (StatusCode::SERVICE_UNAVAILABLE, Some("7".into()))
        );
        assert_eq!(
            status_of(kafka(SendError::QueueFull)),
            (StatusCode::SERVICE_UNAVAILABLE, Some("7".into()))
        );
        let fatal = KafkaError::MessageProduction(RDKafkaErrorCode::Fatal);
        assert_eq!(
            status_of(kafka(SendError::ProducerFailed(fatal))),
            (StatusCode::SERVICE_UNAVAILABLE, Some("7".into()))
        );
        let not_authorized =
            KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed);
        assert_eq!(
            status_of(kafka(SendError::NotAuthorized(not_authorized))),
            (StatusCode::SERVICE_UNAVAILABLE, Some("7".into())),
            "CSS retries while an operator grants the ACL"
        );
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(
            status_of(kafka(SendError::Permanent(too_large))),
            (StatusCode::INTERNAL_SERVER_ERROR, None)
        );
    }

    /// One error of each kind `ApiError::status` answers.
    fn one_of_each_kind() -> Vec<ApiError> {
        let cause = || -> crate::publish::Cause { "cause".into() };
        let ingest = |error| ApiError::Ingest {
            error,
            retry_after: Duration::from_secs(5),
        };
        let body = |status| ApiError::Body {
            status,
            message: String::new(),
        };
        vec![
            ingest(IngestError::Rejected {
                rejection: Rejection::missing("appid"),
                stream_id: None,
                dead_letter: None,
            }),
            ingest(IngestError::Unauthorized {
                error: AuthError::BadSignature,
                stream_id: None,
            }),
            ingest(IngestError::Publish(
                PublishError::SpoolUnavailable(cause()),
            )),
            ingest(IngestError::Publish(PublishError::NotAuthorized(cause()))),
            ingest(IngestError::Publish(PublishError::Unavailable(cause()))),
            ingest(IngestError::Publish(PublishError::Refused(cause()))),
            ingest(IngestError::SchemaNotRegistered),
            body(StatusCode::PAYLOAD_TOO_LARGE),
            body(StatusCode::REQUEST_TIMEOUT),
            body(StatusCode::BAD_REQUEST),
            ApiError::Overloaded {
                retry_after: Duration::from_secs(5),
            },
            ApiError::Starting {
                retry_after: Duration::from_secs(5),
            },
            ApiError::NotFound,
            ApiError::MethodNotAllowed,
        ]
    }

    /// `failed_callbacks` is exposed at 0 for each kind of a 5xx answer, so
    /// that an alert sees the first of any of them.
    #[test]
    fn every_kind_of_5xx_is_a_failed_callback_reason_exposed_from_the_start() {
        for error in one_of_each_kind() {
            let (status, kind) = error.status();
            if status.is_server_error() {
                assert!(
                    crate::metrics::FAILED_CALLBACK_REASONS.contains(&kind),
                    "metrics::FAILED_CALLBACK_REASONS lacks `{kind}`"
                );
            }
        }
    }

    #[test]
    fn every_kind_answered_is_in_the_openapi_document() {
        let spec = include_str!("../../openapi.yaml");
        let enum_of_error_body = spec
            .split_once("    ErrorBody:")
            .and_then(|(_, rest)| rest.split_once("enum:"))
            .and_then(|(_, rest)| rest.split_once("message:"))
            .map(|(kinds, _)| kinds)
            .expect("openapi.yaml has ErrorBody's `error` enum");
        let listed: Vec<&str> = enum_of_error_body
            .lines()
            .filter_map(|line| line.trim().strip_prefix("- "))
            .collect();
        let answered: Vec<&str> = one_of_each_kind().iter().map(|e| e.status().1).collect();
        for kind in &answered {
            assert!(
                listed.contains(kind),
                "openapi.yaml's ErrorBody lacks `{kind}`"
            );
        }
        for kind in &listed {
            assert!(
                answered.contains(kind),
                "openapi.yaml lists `{kind}`, never answered"
            );
        }
    }
}
