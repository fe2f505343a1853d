//! Start-up and shutdown: build the service from its configuration, serve until
//! the shutdown signal, drain, flush the producer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::avro::wire::{SchemaId, WireFormat};
use crate::config::{AuthMode, Config, KafkaConfig};
use crate::css::{CallbackKey, Verifier};
use crate::health::{self, Readiness};
use crate::http::{self, AppState};
use crate::ingest::Ingestor;
use crate::kafka::{EmbeddedKafka, Publisher};
use crate::metrics::Metrics;
use crate::outage::OutageLog;
use crate::registry::{self, RegistryClient};
use crate::spool::drain::{self, Until};
use crate::spool::{Spool, Spooling};

/// The bridge, built and bound to its port, not yet serving.
pub struct App {
    listener: TcpListener,
    state: Arc<AppState<Spooling<Publisher>>>,
    config: Config,
    /// Registers the schema once `run` starts; `None` without a registry.
    registration: Option<(RegistryClient, Arc<SchemaId>)>,
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
        let (brokers, embedded) = resolve_brokers(&mut config)?;
        log_auth_mode(auth_mode, &keys, listen);
        let metrics = Arc::new(Metrics::new(http::CALLBACK_PATH));
        metrics.set_callback_auth_enabled(auth_mode == AuthMode::Signed);
        let verifier = Verifier::new(
            keys,
            config.auth.max_clock_skew_secs,
            config.auth.max_signature_horizon_secs(),
        );
        let outage = Arc::new(OutageLog::new(
            &config.kafka.topic,
            Duration::from_secs(config.log_summary_interval_secs),
            metrics.clone(),
        ));
        let kafka = KafkaConfig {
            spooled: config.spool.dir.is_some(),
            ..config.kafka.clone()
        };
        let publisher = Publisher::new(&kafka, &brokers, metrics.clone(), outage.clone())
            .context("cannot create the Kafka producer")?;
        let registry = RegistryClient::new(&config.registry, &config.kafka.topic)
            .context("invalid Schema Registry settings")?;
        let registration = registry.map(|client| (client, Arc::new(SchemaId::default())));
        let wire_format = match &registration {
            Some((_, id)) => WireFormat::Confluent(id.clone()),
            None => WireFormat::Plain,
        };
        let spool = match &config.spool.dir {
            Some(dir) => Some(
                Spool::open(dir, config.spool.max_bytes, metrics.clone())
                    .with_context(|| format!("cannot open the spool in {}", dir.display()))?,
            ),
            None => None,
        };
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let mut readiness = Readiness::new(metrics.clone(), registration.is_none());
        if let Some(spool) = &spool {
            tracing::info!(dir = %spool.dir().display(), max_bytes = config.spool.max_bytes, "spool on: callbacks Kafka cannot take are kept on disk");
            readiness = readiness.with_spool(spool.clone());
        }
        let publisher = Spooling::new(Arc::new(publisher), spool);
        let state = Arc::new(AppState {
            ingestor: Ingestor::new(verifier, Arc::new(publisher), metrics.clone(), wire_format),
            readiness: Arc::new(readiness),
            outage,
            metrics,
            in_flight: tokio::sync::Semaphore::new(config.max_in_flight),
            retry_after: Duration::from_secs(config.retry_after_secs),
            body_read_timeout: Duration::from_secs(config.body_read_timeout_secs),
            max_body_bytes: config.max_body_bytes,
        });
        Ok(Self {
            listener,
            state,
            config,
            registration,
            embedded,
        })
    }

    /// The address actually bound (the port is chosen by the OS for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves. Then, in order: readiness turns false;
    /// the bridge keeps serving for the shutdown delay, while load balancers stop
    /// routing here; it stops accepting connections and lets in-flight requests
    /// finish; it flushes the producer. The last two steps share the drain
    /// timeout.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let drain = Duration::from_secs(self.config.drain_timeout_secs);
        let delay = Duration::from_secs(self.config.shutdown_delay_secs);
        let router = http::router(self.state.clone());
        let spooling = self.state.ingestor.publisher().clone();
        let publisher = spooling.inner().clone();
        let readiness = self.state.readiness.clone();
        let draining = spooling.spool().map(|spool| {
            tokio::spawn(drain::drain(
                spool.clone(),
                publisher.clone(),
                Until::Forever,
            ))
        });
        let outage = self.state.outage.clone();
        let watcher = tokio::spawn(health::watch_kafka(
            publisher.clone(),
            readiness.clone(),
            outage.clone(),
        ));
        let summaries = tokio::spawn({
            let outage = outage.clone();
            async move { outage.run_summaries().await }
        });
        let registering = self
            .registration
            .map(|(client, id)| tokio::spawn(registry::register(client, id, readiness.clone())));
        tracing::info!(
            addr = %self.listener.local_addr()?,
            topic = publisher.topic(),
            "listening for CSS callbacks"
        );
        let (drain_started, drain_started_rx) = tokio::sync::oneshot::channel::<()>();
        let stop_accepting = async move {
            shutdown.await;
            readiness.start_draining();
            tracing::info!(
                ?delay,
                "shutting down: not ready; serving on while traffic moves away"
            );
            tokio::time::sleep(delay).await;
            tracing::info!(timeout = ?drain, "shutting down: finishing in-flight requests");
            // Dropping the sender instead would read as "never started" below.
            let _ = drain_started.send(());
        };
        let header_read_timeout = Duration::from_secs(self.config.header_read_timeout_secs);
        let serve = http::server::serve(self.listener, router, header_read_timeout, stop_accepting);
        // The drain timer starts when the listener closes, not at start-up; the
        // flush below gets what is left of it.
        let drain_deadline = std::sync::OnceLock::new();
        let deadline = async {
            match drain_started_rx.await {
                Ok(()) => {
                    let deadline = tokio::time::Instant::now() + drain;
                    let _ = drain_deadline.set(deadline);
                    tokio::time::sleep_until(deadline).await
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = serve => {}
            () = deadline => tracing::warn!("drain timeout reached with requests still in flight"),
        }
        watcher.abort();
        if let Some(registering) = registering {
            registering.abort();
        }
        let left = || {
            drain_deadline.get().map_or(drain, |deadline| {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            })
        };
        if let (Some(draining), Some(spool)) = (draining, spooling.spool()) {
            // What Kafka takes within the drain timeout leaves the spool now;
            // the rest stays on disk for the next start (or `spool drain`).
            draining.abort();
            let emptied = tokio::time::timeout(
                left(),
                drain::drain(spool.clone(), publisher.clone(), Until::Empty),
            )
            .await;
            if emptied.is_err() || spool.records() > 0 {
                tracing::warn!(
                    records = spool.records(),
                    "shutting down with records in the spool: they are published at the next start"
                );
            }
        }
        let left = left();
        if let Err(error) = publisher.flush(left) {
            tracing::error!(%error, "producer flush did not complete");
        }
        drop(self.embedded);
        summaries.abort();
        // The last interval too, so that the summaries account for every refusal.
        outage.summarise();
        tracing::info!("stopped");
        Ok(())
    }
}

/// The bootstrap servers to use: the configured ones, or those of an embedded
/// cluster started here (which then also sets the producer properties it needs).
fn resolve_brokers(config: &mut Config) -> anyhow::Result<(String, Option<EmbeddedKafka>)> {
    if let Some(brokers) = &config.kafka.brokers {
        return Ok((brokers.clone(), None));
    }
    let cluster = EmbeddedKafka::start(&config.kafka.topic)
        .context("cannot start the embedded Kafka cluster")?;
    let bootstrap = cluster.bootstrap_servers();
    tracing::warn!(
        bootstrap_servers = %bootstrap,
        "no --kafka-brokers given: using an embedded in-memory Kafka cluster; \
         records are kept in memory only and lost when the process exits"
    );
    config
        .kafka
        .properties
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

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
