//! The echo link shared by the round-trip bench (`benches/rtt.rs`) and
//! example (`examples/rtt.rs`): server `a` answers every `Ping` with the
//! `Pong` of the same number.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use vcodr_transport::certs::{CertRole, CertificateAuthority};
use vcodr_transport::quic::QuicTransport;
use vcodr_transport::{Incoming, Protocol, Settings, Transport};

#[derive(Serialize, Deserialize)]
pub struct Ping(pub u64);
#[derive(Serialize, Deserialize)]
pub struct Pong(pub u64);

pub struct Rtt;
impl Protocol for Rtt {
    const NAME: &'static str = "vcodr-rtt";
    const ACCEPTS: &'static [CertRole] = &[CertRole::Edge];
    type Request = Ping;
    type Response = Pong;
    type Message = ();
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal address")
}

/// Starts server `a` on loopback; keep the transport alive while it serves.
pub fn echo_server(
    ca: &CertificateAuthority,
    settings: Settings,
) -> Result<(QuicTransport<Rtt>, SocketAddr), Box<dyn std::error::Error>> {
    let server = QuicTransport::<Rtt>::bind(
        loopback(),
        ca.issue_identity("a", CertRole::Server)?,
        settings,
    )?;
    let mut listener = server.listen()?;
    let addr = listener.local_addr();
    tokio::spawn(async move {
        while let Some(mut link) = listener.accept().await {
            tokio::spawn(async move {
                while let Ok(incoming) = link.recv().await {
                    if let Incoming::Request { request, responder } = incoming {
                        let pong = Pong(request.0);
                        // Datagram requests are answered inline; streams from a task
                        // so that a slow requester never holds up the others.
                        if let Err(responder) = responder.respond_datagram(&pong) {
                            tokio::spawn(async move {
                                let _ = responder.respond(&pong).await;
                            });
                        }
                    }
                }
            });
        }
    });
    Ok((server, addr))
}
