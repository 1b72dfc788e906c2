use super::*;
use std::fs;
use std::time::SystemTime;

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use vcodr_core::CertRole;
use vcodr_core::ProofKeys;

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
fn issue_pem_with_uris(ca: &CertificateAuthority, name: &str, uris: &[&str]) -> (String, String) {
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
