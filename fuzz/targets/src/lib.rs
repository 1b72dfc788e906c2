//! The bodies of vcodr's fuzz targets: everything an outsider can send,
//! fed to the very functions that serve it.
//!
//! Each target is a plain function `fn(&[u8])` that must return for every
//! input — no panic, no hang, no unbounded allocation; a decode error is an
//! error value. Each also asserts a property of what it decoded (round trips,
//! agreement between two readers of the same bytes). They are run by:
//! - libFuzzer, through the cargo-fuzz crate in `fuzz/` (one
//!   `fuzz_targets/<name>.rs` per entry of [`TARGETS`]), on the stable
//!   toolchain with `RUSTC_BOOTSTRAP=1` (see the README's "Fuzzing");
//! - `cargo test` (this crate's `tests/replay.rs`), which feeds every
//!   committed corpus file and crash regression input of every target to the
//!   same function, so CI keeps every finding fixed.
//!
//! | target | what an outsider sends | read by |
//! |---|---|---|
//! | `frame_peer` | a frame on the peer link's ordered stream | `codec::decode_frame::<PeerEnvelope>` |
//! | `frame_edge` | an edge's request frame | `codec::decode_frame::<EdgeMsg>` |
//! | `frame_server` | a server's reply frame, read by an edge | `codec::decode_frame::<ServerMsg>` |
//! | `hello` | the protocol hello that opens every link | `decode_frame::<Hello>` + `negotiate` |
//! | `datagram` | a QUIC datagram on a live link | `dgram::decode` + whole-frame decoding |
//! | `frame_reader` | a stream's bytes, in chunks | the hub driver's `FrameReader` |
//! | `rpc_request` | the body of `POST /portal/` | `rpc::parse_request` (envelope + `parse_call`) |
//! | `config_toml` | a server's config file | `FileConfig::parse_text` |

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Debug;
use std::path::Path;
use vcodr_core::codec::{
    decode_frame, decode_header, decode_payload, encode_frame, negotiate, DecodeError, Hello,
    DEFAULT_MAX_FRAME_BYTES, FRAME_HEADER_LEN, MIN_MAX_FRAME_BYTES,
};
use vcodr_core::{EdgeMsg, PeerEnvelope, ServerMsg};
use vcodr_server::config::FileConfig;
use vcodr_server::rpc;
use vcodr_transport::fuzzing as transport;

pub mod seeds;

/// A target's body: returns for every input, or the input found a defect.
pub type Target = fn(&[u8]);

/// Every target by name (the name of its `fuzz/fuzz_targets/<name>.rs`, of
/// its corpus `fuzz/corpus/<name>/` and of its regressions
/// `fuzz/regressions/<name>/`).
pub const TARGETS: [(&str, Target); 8] = [
    ("frame_peer", frame_peer),
    ("frame_edge", frame_edge),
    ("frame_server", frame_server),
    ("hello", hello),
    ("datagram", datagram),
    ("frame_reader", frame_reader),
    ("rpc_request", rpc_request),
    ("config_toml", config_toml),
];

/// The caps a frame is read with: production's default and the smallest a
/// configuration may set (so that oversize frames are exercised too).
const CAPS: [usize; 2] = [DEFAULT_MAX_FRAME_BYTES, MIN_MAX_FRAME_BYTES];

/// A decoded message re-encodes within the cap it was read with, and that
/// encoding decodes to the same value and re-encodes to the same bytes
/// (postcard's encoding of a value is canonical even when the input's
/// varints were not).
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(
    msg: &T,
    max_frame_bytes: usize,
) {
    let again = encode_frame(msg, max_frame_bytes)
        .unwrap_or_else(|e| panic!("{msg:?} decoded but does not re-encode: {e}"));
    let (back, used) = decode_frame::<T>(&again, max_frame_bytes)
        .unwrap_or_else(|e| panic!("{msg:?} re-encoded to a frame that does not decode: {e}"));
    assert_eq!(used, again.len(), "the re-encoded frame is read whole");
    assert_eq!(&back, msg, "decode(encode(m)) == m");
    assert_eq!(
        encode_frame(&back, max_frame_bytes).as_ref(),
        Ok(&again),
        "the encoding is stable"
    );
}

/// `data` as one frame of `T` under each cap, then as frames back to back.
fn frames<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    for max in CAPS {
        match decode_frame::<T>(data, max) {
            Ok((msg, used)) => {
                assert!(
                    (FRAME_HEADER_LEN..=data.len()).contains(&used),
                    "used {used} of {}",
                    data.len()
                );
                assert!(used - FRAME_HEADER_LEN <= max, "a frame above the cap");
                round_trip(&msg, max);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    // A buffer of several frames is read one after the other.
    let mut rest = data;
    while let Ok((_, used)) = decode_frame::<T>(rest, DEFAULT_MAX_FRAME_BYTES) {
        assert!(used >= FRAME_HEADER_LEN, "every frame consumes its header");
        rest = &rest[used..];
    }
}

/// A frame on the peer link's ordered stream.
pub fn frame_peer(data: &[u8]) {
    frames::<PeerEnvelope>(data);
}

/// A request frame from an edge or gateway (stream or datagram).
pub fn frame_edge(data: &[u8]) {
    frames::<EdgeMsg>(data);
}

/// A reply frame from a server, as an edge reads it.
pub fn frame_server(data: &[u8]) {
    frames::<ServerMsg>(data);
}

/// The hello that opens every link, and the version negotiation on it:
/// symmetric, and the version chosen is one both sides speak.
pub fn hello(data: &[u8]) {
    frames::<Hello>(data);
    let Ok((theirs, _)) = decode_frame::<Hello>(data, DEFAULT_MAX_FRAME_BYTES) else {
        return;
    };
    let ours = Hello::ours("vcodr fuzz");
    for (a, b) in [(&ours, &theirs), (&theirs, &theirs)] {
        let there = negotiate(a, b);
        let back = negotiate(b, a);
        assert_eq!(there.is_ok(), back.is_ok(), "negotiation is symmetric");
        match there {
            Ok(v) => {
                assert_eq!(back.ok(), Some(v), "both ends choose the same version");
                for h in [a, b] {
                    assert!(
                        (h.min_version..=h.max_version).contains(&v),
                        "{v} is spoken by {h:?}"
                    );
                }
            }
            Err(mismatch) => {
                let text = mismatch.to_string();
                assert!(text.contains(&b.software), "{text}");
            }
        }
    }
}

/// A QUIC datagram on a live link, decoded as both QUIC drivers do: the
/// header, then a request frame (an edge's, as the server reads it; the peer
/// link's `()`) or a response frame (a server's, as the edge reads it).
pub fn datagram(data: &[u8]) {
    let Some((kind, id, frame)) = transport::decode_datagram(data) else {
        assert!(data.len() < transport::DGRAM_HEADER_LEN);
        return;
    };
    assert_eq!(
        transport::encode_datagram(kind, id, frame),
        data,
        "the header round-trips"
    );
    for max in CAPS {
        match kind {
            transport::DGRAM_REQUEST => {
                if let Ok(msg) = transport::decode_whole_frame::<EdgeMsg>(frame, max) {
                    round_trip(&msg, max);
                }
                let _ = transport::decode_whole_frame::<()>(frame, max);
            }
            transport::DGRAM_RESPONSE => {
                if let Ok(payload) = transport::whole_frame_payload(frame, max) {
                    assert_eq!(payload.len() + FRAME_HEADER_LEN, frame.len());
                    assert!(payload.len() <= max, "a payload above the cap");
                    if let Ok(msg) = decode_payload::<ServerMsg>(payload) {
                        round_trip(&msg, max);
                    }
                }
            }
            // REFUSED, TOO_LARGE and unknown kinds carry nothing to read.
            _ => {}
        }
    }
}

/// Frames as a reference reads them from one buffer: the payloads in order,
/// then either the error that stops the stream or `None` (the rest, if any,
/// is an incomplete frame).
fn reference_frames(mut rest: &[u8], max: usize) -> (Vec<Vec<u8>>, Option<DecodeError>) {
    let mut out = Vec::new();
    loop {
        match decode_header(rest, max) {
            Ok(len) if rest.len() >= FRAME_HEADER_LEN + len => {
                out.push(rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len].to_vec());
                rest = &rest[FRAME_HEADER_LEN + len..];
            }
            Ok(_) | Err(DecodeError::Truncated { .. }) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// A stream's bytes through the hub driver's frame reader, in chunks whose
/// size the first input byte chooses (its top bit picks the smallest cap):
/// the reader finds the same frames and the same error however the stream
/// is cut, agrees with the one-buffer reference, and never holds more than
/// one frame. Each payload is then read as what the streams carry.
pub fn frame_reader(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let max = if control & 0x80 != 0 {
        MIN_MAX_FRAME_BYTES
    } else {
        DEFAULT_MAX_FRAME_BYTES
    };
    let chunk = usize::from(control & 0x7f) + 1;
    let expected = reference_frames(stream, max);
    for size in [stream.len().max(1), chunk, 1] {
        let mut reader = transport::FrameReader::default();
        let mut out = Vec::new();
        let mut error = None;
        for piece in stream.chunks(size) {
            let result = reader.push(piece, max, &mut out);
            assert!(
                reader.buffered() <= FRAME_HEADER_LEN + max,
                "the reader holds {} bytes",
                reader.buffered()
            );
            if let Err(e) = result {
                // The stream is closed at its first bad frame.
                error = Some(e);
                break;
            }
        }
        assert_eq!(
            (&out, &error),
            (&expected.0, &expected.1),
            "chunks of {size}"
        );
        if error.is_none() {
            let consumed: usize = out.iter().map(|p| p.len() + FRAME_HEADER_LEN).sum();
            let partial = stream.len() - consumed;
            match reader.at_end() {
                None => assert_eq!(partial, 0, "a partial frame is reported at the end"),
                Some(DecodeError::Truncated { have, .. }) => assert_eq!(have, partial),
                Some(e) => panic!("at the end: {e}"),
            }
        }
    }
    for payload in &expected.0 {
        let _ = decode_payload::<EdgeMsg>(payload);
        let _ = decode_payload::<PeerEnvelope>(payload);
        let _ = decode_payload::<Hello>(payload);
    }
}

/// The body of a `POST /portal/`, parsed as the admin handler parses it,
/// and the response it would get when refused.
pub fn rpc_request(data: &[u8]) {
    let parsed = rpc::parse_request(data);
    assert_eq!(rpc::parse_request(data), parsed, "parsing is deterministic");
    let (id, result) = match parsed {
        Ok(req) => {
            assert!(
                rpc::METHODS.contains(&req.method.as_str()),
                "{} parsed",
                req.method
            );
            let _ = req.call.kind();
            if let rpc::ApiCall::Core(vcodr_core::Command::Put { value, .. }) = &req.call {
                serde_json::from_slice::<Value>(value).expect("a stored value is JSON");
            }
            (req.id, Ok(Value::Null))
        }
        Err(bad) => {
            use rpc::code::*;
            let allowed: &[i64] = match bad.method {
                None => &[PARSE_ERROR, INVALID_REQUEST],
                Some(_) => &[INVALID_PARAMS, METHOD_NOT_FOUND],
            };
            assert!(allowed.contains(&bad.error.code), "{bad:?}");
            (bad.id, Err(bad.error))
        }
    };
    let response = rpc::response(id, result);
    serde_json::to_vec(&response).expect("a response serializes");
}

/// A config file's text, parsed and validated as `vcodr serve` does (all
/// but the checks that read certificate and token files).
pub fn config_toml(data: &[u8]) {
    // `FileConfig::load` reads the file as UTF-8; other bytes never get here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match FileConfig::parse_text(Path::new("/etc/vcodr/a.toml"), text) {
        Ok(config) => {
            config
                .core
                .validate()
                .expect("an accepted file has valid core settings");
            assert!(config.limits.max_frame_bytes >= MIN_MAX_FRAME_BYTES);
            // Checked without overflow checks too (release replay): failure
            // detection fits in milliseconds and within the standby grace.
            let core = &config.core;
            let detect_ms = core
                .peer_heartbeat_interval_ms
                .checked_mul(u64::from(core.peer_failure_threshold))
                .expect("an accepted failure detection time is a number of ms");
            assert!(detect_ms <= core.standby_grace_ms);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
