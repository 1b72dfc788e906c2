//! [`TlsIdentity`]: what one side presents and trusts in TLS, loaded from
//! PEM files or issued in memory.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use vcodr_core::CertRole;

use super::der::{identity_of, role_of, role_uri_pattern, spki_of};
use super::files::read_text;
use super::{validate_name, CertError};

/// What one side presents and trusts in TLS: its certificate chain and key
/// (absent for an anonymous dialler, which only tests refusals), and the
/// deployment CA it trusts.
pub struct TlsIdentity {
    name: String,
    role: Option<CertRole>,
    certified: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    roots: Vec<CertificateDer<'static>>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            name: self.name.clone(),
            role: self.role,
            certified: self
                .certified
                .as_ref()
                .map(|(chain, key)| (chain.clone(), key.clone_key())),
            roots: self.roots.clone(),
        }
    }
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("has_certificate", &self.certified.is_some())
            .finish_non_exhaustive()
    }
}

pub(super) fn pem_err(what: &str) -> impl Fn(rustls_pki_types::pem::Error) -> CertError + '_ {
    move |e| CertError::Pem {
        path: PathBuf::from(what),
        reason: e.to_string(),
    }
}

pub(super) fn certs_from_pem(
    pem: &str,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(what))?;
    if certs.is_empty() {
        return Err(CertError::Pem {
            path: PathBuf::from(what),
            reason: "no CERTIFICATE in it".into(),
        });
    }
    Ok(certs)
}

impl TlsIdentity {
    /// Loads `DIR/<name>.pem`, `DIR/<name>.key` and the CA `DIR/ca.pem`.
    /// Checks that the certificate really names `name` and carries a role.
    pub fn load(dir: &Path, name: &str) -> Result<Self, CertError> {
        validate_name(name)?;
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        let ca_path = dir.join("ca.pem");
        let with_path = |path: &Path, e: CertError| match e {
            CertError::Pem { reason, .. } => CertError::Pem {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        };
        let chain = certs_from_pem(&read_text(&cert_path)?, "cert")
            .map_err(|e| with_path(&cert_path, e))?;
        let roots =
            certs_from_pem(&read_text(&ca_path)?, "ca").map_err(|e| with_path(&ca_path, e))?;
        let key = PrivateKeyDer::from_pem_slice(read_text(&key_path)?.as_bytes()).map_err(|e| {
            CertError::Pem {
                path: key_path.clone(),
                reason: e.to_string(),
            }
        })?;
        let identity =
            TlsIdentity::from_parts(chain, key, roots).map_err(|e| with_path(&cert_path, e))?;
        if identity.name != name {
            return Err(CertError::Pem {
                path: cert_path,
                reason: format!("the certificate names `{}`, not `{name}`", identity.name),
            });
        }
        if identity.role.is_none() {
            return Err(CertError::Pem {
                path: cert_path,
                reason: format!(
                    "the certificate carries no vcodr role (no `{}` subject alternative \
                     name): every vcodr link would refuse it; reissue it with `vcodr certs`",
                    role_uri_pattern(name)
                ),
            });
        }
        Ok(identity)
    }

    /// Builds an identity from PEM text: certificate (chain), key, CA.
    pub fn from_pem(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Self, CertError> {
        let chain = certs_from_pem(cert_pem, "certificate")?;
        let roots = certs_from_pem(ca_pem, "CA certificate")?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem_err("private key"))?;
        TlsIdentity::from_parts(chain, key, roots)
    }

    /// Builds an identity from DER; the name is the certificate's first DNS
    /// name, the role its role URI ([`role_of`]). A certificate without a
    /// role is taken (its [`role`](Self::role) is `None`), but every vcodr
    /// listener refuses it and it cannot listen: tests use it to prove so.
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, CertError> {
        let name = chain
            .first()
            .and_then(|c| identity_of(c))
            .ok_or_else(|| CertError::Pem {
                path: PathBuf::from("certificate"),
                reason: "the certificate names no identity (no DNS subject alternative name)"
                    .into(),
            })?;
        let role = chain.first().and_then(|c| role_of(c)).map(|(role, _)| role);
        Ok(TlsIdentity {
            name,
            role,
            certified: Some((chain, key)),
            roots,
        })
    }

    /// A dialler without a certificate, trusting `ca_pem`. Servers refuse it;
    /// tests use it to prove so.
    pub fn anonymous(ca_pem: &str) -> Result<Self, CertError> {
        Ok(TlsIdentity {
            name: String::new(),
            role: None,
            certified: None,
            roots: certs_from_pem(ca_pem, "CA certificate")?,
        })
    }

    /// The identity the certificate carries (empty for an anonymous dialler).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The role the certificate carries; `None` for an anonymous dialler or
    /// a certificate without a valid role URI.
    pub fn role(&self) -> Option<CertRole> {
        self.role
    }

    /// The SubjectPublicKeyInfo (DER) of the certificate; `None` for an
    /// anonymous dialler.
    pub fn public_key(&self) -> Option<Vec<u8>> {
        spki_of(self.certified.as_ref()?.0.first()?)
    }

    pub(crate) fn certified(
        &self,
    ) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        self.certified
            .as_ref()
            .map(|(chain, key)| (chain.clone(), key.clone_key()))
    }

    pub(crate) fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
}
