//! Epoch proofs: a promotion signed by the server that made it (SPEC §2).
//!
//! A promotion makes the standby the holder of `epoch + 1` and creates an
//! [`EpochProof`]: the claim `(pairId, epoch, holder uuid, holder name,
//! holder edge address)` signed with the key of the promoting server's
//! certificate. Heartbeat replies carry it, edges relay the highest one they
//! hold, and a server fences itself on it only when the signature verifies
//! against the public key it pinned for its peer at pairing. A claimed epoch
//! without such a proof fences nobody.
//!
//! The core does no cryptography itself: signing and verifying go through
//! [`ProofKeys`], which the I/O layer implements with the server's TLS key
//! (`vcodr-transport`), and the model checker with a stand-in.

use crate::types::*;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Most bytes of a proof's signature: a proof with a longer one is refused
/// unread (ECDSA P-384 DER signatures, the largest we issue, are ≤ 104 bytes).
pub const MAX_PROOF_SIGNATURE_BYTES: usize = 512;
/// Most bytes of the holder's name or edge address in a proof.
pub const MAX_PROOF_TEXT_BYTES: usize = 256;

/// What a promotion claims: `holder` holds `epoch` of pair `pair_id`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EpochClaim {
    pub pair_id: PairId,
    pub epoch: Epoch,
    /// The promoted server's `vcoUuid`.
    pub holder: ServerId,
    /// The promoted server's certificate name.
    pub holder_name: String,
    /// Where edges reach the promoted server (zombies redirect there).
    pub holder_edge_address: String,
}

/// Domain separation: a proof's signature can never be mistaken for (or
/// replayed as) any other signature made with a server's key.
const SIGNING_CONTEXT: &[u8] = b"vcodr epoch proof v1\0";

impl EpochClaim {
    /// The bytes that are signed.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = SIGNING_CONTEXT.to_vec();
        // Serializing owned plain data into a Vec cannot fail.
        postcard::to_io(self, &mut out).expect("postcard into a Vec");
        out
    }
}

/// A claim and its signature by the holder's certificate key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EpochProof {
    pub claim: EpochClaim,
    /// Opaque to the core: made and checked by [`ProofKeys`].
    pub signature: Vec<u8>,
}

impl EpochProof {
    /// Why this proof cannot even be checked (oversized fields), if so.
    pub fn shape_error(&self) -> Option<String> {
        let c = &self.claim;
        if self.signature.len() > MAX_PROOF_SIGNATURE_BYTES {
            return Some(format!(
                "signature of {} bytes (limit {MAX_PROOF_SIGNATURE_BYTES})",
                self.signature.len()
            ));
        }
        if c.holder_name.len() > MAX_PROOF_TEXT_BYTES
            || c.holder_edge_address.len() > MAX_PROOF_TEXT_BYTES
        {
            return Some(format!("holder name or address above {MAX_PROOF_TEXT_BYTES} bytes"));
        }
        None
    }

    /// A 64-bit digest for remembering proofs that failed verification (not
    /// cryptographic: a collision only means a forged proof is refused
    /// without being checked again).
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.claim.signed_bytes().iter().chain(&self.signature) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

/// Signing with this server's certificate key and verifying with a pinned
/// peer's public key. Implemented by the I/O layer; the core calls it
/// synchronously and never blocks otherwise.
pub trait ProofKeys: Send + Sync + 'static {
    /// This server's own public key (SubjectPublicKeyInfo, DER).
    fn public_key(&self) -> &[u8];
    /// Signs `message` with this server's key.
    fn sign(&self, message: &[u8]) -> Vec<u8>;
    /// Whether `signature` over `message` was made with the key whose
    /// SubjectPublicKeyInfo (DER) is `public_key`.
    fn verify(&self, public_key: &[u8], message: &[u8], signature: &[u8]) -> bool;
}

/// A server without keys: it signs nothing (its proofs verify nowhere) and
/// accepts no proof. The safe default: fencing through edges then needs the
/// keys the I/O layer gives with [`crate::Server::with_keys`]; the peer link
/// still fences.
#[derive(Debug, Default)]
pub struct NoKeys;

impl ProofKeys for NoKeys {
    fn public_key(&self) -> &[u8] {
        &[]
    }
    fn sign(&self, _message: &[u8]) -> Vec<u8> {
        Vec::new()
    }
    fn verify(&self, _public_key: &[u8], _message: &[u8], _signature: &[u8]) -> bool {
        false
    }
}

/// The keys a server holds, shareable and comparable (by public key), so
/// that the machine holding them stays `Clone + Eq + Hash` for the model checker.
#[derive(Clone)]
pub struct Keys(Arc<dyn ProofKeys>);

impl Keys {
    pub fn new(keys: Arc<dyn ProofKeys>) -> Self {
        Keys(keys)
    }

    /// Signs `claim` into a proof.
    pub fn prove(&self, claim: EpochClaim) -> EpochProof {
        let signature = self.0.sign(&claim.signed_bytes());
        EpochProof { claim, signature }
    }

    /// Whether `proof` was signed with the key `public_key`.
    pub fn verify(&self, public_key: &[u8], proof: &EpochProof) -> bool {
        proof.shape_error().is_none()
            && !public_key.is_empty()
            && self
                .0
                .verify(public_key, &proof.claim.signed_bytes(), &proof.signature)
    }

    pub fn public_key(&self) -> &[u8] {
        self.0.public_key()
    }
}

impl Default for Keys {
    fn default() -> Self {
        Keys(Arc::new(NoKeys))
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys({} public key bytes)", self.0.public_key().len())
    }
}

impl PartialEq for Keys {
    fn eq(&self, other: &Self) -> bool {
        self.public_key() == other.public_key()
    }
}

impl Eq for Keys {}

impl std::hash::Hash for Keys {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.public_key().hash(state)
    }
}
