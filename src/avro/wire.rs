//! The Confluent wire format: a record behind a 5-byte header, the magic byte
//! and the schema's registry id (big-endian), as Confluent's serializers and
//! deserializers expect. Without a Schema Registry, records are plain Avro.
//!
//! The id comes from the registry at start-up (see [`crate::registry`]); from
//! then on framing is a prefix taken from memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// First byte of a Confluent-framed message.
pub const MAGIC_BYTE: u8 = 0;

/// The schema id once known; shared by the registration task and the encoder.
#[derive(Debug, Default)]
pub struct SchemaId(AtomicU32);

impl SchemaId {
    /// Ids are positive; 0 means "not known yet".
    pub fn get(&self) -> Option<u32> {
        Some(self.0.load(Ordering::Acquire)).filter(|&id| id != 0)
    }

    pub fn set(&self, id: u32) {
        self.0.store(id, Ordering::Release);
    }

    /// Back to "not known yet": records wait (callbacks get 503) until the
    /// registry gives an id again.
    pub fn forget(&self) {
        self.0.store(0, Ordering::Release);
    }
}

/// How records are framed on the topic.
#[derive(Debug, Clone)]
pub enum WireFormat {
    /// Plain Avro binary.
    Plain,
    /// Confluent framing with the registered schema's id (once known).
    Confluent(Arc<SchemaId>),
}

impl WireFormat {
    pub fn framing(&self) -> Framing {
        match self {
            Self::Plain => Framing::Plain,
            Self::Confluent(_) => Framing::Confluent,
        }
    }
}

/// How an encoded record is framed, whatever its schema id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Plain,
    Confluent,
}

impl Framing {
    /// The framing of `record`, told by its first byte: a plain record never
    /// starts with the magic byte, since its first field, `event_id`, starts
    /// with its length, 32. `None` for an empty one.
    pub fn of(record: &[u8]) -> Option<Self> {
        Some(match *record.first()? {
            MAGIC_BYTE => Self::Confluent,
            _ => Self::Plain,
        })
    }
}

/// The Confluent header's length: the magic byte and the schema id.
pub const CONFLUENT_HEADER_LEN: usize = 5;

/// The Confluent header for schema `id`.
pub fn confluent_header(id: u32) -> [u8; CONFLUENT_HEADER_LEN] {
    let [a, b, c, d] = id.to_be_bytes();
    [MAGIC_BYTE, a, b, c, d]
}

/// Frames a record of the Confluent wire format with schema `id` instead of
/// the one it carries; leaves a plain record alone (see [`Framing::of`]).
pub fn reframe(record: &mut [u8], id: u32) {
    if record.len() >= CONFLUENT_HEADER_LEN && Framing::of(record) == Some(Framing::Confluent) {
        record[..CONFLUENT_HEADER_LEN].copy_from_slice(&confluent_header(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_magic_byte_and_big_endian_id() {
        assert_eq!(confluent_header(0x0102_0304), [0, 1, 2, 3, 4]);
        assert_eq!(confluent_header(7), [0, 0, 0, 0, 7]);
    }

    #[test]
    fn schema_id_is_unknown_until_set() {
        let id = SchemaId::default();
        assert_eq!(id.get(), None);
        id.set(42);
        assert_eq!(id.get(), Some(42));
    }

    #[test]
    fn reframing_replaces_the_schema_id_of_framed_records_only() {
        let mut framed = [&confluent_header(7)[..], b"avro"].concat();
        reframe(&mut framed, 9);
        assert_eq!(framed, [&confluent_header(9)[..], b"avro"].concat());
        let mut plain = b"@0123456789abcdef".to_vec();
        reframe(&mut plain, 9);
        assert_eq!(plain, b"@0123456789abcdef");
    }
}
