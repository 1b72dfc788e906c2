//! Frames on the wire: `[version: u8][length: u32 big-endian][postcard payload]`.
//!
//! Decoding never panics, whatever the input: every failure is a [`DecodeError`]
//! that names what was wrong, so the transport can close that one stream with a
//! logged reason and keep serving everyone else.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use thiserror::Error;

/// The frame format version written in the first byte of every frame.
pub const FRAME_VERSION: u8 = 1;
/// Bytes before the payload: version byte and 4-byte length.
pub const FRAME_HEADER_LEN: usize = 5;
/// Default cap on a frame's payload (16 MiB); transports make it a setting.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// Smallest cap a configuration may set: a heartbeat must always fit.
pub const MIN_MAX_FRAME_BYTES: usize = 4 * 1024;

/// Protocol versions spoken by this build. A pair keeps working with its two
/// servers one version apart (SPEC §6), so a build accepts `[CURRENT-1, CURRENT]`.
pub const PROTOCOL_VERSION: u16 = 1;
/// Oldest protocol version this build still speaks.
pub const PROTOCOL_VERSION_MIN: u16 = 1;

/// Why a frame could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("truncated frame: need {needed} bytes, have {have}")]
    Truncated { needed: usize, have: usize },
    #[error("unknown frame version {got} (this build reads version {FRAME_VERSION})")]
    UnknownVersion { got: u8 },
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("{extra} trailing bytes after the payload")]
    TrailingBytes { extra: usize },
}

/// Why a message could not be encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    #[error("message of {len} bytes exceeds the maximum frame of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("cannot serialize message: {0}")]
    Serialize(String),
}

/// Encodes `msg` as one frame, refusing payloads above `max_frame_bytes`.
pub fn encode_frame<T: Serialize>(msg: &T, max_frame_bytes: usize) -> Result<Vec<u8>, EncodeError> {
    let mut out = postcard::to_extend(msg, {
        let mut v = Vec::with_capacity(256);
        v.extend_from_slice(&[FRAME_VERSION, 0, 0, 0, 0]);
        v
    })
    .map_err(|e| EncodeError::Serialize(e.to_string()))?;
    let len = out.len() - FRAME_HEADER_LEN;
    if len > max_frame_bytes {
        return Err(EncodeError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    // `len <= max_frame_bytes`, which configurations keep far below u32::MAX.
    out[1..FRAME_HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Reads a frame header: the payload length that follows, after checking the
/// version byte and the cap. `header` must hold at least [`FRAME_HEADER_LEN`] bytes.
pub fn decode_header(header: &[u8], max_frame_bytes: usize) -> Result<usize, DecodeError> {
    if header.len() < FRAME_HEADER_LEN {
        return Err(DecodeError::Truncated {
            needed: FRAME_HEADER_LEN,
            have: header.len(),
        });
    }
    if header[0] != FRAME_VERSION {
        return Err(DecodeError::UnknownVersion { got: header[0] });
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > max_frame_bytes {
        return Err(DecodeError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    Ok(len)
}

/// Decodes a payload (the bytes after the header).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    let (msg, rest) =
        postcard::take_from_bytes(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { extra: rest.len() });
    }
    Ok(msg)
}

/// Decodes one whole frame from `buf`; returns the message and the bytes used,
/// so a caller can decode frames back to back from one buffer.
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    max_frame_bytes: usize,
) -> Result<(T, usize), DecodeError> {
    let len = decode_header(buf, max_frame_bytes)?;
    let end = FRAME_HEADER_LEN + len;
    if buf.len() < end {
        return Err(DecodeError::Truncated {
            needed: end,
            have: buf.len(),
        });
    }
    Ok((decode_payload(&buf[FRAME_HEADER_LEN..end])?, end))
}

/// What each side says of itself when a link opens.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hello {
    /// Oldest protocol version spoken.
    pub min_version: u16,
    /// Newest protocol version spoken.
    pub max_version: u16,
    /// The software version string, for error messages (e.g. `vcodr 0.1.0`).
    pub software: String,
}

impl Hello {
    /// This build's hello.
    pub fn ours(software: &str) -> Self {
        Hello {
            min_version: PROTOCOL_VERSION_MIN,
            max_version: PROTOCOL_VERSION,
            software: software.to_string(),
        }
    }
}

/// Two ends that share no protocol version.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "incompatible protocol versions: we speak {ours_min}..={ours_max} ({ours_software}), \
     the peer speaks {theirs_min}..={theirs_max} ({theirs_software}); \
     upgrade one side so that their versions are at most one apart"
)]
pub struct VersionMismatch {
    pub ours_min: u16,
    pub ours_max: u16,
    pub ours_software: String,
    pub theirs_min: u16,
    pub theirs_max: u16,
    pub theirs_software: String,
}

/// The version both ends will speak: the highest one they share.
pub fn negotiate(ours: &Hello, theirs: &Hello) -> Result<u16, VersionMismatch> {
    let hi = ours.max_version.min(theirs.max_version);
    let lo = ours.min_version.max(theirs.min_version);
    if hi >= lo {
        Ok(hi)
    } else {
        Err(VersionMismatch {
            ours_min: ours.min_version,
            ours_max: ours.max_version,
            ours_software: ours.software.clone(),
            theirs_min: theirs.min_version,
            theirs_max: theirs.max_version,
            theirs_software: theirs.software.clone(),
        })
    }
}

/// Encodes any serde value as a frame with the default cap; for tests and tools.
pub fn to_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    encode_frame(msg, DEFAULT_MAX_FRAME_BYTES)
}

/// Marker so generic code can say "a wire message".
pub trait WireMessage: Serialize + for<'de> Deserialize<'de> + Send + 'static {}
impl<T: Serialize + for<'de> Deserialize<'de> + Send + 'static> WireMessage for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rejects_unknown_version_and_oversize() {
        let frame = to_frame(&42u32).unwrap();
        assert_eq!(frame[0], FRAME_VERSION);
        let mut bad = frame.clone();
        bad[0] = 9;
        assert_eq!(
            decode_frame::<u32>(&bad, 1024),
            Err(DecodeError::UnknownVersion { got: 9 })
        );
        assert_eq!(
            decode_frame::<u32>(&[1, 0, 16, 0, 0], 1024),
            Err(DecodeError::TooLarge {
                len: 1024 * 1024,
                max: 1024
            })
        );
        assert_eq!(
            decode_frame::<u32>(&frame[..3], 1024),
            Err(DecodeError::Truncated { needed: 5, have: 3 })
        );
        assert_eq!(decode_frame::<u32>(&frame, 1024), Ok((42, frame.len())));
    }

    #[test]
    fn encode_refuses_oversize() {
        let big = vec![7u8; 100];
        assert_eq!(
            encode_frame(&big, 50),
            Err(EncodeError::TooLarge { len: 101, max: 50 })
        );
    }

    #[test]
    fn negotiation_names_both_sides() {
        let ours = Hello::ours("vcodr 0.1.0");
        assert_eq!(negotiate(&ours, &ours), Ok(PROTOCOL_VERSION));
        let newer = Hello {
            min_version: PROTOCOL_VERSION + 2,
            max_version: PROTOCOL_VERSION + 3,
            software: "vcodr 9".into(),
        };
        let err = negotiate(&ours, &newer).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("vcodr 0.1.0") && text.contains("vcodr 9"),
            "{text}"
        );
    }
}
