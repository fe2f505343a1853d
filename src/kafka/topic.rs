//! Records sent through librdkafka's handle on their topic.
//!
//! rdkafka's `BaseProducer::send` names the topic of every record: it copies
//! the name into a `CString`, and librdkafka looks the topic up by name under
//! a write lock on the whole client (`rd_kafka_topic_new0`), once per record,
//! against librdkafka's own threads and the other workers' sends. A
//! [`TopicHandle`] is taken once per producer and topic; [`send`] gives it to
//! `rd_kafka_produceva`, which only counts a reference on it. Headers go the
//! same way, as name and value, which librdkafka copies into the record: no
//! list of headers is built and copied per record on our side.

use std::ffi::{CStr, CString, c_void};
use std::marker::PhantomData;
use std::ptr::NonNull;

use rdkafka::bindings as rdsys;
use rdkafka::bindings::rd_kafka_vtype_t as vtype;
use rdkafka::client::{Client, ClientContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::util::IntoOpaque;

/// Most headers a record sent with [`send`] can carry.
pub const MAX_HEADERS: usize = 4;

/// librdkafka's handle on one topic of one client. It borrows the client:
/// librdkafka needs the client to release the handle.
pub struct TopicHandle<'c> {
    handle: NonNull<rdsys::rd_kafka_topic_t>,
    /// The client the handle belongs to, checked by [`send`].
    client: *mut rdsys::rd_kafka_t,
    _client: PhantomData<&'c ()>,
}

// SAFETY: librdkafka's topic handles may be used from any thread; their state
// is behind librdkafka's locks and atomic reference counts.
unsafe impl Send for TopicHandle<'_> {}
// SAFETY: as above.
unsafe impl Sync for TopicHandle<'_> {}

impl<'c> TopicHandle<'c> {
    /// Takes the handle on `topic` of `client`, with the client's default
    /// topic configuration.
    pub fn new<C: ClientContext>(client: &'c Client<C>, topic: &str) -> KafkaResult<Self> {
        // SAFETY: `client` is alive for 'c, which the handle does not outlive.
        unsafe { Self::new_unbound(client.native_ptr(), topic) }
    }

    /// As [`Self::new`], for an owner that keeps the client and its handles
    /// together and drops the handles first (see
    /// [`super::events::ServedProducer`]).
    ///
    /// # Safety
    ///
    /// The handle must be dropped before `client` is destroyed.
    pub(crate) unsafe fn new_unbound(
        client: *mut rdsys::rd_kafka_t,
        topic: &str,
    ) -> KafkaResult<TopicHandle<'static>> {
        let name = CString::new(topic).map_err(KafkaError::from)?;
        // SAFETY: `client` is a live client (the caller's promise); a null
        // configuration takes the client's default one.
        let handle =
            unsafe { rdsys::rd_kafka_topic_new(client, name.as_ptr(), std::ptr::null_mut()) };
        let handle = NonNull::new(handle).ok_or_else(|| {
            // SAFETY: reads librdkafka's thread-local last error.
            let code = unsafe { rdsys::rd_kafka_last_error() };
            KafkaError::ClientCreation(format!(
                "cannot take a handle on topic {topic}: {:?}",
                RDKafkaErrorCode::from(code)
            ))
        })?;
        Ok(TopicHandle {
            handle,
            client,
            _client: PhantomData,
        })
    }
}

impl Drop for TopicHandle<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle is valid and its client alive (the lifetime, or
        // the promise of `new_unbound`'s caller); it is not used again.
        unsafe { rdsys::rd_kafka_topic_destroy(self.handle.as_ptr()) }
    }
}

/// One record for [`send`]: librdkafka copies all of it.
pub struct Record<'a> {
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// Name and value of each header, at most [`MAX_HEADERS`].
    pub headers: &'a [(&'a CStr, &'a [u8])],
}

/// Enqueues `record` on `producer` for `topic`, partitioned by its key, with
/// `opaque` for its delivery report.
///
/// Fails as `BaseProducer::send` does (a full queue, a fatal error: the
/// producer's `MessageProduction` errors), and with `InvalidArgument` for a
/// handle of another client or too many headers.
pub fn send<C: ProducerContext>(
    producer: &BaseProducer<C>,
    topic: &TopicHandle<'_>,
    record: &Record<'_>,
    opaque: C::DeliveryOpaque,
) -> KafkaResult<()> {
    let client = producer.client().native_ptr();
    if topic.client != client || record.headers.len() > MAX_HEADERS {
        return Err(KafkaError::MessageProduction(
            RDKafkaErrorCode::InvalidArgument,
        ));
    }
    let opaque = opaque.into_ptr();
    let value = |vtype, u| rdsys::rd_kafka_vu_t { vtype, u };
    let mem = |bytes: &[u8]| rdsys::rd_kafka_vu_s__bindgen_ty_1 {
        mem: rdsys::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
            ptr: bytes.as_ptr() as *mut c_void,
            size: bytes.len(),
        },
    };
    let empty = value(
        vtype::RD_KAFKA_VTYPE_END,
        rdsys::rd_kafka_vu_s__bindgen_ty_1 { i: 0 },
    );
    let mut values = [empty; 5 + MAX_HEADERS];
    values[0] = value(
        vtype::RD_KAFKA_VTYPE_RKT,
        rdsys::rd_kafka_vu_s__bindgen_ty_1 {
            rkt: topic.handle.as_ptr(),
        },
    );
    values[1] = value(
        vtype::RD_KAFKA_VTYPE_MSGFLAGS,
        rdsys::rd_kafka_vu_s__bindgen_ty_1 {
            i: rdsys::RD_KAFKA_MSG_F_COPY,
        },
    );
    values[2] = value(vtype::RD_KAFKA_VTYPE_VALUE, mem(record.payload));
    values[3] = value(
        vtype::RD_KAFKA_VTYPE_OPAQUE,
        rdsys::rd_kafka_vu_s__bindgen_ty_1 { ptr: opaque },
    );
    let mut count = 4;
    if let Some(key) = record.key {
        values[count] = value(vtype::RD_KAFKA_VTYPE_KEY, mem(key));
        count += 1;
    }
    for (name, header) in record.headers {
        values[count] = value(
            vtype::RD_KAFKA_VTYPE_HEADER,
            rdsys::rd_kafka_vu_s__bindgen_ty_1 {
                header: rdsys::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_2 {
                    name: name.as_ptr(),
                    val: header.as_ptr() as *const c_void,
                    size: header.len() as isize,
                },
            },
        );
        count += 1;
    }
    // SAFETY: the client is alive (borrowed from `producer`) and owns the
    // topic handle (checked above); every pointer in `values` is valid for
    // the call, and librdkafka copies what they point to (`MSG_F_COPY`,
    // headers by value). On success the record owns `opaque`.
    let error = unsafe { rdsys::rd_kafka_produceva(client, values.as_ptr(), count) };
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: `error` is librdkafka's, released once; the record was not
    // enqueued, so `opaque` is ours again and taken back once.
    let code = unsafe {
        let code = rdsys::rd_kafka_error_code(error);
        rdsys::rd_kafka_error_destroy(error);
        drop(C::DeliveryOpaque::from_ptr(opaque));
        code
    };
    Err(KafkaError::MessageProduction(code.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DeliveryResult;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    const TOPIC: &str = "handles";

    /// Keeps each delivery report's opaque and whether it was a success.
    #[derive(Default)]
    struct Reports(Mutex<Vec<(usize, bool)>>);

    impl ClientContext for Reports {}

    impl ProducerContext for Reports {
        type DeliveryOpaque = Arc<usize>;

        fn delivery(&self, result: &DeliveryResult<'_>, opaque: Arc<usize>) {
            self.0.lock().unwrap().push((*opaque, result.is_ok()));
        }
    }

    fn producer(brokers: &str, properties: &[(&str, &str)]) -> BaseProducer<Reports> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "0");
        for (key, value) in properties {
            config.set(*key, *value);
        }
        config.create_with_context(Reports::default()).unwrap()
    }

    fn first_record(brokers: &str) -> rdkafka::message::OwnedMessage {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", TOPIC)
            .create()
            .unwrap();
        let mut partition = TopicPartitionList::new();
        partition
            .add_partition_offset(TOPIC, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&partition).unwrap();
        loop {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                return message.unwrap().detach();
            }
        }
    }

    #[test]
    fn a_record_sent_through_a_topic_handle_arrives_whole() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(TOPIC, 1, 1).unwrap();
        let producer = producer(&cluster.bootstrap_servers(), &[]);
        let topic = TopicHandle::new(producer.client(), TOPIC).unwrap();
        let record = Record {
            key: Some(b"stream"),
            payload: b"payload",
            headers: &[(c"first", b"one"), (c"second", b"")],
        };
        send(&producer, &topic, &record, Arc::new(7)).unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
        assert_eq!(*producer.context().0.lock().unwrap(), [(7, true)]);

        let message = first_record(&cluster.bootstrap_servers());
        assert_eq!(message.key(), Some(&b"stream"[..]));
        assert_eq!(message.payload(), Some(&b"payload"[..]));
        let headers = message.headers().expect("headers");
        let headers: Vec<_> = headers.iter().map(|h| (h.key, h.value)).collect();
        assert_eq!(
            headers,
            [("first", Some(&b"one"[..])), ("second", Some(&b""[..]))]
        );
    }

    #[test]
    fn a_record_librdkafka_refuses_gives_its_opaque_back() {
        // Nothing listens on port 1, and the queue holds one record.
        let producer = producer("127.0.0.1:1", &[("queue.buffering.max.messages", "1")]);
        let topic = TopicHandle::new(producer.client(), TOPIC).unwrap();
        let record = Record {
            key: None,
            payload: b"payload",
            headers: &[],
        };
        let opaque = Arc::new(1);
        send(&producer, &topic, &record, opaque.clone()).unwrap();
        assert_eq!(Arc::strong_count(&opaque), 2, "the queued record holds one");
        let refused = send(&producer, &topic, &record, opaque.clone()).unwrap_err();
        assert_eq!(
            refused,
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
        );
        assert_eq!(Arc::strong_count(&opaque), 2, "the refused one's is back");
    }

    #[test]
    fn a_handle_of_another_client_and_too_many_headers_are_refused() {
        let producer = producer("127.0.0.1:1", &[]);
        let other = self::producer("127.0.0.1:1", &[]);
        let foreign = TopicHandle::new(other.client(), TOPIC).unwrap();
        let record = Record {
            key: None,
            payload: b"payload",
            headers: &[],
        };
        let invalid = KafkaError::MessageProduction(RDKafkaErrorCode::InvalidArgument);
        assert_eq!(
            send(&producer, &foreign, &record, Arc::new(1)),
            Err(invalid.clone())
        );

        let topic = TopicHandle::new(producer.client(), TOPIC).unwrap();
        let headers = [(c"header", &b""[..]); MAX_HEADERS + 1];
        let record = Record {
            headers: &headers,
            ..record
        };
        assert_eq!(send(&producer, &topic, &record, Arc::new(2)), Err(invalid));
    }
}
