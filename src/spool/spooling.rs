//! The routing policy between Kafka and the spool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{Spool, SpoolError};
use crate::config::SPOOL_WRITE_TIMEOUT;
use crate::publish::{Batch, DeadLetter, Delivery, Load, Publish, PublishError};

/// The service's [`Publish`]: Kafka directly, and the spool when Kafka cannot
/// take the records (see the module docs). Without a spool it is Kafka alone.
pub struct Spooling {
    kafka: Arc<dyn Publish>,
    spool: Option<Arc<Spool>>,
    turns: StreamTurns,
}

impl Spooling {
    /// Publishes to `kafka`, and to `spool` (when there is one) what Kafka
    /// cannot take.
    pub fn new(kafka: Arc<dyn Publish>, spool: Option<Arc<Spool>>) -> Self {
        Self {
            kafka,
            spool,
            turns: StreamTurns::default(),
        }
    }

    /// Kafka while the spool is empty; the spool when Kafka cannot take the
    /// records by `deadline`, or for now, and while it holds any (so that one
    /// stream's records stay in order), unless it empties within a moment
    /// (see [`Spool::hand_back`]).
    async fn route(&self, batch: &Batch, deadline: Instant) -> Result<(), PublishError> {
        let Some(spool) = &self.spool else {
            return self.kafka.publish(batch, deadline).await;
        };
        // The latest the callback is answered: its deadline, then one spool
        // write. Within the 20 s CSS waits (see `MAX_ACK_TIMEOUT_MS_WITH_SPOOL`)
        // also when it waits behind earlier callbacks of its stream.
        let answer_by = deadline + SPOOL_WRITE_TIMEOUT;
        let unavailable = |error| PublishError::SpoolUnavailable(Box::new(error));
        // While the spool is in use, one stream's callbacks are routed one
        // at a time, in the order they came: two that wait for the same
        // hand-back must not reach Kafka (or the spool) the other way round.
        let turn = match spool.holds_records() {
            true => match tokio::time::timeout_at(answer_by, self.turns.take(&batch.key)).await {
                Ok(turn) => Some(turn),
                Err(_) => return Err(unavailable(SpoolError::TooLate)),
            },
            false => None,
        };
        // Its turn came after its deadline, behind earlier callbacks of its
        // stream on a disk that stalls: to the spool at once, with what is
        // left of one write's bound.
        if turn.is_some() && Instant::now() >= deadline {
            return spool.append_by(batch, answer_by).await.map_err(unavailable);
        }
        spool.hand_back(deadline).await;
        if !spool.holds_records() {
            match self.kafka.publish(batch, deadline).await {
                Ok(()) => return Ok(()),
                Err(error) if !error.is_retriable() => return Err(error),
                Err(error) => {
                    tracing::debug!(%error, "Kafka did not take the records: spooling them")
                }
            }
        }
        spool.append(batch).await.map_err(unavailable)
    }
}

impl Publish for Spooling {
    fn publish<'a>(
        &'a self,
        batch: &'a Batch,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(self.route(batch, deadline))
    }

    /// To Kafka (the spool's drainer asks Kafka itself).
    fn hand_over<'a>(
        &'a self,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<Delivery<'a>, PublishError>> {
        self.kafka.hand_over(batch)
    }

    fn keeps_dead_letters(&self) -> bool {
        self.kafka.keeps_dead_letters()
    }

    fn publish_dead_letter<'a>(
        &'a self,
        letter: DeadLetter<'a>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        self.kafka.publish_dead_letter(letter, deadline)
    }

    fn load(&self) -> Load {
        self.kafka.load()
    }
}

/// A turn per stream: callbacks of one stream take theirs in the order they
/// come (tokio's mutex is fair) and hold it until routed. An entry lives as
/// long as some callback of its stream holds or waits for a turn: each counts
/// itself in, and out when its [`Turn`] is dropped (also while it waits, its
/// client gone), both under the map's lock.
#[derive(Default)]
struct StreamTurns {
    streams: Mutex<HashMap<String, StreamTurn>>,
}

/// A stream's lock, and the callbacks that hold or wait for it.
#[derive(Default)]
struct StreamTurn {
    lock: Arc<tokio::sync::Mutex<()>>,
    callbacks: usize,
}

impl StreamTurns {
    async fn take(&self, stream: &str) -> Turn<'_> {
        let lock = {
            let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            let turn = streams.entry(stream.to_owned()).or_default();
            turn.callbacks += 1;
            turn.lock.clone()
        };
        // Counted in before the wait, so that a callback dropped while it
        // waits counts itself out.
        let mut taken = Turn {
            turns: self,
            stream: stream.to_owned(),
            held: None,
        };
        taken.held = Some(lock.lock_owned().await);
        taken
    }
}

/// A stream's turn, held (or waited for) until dropped.
struct Turn<'a> {
    turns: &'a StreamTurns,
    stream: String,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut streams = (self.turns.streams.lock()).unwrap_or_else(|e| e.into_inner());
        if let Some(turn) = streams.get_mut(&self.stream) {
            turn.callbacks -= 1;
            if turn.callbacks == 0 {
                streams.remove(&self.stream);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_s_entry_goes_with_its_last_callback() {
        let turns = StreamTurns::default();
        let first = turns.take("stream").await;
        let mut second = std::pin::pin!(turns.take("stream"));
        assert!(futures::poll!(&mut second).is_pending(), "waits its turn");
        drop(first);
        assert_eq!(turns.streams.lock().unwrap().len(), 1, "the second's turn");
        let second = second.await;
        drop(second);
        assert!(turns.streams.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_callback_dropped_while_it_waits_for_its_turn_leaves_no_entry() {
        let turns = StreamTurns::default();
        let first = turns.take("stream").await;
        {
            let mut waiting = std::pin::pin!(turns.take("stream"));
            assert!(futures::poll!(&mut waiting).is_pending());
            // The turn passes to the waiting callback, whose client is gone
            // before it takes it.
            drop(first);
        }
        assert!(turns.streams.lock().unwrap().is_empty());
    }
}
