//! Reed–Solomon erasure coding (k data + m parity shards over GF(2^8), SIMD-accelerated) and
//! the shard frame that lets any k shards give back the exact original bytes.

use reed_solomon_erasure::galois_8::ReedSolomon;

use crate::codec::{CodecResult, Decode, Encode, Reader};
use crate::error::{CodecError, CryptoError, CryptoResult};

/// Column stripe width of encode and reconstruct: m outputs and one input of this size stay
/// in L2 while the library makes its k passes.
pub const STRIPE: usize = 16 * 1024;

/// Bytes of a [`ShardHeader`] on the wire.
pub const SHARD_HEADER_LEN: usize = 32;
const SHARD_MAGIC: &[u8; 4] = b"CPSH";
const SHARD_VERSION: u8 = 1;

/// The frame at the start of every shard: which block of which stream it belongs to, its
/// place in the code, and the block's exact length. It is covered by the shard's content id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// Data shards per block.
    pub k: u8,
    /// Parity shards per block.
    pub m: u8,
    /// This shard's index, `0..k` data, `k..k+m` parity.
    pub index: u8,
    /// Stream within the data item (0 for files).
    pub stream: u32,
    /// Block index within the stream.
    pub block: u64,
    /// Exact length of the block's original bytes.
    pub block_len: u32,
    /// Bytes that follow this header.
    pub payload_len: u32,
}

impl ShardHeader {
    /// The fixed-size encoding.
    pub fn to_array(&self) -> [u8; SHARD_HEADER_LEN] {
        let mut a = [0u8; SHARD_HEADER_LEN];
        a[..4].copy_from_slice(SHARD_MAGIC);
        a[4] = SHARD_VERSION;
        a[5] = self.k;
        a[6] = self.m;
        a[7] = self.index;
        a[8..12].copy_from_slice(&self.stream.to_le_bytes());
        a[12..20].copy_from_slice(&self.block.to_le_bytes());
        a[20..24].copy_from_slice(&self.block_len.to_le_bytes());
        a[24..28].copy_from_slice(&self.payload_len.to_le_bytes());
        a
    }

    /// Parses and checks the frame at the start of `shard` and that the payload length
    /// matches; returns the header and the payload.
    pub fn parse(shard: &[u8]) -> CryptoResult<(ShardHeader, &[u8])> {
        let mut r = Reader::new(shard);
        let h = ShardHeader::decode(&mut r)?;
        let payload = &shard[SHARD_HEADER_LEN..];
        if payload.len() != h.payload_len as usize {
            return Err(CryptoError::BadShard {
                reason: format!(
                    "payload is {} bytes, header says {}",
                    payload.len(),
                    h.payload_len
                ),
            });
        }
        Ok((h, payload))
    }
}

impl Encode for ShardHeader {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_array());
    }
}

impl Decode for ShardHeader {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        if &r.array::<4>()? != SHARD_MAGIC {
            return Err(CodecError::Invalid {
                what: "shard",
                reason: "missing CPSH magic",
            });
        }
        r.version("shard", SHARD_VERSION)?;
        let (k, m, index) = (r.u8()?, r.u8()?, r.u8()?);
        let h = ShardHeader {
            k,
            m,
            index,
            stream: r.u32()?,
            block: r.u64()?,
            block_len: r.u32()?,
            payload_len: r.u32()?,
        };
        if r.u32()? != 0 {
            return Err(CodecError::Invalid {
                what: "shard",
                reason: "reserved bytes are not zero",
            });
        }
        if k == 0 || m == 0 || usize::from(index) >= usize::from(k) + usize::from(m) {
            return Err(CodecError::Invalid {
                what: "shard",
                reason: "index or coding parameters out of range",
            });
        }
        Ok(h)
    }
}

/// A Reed–Solomon code with `k` data and `m` parity shards.
#[derive(Debug)]
pub struct Erasure {
    rs: ReedSolomon,
    k: usize,
    m: usize,
}

impl Erasure {
    /// A k + m code; needs 1 ≤ k, 1 ≤ m, k + m ≤ 256.
    pub fn new(k: usize, m: usize) -> CryptoResult<Erasure> {
        if k == 0 || m == 0 || k + m > 256 {
            return Err(CryptoError::BadErasureParams { k, m });
        }
        let rs = ReedSolomon::new(k, m).map_err(|_| CryptoError::BadErasureParams { k, m })?;
        Ok(Erasure { rs, k, m })
    }

    /// Data shards.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Parity shards.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Payload length of each shard for `len` bytes of data.
    pub fn shard_len(&self, len: usize) -> usize {
        len.div_ceil(self.k).max(1)
    }

    /// Computes the `m` parity payloads from `k` equally long data payloads.
    ///
    /// Works in column stripes of [`STRIPE`] bytes: the code is bytewise, and the library
    /// streams every input once per output, so whole large shards would push the m outputs
    /// out of L2 on every pass (10+4 × 1 MiB: 4 MiB of parity re-read 10 times).
    pub fn encode_sep<D: AsRef<[u8]>, P: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        data: &[D],
        parity: &mut [P],
    ) -> CryptoResult<()> {
        let len = data.first().map_or(0, |d| d.as_ref().len());
        if data.len() != self.k
            || parity.len() != self.m
            || data.iter().any(|d| d.as_ref().len() != len)
            || parity.iter_mut().any(|p| p.as_mut().len() != len)
        {
            return Err(CryptoError::BadShard {
                reason: format!(
                    "encode needs {} data and {} parity payloads of one length",
                    self.k, self.m
                ),
            });
        }
        let mut start = 0;
        loop {
            let end = (start + STRIPE).min(len);
            let d: Vec<&[u8]> = data.iter().map(|x| &x.as_ref()[start..end]).collect();
            let mut p: Vec<&mut [u8]> = parity
                .iter_mut()
                .map(|x| &mut x.as_mut()[start..end])
                .collect();
            self.rs.encode_sep(&d, &mut p).map_err(rs_error)?;
            if end == len {
                return Ok(());
            }
            start = end;
        }
    }

    /// Rebuilds the missing payloads in place: `(payload, present)` for each of the k + m
    /// shards, all equally long. With `data_only`, parity is left missing.
    pub fn reconstruct<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        shards: &mut [(T, bool)],
        data_only: bool,
    ) -> CryptoResult<()> {
        let have = shards.iter().filter(|s| s.1).count();
        if have < self.k {
            return Err(CryptoError::NotEnoughShards { have, need: self.k });
        }
        let len = shards
            .iter_mut()
            .find(|s| s.1)
            .map_or(0, |s| s.0.as_mut().len());
        if shards.iter_mut().any(|s| s.0.as_mut().len() != len) {
            return Err(CryptoError::BadShard {
                reason: "reconstruct needs payloads of one length".into(),
            });
        }
        // Column stripes, as in `encode_sep`; the decode matrix is cached by the library, so
        // it is inverted once per erasure pattern, not once per stripe.
        let mut start = 0;
        loop {
            let end = (start + STRIPE).min(len);
            let mut views: Vec<(&mut [u8], bool)> = shards
                .iter_mut()
                .map(|(buf, present)| (&mut buf.as_mut()[start..end], *present))
                .collect();
            let r = if data_only {
                self.rs.reconstruct_data(&mut views)
            } else {
                self.rs.reconstruct(&mut views)
            };
            r.map_err(rs_error)?;
            if end == len {
                return Ok(());
            }
            start = end;
        }
    }

    /// Splits `data` into k + m framed shards (header ‖ payload) of block `block`.
    pub fn split(&self, stream: u32, block: u64, data: &[u8]) -> CryptoResult<Vec<Vec<u8>>> {
        let block_len = u32::try_from(data.len()).map_err(|_| CryptoError::BadShard {
            reason: format!("block of {} bytes exceeds 4 GiB", data.len()),
        })?;
        let len = self.shard_len(data.len());
        let mut shards: Vec<Vec<u8>> = (0..self.k + self.m)
            .map(|i| {
                let h = ShardHeader {
                    k: self.k as u8,
                    m: self.m as u8,
                    index: i as u8,
                    stream,
                    block,
                    block_len,
                    payload_len: len as u32,
                };
                let mut s = Vec::with_capacity(SHARD_HEADER_LEN + len);
                s.extend_from_slice(&h.to_array());
                let start = (i * len).min(data.len());
                let end = ((i + 1) * len).min(data.len());
                if i < self.k {
                    s.extend_from_slice(&data[start..end]);
                }
                s.resize(SHARD_HEADER_LEN + len, 0);
                s
            })
            .collect();
        let (data_shards, parity) = shards.split_at_mut(self.k);
        let data_payloads: Vec<&[u8]> =
            data_shards.iter().map(|s| &s[SHARD_HEADER_LEN..]).collect();
        let mut parity_payloads: Vec<&mut [u8]> = parity
            .iter_mut()
            .map(|s| &mut s[SHARD_HEADER_LEN..])
            .collect();
        self.encode_sep(&data_payloads, &mut parity_payloads)?;
        Ok(shards)
    }

    /// Rebuilds the exact original bytes from any k of the framed shards. Every present
    /// shard must carry the same coding parameters, block and length.
    pub fn join(&self, shards: &[Option<&[u8]>]) -> CryptoResult<Vec<u8>> {
        let n = self.k + self.m;
        if shards.len() != n {
            return Err(CryptoError::BadShard {
                reason: format!("{} shard slots given, code has {n}", shards.len()),
            });
        }
        let mut first: Option<ShardHeader> = None;
        let mut slots: Vec<(Vec<u8>, bool)> = Vec::with_capacity(n);
        for (i, s) in shards.iter().enumerate() {
            let Some(s) = s else {
                slots.push((Vec::new(), false));
                continue;
            };
            let (h, payload) = ShardHeader::parse(s)?;
            if usize::from(h.index) != i || usize::from(h.k) != self.k || usize::from(h.m) != self.m
            {
                return Err(CryptoError::BadShard {
                    reason: format!(
                        "shard in slot {i} claims index {} of {}+{}",
                        h.index, h.k, h.m
                    ),
                });
            }
            match first {
                None => first = Some(h),
                Some(f)
                    if (f.block, f.stream, f.block_len, f.payload_len)
                        != (h.block, h.stream, h.block_len, h.payload_len) =>
                {
                    return Err(CryptoError::BadShard {
                        reason: format!("shard {i} belongs to another block"),
                    })
                }
                Some(_) => {}
            }
            slots.push((payload.to_vec(), true));
        }
        let have = slots.iter().filter(|s| s.1).count();
        let Some(h) = first.filter(|_| have >= self.k) else {
            return Err(CryptoError::NotEnoughShards { have, need: self.k });
        };
        let len = h.payload_len as usize;
        if (h.block_len as usize) > len * self.k {
            return Err(CryptoError::BadShard {
                reason: "block length exceeds what the shards hold".into(),
            });
        }
        for s in slots.iter_mut().filter(|s| !s.1) {
            s.0 = vec![0; len];
        }
        self.reconstruct(&mut slots, true)?;
        let mut out = Vec::with_capacity(len * self.k);
        for (p, _) in &slots[..self.k] {
            out.extend_from_slice(p);
        }
        out.truncate(h.block_len as usize);
        Ok(out)
    }
}

fn rs_error(e: reed_solomon_erasure::Error) -> CryptoError {
    CryptoError::BadShard {
        reason: format!("reed-solomon: {e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_k_of_k_plus_m_reconstruct(
            k in 1usize..12,
            m in 1usize..6,
            data in proptest::collection::vec(any::<u8>(), 0..4000),
            seed: u64,
        ) {
            let e = Erasure::new(k, m).unwrap();
            let shards = e.split(0, 7, &data).unwrap();
            // Drop a pseudo-random set of exactly m shards.
            let mut order: Vec<usize> = (0..k + m).collect();
            let mut s = seed;
            for i in (1..order.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (s >> 33) as usize % (i + 1));
            }
            let mut slots: Vec<Option<&[u8]>> = shards.iter().map(|s| Some(&s[..])).collect();
            for &i in &order[..m] {
                slots[i] = None;
            }
            prop_assert_eq!(e.join(&slots).unwrap(), data.clone());
            // One more missing is unrecoverable, with a clear count.
            slots[order[m]] = None;
            let err = e.join(&slots).unwrap_err();
            prop_assert_eq!(err, CryptoError::NotEnoughShards { have: k - 1, need: k });
        }

        #[test]
        fn header_round_trip(k in 1u8..=200, m in 1u8..=55, stream: u32, block: u64, bl: u32, pl: u32) {
            let index = k - 1;
            let h = ShardHeader { k, m, index, stream, block, block_len: bl, payload_len: pl };
            prop_assert_eq!(ShardHeader::from_bytes(&h.to_array()).unwrap(), h);
        }

        #[test]
        fn random_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ShardHeader::parse(&bytes);
        }
    }

    #[test]
    fn rejects_bad_params_and_mixed_blocks() {
        assert!(Erasure::new(0, 4).is_err());
        assert!(Erasure::new(10, 0).is_err());
        assert!(Erasure::new(200, 57).is_err());
        let e = Erasure::new(2, 1).unwrap();
        let a = e.split(0, 1, b"hello world").unwrap();
        let b = e.split(0, 2, b"hello world").unwrap();
        let slots = [Some(&a[0][..]), Some(&b[1][..]), None];
        assert!(matches!(e.join(&slots), Err(CryptoError::BadShard { .. })));
        let slots = [Some(&a[1][..]), Some(&a[0][..]), None];
        assert!(matches!(e.join(&slots), Err(CryptoError::BadShard { .. })));
    }
}
