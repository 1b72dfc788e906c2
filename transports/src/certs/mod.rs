//! A deployment CA and its certificates, made with rcgen, stored as PEM.
//!
//! One CA signs every server, edge and gateway certificate of a deployment.
//! Each certificate carries, signed together in one extension:
//! - its **identity**, its first DNS subject alternative name (also its
//!   common name): a server's name (`a`) or an edge's client id
//!   (`edge-00001`) ([`identity_of`]);
//! - its **role** ([`CertRole`]: `server`, `edge` or `gateway`), as a URI
//!   subject alternative name `urn:vcodr:<role>:<name>` naming the same
//!   identity, e.g. `urn:vcodr:edge:edge-00001` ([`role_of`]). A
//!   certificate without exactly one such URI, or whose URI names another
//!   identity, has no role: every vcodr link refuses it in the TLS handshake
//!   (certificates made before roles existed must be reissued).
//!
//! Server certificates also name `localhost` and `127.0.0.1` so that
//! loopback tools can reach them, and any further DNS names and IP
//! addresses the operator gives ([`ServerSpec`]: `a=vco-a.example.net,10.0.0.1`),
//! by which `vcodr ctl` and browsers reach the admin API on other hosts. They
//! carry both the server and the client extended key usage (a server dials
//! its peer); edge and gateway certificates carry the client usage only.
//!
//! # Why a role URI, not an intermediate CA per role
//! - One CA file to distribute and trust (`ca.pem`) and one key to keep
//!   offline. With a CA per role, every listener would have to trust
//!   exactly the right intermediates, and rustls' verifier accepts any chain
//!   up to a trusted root: a mistake in a trust store would silently let
//!   edges onto the peer port.
//! - The role is checked by our own verifier once rustls has verified the
//!   chain, in one place, against what the link kind declares
//!   ([`Protocol::ACCEPTS`](crate::Protocol::ACCEPTS)).
//! - Name and role are signed together in the same extension of the same
//!   certificate, so a holder cannot combine one certificate's name with
//!   another's role. (Extended key usages cannot say it: edges and gateways
//!   share the client usage, and server certificates carry it too.)
//!
//! # Keys
//! [`spki_of`] reads a certificate's public key, which pairing pins;
//! [`key_fingerprint`] is the SHA-256 rendering operators compare.
//! [`CertKeys`] signs epoch proofs with an identity's private key and
//! verifies them against a pinned peer's public key.
//!
//! Files, as `vcodr certs init --out DIR` writes them ([`init_dir`]):
//! `DIR/ca.pem`, `DIR/ca.key` (keep it offline once every certificate is
//! issued), and `DIR/<name>.pem` + `DIR/<name>.key` per server and edge.
//! Keys are written with mode 0600. More certificates come later from the
//! same CA ([`add_server`], [`add_clients`]). No function here overwrites an
//! existing file, except [`write_issued`], which says so.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use thiserror::Error;
pub use vcodr_core::CertRole;

mod der;
mod files;
mod identity;
mod keys;

#[cfg(test)]
mod tests;

pub(crate) use der::role_uri_pattern;
pub use der::{common_name_of, identity_of, key_fingerprint, role_of, spki_of};
pub use files::{
    add_clients, add_server, cert_files, init_dir, write_issued, write_issued_new, ADD_CLIENTS_MAX,
};
use files::{read_text, write_file};
pub use identity::TlsIdentity;
pub use keys::{CertKeys, PROOF_SCHEMES};

/// Start of every deployment CA's common name; a random suffix tells
/// deployments apart, so that a certificate of another deployment is
/// reported as "unknown CA" rather than as a bad signature.
pub const CA_COMMON_NAME: &str = "vcodr deployment CA";

/// Validity of a new CA certificate.
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 60 * 60);

/// Validity of a new server or client certificate.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 60 * 60);

/// Backdating of `not_before`, so that a peer whose clock is a little behind
/// accepts a fresh certificate.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60 * 60);

/// What went wrong making, writing or reading certificates.
#[derive(Debug, Error)]
pub enum CertError {
    /// The name cannot be an identity (it must be a lower-case DNS name).
    #[error("`{name}` cannot be a certificate identity: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// rcgen failed.
    #[error("making the certificate for `{name}`: {reason}")]
    Generate {
        /// Whose certificate.
        name: String,
        /// What rcgen said.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The identity's key cannot sign epoch proofs ([`CertKeys`]).
    #[error("the key of `{name}` cannot sign epoch proofs: {reason}")]
    Keys {
        /// Whose key.
        name: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// Checks that `name` can be a certificate identity: a lower-case DNS name,
/// as a client will check it when dialling.
pub fn validate_name(name: &str) -> Result<(), CertError> {
    let bad = |reason| {
        Err(CertError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 253 {
        return bad("it must be 1 to 253 characters long");
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return bad("it must be lower case (identities are compared exactly)");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return bad("only a-z, 0-9, '-' and '.' are allowed");
    }
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(_)) => Ok(()),
        Ok(_) => bad("it must be a DNS name, not an IP address"),
        Err(_) => bad("it is not a valid DNS name"),
    }
}

/// Extra subject alternative names one server certificate may carry.
pub const SERVER_SANS_MAX: usize = 32;

/// Checks a subject alternative name a server is reached by: an IP address
/// or a DNS name (any case; a `*.` wildcard is refused).
pub fn validate_san(san: &str) -> Result<(), CertError> {
    let bad = |reason| {
        Err(CertError::InvalidName {
            name: san.to_string(),
            reason,
        })
    };
    if san.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if san.contains('*') {
        return bad("wildcard names are not issued: name each host");
    }
    if san.is_empty() || san.len() > 253 {
        return bad("a DNS name must be 1 to 253 characters long");
    }
    if !san
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return bad("not an IP address, and a DNS name holds only a-z, 0-9, '-' and '.'");
    }
    match ServerName::try_from(san) {
        Ok(ServerName::DnsName(_)) => Ok(()),
        _ => bad("not an IP address nor a valid DNS name"),
    }
}

/// A server certificate to make: the server's name (its identity, `name =`
/// in its config) and the further DNS names and IP addresses clients reach
/// it by (beside `localhost` and `127.0.0.1`, which every server
/// certificate names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    /// The identity.
    pub name: String,
    /// Extra DNS names and IP addresses, in the order given.
    pub sans: Vec<String>,
}

impl ServerSpec {
    /// A server reached by its name only (and loopback).
    pub fn named(name: &str) -> Self {
        ServerSpec {
            name: name.to_string(),
            sans: Vec::new(),
        }
    }

    /// Parses one `--servers` value: either `NAME=SAN[,SAN…]` (one server
    /// and the names it is reached by: `a=vco-a.example.net,10.0.0.1`) or
    /// `NAME[,NAME…]` (servers reached by their names: `a,b`).
    pub fn parse(arg: &str) -> Result<Vec<ServerSpec>, CertError> {
        let specs = match arg.split_once('=') {
            Some((name, sans)) => {
                let sans: Vec<String> = sans
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                if sans.is_empty() {
                    return Err(CertError::InvalidName {
                        name: arg.to_string(),
                        reason: "give the names after `=` (NAME=SAN[,SAN…]) or drop the `=`",
                    });
                }
                vec![ServerSpec {
                    name: name.trim().to_string(),
                    sans,
                }]
            }
            None => arg
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(ServerSpec::named)
                .collect(),
        };
        for spec in &specs {
            spec.validate()?;
        }
        Ok(specs)
    }

    /// Checks the name and every extra name.
    pub fn validate(&self) -> Result<(), CertError> {
        validate_file_name(&self.name)?;
        if self.sans.len() > SERVER_SANS_MAX {
            return Err(CertError::InvalidName {
                name: self.name.clone(),
                reason: "too many extra names (at most 32 per server)",
            });
        }
        self.sans.iter().try_for_each(|s| validate_san(s))
    }
}

/// A valid identity that is not the CA's own file name.
fn validate_file_name(name: &str) -> Result<(), CertError> {
    validate_name(name)?;
    if name == "ca" {
        return Err(CertError::InvalidName {
            name: name.to_string(),
            reason: "`ca` is the CA's file name",
        });
    }
    Ok(())
}

/// Start of the role URI every certificate carries: `urn:vcodr:<role>:<name>`.
pub const ROLE_URI_PREFIX: &str = "urn:vcodr:";

/// The role URI of a certificate of `role` for `name`.
pub fn role_uri(role: CertRole, name: &str) -> String {
    format!("{ROLE_URI_PREFIX}{}:{name}", role.as_str())
}

/// A certificate and its private key, as PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The identity it carries.
    pub name: String,
    /// The role it carries.
    pub role: CertRole,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The deployment CA: signs every certificate of one deployment.
pub struct CertificateAuthority {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

fn gen_err(name: &str) -> impl Fn(rcgen::Error) -> CertError + '_ {
    move |e| CertError::Generate {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl CertificateAuthority {
    /// Makes a new CA (ECDSA P-256) valid for [`CA_VALIDITY`].
    pub fn new() -> Result<Self, CertError> {
        let key = KeyPair::generate().map_err(gen_err(CA_COMMON_NAME))?;
        let suffix = crate::rng::SplitMix64::new(crate::rng::SplitMix64::entropy_seed()).next_u64();
        let mut params = ca_params(&format!("{CA_COMMON_NAME} {suffix:016x}"));
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW_ALLOWANCE).into();
        params.not_after = (now + CA_VALIDITY).into();
        let cert = params.self_signed(&key).map_err(gen_err(CA_COMMON_NAME))?;
        Ok(CertificateAuthority {
            params,
            key,
            cert_pem: cert.pem(),
        })
    }

    /// Loads a CA written by [`CertificateAuthority::write`] (`ca.pem`,
    /// `ca.key`), to issue more certificates.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let cert_pem = read_text(&cert_path)?;
        let key_pem = read_text(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CertError::Pem {
            path: key_path,
            reason: e.to_string(),
        })?;
        let der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| CertError::Pem {
                path: cert_path.clone(),
                reason: e.to_string(),
            })?;
        let common_name = common_name_of(&der).ok_or_else(|| CertError::Pem {
            path: cert_path,
            reason: "the CA certificate has no common name".into(),
        })?;
        Ok(CertificateAuthority {
            params: ca_params(&common_name),
            key,
            cert_pem,
        })
    }

    /// The CA certificate, PEM: what every peer trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, CertError> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(|e| CertError::Pem {
            path: PathBuf::from("ca.pem"),
            reason: e.to_string(),
        })
    }

    /// Issues a certificate of `role` for `name`, valid for
    /// [`LEAF_VALIDITY`] from now.
    pub fn issue(&self, name: &str, role: CertRole) -> Result<IssuedCert, CertError> {
        let now = SystemTime::now();
        self.issue_valid(name, role, now - CLOCK_SKEW_ALLOWANCE, now + LEAF_VALIDITY)
    }

    /// Issues a server certificate for `spec`: its name, `localhost`,
    /// `127.0.0.1` and the extra DNS names and IP addresses it lists.
    pub fn issue_server(&self, spec: &ServerSpec) -> Result<IssuedCert, CertError> {
        spec.validate()?;
        let now = SystemTime::now();
        let key = KeyPair::generate().map_err(gen_err(&spec.name))?;
        self.issue_with_key(
            &spec.name,
            CertRole::Server,
            now - CLOCK_SKEW_ALLOWANCE,
            now + LEAF_VALIDITY,
            key,
            &spec.sans,
        )
    }

    /// Issues a certificate valid from `not_before` to `not_after` (tests use
    /// it to make expired certificates).
    pub fn issue_valid(
        &self,
        name: &str,
        role: CertRole,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, CertError> {
        let key = KeyPair::generate().map_err(gen_err(name))?;
        self.issue_with_key(name, role, not_before, not_after, key, &[])
    }

    /// `extra_sans` (servers only) come after the name, which stays the
    /// first DNS name: the identity ([`identity_of`]).
    fn issue_with_key(
        &self,
        name: &str,
        role: CertRole,
        not_before: SystemTime,
        not_after: SystemTime,
        key: KeyPair,
        extra_sans: &[String],
    ) -> Result<IssuedCert, CertError> {
        validate_name(name)?;
        if role != CertRole::Server && !extra_sans.is_empty() {
            return Err(CertError::InvalidName {
                name: name.to_string(),
                reason: "only server certificates carry extra names",
            });
        }
        let mut sans = vec![name.to_string()];
        if role == CertRole::Server {
            for extra in ["localhost", "127.0.0.1"]
                .into_iter()
                .chain(extra_sans.iter().map(String::as_str))
            {
                validate_san(extra)?;
                // DNS names compare without case; keep one of each.
                if !sans.iter().any(|s| s.eq_ignore_ascii_case(extra)) {
                    sans.push(extra.to_string());
                }
            }
        }
        // rcgen makes an IP address SAN of what parses as one, a DNS name of the rest.
        let mut params = CertificateParams::new(sans).map_err(gen_err(name))?;
        let uri = Ia5String::try_from(role_uri(role, name)).map_err(gen_err(name))?;
        params.subject_alt_names.push(SanType::URI(uri));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match role {
            CertRole::Server => {
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ]
            }
            CertRole::Edge | CertRole::Gateway => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(gen_err(name))?;
        Ok(IssuedCert {
            name: name.to_string(),
            role,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The TLS identity for `issued`, trusting this CA.
    pub fn identity(&self, issued: &IssuedCert) -> Result<TlsIdentity, CertError> {
        TlsIdentity::from_pem(&issued.cert_pem, &issued.key_pem, &self.cert_pem)
    }

    /// Issues a certificate and returns its identity: the one-liner for tests.
    pub fn issue_identity(&self, name: &str, role: CertRole) -> Result<TlsIdentity, CertError> {
        self.identity(&self.issue(name, role)?)
    }

    /// Writes `DIR/ca.pem` and `DIR/ca.key` (mode 0600).
    pub fn write(&self, dir: &Path) -> Result<(), CertError> {
        write_file(&dir.join("ca.pem"), self.cert_pem.as_bytes(), false)?;
        write_file(
            &dir.join("ca.key"),
            self.key.serialize_pem().as_bytes(),
            true,
        )
    }
}
