//! The certificate directory `vcodr certs` writes and reads: `ca.pem`,
//! `ca.key`, and `<name>.pem` + `<name>.key` per server and edge; keys with
//! mode 0600, nothing overwritten except by [`write_issued`].

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use vcodr_core::CertRole;

use super::{validate_file_name, CertError, CertificateAuthority, IssuedCert, ServerSpec};

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
pub(super) fn refuse_existing(path: &Path, what: &str) -> Result<(), CertError> {
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

pub(super) fn read_text(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file that must not exist yet (`create_new`).
pub(super) fn write_new_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), CertError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    write_with(options, path, contents, secret)
}

/// Writes a file, replacing what it held.
pub(super) fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), CertError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    write_with(options, path, contents, secret)
}

/// Opens `path` with `options` (owner-only when `secret`), writes
/// `contents` and syncs them.
fn write_with(
    mut options: fs::OpenOptions,
    path: &Path,
    contents: &[u8],
    secret: bool,
) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
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
