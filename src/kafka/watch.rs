//! The Kafka watcher: the producer's lifecycle beside the requests. It checks
//! the topic's metadata on a timer (more often while Kafka is away) and renews
//! the producer when it cannot publish any more.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::publisher::Publisher;

/// How often Kafka metadata is checked while it is reachable...
const KAFKA_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// ...and while it is not, so that readiness comes back quickly.
const KAFKA_RECHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait for one metadata request.
const KAFKA_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Checks Kafka metadata for the topic for as long as the task lives, hands
/// each result to `checked` (readiness and the outage log, in the service), and
/// has the publisher replace a producer that cannot publish any more (see
/// [`Publisher::renew_if_stuck`]): each tick, and as soon as the producer
/// signals it ([`Publisher::renewal_due`]).
pub async fn watch(publisher: Arc<Publisher>, mut checked: impl FnMut(Result<(), &str>) + Send) {
    // Since when metadata has answered without a break; `None` while it does not.
    let mut reachable_since: Option<Instant> = None;
    loop {
        let checked_at = Instant::now();
        let check = publisher.clone();
        let result = tokio::task::spawn_blocking(move || check.check_metadata(KAFKA_CHECK_TIMEOUT))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let reachable = result.is_ok();
        reachable_since = match (reachable, reachable_since) {
            (true, None) => Some(Instant::now()),
            (true, since) => since,
            (false, _) => None,
        };
        let renewer = publisher.clone();
        let _ = tokio::task::spawn_blocking(move || renewer.renew_if_stuck(reachable_since)).await;
        checked(result.as_ref().map(drop).map_err(String::as_str));
        let interval = if reachable {
            KAFKA_CHECK_INTERVAL
        } else {
            KAFKA_RECHECK_INTERVAL
        };
        // A producer that cannot publish any more is replaced at once, not at
        // the next tick; but checked at most once per recheck interval, so
        // that a stream of refused records (each signalling) while a renewal
        // is held back by its own minimum interval does not spin this loop.
        let earliest = checked_at + KAFKA_RECHECK_INTERVAL;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = async {
                tokio::time::sleep_until(earliest.into()).await;
                publisher.renewal_due().await;
            } => {}
        }
    }
}
