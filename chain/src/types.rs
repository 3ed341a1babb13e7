//! Ledger types in the canonical encoding: accounts, transactions, block headers and bodies,
//! validator votes and the certificate that makes a block final.

use std::fmt;

use crypto_accel::{
    CodecError, CodecResult, CryptoResult, Decode, Encode, Hash, Keypair, MessageKind, PublicKey,
    Reader, SigDomain, Signature,
};

/// Protocol version carried by blocks and messages. Soft updates keep it; a hard update
/// raises it and old nodes reject the new blocks with [`crate::ChainError::Version`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Amounts in the smallest unit; 1 CPC = 10^18 units.
pub type Amount = u128;

/// One CPC in base units.
pub const CPC: Amount = 1_000_000_000_000_000_000;

/// Base units shown as CPC, with the trailing zeros of the decimals removed ("12.5",
/// "0.001", "200000"): how amounts read in messages meant for people.
pub fn format_cpc(amount: Amount) -> String {
    let int = amount / CPC;
    let frac = amount % CPC;
    if frac == 0 {
        return int.to_string();
    }
    let f = format!("{frac:018}");
    format!("{int}.{}", f.trim_end_matches('0'))
}

/// Most transactions one block may carry.
pub const MAX_BLOCK_TXS: usize = 65_536;
/// Most validator signatures a certificate may carry.
pub const MAX_VALIDATORS: usize = 1_024;
/// Largest encoded transaction payload accepted.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// An account: the raw bytes of its ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Address(pub [u8; 32]);

/// Byte order, compared word-wise ([`crypto_accel::cmp32`]).
impl Ord for Address {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        crypto_accel::cmp32(&self.0, &other.0)
    }
}

impl PartialOrd for Address {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Address {
    /// The address of a public key.
    pub fn of(pk: &PublicKey) -> Address {
        Address(*pk.as_bytes())
    }

    /// The public key behind the address (fails for bytes that are not a valid key).
    pub fn public_key(&self) -> CryptoResult<PublicKey> {
        PublicKey::from_bytes(self.0)
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits (the key bytes; no check that they are a valid key).
    pub fn from_hex(s: &str) -> Option<Address> {
        let mut a = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut a).ok()?;
        Some(Address(a))
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({}…)", &self.to_hex()[..10])
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Encode for Address {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
}

impl Decode for Address {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(Address(r.array()?))
    }
}

/// Encodes an [`Amount`].
pub fn put_amount(out: &mut Vec<u8>, a: Amount) {
    out.extend_from_slice(&a.to_le_bytes());
}

/// Decodes an [`Amount`].
pub fn get_amount(r: &mut Reader<'_>) -> CodecResult<Amount> {
    Ok(u128::from_le_bytes(r.array()?))
}

/// What a block is: proposed in turn, or built by the validators to impeach a proposer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// Proposed and sealed by the proposer whose turn it is.
    Normal,
    /// Built identically by every honest validator when the proposer failed; empty seal,
    /// one penalty transaction.
    Impeach,
}

impl Encode for BlockKind {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(match self {
            BlockKind::Normal => 1,
            BlockKind::Impeach => 2,
        });
    }
}

impl Decode for BlockKind {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        match r.u8()? {
            1 => Ok(BlockKind::Normal),
            2 => Ok(BlockKind::Impeach),
            t => Err(CodecError::BadTag {
                what: "block kind",
                tag: u64::from(t),
            }),
        }
    }
}

/// A block header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Protocol version.
    pub version: u16,
    /// Chain id (also in every signature's domain).
    pub chain_id: u32,
    /// Height; genesis is 0.
    pub number: u64,
    /// Hash of the parent header.
    pub parent: Hash,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Election term this block belongs to.
    pub term: u64,
    /// The proposer whose turn this height is (the impeached one, for impeach blocks).
    pub proposer: Address,
    /// Normal or impeach.
    pub kind: BlockKind,
    /// Merkle root over the transaction hashes.
    pub tx_root: Hash,
    /// Root committing to the whole state *before* this block, i.e. after its parent (as
    /// Tendermint's app hash): every node knows it without executing this block, so the
    /// impeach block every honest validator builds is identical. Block N's own effects are
    /// committed by block N+1.
    pub state_root: Hash,
    /// The proposer's signature over [`Header::hash`]; `None` for impeach blocks.
    pub seal: Option<Signature>,
}

impl Header {
    fn encode_unsealed(&self, out: &mut Vec<u8>) {
        self.version.encode(out);
        self.chain_id.encode(out);
        self.number.encode(out);
        self.parent.encode(out);
        self.timestamp_ms.encode(out);
        self.term.encode(out);
        self.proposer.encode(out);
        self.kind.encode(out);
        self.tx_root.encode(out);
        self.state_root.encode(out);
    }

    /// The block's identity: a hash of every field but the seal (which signs it).
    pub fn hash(&self) -> Hash {
        let mut b = Vec::with_capacity(200);
        self.encode_unsealed(&mut b);
        Hash::domain("cpchain header v1", &b)
    }

    /// Signs the header as its proposer.
    pub fn seal_with(&mut self, kp: &Keypair) {
        let d = SigDomain::new(self.chain_id, MessageKind::BLOCK_SEAL);
        self.seal = Some(kp.sign(d, self.hash().as_bytes()));
    }
}

impl Encode for Header {
    fn encode(&self, out: &mut Vec<u8>) {
        self.encode_unsealed(out);
        self.seal.encode(out);
    }
}

impl Decode for Header {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(Header {
            version: r.u16()?,
            chain_id: r.u32()?,
            number: r.u64()?,
            parent: Hash::decode(r)?,
            timestamp_ms: r.u64()?,
            term: r.u64()?,
            proposer: Address::decode(r)?,
            kind: BlockKind::decode(r)?,
            tx_root: Hash::decode(r)?,
            state_root: Hash::decode(r)?,
            seal: Option::<Signature>::decode(r)?,
        })
    }
}

/// The phase a validator vote belongs to (LBFT 2.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VoteKind {
    /// Normal case, prepare phase.
    Prepare,
    /// Normal case, commit phase.
    Commit,
    /// Impeachment, prepare phase.
    ImpeachPrepare,
    /// Impeachment, commit phase.
    ImpeachCommit,
}

impl VoteKind {
    /// Whether this is a prepare-type vote (PREPARE or IMPEACH PREPARE); the others are
    /// commit-type. An honest validator sends at most one of each type per (height, round).
    pub fn is_prepare_type(self) -> bool {
        matches!(self, VoteKind::Prepare | VoteKind::ImpeachPrepare)
    }

    /// The signature domain kind of this vote.
    pub fn message_kind(self) -> MessageKind {
        match self {
            VoteKind::Prepare => MessageKind::PREPARE,
            VoteKind::Commit => MessageKind::COMMIT,
            VoteKind::ImpeachPrepare => MessageKind::IMPEACH_PREPARE,
            VoteKind::ImpeachCommit => MessageKind::IMPEACH_COMMIT,
        }
    }
}

impl Encode for VoteKind {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(match self {
            VoteKind::Prepare => 1,
            VoteKind::Commit => 2,
            VoteKind::ImpeachPrepare => 3,
            VoteKind::ImpeachCommit => 4,
        });
    }
}

impl Decode for VoteKind {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        match r.u8()? {
            1 => Ok(VoteKind::Prepare),
            2 => Ok(VoteKind::Commit),
            3 => Ok(VoteKind::ImpeachPrepare),
            4 => Ok(VoteKind::ImpeachCommit),
            t => Err(CodecError::BadTag {
                what: "vote kind",
                tag: u64::from(t),
            }),
        }
    }
}

/// A validator's signed vote for one block at one height and round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    /// Phase.
    pub kind: VoteKind,
    /// Height voted on.
    pub number: u64,
    /// Round within the height (0 is LBFT 2.0's normal case).
    pub round: u32,
    /// Header hash voted for.
    pub block: Hash,
    /// The voting validator.
    pub validator: Address,
    /// Signature over [`Vote::signed_message`] in the vote kind's domain.
    pub sig: Signature,
}

impl Vote {
    /// The bytes a vote signs (the domain adds chain id and vote kind).
    pub fn signed_message(number: u64, round: u32, block: &Hash) -> [u8; 44] {
        let mut m = [0u8; 44];
        m[..8].copy_from_slice(&number.to_le_bytes());
        m[8..12].copy_from_slice(&round.to_le_bytes());
        m[12..].copy_from_slice(block.as_bytes());
        m
    }

    /// Makes and signs a vote.
    pub fn sign(
        kp: &Keypair,
        chain_id: u32,
        kind: VoteKind,
        number: u64,
        round: u32,
        block: Hash,
    ) -> Vote {
        let d = SigDomain::new(chain_id, kind.message_kind());
        Vote {
            kind,
            number,
            round,
            block,
            validator: Address::of(&kp.public()),
            sig: kp.sign(d, &Vote::signed_message(number, round, &block)),
        }
    }

    /// The bytes this vote signs.
    pub fn message(&self) -> [u8; 44] {
        Vote::signed_message(self.number, self.round, &self.block)
    }

    /// The signature domain of this vote on `chain_id`.
    pub fn domain(&self, chain_id: u32) -> SigDomain {
        SigDomain::new(chain_id, self.kind.message_kind())
    }
}

impl Encode for Vote {
    fn encode(&self, out: &mut Vec<u8>) {
        self.kind.encode(out);
        self.number.encode(out);
        self.round.encode(out);
        self.block.encode(out);
        self.validator.encode(out);
        self.sig.encode(out);
    }
}

impl Decode for Vote {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(Vote {
            kind: VoteKind::decode(r)?,
            number: r.u64()?,
            round: r.u32()?,
            block: Hash::decode(r)?,
            validator: Address::decode(r)?,
            sig: Signature::decode(r)?,
        })
    }
}

/// The 2f+1 COMMIT (or IMPEACH COMMIT) signatures that make a block final: what a VALIDATE
/// message carries and what a syncing node checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// Height.
    pub number: u64,
    /// The round whose commit-type votes these are.
    pub round: u32,
    /// Header hash.
    pub block: Hash,
    /// [`VoteKind::Commit`] or [`VoteKind::ImpeachCommit`].
    pub kind: VoteKind,
    /// (validator, signature) pairs, sorted by validator, no duplicates.
    pub sigs: Vec<(Address, Signature)>,
}

impl Certificate {
    /// A certificate of `kind` votes for `block` at (`number`, `round`) signed by every key in
    /// `signers`: how tools, benchmarks and tests finalise blocks without running consensus.
    pub fn signed_by(
        signers: &[Keypair],
        chain_id: u32,
        kind: VoteKind,
        number: u64,
        round: u32,
        block: Hash,
    ) -> Certificate {
        let mut sigs: Vec<(Address, Signature)> = signers
            .iter()
            .map(|k| {
                let v = Vote::sign(k, chain_id, kind, number, round, block);
                (v.validator, v.sig)
            })
            .collect();
        sigs.sort_by_key(|(a, _)| *a);
        Certificate {
            number,
            round,
            block,
            kind,
            sigs,
        }
    }
}

impl Encode for Certificate {
    fn encode(&self, out: &mut Vec<u8>) {
        self.number.encode(out);
        self.round.encode(out);
        self.block.encode(out);
        self.kind.encode(out);
        (self.sigs.len() as u32).encode(out);
        for (a, s) in &self.sigs {
            a.encode(out);
            s.encode(out);
        }
    }
}

impl Decode for Certificate {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(Certificate {
            number: r.u64()?,
            round: r.u32()?,
            block: Hash::decode(r)?,
            kind: VoteKind::decode(r)?,
            sigs: r.vec("certificate signatures", MAX_VALIDATORS, 96, |r| {
                Ok((Address::decode(r)?, Signature::decode(r)?))
            })?,
        })
    }
}

/// Two conflicting signed votes of one type (prepare-type or commit-type) from one
/// validator at one height and round: proof of equivocation, recorded on chain and punished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoubleVote {
    /// The first vote.
    pub a: Vote,
    /// The conflicting vote (same validator, vote type, height and round; another block).
    pub b: Vote,
}

impl Encode for DoubleVote {
    fn encode(&self, out: &mut Vec<u8>) {
        self.a.encode(out);
        self.b.encode(out);
    }
}

impl Decode for DoubleVote {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(DoubleVote {
            a: Vote::decode(r)?,
            b: Vote::decode(r)?,
        })
    }
}
