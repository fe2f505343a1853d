//! Start-up and shutdown: build the service from its configuration, serve until
//! the shutdown signal, drain, flush the producer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::avro::wire::{SchemaId, WireFormat};
use crate::config::{AuthMode, Config, KafkaConfig};
use crate::css::{CallbackKey, Verifier};
use crate::health::Readiness;
use crate::http::admission::{Admission, Limits};
use crate::http::throttle::{self, LineThrottle};
use crate::http::{self, AppState};
use crate::ingest::Ingestor;
use crate::kafka::{self, EmbeddedKafka, Publisher};
use crate::metrics::Metrics;
use crate::outage::OutageLog;
use crate::registry::{self, RegistryClient};
use crate::spool::drain::{self, Drained, Until};
use crate::spool::{Spool, Spooling};

/// The bridge, built and bound to its port, not yet serving.
pub struct App {
    listener: TcpListener,
    state: Arc<AppState>,
    /// Kafka itself, beside the requests' [`Spooling`]: for the watcher, the
    /// drainer and the flush at shutdown.
    kafka: Arc<Publisher>,
    spool: Option<Arc<Spool>>,
    config: Config,
    /// Registers the schema once `run` starts; `None` without a registry.
    registration: Option<(RegistryClient, Arc<SchemaId>)>,
    /// The schema id records are framed with (the Confluent wire format), for
    /// the spool's drainer.
    schema_id: Option<Arc<SchemaId>>,
    /// The in-memory cluster when no brokers are configured; kept until the
    /// service stops, since dropping it stops the cluster.
    embedded: Option<EmbeddedKafka>,
}

impl App {
    /// Binds the listener and creates the producer for the configured brokers,
    /// or starts the embedded cluster when there are none. Fails on
    /// configuration errors, so that a misconfigured pod crashes at once with a
    /// clear message instead of answering 503 forever.
    pub async fn build(mut config: Config) -> anyhow::Result<Self> {
        // Settings first: a refused configuration starts nothing.
        let keys = config.auth.keys()?;
        let (listen, auth_mode) = config.exposure(!keys.is_empty())?;
        config.check_brokers(listen)?;
        config.check_spool()?;
        if let Some(warning) = config.check_callback_window() {
            tracing::warn!("{warning}");
        }
        if let Some(warning) = config.check_drain() {
            tracing::warn!("{warning}");
        }
        let (brokers, embedded) = resolve_brokers(&mut config)?;
        log_auth_mode(auth_mode, &keys, listen);
        let metrics = Arc::new(Metrics::new(http::CALLBACK_PATH));
        metrics.set_callback_auth_enabled(auth_mode == AuthMode::Signed);
        let verifier = Verifier::new(
            keys,
            config.auth.max_clock_skew_secs,
            config.auth.max_signature_horizon_secs(),
        );
        let outage = OutageLog::new(
            &config.kafka.connection.topic,
            Duration::from_secs(config.log_summary_interval_secs),
            metrics.clone(),
        );
        let outage = Arc::new(outage.spooled(config.spool.dir.is_some()));
        let kafka_config = KafkaConfig {
            spooled: config.spool.dir.is_some(),
            ..config.kafka.clone()
        };
        let kafka = Publisher::new(&kafka_config, &brokers, metrics.clone(), outage.clone())
            .context("cannot create the Kafka producer")?;
        let kafka = Arc::new(kafka);
        let registry = RegistryClient::new(&config.registry, &config.kafka.connection.topic)
            .context("invalid Schema Registry settings")?;
        let registration = registry.map(|client| (client, Arc::new(SchemaId::default())));
        let wire_format = match &registration {
            Some((_, id)) => WireFormat::Confluent(id.clone()),
            None => WireFormat::Plain,
        };
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let spool = match &config.spool.dir {
            Some(dir) => {
                let (dir, max_bytes, metrics) =
                    (dir.clone(), config.spool.max_bytes, metrics.clone());
                let retry_after = Duration::from_secs(config.retry_after_secs);
                let header_read_timeout = Duration::from_secs(config.header_read_timeout_secs);
                let stand_in = http::starting_router(retry_after, metrics.clone(), outage.clone());
                let spool = while_starting(&listener, stand_in, header_read_timeout, move || {
                    Spool::open(&dir, max_bytes, metrics)
                        .with_context(|| format!("cannot open the spool in {}", dir.display()))
                })
                .await??;
                spool.check_framing(wire_format.framing())?;
                Some(spool)
            }
            None => None,
        };
        let mut readiness = Readiness::new(metrics.clone(), registration.is_none());
        if let Some(spool) = &spool {
            tracing::info!(dir = %spool.dir().display(), max_bytes = config.spool.max_bytes, "spool on: callbacks Kafka cannot take are kept on disk");
            readiness = readiness.with_spool(spool.clone());
        }
        let publisher = Arc::new(Spooling::new(kafka.clone(), spool.clone()));
        let state = Arc::new(AppState {
            ingestor: Ingestor::new(
                verifier,
                publisher,
                metrics.clone(),
                wire_format,
                kafka.max_callback_records() as usize,
                config.kafka.in_flight.max_bytes as usize,
            ),
            readiness: Arc::new(readiness),
            outage,
            refusal_lines: LineThrottle::default(),
            metrics,
            admission: Admission::new(Limits {
                callbacks: config.max_in_flight,
                body_bytes: config.max_in_flight_body_bytes,
                // What the producer may hold, and as much again encoded and
                // waiting for room in it: the producer never waits for an
                // encoding, and callbacks never hold more than this.
                record_bytes: config.kafka.in_flight.max_bytes.saturating_mul(2),
                max_body_bytes: config.max_body_bytes,
                deadline: config.kafka.ack_timeout(),
            }),
            retry_after: Duration::from_secs(config.retry_after_secs),
            body_read_timeout: Duration::from_secs(config.body_read_timeout_secs),
            max_body_bytes: config.max_body_bytes,
        });
        Ok(Self {
            listener,
            state,
            kafka,
            spool,
            config,
            schema_id: registration.as_ref().map(|(_, id)| id.clone()),
            registration,
            embedded,
        })
    }

    /// The address actually bound (the port is chosen by the OS for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then shuts down in order:
    ///
    /// 1. readiness turns false, and the bridge keeps serving for the shutdown
    ///    delay while load balancers stop routing here;
    /// 2. it stops accepting connections and lets in-flight requests finish;
    /// 3. the background tasks stop (Kafka watcher, registration, outage
    ///    summaries, lines for refusals not written);
    /// 4. the spool's drainer publishes what Kafka takes of the spool, and the
    ///    producer flushes;
    /// 5. the spool stops taking callbacks, and the last line says what it
    ///    holds.
    ///
    /// Steps 2 to 4 share the drain timeout.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (mut background, drainer) = self.start_background_tasks();
        tracing::info!(
            addr = %self.listener.local_addr()?,
            topic = self.kafka.topic(),
            "listening for CSS callbacks"
        );
        let state = self.state.clone();
        let (kafka, embedded, spool) = (self.kafka.clone(), self.embedded, self.spool.clone());
        let deadline = serve_until_drained(self.listener, self.state, &self.config, shutdown).await;
        background.shutdown().await;
        if let Some(drainer) = drainer {
            drainer.finish(deadline).await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        // Blocking: off the runtime's workers.
        let flushing = kafka.clone();
        match tokio::task::spawn_blocking(move || flushing.flush(left)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "producer flush did not complete"),
            Err(error) => tracing::error!(%error, "producer flush failed"),
        }
        drop(embedded);
        let left = match &spool {
            Some(spool) => Some(close_spool(spool).await),
            None => None,
        };
        // The last interval too, so that the summaries account for every
        // refusal (those of the spool's close among them).
        state.outage.summarise();
        let after_the_last_second = std::time::Instant::now() + Duration::from_secs(1);
        throttle::log_unwritten(&state.refusal_lines, after_the_last_second);
        log_stopped(left);
        Ok(())
    }

    /// What runs beside the requests until shutdown: the Kafka watcher, the
    /// outage summaries, the lines for refusals not written one by one, the
    /// schema registration and its checks; and the spool's drainer, which
    /// shutdown tells to finish instead of stopping it.
    fn start_background_tasks(&mut self) -> (JoinSet<()>, Option<Drainer>) {
        let mut tasks = JoinSet::new();
        let readiness = self.state.readiness.clone();
        let outage = self.state.outage.clone();
        let kafka = self.kafka.clone();
        tasks.spawn(restarting("kafka_watcher", move || {
            let (readiness, outage, publisher) = (readiness.clone(), outage.clone(), kafka.clone());
            kafka::watch::watch(kafka.clone(), move |checked| {
                outage.kafka_checked(checked);
                readiness.set_kafka(checked.is_ok());
                readiness.set_producer(publisher.can_publish());
            })
        }));
        let outage = self.state.outage.clone();
        tasks.spawn(restarting("log_summaries", move || {
            let outage = outage.clone();
            async move { outage.run_summaries().await }
        }));
        let state = self.state.clone();
        tasks.spawn(restarting("refusal_lines", move || {
            let state = state.clone();
            async move {
                let mut every_second = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every_second.tick().await;
                    throttle::log_unwritten(&state.refusal_lines, std::time::Instant::now());
                }
            }
        }));
        if let Some((client, id)) = self.registration.take() {
            let (client, readiness) = (Arc::new(client), self.state.readiness.clone());
            tasks.spawn(restarting("registration", move || {
                let (client, id, readiness) = (client.clone(), id.clone(), readiness.clone());
                async move {
                    loop {
                        registry::register(&client, &id).await;
                        readiness.set_schema(true);
                        registry::recheck(&client, &id, registry::RECHECK_EVERY).await;
                        readiness.set_schema(false);
                    }
                }
            }));
        }
        let drainer = self.spool.clone().map(|spool| {
            let (stop, stopped) = watch::channel(false);
            let (kafka, schema_id) = (self.kafka.clone(), self.schema_id.clone());
            let mut stopping = stopped.clone();
            let task = tokio::spawn(restarting_until(
                "spool_drainer",
                async move {
                    let _ = stopping.wait_for(|&stop| stop).await;
                },
                move || {
                    drain::drain(
                        spool.clone(),
                        kafka.clone(),
                        Until::Stopped(stopped.clone()),
                        schema_id.clone(),
                    )
                },
            ));
            Drainer { task, stop }
        });
        (tasks, drainer)
    }
}

/// Runs `start` (blocking: opening the spool reads every waiting segment,
/// minutes for gigabytes) on a blocking thread while a stand-in serves the
/// port: liveness answers, readiness says what it waits for, and callbacks
/// get 503 with `Retry-After`. A port that stayed closed meanwhile would have
/// a startup probe restart the replica before its spool is read.
async fn while_starting<T: Send + 'static>(
    listener: &TcpListener,
    stand_in: axum::Router,
    header_read_timeout: Duration,
    start: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let socket = listener_for_the_stand_in(listener)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(http::server::serve(
        socket,
        stand_in,
        header_read_timeout,
        async move {
            let _ = stopped.await;
        },
    ));
    let started = tokio::task::spawn_blocking(start).await;
    // Stops accepting and answers what it took; the bridge takes over the
    // port, where connections wait meanwhile. A connection that sends nothing
    // would hold the stand-in until the header timeout: start-up does not
    // wait for it that long (its task ends by itself).
    let _ = stop.send(());
    let _ = tokio::time::timeout(STAND_IN_STOP, serving).await;
    Ok(started?)
}

/// The longest start-up waits for the stand-in of [`while_starting`] to
/// finish the requests it took.
const STAND_IN_STOP: Duration = Duration::from_secs(2);

/// A second handle on `listener`'s socket, for the stand-in of
/// [`while_starting`].
fn listener_for_the_stand_in(listener: &TcpListener) -> std::io::Result<TcpListener> {
    #[cfg(unix)]
    let socket = {
        use std::os::fd::AsFd;
        std::net::TcpListener::from(listener.as_fd().try_clone_to_owned()?)
    };
    #[cfg(windows)]
    let socket = {
        use std::os::windows::io::AsSocket;
        std::net::TcpListener::from(listener.as_socket().try_clone_to_owned()?)
    };
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket)
}

/// How long a background task that panicked waits before it starts again:
/// the first time, and at most, doubling from one to the other while it keeps
/// panicking.
const RESTART_PAUSE: Duration = Duration::from_secs(1);
const MAX_RESTART_PAUSE: Duration = Duration::from_secs(300);

/// Runs the future `start` makes, and makes and runs another after each panic
/// (a defect: logged at ERROR, counted in `css_bridge_panics_total{task}`).
///
/// A background task that ended would leave the replica stuck without a
/// word: without the Kafka watcher, readiness would no longer follow Kafka;
/// without the registration, the replica would stay not ready for a schema
/// that is registered; without the spool's drainer, the spool would take
/// every callback until it is full. A drainer started again begins where the
/// spool was last released, so records the one before had handed to Kafka
/// may be published twice (with their `event_id`): a task that keeps
/// panicking is started less and less often, at most every five minutes, and
/// after the shortest pause again once a run lasted longer than that.
async fn restarting<F, Fut>(task: &'static str, start: F) -> Fut::Output
where
    F: FnMut() -> Fut,
    Fut: Future,
{
    match restarting_until(task, std::future::pending(), start).await {
        Some(output) => output,
        None => unreachable!("a pending future never completes"),
    }
}

/// [`restarting`], but a task that waits to be started again when `stopped`
/// completes is not started again (`None`): shutdown does not wait out a pause
/// of up to five minutes for a drainer that would only drain what the next
/// start drains anyway.
async fn restarting_until<F, Fut>(
    task: &'static str,
    stopped: impl Future<Output = ()>,
    mut start: F,
) -> Option<Fut::Output>
where
    F: FnMut() -> Fut,
    Fut: Future,
{
    use futures::FutureExt;
    let mut pause = RESTART_PAUSE;
    let mut stopped = std::pin::pin!(stopped);
    loop {
        let started = Instant::now();
        match std::panic::AssertUnwindSafe(start()).catch_unwind().await {
            Ok(output) => return Some(output),
            Err(panic) => {
                crate::metrics::count_panic(task);
                if started.elapsed() > MAX_RESTART_PAUSE {
                    pause = RESTART_PAUSE;
                }
                tracing::error!(
                    task,
                    panic = crate::telemetry::panic_message(&*panic),
                    restart_in = ?pause,
                    "a background task panicked; starting it again"
                );
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = &mut stopped => return None,
                }
                pause = (pause * 2).min(MAX_RESTART_PAUSE);
            }
        }
    }
}

/// The service's spool drainer, running until shutdown tells it to finish.
struct Drainer {
    /// `None` when shutdown came while it waited to be started again after
    /// a panic.
    task: JoinHandle<Option<Drained>>,
    stop: watch::Sender<bool>,
}

impl Drainer {
    /// Has the drainer publish what Kafka takes of the spool before
    /// `deadline`, then stop; the rest stays on disk for the next start (or
    /// `spool drain`), which the last line says (see [`close_spool`]).
    async fn finish(mut self, deadline: Instant) {
        let _ = self.stop.send(true);
        let emptied = tokio::time::timeout_at(deadline, &mut self.task).await;
        if emptied.is_err() {
            self.task.abort();
            // Ended at its next await: a release it was about to send would
            // otherwise reach the spool after its count (see `close_spool`).
            let _ = (&mut self.task).await;
        }
    }
}

/// How long the end of shutdown waits for the spool's writer to close (see
/// [`Spool::close`]): a round of writes takes milliseconds; a stalled disk is
/// not waited for past the pod's grace period, which leaves 5 s after the
/// drain timeout by default.
const SPOOL_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What a stopped service leaves in its spool for the next start.
struct LeftInSpool {
    records: u64,
    /// The writer did not answer the close in time: some appends may still
    /// be written.
    perhaps_more: bool,
}

/// Closes the spool and counts what it holds. Requests the drain timeout cut
/// off may still be running and would otherwise be answered from the spool
/// after the count: a replica scaled away is drained by hand (or its volume
/// deleted) on the strength of the last line, so the spool is closed to them
/// first (503). The drainer has ended: nothing is released after the count.
async fn close_spool(spool: &Spool) -> LeftInSpool {
    let closed = spool.close(SPOOL_CLOSE_WAIT).await;
    LeftInSpool {
        records: spool.records(),
        perhaps_more: !closed,
    }
}

/// The last line: with a spool, what it holds for the next start.
fn log_stopped(left: Option<LeftInSpool>) {
    match left {
        Some(LeftInSpool {
            records,
            perhaps_more: true,
        }) => tracing::warn!(
            records,
            "stopped with records in the spool, perhaps more: its disk did not answer; they are published at the next start"
        ),
        Some(LeftInSpool { records, .. }) if records > 0 => tracing::warn!(
            records,
            "stopped with records in the spool: they are published at the next start"
        ),
        _ => tracing::info!("stopped"),
    }
}

/// Serves until `shutdown`, then steps 1 and 2 of [`App::run`]. Returns once
/// the in-flight requests are done (or the drain timeout is up) with the drain
/// deadline: the timeout runs from when the listener closes, and steps 3 and 4
/// get what is left of it.
async fn serve_until_drained(
    listener: TcpListener,
    state: Arc<AppState>,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Instant {
    let drain = Duration::from_secs(config.drain_timeout_secs);
    let delay = Duration::from_secs(config.shutdown_delay_secs);
    let readiness = state.readiness.clone();
    let (closing, closed) = tokio::sync::oneshot::channel();
    let stop_accepting = async move {
        shutdown.await;
        readiness.start_draining();
        tracing::info!(
            ?delay,
            "shutting down: not ready; serving on while traffic moves away"
        );
        tokio::time::sleep(delay).await;
        tracing::info!(timeout = ?drain, "shutting down: finishing in-flight requests");
        let _ = closing.send(());
    };
    let header_read_timeout = Duration::from_secs(config.header_read_timeout_secs);
    let serve = http::server::serve(
        listener,
        http::router(state),
        header_read_timeout,
        stop_accepting,
    );
    let mut serve = std::pin::pin!(serve);
    tokio::select! {
        () = &mut serve => return Instant::now() + drain,
        Ok(()) = closed => {}
    }
    let deadline = Instant::now() + drain;
    if tokio::time::timeout_at(deadline, serve).await.is_err() {
        tracing::warn!("drain timeout reached with requests still in flight");
    }
    deadline
}

/// The bootstrap servers to use: the configured ones, or those of an embedded
/// cluster started here (which then also sets the producer properties it needs).
fn resolve_brokers(config: &mut Config) -> anyhow::Result<(String, Option<EmbeddedKafka>)> {
    if let Some(brokers) = &config.kafka.connection.brokers {
        return Ok((brokers.clone(), None));
    }
    let cluster = EmbeddedKafka::start(&config.kafka.connection.topic)
        .context("cannot start the embedded Kafka cluster")?;
    let bootstrap = cluster.bootstrap_servers();
    tracing::warn!(
        bootstrap_servers = %bootstrap,
        "no --kafka-brokers given: using an embedded in-memory Kafka cluster; \
         records are kept in memory only and lost when the process exits"
    );
    config
        .kafka
        .connection
        .properties
        .flags
        .extend(EmbeddedKafka::producer_properties());
    Ok((bootstrap, Some(cluster)))
}

/// Says once, at start-up, whether callbacks are authenticated and why.
fn log_auth_mode(mode: AuthMode, keys: &[CallbackKey], listen: SocketAddr) {
    match mode {
        AuthMode::Signed => {
            tracing::info!(keys = keys.len(), "callback authentication on");
            if keys.iter().any(CallbackKey::is_short) {
                tracing::warn!(
                    min_bytes = crate::css::signature::MIN_RECOMMENDED_KEY_BYTES,
                    "a callback key is short: a signature is an unsalted MD5 of key and t, \
                     so a short key can be guessed from one captured callback"
                );
            }
        }
        AuthMode::UnsignedLoopback => tracing::warn!(
            %listen,
            "callback authentication off (no callback key): listening on loopback only; \
             set BRIDGE_CALLBACK_KEYS to take callbacks from CSS"
        ),
        AuthMode::UnsignedExposed => tracing::warn!(
            %listen,
            "callback authentication off (no callback key, BRIDGE_INSECURE_NO_CALLBACK_AUTH): \
             anyone who can reach this address can publish to Kafka"
        ),
    }
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C). A second signal
/// ends the process at once, without the rest of the shutdown: what an
/// operator who presses Ctrl-C twice asks for. Records still in the producer
/// then belong to callbacks not answered 200 (or are in the spool).
pub async fn shutdown_signal() {
    signal().await;
    tokio::spawn(async {
        signal().await;
        tracing::warn!("a second shutdown signal: exiting now, without finishing the shutdown");
        std::process::exit(1);
    });
}

/// The next SIGTERM or SIGINT. A signal that cannot be listened to is said
/// once and never comes, rather than stopping the process at once.
async fn signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_background_task_that_panics_is_started_again_less_and_less_often() {
        let starts = std::sync::Mutex::new(Vec::new());
        let last = restarting("test_task", || {
            let run = {
                let mut starts = starts.lock().unwrap();
                starts.push(Instant::now());
                starts.len()
            };
            async move {
                if run <= 3 {
                    panic!("a defect");
                }
                run
            }
        })
        .await;
        assert_eq!(last, 4);
        let starts = starts.into_inner().unwrap();
        let pauses: Vec<u64> = (starts.windows(2))
            .map(|pair| (pair[1] - pair[0]).as_secs())
            .collect();
        assert_eq!(pauses, [1, 2, 4]);
        let text = Metrics::new(http::CALLBACK_PATH).encode();
        assert!(
            text.contains("css_bridge_panics_total{task=\"test_task\"} 3"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_stopped_while_it_waits_to_start_again_is_not_started_again() {
        let (stop, mut stopped) = watch::channel(false);
        let starts = std::sync::atomic::AtomicUsize::new(0);
        let begun = Instant::now();
        let stopping = async move {
            let _ = stopped.wait_for(|&stop| stop).await;
        };
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.send(true).unwrap();
        });
        let output = restarting_until("test_stopped_task", stopping, || {
            starts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { panic!("a defect") }
        })
        .await;
        stopper.await.unwrap();
        assert_eq!(output, None::<()>);
        assert_eq!(starts.into_inner(), 1);
        assert_eq!(
            begun.elapsed(),
            Duration::from_millis(300),
            "not the whole pause"
        );
    }

    /// A spool of gigabytes takes minutes to read: the port answers
    /// meanwhile, and is the bridge's once it is read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn while_the_spool_is_read_liveness_answers_and_callbacks_get_503() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (read, reading) = std::sync::mpsc::channel::<()>();
        let starting = tokio::spawn(async move {
            let metrics = Arc::new(Metrics::new(http::CALLBACK_PATH));
            let outage = OutageLog::new("t", Duration::from_secs(60), metrics.clone());
            let stand_in = http::starting_router(Duration::from_secs(7), metrics, Arc::new(outage));
            let read = while_starting(&listener, stand_in, Duration::from_secs(10), move || {
                reading.recv()
            });
            read.await.unwrap().unwrap();
            listener
        });
        let client = reqwest::Client::new();
        let healthz = client.get(format!("{url}/healthz")).send().await.unwrap();
        assert_eq!(healthz.status(), 200);
        assert_eq!(healthz.text().await.unwrap(), "starting");
        let readyz = client.get(format!("{url}/readyz")).send().await.unwrap();
        assert_eq!(readyz.status(), 503);
        let readyz: serde_json::Value = readyz.json().await.unwrap();
        assert_eq!(readyz["blockers"], serde_json::json!(["reading the spool"]));
        let callback = (client.post(format!("{url}{}", http::CALLBACK_PATH)))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(callback.status(), 503);
        assert_eq!(callback.headers()["retry-after"], "7");
        assert!(callback.headers().contains_key("x-request-id"));
        let callback: serde_json::Value = callback.json().await.unwrap();
        assert_eq!(callback["error"], "starting");
        let metrics = client.get(format!("{url}/metrics")).send().await.unwrap();
        let metrics = metrics.text().await.unwrap();
        assert!(metrics.contains("css_bridge_ready 0"), "{metrics}");
        // Counted as the bridge counts them: the 503 as a failed callback too.
        for counted in [
            r#"css_bridge_http_requests_total{route="/css/callback",status="503"} 1"#,
            r#"css_bridge_http_requests_total{route="/readyz",status="503"} 1"#,
            r#"css_bridge_failed_callbacks_total{reason="starting"} 1"#,
        ] {
            assert!(metrics.contains(counted), "{counted}: {metrics}");
        }

        read.send(()).unwrap();
        let listener = starting.await.unwrap();
        // The port is the bridge's: a new connection waits for its accept.
        let connecting = tokio::spawn(tokio::net::TcpStream::connect(
            listener.local_addr().unwrap(),
        ));
        let (_, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the connection reaches the bridge's listener")
            .unwrap();
        connecting.await.unwrap().unwrap();
    }
}
