//! Every wire message survives the codec, and no input makes it panic.

use vcodr_core::codec::*;
use vcodr_core::rng::Rng;
use vcodr_core::*;

fn samples() -> (Vec<PeerEnvelope>, Vec<EdgeMsg>, Vec<ServerMsg>) {
    vcodr_core::testing::wire_samples(256)
}

#[test]
fn every_message_round_trips_through_a_frame() {
    let (peer, edge, server) = samples();
    for m in &peer {
        let f = to_frame(m).unwrap();
        assert_eq!(
            decode_frame::<PeerEnvelope>(&f, DEFAULT_MAX_FRAME_BYTES),
            Ok((m.clone(), f.len()))
        );
    }
    for m in &edge {
        let f = to_frame(m).unwrap();
        assert_eq!(
            decode_frame::<EdgeMsg>(&f, DEFAULT_MAX_FRAME_BYTES),
            Ok((m.clone(), f.len()))
        );
    }
    for m in &server {
        let f = to_frame(m).unwrap();
        assert_eq!(
            decode_frame::<ServerMsg>(&f, DEFAULT_MAX_FRAME_BYTES),
            Ok((m.clone(), f.len()))
        );
    }
}

#[test]
fn two_frames_back_to_back_decode_one_after_the_other() {
    let (_, edge, _) = samples();
    let mut buf = to_frame(&edge[0]).unwrap();
    buf.extend(to_frame(&edge[1]).unwrap());
    let (first, used) = decode_frame::<EdgeMsg>(&buf, DEFAULT_MAX_FRAME_BYTES).unwrap();
    let (second, _) = decode_frame::<EdgeMsg>(&buf[used..], DEFAULT_MAX_FRAME_BYTES).unwrap();
    assert_eq!((first, second), (edge[0].clone(), edge[1].clone()));
}

#[test]
fn garbage_and_mutated_frames_never_panic() {
    let seed = std::env::var("VCODR_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xF00D);
    eprintln!("codec fuzz seed {seed}");
    let mut rng = Rng::new(seed);
    let (peer, edge, server) = samples();
    let valid: Vec<Vec<u8>> = peer
        .iter()
        .map(|m| to_frame(m).unwrap())
        .chain(edge.iter().map(|m| to_frame(m).unwrap()))
        .chain(server.iter().map(|m| to_frame(m).unwrap()))
        .collect();
    let mut errors = 0;
    for i in 0..20_000 {
        let mut buf = if i % 2 == 0 {
            let len = rng.range(0, 300) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if len > 0 && rng.range(0, 1) == 0 {
                b[0] = FRAME_VERSION;
            }
            b
        } else {
            valid[rng.range(0, valid.len() as u64 - 1) as usize].clone()
        };
        // Flip, truncate or extend.
        match rng.range(0, 2) {
            0 if !buf.is_empty() => {
                let at = rng.range(0, buf.len() as u64 - 1) as usize;
                buf[at] ^= 1 << rng.range(0, 7);
            }
            1 => buf.truncate(rng.range(0, buf.len() as u64) as usize),
            _ => buf.push(rng.next_u64() as u8),
        }
        let results = [
            decode_frame::<PeerEnvelope>(&buf, 4096).is_err(),
            decode_frame::<EdgeMsg>(&buf, 4096).is_err(),
            decode_frame::<ServerMsg>(&buf, 4096).is_err(),
        ];
        errors += results.iter().filter(|e| **e).count();
    }
    assert!(
        errors > 30_000,
        "most mutations are caught as typed errors ({errors})"
    );
}

#[test]
fn typed_errors_say_what_was_wrong() {
    let f = to_frame(&EdgeMsg::ConfigPull {
        have_epoch: 1,
        have_version: 2,
    })
    .unwrap();
    let e = decode_frame::<EdgeMsg>(&f[..f.len() - 1], 4096).unwrap_err();
    assert_eq!(
        e,
        DecodeError::Truncated {
            needed: f.len(),
            have: f.len() - 1
        }
    );
    let mut bad = f.clone();
    bad[FRAME_HEADER_LEN] = 0xEE; // no such variant
    assert!(matches!(
        decode_frame::<EdgeMsg>(&bad, 4096),
        Err(DecodeError::Malformed(_))
    ));
    let mut long = f.clone();
    long.push(0);
    long[4] += 1; // the length now covers one byte the payload does not use
    assert_eq!(
        decode_frame::<EdgeMsg>(&long, 4096),
        Err(DecodeError::TrailingBytes { extra: 1 })
    );
    assert_eq!(
        DecodeError::UnknownVersion { got: 7 }.to_string(),
        "unknown frame version 7 (this build reads version 1)"
    );
}
