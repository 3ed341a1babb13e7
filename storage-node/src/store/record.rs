//! The on-disk record: a fixed 64-byte header followed by the payload.
//!
//! ```text
//! offset size field
//!      0    4 magic            b"CPCR"
//!      4    1 format version   1
//!      5    1 kind             1 = Put, 2 = Tombstone
//!      6    2 reserved         must be zero
//!      8    8 seq              u64 LE, store-wide sequence number
//!     16   32 key              ChunkId bytes
//!     48    4 payload length   u32 LE (0 for tombstones)
//!     52    4 payload crc32c   u32 LE (crc32c of the empty string for tombstones)
//!     56    4 reserved         must be zero
//!     60    4 header crc32c    u32 LE, over bytes 0..60
//! ```

use crypto_accel::{ChunkId, HASH_LEN};

/// Length of every record header on disk.
pub const HEADER_LEN: usize = 64;

const MAGIC: [u8; 4] = *b"CPCR";
const VERSION: u8 = 1;

/// What a record does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// Stores the payload under the key.
    Put,
    /// Deletes the key; carries no payload.
    Tombstone,
}

impl RecordKind {
    fn to_byte(self) -> u8 {
        match self {
            RecordKind::Put => 1,
            RecordKind::Tombstone => 2,
        }
    }

    fn from_byte(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::Put),
            2 => Some(RecordKind::Tombstone),
            _ => None,
        }
    }
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Put or tombstone.
    pub kind: RecordKind,
    /// Store-wide sequence number of the write that created the record.
    pub seq: u64,
    /// The key.
    pub id: ChunkId,
    /// Payload length in bytes.
    pub len: u32,
    /// crc32c of the payload.
    pub payload_crc: u32,
}

/// Why a header failed to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes were given.
    Short,
    /// The magic or version bytes are wrong.
    BadMagic,
    /// The header checksum does not match.
    BadCrc,
    /// Unknown record kind or non-zero reserved bytes.
    BadField,
    /// The payload length exceeds the caller's bound.
    TooLong,
}

impl HeaderError {
    /// A short description for error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderError::Short => "short header",
            HeaderError::BadMagic => "bad record magic",
            HeaderError::BadCrc => "header checksum mismatch",
            HeaderError::BadField => "invalid header field",
            HeaderError::TooLong => "payload length out of bounds",
        }
    }
}

impl RecordHeader {
    /// Header of a put whose payload checksum the caller already computed (the store's
    /// handles do it on the submitting thread, off the single writer thread).
    pub fn put_with_crc(seq: u64, id: ChunkId, len: u32, payload_crc: u32) -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Put,
            seq,
            id,
            len,
            payload_crc,
        }
    }

    /// Header of a tombstone for `id`.
    pub fn tombstone(seq: u64, id: ChunkId) -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Tombstone,
            seq,
            id,
            len: 0,
            payload_crc: crc32c::crc32c(&[]),
        }
    }

    /// Bytes the whole record (header + payload) occupies on disk.
    pub fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.len)
    }

    /// Encodes the header into its fixed on-disk form.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind.to_byte();
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..48].copy_from_slice(self.id.as_bytes());
        b[48..52].copy_from_slice(&self.len.to_le_bytes());
        b[52..56].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header, rejecting any payload length above `max_len`.
    pub fn decode(b: &[u8], max_len: u64) -> Result<RecordHeader, HeaderError> {
        let b: &[u8; HEADER_LEN] = b
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(HeaderError::Short)?;
        if b[0..4] != MAGIC || b[4] != VERSION {
            return Err(HeaderError::BadMagic);
        }
        if crc32c::crc32c(&b[..60]) != u32_at(b, 60) {
            return Err(HeaderError::BadCrc);
        }
        let kind = RecordKind::from_byte(b[5]).ok_or(HeaderError::BadField)?;
        if b[6..8] != [0, 0] || b[56..60] != [0; 4] {
            return Err(HeaderError::BadField);
        }
        let mut key = [0u8; HASH_LEN];
        key.copy_from_slice(&b[16..48]);
        let len = u32_at(b, 48);
        let payload_crc = u32_at(b, 52);
        if kind == RecordKind::Tombstone && (len != 0 || payload_crc != crc32c::crc32c(&[])) {
            return Err(HeaderError::BadField);
        }
        if u64::from(len) > max_len {
            return Err(HeaderError::TooLong);
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[8..16]);
        Ok(RecordHeader {
            kind,
            seq: u64::from_le_bytes(seq),
            id: ChunkId::from_bytes(key),
            len,
            payload_crc,
        })
    }
}

fn u32_at(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_header() -> impl Strategy<Value = RecordHeader> {
        (
            any::<bool>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(|(put, seq, key, len, crc)| {
                let id = ChunkId::from_bytes(key);
                if put {
                    RecordHeader {
                        kind: RecordKind::Put,
                        seq,
                        id,
                        len,
                        payload_crc: crc,
                    }
                } else {
                    RecordHeader::tombstone(seq, id)
                }
            })
    }

    proptest! {
        #[test]
        fn encode_decode_is_identity(h in arb_header()) {
            let bytes = h.encode();
            prop_assert_eq!(RecordHeader::decode(&bytes, u64::from(u32::MAX)), Ok(h));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = RecordHeader::decode(&bytes, 1 << 20);
        }

        #[test]
        fn any_single_bit_flip_is_rejected(h in arb_header(), bit in 0usize..HEADER_LEN * 8) {
            let mut bytes = h.encode();
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(RecordHeader::decode(&bytes, u64::from(u32::MAX)).is_err());
        }

        #[test]
        fn length_bound_is_enforced(h in arb_header(), max in any::<u32>()) {
            let r = RecordHeader::decode(&h.encode(), u64::from(max));
            if h.len > max {
                prop_assert_eq!(r, Err(HeaderError::TooLong));
            } else {
                prop_assert_eq!(r, Ok(h));
            }
        }
    }

    #[test]
    fn short_input_is_rejected() {
        let h = RecordHeader::tombstone(7, ChunkId::of(b"x"));
        assert_eq!(
            RecordHeader::decode(&h.encode()[..63], 0),
            Err(HeaderError::Short)
        );
    }
}
