//! Transactions and block bodies.

use crypto_accel::{
    put_bytes, CodecError, CodecResult, DataId, Decode, Encode, Hash, Keypair, MerkleTree,
    MessageKind, PublicKey, Reader, SigDomain, Signature, VerifyBatch,
};

use crate::keycache::KeyCache;
use crate::types::{
    get_amount, put_amount, Address, Amount, DoubleVote, Header, MAX_BLOCK_TXS, MAX_PAYLOAD_BYTES,
};

/// Longest PDash item name, in bytes.
pub const MAX_ITEM_NAME: usize = 64;
/// Longest PDash item description, in bytes.
pub const MAX_ITEM_DESCRIPTION: usize = 1024;
/// Longest sealed data key a seller may attach to an order, in bytes.
pub const MAX_SEALED_KEY: usize = 512;

/// A half-open range `start..end` of encryption-interval indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct IntervalRange {
    /// First interval (inclusive).
    pub start: u64,
    /// End (exclusive).
    pub end: u64,
}

impl IntervalRange {
    /// Whether interval `i` lies in the range.
    pub fn contains(&self, i: u64) -> bool {
        self.start <= i && i < self.end
    }

    /// Whether `other` lies entirely within this range.
    pub fn covers(&self, other: &IntervalRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    /// Whether the range holds at least one interval.
    pub fn is_valid(&self) -> bool {
        self.start < self.end
    }
}

impl Encode for IntervalRange {
    fn encode(&self, out: &mut Vec<u8>) {
        self.start.encode(out);
        self.end.encode(out);
    }
}

impl Decode for IntervalRange {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(IntervalRange {
            start: r.u64()?,
            end: r.u64()?,
        })
    }
}

/// Who may read a registered piece of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessPolicy {
    /// Only the owner; grants are refused and ignored.
    OwnerOnly,
    /// The owner and readers holding a live, unrevoked grant covering the interval.
    GrantBased,
    /// Anyone.
    Public,
}

impl Encode for AccessPolicy {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(match self {
            AccessPolicy::OwnerOnly => 1,
            AccessPolicy::GrantBased => 2,
            AccessPolicy::Public => 3,
        });
    }
}

impl Decode for AccessPolicy {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        match r.u8()? {
            1 => Ok(AccessPolicy::OwnerOnly),
            2 => Ok(AccessPolicy::GrantBased),
            3 => Ok(AccessPolicy::Public),
            t => Err(CodecError::BadTag {
                what: "access policy",
                tag: u64::from(t),
            }),
        }
    }
}

/// One of the five RPT weights (white paper 5.1.2: α·AB + β·TX + γ·PR + ψ·DC + ω·BM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RptWeight {
    /// α, account balance (default 50).
    Alpha,
    /// β, transactions (default 15).
    Beta,
    /// γ, proxy reputation (default 10).
    Gamma,
    /// ψ, data contribution (default 15).
    Psi,
    /// ω, blockchain maintenance (default 10).
    Omega,
}

impl Encode for RptWeight {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(match self {
            RptWeight::Alpha => 1,
            RptWeight::Beta => 2,
            RptWeight::Gamma => 3,
            RptWeight::Psi => 4,
            RptWeight::Omega => 5,
        });
    }
}

impl Decode for RptWeight {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        match r.u8()? {
            1 => Ok(RptWeight::Alpha),
            2 => Ok(RptWeight::Beta),
            3 => Ok(RptWeight::Gamma),
            4 => Ok(RptWeight::Psi),
            5 => Ok(RptWeight::Omega),
            t => Err(CodecError::BadTag {
                what: "rpt weight",
                tag: u64::from(t),
            }),
        }
    }
}

/// What a signed transaction asks the chain to do. Built-in contract calls are variants
/// named after the contract function they implement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxPayload {
    /// Move `amount` from the sender to `to`.
    Transfer {
        /// Recipient.
        to: Address,
        /// Amount in base units.
        amount: Amount,
    },
    /// Data registry (and register contract): record a data id owned by the sender.
    RegisterData {
        /// The data's identity.
        id: DataId,
        /// Merkle root over its shards.
        merkle_root: Hash,
        /// Plaintext size in bytes.
        size: u64,
        /// Data shards per stripe.
        k: u16,
        /// Parity shards per stripe.
        m: u16,
        /// Encryption intervals the data spans.
        intervals: IntervalRange,
        /// Who may read it.
        policy: AccessPolicy,
    },
    /// Data registry: the owner changes the access policy.
    SetPolicy {
        /// The data.
        id: DataId,
        /// New policy.
        policy: AccessPolicy,
    },
    /// Data registry: the owner grants `reader` the intervals until height `expiry`
    /// (exclusive); replaces any earlier grant to the same reader.
    Grant {
        /// The data.
        id: DataId,
        /// The reader.
        reader: Address,
        /// Intervals granted.
        intervals: IntervalRange,
        /// First height at which the grant no longer holds.
        expiry: u64,
    },
    /// Data registry: the owner revokes `reader`'s grant.
    Revoke {
        /// The data.
        id: DataId,
        /// The reader.
        reader: Address,
    },
    /// Economy pool: deposit (raising phase only).
    EconomyDeposit {
        /// Amount.
        amount: Amount,
    },
    /// Economy pool: withdraw (raising or settlement phase).
    EconomyWithdraw {
        /// Amount.
        amount: Amount,
    },
    /// RNode pool: deposit.
    RNodeDeposit {
        /// Amount.
        amount: Amount,
    },
    /// RNode pool: withdraw (refused while elected).
    RNodeWithdraw {
        /// Amount.
        amount: Amount,
    },
    /// Proxy register contract `register_proxy_contract` (owner-only).
    RegisterProxyContract {
        /// Proxy address.
        proxy: Address,
        /// Real contract address.
        real: Address,
    },
    /// RPT contract `update_alpha` … `update_omega` (owner-only).
    UpdateRptWeight {
        /// Which weight.
        weight: RptWeight,
        /// New value (per hundred).
        value: u32,
    },
    /// RPT contract `update_window` (owner-only).
    UpdateRptWindow {
        /// Window length in blocks.
        blocks: u64,
    },
    /// Campaign contract `claim_campaign`, with admission proofs over the hash of block
    /// `seed_number`.
    ClaimCampaign {
        /// Terms to run for, starting with the next term.
        terms: u64,
        /// Deposit locked until quit.
        deposit: Amount,
        /// CPU proof-of-work nonce.
        cpu_nonce: u64,
        /// Memory-hard proof nonce.
        memory_nonce: u64,
        /// The block whose hash seeds both proofs.
        seed_number: u64,
    },
    /// Campaign contract `quit_campaign`: leave and take the deposit back.
    QuitCampaign,
    /// Campaign contract `punish_candidate` (owner-only): detain the deposit.
    PunishCandidate {
        /// The candidate.
        candidate: Address,
    },
    /// Admission contract `update_cpu_difficulty` (owner-only).
    UpdateCpuDifficulty {
        /// Leading zero bits required.
        bits: u8,
    },
    /// Admission contract `update_memory_difficulty` (owner-only).
    UpdateMemoryDifficulty {
        /// log2 of the memory-hard buffer size in KiB.
        log2_kib: u8,
    },
    /// PDash step 1: the seller lists an item.
    ListItem {
        /// Item name.
        name: String,
        /// The data sold.
        data: DataId,
        /// Price in base units.
        price: Amount,
        /// Description.
        description: String,
        /// Agent P who releases escrow and settles disputes.
        agent: Address,
    },
    /// PDash: the seller withdraws a listing (open orders are unaffected).
    DelistItem {
        /// Listing id.
        item: u64,
    },
    /// PDash step 3: the buyer pays into escrow.
    EscrowDeposit {
        /// Amount.
        amount: Amount,
    },
    /// PDash: the buyer takes unlocked escrow back.
    EscrowWithdraw {
        /// Amount.
        amount: Amount,
    },
    /// PDash step 4: the buyer orders, locking the price from its escrow.
    PlaceOrder {
        /// Listing id.
        item: u64,
        /// Key the seller seals the data key to.
        buyer_key: [u8; 32],
    },
    /// PDash: the buyer cancels before the seller confirms (price back to escrow).
    CancelOrder {
        /// Order id.
        order: u64,
    },
    /// PDash step 6: the seller confirms with the data key sealed to the buyer.
    SellerConfirm {
        /// Order id.
        order: u64,
        /// The sealed data key (opaque).
        sealed_key: Vec<u8>,
    },
    /// PDash step 7: the buyer confirms receipt.
    BuyerConfirm {
        /// Order id.
        order: u64,
    },
    /// PDash step 8: the agent releases escrow to the seller.
    AgentRelease {
        /// Order id.
        order: u64,
    },
    /// PDash: the buyer disputes a confirmed order instead of confirming it.
    Dispute {
        /// Order id.
        order: u64,
    },
    /// PDash: the agent settles a dispute by refunding the buyer or paying the seller.
    AgentResolve {
        /// Order id.
        order: u64,
        /// True refunds the buyer, false pays the seller.
        refund: bool,
    },
    /// Proof that a validator signed two conflicting votes; anyone may submit it.
    Evidence(Box<DoubleVote>),
    /// Storage audits (the storage part of Data Contribution): the sender, coordinator of
    /// some data, ran `passed + failed` audits on `holder`'s shards since its last report.
    /// Failed audits lower the holder's RPT.
    AuditReport {
        /// The audited storage node.
        holder: Address,
        /// Audits it passed.
        passed: u32,
        /// Audits it failed (shard missing, bad proof, refusal).
        failed: u32,
    },
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn get_str(r: &mut Reader<'_>, what: &'static str, max: usize) -> CodecResult<String> {
    let b = r.bytes(what, max)?;
    String::from_utf8(b.to_vec()).map_err(|_| CodecError::Invalid {
        what,
        reason: "not UTF-8",
    })
}

impl Encode for TxPayload {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            TxPayload::Transfer { to, amount } => {
                out.push(1);
                to.encode(out);
                put_amount(out, *amount);
            }
            TxPayload::RegisterData {
                id,
                merkle_root,
                size,
                k,
                m,
                intervals,
                policy,
            } => {
                out.push(2);
                id.encode(out);
                merkle_root.encode(out);
                size.encode(out);
                k.encode(out);
                m.encode(out);
                intervals.encode(out);
                policy.encode(out);
            }
            TxPayload::SetPolicy { id, policy } => {
                out.push(3);
                id.encode(out);
                policy.encode(out);
            }
            TxPayload::Grant {
                id,
                reader,
                intervals,
                expiry,
            } => {
                out.push(4);
                id.encode(out);
                reader.encode(out);
                intervals.encode(out);
                expiry.encode(out);
            }
            TxPayload::Revoke { id, reader } => {
                out.push(5);
                id.encode(out);
                reader.encode(out);
            }
            TxPayload::EconomyDeposit { amount } => {
                out.push(6);
                put_amount(out, *amount);
            }
            TxPayload::EconomyWithdraw { amount } => {
                out.push(7);
                put_amount(out, *amount);
            }
            TxPayload::RNodeDeposit { amount } => {
                out.push(8);
                put_amount(out, *amount);
            }
            TxPayload::RNodeWithdraw { amount } => {
                out.push(9);
                put_amount(out, *amount);
            }
            TxPayload::RegisterProxyContract { proxy, real } => {
                out.push(10);
                proxy.encode(out);
                real.encode(out);
            }
            TxPayload::UpdateRptWeight { weight, value } => {
                out.push(11);
                weight.encode(out);
                value.encode(out);
            }
            TxPayload::UpdateRptWindow { blocks } => {
                out.push(12);
                blocks.encode(out);
            }
            TxPayload::ClaimCampaign {
                terms,
                deposit,
                cpu_nonce,
                memory_nonce,
                seed_number,
            } => {
                out.push(13);
                terms.encode(out);
                put_amount(out, *deposit);
                cpu_nonce.encode(out);
                memory_nonce.encode(out);
                seed_number.encode(out);
            }
            TxPayload::QuitCampaign => out.push(14),
            TxPayload::PunishCandidate { candidate } => {
                out.push(15);
                candidate.encode(out);
            }
            TxPayload::UpdateCpuDifficulty { bits } => {
                out.push(16);
                bits.encode(out);
            }
            TxPayload::UpdateMemoryDifficulty { log2_kib } => {
                out.push(17);
                log2_kib.encode(out);
            }
            TxPayload::ListItem {
                name,
                data,
                price,
                description,
                agent,
            } => {
                out.push(18);
                put_str(out, name);
                data.encode(out);
                put_amount(out, *price);
                put_str(out, description);
                agent.encode(out);
            }
            TxPayload::DelistItem { item } => {
                out.push(19);
                item.encode(out);
            }
            TxPayload::EscrowDeposit { amount } => {
                out.push(20);
                put_amount(out, *amount);
            }
            TxPayload::EscrowWithdraw { amount } => {
                out.push(21);
                put_amount(out, *amount);
            }
            TxPayload::PlaceOrder { item, buyer_key } => {
                out.push(22);
                item.encode(out);
                buyer_key.encode(out);
            }
            TxPayload::CancelOrder { order } => {
                out.push(23);
                order.encode(out);
            }
            TxPayload::SellerConfirm { order, sealed_key } => {
                out.push(24);
                order.encode(out);
                put_bytes(out, sealed_key);
            }
            TxPayload::BuyerConfirm { order } => {
                out.push(25);
                order.encode(out);
            }
            TxPayload::AgentRelease { order } => {
                out.push(26);
                order.encode(out);
            }
            TxPayload::Dispute { order } => {
                out.push(27);
                order.encode(out);
            }
            TxPayload::AgentResolve { order, refund } => {
                out.push(28);
                order.encode(out);
                refund.encode(out);
            }
            TxPayload::Evidence(dv) => {
                out.push(29);
                dv.encode(out);
            }
            TxPayload::AuditReport {
                holder,
                passed,
                failed,
            } => {
                out.push(30);
                holder.encode(out);
                passed.encode(out);
                failed.encode(out);
            }
        }
    }
}

impl Decode for TxPayload {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        let before = r.remaining();
        let p = decode_payload(r)?;
        let len = before - r.remaining();
        if len > MAX_PAYLOAD_BYTES {
            return Err(CodecError::TooLong {
                what: "transaction payload",
                len,
                max: MAX_PAYLOAD_BYTES,
            });
        }
        Ok(p)
    }
}

fn decode_payload(r: &mut Reader<'_>) -> CodecResult<TxPayload> {
    {
        Ok(match r.u8()? {
            1 => TxPayload::Transfer {
                to: Address::decode(r)?,
                amount: get_amount(r)?,
            },
            2 => TxPayload::RegisterData {
                id: DataId::decode(r)?,
                merkle_root: Hash::decode(r)?,
                size: r.u64()?,
                k: r.u16()?,
                m: r.u16()?,
                intervals: IntervalRange::decode(r)?,
                policy: AccessPolicy::decode(r)?,
            },
            3 => TxPayload::SetPolicy {
                id: DataId::decode(r)?,
                policy: AccessPolicy::decode(r)?,
            },
            4 => TxPayload::Grant {
                id: DataId::decode(r)?,
                reader: Address::decode(r)?,
                intervals: IntervalRange::decode(r)?,
                expiry: r.u64()?,
            },
            5 => TxPayload::Revoke {
                id: DataId::decode(r)?,
                reader: Address::decode(r)?,
            },
            6 => TxPayload::EconomyDeposit {
                amount: get_amount(r)?,
            },
            7 => TxPayload::EconomyWithdraw {
                amount: get_amount(r)?,
            },
            8 => TxPayload::RNodeDeposit {
                amount: get_amount(r)?,
            },
            9 => TxPayload::RNodeWithdraw {
                amount: get_amount(r)?,
            },
            10 => TxPayload::RegisterProxyContract {
                proxy: Address::decode(r)?,
                real: Address::decode(r)?,
            },
            11 => TxPayload::UpdateRptWeight {
                weight: RptWeight::decode(r)?,
                value: r.u32()?,
            },
            12 => TxPayload::UpdateRptWindow { blocks: r.u64()? },
            13 => TxPayload::ClaimCampaign {
                terms: r.u64()?,
                deposit: get_amount(r)?,
                cpu_nonce: r.u64()?,
                memory_nonce: r.u64()?,
                seed_number: r.u64()?,
            },
            14 => TxPayload::QuitCampaign,
            15 => TxPayload::PunishCandidate {
                candidate: Address::decode(r)?,
            },
            16 => TxPayload::UpdateCpuDifficulty { bits: r.u8()? },
            17 => TxPayload::UpdateMemoryDifficulty { log2_kib: r.u8()? },
            18 => TxPayload::ListItem {
                name: get_str(r, "item name", MAX_ITEM_NAME)?,
                data: DataId::decode(r)?,
                price: get_amount(r)?,
                description: get_str(r, "item description", MAX_ITEM_DESCRIPTION)?,
                agent: Address::decode(r)?,
            },
            19 => TxPayload::DelistItem { item: r.u64()? },
            20 => TxPayload::EscrowDeposit {
                amount: get_amount(r)?,
            },
            21 => TxPayload::EscrowWithdraw {
                amount: get_amount(r)?,
            },
            22 => TxPayload::PlaceOrder {
                item: r.u64()?,
                buyer_key: r.array()?,
            },
            23 => TxPayload::CancelOrder { order: r.u64()? },
            24 => TxPayload::SellerConfirm {
                order: r.u64()?,
                sealed_key: r.bytes("sealed key", MAX_SEALED_KEY)?.to_vec(),
            },
            25 => TxPayload::BuyerConfirm { order: r.u64()? },
            26 => TxPayload::AgentRelease { order: r.u64()? },
            27 => TxPayload::Dispute { order: r.u64()? },
            28 => TxPayload::AgentResolve {
                order: r.u64()?,
                refund: r.bool()?,
            },
            29 => TxPayload::Evidence(Box::new(DoubleVote::decode(r)?)),
            30 => TxPayload::AuditReport {
                holder: Address::decode(r)?,
                passed: r.u32()?,
                failed: r.u32()?,
            },
            t => {
                return Err(CodecError::BadTag {
                    what: "transaction payload",
                    tag: u64::from(t),
                })
            }
        })
    }
}

/// A transaction signed by its sender (domain: chain id + TRANSACTION).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTx {
    /// Sender, who pays the fee.
    pub from: Address,
    /// The sender's next nonce; transactions apply in nonce order.
    pub nonce: u64,
    /// Fee paid to the block's proposer.
    pub fee: Amount,
    /// The call.
    pub payload: TxPayload,
    /// Signature over [`SignedTx::signing_bytes`].
    pub sig: Signature,
}

impl SignedTx {
    /// The bytes the sender signs (the domain adds the chain id and kind).
    pub fn signing_bytes(from: &Address, nonce: u64, fee: Amount, payload: &TxPayload) -> Vec<u8> {
        let mut b = Vec::with_capacity(96);
        from.encode(&mut b);
        nonce.encode(&mut b);
        put_amount(&mut b, fee);
        payload.encode(&mut b);
        b
    }

    /// Builds and signs a transaction.
    pub fn sign(kp: &Keypair, chain_id: u32, nonce: u64, fee: Amount, payload: TxPayload) -> Self {
        let from = Address::of(&kp.public());
        let msg = Self::signing_bytes(&from, nonce, fee, &payload);
        let sig = kp.sign(SigDomain::new(chain_id, MessageKind::TRANSACTION), &msg);
        SignedTx {
            from,
            nonce,
            fee,
            payload,
            sig,
        }
    }

    /// Adds this transaction's signature check to `batch`; false if `from` is not a valid key
    /// (such a transaction is invalid without any signature check).
    pub fn push_verify(&self, chain_id: u32, batch: &mut VerifyBatch) -> bool {
        let Ok(pk) = self.from.public_key() else {
            return false;
        };
        self.push_verify_key(&pk, chain_id, batch);
        true
    }

    /// As [`SignedTx::push_verify`], taking the sender's key from `keys`.
    pub fn push_verify_cached(
        &self,
        chain_id: u32,
        batch: &mut VerifyBatch,
        keys: &mut KeyCache,
    ) -> bool {
        let Ok(pk) = keys.get(&self.from) else {
            return false;
        };
        self.push_verify_key(&pk, chain_id, batch);
        true
    }

    fn push_verify_key(&self, pk: &PublicKey, chain_id: u32, batch: &mut VerifyBatch) {
        let msg = Self::signing_bytes(&self.from, self.nonce, self.fee, &self.payload);
        batch.push(
            pk,
            SigDomain::new(chain_id, MessageKind::TRANSACTION),
            &msg,
            &self.sig,
        );
    }
}

/// An entry of a block body.
// Nearly every entry is `Signed`; boxing it would cost an allocation per transaction to
// save space only in the one-per-impeach-block `Penalty`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tx {
    /// A user transaction.
    Signed(SignedTx),
    /// The single transaction of an impeach block: the penalty on the proposer who failed
    /// height `number`. Unsigned, so every honest validator builds the identical block.
    Penalty {
        /// The impeached proposer.
        proposer: Address,
        /// The height it failed.
        number: u64,
    },
}

impl Tx {
    /// The transaction's hash (its id).
    pub fn hash(&self) -> Hash {
        Hash::domain("cpchain tx v1", &self.to_bytes())
    }
}

impl Encode for Tx {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Tx::Signed(t) => {
                out.push(1);
                t.from.encode(out);
                t.nonce.encode(out);
                put_amount(out, t.fee);
                t.payload.encode(out);
                t.sig.encode(out);
            }
            Tx::Penalty { proposer, number } => {
                out.push(2);
                proposer.encode(out);
                number.encode(out);
            }
        }
    }
}

impl Decode for Tx {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        match r.u8()? {
            1 => Ok(Tx::Signed(SignedTx {
                from: Address::decode(r)?,
                nonce: r.u64()?,
                fee: get_amount(r)?,
                payload: TxPayload::decode(r)?,
                sig: Signature::decode(r)?,
            })),
            2 => Ok(Tx::Penalty {
                proposer: Address::decode(r)?,
                number: r.u64()?,
            }),
            t => Err(CodecError::BadTag {
                what: "transaction",
                tag: u64::from(t),
            }),
        }
    }
}

/// A block: header and transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The header.
    pub header: Header,
    /// The transactions, in execution order.
    pub txs: Vec<Tx>,
}

impl Block {
    /// The block's identity (its header hash).
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }

    /// Merkle root over the transaction hashes.
    pub fn compute_tx_root(txs: &[Tx]) -> Hash {
        let leaves: Vec<Hash> = txs.iter().map(Tx::hash).collect();
        MerkleTree::from_leaves(&leaves).root()
    }
}

impl Encode for Block {
    fn encode(&self, out: &mut Vec<u8>) {
        self.header.encode(out);
        (self.txs.len() as u32).encode(out);
        for t in &self.txs {
            t.encode(out);
        }
    }
}

impl Decode for Block {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(Block {
            header: Header::decode(r)?,
            txs: r.vec("block transactions", MAX_BLOCK_TXS, 41, Tx::decode)?,
        })
    }
}
