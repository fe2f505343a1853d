//! A bound on what the producer holds for the requests: records and payload
//! bytes enqueued and not yet acknowledged.
//!
//! The in-flight request limit bounds callbacks, not what they weigh: 256
//! callbacks of 300 details are 76,800 records in librdkafka's queue, each with
//! its own copy, headers and bookkeeping, where 256 of CSS's usual few details
//! are about a thousand. librdkafka's own bound (`queue.buffering.max.kbytes`)
//! answers a full queue with an error, which the bridge can only turn into a
//! 503. This budget comes first and makes a request *wait* for room instead,
//! within its acknowledgement deadline: load the bridge can take is slowed, not
//! refused, and memory stays bounded by the budget, not by the body sizes.
//!
//! Batches wait in turn (tokio's semaphore is fair), so a big callback is not
//! starved by small ones; a batch larger than the whole budget takes all of it.
//!
//! A batch's room goes with its records, not with its request: it is given
//! back once librdkafka has reported every record, delivered or failed, and
//! the request is done with it (see [`super::delivery::Acknowledgement`]). A
//! request answered at its deadline during an outage leaves its records in
//! librdkafka for up to `message.timeout.ms`; were its room given back then,
//! what librdkafka holds would be bounded only by its own queue, a multiple
//! of the budget.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Records and payload bytes the producer may hold for requests at once.
#[derive(Debug)]
pub struct InFlightBudget {
    records: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_records: u32,
    max_bytes: u32,
}

/// Room for one batch, given back when dropped: once every record of the batch
/// is reported and its request is done.
#[derive(Debug)]
pub struct Room {
    _records: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    /// Room in a second budget the batch also needed (see [`Self::within`]).
    _within: Option<Box<Room>>,
}

impl Room {
    /// This room, holding `share` too until both are given back: for a batch
    /// that takes room in a smaller budget of its kind before the shared one.
    pub fn within(self, share: Room) -> Room {
        Room {
            _within: Some(Box::new(share)),
            ..self
        }
    }
}

impl InFlightBudget {
    /// A budget of `max_records` records and `max_bytes` payload bytes (each
    /// at least 1).
    pub fn new(max_records: u32, max_bytes: u32) -> Self {
        let (max_records, max_bytes) = (max_records.max(1), max_bytes.max(1));
        Self {
            records: Arc::new(Semaphore::new(max_records as usize)),
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            max_records,
            max_bytes,
        }
    }

    /// Waits until the producer has room for `records` records of `bytes`
    /// payload bytes in all.
    pub async fn room_for(&self, records: usize, bytes: usize) -> Room {
        // At least one of each: a request for none would take its room at
        // once, ahead of the batches waiting in turn.
        let clamp = |n: usize, max: u32| u32::try_from(n).unwrap_or(u32::MAX).clamp(1, max);
        // Always records first, then bytes: one order, so no two batches can
        // each hold what the other waits for.
        let records = (self.records.clone()).acquire_many_owned(clamp(records, self.max_records));
        let records = records
            .await
            .expect("the budget's semaphores are never closed");
        let bytes = (self.bytes.clone()).acquire_many_owned(clamp(bytes, self.max_bytes));
        let bytes = bytes
            .await
            .expect("the budget's semaphores are never closed");
        Room {
            _records: records,
            _bytes: bytes,
            _within: None,
        }
    }

    /// How full the budget is, 0 to 1: the fuller of its records and bytes.
    /// Near 1, batches wait for room; held high, Kafka takes records more
    /// slowly than they come (or the spool's drainer keeps it fed).
    pub fn fill(&self) -> f64 {
        let fill = |free: &Semaphore, max: u32| {
            f64::from(max.saturating_sub(free.available_permits() as u32)) / f64::from(max)
        };
        fill(&self.records, self.max_records).max(fill(&self.bytes, self.max_bytes))
    }

    /// Records currently held.
    #[cfg(test)]
    fn records_held(&self) -> u32 {
        self.max_records - self.records.available_permits() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Whether `future` is still pending after a while.
    async fn waits(future: impl Future) -> bool {
        tokio::time::timeout(Duration::from_millis(20), future)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn batches_within_the_budget_go_at_once() {
        let budget = InFlightBudget::new(10, 1000);
        let _a = budget.room_for(4, 400).await;
        let _b = budget.room_for(6, 600).await;
        assert_eq!(budget.records_held(), 10);
    }

    #[tokio::test]
    async fn a_batch_waits_for_room_in_records_and_in_bytes() {
        let budget = InFlightBudget::new(10, 1000);
        let held = budget.room_for(8, 100).await;
        assert!(waits(budget.room_for(3, 10)).await, "records");
        drop(held);
        let held = budget.room_for(1, 900).await;
        assert!(waits(budget.room_for(1, 200)).await, "bytes");
        drop(held);
        assert!(!waits(budget.room_for(3, 200)).await);
    }

    #[tokio::test]
    async fn room_is_given_back_when_dropped() {
        let budget = InFlightBudget::new(10, 1000);
        drop(budget.room_for(10, 1000).await);
        assert_eq!(budget.records_held(), 0);
    }

    #[tokio::test]
    async fn its_fill_is_the_fuller_of_records_and_bytes() {
        let budget = InFlightBudget::new(10, 1000);
        assert_eq!(budget.fill(), 0.0);
        let few_records_many_bytes = budget.room_for(2, 800).await;
        assert_eq!(budget.fill(), 0.8);
        drop(few_records_many_bytes);
        let _many_records_few_bytes = budget.room_for(9, 100).await;
        assert_eq!(budget.fill(), 0.9);
    }

    #[tokio::test]
    async fn a_batch_bigger_than_the_budget_takes_all_of_it() {
        let budget = InFlightBudget::new(10, 1000);
        let _all = budget.room_for(300, 60_000).await;
        assert_eq!(budget.records_held(), 10);
    }
}
