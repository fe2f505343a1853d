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

/// Turns metadata checks into what the service hears: a failed check is passed
/// on only when the one before it failed too. One request can fail while Kafka
/// is fine (a connection that died while idle, or one a healed network left
/// half-open, fails the first request sent on it; librdkafka then reconnects),
/// and taking the replica out of the Service for that would make readiness
/// flap. The failed check is retried a recheck interval later, so that a real
/// outage is declared one check later: at most the interval and a check's
/// timeout, 4 s.
#[derive(Debug, Default)]
struct Debounce {
    failed_before: bool,
}

impl Debounce {
    /// What to pass on for this check, if anything.
    fn judge<'a>(&mut self, result: Result<(), &'a str>) -> Option<Result<(), &'a str>> {
        let failed_before = std::mem::replace(&mut self.failed_before, result.is_err());
        (result.is_ok() || failed_before).then_some(result)
    }
}

/// Checks Kafka metadata for the topic for as long as the task lives, hands
/// each result to `checked` (readiness and the outage log, in the service;
/// a failure only when the check before failed too, see [`Debounce`]), and
/// has the publisher replace a producer that cannot publish any more (see
/// [`Publisher::renew_if_stuck`]): each tick, and as soon as the producer
/// signals it ([`Publisher::renewal_due`]).
pub async fn watch(publisher: Arc<Publisher>, mut checked: impl FnMut(Result<(), &str>) + Send) {
    // Since when metadata has answered without a break; `None` while it does not.
    let mut reachable_since: Option<Instant> = None;
    let mut debounce = Debounce::default();
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
        if let Some(verdict) = debounce.judge(result.as_ref().map(drop).map_err(String::as_str)) {
            checked(verdict);
        }
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

#[cfg(test)]
mod tests {
    use super::Debounce;

    #[test]
    fn one_failed_check_between_good_ones_is_not_passed_on() {
        let mut debounce = Debounce::default();
        assert_eq!(debounce.judge(Ok(())), Some(Ok(())));
        assert_eq!(debounce.judge(Err("broker transport failure")), None);
        assert_eq!(debounce.judge(Ok(())), Some(Ok(())));
    }

    #[test]
    fn the_second_failed_check_in_a_row_and_every_one_after_it_are_passed_on() {
        let mut debounce = Debounce::default();
        assert_eq!(debounce.judge(Ok(())), Some(Ok(())));
        assert_eq!(debounce.judge(Err("timed out")), None);
        assert_eq!(debounce.judge(Err("timed out")), Some(Err("timed out")));
        assert_eq!(debounce.judge(Err("refused")), Some(Err("refused")));
        assert_eq!(debounce.judge(Ok(())), Some(Ok(())));
    }

    #[test]
    fn kafka_away_at_start_up_is_declared_at_the_second_check() {
        let mut debounce = Debounce::default();
        assert_eq!(debounce.judge(Err("timed out")), None);
        assert_eq!(debounce.judge(Err("timed out")), Some(Err("timed out")));
    }
}
