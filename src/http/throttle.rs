//! A cap on the log lines of refused callbacks: per reason, the first few of
//! each second are written, the rest only counted, and the next line written
//! for that reason says how many were not; when no refusal of that reason
//! comes to write it, a line of their own does ([`LineThrottle::take_unwritten`]).
//!
//! A refusal the sender must fix gets a line of its own, so that someone can
//! find the sender (see `callback::refuse`). But a sender with a wrong key, or
//! anyone who can reach the port, refuses at its own rate: CSS's thousands of
//! callbacks a second would be as many lines, drowning every other line and
//! loading the log pipeline. A few lines a second name the senders as well;
//! the metrics count every refusal.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines written per reason and second.
pub const LINES_PER_SECOND: u32 = 10;

/// The lines of each reason in the current second.
#[derive(Debug, Default)]
pub struct LineThrottle {
    /// A handful of reasons at most: a list is quicker than a map.
    reasons: Mutex<Vec<(&'static str, Second)>>,
}

#[derive(Debug)]
struct Second {
    started: Instant,
    written: u32,
    /// Lines of the reason not written since its last line.
    suppressed: u64,
}

impl LineThrottle {
    /// Whether a line of `reason` is to be written at `now`; if so, with how
    /// many lines of that reason were not written since its last one.
    pub fn allow(&self, reason: &'static str, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere; the counts are intact.
        let mut reasons = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
        let at = match reasons.iter().position(|(r, _)| *r == reason) {
            Some(at) => at,
            None => {
                let second = Second {
                    started: now,
                    written: 0,
                    suppressed: 0,
                };
                reasons.push((reason, second));
                reasons.len() - 1
            }
        };
        let second = &mut reasons[at].1;
        if now.saturating_duration_since(second.started) >= Duration::from_secs(1) {
            second.started = now;
            second.written = 0;
        }
        if second.written < LINES_PER_SECOND {
            second.written += 1;
            Some(std::mem::take(&mut second.suppressed))
        } else {
            second.suppressed += 1;
            None
        }
    }
}

impl LineThrottle {
    /// For each reason whose second is over with lines not written, how
    /// many, taken (its next line starts again from none): for a line that
    /// accounts for them when no refusal of that reason comes to say it.
    pub fn take_unwritten(&self, now: Instant) -> Vec<(&'static str, u64)> {
        let mut reasons = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
        reasons
            .iter_mut()
            .filter(|(_, second)| {
                second.suppressed > 0
                    && now.saturating_duration_since(second.started) >= Duration::from_secs(1)
            })
            .map(|(reason, second)| (*reason, std::mem::take(&mut second.suppressed)))
            .collect()
    }
}

/// Writes the lines [`LineThrottle::take_unwritten`] gives.
pub fn log_unwritten(throttle: &LineThrottle, now: Instant) {
    for (reason, suppressed) in throttle.take_unwritten(now) {
        tracing::warn!(
            reason,
            suppressed,
            "callbacks refused without a line of their own"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_lines_of_each_second_are_written_and_the_rest_counted() {
        let throttle = LineThrottle::default();
        let start = Instant::now();
        let written = (0..25)
            .filter(|_| throttle.allow("unauthorized", start).is_some())
            .count();
        assert_eq!(written, LINES_PER_SECOND as usize);
        let next_second = start + Duration::from_secs(1);
        assert_eq!(
            throttle.allow("unauthorized", next_second),
            Some(15),
            "the next line says how many were not written"
        );
        assert_eq!(throttle.allow("unauthorized", next_second), Some(0));
    }

    #[test]
    fn each_reason_has_lines_of_its_own() {
        let throttle = LineThrottle::default();
        let now = Instant::now();
        for _ in 0..LINES_PER_SECOND {
            throttle.allow("unauthorized", now);
        }
        assert_eq!(throttle.allow("unauthorized", now), None);
        assert_eq!(throttle.allow("invalid_callback", now), Some(0));
    }

    #[test]
    fn lines_not_written_are_taken_once_their_second_is_over() {
        let throttle = LineThrottle::default();
        let start = Instant::now();
        for _ in 0..LINES_PER_SECOND + 3 {
            throttle.allow("unauthorized", start);
        }
        assert!(
            throttle.take_unwritten(start).is_empty(),
            "the second goes on"
        );
        let later = start + Duration::from_secs(1);
        assert_eq!(throttle.take_unwritten(later), [("unauthorized", 3)]);
        assert!(throttle.take_unwritten(later).is_empty(), "taken once");
        assert_eq!(throttle.allow("unauthorized", later), Some(0));
    }
}
