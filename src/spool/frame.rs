//! One frame of the spool: a callback's encoded records and when it was
//! spooled, behind a checksum (the layout is in [`super::log`]'s docs).

use crate::publish::Batch;

const MAGIC: [u8; 4] = *b"CSB1";
pub(super) const HEADER_BYTES: usize = 12;
/// Largest body a frame may declare: far above any callback the HTTP limit lets
/// in, and a bound on what a damaged length field can make the reader allocate.
const MAX_BODY_BYTES: usize = 64 << 20;
// A callback's records take at most `--kafka-max-in-flight-bytes`; with their
// key (a text of the callback), their ends (4 bytes a record) and the frame's
// own fields (16 bytes) they must fit in one frame.
const _: () = {
    use crate::css::validate::{MAX_ABNORMAL_EVENTS, MAX_DETAILS_PER_EVENT, MAX_TEXT_BYTES};
    let ends = 4 * MAX_ABNORMAL_EVENTS * MAX_DETAILS_PER_EVENT;
    let frame = crate::config::MAX_IN_FLIGHT_BYTES as usize + MAX_TEXT_BYTES + ends + 16;
    assert!(frame <= MAX_BODY_BYTES);
};

/// One spooled callback, read back.
#[derive(Debug)]
pub struct Entry {
    pub spooled_at_ms: i64,
    pub batch: Batch,
}

/// The bytes [`encode_frame`] writes for `batch`.
pub fn frame_len(batch: &Batch) -> usize {
    HEADER_BYTES + 8 + 4 + batch.key.len() + 4 + 4 * batch.ends.len() + batch.payloads.len()
}

/// Appends one frame for `batch` to `out`.
pub fn encode_frame(batch: &Batch, spooled_at_ms: i64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 8]); // length and checksum, filled in below
    out.extend_from_slice(&spooled_at_ms.to_le_bytes());
    out.extend_from_slice(&(batch.key.len() as u32).to_le_bytes());
    out.extend_from_slice(batch.key.as_bytes());
    out.extend_from_slice(&(batch.ends.len() as u32).to_le_bytes());
    for &end in &batch.ends {
        out.extend_from_slice(&(end as u32).to_le_bytes());
    }
    out.extend_from_slice(&batch.payloads);
    let body = start + HEADER_BYTES;
    let length = (out.len() - body) as u32;
    let checksum = crc32fast::hash(&out[body..]);
    out[start + 4..start + 8].copy_from_slice(&length.to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&checksum.to_le_bytes());
}

/// Reads a frame's body, already checked against its checksum. `None` if its
/// fields contradict each other (which a valid checksum makes a defect of the
/// writer, not of the disk).
pub(super) fn decode_body(body: &[u8]) -> Option<Entry> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let bytes = body.get(at..at.checked_add(n)?)?;
        at += n;
        Some(bytes)
    };
    let spooled_at_ms = i64::from_le_bytes(take(8)?.try_into().ok()?);
    let key_len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let key = String::from_utf8(take(key_len)?.to_vec()).ok()?;
    let records = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let mut ends = Vec::with_capacity(records.min(body.len() / 4));
    for _ in 0..records {
        ends.push(u32::from_le_bytes(take(4)?.try_into().ok()?) as usize);
    }
    let payloads = body[at..].to_vec();
    let ordered = ends.windows(2).all(|w| w[0] <= w[1]);
    if !ordered || ends.last().is_some_and(|&end| end != payloads.len()) {
        return None;
    }
    Some(Entry {
        spooled_at_ms,
        batch: Batch {
            key,
            payloads,
            ends,
        },
    })
}

/// What a frame at some offset turned out to be.
pub(super) enum Scan {
    /// A valid frame of `len` bytes in all.
    Frame { entry: Entry, len: u64 },
    /// Not a valid frame here.
    Damaged,
    /// The data ends within the frame (or exactly here, when nothing is left).
    Truncated,
}

/// Reads the frame at the start of `data`.
pub(super) fn scan(data: &[u8]) -> Scan {
    if data.len() < HEADER_BYTES {
        return if MAGIC.starts_with(&data[..data.len().min(4)]) {
            Scan::Truncated
        } else {
            Scan::Damaged
        };
    }
    if data[..4] != MAGIC {
        return Scan::Damaged;
    }
    let length = u32::from_le_bytes(data[4..8].try_into().unwrap()) as usize;
    if length > MAX_BODY_BYTES {
        return Scan::Damaged;
    }
    let Some(body) = data.get(HEADER_BYTES..HEADER_BYTES + length) else {
        return Scan::Truncated;
    };
    let checksum = u32::from_le_bytes(data[8..12].try_into().unwrap());
    if crc32fast::hash(body) != checksum {
        return Scan::Damaged;
    }
    match decode_body(body) {
        Some(entry) => Scan::Frame {
            entry,
            len: (HEADER_BYTES + length) as u64,
        },
        None => Scan::Damaged,
    }
}

/// Whether `data` starts with a whole frame by its header: the magic, a
/// length within bounds and that many bytes of body, whatever its checksum
/// says. A write a crash tore ends short of that; one that holds it was
/// written whole.
pub(super) fn holds_whole_frame(data: &[u8]) -> bool {
    data.len() >= HEADER_BYTES && data[..4] == MAGIC && {
        let length = u32::from_le_bytes(data[4..8].try_into().unwrap()) as usize;
        length <= MAX_BODY_BYTES && data.len() >= HEADER_BYTES + length
    }
}

/// The offset of the next valid frame in `data` after a damaged one at its
/// start, if any.
pub(super) fn resync(data: &[u8]) -> Option<usize> {
    (1..data.len()).find(|&at| {
        data[at..].starts_with(&MAGIC) && matches!(scan(&data[at..]), Scan::Frame { .. })
    })
}
