//! Transactions and block bodies.

use crypto_accel::{
    CodecError, CodecResult, Decode, Encode, Hash, Keypair, MerkleTree, MessageKind, Reader,
    SigDomain, Signature, VerifyBatch,
};

use crate::types::{get_amount, put_amount, Address, Amount, Header, MAX_BLOCK_TXS};

/// What a signed transaction asks the chain to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxPayload {
    /// Move `amount` from the sender to `to`.
    Transfer {
        /// Recipient.
        to: Address,
        /// Amount in base units.
        amount: Amount,
    },
}

impl Encode for TxPayload {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            TxPayload::Transfer { to, amount } => {
                out.push(1);
                to.encode(out);
                put_amount(out, *amount);
            }
        }
    }
}

impl Decode for TxPayload {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        match r.u8()? {
            1 => Ok(TxPayload::Transfer {
                to: Address::decode(r)?,
                amount: get_amount(r)?,
            }),
            t => Err(CodecError::BadTag {
                what: "transaction payload",
                tag: u64::from(t),
            }),
        }
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
        let msg = Self::signing_bytes(&self.from, self.nonce, self.fee, &self.payload);
        batch.push(
            &pk,
            SigDomain::new(chain_id, MessageKind::TRANSACTION),
            &msg,
            &self.sig,
        );
        true
    }
}

/// An entry of a block body.
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
