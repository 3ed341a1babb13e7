//! The records stored in the state tables, each with its canonical encoding.

use crypto_accel::{put_bytes, CodecError, CodecResult, DataId, Decode, Encode, Hash, Reader};

use crate::tx::{AccessPolicy, IntervalRange, MAX_ITEM_DESCRIPTION, MAX_ITEM_NAME, MAX_SEALED_KEY};
use crate::types::{get_amount, put_amount, Address, Amount, VoteKind, MAX_VALIDATORS};

/// A block height (or a term number) stored as a value.
pub(crate) type Height = u64;

macro_rules! record {
    ($name:ident { $($f:ident : $kind:ident),* $(,)? }) => {
        impl Encode for $name {
            fn encode(&self, out: &mut Vec<u8>) {
                $( record!(@enc $kind, &self.$f, out); )*
            }
        }
        impl Decode for $name {
            fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
                Ok($name { $( $f: record!(@dec $kind, r), )* })
            }
        }
    };
    (@enc amt, $e:expr, $out:ident) => { put_amount($out, *$e) };
    (@enc v, $e:expr, $out:ident) => { Encode::encode($e, $out) };
    (@dec amt, $r:ident) => { get_amount($r)? };
    (@dec v, $r:ident) => { Decode::decode($r)? };
}

/// An account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Account {
    /// Spendable balance.
    pub balance: Amount,
    /// Next transaction nonce.
    pub nonce: u64,
}
record!(Account {
    balance: amt,
    nonce: v
});

/// An amount held by a pool for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Funds(pub(crate) Amount);

impl Encode for Funds {
    fn encode(&self, out: &mut Vec<u8>) {
        put_amount(out, self.0);
    }
}

impl Decode for Funds {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(Funds(get_amount(r)?))
    }
}

/// A registered piece of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRecord {
    /// Owner (the registering sender).
    pub owner: Address,
    /// Merkle root over the shards.
    pub merkle_root: Hash,
    /// Plaintext size.
    pub size: u64,
    /// Data shards.
    pub k: u16,
    /// Parity shards.
    pub m: u16,
    /// Encryption intervals.
    pub intervals: IntervalRange,
    /// Access policy.
    pub policy: AccessPolicy,
    /// Height of registration.
    pub registered_at: u64,
}
record!(DataRecord {
    owner: v,
    merkle_root: v,
    size: v,
    k: v,
    m: v,
    intervals: v,
    policy: v,
    registered_at: v
});

/// Key of a grant: data then reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct GrantKey {
    pub(crate) data: DataId,
    pub(crate) reader: Address,
}
record!(GrantKey { data: v, reader: v });

/// An access grant; revocation keeps the record for audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantRecord {
    /// Intervals granted.
    pub intervals: IntervalRange,
    /// First height at which the grant no longer holds.
    pub expiry: u64,
    /// Height of the grant.
    pub granted_at: u64,
    /// Height of the revocation, if revoked.
    pub revoked_at: Option<u64>,
}
record!(GrantRecord {
    intervals: v,
    expiry: v,
    granted_at: v,
    revoked_at: v
});

/// A campaign candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Deposit held by the campaign contract.
    pub deposit: Amount,
    /// First term of candidacy.
    pub start_term: u64,
    /// End of candidacy (exclusive).
    pub end_term: u64,
    /// Height of the claim.
    pub claimed_at: u64,
}
record!(Candidate {
    deposit: amt,
    start_term: v,
    end_term: v,
    claimed_at: v
});

/// Key of an upload-history entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct UploadKey {
    pub(crate) addr: Address,
    pub(crate) data: DataId,
}
record!(UploadKey { addr: v, data: v });

/// Key of per-block activity: address then height (range scans per address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ActivityKey {
    pub(crate) addr: Address,
    pub(crate) height: u64,
}
record!(ActivityKey { addr: v, height: v });

/// Key ordered by height then address (pruning index, evidence, impeachments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct HeightKey {
    pub(crate) height: u64,
    pub(crate) addr: Address,
}
record!(HeightKey { height: v, addr: v });

/// What one address did in one block: the RPT inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Activity {
    /// Transactions sent.
    pub txs: u32,
    /// Data registered (register contract uploads).
    pub uploads: u32,
    /// Proxy work: PDash trades settled as agent.
    pub proxy: u32,
    /// Normal blocks proposed.
    pub proposed: u32,
    /// Impeachments and punished double votes.
    pub faults: u32,
    /// Storage audits passed (reported by data coordinators).
    pub audits_passed: u32,
    /// Storage audits failed.
    pub audits_failed: u32,
}
record!(Activity {
    txs: v,
    uploads: v,
    proxy: v,
    proposed: v,
    faults: v,
    audits_passed: v,
    audits_failed: v
});

impl Activity {
    /// Adds another block's activity, saturating.
    pub fn add(&mut self, o: &Activity) {
        self.txs = self.txs.saturating_add(o.txs);
        self.uploads = self.uploads.saturating_add(o.uploads);
        self.audits_passed = self.audits_passed.saturating_add(o.audits_passed);
        self.audits_failed = self.audits_failed.saturating_add(o.audits_failed);
        self.proxy = self.proxy.saturating_add(o.proxy);
        self.proposed = self.proposed.saturating_add(o.proposed);
        self.faults = self.faults.saturating_add(o.faults);
    }
}

/// Chain parameters and counters kept in the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Height of the last applied block.
    pub(crate) height: u64,
    /// Current term.
    pub(crate) term: u64,
    /// Hash of the last applied block.
    pub(crate) last_hash: Hash,
    /// Supply created at genesis.
    pub(crate) genesis_supply: Amount,
    /// Supply created since by rewards.
    pub(crate) minted: Amount,
    /// Funds detained by penalties (held by the campaign contract).
    pub(crate) detained: Amount,
    /// Economy pool total D.
    pub(crate) economy_total: Amount,
    /// RPT weights α, β, γ, ψ, ω (per hundred).
    pub(crate) weights: [u32; 5],
    /// RPT window in blocks.
    pub(crate) rpt_window: u64,
    /// Admission CPU difficulty (leading zero bits).
    pub(crate) cpu_difficulty: u8,
    /// Admission memory difficulty (log2 KiB).
    pub(crate) memory_difficulty: u8,
    /// Next PDash listing id.
    pub(crate) next_item: u64,
    /// Next PDash order id.
    pub(crate) next_order: u64,
}

impl Meta {
    /// The meta record of an empty chain: default weights, window and difficulties.
    pub(crate) fn initial() -> Meta {
        Meta {
            height: 0,
            term: 0,
            last_hash: Hash::ZERO,
            genesis_supply: 0,
            minted: 0,
            detained: 0,
            economy_total: 0,
            weights: crate::rpt::DEFAULT_WEIGHTS,
            rpt_window: crate::rpt::DEFAULT_WINDOW,
            cpu_difficulty: crate::contracts::admission::DEFAULT_CPU_DIFFICULTY,
            memory_difficulty: crate::contracts::admission::DEFAULT_MEMORY_DIFFICULTY,
            next_item: 0,
            next_order: 0,
        }
    }
}

impl Encode for Meta {
    fn encode(&self, out: &mut Vec<u8>) {
        self.height.encode(out);
        self.term.encode(out);
        self.last_hash.encode(out);
        put_amount(out, self.genesis_supply);
        put_amount(out, self.minted);
        put_amount(out, self.detained);
        put_amount(out, self.economy_total);
        for w in &self.weights {
            w.encode(out);
        }
        self.rpt_window.encode(out);
        self.cpu_difficulty.encode(out);
        self.memory_difficulty.encode(out);
        self.next_item.encode(out);
        self.next_order.encode(out);
    }
}

impl Decode for Meta {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(Meta {
            height: r.u64()?,
            term: r.u64()?,
            last_hash: Hash::decode(r)?,
            genesis_supply: get_amount(r)?,
            minted: get_amount(r)?,
            detained: get_amount(r)?,
            economy_total: get_amount(r)?,
            weights: [r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?],
            rpt_window: r.u64()?,
            cpu_difficulty: r.u8()?,
            memory_difficulty: r.u8()?,
            next_item: r.u64()?,
            next_order: r.u64()?,
        })
    }
}

/// The proposers elected for one term.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Committee(pub(crate) Vec<Address>);

impl Encode for Committee {
    fn encode(&self, out: &mut Vec<u8>) {
        (self.0.len() as u32).encode(out);
        for a in &self.0 {
            a.encode(out);
        }
    }
}

impl Decode for Committee {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(Committee(r.vec(
            "committee",
            MAX_VALIDATORS,
            32,
            Address::decode,
        )?))
    }
}

fn get_str(r: &mut Reader<'_>, what: &'static str, max: usize) -> CodecResult<String> {
    String::from_utf8(r.bytes(what, max)?.to_vec()).map_err(|_| CodecError::Invalid {
        what,
        reason: "not UTF-8",
    })
}

/// A PDash listing (step 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Seller.
    pub seller: Address,
    /// Name.
    pub name: String,
    /// Data sold.
    pub data: DataId,
    /// Price.
    pub price: Amount,
    /// Description.
    pub description: String,
    /// Agent P.
    pub agent: Address,
    /// Withdrawn by the seller.
    pub delisted: bool,
    /// Height listed.
    pub listed_at: u64,
}

impl Encode for Listing {
    fn encode(&self, out: &mut Vec<u8>) {
        self.seller.encode(out);
        put_bytes(out, self.name.as_bytes());
        self.data.encode(out);
        put_amount(out, self.price);
        put_bytes(out, self.description.as_bytes());
        self.agent.encode(out);
        self.delisted.encode(out);
        self.listed_at.encode(out);
    }
}

impl Decode for Listing {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(Listing {
            seller: Address::decode(r)?,
            name: get_str(r, "item name", MAX_ITEM_NAME)?,
            data: DataId::decode(r)?,
            price: get_amount(r)?,
            description: get_str(r, "item description", MAX_ITEM_DESCRIPTION)?,
            agent: Address::decode(r)?,
            delisted: r.bool()?,
            listed_at: r.u64()?,
        })
    }
}

/// Where a PDash order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderState {
    /// Step 4 done: price locked from the buyer's escrow.
    Ordered,
    /// Step 6 done: seller attached the sealed key.
    SellerConfirmed,
    /// Step 7 done: buyer confirmed.
    BuyerConfirmed,
    /// Step 8 done: escrow released to the seller.
    Released,
    /// Buyer disputed after the seller confirmed.
    Disputed,
    /// Agent refunded the buyer after a dispute.
    Refunded,
    /// Buyer cancelled before the seller confirmed.
    Cancelled,
}

impl OrderState {
    /// Name for errors and audit.
    pub fn name(self) -> &'static str {
        match self {
            OrderState::Ordered => "ordered",
            OrderState::SellerConfirmed => "seller-confirmed",
            OrderState::BuyerConfirmed => "buyer-confirmed",
            OrderState::Released => "released",
            OrderState::Disputed => "disputed",
            OrderState::Refunded => "refunded",
            OrderState::Cancelled => "cancelled",
        }
    }

    fn tag(self) -> u8 {
        match self {
            OrderState::Ordered => 1,
            OrderState::SellerConfirmed => 2,
            OrderState::BuyerConfirmed => 3,
            OrderState::Released => 4,
            OrderState::Disputed => 5,
            OrderState::Refunded => 6,
            OrderState::Cancelled => 7,
        }
    }

    fn from_tag(t: u8) -> CodecResult<Self> {
        Ok(match t {
            1 => OrderState::Ordered,
            2 => OrderState::SellerConfirmed,
            3 => OrderState::BuyerConfirmed,
            4 => OrderState::Released,
            5 => OrderState::Disputed,
            6 => OrderState::Refunded,
            7 => OrderState::Cancelled,
            t => {
                return Err(CodecError::BadTag {
                    what: "order state",
                    tag: u64::from(t),
                })
            }
        })
    }
}

impl Encode for OrderState {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.tag());
    }
}

impl Decode for OrderState {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        OrderState::from_tag(r.u8()?)
    }
}

/// Most audit entries one order keeps (its longest path has 5 transitions).
pub(crate) const MAX_ORDER_HISTORY: usize = 8;

/// A PDash order with its audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Listing bought.
    pub item: u64,
    /// Buyer.
    pub buyer: Address,
    /// Seller.
    pub seller: Address,
    /// Agent P.
    pub agent: Address,
    /// Price locked from the buyer's escrow.
    pub price: Amount,
    /// The buyer's public key for sealing the data key.
    pub buyer_key: [u8; 32],
    /// The sealed data key (empty until step 6).
    pub sealed_key: Vec<u8>,
    /// Current state.
    pub state: OrderState,
    /// Audit trail: (state entered, height, caller).
    pub history: Vec<(OrderState, u64, Address)>,
}

impl Encode for Order {
    fn encode(&self, out: &mut Vec<u8>) {
        self.item.encode(out);
        self.buyer.encode(out);
        self.seller.encode(out);
        self.agent.encode(out);
        put_amount(out, self.price);
        self.buyer_key.encode(out);
        put_bytes(out, &self.sealed_key);
        self.state.encode(out);
        (self.history.len() as u32).encode(out);
        for (s, h, a) in &self.history {
            s.encode(out);
            h.encode(out);
            a.encode(out);
        }
    }
}

impl Decode for Order {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(Order {
            item: r.u64()?,
            buyer: Address::decode(r)?,
            seller: Address::decode(r)?,
            agent: Address::decode(r)?,
            price: get_amount(r)?,
            buyer_key: r.array()?,
            sealed_key: r.bytes("sealed key", MAX_SEALED_KEY)?.to_vec(),
            state: OrderState::decode(r)?,
            history: r.vec("order history", MAX_ORDER_HISTORY, 41, |r| {
                Ok((OrderState::decode(r)?, r.u64()?, Address::decode(r)?))
            })?,
        })
    }
}

/// A punished double vote, for audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Equivocation {
    /// Vote kind.
    pub kind: VoteKind,
    /// First block voted for.
    pub block_a: Hash,
    /// Second block voted for.
    pub block_b: Hash,
    /// Who submitted the evidence.
    pub reporter: Address,
    /// Amount detained.
    pub detained: Amount,
    /// Height the evidence was recorded at.
    pub recorded_at: u64,
}
record!(Equivocation {
    kind: v,
    block_a: v,
    block_b: v,
    reporter: v,
    detained: amt,
    recorded_at: v
});
