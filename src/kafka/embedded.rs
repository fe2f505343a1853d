//! The embedded cluster: librdkafka's mock cluster, in process, for a first
//! run with no Kafka at hand.

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// An in-process Kafka cluster (librdkafka's mock cluster) for running the bridge
/// with no Kafka at hand. It keeps data in memory only, until this value is
/// dropped.
///
/// The cluster lives on a thread of its own, which drops it when this value
/// is dropped: librdkafka's handle cannot move between threads, and this
/// value must, with the service that owns it.
pub struct EmbeddedKafka {
    bootstrap_servers: String,
    /// Dropping it ends the cluster's thread.
    _stop: std::sync::mpsc::Sender<()>,
}

impl EmbeddedKafka {
    /// Starts a one-broker cluster with `topic` created (3 partitions).
    pub fn start(topic: &str) -> Result<Self, KafkaError> {
        let (started, on_start) = std::sync::mpsc::channel();
        let (stop, on_stop) = std::sync::mpsc::channel::<()>();
        let topic = topic.to_owned();
        std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster =
                    MockCluster::<'static, DefaultProducerContext>::new(1).and_then(|cluster| {
                        cluster.create_topic(&topic, 3, 1)?;
                        Ok(cluster)
                    });
                let _cluster = match cluster {
                    Ok(cluster) => {
                        let _ = started.send(Ok(cluster.bootstrap_servers()));
                        cluster
                    }
                    Err(error) => {
                        let _ = started.send(Err(error));
                        return;
                    }
                };
                // Returns once the sender is dropped.
                let _ = on_stop.recv();
            })
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        let bootstrap_servers = on_start
            .recv()
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))??;
        Ok(Self {
            bootstrap_servers,
            _stop: stop,
        })
    }

    /// Address to give clients as `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.bootstrap_servers.clone()
    }

    /// Producer properties the embedded cluster needs: one produce request in
    /// flight per connection. The mock cluster does not check idempotent
    /// sequence numbers, so with several in flight, a batch it failed could be
    /// followed by a later one it stored, and librdkafka would then take the
    /// failed batch as delivered too (an "implicit ack") where real Kafka
    /// answers OUT_OF_ORDER_SEQUENCE_NUMBER. One in flight costs throughput,
    /// which does not matter for a cluster that is there to try the bridge out.
    pub fn producer_properties() -> [crate::config::KafkaProperty; 1] {
        [crate::config::KafkaProperty {
            key: "max.in.flight.requests.per.connection".to_owned(),
            value: "1".to_owned(),
        }]
    }
}
