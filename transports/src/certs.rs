//! A deployment CA and its certificates, made with rcgen, stored as PEM.
//!
//! One CA signs every server and client certificate of a deployment. A
//! certificate's identity is its first DNS subject alternative name (also
//! its common name): a server's name (`a`) or an edge's client id
//! (`edge-00001`). Server certificates also name `localhost` and `127.0.0.1`
//! so that loopback tools can reach them, and carry both the server and the
//! client extended key usage (a server dials its peer); client certificates
//! carry the client usage only, so an edge can never pose as a server.
//!
//! Files, as `vcodr certs init --out DIR` writes them ([`init_dir`]):
//! `DIR/ca.pem`, `DIR/ca.key` (keep it offline once every certificate is
//! issued), and `DIR/<name>.pem` + `DIR/<name>.key` per server and edge.
//! Keys are written with mode 0600.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;

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

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// A server: serves edges and its peer, and dials its peer.
    Server,
    /// An edge or gateway: dials servers only.
    Client,
}

/// A certificate and its private key, as PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The identity it carries.
    pub name: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("name", &self.name)
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

    /// Issues a certificate for `name`, valid for [`LEAF_VALIDITY`] from now.
    pub fn issue(&self, name: &str, kind: CertKind) -> Result<IssuedCert, CertError> {
        let now = SystemTime::now();
        self.issue_valid(name, kind, now - CLOCK_SKEW_ALLOWANCE, now + LEAF_VALIDITY)
    }

    /// Issues a certificate valid from `not_before` to `not_after` (tests use
    /// it to make expired certificates).
    pub fn issue_valid(
        &self,
        name: &str,
        kind: CertKind,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, CertError> {
        validate_name(name)?;
        let mut sans = vec![name.to_string()];
        if kind == CertKind::Server {
            for extra in ["localhost", "127.0.0.1"] {
                if extra != name {
                    sans.push(extra.to_string());
                }
            }
        }
        let mut params = CertificateParams::new(sans).map_err(gen_err(name))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match kind {
            CertKind::Server => {
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ]
            }
            CertKind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let key = KeyPair::generate().map_err(gen_err(name))?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(gen_err(name))?;
        Ok(IssuedCert {
            name: name.to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The TLS identity for `issued`, trusting this CA.
    pub fn identity(&self, issued: &IssuedCert) -> Result<TlsIdentity, CertError> {
        TlsIdentity::from_pem(&issued.cert_pem, &issued.key_pem, &self.cert_pem)
    }

    /// Issues a certificate and returns its identity: the one-liner for tests.
    pub fn issue_identity(&self, name: &str, kind: CertKind) -> Result<TlsIdentity, CertError> {
        self.identity(&self.issue(name, kind)?)
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

/// Writes `DIR/<name>.pem` and `DIR/<name>.key` (mode 0600).
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

/// Makes a CA, a certificate for each server and each client, and writes them
/// all to `dir` (created if missing). Refuses to overwrite an existing
/// `ca.pem`, so a deployment's CA is never replaced by accident.
pub fn init_dir(
    dir: &Path,
    servers: &[String],
    clients: &[String],
) -> Result<CertificateAuthority, CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_path = dir.join("ca.pem");
    if ca_path.exists() {
        return Err(CertError::Io {
            path: ca_path,
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a deployment CA exists already; remove the directory to start over",
            ),
        });
    }
    for name in servers.iter().chain(clients) {
        validate_name(name)?;
        if name == "ca" {
            return Err(CertError::InvalidName {
                name: name.clone(),
                reason: "`ca` is the CA's file name",
            });
        }
    }
    let ca = CertificateAuthority::new()?;
    ca.write(dir)?;
    for name in servers {
        write_issued(dir, &ca.issue(name, CertKind::Server)?)?;
    }
    for name in clients {
        write_issued(dir, &ca.issue(name, CertKind::Client)?)?;
    }
    Ok(ca)
}

fn read_text(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
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
    certified: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    roots: Vec<CertificateDer<'static>>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            name: self.name.clone(),
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
    /// Checks that the certificate really names `name`.
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

    /// Builds an identity from DER; the name is the certificate's first DNS name.
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
        Ok(TlsIdentity {
            name,
            certified: Some((chain, key)),
            roots,
        })
    }

    /// A dialler without a certificate, trusting `ca_pem`. Servers refuse it;
    /// tests use it to prove so.
    pub fn anonymous(ca_pem: &str) -> Result<Self, CertError> {
        Ok(TlsIdentity {
            name: String::new(),
            certified: None,
            roots: certs_from_pem(ca_pem, "CA certificate")?,
        })
    }

    /// The identity the certificate carries (empty for an anonymous dialler).
    pub fn name(&self) -> &str {
        &self.name
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

/// The identity a certificate carries: its first DNS subject alternative name.
///
/// Call it on certificates that TLS has already verified (it reads, it does
/// not verify); `None` if the DER holds no DNS name.
pub fn identity_of(cert_der: &[u8]) -> Option<String> {
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
        let (TAG_SEQUENCE, mut names, _) = der_element(contents)? else {
            return None;
        };
        while !names.is_empty() {
            let (tag, name, rest) = der_element(names)?;
            names = rest;
            if tag == TAG_DNS_NAME {
                return String::from_utf8(name.to_vec()).ok();
            }
        }
        return None;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_first_dns_name() {
        let ca = CertificateAuthority::new().unwrap();
        let server = ca.issue_identity("a", CertKind::Server).unwrap();
        assert_eq!(server.name(), "a");
        let edge = ca.issue_identity("edge-00042", CertKind::Client).unwrap();
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
        init_dir(&dir, &["a".into(), "b".into()], &["edge-1".into()]).unwrap();
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
        let err = TlsIdentity::load(&dir, "c").unwrap_err();
        assert!(err.to_string().contains("c.pem"), "{err}");
        // A reloaded CA issues certificates that chain to the same ca.pem.
        let ca = CertificateAuthority::load(&dir).unwrap();
        write_issued(&dir, &ca.issue("edge-2", CertKind::Client).unwrap()).unwrap();
        assert_eq!(TlsIdentity::load(&dir, "edge-2").unwrap().name(), "edge-2");
        assert!(init_dir(&dir, &[], &[]).is_err(), "must not overwrite a CA");
        fs::remove_dir_all(&dir).unwrap();
    }
}
