//! The canonical wire encoding of consensus [`Message`]s.
//!
//! Layout: a version byte ([`WIRE_VERSION`]), a tag byte naming the variant, then the
//! variant's fields in the canonical encoding of their types:
//!
//! | tag | variant          | body                                         |
//! |-----|------------------|----------------------------------------------|
//! | 1   | `Proposal`       | [`Block`]                                    |
//! | 2   | `Vote`           | [`Vote`]                                     |
//! | 3   | `Validate`       | [`Block`] then [`Certificate`]               |
//! | 4   | `PCertificate`   | `u32` count (≤ [`MAX_VALIDATORS`]) + votes   |
//! | 5   | `Sync`           | `u64` height                                 |
//!
//! A message is decoded from a whole frame: trailing bytes are an error, and a frame longer
//! than [`MAX_MESSAGE_BYTES`] is refused before any of it is parsed.

use crypto_accel::{CodecError, CodecResult, Decode, Encode, Reader};

use super::Message;
use crate::tx::Block;
use crate::types::{Certificate, Vote, MAX_BLOCK_TXS, MAX_VALIDATORS};

/// The wire format version this build writes and the newest it reads.
const WIRE_VERSION: u8 = 1;

const TAG_PROPOSAL: u8 = 1;
const TAG_VOTE: u8 = 2;
const TAG_VALIDATE: u8 = 3;
const TAG_PCERTIFICATE: u8 = 4;
const TAG_SYNC: u8 = 5;

/// Encoded size of a [`Vote`]: kind 1, number 8, round 4, block 32, validator 32, sig 64.
const VOTE_BYTES: usize = 1 + 8 + 4 + 32 + 32 + 64;

/// The largest encoded signed transaction the decoders admit. The largest payload is a
/// `ListItem` at its caps: tag 1, name 4 + 64, data id 32, price 16, description
/// 4 + 1024, agent 32 = 1,177 bytes. A signed transaction adds tag 1, sender 32, nonce 8,
/// fee 16 and signature 64.
const MAX_SIGNED_TX_BYTES: usize = 1 + 32 + 8 + 16 + 1_177 + 64;

/// A sealed header: version 2, chain id 4, number 8, parent 32, timestamp 8, term 8,
/// proposer 32, kind 1, tx root 32, state root 32, seal 1 + 64.
const MAX_HEADER_BYTES: usize = 2 + 4 + 8 + 32 + 8 + 8 + 32 + 1 + 32 + 32 + 1 + 64;

/// A certificate with [`MAX_VALIDATORS`] signatures: number 8, round 4, block 32, kind 1,
/// count 4, then 96 bytes per (address, signature).
const MAX_CERTIFICATE_BYTES: usize = 8 + 4 + 32 + 1 + 4 + MAX_VALIDATORS * 96;

/// The largest message the decoders can produce: a VALIDATE with a full block
/// ([`MAX_BLOCK_TXS`] transactions of [`MAX_SIGNED_TX_BYTES`]) and a full certificate,
/// about 81.2 MiB.
const MAX_DECODABLE_BYTES: usize =
    2 + MAX_HEADER_BYTES + 4 + MAX_BLOCK_TXS * MAX_SIGNED_TX_BYTES + MAX_CERTIFICATE_BYTES;

/// Largest encoded consensus message accepted: 96 MiB.
///
/// Sound for every message the decoders can produce: the worst case is a VALIDATE carrying
/// [`MAX_BLOCK_TXS`] transactions with the largest payload the payload decoder admits plus
/// a certificate of [`MAX_VALIDATORS`] signatures, about 81.2 MiB (checked in the tests).
/// A frame longer than this is refused by [`Message::from_bytes`] before it is parsed, so a
/// transport may cap its reads here.
pub const MAX_MESSAGE_BYTES: usize = 96 * 1024 * 1024;

// The bound must stay sound if the block, certificate or payload limits grow.
const _: () = assert!(MAX_DECODABLE_BYTES <= MAX_MESSAGE_BYTES);

impl Encode for Message {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(WIRE_VERSION);
        match self {
            Message::Proposal(block) => {
                out.push(TAG_PROPOSAL);
                block.encode(out);
            }
            Message::Vote(vote) => {
                out.push(TAG_VOTE);
                vote.encode(out);
            }
            Message::Validate(block, cert) => {
                out.push(TAG_VALIDATE);
                block.encode(out);
                cert.encode(out);
            }
            Message::PCertificate(votes) => {
                out.push(TAG_PCERTIFICATE);
                // Decoders refuse more than MAX_VALIDATORS votes; saturate rather than wrap
                // so an impossible count can never alias a small one.
                let n = u32::try_from(votes.len()).unwrap_or(u32::MAX);
                n.encode(out);
                for v in votes {
                    v.encode(out);
                }
            }
            Message::Sync { number } => {
                out.push(TAG_SYNC);
                number.encode(out);
            }
        }
    }
}

impl Decode for Message {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        r.version("consensus message", WIRE_VERSION)?;
        match r.u8()? {
            TAG_PROPOSAL => Ok(Message::Proposal(Block::decode(r)?)),
            TAG_VOTE => Ok(Message::Vote(Vote::decode(r)?)),
            TAG_VALIDATE => Ok(Message::Validate(
                Block::decode(r)?,
                Certificate::decode(r)?,
            )),
            TAG_PCERTIFICATE => Ok(Message::PCertificate(r.vec(
                "p-certificate votes",
                MAX_VALIDATORS,
                VOTE_BYTES,
                Vote::decode,
            )?)),
            TAG_SYNC => Ok(Message::Sync { number: r.u64()? }),
            t => Err(CodecError::BadTag {
                what: "consensus message",
                tag: u64::from(t),
            }),
        }
    }

    fn from_bytes(bytes: &[u8]) -> CodecResult<Self> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(CodecError::TooLong {
                what: "consensus message",
                len: bytes.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        let mut r = Reader::new(bytes);
        let m = Self::decode(&mut r)?;
        r.finish()?;
        Ok(m)
    }
}

impl Message {
    /// The canonical wire encoding of this message.
    pub fn to_bytes(&self) -> Vec<u8> {
        Encode::to_bytes(self)
    }

    /// Decodes one whole frame; frames over [`MAX_MESSAGE_BYTES`], unknown versions or tags,
    /// truncation and trailing bytes are errors.
    pub fn from_bytes(bytes: &[u8]) -> CodecResult<Message> {
        <Message as Decode>::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::tx::{SignedTx, Tx, TxPayload};
    use crate::types::Address;
    use crypto_accel::{DataId, Hash, Keypair};

    #[test]
    fn bound_covers_the_largest_decodable_message() {
        let kp = Keypair::from_seed([1; 32]);
        // The largest payload the decoder admits, at every cap.
        let list = TxPayload::ListItem {
            name: "n".repeat(crate::tx::MAX_ITEM_NAME),
            data: DataId(Hash::ZERO),
            price: u128::MAX,
            description: "d".repeat(crate::tx::MAX_ITEM_DESCRIPTION),
            agent: Address::default(),
        };
        let tx = Tx::Signed(SignedTx::sign(&kp, 1, u64::MAX, u128::MAX, list));
        assert_eq!(tx.to_bytes().len(), MAX_SIGNED_TX_BYTES);
        // The other variable-length payloads at their caps are smaller.
        let sealed = TxPayload::SellerConfirm {
            order: 1,
            sealed_key: vec![0; crate::tx::MAX_SEALED_KEY],
        };
        let vote = Vote::sign(&kp, 1, crate::types::VoteKind::Commit, 1, 1, Hash::ZERO);
        let evidence = TxPayload::Evidence(Box::new(crate::types::DoubleVote {
            a: vote.clone(),
            b: vote.clone(),
        }));
        for p in [sealed, evidence] {
            let t = Tx::Signed(SignedTx::sign(&kp, 1, 0, 0, p));
            assert!(t.to_bytes().len() < MAX_SIGNED_TX_BYTES);
        }
        assert_eq!(vote.to_bytes().len(), VOTE_BYTES);
        // `MAX_DECODABLE_BYTES <= MAX_MESSAGE_BYTES` is checked at compile time.
    }

    #[test]
    fn oversized_frame_is_refused_before_parsing() {
        // A valid Sync followed by padding up to one byte over the bound.
        let mut b = Message::Sync { number: 1 }.to_bytes();
        b.resize(MAX_MESSAGE_BYTES + 1, 0);
        assert!(matches!(
            Message::from_bytes(&b),
            Err(CodecError::TooLong {
                what: "consensus message",
                ..
            })
        ));
    }
}
