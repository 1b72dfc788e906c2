//! The roles rule, enforced in the TLS handshake.
//!
//! Every certificate names its role ([`CertRole`], see [`crate::certs`]).
//! A link kind declares which roles may dial its listeners
//! ([`Protocol::ACCEPTS`]) and which role its listeners must have
//! ([`Protocol::SERVES`]). rustls verifies the chain (deployment CA,
//! validity, key usage, and on the dialling side the server's name); then
//! the verifiers here read the leaf's role and refuse any other:
//! - [`RoleClientVerifier`] on the listening side, so an edge certificate is
//!   refused by the peer listener, and a server certificate by the edge
//!   listener, before any protocol message is read;
//! - [`RoleServerVerifier`] on the dialling side, so a certificate of any
//!   role but the serving one (an edge running a listener) never serves.
//!
//! A refusal is a TLS error whose text names the certificate, its role and
//! the accepted roles. The side that refuses sends it to the other in the
//! QUIC close, so both ends report [`Refusal::WrongRole`] (or
//! [`Refusal::NoRole`]) read back from that text ([`refusal_in_text`]).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use rustls::{Error, SignatureScheme};
use vcodr_core::CertRole;

use crate::certs::{identity_of, role_of, role_uri_pattern};
use crate::error::{Refusal, SetupError};
use crate::Protocol;

/// Which side of a link a certificate was presented for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// By the dialler, checked by the listener.
    Dialling,
    /// By the listener, checked by the dialler.
    Listening,
}

/// A certificate that verified but may not take `side` of the link.
pub(crate) struct RoleRefused {
    name: String,
    role: Option<CertRole>,
    protocol: &'static str,
    side: Side,
    accepted: &'static [CertRole],
}

/// `server, edge`: roles as certificates spell them.
pub(crate) fn role_list(roles: &[CertRole]) -> String {
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

// Markers of the text, read back by `refusal_in_text`.
const HAS_ROLE: &str = "has role `";
const ACCEPTED: &str = "(accepted: ";
const NO_ROLE: &str = "carries no vcodr role";

impl fmt::Display for RoleRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, protocol, accepted) = (&self.name, self.protocol, role_list(self.accepted));
        let verb = match self.side {
            Side::Dialling => "dial",
            Side::Listening => "serve",
        };
        match self.role {
            Some(role) => write!(
                f,
                "certificate `{name}` {HAS_ROLE}{role}`, which may not {verb} the `{protocol}` \
                 link {ACCEPTED}{accepted}); use a certificate of an accepted role"
            ),
            None => write!(
                f,
                "certificate `{name}` {NO_ROLE} (no `{}` subject alternative name), so it may \
                 not {verb} the `{protocol}` link {ACCEPTED}{accepted}); reissue it with \
                 `vcodr certs`",
                role_uri_pattern(name)
            ),
        }
    }
}

// rustls shows `CertificateError::Other` with `{:?}`: make that the message.
impl fmt::Debug for RoleRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for RoleRefused {}

/// Refuses `end_entity` (already verified by webpki) unless its role is
/// one of `accepted`.
fn check_role(
    end_entity: &CertificateDer<'_>,
    protocol: &'static str,
    side: Side,
    accepted: &'static [CertRole],
) -> Result<(), Error> {
    let found = role_of(end_entity);
    if let Some((role, _)) = &found {
        if accepted.contains(role) {
            return Ok(());
        }
    }
    let (role, name) = match found {
        Some((role, name)) => (Some(role), name),
        None => (
            None,
            identity_of(end_entity).unwrap_or_else(|| "(no name)".into()),
        ),
    };
    let refused = RoleRefused {
        name,
        role,
        protocol,
        side,
        accepted,
    };
    Err(Error::InvalidCertificate(CertificateError::Other(
        OtherError(Arc::new(refused)),
    )))
}

/// The role refusal a TLS error text carries, if it carries one: the text
/// of a [`RoleRefused`], as rustls reports it locally or as the peer sent
/// it in its close.
pub(crate) fn refusal_in_text(text: &str) -> Option<Refusal> {
    let name = between(text, "certificate `", "`")?.to_string();
    if text.contains(NO_ROLE) {
        return Some(Refusal::NoRole { name });
    }
    let role = CertRole::from_name(between(text, HAS_ROLE, "`")?)?;
    let accepted = between(text, ACCEPTED, ")")?;
    let accepted = if accepted == "none" {
        Vec::new()
    } else {
        accepted
            .split(", ")
            .map(CertRole::from_name)
            .collect::<Option<Vec<_>>>()?
    };
    Some(Refusal::WrongRole {
        name,
        role,
        accepted,
    })
}

/// The text after `start` up to the next `end`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// Checks that a listener of `P` may run with a certificate of `role`.
pub(crate) fn check_listener<P: Protocol>(
    name: &str,
    role: Option<CertRole>,
) -> Result<(), SetupError> {
    let fail = |reason: String| {
        Err(SetupError::Tls {
            name: name.to_string(),
            reason,
        })
    };
    if P::ACCEPTS.is_empty() {
        return fail(format!(
            "protocol `{}` accepts no role (Protocol::ACCEPTS is empty): nobody could dial it",
            P::NAME
        ));
    }
    match role {
        Some(role) if role == P::SERVES => Ok(()),
        Some(role) => fail(format!(
            "its certificate has role `{role}`, but listeners of `{}` must have role `{}` \
             (diallers would refuse it); use a {} certificate",
            P::NAME,
            P::SERVES,
            P::SERVES
        )),
        None => fail(format!(
            "its certificate carries no vcodr role (no `{}` subject alternative name); \
             reissue it with `vcodr certs`",
            role_uri_pattern(name)
        )),
    }
}

/// The listening side's verifier: the deployment CA's chain (webpki), then
/// the dialler's role must be one of [`Protocol::ACCEPTS`].
#[derive(Debug)]
pub(crate) struct RoleClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    protocol: &'static str,
    accepts: &'static [CertRole],
}

impl RoleClientVerifier {
    pub(crate) fn new<P: Protocol>(inner: Arc<dyn ClientCertVerifier>) -> Self {
        RoleClientVerifier {
            inner,
            protocol: P::NAME,
            accepts: P::ACCEPTS,
        }
    }
}

impl ClientCertVerifier for RoleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_role(end_entity, self.protocol, Side::Dialling, self.accepts)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// The dialling side's verifier: the deployment CA's chain and the server
/// name (webpki), then the listener's role must be [`Protocol::SERVES`].
#[derive(Debug)]
pub(crate) struct RoleServerVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    protocol: &'static str,
    serves: &'static [CertRole],
}

impl RoleServerVerifier {
    pub(crate) fn new<P: Protocol>(inner: Arc<dyn ServerCertVerifier>) -> Self {
        RoleServerVerifier {
            inner,
            protocol: P::NAME,
            serves: std::slice::from_ref(&P::SERVES),
        }
    }
}

impl ServerCertVerifier for RoleServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check_role(end_entity, self.protocol, Side::Listening, self.serves)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(
        name: &str,
        role: Option<CertRole>,
        side: Side,
        accepted: &'static [CertRole],
    ) -> String {
        RoleRefused {
            name: name.into(),
            role,
            protocol: "vcodr-peer",
            side,
            accepted,
        }
        .to_string()
    }

    #[test]
    fn refusal_texts_name_everything_and_read_back() {
        let text = refused(
            "edge-1",
            Some(CertRole::Edge),
            Side::Dialling,
            &[CertRole::Server],
        );
        assert_eq!(
            text,
            "certificate `edge-1` has role `edge`, which may not dial the `vcodr-peer` link \
             (accepted: server); use a certificate of an accepted role"
        );
        // As rustls shows it locally, and as the peer's close carries it.
        let error = check_role(
            &CertificateDer::from(&[][..]),
            "vcodr-peer",
            Side::Dialling,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("(no name)"), "{error}");
        let wrapped = format!("invalid peer certificate: Other(OtherError({text}))");
        let expected = Refusal::WrongRole {
            name: "edge-1".into(),
            role: CertRole::Edge,
            accepted: vec![CertRole::Server],
        };
        assert_eq!(refusal_in_text(&wrapped), Some(expected.clone()));
        assert_eq!(refusal_in_text(&text), Some(expected));

        let text = refused(
            "a",
            Some(CertRole::Server),
            Side::Dialling,
            &[CertRole::Edge, CertRole::Gateway],
        );
        assert_eq!(
            refusal_in_text(&text),
            Some(Refusal::WrongRole {
                name: "a".into(),
                role: CertRole::Server,
                accepted: vec![CertRole::Edge, CertRole::Gateway],
            })
        );
        assert!(refused(
            "e",
            Some(CertRole::Edge),
            Side::Listening,
            &[CertRole::Server]
        )
        .contains("may not serve"));

        let text = refused("old-1", None, Side::Dialling, &[CertRole::Server]);
        assert!(text.contains("urn:vcodr:<role>:old-1"), "{text}");
        assert!(text.contains("reissue"), "{text}");
        assert_eq!(
            refusal_in_text(&text),
            Some(Refusal::NoRole {
                name: "old-1".into()
            })
        );
        for other in [
            "",
            "invalid peer certificate: UnknownIssuer",
            "certificate `x` has role `admin`, which may not dial (accepted: server)",
            "certificate `x` has role `edge`, which may not dial (accepted: root)",
        ] {
            assert_eq!(refusal_in_text(other), None, "{other:?}");
        }
    }
}
