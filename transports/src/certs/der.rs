//! Reading a certificate without a full X.509 parser: the few DER elements
//! vcodr needs (common name, subject alternative names, the role URI, the
//! public key) and the key fingerprint operators compare.

use rustls_pki_types::CertificateDer;
use vcodr_core::CertRole;

use super::ROLE_URI_PREFIX;

/// One DER element: tag, contents, and what follows.
pub(super) fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
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

pub(super) const TAG_SEQUENCE: u8 = 0x30;

pub(super) const TAG_EXTENSIONS: u8 = 0xA3;

pub(super) const TAG_OID: u8 = 0x06;

pub(super) const TAG_BOOLEAN: u8 = 0x01;

pub(super) const TAG_OCTET_STRING: u8 = 0x04;

pub(super) const TAG_DNS_NAME: u8 = 0x82;

/// uniformResourceIdentifier \[6\] of a GeneralName.
pub(super) const TAG_URI: u8 = 0x86;

/// 2.5.29.17, subjectAltName.
pub(super) const OID_SUBJECT_ALT_NAME: [u8; 3] = [0x55, 0x1d, 0x11];

pub(super) const TAG_SET: u8 = 0x31;

/// 2.5.4.3, commonName.
pub(super) const OID_COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];

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
pub(super) fn subject_alt_names(cert_der: &[u8]) -> Option<&[u8]> {
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
pub(super) fn general_names(mut names: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
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
