//! [`CertKeys`]: epoch proofs signed with an identity's private key and
//! verified against a pinned peer's public key.

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::sign::Signer;
use rustls::SignatureScheme;
use rustls_pki_types::SubjectPublicKeyInfoDer;
use vcodr_core::ProofKeys;

use super::der::{key_fingerprint, spki_of};
use super::identity::TlsIdentity;
use super::CertError;

/// The signature schemes epoch proofs are signed with, in our order of
/// preference; the key type decides which one applies.
pub const PROOF_SCHEMES: [SignatureScheme; 3] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
];

/// Epoch-proof keys of a TLS identity ([`ProofKeys`]): signs with the
/// identity's private key and verifies with any public key
/// (SubjectPublicKeyInfo DER) through rustls' ring provider.
///
/// A signature is encoded as the TLS signature scheme (a big-endian `u16`)
/// followed by the signature the scheme defines, so that the verifier
/// knows which algorithm made it; only [`PROOF_SCHEMES`] are accepted.
pub struct CertKeys {
    name: String,
    public_key: Vec<u8>,
    signer: Box<dyn Signer>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for CertKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKeys")
            .field("name", &self.name)
            .field("scheme", &self.signer.scheme())
            .field("fingerprint", &key_fingerprint(&self.public_key))
            .finish_non_exhaustive()
    }
}

impl CertKeys {
    /// The keys of `identity`: its certificate's public key and its private
    /// key. Fails if it has no certificate, if rustls cannot load the key,
    /// if the key type signs none of [`PROOF_SCHEMES`] (RSA), or if the key
    /// does not match the certificate.
    pub fn new(identity: &TlsIdentity) -> Result<Self, CertError> {
        let name = identity.name().to_string();
        let fail = |reason: String| CertError::Keys {
            name: name.clone(),
            reason,
        };
        let (chain, key) = identity.certified().ok_or_else(|| {
            fail("it has no certificate and key (an anonymous dialler signs nothing)".into())
        })?;
        let public_key = chain
            .first()
            .and_then(|c| spki_of(c))
            .ok_or_else(|| fail("the public key of its certificate cannot be read".into()))?;
        let provider = crate::quic::crypto_provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| fail(format!("rustls cannot load its private key: {e}")))?;
        let signer = signing_key.choose_scheme(&PROOF_SCHEMES).ok_or_else(|| {
            fail(format!(
                "its {:?} key signs none of ECDSA P-256, ECDSA P-384 or Ed25519; \
                 reissue the certificate with `vcodr certs` (ECDSA P-256)",
                signing_key.algorithm()
            ))
        })?;
        let keys = CertKeys {
            name: name.clone(),
            public_key,
            signer,
            algorithms: provider.signature_verification_algorithms,
        };
        let probe = b"vcodr: does this key match its certificate?";
        let signature = keys.try_sign(probe).map_err(|e| fail(e.to_string()))?;
        if !keys.verify(&keys.public_key, probe, &signature) {
            return Err(fail(
                "the private key does not match the certificate's public key; \
                 check that <name>.key belongs to <name>.pem"
                    .into(),
            ));
        }
        Ok(keys)
    }

    pub(super) fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let signature = self.signer.sign(message)?;
        let mut out = Vec::with_capacity(2 + signature.len());
        out.extend_from_slice(&u16::from(self.signer.scheme()).to_be_bytes());
        out.extend_from_slice(&signature);
        Ok(out)
    }
}

impl ProofKeys for CertKeys {
    fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// Signs `message`. The provider fails only when the system's random
    /// number generator does (ECDSA): the signature is then empty, verifies
    /// nowhere, and the failure is logged.
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.try_sign(message).unwrap_or_else(|e| {
            tracing::error!(identity = %self.name, error = %e, "cannot sign an epoch proof");
            Vec::new()
        })
    }

    fn verify(&self, public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        // `rustls::crypto::verify_tls13_signature_with_raw_key` does this
        // too, but takes a `DigitallySignedStruct`, which only rustls can
        // build: check through webpki with the provider's algorithms as it does.
        let Some((scheme, signature)) = signature.split_at_checked(2) else {
            return false;
        };
        let scheme = SignatureScheme::from(u16::from_be_bytes([scheme[0], scheme[1]]));
        if signature.is_empty() || !PROOF_SCHEMES.contains(&scheme) {
            return false;
        }
        // As in TLS 1.3: the first algorithm the provider maps the scheme to.
        let Some(algorithm) = self
            .algorithms
            .mapping
            .iter()
            .find(|(s, _)| *s == scheme)
            .and_then(|(_, algorithms)| algorithms.first())
        else {
            return false;
        };
        let spki = SubjectPublicKeyInfoDer::from(public_key);
        let Ok(key) = webpki::RawPublicKeyEntity::try_from(&spki) else {
            return false;
        };
        key.verify_signature(*algorithm, message, signature).is_ok()
    }
}
