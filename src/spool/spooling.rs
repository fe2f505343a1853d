//! The routing policy between Kafka and the spool.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::Spool;
use crate::publish::{Batch, DeadLetter, Delivery, Load, Publish, PublishError};

/// The service's [`Publish`]: Kafka directly, and the spool when Kafka cannot
/// take the records (see the module docs). Without a spool it is Kafka alone.
pub struct Spooling {
    kafka: Arc<dyn Publish>,
    spool: Option<Arc<Spool>>,
}

impl Spooling {
    /// Publishes to `kafka`, and to `spool` (when there is one) what Kafka
    /// cannot take.
    pub fn new(kafka: Arc<dyn Publish>, spool: Option<Arc<Spool>>) -> Self {
        Self { kafka, spool }
    }

    /// Kafka while the spool is empty; the spool when Kafka cannot take the
    /// records by `deadline`, or for now, and while it holds any (so that one
    /// stream's records stay in order), unless it empties within a moment
    /// (see [`Spool::hand_back`]).
    async fn route(&self, batch: &Batch, deadline: Instant) -> Result<(), PublishError> {
        let Some(spool) = &self.spool else {
            return self.kafka.publish(batch, deadline).await;
        };
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
        spool
            .append(batch)
            .await
            .map_err(|error| PublishError::SpoolUnavailable(Box::new(error)))
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
