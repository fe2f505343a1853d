//! The durable spool: when Kafka cannot acknowledge a callback, its records are
//! made durable on local disk instead, the callback is answered 200, and a
//! drainer publishes them once Kafka is back.
//!
//! Without a spool the bridge answers 503 and relies on CSS's retries, which end
//! after about 12 minutes; a longer Kafka outage would lose callbacks. With one:
//!
//! - [`Spooling`] is the [`Publish`](crate::publish::Publish) the service uses: Kafka first, as before;
//!   when Kafka does not acknowledge within the deadline (or refuses for now),
//!   the same encoded records go to the spool and the answer waits for their
//!   fsync. While the spool holds anything, new callbacks go to it directly, so
//!   that one stream's records reach Kafka in the order they came.
//! - [`Spool`] owns the files ([`log`]): one writer thread appends the frames of
//!   every callback waiting at that moment and syncs once for all of them (group
//!   commit), and refuses what would take the spool past its size limit (503).
//!   A spool holds records of one schema only ([`schema`]).
//! - [`drain`] publishes the spool front to back through the same idempotent
//!   producer, releases segments once Kafka has acknowledged all of their
//!   records, and so hands back to the direct path when the spool is empty.
//!
//! A record may reach Kafka twice (a crash between Kafka's acknowledgement and
//! the release, at most one drain window; a direct attempt that Kafka stored
//! after the deadline), never zero times once answered 200: consumers drop
//! duplicates by `event_id`.

mod cursor;
pub mod drain;
mod error;
mod frame;
pub mod log;
pub mod losses;
mod reader;
mod schema;
mod spooling;
mod store;
mod writer;

pub use error::{
    NoSpool, SpoolError, SpoolFramingMismatch, SpoolInUse, SpoolReadError, SpoolSchemaMismatch,
};
pub use schema::SCHEMA_FILE;
pub use spooling::Spooling;
pub use store::{ReleasedCounts, SEGMENT_BYTES, Spool};

/// Refuses a directory that holds no spool (see [`NoSpool`]): for `spool
/// drain`, which must not open (and so create) one where there was none.
pub fn existing(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let cannot_read = || format!("cannot read {}", dir.display());
    let has_schema = dir
        .join(SCHEMA_FILE)
        .try_exists()
        .with_context(cannot_read)?;
    if has_schema || (dir.is_dir() && !log::segment_ids(dir).with_context(cannot_read)?.is_empty())
    {
        return Ok(());
    }
    Err(NoSpool(dir.to_owned()).into())
}

#[cfg(test)]
mod tests {
    use super::drain::{Drained, Until, drain};
    use super::*;
    use crate::config::SPOOL_WRITE_TIMEOUT;
    use crate::kafka::SendError;
    use crate::metrics::Metrics;
    use crate::publish::{Batch, DeadLetter, Delivery, Load, Publish, PublishError};
    use futures::future::BoxFuture;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::time::Instant;

    /// The rest of `Publish` for the spool's stand-ins: the drainer neither
    /// keeps dead letters nor reads their load.
    macro_rules! keeps_no_dead_letters_and_holds_nothing {
        () => {
            fn keeps_dead_letters(&self) -> bool {
                false
            }

            fn publish_dead_letter<'a>(
                &'a self,
                _: DeadLetter<'a>,
                _: Instant,
            ) -> BoxFuture<'a, Result<(), PublishError>> {
                Box::pin(std::future::ready(Ok(())))
            }

            fn load(&self) -> Load {
                Load::default()
            }
        };
    }

    /// `Publish::publish` for the stand-ins only the drainer calls, through
    /// `hand_over`.
    macro_rules! only_the_drainer_publishes {
        () => {
            fn publish<'a>(
                &'a self,
                _: &'a Batch,
                _: Instant,
            ) -> BoxFuture<'a, Result<(), PublishError>> {
                unreachable!("only the drainer publishes here")
            }
        };
    }

    /// Kafka as the spool's tests need it: takes batches (keeping their keys)
    /// or, while `down`, refuses them for now; refuses for good the batches
    /// keyed `refuses`.
    #[derive(Default)]
    struct StandIn {
        down: AtomicBool,
        refuses: Option<&'static str>,
        published: Mutex<Vec<String>>,
        /// The records' bytes, back to back.
        payloads: Mutex<Vec<u8>>,
    }

    impl StandIn {
        fn take(&self, batch: &Batch) -> Result<(), PublishError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(timed_out());
            }
            if self.refuses == Some(batch.key.as_str()) {
                return Err(too_large());
            }
            self.published.lock().unwrap().push(batch.key.clone());
            self.payloads.lock().unwrap().extend(&batch.payloads);
            Ok(())
        }
    }

    impl Publish for StandIn {
        fn publish<'a>(
            &'a self,
            batch: &'a Batch,
            _: Instant,
        ) -> BoxFuture<'a, Result<(), PublishError>> {
            Box::pin(std::future::ready(self.take(batch)))
        }

        fn hand_over<'a>(
            &'a self,
            batch: &'a Batch,
        ) -> BoxFuture<'a, Result<Delivery<'a>, PublishError>> {
            handed(std::future::ready(self.take(batch)))
        }

        keeps_no_dead_letters_and_holds_nothing!();
    }

    /// A batch handed over at once, its delivery to come from `delivery`.
    fn handed<'a>(
        delivery: impl Future<Output = Result<(), PublishError>> + Send + 'a,
    ) -> BoxFuture<'a, Result<Delivery<'a>, PublishError>> {
        let delivery: Delivery<'a> = Box::pin(delivery);
        Box::pin(std::future::ready(Ok(delivery)))
    }

    /// A spool of its own holding one batch of one record under each key, in
    /// order; it lives as long as the directory returned with it.
    async fn spool_holding(keys: &[impl AsRef<str>]) -> (tempfile::TempDir, Arc<Spool>) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
        for key in keys {
            spool.append(&batch(key.as_ref())).await.unwrap();
        }
        (dir, spool)
    }

    /// The service's drainer, running until told to stop (and the spool is
    /// empty).
    fn service_drainer(
        spool: &Arc<Spool>,
        kafka: Arc<dyn Publish>,
    ) -> (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<Drained>,
    ) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let drainer = tokio::spawn(drain(spool.clone(), kafka, Until::Stopped(stopped), None));
        (stop, drainer)
    }

    /// A callback's deadline, for stand-ins that answer at once.
    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn timed_out() -> PublishError {
        SendError::Timeout(Duration::from_millis(1)).into()
    }

    fn too_large() -> PublishError {
        let error = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        SendError::Permanent(error).into()
    }

    fn batch(key: &str) -> Batch {
        Batch {
            key: key.into(),
            payloads: b"one record".to_vec(),
            ends: vec![10],
        }
    }

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(crate::http::CALLBACK_PATH))
    }

    /// A callback whose client went away (or that gave up on a stalled
    /// disk) was never answered 200: its frame is not written, and until the
    /// writer has dropped it the spool counts as in use, so that a later
    /// callback of its stream cannot reach Kafka before a frame that might
    /// still be written.
    #[tokio::test]
    async fn an_append_whose_caller_went_away_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
        spool.stall_writes_for_test(Duration::from_millis(200));
        let batch = batch("s");
        let mut appending = Box::pin(spool.append(&batch));
        assert!(
            futures::poll!(&mut appending).is_pending(),
            "with the writer"
        );
        drop(appending);
        assert!(spool.holds_records());
        let dropped = Instant::now() + Duration::from_secs(5);
        while spool.holds_records() {
            assert!(Instant::now() < dropped, "the writer takes it");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!((spool.records(), spool.bytes()), (0, 0), "nothing written");
    }

    /// The end of shutdown closes the spool before its last line counts
    /// what is left: an append sent before is written and counted, one
    /// after is refused (503), so the count is what the volume holds.
    #[tokio::test]
    async fn once_closed_the_spool_answers_no_append_and_its_count_is_final() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
        spool.stall_writes_for_test(Duration::from_millis(200));
        let before = batch("before");
        let mut appending = Box::pin(spool.append(&before));
        assert!(
            futures::poll!(&mut appending).is_pending(),
            "with the writer"
        );

        assert!(spool.close(Duration::from_secs(5)).await);
        assert_eq!(spool.records(), 1, "counted once closed");
        appending.await.expect("written: sent before the close");
        let after = spool.append(&batch("after")).await.unwrap_err();
        assert!(matches!(after, SpoolError::Closed), "{after}");
        assert_eq!(spool.records(), 1);
    }

    #[tokio::test]
    async fn a_write_the_disk_does_not_complete_in_time_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
        spool.stall_writes_for_test(Duration::from_secs(5));
        let error = spool.append(&batch("s")).await.unwrap_err();
        assert!(matches!(error, SpoolError::Slow(_)), "{error}");
        assert!(spool.cannot_write());
    }

    /// A callback whose write was taken and then outlasted its bound on a
    /// stalled disk was answered 503: not counted as answered 200 from the
    /// spool, though its records, written, are drained all the same.
    #[tokio::test]
    async fn a_write_that_ends_after_its_caller_gave_up_is_not_counted_as_answered() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = metrics();
        let spool = Spool::open(dir.path(), 1 << 20, metrics.clone()).unwrap();
        // The writer busy, the append and a long stall then come in one round:
        // both are sent before the first stall can end, however late this
        // test runs; the append gives up during the second.
        spool.stall_writes_for_test(Duration::from_secs(1));
        let batch = batch("s");
        let mut appended = Box::pin(spool.append(&batch));
        assert!(futures::poll!(&mut appended).is_pending(), "sent");
        spool.stall_writes_for_test(Duration::from_secs(4));
        let error = appended.await;
        assert!(matches!(error, Err(SpoolError::Slow(_))), "{error:?}");
        // The writer answers in order: once a later append is answered, the
        // first one's round is over.
        spool.append(&batch).await.expect("the disk is back");
        assert_eq!(spool.records(), 2, "both written");
        // An append is counted just after its answer is sent: closing waits
        // for the writer's round, and its count, to end.
        assert!(spool.close(Duration::from_secs(5)).await);
        let text = metrics.encode();
        assert!(text.contains("css_bridge_spool_appends_total 1"), "{text}");
    }

    /// On a disk that stalls, the frames waiting for the writer are bounded
    /// in bytes too: callbacks that gave up on it leave their frames queued.
    #[tokio::test]
    async fn on_a_stalled_disk_the_frames_waiting_are_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
        spool.stall_writes_for_test(Duration::from_secs(5));
        let large = |key: &str| Batch {
            key: key.into(),
            payloads: vec![b'r'; 40 << 20],
            ends: vec![40 << 20],
        };
        let first = large("first");
        let mut waiting = Box::pin(spool.append(&first));
        assert!(
            futures::poll!(&mut waiting).is_pending(),
            "one alone may be large"
        );
        let started = Instant::now();
        let error = spool.append(&large("second")).await.unwrap_err();
        assert!(matches!(error, SpoolError::Backlog { .. }), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once"
        );
    }

    /// On a disk that stalls, a callback that waited behind an earlier one of
    /// its stream past its deadline is still answered by its deadline and one
    /// write bound, not after the earlier one's write bound and then its own:
    /// CSS would have stopped waiting. One that runs out of time while it
    /// waits for its turn is answered then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn behind_its_stream_on_a_stalled_disk_a_callback_is_answered_in_time() {
        let (_dir, spool) = spool_holding(&["spooled"]).await;
        let kafka = Arc::new(StandIn::default());
        let spooling = Arc::new(Spooling::new(kafka, Some(spool.clone())));
        spool.stall_writes_for_test(Duration::from_secs(5));
        let start = Instant::now();
        let callback = |deadline| {
            let spooling = spooling.clone();
            tokio::spawn(async move {
                let answer = spooling.publish(&batch("stream"), deadline).await;
                (answer, Instant::now())
            })
        };
        let too_late = |answer: &Result<(), PublishError>| match answer {
            Err(PublishError::SpoolUnavailable(cause)) => {
                matches!(cause.downcast_ref(), Some(SpoolError::TooLate))
            }
            _ => false,
        };
        let first = callback(start + Duration::from_millis(1000));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second_deadline = start + Duration::from_millis(1100);
        let second = callback(second_deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let third_deadline = start + Duration::from_millis(200);
        let third = callback(third_deadline);

        let (first, _) = first.await.unwrap();
        assert!(first.is_err(), "the first one's write stalled");
        assert!(spool.cannot_write(), "the whole write bound, not done");
        let (second, answered) = second.await.unwrap();
        assert!(too_late(&second), "{second:?}");
        let bound = second_deadline + SPOOL_WRITE_TIMEOUT;
        assert!(
            answered < bound + Duration::from_millis(500),
            "answered {:?} after its bound",
            answered.saturating_duration_since(bound)
        );
        let (third, answered) = third.await.unwrap();
        assert!(too_late(&third), "{third:?}");
        assert!(answered < third_deadline + SPOOL_WRITE_TIMEOUT + Duration::from_millis(500));
    }

    /// A registry rebuilt while records waited in the spool gave the schema
    /// another id: they are published with it.
    #[tokio::test]
    async fn drained_records_are_framed_with_the_schema_id_of_now() {
        use crate::avro::wire::{SchemaId, confluent_header};
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
        let framed = |id| [&confluent_header(id)[..], b"avro"].concat();
        let batch = Batch {
            key: "s".into(),
            payloads: [framed(7), framed(7)].concat(),
            ends: vec![9, 18],
        };
        spool.append(&batch).await.unwrap();
        let kafka = Arc::new(StandIn::default());
        let id = Arc::new(SchemaId::default());
        id.set(9);
        drain(spool, kafka.clone(), Until::Empty, Some(id)).await;
        let payloads = kafka.payloads.lock().unwrap().clone();
        assert_eq!(payloads, [framed(9), framed(9)].concat());
    }

    /// After a restart, the registry may not have answered yet when the
    /// drainer starts: the spooled records' id may be another schema's by
    /// now, so they wait for the registry's.
    #[tokio::test]
    async fn nothing_is_drained_before_the_registry_gives_the_schema_id() {
        use crate::avro::wire::{SchemaId, confluent_header};
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
        let framed = |id| [&confluent_header(id)[..], b"avro"].concat();
        let batch = Batch {
            key: "s".into(),
            payloads: framed(7),
            ends: vec![9],
        };
        spool.append(&batch).await.unwrap();
        let kafka = Arc::new(StandIn::default());
        let id = Arc::new(SchemaId::default());
        let drainer = tokio::spawn(drain(
            spool.clone(),
            kafka.clone(),
            Until::Empty,
            Some(id.clone()),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            kafka.payloads.lock().unwrap().is_empty(),
            "waits for the id"
        );
        assert_eq!(spool.records(), 1);
        id.set(9);
        drainer.await.unwrap();
        assert_eq!(*kafka.payloads.lock().unwrap(), framed(9));
    }

    #[tokio::test]
    async fn concurrent_appends_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = metrics();
        let spool = Spool::open(dir.path(), 1 << 30, metrics.clone()).unwrap();
        let appends: Vec<_> = (0..200)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.append(&batch(&format!("s{i}"))).await })
            })
            .collect();
        for append in appends {
            append.await.unwrap().unwrap();
        }
        assert_eq!((spool.records(), spool.contents().frames), (200, 200));
        // Counted just after the answers are sent: wait for the round's end.
        assert!(spool.close(Duration::from_secs(5)).await);
        let text = metrics.encode();
        let fsyncs: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("css_bridge_spool_fsync_duration_seconds_count "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            fsyncs < 200,
            "group commit: {fsyncs} fsyncs for 200 appends"
        );
        assert!(
            text.contains("css_bridge_spool_appends_total 200"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_full_spool_refuses_and_never_grows_past_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 200, metrics()).unwrap();
        let mut taken = 0;
        for i in 0..10 {
            match spool.append(&batch(&format!("s{i}"))).await {
                Ok(()) => taken += 1,
                Err(SpoolError::Full { limit: 200 }) => {}
                Err(other) => panic!("{other}"),
            }
        }
        assert!(taken > 0 && taken < 10, "{taken}");
        assert!(spool.bytes() <= 200, "{}", spool.bytes());
        assert!(spool.is_full());
    }

    #[tokio::test]
    async fn records_of_another_schema_are_refused_until_drained() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
            spool.append(&batch("old")).await.unwrap();
        }
        // Written by a version with another schema.
        std::fs::write(dir.path().join(SCHEMA_FILE), "another-fingerprint").unwrap();
        let error = Spool::open(dir.path(), 1 << 20, metrics()).err().unwrap();
        assert!(error.to_string().contains("spool drain"), "{error}");

        // Empty, the spool takes this version's schema.
        std::fs::write(
            dir.path().join(SCHEMA_FILE),
            crate::avro::RecordSchema::get().fingerprint(),
        )
        .unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
        drain(
            spool.clone(),
            Arc::new(StandIn::default()),
            Until::Empty,
            None,
        )
        .await;
        drop(spool);
        std::fs::write(dir.path().join(SCHEMA_FILE), "another-fingerprint").unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
        assert_eq!(spool.records(), 0);
        let written = std::fs::read_to_string(dir.path().join(SCHEMA_FILE)).unwrap();
        assert_eq!(written, crate::avro::RecordSchema::get().fingerprint());
    }

    /// Records spooled without a registry are plain Avro, and the drain
    /// publishes them as they are: a process that frames records for a
    /// registry must not drain them, nor the other way round.
    #[tokio::test]
    async fn records_are_drained_only_by_a_process_that_frames_them_alike() {
        use crate::avro::wire::{Framing, confluent_header};
        let dir = tempfile::tempdir().unwrap();
        let plain = Batch {
            key: "s".into(),
            // As every plain record starts: `event_id`'s length, 32.
            payloads: b"@0123456789abcdef0123456789abcdef".to_vec(),
            ends: vec![33],
        };
        {
            let spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
            assert!(spool.check_framing(Framing::Confluent).is_ok(), "empty");
            spool.append(&plain).await.unwrap();
        }
        let spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
        let error = spool.check_framing(Framing::Confluent).unwrap_err();
        assert!(
            error.to_string().contains("without --schema-registry-url"),
            "{error}"
        );
        assert!(spool.check_framing(Framing::Plain).is_ok());
        drain(spool, Arc::new(StandIn::default()), Until::Empty, None).await;

        let framed = Batch {
            key: "s".into(),
            payloads: [&confluent_header(7)[..], b"avro"].concat(),
            ends: vec![9],
        };
        {
            let spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
            assert!(spool.check_framing(Framing::Plain).is_ok(), "drained");
            spool.append(&framed).await.unwrap();
        }
        let spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
        let error = spool.check_framing(Framing::Plain).unwrap_err();
        assert!(error.to_string().contains("--schema-registry-*"), "{error}");
        assert!(spool.check_framing(Framing::Confluent).is_ok());
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_spool() {
        let dir = tempfile::tempdir().unwrap();
        let _spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
        let error = Spool::open(dir.path(), 1 << 20, metrics()).err().unwrap();
        assert!(error.to_string().contains("in use"), "{error}");
    }

    /// Kafka refusing one stream's batch once (a partition without a leader
    /// for a while), at once or as its delivery, the others' deliveries
    /// coming after that; with `room`, an in-flight budget of that many
    /// batches, held until their delivery.
    struct RefusesOnce {
        key: &'static str,
        at_once: bool,
        refused: AtomicBool,
        room: Option<tokio::sync::Semaphore>,
        /// Key and records of every batch handed over, in the order they
        /// reach Kafka, and whether Kafka acknowledged them.
        sent: Mutex<Vec<(String, Vec<u8>, bool)>>,
        /// Keys of the batches handed over and not answered yet.
        unanswered: Mutex<Vec<String>>,
        /// Keys of the batches handed over while one of their stream was
        /// still unanswered.
        behind_their_stream: Mutex<Vec<String>>,
    }

    impl RefusesOnce {
        fn new(key: &'static str, at_once: bool) -> Self {
            Self {
                key,
                at_once,
                refused: AtomicBool::new(false),
                room: None,
                sent: Mutex::default(),
                unanswered: Mutex::default(),
                behind_their_stream: Mutex::default(),
            }
        }

        fn with_room(self, batches: usize) -> Self {
            let room = Some(tokio::sync::Semaphore::new(batches));
            Self { room, ..self }
        }

        fn sent_keys(&self) -> Vec<String> {
            let sent = self.sent.lock().unwrap();
            sent.iter().map(|(key, _, _)| key.clone()).collect()
        }

        /// Keys and records of the batches acknowledged, in the order they
        /// reached Kafka.
        fn acknowledged(&self) -> Vec<(String, Vec<u8>)> {
            let sent = self.sent.lock().unwrap();
            let acknowledged = sent.iter().filter(|(_, _, acknowledged)| *acknowledged);
            acknowledged
                .map(|(key, records, _)| (key.clone(), records.clone()))
                .collect()
        }

        fn acknowledged_keys(&self) -> Vec<String> {
            self.acknowledged()
                .into_iter()
                .map(|(key, _)| key)
                .collect()
        }
    }

    impl Publish for RefusesOnce {
        only_the_drainer_publishes!();

        fn hand_over<'a>(
            &'a self,
            batch: &'a Batch,
        ) -> BoxFuture<'a, Result<Delivery<'a>, PublishError>> {
            Box::pin(async move {
                let room = match &self.room {
                    Some(room) => Some(room.acquire().await.unwrap()),
                    None => None,
                };
                let sent = {
                    let mut sent = self.sent.lock().unwrap();
                    sent.push((batch.key.clone(), batch.payloads.clone(), false));
                    sent.len() - 1
                };
                let refuse = batch.key == self.key && !self.refused.swap(true, Ordering::Relaxed);
                if refuse && self.at_once {
                    return Err(timed_out());
                }
                {
                    let mut unanswered = self.unanswered.lock().unwrap();
                    if unanswered.contains(&batch.key) {
                        let mut behind = self.behind_their_stream.lock().unwrap();
                        behind.push(batch.key.clone());
                    }
                    unanswered.push(batch.key.clone());
                }
                let delivery: Delivery<'a> = Box::pin(async move {
                    let _room = room;
                    if !refuse {
                        tokio::task::yield_now().await;
                    }
                    let mut unanswered = self.unanswered.lock().unwrap();
                    let at = unanswered.iter().position(|key| *key == batch.key);
                    unanswered.remove(at.expect("handed over"));
                    if refuse {
                        return Err(timed_out());
                    }
                    self.sent.lock().unwrap()[sent].2 = true;
                    Ok(())
                });
                Ok(delivery)
            })
        }

        keeps_no_dead_letters_and_holds_nothing!();
    }

    /// `spool drain` stops at a refusal Kafka gives for good, where retrying
    /// it every second would keep its Job running for ever; the refused
    /// callback and every one after it stay in the spool, for the drain that
    /// follows the topic's fix. The service's drainer waits for that fix.
    #[tokio::test]
    async fn a_drain_until_empty_stops_at_a_refusal_for_good_and_keeps_the_rest() {
        let (dir, spool) = spool_holding(&["a", "too-large", "c"]).await;
        let kafka = Arc::new(StandIn {
            refuses: Some("too-large"),
            ..StandIn::default()
        });

        let drained = drain(spool.clone(), kafka.clone(), Until::Empty, None).await;

        assert_eq!(drained.callbacks, 1);
        let refusal = drained.refused.expect("the refusal that stopped it");
        assert!(refusal.contains("MessageSizeTooLarge"), "{refusal}");
        // `c`, another stream's, went with the window: Kafka has it, and the
        // next drain sends it again (the same `event_id`s, as after a restart).
        assert_eq!(*kafka.published.lock().unwrap(), ["a", "c"]);
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
        assert_eq!(spool.records(), 2, "the refused callback and the next stay");

        let (_stop, drainer) = service_drainer(&spool, kafka);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!drainer.is_finished(), "the service's drainer waits");
        drainer.abort();
    }

    /// Batches Kafka acknowledged after one it refused are not sent again
    /// with it: the window that follows the refusal skips them.
    #[tokio::test]
    async fn batches_acknowledged_after_a_refused_one_are_not_sent_again() {
        let (_dir, spool) = spool_holding(&["a", "b", "c", "d"]).await;
        let kafka = Arc::new(RefusesOnce::new("b", false));
        drain(spool, kafka.clone(), Until::Empty, None).await;
        assert_eq!(kafka.sent_keys(), ["a", "b", "c", "d", "b"]);
        assert_eq!(kafka.acknowledged_keys(), ["a", "c", "d", "b"]);
    }

    /// After one stream's batch is refused, its later batches wait for it
    /// (one still waiting for room would otherwise reach Kafka first).
    #[tokio::test]
    async fn a_stream_keeps_its_order_past_a_refused_batch() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
        for (key, records) in [("a", "a1"), ("b", "b1"), ("c", "c1"), ("b", "b2")] {
            let batch = Batch {
                key: key.into(),
                payloads: records.as_bytes().to_vec(),
                ends: vec![2],
            };
            spool.append(&batch).await.unwrap();
        }
        // b2 waits for room until b1 is refused.
        let kafka = Arc::new(RefusesOnce::new("b", false).with_room(3));
        drain(spool, kafka.clone(), Until::Empty, None).await;
        let acknowledged: Vec<Vec<u8>> = (kafka.acknowledged().into_iter())
            .map(|(_, records)| records)
            .collect();
        assert_eq!(acknowledged, [&b"a1"[..], b"c1", b"b1", b"b2"]);
    }

    /// A window of 512 batches of stream `a`: a drain's first.
    fn first_window() -> Vec<&'static str> {
        vec!["a"; 512]
    }

    /// A drain starts handing a stream's batches over one at a time (records
    /// are spooled only when Kafka did not take them); once a window went
    /// through whole, together, as the idempotent producer keeps them in
    /// order.
    #[tokio::test]
    async fn a_drain_starts_with_a_stream_s_batches_one_at_a_time_then_together() {
        let keys = [first_window(), vec!["s", "s", "s"]].concat();
        let (_dir, spool) = spool_holding(&keys).await;
        let kafka = Arc::new(RefusesOnce::new("none", true));
        drain(spool, kafka.clone(), Until::Empty, None).await;
        assert_eq!(kafka.acknowledged_keys(), keys);
        assert_eq!(*kafka.behind_their_stream.lock().unwrap(), ["s", "s"]);
    }

    /// After a failed window, too, a stream's batch is handed over only when
    /// the one before it is answered. Handed over together while Kafka is in
    /// trouble, the earlier one may wait for a partition's leader and time
    /// out while the later one, a moment younger, is stored once the leader
    /// is back: the earlier one would then be stored after it on its next
    /// attempt.
    #[tokio::test]
    async fn after_a_failed_window_a_stream_s_batches_go_one_at_a_time() {
        let keys = [first_window(), vec!["x", "s", "s", "t", "s"]].concat();
        let (_dir, spool) = spool_holding(&keys).await;
        let kafka = Arc::new(RefusesOnce::new("x", true));
        drain(spool, kafka.clone(), Until::Empty, None).await;
        assert_eq!(kafka.acknowledged_keys(), keys);
        assert!(kafka.behind_their_stream.lock().unwrap().is_empty());
    }

    /// A frame the disk damaged after it was written, at the spool's end:
    /// skipped, and released with the frames before it. Counted as waiting,
    /// it would keep the spool holding records, and so taking every
    /// callback, until another was drained after it; a drain to the end
    /// would never end.
    #[tokio::test]
    async fn a_frame_damaged_at_the_end_is_released_with_the_rest() {
        let (dir, spool) = spool_holding(&["a", "b", "c"]).await;
        let segment = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.extension().is_some_and(|ext| ext == "spool"))
            .unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        *bytes.last_mut().unwrap() ^= 0x20; // in c's record
        std::fs::write(&segment, bytes).unwrap();
        let kafka = Arc::new(StandIn::default());
        let drained = drain(spool.clone(), kafka.clone(), Until::Empty, None);
        let drained = tokio::time::timeout(Duration::from_secs(10), drained)
            .await
            .expect("the drain ends");
        assert_eq!(drained.callbacks, 2);
        assert_eq!(*kafka.published.lock().unwrap(), ["a", "b"]);
        assert!(!spool.holds_records());
    }

    /// A batch refused at once stops the window there: nothing behind it
    /// (of its stream, say) reaches Kafka before it.
    #[tokio::test]
    async fn nothing_is_sent_behind_a_batch_refused_at_once() {
        let (_dir, spool) = spool_holding(&["a", "b", "c"]).await;
        let kafka = Arc::new(RefusesOnce::new("b", true));
        drain(spool, kafka.clone(), Until::Empty, None).await;
        assert_eq!(kafka.sent_keys(), ["a", "b", "b", "c"]);
        assert_eq!(kafka.acknowledged_keys(), ["a", "b", "c"]);
    }

    /// The service's drainer runs on while the spool is empty, and once told
    /// to stop, finishes what is left and returns: shutdown needs no second
    /// drainer, which would send again what the first had in flight.
    #[tokio::test]
    async fn the_service_drainer_finishes_the_spool_once_told_to_stop() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
        let kafka = Arc::new(StandIn::default());
        let (stop, drainer) = service_drainer(&spool, kafka.clone());
        spool.append(&batch("before")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!drainer.is_finished(), "runs on with the spool empty");

        spool.append(&batch("after")).await.unwrap();
        stop.send(true).unwrap();
        let drained = drainer.await.unwrap();

        assert_eq!(drained.callbacks, 2);
        assert_eq!(*kafka.published.lock().unwrap(), ["before", "after"]);
    }

    #[tokio::test]
    async fn the_drainer_publishes_in_order_and_empties_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
        for i in 0..1500 {
            spool.append(&batch(&format!("s{i}"))).await.unwrap();
        }
        let kafka = Arc::new(StandIn::default());
        let drained = drain(spool.clone(), kafka.clone(), Until::Empty, None).await;
        assert_eq!(
            drained,
            Drained {
                callbacks: 1500,
                records: 1500,
                ..Drained::default()
            }
        );
        let published = kafka.published.lock().unwrap().clone();
        assert_eq!(
            published,
            (0..1500).map(|i| format!("s{i}")).collect::<Vec<_>>()
        );
        // The release reaches the writer thread asynchronously.
        for _ in 0..100 {
            if !spool.holds_records() && spool.bytes() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!spool.holds_records());
        assert_eq!(spool.bytes(), 0, "an empty spool takes no disk");
    }

    /// Kafka as slow as during a failover: every acknowledgement comes after
    /// the callbacks' deadline, but comes.
    struct SlowerThanTheDeadline(StandIn);

    impl Publish for SlowerThanTheDeadline {
        fn publish<'a>(
            &'a self,
            _: &'a Batch,
            _: Instant,
        ) -> BoxFuture<'a, Result<(), PublishError>> {
            Box::pin(std::future::ready(Err(timed_out())))
        }

        fn hand_over<'a>(
            &'a self,
            batch: &'a Batch,
        ) -> BoxFuture<'a, Result<Delivery<'a>, PublishError>> {
            self.0.hand_over(batch)
        }

        keeps_no_dead_letters_and_holds_nothing!();
    }

    #[tokio::test]
    async fn the_drainer_waits_for_the_final_answer_not_the_callbacks_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
        for i in 0..3 {
            spool.append(&batch(&format!("s{i}"))).await.unwrap();
        }
        let kafka = Arc::new(SlowerThanTheDeadline(StandIn::default()));
        let drained = drain(spool.clone(), kafka.clone(), Until::Empty, None).await;
        assert_eq!(drained.callbacks, 3, "each published once, none sent again");
        assert_eq!(kafka.0.published.lock().unwrap().len(), 3);
    }

    /// Kafka as the drainer meets it through librdkafka: a publication
    /// enqueues its records when first polled, after a tokio operation (as
    /// the in-flight budget's semaphore is), and is acknowledged only once
    /// `window` publications are enqueued (a broker answering whole batches).
    struct AcknowledgesWholeWindows {
        window: usize,
        enqueued: tokio::sync::watch::Sender<Vec<String>>,
    }

    impl Publish for AcknowledgesWholeWindows {
        only_the_drainer_publishes!();

        fn hand_over<'a>(
            &'a self,
            batch: &'a Batch,
        ) -> BoxFuture<'a, Result<Delivery<'a>, PublishError>> {
            Box::pin(async move {
                tokio::task::coop::consume_budget().await;
                self.enqueued
                    .send_modify(|keys| keys.push(batch.key.clone()));
                let mut enqueued = self.enqueued.subscribe();
                let delivery: Delivery<'a> = Box::pin(async move {
                    let _ = enqueued
                        .wait_for(|keys| keys.len() % self.window == 0)
                        .await;
                    Ok(())
                });
                Ok(delivery)
            })
        }

        keeps_no_dead_letters_and_holds_nothing!();
    }

    #[tokio::test]
    async fn the_drainer_enqueues_a_whole_window_in_order_before_awaiting_it() {
        // More than tokio's cooperative budget (128 operations) lets one task
        // poll at once, fewer than a window.
        const CALLBACKS: usize = 300;
        let keys: Vec<String> = (0..CALLBACKS).map(|i| format!("s{i}")).collect();
        let (_dir, spool) = spool_holding(&keys).await;
        let kafka = Arc::new(AcknowledgesWholeWindows {
            window: CALLBACKS,
            enqueued: tokio::sync::watch::Sender::new(Vec::new()),
        });
        let drained = tokio::time::timeout(
            Duration::from_secs(10),
            drain(spool.clone(), kafka.clone(), Until::Empty, None),
        )
        .await
        .expect("every publication of the window enqueued before the first is awaited");
        assert_eq!(drained.callbacks, CALLBACKS as u64);
        assert_eq!(*kafka.enqueued.borrow(), keys, "in the spool's order");
    }

    /// Kafka behind an in-flight budget of `room` batches: a publication
    /// waits for room, enqueues, and is acknowledged when the test says so.
    struct AcknowledgesOnCue {
        room: tokio::sync::Semaphore,
        enqueued: tokio::sync::watch::Sender<Vec<String>>,
        acknowledged: tokio::sync::watch::Sender<Vec<String>>,
    }

    impl AcknowledgesOnCue {
        fn with_room(batches: usize) -> Arc<Self> {
            Arc::new(Self {
                room: tokio::sync::Semaphore::new(batches),
                enqueued: tokio::sync::watch::Sender::new(Vec::new()),
                acknowledged: tokio::sync::watch::Sender::new(Vec::new()),
            })
        }
    }

    impl Publish for AcknowledgesOnCue {
        only_the_drainer_publishes!();

        fn hand_over<'a>(
            &'a self,
            batch: &'a Batch,
        ) -> BoxFuture<'a, Result<Delivery<'a>, PublishError>> {
            Box::pin(async move {
                let room = self.room.acquire().await.unwrap();
                self.enqueued
                    .send_modify(|keys| keys.push(batch.key.clone()));
                let mut acknowledged = self.acknowledged.subscribe();
                let delivery: Delivery<'a> = Box::pin(async move {
                    let _room = room;
                    let _ = acknowledged
                        .wait_for(|keys| keys.contains(&batch.key))
                        .await;
                    Ok(())
                });
                Ok(delivery)
            })
        }

        keeps_no_dead_letters_and_holds_nothing!();
    }

    /// A window of more than the in-flight budget holds keeps the producer
    /// fed: a batch enqueues as soon as any batch before it is acknowledged,
    /// not once all of them are (one slow partition would hold up the rest).
    #[tokio::test]
    async fn room_a_batch_gives_back_is_taken_at_once_by_the_next_one() {
        let (_dir, spool) = spool_holding(&["a", "b", "c", "d"]).await;
        let kafka = AcknowledgesOnCue::with_room(2);
        let draining = tokio::spawn(drain(spool, kafka.clone(), Until::Empty, None));
        let mut enqueued = kafka.enqueued.subscribe();
        let within = Duration::from_secs(10);
        let mut enqueued_up_to = async |n: usize| {
            tokio::time::timeout(within, enqueued.wait_for(|keys| keys.len() >= n))
                .await
                .map(|keys| keys.unwrap().clone())
        };
        assert_eq!(enqueued_up_to(2).await.unwrap(), ["a", "b"]);
        kafka.acknowledged.send_modify(|keys| keys.push("b".into()));
        assert_eq!(
            enqueued_up_to(3).await.expect("c enqueued while a waits"),
            ["a", "b", "c"]
        );
        kafka
            .acknowledged
            .send_modify(|keys| keys.extend(["a", "c", "d"].map(String::from)));
        let drained = tokio::time::timeout(within, draining)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(drained.callbacks, 4);
        assert_eq!(*kafka.enqueued.borrow(), ["a", "b", "c", "d"]);
    }

    /// Room given back by many deliveries at once goes to the batches
    /// waiting for it in the spool's order, and so do their records.
    #[tokio::test]
    async fn batches_waiting_for_room_are_handed_over_in_the_spool_s_order() {
        const CALLBACKS: usize = 300;
        let keys: Vec<String> = (0..CALLBACKS).map(|i| format!("s{i}")).collect();
        let (_dir, spool) = spool_holding(&keys).await;
        let kafka = AcknowledgesOnCue::with_room(100);
        let draining = tokio::spawn(drain(spool, kafka.clone(), Until::Empty, None));
        let mut enqueued = kafka.enqueued.subscribe();
        let within = Duration::from_secs(10);
        tokio::time::timeout(within, enqueued.wait_for(|keys| keys.len() == 100))
            .await
            .unwrap()
            .unwrap();
        kafka.acknowledged.send_replace(keys.clone());
        let drained = tokio::time::timeout(within, draining)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(drained.callbacks, CALLBACKS as u64);
        assert_eq!(*kafka.enqueued.borrow(), keys);
    }

    #[tokio::test]
    async fn while_kafka_is_away_callbacks_wait_in_the_spool_and_follow_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
        let kafka = Arc::new(StandIn::default());
        let spooling = Spooling::new(kafka.clone(), Some(spool.clone()));
        spooling.publish(&batch("direct"), soon()).await.unwrap();
        kafka.down.store(true, Ordering::Relaxed);
        spooling.publish(&batch("spooled-1"), soon()).await.unwrap();
        kafka.down.store(false, Ordering::Relaxed);
        // Kafka is back, but the spool holds records: this one queues behind.
        spooling.publish(&batch("spooled-2"), soon()).await.unwrap();
        assert_eq!(*kafka.published.lock().unwrap(), ["direct"]);
        assert_eq!(spool.records(), 2);

        let drained = drain(spool.clone(), kafka.clone(), Until::Empty, None).await;
        assert_eq!(drained.callbacks, 2);
        assert_eq!(
            *kafka.published.lock().unwrap(),
            ["direct", "spooled-1", "spooled-2"]
        );
    }

    /// Kafka that acknowledges the drainer's batches `drain_delay` after it
    /// takes them, counts the callbacks published directly, and takes those
    /// whose records begin with `slow` 20 ms after they come.
    #[derive(Default)]
    struct AcknowledgingLater {
        kafka: StandIn,
        drain_delay: Duration,
        direct: std::sync::atomic::AtomicUsize,
        /// `key:records` of every batch, in the order taken.
        taken: Mutex<Vec<String>>,
    }

    impl AcknowledgingLater {
        fn after(drain_delay: Duration) -> Self {
            Self {
                drain_delay,
                ..Self::default()
            }
        }

        fn take(&self, batch: &Batch) -> Result<(), PublishError> {
            let records = String::from_utf8_lossy(&batch.payloads);
            self.taken
                .lock()
                .unwrap()
                .push(format!("{}:{records}", batch.key));
            self.kafka.take(batch)
        }
    }

    impl Publish for AcknowledgingLater {
        fn publish<'a>(
            &'a self,
            batch: &'a Batch,
            _: Instant,
        ) -> BoxFuture<'a, Result<(), PublishError>> {
            self.direct.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                if batch.payloads.starts_with(b"slow") {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                self.take(batch)
            })
        }

        fn hand_over<'a>(
            &'a self,
            batch: &'a Batch,
        ) -> BoxFuture<'a, Result<Delivery<'a>, PublishError>> {
            handed(async move {
                tokio::time::sleep(self.drain_delay).await;
                self.take(batch)
            })
        }

        keeps_no_dead_letters_and_holds_nothing!();
    }

    /// After an outage, callbacks keep coming: once the drainer has every
    /// spooled frame with Kafka, the spool empties and callbacks go to Kafka
    /// directly again, after the spooled ones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_steady_traffic_the_spool_hands_back_to_kafka() {
        let (_dir, spool) = spool_holding(&["spooled"]).await;
        let kafka = Arc::new(AcknowledgingLater::after(Duration::from_millis(5)));
        let spooling = Arc::new(Spooling::new(kafka.clone(), Some(spool.clone())));
        let (stop, drainer) = service_drainer(&spool, kafka.clone());
        let mut callbacks = Vec::new();
        // Generous: the loop ends as soon as one goes to Kafka directly, which
        // a slow disk under a loaded machine can delay by seconds.
        let give_up = Instant::now() + Duration::from_secs(15);
        // A callback a millisecond, until one goes to Kafka directly.
        while kafka.direct.load(Ordering::Relaxed) == 0 && Instant::now() < give_up {
            let spooling = spooling.clone();
            let key = format!("callback-{}", callbacks.len());
            callbacks.push(tokio::spawn(async move {
                spooling.publish(&batch(&key), soon()).await
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let sent = callbacks.len();
        for callback in callbacks {
            callback.await.unwrap().unwrap();
        }
        assert!(
            kafka.direct.load(Ordering::Relaxed) > 0,
            "every one of {sent} callbacks went through the spool"
        );
        stop.send(true).unwrap();
        drainer.await.unwrap();
        let published = kafka.kafka.published.lock().unwrap().clone();
        assert_eq!(published[0], "spooled", "the spooled record first");
        let mut callbacks = published[1..].to_vec();
        callbacks.sort();
        callbacks.dedup();
        assert_eq!(
            (published.len() - 1, callbacks.len()),
            (sent, sent),
            "each once"
        );
    }

    /// The first callback Kafka did not take is being written: its frame is
    /// not the drainer's yet, so no hand-back begins and the next callback
    /// goes on to the spool, rather than waiting for an emptying to come.
    #[tokio::test]
    async fn an_append_in_progress_does_not_begin_a_hand_back() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, metrics()).unwrap();
        spool.stall_writes_for_test(Duration::from_secs(2));
        let first = batch("first");
        let mut appending = Box::pin(spool.append(&first));
        assert!(futures::poll!(&mut appending).is_pending());
        let mut hand_back = Box::pin(spool.hand_back(Instant::now() + Duration::from_secs(5)));
        assert!(
            futures::poll!(&mut hand_back).is_ready(),
            "returns at once: the callback is spooled"
        );
        appending.await.unwrap();
    }

    /// Two callbacks of one stream that wait for the same hand-back reach
    /// Kafka in the order they came, even when the first takes longer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callbacks_of_one_stream_that_wait_for_a_hand_back_keep_their_order() {
        let (_dir, spool) = spool_holding(&["spooled"]).await;
        let kafka = Arc::new(AcknowledgingLater::after(Duration::from_millis(300)));
        let spooling = Arc::new(Spooling::new(kafka.clone(), Some(spool.clone())));
        let (stop, drainer) = service_drainer(&spool, kafka.clone());
        // The drainer reads the spooled frame at once and waits 300 ms for
        // Kafka's acknowledgement: the callbacks below wait for it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut callbacks = Vec::new();
        for stream in ["a", "b", "c"] {
            for (records, pause) in [("slow first", 5), ("then fast", 5)] {
                let spooling = spooling.clone();
                let batch = Batch {
                    key: stream.into(),
                    payloads: records.as_bytes().to_vec(),
                    ends: vec![records.len()],
                };
                callbacks.push(tokio::spawn(async move {
                    spooling.publish(&batch, soon()).await
                }));
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
        for callback in callbacks {
            callback.await.unwrap().unwrap();
        }
        stop.send(true).unwrap();
        drainer.await.unwrap();
        let taken = kafka.taken.lock().unwrap().clone();
        for stream in ["a", "b", "c"] {
            let order: Vec<&str> = (taken.iter())
                .filter_map(|t| t.strip_prefix(&format!("{stream}:")))
                .collect();
            assert_eq!(order, ["slow first", "then fast"], "{taken:?}");
        }
    }

    /// Flips one byte of the second of three frames of one size on disk.
    fn damage_the_second_of_three_frames(dir: &std::path::Path, spool: &Spool) {
        use std::io::{Seek, SeekFrom, Write};
        let segment = spool.end().segment;
        let path = dir.join(format!("{segment:020}.spool"));
        let frame = std::fs::metadata(&path).unwrap().len() / 3;
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(frame + frame - 3)).unwrap();
        file.write_all(b"X").unwrap();
    }

    /// `spool drain`'s losses that cannot be kept beside the spool (here its
    /// file `LOST` a directory) stay counted in what the drain returns, for
    /// its summary and exit code.
    #[tokio::test]
    async fn losses_a_drain_cannot_keep_beside_the_spool_stay_counted() {
        let (dir, spool) = spool_holding(&["first", "second", "third"]).await;
        damage_the_second_of_three_frames(dir.path(), &spool);
        std::fs::create_dir(dir.path().join("LOST")).unwrap();

        let kafka = Arc::new(StandIn::default());
        let drained = drain(spool, kafka, Until::Empty, None).await;

        assert_eq!(drained.lost.damaged_frames, 1);
        assert_eq!(drained.unkept.damaged_frames, 1, "not kept");
    }

    #[tokio::test]
    async fn a_frame_damaged_on_disk_is_skipped_and_the_spool_still_empties() {
        let (dir, spool) = spool_holding(&["first", "second", "third"]).await;
        // One byte of the second frame's payload, flipped on disk.
        damage_the_second_of_three_frames(dir.path(), &spool);

        let kafka = Arc::new(StandIn::default());
        let drained = tokio::time::timeout(
            Duration::from_secs(10),
            drain(spool.clone(), kafka.clone(), Until::Empty, None),
        )
        .await
        .expect("the drain ends");
        assert_eq!((drained.callbacks, drained.lost.damaged_frames), (2, 1));
        assert_eq!(*kafka.published.lock().unwrap(), ["first", "third"]);
        for _ in 0..100 {
            if !spool.holds_records() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !spool.holds_records(),
            "the damaged frame does not hold the spool"
        );
        let text = spool.metrics().encode();
        assert!(
            text.contains("css_bridge_spool_damaged_frames_total 1"),
            "counted once: {text}"
        );
    }

    #[tokio::test]
    async fn a_segment_that_cannot_be_read_holds_its_records_until_it_reads_again() {
        let (dir, spool) = spool_holding(&["first", "second"]).await;
        // The segment's path turned into a directory: opening it works,
        // reading it fails (EISDIR), as a disk's I/O error would.
        let path = dir
            .path()
            .join(format!("{:020}.spool", spool.end().segment));
        let aside = dir.path().join("aside");
        std::fs::rename(&path, &aside).unwrap();
        std::fs::create_dir(&path).unwrap();

        let kafka = Arc::new(StandIn::default());
        let draining = tokio::spawn(drain(spool.clone(), kafka.clone(), Until::Empty, None));
        let read_errors = || {
            let text = spool.metrics().encode();
            (text.lines())
                .find_map(|line| line.strip_prefix("css_bridge_spool_read_errors_total "))
                .map_or(0, |n| n.parse::<u64>().unwrap())
        };
        let give_up = Instant::now() + Duration::from_secs(10);
        while read_errors() < 2 {
            assert!(
                Instant::now() < give_up,
                "tried again, each failure counted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(kafka.published.lock().unwrap().is_empty());
        assert_eq!(spool.records(), 2, "nothing skipped");

        std::fs::remove_dir(&path).unwrap();
        std::fs::rename(&aside, &path).unwrap();
        let drained = tokio::time::timeout(Duration::from_secs(10), draining)
            .await
            .expect("the drain ends once the segment reads again")
            .unwrap();
        assert_eq!(drained.callbacks, 2);
        assert_eq!(*kafka.published.lock().unwrap(), ["first", "second"]);
    }

    /// A segment file deleted by hand (or by a clean-up job) while it waits:
    /// the callbacks in it are lost, which only counting can tell; the spool
    /// goes on with the rest, and with what comes next.
    #[tokio::test]
    async fn a_segment_deleted_from_under_the_spool_is_counted_and_the_spool_goes_on() {
        let (dir, spool) = spool_holding(&["first", "second"]).await;
        let segment = spool.end().segment;
        std::fs::remove_file(dir.path().join(format!("{segment:020}.spool"))).unwrap();

        let kafka = Arc::new(StandIn::default());
        let drain_now = || {
            let drained = drain(spool.clone(), kafka.clone(), Until::Empty, None);
            tokio::time::timeout(Duration::from_secs(10), drained)
        };
        let drained = drain_now().await.expect("the drain ends");
        assert_eq!((drained.callbacks, drained.lost.missing_segments), (0, 1));
        assert!(
            (spool.metrics().encode()).contains("css_bridge_spool_missing_segments_total 1"),
            "counted"
        );

        spool.append(&batch("third")).await.unwrap();
        let drained = drain_now().await.expect("the drain ends");
        assert_eq!(drained.callbacks, 1);
        assert_eq!(*kafka.published.lock().unwrap(), ["third"]);
    }

    #[tokio::test]
    async fn a_second_drainer_starts_where_the_first_released() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
        let kafka = Arc::new(StandIn::default());
        spool.append(&batch("first")).await.unwrap();
        drain(spool.clone(), kafka.clone(), Until::Empty, None).await;
        spool.append(&batch("second")).await.unwrap();
        drain(spool.clone(), kafka.clone(), Until::Empty, None).await;
        assert_eq!(
            *kafka.published.lock().unwrap(),
            ["first", "second"],
            "nothing twice"
        );
    }

    #[tokio::test]
    async fn records_survive_reopening_and_a_failed_drain_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
            for i in 0..3 {
                spool.append(&batch(&format!("s{i}"))).await.unwrap();
            }
        }
        let spool = Spool::open(dir.path(), 1 << 30, metrics()).unwrap();
        assert_eq!(spool.records(), 3);
        let kafka = Arc::new(StandIn::default());
        kafka.down.store(true, Ordering::Relaxed);
        let draining = tokio::spawn(drain(spool.clone(), kafka.clone(), Until::Empty, None));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(kafka.published.lock().unwrap().is_empty());
        assert_eq!(spool.records(), 3, "nothing released while Kafka refuses");
        kafka.down.store(false, Ordering::Relaxed);
        assert_eq!(draining.await.unwrap().callbacks, 3);
        assert_eq!(*kafka.published.lock().unwrap(), ["s0", "s1", "s2"]);
    }
}
