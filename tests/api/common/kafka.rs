//! Apache Kafka for the integration tests, run by `scripts/kafka`.
//!
//! Most tests publish to a topic of their own on the **shared** one-node
//! cluster that `scripts/test` starts for the whole run (its bootstrap in
//! `BRIDGE_TEST_KAFKA`): a JVM per test would cost seconds and memory each. A
//! test that stops, kills or cuts off brokers gets a **cluster of its own**
//! ([`Broker::dedicated`], [`Broker::start_partitionable`], [`Cluster::start`]),
//! torn down when dropped. Clusters live under `target/tmp/kafka/`, where
//! `scripts/test` also ends any left behind by a test that was killed before
//! its destructor ran.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use super::{repo_path, unique_suffix};

/// The environment variable that holds the shared cluster's bootstrap servers.
pub const SHARED_KAFKA_ENV: &str = "BRIDGE_TEST_KAFKA";

/// A KRaft cluster of Apache Kafka nodes (each broker and controller) on
/// loopback, its data under `target/tmp/kafka/<name>`, killed and removed when
/// dropped.
pub struct Cluster {
    dir: PathBuf,
    bootstrap: String,
}

impl Cluster {
    /// Starts `nodes` nodes, with extra `scripts/kafka start` options.
    pub fn start(nodes: u32, options: &[&str]) -> Cluster {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("kafka")
            .join(unique_suffix());
        let nodes = nodes.to_string();
        let mut args = vec!["start", dir.to_str().unwrap(), "--nodes", &nodes];
        args.extend_from_slice(options);
        let bootstrap = scripts_kafka(&args);
        Cluster { dir, bootstrap }
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The cluster's directory: its nodes' files, and (for a secured cluster)
    /// its CA and certificates under `tls/`.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn run_for_output(&self, args: &[&str]) -> String {
        let (command, rest) = args.split_first().unwrap();
        let mut full = vec![*command, self.dir.to_str().unwrap()];
        full.extend_from_slice(rest);
        scripts_kafka(&full)
    }

    /// SIGTERM: a controlled shutdown, as a rolling restart does it.
    pub fn stop(&self, node: i32) {
        self.run(&["stop", &node.to_string()]);
    }

    /// SIGKILL: the node dies at once, as in a crash or an OOM kill.
    pub fn kill(&self, node: i32) {
        self.run(&["kill", &node.to_string()]);
    }

    /// Starts a stopped or killed node again, on its data, and waits for it.
    pub fn start_node(&self, node: i32) {
        self.run(&["start", &node.to_string()]);
    }

    /// Kills every node at once.
    pub fn kill_all(&self) {
        self.run(&["kill"]);
    }

    /// Starts every node that is not running, and waits for them.
    pub fn start_all(&self) {
        self.run(&["start"]);
    }

    /// The node ids.
    pub fn nodes(&self) -> Vec<i32> {
        let nodes = std::fs::read_to_string(self.dir.join("nodes")).expect("the cluster's nodes");
        nodes.lines().map(|id| id.parse().unwrap()).collect()
    }

    /// The leader of `topic`'s `partition` as the cluster reports it now
    /// (`None` while it has none).
    pub fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("metadata client");
        let metadata = probe
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .ok()?;
        let leader = metadata
            .topics()
            .first()?
            .partitions()
            .iter()
            .find(|p| p.id() == partition)?
            .leader();
        (leader >= 0).then_some(leader)
    }

    /// Waits until every partition of `topic` has a leader and all its
    /// replicas in sync, as a rolling restart waits before the next node.
    pub fn wait_fully_replicated(&self, topic: &str, timeout: Duration) {
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("metadata client");
        let start = std::time::Instant::now();
        loop {
            let in_sync = probe
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()
                .and_then(|metadata| {
                    let partitions = metadata.topics().first()?.partitions();
                    Some(
                        !partitions.is_empty()
                            && partitions
                                .iter()
                                .all(|p| p.leader() >= 0 && p.isr().len() == p.replicas().len()),
                    )
                })
                .unwrap_or(false);
            if in_sync {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "{topic} not fully replicated after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn run(&self, args: &[&str]) {
        let (command, rest) = args.split_first().unwrap();
        let mut full = vec![*command, self.dir.to_str().unwrap()];
        full.extend_from_slice(rest);
        scripts_kafka(&full);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo_path("scripts/kafka"))
            .args(["down", self.dir.to_str().unwrap()])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `scripts/kafka` and returns what it printed; panics, with its output
/// shown, when it fails.
fn scripts_kafka(args: &[&str]) -> String {
    let output = Command::new(repo_path("scripts/kafka"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/kafka runs");
    assert!(
        output.status.success(),
        "scripts/kafka {} failed ({}); its messages are above",
        args.join(" "),
        output.status
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A one-node cluster that requires what production clusters require, made by
/// `scripts/kafka start --listener sasl_ssl --listener mtls` (see its header):
/// a SASL_SSL listener (SCRAM-SHA-512) and an SSL listener that requires a
/// client certificate, both with a certificate from a throwaway CA for the
/// name `localhost`, and the StandardAuthorizer, which lets a client do
/// nothing an ACL does not allow. Its PLAINTEXT listener ([`Self::admin`]) is
/// the harness's, a super user's: topics, ACLs, reading back.
pub struct SecuredCluster {
    cluster: Cluster,
}

impl SecuredCluster {
    /// Starts the node with the SCRAM-SHA-512 `credentials` (`user=password`)
    /// and extra `scripts/kafka start` options.
    pub fn start(credentials: &[&str], options: &[&str]) -> SecuredCluster {
        let mut args = vec!["--listener", "sasl_ssl", "--listener", "mtls"];
        for credential in credentials {
            args.extend_from_slice(&["--scram", credential]);
        }
        args.extend_from_slice(options);
        SecuredCluster {
            cluster: Cluster::start(1, &args),
        }
    }

    /// The PLAINTEXT bootstrap, for the harness only: a super user.
    pub fn admin(&self) -> &str {
        self.cluster.bootstrap()
    }

    /// The SASL_SSL listener's bootstrap, `localhost:PORT`.
    pub fn sasl_ssl(&self) -> String {
        self.cluster.run_for_output(&["bootstrap", "sasl_ssl"])
    }

    /// The mutual-TLS listener's bootstrap, `localhost:PORT`.
    pub fn mtls(&self) -> String {
        self.cluster.run_for_output(&["bootstrap", "mtls"])
    }

    /// The CA that signed the broker's certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.cluster.dir().join("tls/ca.pem")
    }

    /// A client certificate for `CN=name` signed by the cluster's CA: the
    /// certificate and its key (PEM). Issued again, it replaces the files.
    pub fn issue_client_certificate(&self, name: &str) -> (PathBuf, PathBuf) {
        let certificate = PathBuf::from(self.cluster.run_for_output(&["cert", name]));
        (certificate.clone(), certificate.with_extension("key"))
    }

    /// Allows `principal` operations on resources: each grant is
    /// `RESOURCE=OPERATION[,...]`, e.g. `topic:t=write,describe` or
    /// `cluster=idempotent_write` (`scripts/kafka acl`).
    pub fn grant(&self, principal: &str, grants: &[String]) {
        self.acl("add", principal, grants);
    }

    /// Takes back what [`Self::grant`] allowed.
    pub fn revoke(&self, principal: &str, grants: &[String]) {
        self.acl("remove", principal, grants);
    }

    fn acl(&self, action: &str, principal: &str, grants: &[String]) {
        let mut args = vec!["acl", action, principal];
        args.extend(grants.iter().map(String::as_str));
        self.cluster.run_for_output(&args);
    }

    /// A CA of its own, which signed nothing this cluster presents: what a
    /// client configured with the wrong CA trusts.
    pub fn foreign_ca(&self) -> PathBuf {
        let dir = self.cluster.dir().join("foreign-ca");
        PathBuf::from(scripts_kafka(&["ca", dir.to_str().unwrap()]))
    }

    /// Stops the node (SIGTERM) and starts it again on its data: every client
    /// connection is opened anew.
    pub fn restart(&self) {
        self.cluster.stop(1);
        self.cluster.start_node(1);
    }

    /// Sets `user`'s SCRAM-SHA-512 password on the running cluster.
    pub fn set_password(&self, user: &str, password: &str) {
        self.cluster.run_for_output(&["scram", user, password]);
    }

    /// A directory for this test's files (the mounted secrets), removed with
    /// the cluster.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.cluster.dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

/// A Kafka to publish to: the shared cluster, or a one-node cluster of the
/// test's own, optionally behind a [`TcpProxy`] that can cut it off.
pub struct Broker {
    /// The cluster this test owns; `None` for the shared one.
    cluster: Option<Cluster>,
    /// What clients are given (the proxy's address, when there is one).
    bootstrap: String,
    proxy: Option<TcpProxy>,
}

impl Broker {
    /// The shared cluster (`BRIDGE_TEST_KAFKA`). Outside `scripts/test`, a
    /// one-node cluster of the test's own instead: slower, but the test still
    /// runs on its own.
    pub fn shared() -> Broker {
        match std::env::var(SHARED_KAFKA_ENV) {
            Ok(bootstrap) if !bootstrap.is_empty() => Broker {
                cluster: None,
                bootstrap,
                proxy: None,
            },
            _ => Broker::dedicated(),
        }
    }

    /// A one-node cluster of this test's own, for a test that stops it.
    pub fn dedicated() -> Broker {
        let cluster = Cluster::start(1, &[]);
        Broker {
            bootstrap: cluster.bootstrap().to_owned(),
            cluster: Some(cluster),
            proxy: None,
        }
    }

    /// A one-node cluster of this test's own that [`Broker::partition`] cuts
    /// off from its clients: it tells them the proxy's port as its own.
    pub fn start_partitionable() -> Broker {
        let proxy = TcpProxy::start();
        let advertise = format!("1={}", proxy.port);
        let cluster = Cluster::start(1, &["--advertise", &advertise]);
        let port = scripts_kafka(&["port", cluster.dir.to_str().unwrap(), "1"]);
        proxy.forward_to(port.parse().expect("a port"));
        Broker {
            bootstrap: format!("127.0.0.1:{}", proxy.port),
            cluster: Some(cluster),
            proxy: Some(proxy),
        }
    }

    /// Cuts the broker off from its clients, the process staying up (see
    /// [`TcpProxy::cut`]).
    pub fn partition(&self) {
        self.proxy.as_ref().expect("a broker behind a proxy").cut();
    }

    /// Ends [`Broker::partition`].
    pub fn heal(&self) {
        self.proxy.as_ref().expect("a broker behind a proxy").mend();
    }

    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    fn own(&self) -> &Cluster {
        self.cluster
            .as_ref()
            .expect("a test that stops its broker starts it with Broker::dedicated")
    }

    /// Stops the broker (SIGTERM: a controlled shutdown); its data stays.
    pub fn stop(&self) {
        self.own().stop(1);
    }

    /// Starts the stopped broker again on its data, and waits for it.
    pub fn restart(&self) {
        self.own().start_node(1);
    }

    /// Creates a topic with a unique name and returns the name.
    pub async fn create_topic(&self, partitions: i32) -> String {
        let topic = format!("css.push-errors.test-{}", unique_suffix());
        self.create_named_topic(&topic, partitions).await;
        topic
    }

    pub async fn create_named_topic(&self, topic: &str, partitions: i32) {
        create_topic(&self.bootstrap, topic, partitions, 1, &[]).await;
    }
}

/// Creates `topic` with its `replication` and topic configs, and waits until
/// every partition has a leader (a producer started at once then finds them).
pub async fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
    configs: &[(&str, &str)],
) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    for (key, value) in configs {
        new_topic = new_topic.set(key, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    // A request that timed out is sent again: a broker just started, on cores
    // other tests' clusters load, once took longer than the request timeout
    // to answer its first one. The topic may exist by then.
    for attempt in 1.. {
        match admin.create_topics([&new_topic], &options).await {
            Ok(results) => {
                for result in results {
                    match result {
                        Ok(_) => {}
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) if attempt > 1 => {}
                        Err(error) => panic!("topic {topic} not created: {error:?}"),
                    }
                }
                break;
            }
            Err(error) if attempt < 3 => eprintln!("create topic {topic}: {error}; again"),
            Err(error) => panic!("create topic request: {error}"),
        }
    }
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let start = std::time::Instant::now();
    loop {
        let led = probe
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|metadata| {
                let found = metadata.topics().first()?.partitions();
                Some(found.len() == partitions as usize && found.iter().all(|p| p.leader() >= 0))
            })
            .unwrap_or(false);
        if led {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "topic {topic}'s partitions have no leader after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP forwarder on a fixed loopback port to a changeable upstream port, on
/// its own thread and runtime so that blocking test code cannot stall it.
pub struct TcpProxy {
    pub port: u16,
    upstream: std::sync::Arc<std::sync::atomic::AtomicU16>,
    /// `true` while traffic passes; see [`TcpProxy::cut`].
    open: tokio::sync::watch::Sender<bool>,
}

impl TcpProxy {
    pub fn start() -> TcpProxy {
        use std::sync::atomic::{AtomicU16, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = std::sync::Arc::new(AtomicU16::new(0));
        let target = upstream.clone();
        let (open, watch) = tokio::sync::watch::channel(true);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        // Out of descriptors, say: try again rather than stop forwarding.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    if !*watch.borrow() {
                        continue; // cut: the connection is dropped at once
                    }
                    let port = target.load(Ordering::Relaxed);
                    let mut watch = watch.clone();
                    tokio::spawn(async move {
                        if let Ok(mut outbound) =
                            tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                        {
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = watch.wait_for(|open| !open) => {}
                            }
                        }
                    });
                }
            });
        });
        TcpProxy {
            port,
            upstream,
            open,
        }
    }

    pub fn forward_to(&self, port: u16) {
        self.upstream
            .store(port, std::sync::atomic::Ordering::Relaxed);
    }

    /// A network partition: closes every forwarded connection and drops new
    /// ones until [`TcpProxy::mend`], while the broker itself stays up.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    pub fn mend(&self) {
        self.open.send_replace(true);
    }
}
