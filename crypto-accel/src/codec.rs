//! The one canonical binary encoding for everything that is hashed or signed.
//!
//! Fixed-width little-endian integers, `u32` length prefixes, no optional padding: one value
//! has exactly one encoding, so hashes and signatures over encodings are well defined.
//! Decoders are given an explicit bound for every length before anything is allocated.

use crate::error::CodecError;
use crate::hash::{ChunkId, DataId, Hash, HASH_LEN};

/// Result alias for decoding.
pub type CodecResult<T> = Result<T, CodecError>;

/// A value with a canonical encoding.
pub trait Encode {
    /// Appends the canonical encoding of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// The canonical encoding in a fresh buffer.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// A value that can be read back from its canonical encoding.
pub trait Decode: Sized {
    /// Reads one value, advancing `r`.
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self>;

    /// Decodes exactly one value from `bytes`; trailing bytes are an error.
    fn from_bytes(bytes: &[u8]) -> CodecResult<Self> {
        let mut r = Reader::new(bytes);
        let v = Self::decode(&mut r)?;
        r.finish()?;
        Ok(v)
    }
}

/// Appends a `u32` length prefix and the bytes.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Callers bound their own lengths far below 4 GiB; saturate instead of wrapping so an
    // impossible length can never alias a short one.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A cursor over encoded bytes that checks every read.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Fails if anything is left.
    pub fn finish(&self) -> CodecResult<()> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(CodecError::Trailing { n }),
        }
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> CodecResult<&'a [u8]> {
        let have = self.remaining();
        if n > have {
            return Err(CodecError::Truncated { need: n, have });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> CodecResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// Reads a `u8`.
    pub fn u8(&mut self) -> CodecResult<u8> {
        Ok(self.take(1)?[0])
    }

    /// Reads a little-endian `u16`.
    pub fn u16(&mut self) -> CodecResult<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u32`.
    pub fn u32(&mut self) -> CodecResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u64`.
    pub fn u64(&mut self) -> CodecResult<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads a strict boolean (0 or 1).
    pub fn bool(&mut self) -> CodecResult<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(CodecError::BadTag {
                what: "bool",
                tag: u64::from(t),
            }),
        }
    }

    /// Reads a `u32` length, checked against `max` and against the bytes actually left.
    pub fn len(&mut self, what: &'static str, max: usize) -> CodecResult<usize> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(CodecError::TooLong { what, len, max });
        }
        Ok(len)
    }

    /// Reads length-prefixed bytes of at most `max` bytes.
    pub fn bytes(&mut self, what: &'static str, max: usize) -> CodecResult<&'a [u8]> {
        let len = self.len(what, max)?;
        self.take(len)
    }

    /// Reads a length-prefixed list of at most `max` items, each of at least `min_item_len`
    /// encoded bytes (so a hostile count cannot reserve more than the input could hold).
    pub fn vec<T>(
        &mut self,
        what: &'static str,
        max: usize,
        min_item_len: usize,
        mut item: impl FnMut(&mut Reader<'a>) -> CodecResult<T>,
    ) -> CodecResult<Vec<T>> {
        let n = self.len(what, max)?;
        let fits = self.remaining() / min_item_len.max(1);
        if n > fits {
            return Err(CodecError::Truncated {
                need: n.saturating_mul(min_item_len.max(1)),
                have: self.remaining(),
            });
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(item(self)?);
        }
        Ok(v)
    }

    /// Reads a version byte and checks it is at most `max`.
    pub fn version(&mut self, what: &'static str, max: u8) -> CodecResult<u8> {
        let got = self.u8()?;
        if got == 0 || got > max {
            return Err(CodecError::UnsupportedVersion { what, got, max });
        }
        Ok(got)
    }
}

macro_rules! int_codec {
    ($($t:ty => $m:ident),*) => {$(
        impl Encode for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
        impl Decode for $t {
            fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
                r.$m()
            }
        }
    )*};
}
int_codec!(u8 => u8, u16 => u16, u32 => u32, u64 => u64);

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl Decode for bool {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        r.bool()
    }
}

impl<const N: usize> Encode for [u8; N] {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl<const N: usize> Decode for [u8; N] {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        r.array()
    }
}

impl Encode for Hash {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
}

impl Decode for Hash {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(Hash(r.array::<HASH_LEN>()?))
    }
}

impl Encode for ChunkId {
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
    }
}

impl Decode for ChunkId {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(ChunkId(Hash::decode(r)?))
    }
}

impl Encode for DataId {
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
    }
}

impl Decode for DataId {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(DataId(Hash::decode(r)?))
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.encode(out);
            }
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(if r.bool()? { Some(T::decode(r)?) } else { None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ints_round_trip(a: u8, b: u16, c: u32, d: u64, e: bool, f: Option<u64>) {
            let mut out = Vec::new();
            a.encode(&mut out); b.encode(&mut out); c.encode(&mut out);
            d.encode(&mut out); e.encode(&mut out); f.encode(&mut out);
            let mut r = Reader::new(&out);
            prop_assert_eq!(u8::decode(&mut r)?, a);
            prop_assert_eq!(u16::decode(&mut r)?, b);
            prop_assert_eq!(u32::decode(&mut r)?, c);
            prop_assert_eq!(u64::decode(&mut r)?, d);
            prop_assert_eq!(bool::decode(&mut r)?, e);
            prop_assert_eq!(Option::<u64>::decode(&mut r)?, f);
            prop_assert!(r.finish().is_ok());
        }

        #[test]
        fn bytes_round_trip(v in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = Vec::new();
            put_bytes(&mut out, &v);
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.bytes("test", 300)?, &v[..]);
        }

        #[test]
        fn arbitrary_input_never_panics(v in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&v);
            let _ = r.vec("list", 1 << 20, 8, |r| r.u64());
            let _ = Option::<Hash>::from_bytes(&v);
        }
    }

    #[test]
    fn lengths_are_bounded_before_allocation() {
        let mut out = Vec::new();
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut r = Reader::new(&out);
        assert!(matches!(
            r.bytes("blob", 1024),
            Err(CodecError::TooLong { .. })
        ));
        let mut r = Reader::new(&out);
        // A count that fits the bound but not the input is rejected before reserving.
        assert!(matches!(
            r.vec("list", usize::MAX, 8, |r| r.u64()),
            Err(CodecError::Truncated { .. })
        ));
    }

    #[test]
    fn strict_bool_trailing_and_version() {
        assert!(matches!(
            bool::from_bytes(&[2]),
            Err(CodecError::BadTag { .. })
        ));
        assert!(matches!(
            u8::from_bytes(&[1, 2]),
            Err(CodecError::Trailing { n: 1 })
        ));
        let mut r = Reader::new(&[3]);
        assert!(matches!(
            r.version("manifest", 2),
            Err(CodecError::UnsupportedVersion { got: 3, .. })
        ));
    }
}
