//! The domain model: a push error callback that passed validation, borrowing
//! its strings from the body. Built only by [`super::validate`], so that
//! whatever holds one holds a valid callback.

use std::borrow::Cow;

/// A push error callback (`event_type` 321) that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct PushErrorCallback<'a> {
    pub appid: i64,
    pub stream_id: Cow<'a, str>,
    /// `data_time`: when CSS produced the callback, Unix milliseconds.
    pub report_time_ms: i64,
    pub report_interval_ms: Option<i64>,
    pub domain: Option<Cow<'a, str>>,
    pub path: Option<Cow<'a, str>>,
    pub sequence: Option<Cow<'a, str>>,
    pub user_ip: Option<Cow<'a, str>>,
    /// Query parameters of the push URL (`stream_param`), URL-decoded, in their
    /// original order, with the `txSecret` auth token already removed.
    pub stream_params: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub abnormal_events: Vec<AbnormalEvent<'a>>,
}

/// One validated error group.
#[derive(Debug, Clone, PartialEq)]
pub struct AbnormalEvent<'a> {
    pub error_type: i32,
    pub count: i64,
    pub type_desc_en: Option<Cow<'a, str>>,
    pub type_desc_cn: Option<Cow<'a, str>>,
    pub event_key: Option<Cow<'a, str>>,
    pub details: Vec<ErrorDetail<'a>>,
}

/// One validated occurrence of an error.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorDetail<'a> {
    pub desc: Option<Cow<'a, str>>,
    pub occur_time_ms: i64,
}
