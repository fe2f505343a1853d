//! The seam at the bottom: what a callback's records are ([`Batch`]), where they
//! go ([`Publish`]), and why they did not get there ([`PublishError`]).
//!
//! Kafka ([`crate::kafka::Publisher`]) and the spool
//! ([`crate::spool::Spooling`], Kafka first and the disk when Kafka cannot take
//! the records) implement [`Publish`]; [`crate::ingest`] depends on this module
//! alone, and [`crate::app`] composes the two. Nothing here knows either
//! transport.
//!
//! The service holds its publisher as `Arc<dyn Publish>`: one boxed future per
//! publication, against tens of microseconds of work per callback, buys a
//! request path free of generic parameters.

use futures::future::BoxFuture;
use tokio::time::Instant;

/// The records of one callback, encoded, with their message key.
#[derive(Debug, Default)]
pub struct Batch {
    /// Message key of every record: the stream id, so that one stream's errors
    /// stay in one partition, in order.
    pub key: String,
    /// Encoded records, back to back; `ends[i]` is where record `i` ends.
    pub payloads: Vec<u8>,
    pub ends: Vec<usize>,
}

impl Batch {
    /// The encoded records, in order.
    pub fn payloads(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        (0..self.ends.len()).map(|i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.payloads[start..self.ends[i]]
        })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// A refused callback to keep, with why it was refused. The body is already
/// made safe to keep (see [`crate::css::redact`]).
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// Shared by every retry of one callback.
    pub key: &'a str,
    pub body: &'a [u8],
    pub reason: &'a str,
    /// The JSON path at fault, when known.
    pub field: Option<&'a str>,
}

/// The transport's own account of a failure, kept for the message.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a batch was not published, by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The records cannot be taken now (Kafka slow, unreachable, its queue
    /// full, the producer being replaced): the same callback sent again later
    /// can succeed without anyone acting. Answered 503.
    #[error(transparent)]
    Unavailable(Cause),
    /// The records are refused until an operator acts (topic missing, not
    /// authorized, record too large). Answered 500.
    #[error(transparent)]
    Refused(Cause),
    /// The transport refuses the bridge's own identity or permissions (its
    /// credentials, its ACLs): an operator must act, but nothing is wrong with
    /// the records, and the same callback succeeds once they have. Retriable,
    /// so that the sender keeps it while they do; answered 503 and counted
    /// apart (`kafka_not_authorized`), so that an alert can name it.
    #[error(transparent)]
    NotAuthorized(Cause),
    /// Kafka could not take the records and the spool could not either (full,
    /// or its disk failed). Answered 503: the spool has room again once Kafka
    /// is back.
    #[error("Kafka could not take the records and neither could the spool: {0}")]
    SpoolUnavailable(Cause),
}

impl PublishError {
    /// Whether a later retry of the same callback can succeed: without anyone
    /// changing anything, or once an operator fixed the bridge's credentials
    /// or permissions ([`PublishError::NotAuthorized`]), which the sender's
    /// retries give them the time to do.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, Self::Refused(_))
    }
}

/// The transport's final answer on a batch handed over (see
/// [`Publish::hand_over`]).
pub type Delivery<'a> = BoxFuture<'a, Result<(), PublishError>>;

/// Where a callback's records go. The service publishes through
/// [`crate::spool::Spooling`]; tests put a stand-in here, so that every answer
/// can be tested without a broker.
pub trait Publish: Send + Sync + 'static {
    /// Sends every record of `batch`; resolves once the transport has
    /// acknowledged all of them, or with the reason it has not by `deadline`
    /// (the callback's: see [`crate::http::admission`]).
    fn publish<'a>(
        &'a self,
        batch: &'a Batch,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), PublishError>>;

    /// Hands every record of `batch` to the transport, after any wait for
    /// room, and resolves once they are handed over, with their [`Delivery`]:
    /// the transport's final answer on them, however long that takes. For the
    /// spool's drainer, which hands a window's batches over one after the
    /// other in the spool's order, awaits their deliveries together, and
    /// sends a batch again only when it has surely failed. A batch refused at
    /// once resolves with the refusal, once none of its records is left with
    /// the transport.
    fn hand_over<'a>(
        &'a self,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<Delivery<'a>, PublishError>>;

    /// Whether refused callbacks are kept (a dead-letter topic is configured).
    fn keeps_dead_letters(&self) -> bool;

    /// Writes a refused callback, with why it was refused, by `deadline` (the
    /// callback's).
    fn publish_dead_letter<'a>(
        &'a self,
        letter: DeadLetter<'a>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), PublishError>>;

    /// What the transport holds now, for the metrics.
    fn load(&self) -> Load;
}

/// What a transport holds now (see [`Publish::load`]).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Load {
    /// Records handed over and not acknowledged yet, dead letters included.
    pub queued: i32,
    /// How full the bound on what the requests may hand over at once is, 0
    /// to 1 (see [`crate::kafka::budget`]).
    pub fill: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_payloads_are_split_at_their_ends() {
        let batch = Batch {
            key: "s".into(),
            payloads: b"aabccc".to_vec(),
            ends: vec![2, 3, 6],
        };
        assert_eq!(
            batch.payloads().collect::<Vec<_>>(),
            [&b"aa"[..], b"b", b"ccc"]
        );
    }

    #[test]
    fn only_a_refusal_needs_an_operator() {
        let cause = || Cause::from("x");
        assert!(PublishError::Unavailable(cause()).is_retriable());
        assert!(PublishError::SpoolUnavailable(cause()).is_retriable());
        assert!(PublishError::NotAuthorized(cause()).is_retriable());
        assert!(!PublishError::Refused(cause()).is_retriable());
    }
}
