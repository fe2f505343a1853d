//! Admission: how much the bridge takes on at once, decided before a
//! callback's body is read.
//!
//! Three bounds:
//!
//! - **callbacks**: at most `max_in_flight` at once, held until each is
//!   answered. Beyond it the bridge answers 503 at once: a flood of
//!   connections must not queue.
//! - **body bytes**: the bodies of those callbacks, at most
//!   `max_in_flight_body_bytes` in all, held until each is answered. A
//!   callback takes room for its body before the body is read: what it
//!   declares, up to [`FIRST_BODY_BYTES`] (all of any CSS callback); the rest
//!   of a larger body as it arrives ([`Ticket::hold_body`]); cut to its length
//!   once read. A callback beyond it *waits* for room, up to the
//!   acknowledgement deadline, and only then gets 503. Room is taken before
//!   the bytes come, so a sender that declares a body and sends it slowly
//!   holds its room until the body-read timeout: when the whole declared
//!   length was taken at once, one request declaring the largest body (the
//!   whole budget by default) stopped every other callback; now it takes a
//!   sixteenth of it until it has sent that much.
//! - **record bytes**: the encoded records of those callbacks, at most twice
//!   `--kafka-max-in-flight-bytes` in all (what the producer may hold, and as
//!   much again encoded and waiting for it), by a bound known once the body
//!   is decoded ([`Ticket::hold_records`]). A callback waits for that room
//!   *before* its records are encoded, up to its deadline: records can be
//!   thousands of times their body (each repeats its callback's texts), so a
//!   callback that waited holding them would make the body bytes no bound on
//!   memory.
//!
//! The wait for room counts against the callback's acknowledgement deadline:
//! Kafka gets what is left of it ([`Ticket::remaining`]). So the bridge's own
//! waits on a callback add up to the deadline at most (5 s by default, well
//! inside the 20 s CSS waits for an answer), whatever the load; only the
//! reading of its body, the sender's part, comes on top.
//!
//! What a callback costs in memory grows with its body: the body, the records
//! decoded from it, their Avro encoding (about twice the body for CSS's
//! callbacks: each record repeats the callback's fields; at most
//! `--kafka-max-in-flight-bytes`, see `ingest::RecordsTooLarge`), and
//! librdkafka's copy while Kafka acknowledges them. 256 callbacks of 300
//! details (36 KiB each) in flight held 120 MiB, where 256 of CSS's usual
//! bodies of 1.5 KiB hold about 20. Counting callbacks cannot tell those
//! apart; counting bytes, of the bodies and of their records, bounds the
//! memory whatever the mix. CSS's own callbacks encode to about twice their
//! body at most, so with the default limits (1 MiB of bodies, 16 MiB of
//! records) only bodies built to amplify ever wait for record bytes. Waiting
//! instead of refusing keeps load the bridge can take from being answered 503
//! (it is slowed, as a full Kafka queue would slow it).
//! Waiting *before* the read leaves a waiting body in the kernel's socket
//! buffer rather than in the process: admitted callbacks are the only ones
//! the bridge holds.
//!
//! The budget in front of librdkafka ([`crate::kafka::budget`]) stays: it also
//! bounds what the spool's drainer hands to the producer, which passes no
//! HTTP admission.

use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError};
use tokio::time::Instant;

/// The most room a body takes before its bytes arrive: more than any CSS
/// callback (the seed is 1.4 KiB, 300 details 36 KiB), a sixteenth of the
/// default budget.
pub const FIRST_BODY_BYTES: usize = 64 << 10;

/// The limits of [`Admission`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Callbacks at once; beyond it, 503 at once.
    pub callbacks: usize,
    /// Body bytes of those callbacks (at least 1).
    pub body_bytes: u32,
    /// Encoded record bytes of those callbacks (at least 1).
    pub record_bytes: u32,
    /// The most a body may declare or send: the weight of a body of unknown
    /// length.
    pub max_body_bytes: usize,
    /// The callback's acknowledgement deadline: how long it may wait for room
    /// in the body bytes, and then, with what is left, for Kafka.
    pub deadline: Duration,
}

/// What the callbacks being processed hold.
#[derive(Debug)]
pub struct Admission {
    callbacks: Semaphore,
    body_bytes: Semaphore,
    /// One body at a time grows past [`FIRST_BODY_BYTES`]: a body waits for
    /// more room while holding what it has, so two growing at once could
    /// each hold what the other waits for (and tokio's fair queue would stop
    /// every other callback behind them until their deadlines).
    growing: Semaphore,
    record_bytes: Semaphore,
    limits: Limits,
}

/// Why a callback was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    /// As many callbacks as allowed are being processed.
    Callbacks,
    /// No room in the body bytes within the wait.
    BodyBytes,
    /// No room in the record bytes by the callback's deadline.
    RecordBytes,
}

/// A callback's place, given back when dropped (when it is answered), and
/// what is left of its acknowledgement deadline.
#[derive(Debug)]
pub struct Ticket<'a> {
    admission: &'a Admission,
    _callback: SemaphorePermit<'a>,
    body: SemaphorePermit<'a>,
    /// Held from the body's first growth past its first room until it is
    /// read.
    growing: Option<SemaphorePermit<'a>>,
    records: Option<SemaphorePermit<'a>>,
    remaining: Duration,
}

impl Ticket<'_> {
    /// What is left of the callback's acknowledgement deadline after its wait
    /// for room: Kafka's share.
    pub fn remaining(&self) -> Duration {
        self.remaining
    }

    /// Holds room for `len` bytes of body in all, waiting for what it lacks
    /// within what is left of the deadline (the wait counts against it): for
    /// a body longer than [`FIRST_BODY_BYTES`], as its bytes arrive. Room
    /// beyond the whole budget is not waited for, so that any body can go in
    /// alone.
    pub async fn hold_body(&mut self, len: usize) -> Result<(), Full> {
        let held = self.body.num_permits();
        let wanted = u32::try_from(len)
            .unwrap_or(u32::MAX)
            .min(self.admission.limits.body_bytes) as usize;
        let Some(lacking) = wanted.checked_sub(held).filter(|&n| n > 0) else {
            return Ok(());
        };
        let started = Instant::now();
        let admission = self.admission;
        let growing = &mut self.growing;
        let grow = async {
            if growing.is_none() {
                *growing = Some(admission.growing.acquire().await?);
            }
            admission.body_bytes.acquire_many(lacking as u32).await
        };
        let more = tokio::time::timeout(self.remaining, grow).await;
        self.remaining = self.remaining.saturating_sub(started.elapsed());
        let more = more
            .map_err(|_| Full::BodyBytes)?
            .expect("the semaphores are never closed");
        self.body.merge(more);
        Ok(())
    }

    /// Keeps of the body's room only its length, once read: a body of
    /// unknown length took [`FIRST_BODY_BYTES`]. Another body may grow from
    /// now on.
    pub fn fit_body(&mut self, len: usize) {
        self.growing = None;
        let excess = self.body.num_permits().saturating_sub(len);
        drop(self.body.split(excess));
    }

    /// Gives back the room held for records: for a callback refused once its
    /// records were encoded (they are gone), while its dead letter is written.
    pub fn release_records(&mut self) {
        self.records = None;
    }

    /// Waits until `deadline` for room for `bytes` of encoded records, and
    /// holds it until the callback is answered. Turns come in order (tokio's
    /// semaphore is fair), so a large callback is not starved by small ones.
    pub async fn hold_records(&mut self, bytes: usize, deadline: Instant) -> Result<(), Full> {
        let weight = self.admission.record_weight(bytes);
        let room = self.admission.record_bytes.acquire_many(weight);
        let permit = tokio::time::timeout_at(deadline, room)
            .await
            .map_err(|_| Full::RecordBytes)?
            .expect("the semaphores are never closed");
        self.records = Some(permit);
        Ok(())
    }
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        let limits = Limits {
            body_bytes: limits.body_bytes.max(1),
            record_bytes: limits.record_bytes.max(1),
            ..limits
        };
        Self {
            callbacks: Semaphore::new(limits.callbacks),
            body_bytes: Semaphore::new(limits.body_bytes as usize),
            growing: Semaphore::new(1),
            record_bytes: Semaphore::new(limits.record_bytes as usize),
            limits,
        }
    }

    /// Admits a callback whose body declares `declared` bytes (`None`: a body
    /// of unknown length, weighed as the largest accepted): at once if there is
    /// room, after a wait for room in the body bytes, or not at all.
    pub async fn enter(&self, declared: Option<u64>) -> Result<Ticket<'_>, Full> {
        let callback = self.callbacks.try_acquire().map_err(|error| match error {
            TryAcquireError::NoPermits => Full::Callbacks,
            TryAcquireError::Closed => unreachable!("the semaphores are never closed"),
        })?;
        let deadline = Instant::now() + self.limits.deadline;
        let room = self.body_bytes.acquire_many(self.weight(declared));
        let body_bytes = tokio::time::timeout_at(deadline, room)
            .await
            .map_err(|_| Full::BodyBytes)?
            .expect("the semaphores are never closed");
        Ok(Ticket {
            admission: self,
            _callback: callback,
            body: body_bytes,
            growing: None,
            records: None,
            remaining: deadline.saturating_duration_since(Instant::now()),
        })
    }

    /// The body bytes a callback takes before its body is read: what its
    /// body declares (the handler refuses one that declares more than the
    /// largest body accepted before it gets here), [`FIRST_BODY_BYTES`] at
    /// most (the rest as it arrives: [`Ticket::hold_body`]), capped by the
    /// whole budget, so that any callback can go in alone.
    fn weight(&self, declared: Option<u64>) -> u32 {
        let first =
            u64::try_from(self.limits.max_body_bytes.min(FIRST_BODY_BYTES)).unwrap_or(u64::MAX);
        let bytes = declared.unwrap_or(first).min(first);
        u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .min(self.limits.body_bytes)
    }

    /// The record bytes a callback holds: its records', capped by the whole
    /// budget, so that any callback can go in alone (a callback's records are
    /// at most `--kafka-max-in-flight-bytes`: see `ingest::RecordsTooLarge`).
    fn record_weight(&self, bytes: usize) -> u32 {
        u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .min(self.limits.record_bytes)
    }

    /// Record bytes held by the callbacks being processed.
    #[cfg(test)]
    pub fn record_bytes_held(&self) -> u32 {
        self.limits.record_bytes - self.record_bytes.available_permits() as u32
    }

    /// Body bytes held by the callbacks being processed.
    #[cfg(test)]
    pub fn body_bytes_held(&self) -> u32 {
        self.limits.body_bytes - self.body_bytes.available_permits() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(callbacks: usize, body_bytes: u32) -> Admission {
        Admission::new(Limits {
            callbacks,
            body_bytes,
            record_bytes: 10_000,
            max_body_bytes: 1000,
            deadline: Duration::from_millis(50),
        })
    }

    #[tokio::test]
    async fn a_callback_holds_what_its_body_declares_until_answered() {
        let admission = admission(8, 10_000);
        let ticket = admission.enter(Some(1500)).await.unwrap();
        assert_eq!(
            admission.body_bytes_held(),
            1000,
            "capped at the largest body"
        );
        drop(ticket);
        let _ticket = admission.enter(Some(300)).await.unwrap();
        assert_eq!(admission.body_bytes_held(), 300);
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_weighs_as_the_largest_accepted_until_read() {
        let admission = admission(8, 10_000);
        let mut ticket = admission.enter(None).await.unwrap();
        assert_eq!(admission.body_bytes_held(), 1000);
        ticket.fit_body(120);
        assert_eq!(admission.body_bytes_held(), 120, "its length once read");
    }

    /// Bodies larger than the first room: a million bytes declared, a budget
    /// of twice that.
    fn admission_of_large_bodies(body_bytes: u32) -> Admission {
        Admission::new(Limits {
            callbacks: 8,
            body_bytes,
            record_bytes: 10_000,
            max_body_bytes: 1 << 20,
            deadline: Duration::from_millis(50),
        })
    }

    #[tokio::test]
    async fn a_large_body_takes_its_first_bytes_at_once_and_the_rest_as_it_arrives() {
        let admission = admission_of_large_bodies(2 << 20);
        let mut ticket = admission.enter(Some(1 << 20)).await.unwrap();
        assert_eq!(admission.body_bytes_held(), FIRST_BODY_BYTES as u32);
        ticket.hold_body(100_000).await.unwrap();
        assert_eq!(admission.body_bytes_held(), 100_000);
        ticket.hold_body(50_000).await.unwrap();
        assert_eq!(admission.body_bytes_held(), 100_000, "never less");
        ticket.fit_body(90_000);
        assert_eq!(admission.body_bytes_held(), 90_000);
    }

    #[tokio::test]
    async fn a_large_body_sent_slowly_leaves_room_for_the_others() {
        let admission = admission_of_large_bodies(128 << 10);
        let _slow = admission.enter(Some(1 << 20)).await.unwrap();
        let other = admission.enter(Some(60 << 10)).await;
        assert!(other.is_ok(), "admitted at once beside it");
    }

    #[tokio::test]
    async fn one_body_grows_at_a_time() {
        let admission = admission_of_large_bodies(1 << 20);
        let mut first = admission.enter(Some(700 << 10)).await.unwrap();
        let mut second = admission.enter(Some(700 << 10)).await.unwrap();
        first.hold_body(512 << 10).await.unwrap();
        // The second waits to grow until the first is read, instead of
        // taking room the first needs and waiting for the first's.
        let second_grows = second.hold_body(512 << 10);
        let first_is_read = async {
            first.hold_body(700 << 10).await.unwrap();
            first.fit_body(700 << 10);
            drop(first);
        };
        let (grown, ()) = tokio::join!(second_grows, first_is_read);
        assert_eq!(grown, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn room_for_the_rest_of_a_body_is_waited_for_within_the_deadline() {
        let admission = admission_of_large_bodies(100_000);
        let mut ticket = admission.enter(Some(1 << 20)).await.unwrap();
        let _other = admission.enter(Some(30_000)).await.unwrap();
        assert_eq!(ticket.hold_body(100_000).await, Err(Full::BodyBytes));
        assert_eq!(ticket.remaining(), Duration::ZERO, "the wait used it up");
    }

    // On paused time (as the other waits below): a timer fires only once
    // nothing else can run, so a loaded machine cannot reorder the release
    // and the deadline.
    #[tokio::test(start_paused = true)]
    async fn beyond_the_callbacks_limit_the_answer_is_immediate() {
        let admission = admission(1, 10_000);
        let _held = admission.enter(Some(10)).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(
            admission.enter(Some(10)).await.unwrap_err(),
            Full::Callbacks
        );
        assert_eq!(started.elapsed(), Duration::ZERO, "no wait");
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_the_body_bytes_a_callback_waits_for_room() {
        let admission = admission(8, 1000);
        let held = admission.enter(Some(800)).await.unwrap();
        let waiting = admission.enter(Some(400));
        let release = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(held);
        };
        let (admitted, ()) = tokio::join!(waiting, release);
        assert!(admitted.is_ok(), "admitted once room was given back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_callback_that_finds_no_room_within_the_wait_is_refused() {
        let admission = admission(8, 1000);
        let _held = admission.enter(Some(800)).await.unwrap();
        assert_eq!(
            admission.enter(Some(400)).await.unwrap_err(),
            Full::BodyBytes
        );
        let _ticket = admission.enter(Some(200)).await.unwrap();
    }

    #[tokio::test]
    async fn a_body_larger_than_the_budget_goes_in_alone() {
        let admission = admission(8, 500);
        let _ticket = admission.enter(Some(900)).await.unwrap();
        assert_eq!(admission.body_bytes_held(), 500);
    }

    #[tokio::test]
    async fn records_with_room_are_held_at_once_until_answered() {
        let admission = admission(8, 10_000);
        let mut ticket = admission.enter(Some(100)).await.unwrap();
        ticket.hold_records(6_000, Instant::now()).await.unwrap();
        assert_eq!(admission.record_bytes_held(), 6_000);
        drop(ticket);
        assert_eq!(admission.record_bytes_held(), 0);
    }

    #[tokio::test]
    async fn records_without_room_wait_for_it_until_the_deadline() {
        let admission = admission(8, 10_000);
        let mut first = admission.enter(Some(100)).await.unwrap();
        first.hold_records(6_000, Instant::now()).await.unwrap();
        let mut second = admission.enter(Some(100)).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(
            second.hold_records(6_000, soon).await.unwrap_err(),
            Full::RecordBytes
        );
        let release = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(first);
        };
        let later = Instant::now() + Duration::from_secs(5);
        let (held, ()) = tokio::join!(second.hold_records(6_000, later), release);
        assert!(held.is_ok(), "held once room was given back");
        assert_eq!(admission.record_bytes_held(), 6_000);
    }

    #[tokio::test]
    async fn room_for_records_can_be_given_back_before_the_answer() {
        let admission = admission(8, 10_000);
        let mut ticket = admission.enter(Some(100)).await.unwrap();
        ticket.hold_records(6_000, Instant::now()).await.unwrap();
        ticket.release_records();
        assert_eq!(admission.record_bytes_held(), 0);
    }

    #[tokio::test]
    async fn records_larger_than_the_budget_go_in_alone() {
        let admission = admission(8, 10_000);
        let mut ticket = admission.enter(Some(100)).await.unwrap();
        ticket.hold_records(50_000, Instant::now()).await.unwrap();
        assert_eq!(admission.record_bytes_held(), 10_000);
    }
}
