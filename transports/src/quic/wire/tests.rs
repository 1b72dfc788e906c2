use super::dgram::{self, Datagram};
use super::FrameReader;
use crate::link::{LinkInfo, PeerId};
use vcodr_core::codec::{encode_frame, DecodeError, FRAME_HEADER_LEN};
use vcodr_core::CertRole;

const MAX: usize = 1024;

fn frame(text: &str) -> Vec<u8> {
    encode_frame(&text, MAX).expect("encodes")
}

fn payload(text: &str) -> Vec<u8> {
    frame(text)[FRAME_HEADER_LEN..].to_vec()
}

#[test]
fn frames_come_out_whole_however_the_stream_is_cut() {
    let stream: Vec<u8> = [frame("hello"), frame(""), frame("ordered stream")].concat();
    let expected = vec![payload("hello"), payload(""), payload("ordered stream")];
    for cut in 0..=stream.len() {
        let mut reader = FrameReader::default();
        let mut out = Vec::new();
        reader.push(&stream[..cut], MAX, &mut out).unwrap();
        reader.push(&stream[cut..], MAX, &mut out).unwrap();
        assert_eq!(out, expected, "cut at {cut}");
        assert_eq!(reader.at_end(), None, "cut at {cut}");
    }
    // One byte at a time.
    let mut reader = FrameReader::default();
    let mut out = Vec::new();
    for b in &stream {
        reader.push(std::slice::from_ref(b), MAX, &mut out).unwrap();
    }
    assert_eq!(out, expected);
}

#[test]
fn a_lying_header_is_refused_before_its_payload_is_kept() {
    let mut reader = FrameReader::default();
    let mut out = Vec::new();
    let mut header = frame("x")[..FRAME_HEADER_LEN].to_vec();
    header[1..5].copy_from_slice(&(MAX as u32 + 1).to_be_bytes());
    let err = reader
        .push(&[header, vec![0; 64]].concat(), MAX, &mut out)
        .unwrap_err();
    assert_eq!(
        err,
        DecodeError::TooLarge {
            len: MAX + 1,
            max: MAX
        }
    );
    assert_eq!(reader.buf.len(), FRAME_HEADER_LEN);
    assert!(out.is_empty());
}

#[test]
fn a_stream_ending_mid_frame_is_truncated() {
    let whole = frame("cut short");
    let mut reader = FrameReader::default();
    let mut out = Vec::new();
    reader.push(&whole[..3], MAX, &mut out).unwrap();
    assert_eq!(
        reader.at_end(),
        Some(DecodeError::Truncated {
            needed: FRAME_HEADER_LEN,
            have: 3
        })
    );
    reader.push(&whole[3..8], MAX, &mut out).unwrap();
    assert_eq!(
        reader.at_end(),
        Some(DecodeError::Truncated {
            needed: whole.len(),
            have: 8
        })
    );
    assert!(out.is_empty());
}

fn link() -> LinkInfo {
    LinkInfo {
        peer: PeerId::new(CertRole::Edge, "edge-1", vec![1, 2, 3]),
        addr: "127.0.0.1:9".parse().expect("literal address"),
        version: 1,
        protocol: "vcodr-wire-test",
    }
}

/// Every kind of datagram reads back as what both drivers act on; what
/// is to be dropped reads as `None`.
#[test]
fn datagrams_read_as_both_drivers_act_on_them() {
    let link = link();
    let read = |d: &[u8]| dgram::read::<String>(d, &link, MAX).map(|d| format!("{d:?}"));
    let request = dgram::request(7, &frame("ping"));
    assert_eq!(
        dgram::read::<String>(&request, &link, MAX),
        Some(Datagram::Request {
            id: 7,
            request: "ping".to_string()
        })
    );
    let response = dgram::response(8, &frame("pong"), Some(1200));
    let pong = payload("pong");
    assert_eq!(
        dgram::read::<String>(&response, &link, MAX),
        Some(Datagram::Response {
            id: 8,
            payload: &pong
        })
    );
    // A response that does not fit asks for a stream instead.
    let big = dgram::response(9, &frame("pong"), Some(dgram::HEADER_LEN + 2));
    assert_eq!(read(&big), Some("TooLarge { id: 9 }".into()));
    assert_eq!(read(&dgram::refusal(10)), Some("Refused { id: 10 }".into()));
    // A bad request frame is answered with a refusal; the rest is dropped.
    let bad = dgram::encode(dgram::REQUEST, 11, b"not a frame");
    assert_eq!(read(&bad), Some("BadRequest { id: 11 }".into()));
    assert_eq!(read(&[dgram::REQUEST; dgram::HEADER_LEN - 1]), None);
    assert_eq!(read(&dgram::encode(dgram::RESPONSE, 12, b"x")), None);
    assert_eq!(read(&dgram::encode(99, 13, &frame("x"))), None);
}

#[test]
fn a_frame_fits_in_a_datagram_with_its_header() {
    assert!(dgram::fits(Some(dgram::HEADER_LEN + 10), 10));
    assert!(!dgram::fits(Some(dgram::HEADER_LEN + 9), 10));
    assert!(!dgram::fits(None, 0));
}
