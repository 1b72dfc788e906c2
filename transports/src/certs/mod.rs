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

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::sign::Signer;
use rustls::SignatureScheme;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, SubjectPublicKeyInfoDer};
use thiserror::Error;
pub use vcodr_core::CertRole;
use vcodr_core::ProofKeys;

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

/// Writes `DIR/<name>.pem` and `DIR/<name>.key` (mode 0600), replacing
/// them if they exist (tests; `vcodr certs` uses [`write_issued_new`]).
pub fn write_issued(dir: &Path, issued: &IssuedCert) -> Result<(), CertError> {
    write_file(
        &dir.join(format!("{}.pem", issued.name)),
        issued.cert_pem.as_bytes(),
        false,
    )?;
    write_file(
        &dir.join(format!("{}.key", issued.name)),
        issued.key_pem.as_bytes(),
        true,
    )
}

/// The files a certificate for `name` lives in: `DIR/<name>.pem`, `DIR/<name>.key`.
pub fn cert_files(dir: &Path, name: &str) -> [PathBuf; 2] {
    [
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    ]
}

/// Refuses when `path` exists: certificates and keys are never overwritten.
fn refuse_existing(path: &Path, what: &str) -> Result<(), CertError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CertError::Io {
            path: path.to_path_buf(),
            source,
        }),
        Ok(_) => Err(CertError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("exists already; {what}"),
            ),
        }),
    }
}

/// Like [`write_issued`], but refuses (before writing anything) if either
/// file exists, and creates them exclusively.
pub fn write_issued_new(dir: &Path, issued: &IssuedCert) -> Result<(), CertError> {
    let [pem, key] = cert_files(dir, &issued.name);
    for path in [&pem, &key] {
        refuse_existing(
            path,
            "certificates are never overwritten: choose another name or remove it yourself",
        )?;
    }
    write_new_file(&pem, issued.cert_pem.as_bytes(), false)?;
    write_new_file(&key, issued.key_pem.as_bytes(), true)
}

/// Makes a CA, a certificate for each server (role `server`) and each edge
/// (role `edge`; `clients`), and writes them all to `dir` (created if
/// missing). Gateways: [`add_clients`] with [`CertRole::Gateway`]. Refuses,
/// before writing anything, if `ca.pem`, `ca.key` or any certificate file
/// exists, so a deployment's CA is never replaced by accident.
pub fn init_dir(
    dir: &Path,
    servers: &[ServerSpec],
    clients: &[String],
) -> Result<CertificateAuthority, CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for path in [dir.join("ca.pem"), dir.join("ca.key")] {
        refuse_existing(
            &path,
            "a deployment CA exists already: add certificates with `vcodr certs add-server`/`add-edges`, or remove the directory to start over",
        )?;
    }
    let mut names = std::collections::BTreeSet::new();
    for spec in servers {
        spec.validate()?;
    }
    for name in servers.iter().map(|s| &s.name).chain(clients) {
        validate_file_name(name)?;
        if !names.insert(name.as_str()) {
            return Err(CertError::InvalidName {
                name: name.clone(),
                reason: "named twice",
            });
        }
        for path in cert_files(dir, name) {
            refuse_existing(
                &path,
                "certificates are never overwritten: use an empty directory",
            )?;
        }
    }
    let ca = CertificateAuthority::new()?;
    write_new_file(&dir.join("ca.pem"), ca.cert_pem.as_bytes(), false)?;
    write_new_file(&dir.join("ca.key"), ca.key.serialize_pem().as_bytes(), true)?;
    for spec in servers {
        write_issued_new(dir, &ca.issue_server(spec)?)?;
    }
    for name in clients {
        write_issued_new(dir, &ca.issue(name, CertRole::Edge)?)?;
    }
    Ok(ca)
}

/// Issues a server certificate for `spec` from the CA in `dir` (`ca.pem`,
/// `ca.key`) and writes it there; refuses if its files exist.
pub fn add_server(dir: &Path, spec: &ServerSpec) -> Result<IssuedCert, CertError> {
    spec.validate()?;
    for path in cert_files(dir, &spec.name) {
        refuse_existing(
            &path,
            "certificates are never overwritten: choose another name or remove it yourself",
        )?;
    }
    let ca = CertificateAuthority::load(dir)?;
    let issued = ca.issue_server(spec)?;
    write_issued_new(dir, &issued)?;
    Ok(issued)
}

/// Client certificates `add_clients` makes in one call at most.
pub const ADD_CLIENTS_MAX: usize = 100_000;

/// Issues `count` client certificates of `role` (edge or gateway) from the
/// CA in `dir` and writes them there, named `<prefix>-<n>` from the number
/// after the highest `<prefix>-<n>.pem` or `.key` already in `dir` (from 1
/// in a fresh one): existing files are never touched. Returns the names.
pub fn add_clients(
    dir: &Path,
    role: CertRole,
    prefix: &str,
    count: usize,
) -> Result<Vec<String>, CertError> {
    if role == CertRole::Server {
        return Err(CertError::InvalidName {
            name: prefix.to_string(),
            reason: "server certificates are made one by one (add_server)",
        });
    }
    if count > ADD_CLIENTS_MAX {
        return Err(CertError::InvalidName {
            name: prefix.to_string(),
            reason: "at most 100000 certificates at once",
        });
    }
    validate_file_name(&format!("{prefix}-1"))?;
    let ca = CertificateAuthority::load(dir)?;
    let entries = fs::read_dir(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut highest = 0u64;
    for entry in entries {
        let entry = entry.map_err(|source| CertError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let file = entry.file_name();
        let file = file.to_string_lossy();
        let stem = file
            .strip_suffix(".pem")
            .or_else(|| file.strip_suffix(".key"));
        if let Some(n) = stem
            .and_then(|s| s.strip_prefix(prefix))
            .and_then(|s| s.strip_prefix('-'))
            .and_then(|n| n.parse::<u64>().ok())
        {
            highest = highest.max(n);
        }
    }
    let mut names = Vec::with_capacity(count);
    for n in (highest + 1..).take(count) {
        let name = format!("{prefix}-{n}");
        write_issued_new(dir, &ca.issue(&name, role)?)?;
        names.push(name);
    }
    Ok(names)
}

fn read_text(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file that must not exist yet (`create_new`).
fn write_new_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

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

fn pem_err(what: &str) -> impl Fn(rustls_pki_types::pem::Error) -> CertError + '_ {
    move |e| CertError::Pem {
        path: PathBuf::from(what),
        reason: e.to_string(),
    }
}

fn certs_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
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

/// One DER element: tag, contents, and what follows.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[count..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const TAG_SEQUENCE: u8 = 0x30;
const TAG_EXTENSIONS: u8 = 0xA3;
const TAG_OID: u8 = 0x06;
const TAG_BOOLEAN: u8 = 0x01;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_DNS_NAME: u8 = 0x82;
/// uniformResourceIdentifier \[6\] of a GeneralName.
const TAG_URI: u8 = 0x86;
/// 2.5.29.17, subjectAltName.
const OID_SUBJECT_ALT_NAME: [u8; 3] = [0x55, 0x1d, 0x11];

const TAG_SET: u8 = 0x31;
/// 2.5.4.3, commonName.
const OID_COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];

/// The common name of a certificate's subject, if any.
pub fn common_name_of(cert_der: &[u8]) -> Option<String> {
    let (TAG_SEQUENCE, certificate, _) = der_element(cert_der)? else {
        return None;
    };
    let (TAG_SEQUENCE, tbs, _) = der_element(certificate)? else {
        return None;
    };
    let (tag, _, mut fields) = der_element(tbs)?;
    if tag == 0xA0 {
        // Skip the serial number after the explicit version.
        (_, _, fields) = der_element(fields)?;
    }
    // Signature algorithm, issuer, validity, then the subject.
    for _ in 0..3 {
        (_, _, fields) = der_element(fields)?;
    }
    let (TAG_SEQUENCE, mut subject, _) = der_element(fields)? else {
        return None;
    };
    while !subject.is_empty() {
        let (TAG_SET, set, rest) = der_element(subject)? else {
            return None;
        };
        subject = rest;
        let (TAG_SEQUENCE, attribute, _) = der_element(set)? else {
            return None;
        };
        let (TAG_OID, oid, value) = der_element(attribute)? else {
            return None;
        };
        if oid == OID_COMMON_NAME {
            let (_, text, _) = der_element(value)?;
            return String::from_utf8(text.to_vec()).ok();
        }
    }
    None
}

/// The GeneralNames of a certificate's subjectAltName extension (the
/// contents of its SEQUENCE), if it has one.
fn subject_alt_names(cert_der: &[u8]) -> Option<&[u8]> {
    let (TAG_SEQUENCE, certificate, _) = der_element(cert_der)? else {
        return None;
    };
    let (TAG_SEQUENCE, tbs, _) = der_element(certificate)? else {
        return None;
    };
    let mut fields = tbs;
    let extensions = loop {
        let (tag, contents, rest) = der_element(fields)?;
        if tag == TAG_EXTENSIONS {
            break contents;
        }
        fields = rest;
    };
    let (TAG_SEQUENCE, mut extensions, _) = der_element(extensions)? else {
        return None;
    };
    while !extensions.is_empty() {
        let (TAG_SEQUENCE, extension, rest) = der_element(extensions)? else {
            return None;
        };
        extensions = rest;
        let (TAG_OID, oid, mut value) = der_element(extension)? else {
            return None;
        };
        if oid != OID_SUBJECT_ALT_NAME {
            continue;
        }
        let (mut tag, mut contents, after) = der_element(value)?;
        if tag == TAG_BOOLEAN {
            value = after;
            (tag, contents, _) = der_element(value)?;
        }
        if tag != TAG_OCTET_STRING {
            return None;
        }
        let (TAG_SEQUENCE, names, _) = der_element(contents)? else {
            return None;
        };
        return Some(names);
    }
    None
}

/// Each GeneralName of `names` as (tag, contents); stops at malformed DER.
fn general_names(mut names: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, name, rest) = der_element(names)?;
        names = rest;
        Some((tag, name))
    })
}

/// The identity a certificate carries: its first DNS subject alternative name.
///
/// Call it on certificates that TLS has already verified (it reads, it does
/// not verify); `None` if the DER holds no DNS name.
pub fn identity_of(cert_der: &[u8]) -> Option<String> {
    general_names(subject_alt_names(cert_der)?)
        .find(|(tag, _)| *tag == TAG_DNS_NAME)
        .and_then(|(_, name)| String::from_utf8(name.to_vec()).ok())
}

/// The role a certificate carries and the identity its role URI names:
/// exactly one `urn:vcodr:<role>:<name>` URI subject alternative name whose
/// name is the certificate's identity ([`identity_of`]). `None` for a
/// certificate without one, with several, with an unknown role, or whose
/// URI names another identity: such a certificate has no role.
///
/// Like [`identity_of`], it reads and does not verify.
pub fn role_of(cert_der: &[u8]) -> Option<(CertRole, String)> {
    let names = subject_alt_names(cert_der)?;
    let mut uris = general_names(names)
        .filter(|(tag, _)| *tag == TAG_URI)
        .filter_map(|(_, uri)| uri.strip_prefix(ROLE_URI_PREFIX.as_bytes()));
    let uri = uris.next()?;
    if uris.next().is_some() {
        return None;
    }
    let uri = std::str::from_utf8(uri).ok()?;
    let (role, name) = uri.split_once(':')?;
    let role = CertRole::from_name(role)?;
    (identity_of(cert_der)? == name).then(|| (role, name.to_string()))
}

/// The SubjectPublicKeyInfo (DER, outer SEQUENCE included) of a
/// certificate: what epoch proofs are verified against and what pairing
/// pins. `None` if the DER is not a certificate webpki can parse.
pub fn spki_of(cert_der: &[u8]) -> Option<Vec<u8>> {
    let der = CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    Some(cert.subject_public_key_info().as_ref().to_vec())
}

/// The fingerprint of a public key (SubjectPublicKeyInfo DER) that
/// operators compare: SHA-256, 64 lower-case hex digits.
pub fn key_fingerprint(spki: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, spki);
    let mut hex = String::with_capacity(64);
    for byte in digest.as_ref() {
        // Writing into a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// How the role URI of `name` looks, for messages.
pub(crate) fn role_uri_pattern(name: &str) -> String {
    format!("{ROLE_URI_PREFIX}<role>:{name}")
}

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

    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_first_dns_name() {
        let ca = CertificateAuthority::new().unwrap();
        let server = ca.issue_identity("a", CertRole::Server).unwrap();
        assert_eq!(server.name(), "a");
        let edge = ca.issue_identity("edge-00042", CertRole::Edge).unwrap();
        assert_eq!(edge.name(), "edge-00042");
        assert_eq!(identity_of(&[0x30, 0x03, 0x01]), None);
        assert_eq!(identity_of(&[]), None);
        let ca_der = ca.cert_der().unwrap();
        let cn = common_name_of(&ca_der).unwrap();
        assert!(cn.starts_with(CA_COMMON_NAME), "{cn}");
        let other = CertificateAuthority::new().unwrap();
        assert_ne!(
            common_name_of(&other.cert_der().unwrap()),
            Some(cn),
            "deployments differ"
        );
    }

    /// A certificate of `ca` for `name` (DNS SAN) with exactly the extra
    /// subject alternative names `uris`: what a tool other than ours, or an
    /// older one, might have issued.
    fn issue_pem_with_uris(
        ca: &CertificateAuthority,
        name: &str,
        uris: &[&str],
    ) -> (String, String) {
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        for uri in uris {
            let uri = Ia5String::try_from(uri.to_string()).unwrap();
            params.subject_alt_names.push(SanType::URI(uri));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn issue_with_uris(ca: &CertificateAuthority, name: &str, uris: &[&str]) -> Vec<u8> {
        let (pem, _) = issue_pem_with_uris(ca, name, uris);
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    fn der_of(issued: &IssuedCert) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()
    }

    #[test]
    fn every_certificate_carries_its_role_and_name() {
        let ca = CertificateAuthority::new().unwrap();
        for (name, role) in [
            ("a", CertRole::Server),
            ("edge-00001", CertRole::Edge),
            ("gw-1", CertRole::Gateway),
        ] {
            let issued = ca.issue(name, role).unwrap();
            assert_eq!(issued.role, role);
            let der = der_of(&issued);
            assert_eq!(role_of(&der), Some((role, name.to_string())));
            assert_eq!(identity_of(&der).as_deref(), Some(name));
            let identity = ca.identity(&issued).unwrap();
            assert_eq!(identity.role(), Some(role));
            assert_eq!(identity.name(), name);
        }
        assert_eq!(role_uri(CertRole::Edge, "e-1"), "urn:vcodr:edge:e-1");
        assert_eq!(role_of(&[]), None);
        assert_eq!(role_of(&[0x30, 0x03, 0x01]), None);
        assert_eq!(TlsIdentity::anonymous(ca.cert_pem()).unwrap().role(), None);
    }

    #[test]
    fn a_certificate_without_one_matching_role_uri_has_no_role() {
        let ca = CertificateAuthority::new().unwrap();
        let cases: [(&str, &[&str]); 6] = [
            ("no role URI at all", &[]),
            ("another identity", &["urn:vcodr:server:a"]),
            ("an unknown role", &["urn:vcodr:admin:edge-1"]),
            ("no name", &["urn:vcodr:edge"]),
            (
                "two roles",
                &["urn:vcodr:edge:edge-1", "urn:vcodr:server:edge-1"],
            ),
            ("the name with a suffix", &["urn:vcodr:edge:edge-1:x"]),
        ];
        for (what, uris) in cases {
            let der = issue_with_uris(&ca, "edge-1", uris);
            assert_eq!(identity_of(&der).as_deref(), Some("edge-1"), "{what}");
            assert_eq!(role_of(&der), None, "{what}");
        }
        // Other URIs beside ours are ignored.
        let der = issue_with_uris(
            &ca,
            "edge-1",
            &["https://example.invalid/", "urn:vcodr:edge:edge-1"],
        );
        assert_eq!(role_of(&der), Some((CertRole::Edge, "edge-1".into())));
    }

    #[test]
    fn spki_is_the_certificates_public_key_and_fingerprints_are_sha256_hex() {
        let ca = CertificateAuthority::new().unwrap();
        let issued = ca.issue("a", CertRole::Server).unwrap();
        let key = KeyPair::from_pem(&issued.key_pem).unwrap();
        let spki = spki_of(&der_of(&issued)).unwrap();
        assert_eq!(spki, rcgen::PublicKeyData::subject_public_key_info(&key));
        assert_eq!(
            ca.identity(&issued).unwrap().public_key(),
            Some(spki.clone())
        );
        let fingerprint = key_fingerprint(&spki);
        assert_eq!(fingerprint.len(), 64);
        assert!(fingerprint
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_eq!(fingerprint, key_fingerprint(&spki), "stable");
        let other = spki_of(&der_of(&ca.issue("a", CertRole::Server).unwrap())).unwrap();
        assert_ne!(key_fingerprint(&other), fingerprint, "same name, new key");
        // SHA-256 of nothing, as every implementation has it.
        assert_eq!(
            key_fingerprint(&[]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(spki_of(&[0x30, 0x00]), None);
    }

    fn identity_with_key(
        ca: &CertificateAuthority,
        name: &str,
        algorithm: &'static rcgen::SignatureAlgorithm,
    ) -> TlsIdentity {
        let now = SystemTime::now();
        let key = KeyPair::generate_for(algorithm).unwrap();
        let issued = ca
            .issue_with_key(name, CertRole::Server, now, now + LEAF_VALIDITY, key, &[])
            .unwrap();
        ca.identity(&issued).unwrap()
    }

    #[test]
    fn proof_signatures_verify_with_the_signers_key_only() {
        let ca = CertificateAuthority::new().unwrap();
        let message = b"vcodr epoch proof v1\0 pair 7 epoch 3".to_vec();
        for algorithm in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let what = format!("{algorithm:?}");
            let identity = identity_with_key(&ca, "a", algorithm);
            let keys = CertKeys::new(&identity).unwrap();
            assert_eq!(Some(keys.public_key().to_vec()), identity.public_key());
            let signature = keys.sign(&message);
            assert!(signature.len() > 2, "{what}");
            assert!(
                keys.verify(keys.public_key(), &message, &signature),
                "{what}"
            );
            // Another certificate of the same CA, even with the same name.
            let other = CertKeys::new(&ca.issue_identity("a", CertRole::Server).unwrap()).unwrap();
            assert!(
                !keys.verify(other.public_key(), &message, &signature),
                "{what}"
            );
            assert!(
                !other.verify(other.public_key(), &message, &signature),
                "{what}"
            );
            // Any flipped bit of the message or of the signature (scheme included).
            for bit in 0..message.len() * 8 {
                let mut flipped = message.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    !keys.verify(keys.public_key(), &flipped, &signature),
                    "{what}: message bit {bit}"
                );
            }
            for bit in 0..signature.len() * 8 {
                let mut flipped = signature.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    !keys.verify(keys.public_key(), &message, &flipped),
                    "{what}: signature bit {bit}"
                );
            }
            // Cut short, or relabelled with another scheme.
            for len in 0..signature.len() {
                assert!(!keys.verify(keys.public_key(), &message, &signature[..len]));
            }
            for scheme in PROOF_SCHEMES {
                let mut relabelled = signature.clone();
                relabelled[..2].copy_from_slice(&u16::from(scheme).to_be_bytes());
                let same = relabelled == signature;
                assert_eq!(
                    keys.verify(keys.public_key(), &message, &relabelled),
                    same,
                    "{what} as {scheme:?}"
                );
            }
        }
    }

    #[test]
    fn proof_verification_refuses_garbage_and_never_panics() {
        let ca = CertificateAuthority::new().unwrap();
        let keys = CertKeys::new(&ca.issue_identity("a", CertRole::Server).unwrap()).unwrap();
        let spki = keys.public_key().to_vec();
        let message = b"claim".to_vec();
        let good = keys.sign(&message);
        assert!(keys.verify(&spki, &message, &good));
        for bad in [
            &[][..],
            &[0x04],
            &[0x04, 0x03],
            &[0xff; 80],
            b"not a signature",
        ] {
            assert!(!keys.verify(&spki, &message, bad), "{bad:?}");
        }
        assert!(!keys.verify(&[], &message, &good));
        assert!(!keys.verify(&[0x30, 0x00], &message, &good));
        // Arbitrary input: random keys, messages and signatures, random
        // signatures behind a valid scheme, and cut or noisy copies of the
        // real key and signature. Nothing verifies, nothing panics.
        let mut rng = crate::rng::SplitMix64::new(0x5eed);
        let bytes = |rng: &mut crate::rng::SplitMix64, max: u64| -> Vec<u8> {
            let len = rng.next_u64() % max;
            (0..len).map(|_| rng.next_u64() as u8).collect()
        };
        for round in 0..3_000u64 {
            let (key, sig) = match round % 4 {
                0 => (bytes(&mut rng, 200), bytes(&mut rng, 200)),
                1 => {
                    let scheme = PROOF_SCHEMES[(round / 4 % 3) as usize];
                    let mut sig = u16::from(scheme).to_be_bytes().to_vec();
                    sig.extend(bytes(&mut rng, 120));
                    (spki.clone(), sig)
                }
                2 => {
                    let cut = (rng.next_u64() as usize) % spki.len();
                    (spki[..cut].to_vec(), good.clone())
                }
                _ => {
                    let mut key = spki.clone();
                    let at = (rng.next_u64() as usize) % key.len();
                    key[at] = key[at].wrapping_add(1 + (rng.next_u64() % 255) as u8);
                    (key, good.clone())
                }
            };
            assert!(!keys.verify(&key, &message, &sig), "round {round}");
        }
    }

    #[test]
    fn proof_keys_need_a_matching_key_that_can_sign() {
        let ca = CertificateAuthority::new().unwrap();
        let anonymous = TlsIdentity::anonymous(ca.cert_pem()).unwrap();
        let err = CertKeys::new(&anonymous).unwrap_err().to_string();
        assert!(err.contains("anonymous"), "{err}");
        let a = ca.issue("a", CertRole::Server).unwrap();
        let b = ca.issue("b", CertRole::Server).unwrap();
        let mismatched = TlsIdentity::from_pem(&a.cert_pem, &b.key_pem, ca.cert_pem()).unwrap();
        let err = CertKeys::new(&mismatched).unwrap_err().to_string();
        assert!(
            err.contains("`a`") && err.contains("does not match"),
            "{err}"
        );
    }

    /// The core's proofs, signed and checked with certificate keys: a
    /// proof verifies against the pinned key of its signer only.
    #[test]
    fn core_epoch_proofs_verify_against_the_pinned_key() {
        let ca = CertificateAuthority::new().unwrap();
        let a = vcodr_core::Keys::new(std::sync::Arc::new(
            CertKeys::new(&ca.issue_identity("a", CertRole::Server).unwrap()).unwrap(),
        ));
        let b = vcodr_core::Keys::new(std::sync::Arc::new(
            CertKeys::new(&ca.issue_identity("b", CertRole::Server).unwrap()).unwrap(),
        ));
        let claim = vcodr_core::EpochClaim {
            pair_id: 7,
            epoch: 3,
            holder: 11,
            holder_name: "b".into(),
            holder_edge_address: "127.0.0.1:7444".into(),
        };
        let proof = b.prove(claim.clone());
        assert!(a.verify(b.public_key(), &proof), "a checks b's proof");
        assert!(!a.verify(a.public_key(), &proof), "not a's own key");
        let mut forged = proof.clone();
        forged.claim.epoch = 4;
        assert!(!a.verify(b.public_key(), &forged), "another epoch");
    }

    /// Whether webpki, as rustls uses it, accepts `der` for `name`.
    fn valid_for(der: &CertificateDer<'_>, name: &str) -> bool {
        let cert = webpki::EndEntityCert::try_from(der).unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        cert.verify_is_valid_for_subject_name(&name).is_ok()
    }

    #[test]
    fn server_certificates_name_the_extra_dns_names_and_addresses() {
        let ca = CertificateAuthority::new().unwrap();
        let spec = ServerSpec {
            name: "a".into(),
            sans: vec![
                "vco-a.example.net".into(),
                "10.99.0.10".into(),
                "fd00::10".into(),
                "LOCALHOST".into(),
            ],
        };
        let issued = ca.issue_server(&spec).unwrap();
        let der = der_of(&issued);
        for name in [
            "a",
            "localhost",
            "127.0.0.1",
            "vco-a.example.net",
            "10.99.0.10",
            "fd00::10",
        ] {
            assert!(valid_for(&der, name), "{name}");
        }
        for name in ["b", "10.99.0.11", "vco-b.example.net", "example.net"] {
            assert!(!valid_for(&der, name), "{name}");
        }
        // The identity and the role are those of a plain server certificate.
        assert_eq!(identity_of(&der).as_deref(), Some("a"));
        assert_eq!(role_of(&der), Some((CertRole::Server, "a".into())));
        let plain = der_of(&ca.issue("a", CertRole::Server).unwrap());
        assert!(valid_for(&plain, "127.0.0.1") && !valid_for(&plain, "10.99.0.10"));
        // Extra names are for servers only, and must be names or addresses.
        let now = SystemTime::now();
        let key = KeyPair::generate().unwrap();
        let e = ca
            .issue_with_key(
                "edge-1",
                CertRole::Edge,
                now,
                now,
                key,
                &["x.example".into()],
            )
            .unwrap_err();
        assert!(e.to_string().contains("only server"), "{e}");
        for bad in ["*.example.net", "a b", "", "10.0.0.1/24", "ex_ample.net"] {
            let spec = ServerSpec {
                name: "a".into(),
                sans: vec![bad.into()],
            };
            let e = ca.issue_server(&spec).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{bad:?}: {e}");
        }
    }

    #[test]
    fn server_specs_parse_one_server_with_names_or_a_list_of_names() {
        let spec = |name: &str, sans: &[&str]| ServerSpec {
            name: name.into(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            ServerSpec::parse("a,b").unwrap(),
            [spec("a", &[]), spec("b", &[])]
        );
        assert_eq!(
            ServerSpec::parse("a=vco-a.example.net,10.0.0.1").unwrap(),
            [spec("a", &["vco-a.example.net", "10.0.0.1"])]
        );
        assert_eq!(
            ServerSpec::parse("b=10.0.0.2").unwrap(),
            [spec("b", &["10.0.0.2"])]
        );
        for (bad, part) in [
            ("a=", "give the names after `=`"),
            ("A", "lower case"),
            ("ca", "CA's file name"),
            ("a=10.0.0.1,b=10.0.0.2", "`b=10.0.0.2`"),
            ("10.0.0.1", "not an IP address"),
        ] {
            let e = ServerSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(part), "{bad:?}: {e}");
        }
    }

    #[test]
    fn certificates_are_added_later_and_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("vcodr-certs-add-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // A stale certificate file stops init before it writes anything.
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("b.key"), "old").unwrap();
        let e = init_dir(&dir, &[ServerSpec::named("a"), ServerSpec::named("b")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("b.key") && e.contains("never overwritten"),
            "{e}"
        );
        assert!(!dir.join("ca.pem").exists() && !dir.join("a.pem").exists());
        fs::remove_file(dir.join("b.key")).unwrap();
        let e = init_dir(&dir, &[ServerSpec::named("a")], &["a".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("named twice"), "{e}");
        init_dir(&dir, &[ServerSpec::named("a")], &["edge-1".into()]).unwrap();
        let ca_pem = fs::read(dir.join("ca.pem")).unwrap();

        // More servers from the same CA; an existing one is refused untouched.
        let c = ServerSpec::parse("c=vco-c.example.net,10.0.0.3").unwrap();
        add_server(&dir, &c[0]).unwrap();
        let loaded = TlsIdentity::load(&dir, "c").unwrap();
        assert_eq!(loaded.role(), Some(CertRole::Server));
        let der = CertificateDer::from_pem_slice(&fs::read(dir.join("c.pem")).unwrap()).unwrap();
        assert!(valid_for(&der, "10.0.0.3") && valid_for(&der, "vco-c.example.net"));
        let a_before = fs::read(dir.join("a.pem")).unwrap();
        let e = add_server(&dir, &ServerSpec::named("a"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.pem") && e.contains("never overwritten"),
            "{e}"
        );
        assert_eq!(fs::read(dir.join("a.pem")).unwrap(), a_before);

        // Edges and gateways numbered after the highest existing one.
        assert_eq!(
            add_clients(&dir, CertRole::Edge, "edge", 2).unwrap(),
            ["edge-2", "edge-3"]
        );
        fs::write(dir.join("edge-9.key"), "stray").unwrap();
        assert_eq!(
            add_clients(&dir, CertRole::Edge, "edge", 1).unwrap(),
            ["edge-10"]
        );
        assert_eq!(fs::read_to_string(dir.join("edge-9.key")).unwrap(), "stray");
        assert_eq!(
            add_clients(&dir, CertRole::Gateway, "gw", 2).unwrap(),
            ["gw-1", "gw-2"]
        );
        assert_eq!(
            TlsIdentity::load(&dir, "gw-2").unwrap().role(),
            Some(CertRole::Gateway)
        );
        assert_eq!(
            TlsIdentity::load(&dir, "edge-10").unwrap().role(),
            Some(CertRole::Edge)
        );
        assert!(add_clients(&dir, CertRole::Server, "x", 1).is_err());
        assert!(add_clients(&dir, CertRole::Edge, "Bad", 1).is_err());
        // Without the CA key nothing is issued, and the error names the file.
        let other = dir.join("no-ca");
        fs::create_dir_all(&other).unwrap();
        let e = add_clients(&other, CertRole::Edge, "edge", 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca.pem"), "{e}");
        // The CA is the same one throughout, and init refuses to replace it.
        assert_eq!(fs::read(dir.join("ca.pem")).unwrap(), ca_pem);
        let e = init_dir(&dir, &[], &[]).unwrap_err().to_string();
        assert!(e.contains("ca.pem") && e.contains("add-server"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("edge-1").is_ok());
        assert!(validate_name("a.b").is_ok());
        for bad in ["", "A", "x y", "127.0.0.1", "-a", "a/b"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn init_dir_writes_and_loads() {
        let dir = std::env::temp_dir().join(format!("vcodr-certs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        init_dir(
            &dir,
            &[ServerSpec::named("a"), ServerSpec::named("b")],
            &["edge-1".into()],
        )
        .unwrap();
        for file in [
            "ca.pem",
            "ca.key",
            "a.pem",
            "a.key",
            "b.pem",
            "b.key",
            "edge-1.pem",
            "edge-1.key",
        ] {
            assert!(dir.join(file).exists(), "{file} missing");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join("a.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(TlsIdentity::load(&dir, "b").unwrap().name(), "b");
        assert_eq!(
            TlsIdentity::load(&dir, "edge-1").unwrap().role(),
            Some(CertRole::Edge)
        );
        let err = TlsIdentity::load(&dir, "c").unwrap_err();
        assert!(err.to_string().contains("c.pem"), "{err}");
        // A reloaded CA issues certificates that chain to the same ca.pem.
        let ca = CertificateAuthority::load(&dir).unwrap();
        write_issued(&dir, &ca.issue("edge-2", CertRole::Edge).unwrap()).unwrap();
        assert_eq!(TlsIdentity::load(&dir, "edge-2").unwrap().name(), "edge-2");
        // A certificate without a role is refused at load, saying what to do.
        let (cert_pem, key_pem) = issue_pem_with_uris(&ca, "edge-3", &[]);
        write_file(&dir.join("edge-3.pem"), cert_pem.as_bytes(), false).unwrap();
        write_file(&dir.join("edge-3.key"), key_pem.as_bytes(), true).unwrap();
        let err = TlsIdentity::load(&dir, "edge-3").unwrap_err().to_string();
        for part in [
            "edge-3.pem",
            "no vcodr role",
            "urn:vcodr:<role>:edge-3",
            "reissue",
        ] {
            assert!(err.contains(part), "{part:?} missing from: {err}");
        }
        assert!(init_dir(&dir, &[], &[]).is_err(), "must not overwrite a CA");
        fs::remove_dir_all(&dir).unwrap();
    }
}
