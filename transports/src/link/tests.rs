use super::*;

use vcodr_core::CertRole;

#[test]
fn a_peer_id_is_one_pointer_and_shows_its_role_name_and_key() {
    assert_eq!(std::mem::size_of::<PeerId>(), std::mem::size_of::<usize>());
    let peer = PeerId::new(CertRole::Edge, "edge-1", vec![1, 2, 3]);
    assert_eq!(peer.to_string(), "edge-1");
    assert_eq!(peer.as_str(), "edge-1");
    assert_eq!(
        (peer.role(), peer.public_key()),
        (CertRole::Edge, &[1, 2, 3][..])
    );
    let debug = format!("{peer:?}");
    assert!(debug.starts_with("PeerId(edge `edge-1`, key "), "{debug}");
    assert_eq!(peer.clone(), peer);
    assert_ne!(PeerId::new(CertRole::Edge, "edge-1", vec![4]), peer);
    assert_ne!(
        PeerId::new(CertRole::Gateway, "edge-1", vec![1, 2, 3]),
        peer
    );
    let pinned = peer.to_core();
    assert_eq!(
        (pinned.name.as_str(), pinned.public_key),
        ("edge-1", vec![1, 2, 3])
    );
}

#[test]
fn refusals_are_counted_under_their_reason() {
    let stats = ListenerStats::new("vcodr-peer", "127.0.0.1:7443".parse().unwrap());
    let from = "10.0.0.9:5555".parse().unwrap();
    for why in [
        Refused::WrongRole,
        Refused::WrongRole,
        Refused::NoRole,
        Refused::UnknownCa,
        Refused::Expired,
        Refused::NoCertificate,
        Refused::TimedOut,
        Refused::WrongProtocol,
        Refused::OtherTls,
        Refused::NoIdentity,
        Refused::NoHello,
        Refused::VersionMismatch,
    ] {
        stats.refused(why, from, Some("edge-00001"), &"detail");
    }
    assert_eq!(
        stats.snapshot(),
        ListenerCounts {
            accepted: 0,
            refused_handshakes: 10,
            refused_wrong_role: 2,
            refused_no_role: 1,
            refused_unknown_ca: 1,
            refused_no_certificate: 1,
            refused_expired: 1,
            refused_timed_out: 1,
            version_mismatches: 1,
            failed_hellos: 1,
        }
    );
}
