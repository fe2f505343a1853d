//! The producer's events (delivery reports, statistics, log lines) served on the
//! tokio runtime, instead of on a polling thread of their own.
//!
//! rdkafka's `ThreadedProducer` polls its event queue on a dedicated thread.
//! Every delivery report then completes an [`super::Acknowledgement`] from
//! outside the runtime, so waking the request that waits for it is a
//! cross-thread wake-up (the runtime's injection queue, often a futex to unpark
//! a worker), and the records are freed on another thread than the one that
//! allocated them.
//!
//! Here librdkafka calls `on_event` whenever it puts an event on the
//! producer's queue (librdkafka's `rd_kafka_queue_cb_event_enable`); it only
//! raises a flag and wakes one task, which serves the queue on a worker thread
//! (see `serve`). The requests its delivery reports complete are then woken
//! on the worker's own run queue. This is how rdkafka's own `StreamConsumer`
//! waits for its queue; rdkafka has no producer that does it.
//! bench/results/history.md has the figures.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::ops::Deref;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use futures::task::AtomicWaker;
use rdkafka::ClientConfig;
use rdkafka::bindings as rdsys;
use rdkafka::error::KafkaResult;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

use super::topic::TopicHandle;

/// Events served in one go before the serving task yields to the requests of
/// its worker.
const EVENTS_PER_TURN: usize = 64;

thread_local! {
    /// How many events `serve_waiting` has handed to rdkafka on this thread:
    /// each of its polls serves one event.
    static SERVED: Cell<u64> = const { Cell::new(0) };
    /// The last error event reported on this thread, until its second report:
    /// the value of `SERVED` then, and its reason.
    static LAST_ERROR: RefCell<Option<(u64, String)>> = const { RefCell::new(None) };
}

/// Whether a context's `error` call is rdkafka's second report of the event
/// the last call reported, to be ignored.
///
/// rdkafka 0.39 hands each error event to the context twice:
/// `Client::poll_event` reports it and returns it, and `BaseProducer::poll`
/// reports what it returns again. Both calls come one after the other on the
/// thread that polls, with the same reason. A call is taken for the second
/// when the one before it on this thread had the same reason, was not itself
/// a second, and was made in the same poll of `serve_waiting` (one event per
/// poll): so an rdkafka that reports once would still have every event
/// counted. Outside `serve_waiting` (the polls of a flush), pairs alone
/// decide. The test `each_error_event_is_reported_twice_by_rdkafka` fails
/// once rdkafka stops doing it.
pub fn repeats_last_error(reason: &str) -> bool {
    let served = SERVED.get();
    LAST_ERROR.with_borrow_mut(|last| match last {
        Some((at, last_reason)) if *at == served && last_reason == reason => {
            *last = None;
            true
        }
        _ => {
            *last = Some((served, reason.to_owned()));
            false
        }
    })
}

/// A `BaseProducer` whose event queue a tokio task serves, with handles on the
/// topics it writes to (see [`super::topic`]).
///
/// Dereferences to the producer. Created in a tokio runtime, in which the
/// serving task runs; the task ends when the producer is dropped. Dropping it
/// blocks (librdkafka purges and flushes), like any producer: not on a worker.
pub struct ServedProducer<C: ProducerContext + 'static> {
    producer: BaseProducer<C>,
    /// Released before the producer, in `drop`.
    topics: Vec<TopicHandle<'static>>,
    /// The producer's main queue, where librdkafka puts its events.
    queue: Queue,
    signal: Arc<Signal>,
}

/// What [`on_event`] tells the serving task.
#[derive(Default)]
struct Signal {
    /// Events arrived since the task last took the flag.
    pending: AtomicBool,
    /// The producer is gone: the task ends.
    closed: AtomicBool,
    task: AtomicWaker,
}

impl Signal {
    fn notify(&self) {
        self.pending.store(true, Ordering::Release);
        self.task.wake();
    }

    /// Resolves with `true` when events arrived since the last call, `false`
    /// once the producer is gone.
    async fn events(&self) -> bool {
        std::future::poll_fn(|cx| {
            self.task.register(cx.waker());
            if self.closed.load(Ordering::Acquire) {
                Poll::Ready(false)
            } else if self.pending.swap(false, Ordering::AcqRel) {
                Poll::Ready(true)
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// A handle on the producer's main queue.
struct Queue(*mut rdsys::rd_kafka_queue_t);

// SAFETY: librdkafka's queue handles may be used from any thread.
unsafe impl Send for Queue {}
// SAFETY: as above; every operation on a queue takes its lock.
unsafe impl Sync for Queue {}

impl Queue {
    fn len(&self) -> usize {
        // SAFETY: the handle is valid until `ServedProducer` drops it.
        unsafe { rdsys::rd_kafka_queue_length(self.0) }
    }
}

/// Called by librdkafka, on whichever thread enqueues an event (mostly a broker
/// thread), with the queue locked: it must not call librdkafka.
unsafe extern "C" fn on_event(_client: *mut rdsys::rd_kafka_t, signal: *mut c_void) {
    // SAFETY: `signal` is the `Signal` of a `ServedProducer`, which turns this
    // callback off before the `Signal` can go away.
    let signal = unsafe { &*(signal as *const Signal) };
    signal.notify();
}

impl<C: ProducerContext + 'static> ServedProducer<C> {
    /// Creates the producer, with a handle on each of `topics`, and starts
    /// the task that serves its events.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn create(config: &ClientConfig, context: C, topics: &[&str]) -> KafkaResult<Arc<Self>> {
        let producer: BaseProducer<C> = config.create_with_context(context)?;
        let topics = topics
            .iter()
            // SAFETY: the handles are released in `drop`, before the producer.
            .map(|topic| unsafe { TopicHandle::new_unbound(producer.client().native_ptr(), topic) })
            .collect::<KafkaResult<_>>()?;
        let signal = Arc::new(Signal::default());
        // SAFETY: the client is alive; the handle is released in `drop`.
        let queue =
            Queue(unsafe { rdsys::rd_kafka_queue_get_main(producer.client().native_ptr()) });
        // SAFETY: the queue handle is valid and the signal outlives the
        // callback, which `drop` turns off first.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(
                queue.0,
                Some(on_event),
                Arc::as_ptr(&signal) as *mut c_void,
            );
        }
        let served = Arc::new(Self {
            producer,
            topics,
            queue,
            signal: signal.clone(),
        });
        // Events may have arrived before the callback was on.
        signal.notify();
        tokio::spawn(serve(Arc::downgrade(&served), signal));
        Ok(served)
    }

    /// The handles on the topics it was created with, in the same order.
    pub fn topics(&self) -> &[TopicHandle<'_>] {
        &self.topics
    }

    /// Serves the events waiting in the queue, at most `limit`; returns whether
    /// some are left.
    fn serve_waiting(&self, limit: usize) -> bool {
        for _ in 0..limit {
            if self.queue.len() == 0 {
                return false;
            }
            // One event per call with a zero timeout.
            SERVED.set(SERVED.get().wrapping_add(1));
            surviving_panic(|| {
                self.producer.poll(Duration::ZERO);
            });
        }
        self.queue.len() > 0
    }
}

/// Runs `handle`, the handling of librdkafka's events or of one of them; a
/// panic in it is logged and ends only it.
///
/// A panic must not end the task that serves the producer's events: no later
/// delivery report would be served, every callback would wait for its
/// deadline, and the in-flight budget's room would never come back, while
/// readiness stayed true. Around one delivery report (the context's
/// `delivery`), it loses only that report: its callback gets 503 at its
/// deadline, and its room comes back with the callback. Around a whole event
/// (`serve_waiting`), for a panic anywhere else, the event's other reports
/// are lost with it, and their room stays taken. Each panic is counted
/// (`css_bridge_panics_total{task="kafka_events"}`, which an alert watches).
pub fn surviving_panic(handle: impl FnOnce()) {
    if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(handle)) {
        crate::metrics::count_panic("kafka_events");
        tracing::error!(
            panic = crate::telemetry::panic_message(&*panic),
            "the handling of a Kafka event panicked; serving the next events"
        );
    }
}

/// Serves the producer's events as they arrive, until the producer is dropped.
///
/// Holds the producer only while serving, so that the last reference, whose
/// drop blocks, stays with its owner.
async fn serve<C: ProducerContext + 'static>(
    producer: Weak<ServedProducer<C>>,
    signal: Arc<Signal>,
) {
    while signal.events().await {
        let Some(producer) = producer.upgrade() else {
            return;
        };
        let more = producer.serve_waiting(EVENTS_PER_TURN);
        // The owner let go while this task served: dropping a producer
        // blocks, so the last reference goes to a blocking thread.
        if let Some(last) = Arc::into_inner(producer) {
            tokio::task::spawn_blocking(move || drop(last));
            return;
        }
        if more {
            signal.pending.store(true, Ordering::Release);
            tokio::task::yield_now().await;
        }
    }
}

impl<C: ProducerContext + 'static> Deref for ServedProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &Self::Target {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Drop for ServedProducer<C> {
    fn drop(&mut self) {
        self.topics.clear();
        // SAFETY: the handle is valid; after this call librdkafka no longer
        // calls `on_event`, and the handle is not used again.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.queue.0, None, std::ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(self.queue.0);
        }
        self.signal.closed.store(true, Ordering::Release);
        self.signal.task.wake();
        // The producer itself is dropped next; its drop serves the queue while
        // it purges and flushes.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    use rdkafka::ClientContext;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseRecord, DeliveryResult};

    /// Counts delivery reports, and those served on a thread of the runtime.
    #[derive(Default)]
    struct Counting {
        delivered: AtomicUsize,
        on_the_runtime: AtomicUsize,
    }

    impl ClientContext for Counting {}

    impl ProducerContext for Counting {
        type DeliveryOpaque = ();

        fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
            assert!(result.is_ok(), "{result:?}");
            // Counted before `delivered`, which the test waits for.
            if tokio::runtime::Handle::try_current().is_ok() {
                self.on_the_runtime.fetch_add(1, Ordering::SeqCst);
            }
            self.delivered.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A producer on `cluster` with `context`, sending each record at once.
    fn producer_with<C: ProducerContext + 'static>(
        cluster: &MockCluster<'_, impl ProducerContext>,
        context: C,
    ) -> Arc<ServedProducer<C>> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("linger.ms", "0");
        ServedProducer::create(&config, context, &[]).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivery_reports_are_served_on_the_runtime_without_anyone_polling() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("events", 2, 1).unwrap();
        let producer = producer_with(&cluster, Counting::default());
        for i in 0..100 {
            let key = i.to_string();
            let record = BaseRecord::to("events").key(&key).payload("record");
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
        let context = producer.context();
        tokio::time::timeout(Duration::from_secs(10), async {
            while context.delivered.load(Ordering::SeqCst) < 100 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("every delivery report served");
        assert_eq!(context.on_the_runtime.load(Ordering::SeqCst), 100);
        tokio::task::spawn_blocking(move || drop(producer))
            .await
            .unwrap();
    }

    /// Panics at its first delivery report, and counts the others; with
    /// `surviving`, inside [`surviving_panic`], as the bridge's context.
    #[derive(Default)]
    struct PanicsOnce {
        surviving: bool,
        panicked: AtomicBool,
        delivered: AtomicUsize,
    }

    impl ClientContext for PanicsOnce {}

    impl ProducerContext for PanicsOnce {
        type DeliveryOpaque = ();

        fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {
            let deliver = || {
                if !self.panicked.swap(true, Ordering::SeqCst) {
                    panic!("a defect in a delivery report's handling");
                }
                self.delivered.fetch_add(1, Ordering::SeqCst);
            };
            match self.surviving {
                true => surviving_panic(deliver),
                false => deliver(),
            }
        }
    }

    fn send(producer: &ServedProducer<PanicsOnce>, records: usize) {
        for _ in 0..records {
            let record = BaseRecord::to("events").key("k").payload("record");
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
    }

    /// Waits up to 10 s for `until`.
    async fn served(until: impl Fn() -> bool) -> Result<(), tokio::time::error::Elapsed> {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !until() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_handling_one_event_leaves_the_next_ones_served() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("events", 1, 1).unwrap();
        let producer = producer_with(&cluster, PanicsOnce::default());
        let context = producer.context();
        send(&producer, 1);
        served(|| context.panicked.load(Ordering::SeqCst))
            .await
            .expect("the first report served");
        send(&producer, 9);
        served(|| context.delivered.load(Ordering::SeqCst) == 9)
            .await
            .expect("the reports after the panic served");
        tokio::task::spawn_blocking(move || drop(producer))
            .await
            .unwrap();
    }

    /// librdkafka hands several reports over in one event: a panic around
    /// one of them leaves the others served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_handling_one_report_leaves_the_others_of_its_event_served() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("events", 1, 1).unwrap();
        let context = PanicsOnce {
            surviving: true,
            ..PanicsOnce::default()
        };
        let producer = producer_with(&cluster, context);
        let context = producer.context();
        send(&producer, 10);
        served(|| context.delivered.load(Ordering::SeqCst) == 9)
            .await
            .expect("the reports besides the panicking one served");
        tokio::task::spawn_blocking(move || drop(producer))
            .await
            .unwrap();
    }

    #[test]
    fn a_survived_panic_is_counted_in_the_metrics() {
        let panics = || {
            let text = crate::metrics::Metrics::new("/css/callback").encode();
            let line = (text.lines())
                .find_map(|line| {
                    line.strip_prefix("css_bridge_panics_total{task=\"kafka_events\"} ")
                })
                .expect("the counter is exposed");
            line.parse::<u64>().unwrap()
        };
        let before = panics();
        surviving_panic(|| panic!("a defect in an event's handling"));
        // Other tests in this process may panic too: the count only grows.
        assert!(panics() > before);
    }

    /// Counts the context's `error` calls, and those `repeats_last_error`
    /// lets through.
    #[derive(Clone, Default)]
    struct Errors(Arc<(AtomicUsize, AtomicUsize)>);

    impl ClientContext for Errors {
        fn error(&self, _: rdkafka::error::KafkaError, reason: &str) {
            let (calls, counted) = &*self.0;
            calls.fetch_add(1, Ordering::SeqCst);
            if !repeats_last_error(reason) {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    impl ProducerContext for Errors {
        type DeliveryOpaque = ();

        fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
    }

    /// Guards `repeats_last_error`: once rdkafka reports an error event once,
    /// this fails, and the workaround goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_error_event_is_reported_twice_by_rdkafka_and_counted_once() {
        let mut config = ClientConfig::new();
        // Nothing listens there: every connection attempt is an error event.
        config
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("reconnect.backoff.ms", "10")
            .set("reconnect.backoff.max.ms", "50");
        let errors = Errors::default();
        let producer = ServedProducer::create(&config, errors.clone(), &[]).unwrap();
        let (calls, counted) = &*errors.0;
        tokio::time::timeout(Duration::from_secs(10), async {
            while counted.load(Ordering::SeqCst) < 4 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("error events served");
        tokio::task::spawn_blocking(move || drop(producer))
            .await
            .unwrap();
        // The serving task may hold the producer a moment longer, and its
        // context with it: read the counts once it is gone.
        tokio::time::timeout(Duration::from_secs(10), async {
            while Arc::strong_count(&errors.0) > 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the producer's context dropped");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2 * counted.load(Ordering::SeqCst)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_serving_task_ends_with_the_producer() {
        let cluster = MockCluster::new(1).unwrap();
        let producer = producer_with(&cluster, Counting::default());
        let signal = producer.signal.clone();
        tokio::task::spawn_blocking(move || drop(producer))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            // The task holds the other reference until it ends.
            while Arc::strong_count(&signal) > 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the serving task ended");
    }
}
