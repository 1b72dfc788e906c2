//! Test support (cargo feature `testing`): stand-in keys and identities for
//! the core's tests, the benches and the model checker. Nothing here is
//! cryptography; production servers use `vcodr-transport`'s keys.

use crate::proof::{Keys, ProofKeys};
use crate::types::PeerIdentity;
use std::sync::Arc;

/// Stand-in keys of the server called `name`: the "public key" is
/// `test-key:<name>`, a "signature" is that key and a digest of the message.
/// Whoever does not hold `name`'s keys cannot make `name`'s signature in a
/// test — the tests and the model's hostile actor only sign with their own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TestKeys {
    public_key: Vec<u8>,
}

impl TestKeys {
    pub fn new(name: &str) -> Self {
        TestKeys {
            public_key: public_key(name),
        }
    }

    /// As [`Keys`], ready for [`crate::Server::with_keys`].
    pub fn keys(name: &str) -> Keys {
        Keys::new(Arc::new(TestKeys::new(name)))
    }
}

/// The stand-in public key of `name`.
pub fn public_key(name: &str) -> Vec<u8> {
    format!("test-key:{name}").into_bytes()
}

/// The identity TLS would prove for the server called `name` (stand-in key).
pub fn identity(name: &str) -> PeerIdentity {
    PeerIdentity {
        name: name.to_string(),
        public_key: public_key(name),
        key_fingerprint: format!("test-key-of-{name}"),
    }
}

fn signature(public_key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in public_key.iter().chain(message) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut sig = b"test-sig:".to_vec();
    sig.extend_from_slice(public_key);
    sig.extend_from_slice(&h.to_be_bytes());
    sig
}

impl ProofKeys for TestKeys {
    fn public_key(&self) -> &[u8] {
        &self.public_key
    }
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        signature(&self.public_key, message)
    }
    fn verify(&self, public_key: &[u8], message: &[u8], sig: &[u8]) -> bool {
        signature(public_key, message) == sig
    }
}
