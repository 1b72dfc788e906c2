//! TLS for both drivers: the rustls configurations of a listener and a
//! dialler of a [`Protocol`] (TLS 1.3 only, ring, mutual certificates, the
//! role verifiers of [`crate::roles`], ALPN [`Protocol::NAME`]), the QUIC
//! configurations built on them, the [`PeerId`] read from a verified chain,
//! and how a failed handshake is read back into a [`Refusal`]: counted by a
//! listener ([`classify_refusal`]), returned to a dialler
//! ([`connect_failure`]).
//!
//! What a certificate must carry is [`crate::certs`]'s; checking a role
//! against a link kind is [`crate::roles`]'s. This module only wires them
//! into rustls and quinn, and reads their errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, VarInt};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use crate::certs::{role_of, spki_of, TlsIdentity};
use crate::error::{ConnectError, Refusal, SetupError};
use crate::link::{ListenerStats, PeerId, Refused};
use crate::roles::{refusal_in_text, RoleClientVerifier, RoleServerVerifier};
use crate::settings::Settings;
use crate::Protocol;

/// The crypto provider of every configuration: ring.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err<E: std::fmt::Display>(name: &str) -> impl Fn(E) -> SetupError + '_ {
    move |e| SetupError::Tls {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

fn root_store(identity: &TlsIdentity) -> Result<RootCertStore, SetupError> {
    let mut roots = RootCertStore::empty();
    for root in identity.roots() {
        roots.add(root.clone()).map_err(tls_err(identity.name()))?;
    }
    Ok(roots)
}

/// The rustls server configuration of a listener of `P`: TLS 1.3 only,
/// client certificates required, verified against the deployment CA and
/// refused unless their role is one of [`Protocol::ACCEPTS`]; ALPN
/// [`Protocol::NAME`]. Refuses an identity whose own role is not
/// [`Protocol::SERVES`].
pub fn server_tls_config<P: Protocol>(
    identity: &TlsIdentity,
) -> Result<rustls::ServerConfig, SetupError> {
    let name = identity.name();
    let provider = crypto_provider();
    let (chain, key) = identity.certified().ok_or_else(|| SetupError::Tls {
        name: name.to_string(),
        reason: "a listener needs a certificate".into(),
    })?;
    crate::roles::check_listener::<P>(name, identity.role())?;
    let webpki = WebPkiClientVerifier::builder_with_provider(
        Arc::new(root_store(identity)?),
        provider.clone(),
    )
    .build()
    .map_err(tls_err(name))?;
    let verifier = Arc::new(RoleClientVerifier::new::<P>(webpki));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err(name))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_err(name))?;
    config.alpn_protocols = vec![P::NAME.as_bytes().to_vec()];
    Ok(config)
}

/// The rustls client configuration of a dialler of `P`: TLS 1.3 only, the
/// server verified against the deployment CA and the expected name and
/// refused unless its role is [`Protocol::SERVES`], our certificate
/// presented (if any), ALPN [`Protocol::NAME`].
pub fn client_tls_config<P: Protocol>(
    identity: &TlsIdentity,
) -> Result<rustls::ClientConfig, SetupError> {
    let name = identity.name();
    let provider = crypto_provider();
    let webpki = WebPkiServerVerifier::builder_with_provider(
        Arc::new(root_store(identity)?),
        provider.clone(),
    )
    .build()
    .map_err(tls_err(name))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err(name))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RoleServerVerifier::new::<P>(webpki)));
    let mut config = match identity.certified() {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(tls_err(name))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![P::NAME.as_bytes().to_vec()];
    Ok(config)
}

/// Ack-eliciting packets a peer may receive before it must send an ACK at
/// once (QUIC ACK frequency extension, asked of the peer; both ends here
/// speak it). A request and its answer each carry the ACK of the other
/// side's packets, so on a busy link ACK-only packets are pure cost: with
/// QUIC's default (an ACK every second packet) the peer link sent about one
/// ACK-only datagram per write in each direction at one writer, each a
/// `sendmsg`, a wake-up and a `recvmmsg`. Below the initial congestion window
/// (10 packets), so a bulk transfer in slow start is never left waiting for
/// an ACK; `max_ack_delay` (25 ms) still bounds how late one comes.
pub(crate) const ACK_ELICITING_THRESHOLD: u32 = 8;

fn transport_config(settings: &Settings) -> Result<Arc<quinn::TransportConfig>, SetupError> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(settings.idle_timeout).map_err(|_| {
        SetupError::Settings(crate::settings::SettingsError {
            field: "idle_timeout",
            problem: "too large for QUIC".into(),
        })
    })?;
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(settings.keep_alive_interval))
        // One extra stream for the hello.
        .max_concurrent_bidi_streams(VarInt::from_u32(
            settings.max_concurrent_requests.saturating_add(1),
        ))
        // The ordered stream; one per direction and connection.
        .max_concurrent_uni_streams(VarInt::from_u32(1))
        // Datagram requests (heartbeats): unread ones beyond this are dropped.
        .datagram_receive_buffer_size(Some(settings.datagram_buffer_bytes));
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    transport.ack_frequency_config(Some(acks));
    Ok(Arc::new(transport))
}

pub(crate) fn quinn_client_config<P: Protocol>(
    identity: &TlsIdentity,
    settings: &Settings,
) -> Result<quinn::ClientConfig, SetupError> {
    let tls = client_tls_config::<P>(identity)?;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| SetupError::Tls {
        name: identity.name().to_string(),
        reason: e.to_string(),
    })?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config(settings)?);
    Ok(config)
}

pub(crate) fn quinn_server_config<P: Protocol>(
    identity: &TlsIdentity,
    settings: &Settings,
) -> Result<quinn::ServerConfig, SetupError> {
    let tls = server_tls_config::<P>(identity)?;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| SetupError::Tls {
        name: identity.name().to_string(),
        reason: e.to_string(),
    })?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config(settings)?);
    Ok(config)
}

/// Why a connection whose certificate verified has no [`PeerId`]: the
/// verifiers refuse such certificates first, so only a bug gets here.
pub(crate) const NO_IDENTITY: &str = "certificate names no identity or no role";

/// The identity proven by a verified certificate chain (as rustls hands it
/// to quinn): the leaf's name, role and public key, and nothing else of it.
pub(crate) fn identity_from(chain: Option<Box<dyn std::any::Any>>) -> Option<PeerId> {
    let chain = chain?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = chain.first()?;
    let (role, name) = role_of(leaf)?;
    let public_key = spki_of(leaf)?;
    Some(PeerId::new(role, name, public_key))
}

const TLS_ALERT_BAD_CERTIFICATE: u8 = 42;
const TLS_ALERT_CERTIFICATE_EXPIRED: u8 = 45;
const TLS_ALERT_CERTIFICATE_UNKNOWN: u8 = 46;
const TLS_ALERT_UNKNOWN_CA: u8 = 48;
const TLS_ALERT_CERTIFICATE_REQUIRED: u8 = 116;
const TLS_ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;

fn tls_alert(code: quinn::TransportErrorCode) -> Option<u8> {
    let code = u64::from(code);
    (0x100..0x200)
        .contains(&code)
        .then_some((code & 0xff) as u8)
}

/// Reads what rustls reported locally into a [`Refusal`].
fn refusal_from_text(text: &str, expected: &str) -> Option<Refusal> {
    if let Some(refusal) = refusal_in_text(text) {
        Some(refusal)
    } else if text.contains("UnknownIssuer") {
        Some(Refusal::UnknownCa)
    } else if text.contains("not valid for name") || text.contains("NotValidForName") {
        Some(Refusal::WrongName {
            expected: expected.to_string(),
        })
    } else if text.contains("expired") || text.contains("Expired") || text.contains("not valid yet")
    {
        Some(Refusal::Expired)
    } else if text.contains("no certificates") {
        Some(Refusal::NoCertificate)
    } else if text.contains("NoApplicationProtocol") || text.contains("application protocol") {
        Some(Refusal::WrongProtocol { expected: "" })
    } else if text.contains("certificate") {
        Some(Refusal::Other(text.to_string()))
    } else {
        None
    }
}

fn refusal_from_alert(alert: u8, reason: &str) -> Refusal {
    // The peer's close carries its TLS error text: a role refusal names
    // the certificate, its role and the accepted roles.
    if let Some(refusal) = refusal_in_text(reason) {
        return refusal;
    }
    match alert {
        TLS_ALERT_UNKNOWN_CA => Refusal::UnknownCa,
        TLS_ALERT_CERTIFICATE_EXPIRED => Refusal::Expired,
        TLS_ALERT_CERTIFICATE_REQUIRED => Refusal::NoCertificate,
        TLS_ALERT_NO_APPLICATION_PROTOCOL => Refusal::WrongProtocol { expected: "" },
        TLS_ALERT_BAD_CERTIFICATE | TLS_ALERT_CERTIFICATE_UNKNOWN => Refusal::Other(format!(
            "the peer rejected our certificate (TLS alert {alert}) {reason}"
        )),
        other => Refusal::Other(format!("TLS alert {other} {reason}")),
    }
}

fn refusal_of(e: &ConnectionError, expected: &str) -> Option<Refusal> {
    match e {
        ConnectionError::TransportError(t) => {
            tls_alert(t.code).and_then(|_| refusal_from_text(&t.reason, expected))
        }
        ConnectionError::ConnectionClosed(c) => tls_alert(c.error_code)
            .map(|alert| refusal_from_alert(alert, &String::from_utf8_lossy(&c.reason))),
        _ => None,
    }
}

/// How a listener counts and logs a handshake that failed with `e`: the
/// reason, the certificate's name if our verifier read it (role
/// refusals), and what to log.
///
/// Only our own TLS errors count under a certificate reason: a refusal the
/// dialler sent us is about *our* certificate (it refused our name, CA or
/// role), and its text is of the dialler's choosing.
pub(crate) fn classify_refusal(e: &ConnectionError) -> (Refused, Option<String>, String) {
    if let ConnectionError::ConnectionClosed(_) = e {
        return (
            Refused::OtherTls,
            None,
            format!("the dialler refused the handshake ({e})"),
        );
    }
    match refusal_of(e, "") {
        Some(refusal) => {
            let (name, detail) = match &refusal {
                // The refusal says it all; rustls' text repeats it.
                Refusal::WrongRole { name, .. } | Refusal::NoRole { name } => {
                    (Some(name.clone()), refusal.to_string())
                }
                _ => (None, format!("{refusal} ({e})")),
            };
            (Refused::of(&refusal), name, detail)
        }
        None => (
            Refused::OtherTls,
            None,
            format!("TLS handshake failed: {e}"),
        ),
    }
}

/// Counts and logs, on a listener, a handshake that failed with `e`
/// ([`classify_refusal`]).
pub(crate) fn count_failed_handshake(
    stats: &ListenerStats,
    remote: SocketAddr,
    e: &ConnectionError,
) {
    let (why, name, detail) = classify_refusal(e);
    stats.refused(why, remote, name.as_deref(), &detail);
}

/// Counts and logs, on a listener, a handshake not done within `timeout`.
pub(crate) fn count_late_handshake(stats: &ListenerStats, remote: SocketAddr, timeout: Duration) {
    let detail = format!("TLS handshake not done within {timeout:?}");
    stats.refused(Refused::TimedOut, remote, None, &detail);
}

/// Counts and logs, on a listener, a connection attempt the QUIC endpoint
/// refused before any handshake (`cause` says why).
pub(crate) fn count_refused_attempt(
    stats: &ListenerStats,
    remote: SocketAddr,
    cause: &dyn std::fmt::Display,
) {
    let detail = format!("connection attempt refused: {cause}");
    stats.refused(Refused::OtherTls, remote, None, &detail);
}

pub(crate) fn connect_failure(
    e: &ConnectionError,
    addr: SocketAddr,
    server_name: &str,
) -> ConnectError {
    let server_name_owned = server_name.to_string();
    match refusal_of(e, server_name) {
        Some(Refusal::WrongProtocol { .. }) => ConnectError::HandshakeRefused {
            addr,
            server_name: server_name_owned,
            refusal: Refusal::WrongProtocol {
                expected: "(see the protocol of this transport)",
            },
        },
        Some(refusal) => ConnectError::HandshakeRefused {
            addr,
            server_name: server_name_owned,
            refusal,
        },
        None => match e {
            ConnectionError::TimedOut => ConnectError::Failed {
                addr,
                server_name: server_name_owned,
                reason: "no answer: the server is down, unreachable or not listening".into(),
            },
            ConnectionError::ApplicationClosed(c) => ConnectError::Failed {
                addr,
                server_name: server_name_owned,
                reason: format!(
                    "closed by the server: {}",
                    String::from_utf8_lossy(&c.reason)
                ),
            },
            other => ConnectError::Failed {
                addr,
                server_name: server_name_owned,
                reason: other.to_string(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::CertificateAuthority;
    use vcodr_core::CertRole;

    use crate::test_protocol::Echo;

    /// A peer that gets packets one after another and has nothing to send
    /// back for a while (the standby between an entry's arrival and its
    /// `fdatasync`) acknowledges them only every [`ACK_ELICITING_THRESHOLD`]
    /// + 1 packets or after `max_ack_delay`; with QUIC's default it sends an
    /// ACK-only datagram every second packet, `ROUNDS / 2` here.
    #[tokio::test]
    async fn a_peer_with_nothing_to_send_acknowledges_only_every_few_packets() {
        const ROUNDS: u64 = 64;
        let ca = CertificateAuthority::new().unwrap();
        let settings = Settings::default();
        let server_id = ca.issue_identity("a", CertRole::Server).unwrap();
        let client_id = ca.issue_identity("b", CertRole::Server).unwrap();
        let server = quinn::Endpoint::server(
            quinn_server_config::<Echo>(&server_id, &settings).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client
            .set_default_client_config(quinn_client_config::<Echo>(&client_id, &settings).unwrap());
        let addr = server.local_addr().unwrap();
        let (dialled, accepted) = tokio::join!(
            async { client.connect(addr, "a").unwrap().await.unwrap() },
            async { server.accept().await.unwrap().await.unwrap() }
        );
        // The listener reads each message and says so in-process, so the
        // dialler sends the next one in a packet of its own.
        let (read_tx, mut read_rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn({
            let conn = accepted.clone();
            async move {
                let mut rx = conn.accept_uni().await.unwrap();
                let mut b = [0u8; 8];
                for _ in 0..ROUNDS {
                    rx.read_exact(&mut b).await.unwrap();
                    read_tx.send(u64::from_le_bytes(b)).unwrap();
                }
            }
        });
        let mut tx = dialled.open_uni().await.unwrap();
        tx.write_all(&0u64.to_le_bytes()).await.unwrap();
        assert_eq!(read_rx.recv().await, Some(0));
        let before = accepted.stats().udp_tx.datagrams;
        for i in 1..ROUNDS {
            tx.write_all(&i.to_le_bytes()).await.unwrap();
            assert_eq!(read_rx.recv().await, Some(i));
        }
        let acks = accepted.stats().udp_tx.datagrams - before;
        // Every ninth packet (7; 11 measured: the first few go before the
        // ACK_FREQUENCY frame arrives), and one for each pause of
        // `max_ack_delay` (25 ms) a loaded machine may put between two
        // rounds; half the default's 32.
        let most = ROUNDS / 4;
        assert!(
            acks <= most,
            "the listener sent {acks} ACK-only datagrams for {} packets, at most {most}",
            ROUNDS - 1
        );
        reader.await.unwrap();
    }

    const ROLE_TEXT: &str = "invalid peer certificate: Other(OtherError(certificate `edge-9` \
        has role `edge`, which may not dial the `vcodr-peer` link (accepted: server); use a \
        certificate of an accepted role))";

    /// Our verifier's refusal names the certificate; the same text in a
    /// dialler's close is the dialler's word about our certificate, and
    /// counts as nothing more.
    #[test]
    fn only_our_own_role_refusals_name_a_certificate() {
        let local = ConnectionError::TransportError(quinn_proto::TransportError {
            code: quinn_proto::TransportErrorCode::crypto(TLS_ALERT_CERTIFICATE_UNKNOWN),
            frame: None,
            reason: ROLE_TEXT.into(),
        });
        let (why, name, detail) = classify_refusal(&local);
        assert_eq!((why, name.as_deref()), (Refused::WrongRole, Some("edge-9")));
        assert!(detail.contains("accepted: server"), "{detail}");

        let remote = ConnectionError::ConnectionClosed(quinn_proto::ConnectionClose {
            error_code: quinn_proto::TransportErrorCode::crypto(TLS_ALERT_CERTIFICATE_UNKNOWN),
            frame_type: None,
            reason: ROLE_TEXT.as_bytes().to_vec().into(),
        });
        let (why, name, _) = classify_refusal(&remote);
        assert_eq!((why, name), (Refused::OtherTls, None));
        // The dialler, refused by a listener, reads the role refusal back.
        assert_eq!(
            refusal_of(&remote, "a"),
            Some(Refusal::WrongRole {
                name: "edge-9".into(),
                role: vcodr_core::CertRole::Edge,
                accepted: vec![vcodr_core::CertRole::Server],
            })
        );
    }
}
