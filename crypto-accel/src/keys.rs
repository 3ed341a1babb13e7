use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::codec::{CodecResult, Decode, Encode, Reader};
use crate::error::{CodecError, CryptoError, CryptoResult};

/// Length of the domain prefix that goes in front of every signed message.
pub const DOMAIN_PREFIX_LEN: usize = 15;
const DOMAIN_MAGIC: &[u8; 8] = b"CPCHAIN\0";
const DOMAIN_VERSION: u8 = 1;

/// What a signed message is. The kind goes into the signed bytes, so a signature made for
/// one kind of message can never be replayed as another. Numbers are allocated here, once,
/// for the whole workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageKind(pub u16);

impl MessageKind {
    /// A main-chain transaction.
    pub const TRANSACTION: MessageKind = MessageKind(1);
    /// A proposer's block seal.
    pub const BLOCK_SEAL: MessageKind = MessageKind(2);
    /// LBFT 2.0 PREPARE vote.
    pub const PREPARE: MessageKind = MessageKind(3);
    /// LBFT 2.0 COMMIT vote.
    pub const COMMIT: MessageKind = MessageKind(4);
    /// LBFT 2.0 IMPEACH PREPARE vote.
    pub const IMPEACH_PREPARE: MessageKind = MessageKind(5);
    /// LBFT 2.0 IMPEACH COMMIT vote.
    pub const IMPEACH_COMMIT: MessageKind = MessageKind(6);
    /// A signed request for shards sent to a storage node.
    pub const SHARD_REQUEST: MessageKind = MessageKind(7);
    /// A data manifest signed by its owner.
    pub const MANIFEST: MessageKind = MessageKind(8);
    /// A DAG sidechain vertex.
    pub const DAG_VERTEX: MessageKind = MessageKind(9);
    /// A page of a data item's DHT record, signed by whoever published it.
    pub const DHT_RECORD: MessageKind = MessageKind(10);
    /// Messages made only by tests and benchmarks.
    pub const TEST: MessageKind = MessageKind(0xffff);
}

/// The context a signature is bound to: which chain and which kind of message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SigDomain {
    /// The chain id; signatures from a test network never verify on another.
    pub chain_id: u32,
    /// The kind of message.
    pub kind: MessageKind,
}

impl SigDomain {
    /// A domain for `kind` messages on chain `chain_id`.
    pub const fn new(chain_id: u32, kind: MessageKind) -> Self {
        SigDomain { chain_id, kind }
    }

    /// The fixed-length prefix placed before the message in the signed bytes.
    pub fn prefix(&self) -> [u8; DOMAIN_PREFIX_LEN] {
        let mut p = [0u8; DOMAIN_PREFIX_LEN];
        p[..8].copy_from_slice(DOMAIN_MAGIC);
        p[8] = DOMAIN_VERSION;
        p[9..13].copy_from_slice(&self.chain_id.to_le_bytes());
        p[13..15].copy_from_slice(&self.kind.0.to_le_bytes());
        p
    }

    /// Appends the full signed bytes (prefix, then message) to `out`.
    pub fn signed_bytes_into(&self, msg: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix());
        out.extend_from_slice(msg);
    }

    /// The full signed bytes in a fresh buffer.
    pub fn signed_bytes(&self, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(DOMAIN_PREFIX_LEN + msg.len());
        self.signed_bytes_into(msg, &mut out);
        out
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..6]))
    }
}

impl Encode for Signature {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
}

impl Decode for Signature {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(Signature(r.array()?))
    }
}

/// An ed25519 public key that is known to decode to a curve point of large order. It keeps
/// the decompressed point, so a key parsed once is never decompressed again when verifying.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl PublicKey {
    /// Checks and wraps raw key bytes: they must decompress to a point that is not of small
    /// order (weak keys would let one signature verify for many messages).
    pub fn from_bytes(bytes: [u8; 32]) -> CryptoResult<PublicKey> {
        let vk = VerifyingKey::from_bytes(&bytes).map_err(|_| CryptoError::BadPublicKey)?;
        if vk.is_weak() {
            return Err(CryptoError::BadPublicKey);
        }
        Ok(PublicKey(vk))
    }

    /// The raw compressed point.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// Parses and checks a hex key.
    pub fn from_hex(s: &str) -> CryptoResult<PublicKey> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut b).map_err(|_| CryptoError::BadHex {
            what: "public key",
            expected: 64,
        })?;
        PublicKey::from_bytes(b)
    }

    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }

    /// Verifies `sig` over `msg` in `domain` (strict RFC 8032 checks).
    pub fn verify(&self, domain: SigDomain, msg: &[u8], sig: &Signature) -> CryptoResult<()> {
        self.verify_raw(&domain.signed_bytes(msg), sig)
    }

    /// Verifies `sig` over already domain-prefixed bytes.
    pub fn verify_raw(&self, signed: &[u8], sig: &Signature) -> CryptoResult<()> {
        let s = ed25519_dalek::Signature::from_bytes(&sig.0);
        self.0
            .verify_strict(signed, &s)
            .map_err(|_| CryptoError::BadSignature)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}…)", &self.to_hex()[..12])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Encode for PublicKey {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl Decode for PublicKey {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        PublicKey::from_bytes(r.array()?).map_err(|_| CodecError::Invalid {
            what: "public key",
            reason: "not a valid ed25519 point of large order",
        })
    }
}

/// An ed25519 key pair. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl Keypair {
    /// A fresh key pair from the operating system's random number generator.
    pub fn generate() -> Keypair {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        Keypair::from_seed(seed)
    }

    /// The key pair for a 32-byte secret seed (RFC 8032 private key).
    pub fn from_seed(seed: [u8; 32]) -> Keypair {
        Keypair {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The secret seed. Handle with care.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// Signs `msg` in `domain`.
    pub fn sign(&self, domain: SigDomain, msg: &[u8]) -> Signature {
        self.sign_raw(&domain.signed_bytes(msg))
    }

    /// Signs already domain-prefixed bytes.
    pub fn sign_raw(&self, signed: &[u8]) -> Signature {
        Signature(self.signing.sign(signed).to_bytes())
    }

    /// Derives a 32-byte symmetric key bound to this key pair and `context` (used to wrap
    /// the owner's interval keys).
    pub fn derive_symmetric(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.signing.to_bytes())
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h32(s: &str) -> [u8; 32] {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).unwrap();
        b
    }

    fn h64(s: &str) -> [u8; 64] {
        let mut b = [0u8; 64];
        hex::decode_to_slice(s, &mut b).unwrap();
        b
    }

    /// RFC 8032 section 7.1, tests 1-3 and SHA(abc).
    const RFC8032: &[(&str, &str, &str, &str)] = &[
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
        (
            "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
            "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
        ),
    ];

    #[test]
    fn rfc8032_vectors() {
        for (sk, pk, msg, sig) in RFC8032 {
            let kp = Keypair::from_seed(h32(sk));
            assert_eq!(kp.public().as_bytes(), &h32(pk));
            let msg = hex::decode(msg).unwrap();
            let s = kp.sign_raw(&msg);
            assert_eq!(s.0, h64(sig));
            kp.public().verify_raw(&msg, &s).unwrap();
            let mut bad = s;
            bad.0[10] ^= 1;
            assert_eq!(
                kp.public().verify_raw(&msg, &bad),
                Err(CryptoError::BadSignature)
            );
        }
    }

    /// Signatures cross-checked against ring, an independent ed25519 implementation: ring
    /// verifies ours, we verify ring's, and both produce identical (deterministic) bytes.
    #[test]
    fn cross_check_with_ring() {
        use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
        for i in 0u8..32 {
            let seed = [i.wrapping_mul(37).wrapping_add(1); 32];
            let ours = Keypair::from_seed(seed);
            let theirs = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
            assert_eq!(theirs.public_key().as_ref(), ours.public().as_bytes());
            let msg = vec![i; usize::from(i) * 7];
            let d = SigDomain::new(u32::from(i), MessageKind::TRANSACTION);
            let signed = d.signed_bytes(&msg);
            let s_ours = ours.sign(d, &msg);
            let s_ring = theirs.sign(&signed);
            assert_eq!(s_ring.as_ref(), &s_ours.0[..]);
            UnparsedPublicKey::new(&ED25519, ours.public().as_bytes())
                .verify(&signed, &s_ours.0)
                .unwrap();
            let mut ring_sig = [0u8; 64];
            ring_sig.copy_from_slice(s_ring.as_ref());
            ours.public().verify(d, &msg, &Signature(ring_sig)).unwrap();
            // A corrupted signature is rejected by both.
            ring_sig[40] ^= 2;
            assert!(ours.public().verify(d, &msg, &Signature(ring_sig)).is_err());
            assert!(UnparsedPublicKey::new(&ED25519, ours.public().as_bytes())
                .verify(&signed, &ring_sig)
                .is_err());
        }
    }

    #[test]
    fn domains_separate_signatures() {
        let kp = Keypair::from_seed([7; 32]);
        let d1 = SigDomain::new(1, MessageKind::TRANSACTION);
        let s = kp.sign(d1, b"pay 5");
        kp.public().verify(d1, b"pay 5", &s).unwrap();
        // Same message, another chain or another kind: the signature must not carry over.
        assert!(kp
            .public()
            .verify(SigDomain::new(2, MessageKind::TRANSACTION), b"pay 5", &s)
            .is_err());
        assert!(kp
            .public()
            .verify(SigDomain::new(1, MessageKind::PREPARE), b"pay 5", &s)
            .is_err());
    }

    #[test]
    fn weak_and_invalid_keys_rejected() {
        // The identity point (small order) is a weak key.
        let mut id = [0u8; 32];
        id[0] = 1;
        assert_eq!(PublicKey::from_bytes(id), Err(CryptoError::BadPublicKey));
        assert!(PublicKey::from_hex("xyz").is_err());
        let kp = Keypair::generate();
        let pk = PublicKey::from_bytes(*kp.public().as_bytes()).unwrap();
        assert_eq!(
            PublicKey::decode(&mut Reader::new(pk.as_bytes())).unwrap(),
            pk
        );
        assert!(!format!("{kp:?}").contains(&hex::encode(kp.seed())));
    }
}
