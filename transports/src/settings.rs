//! Every limit of a link, in one validated struct.

use std::time::Duration;

use thiserror::Error;
use vcodr_core::codec::{Hello, DEFAULT_MAX_FRAME_BYTES, MIN_MAX_FRAME_BYTES};

/// Largest frame a setting may allow: the codec's length prefix is a `u32`,
/// and a single frame above 1 GiB would be a design error anyway.
pub const MAX_FRAME_BYTES_LIMIT: usize = 1 << 30;
/// Upper bound for every queue length and concurrency limit, so that a typo
/// cannot turn a bounded queue into an effectively unbounded one.
pub const QUEUE_LEN_LIMIT: usize = 1 << 20;
/// Longest timeout any setting accepts (one day).
pub const TIMEOUT_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);

/// Limits and timers of every link a transport opens or accepts.
///
/// Build one with [`Settings::default`] and adjust fields, then let the
/// transport constructors call [`Settings::validate`]; they refuse invalid
/// settings with a [`SettingsError`] that names the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Largest frame payload accepted or sent, in bytes. Checked on read from
    /// the 5-byte header, before any buffer for the payload is allocated.
    pub max_frame_bytes: usize,
    /// Requests the peer may have in flight on one connection at once (QUIC:
    /// concurrent bidirectional streams). A requester beyond it waits.
    pub max_concurrent_requests: u32,
    /// Ordered messages queued for sending on one connection; `send` waits
    /// (backpressure) while the queue is full.
    pub max_pending_sends: usize,
    /// Received messages and requests queued for the application on one
    /// connection; while full, the transport stops reading and flow control
    /// slows the sender down (a datagram request is dropped instead).
    /// Requests that a listener's answerer takes are never queued.
    pub max_pending_incoming: usize,
    /// Authenticated connections waiting in a listener for `accept`.
    pub max_pending_accepts: usize,
    /// Handshakes (TLS + protocol hello) a listener runs at the same time;
    /// further connection attempts wait in the endpoint's bounded queue.
    pub max_concurrent_handshakes: usize,
    /// Time a TLS handshake plus the protocol hello exchange may take.
    pub handshake_timeout: Duration,
    /// Time a request may take from sending to its response.
    pub request_timeout: Duration,
    /// A connection that has received nothing for this long is closed (QUIC
    /// idle timeout). Application heartbeats, not this, detect a lost peer:
    /// quinn never lets the effective value fall below three probe timeouts.
    pub idle_timeout: Duration,
    /// Interval of transport keep-alives; at most half the idle timeout so
    /// that one lost keep-alive does not close an idle but healthy link.
    pub keep_alive_interval: Duration,
    /// UDP receive and send buffer asked of the kernel, in bytes (Linux
    /// clamps it to `net.core.rmem_max`/`wmem_max`). The ~208 KiB default
    /// drops bursts such as a thousand edges reconnecting at once.
    pub udp_buffer_bytes: usize,
    /// Bytes of received datagram requests and responses a connection keeps
    /// unread before QUIC drops the oldest (requests by
    /// [`request_datagram`](crate::LinkSender::request_datagram) are
    /// unreliable by contract, so a drop is a lost request, not a stall).
    pub datagram_buffer_bytes: usize,
    /// What this side says of itself when a link opens (protocol versions
    /// spoken and software version, named in version-mismatch errors).
    pub hello: Hello,
    /// Who drives QUIC connections (see [`QuicDriver`]). Only the QUIC
    /// transport reads it.
    pub driver: QuicDriver,
}

/// How the QUIC transport drives its connections. Both speak the same wire
/// protocol, so either end may use either.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QuicDriver {
    /// quinn's own endpoint: a task per connection plus tasks per link.
    /// Best for a few busy links (the peer link).
    #[default]
    Quinn,
    /// One task per UDP socket drives every connection of that socket
    /// through `quinn-proto` (the hub): no task, channel or lock per
    /// connection. For thousands of mostly idle links (edges).
    Hub,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_concurrent_requests: 256,
            max_pending_sends: 1024,
            max_pending_incoming: 1024,
            max_pending_accepts: 1024,
            max_concurrent_handshakes: 1024,
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(5),
            udp_buffer_bytes: 4 * 1024 * 1024,
            datagram_buffer_bytes: 64 * 1024,
            hello: Hello::ours(concat!("vcodr-transport ", env!("CARGO_PKG_VERSION"))),
            driver: QuicDriver::Quinn,
        }
    }
}

/// A setting that is out of range or inconsistent with another.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid transport setting `{field}`: {problem}")]
pub struct SettingsError {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong and what would be valid.
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> SettingsError {
    SettingsError {
        field,
        problem: problem.into(),
    }
}

fn check_len(field: &'static str, value: usize) -> Result<(), SettingsError> {
    if value == 0 || value > QUEUE_LEN_LIMIT {
        return Err(invalid(
            field,
            format!("{value} is not in 1..={QUEUE_LEN_LIMIT}"),
        ));
    }
    Ok(())
}

fn check_timeout(field: &'static str, value: Duration) -> Result<(), SettingsError> {
    if value < Duration::from_millis(1) || value > TIMEOUT_LIMIT {
        return Err(invalid(
            field,
            format!("{value:?} is not between 1 ms and {TIMEOUT_LIMIT:?}"),
        ));
    }
    Ok(())
}

impl Settings {
    /// Checks every field and the relations between them.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !(MIN_MAX_FRAME_BYTES..=MAX_FRAME_BYTES_LIMIT).contains(&self.max_frame_bytes) {
            return Err(invalid(
                "max_frame_bytes",
                format!(
                    "{} is not in {MIN_MAX_FRAME_BYTES}..={MAX_FRAME_BYTES_LIMIT} (a heartbeat must fit)",
                    self.max_frame_bytes
                ),
            ));
        }
        check_len(
            "max_concurrent_requests",
            self.max_concurrent_requests as usize,
        )?;
        check_len("max_pending_sends", self.max_pending_sends)?;
        check_len("max_pending_incoming", self.max_pending_incoming)?;
        check_len("max_pending_accepts", self.max_pending_accepts)?;
        check_len("max_concurrent_handshakes", self.max_concurrent_handshakes)?;
        check_timeout("handshake_timeout", self.handshake_timeout)?;
        check_timeout("request_timeout", self.request_timeout)?;
        check_timeout("idle_timeout", self.idle_timeout)?;
        check_timeout("keep_alive_interval", self.keep_alive_interval)?;
        if !(64 * 1024..=256 * 1024 * 1024).contains(&self.udp_buffer_bytes) {
            return Err(invalid(
                "udp_buffer_bytes",
                format!(
                    "{} is not between 64 KiB and 256 MiB",
                    self.udp_buffer_bytes
                ),
            ));
        }
        if !(1500..=64 * 1024 * 1024).contains(&self.datagram_buffer_bytes) {
            return Err(invalid(
                "datagram_buffer_bytes",
                format!(
                    "{} is not between 1500 bytes (one datagram) and 64 MiB",
                    self.datagram_buffer_bytes
                ),
            ));
        }
        if self.keep_alive_interval * 2 > self.idle_timeout {
            return Err(invalid(
                "keep_alive_interval",
                format!(
                    "{:?} is more than half of idle_timeout {:?}; one lost keep-alive would close an idle link",
                    self.keep_alive_interval, self.idle_timeout
                ),
            ));
        }
        if self.hello.min_version > self.hello.max_version {
            return Err(invalid(
                "hello",
                format!(
                    "min_version {} is above max_version {}",
                    self.hello.min_version, self.hello.max_version
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(Settings::default().validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        let s = Settings {
            max_frame_bytes: 10,
            ..Settings::default()
        };
        assert_eq!(s.validate().unwrap_err().field, "max_frame_bytes");
        let s = Settings {
            max_pending_sends: 0,
            ..Settings::default()
        };
        assert_eq!(s.validate().unwrap_err().field, "max_pending_sends");
        let s = Settings {
            keep_alive_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(30),
            ..Settings::default()
        };
        let err = s.validate().unwrap_err();
        assert_eq!(err.field, "keep_alive_interval");
        assert!(err.to_string().contains("half of idle_timeout"), "{err}");
        let s = Settings {
            request_timeout: Duration::ZERO,
            ..Settings::default()
        };
        assert_eq!(s.validate().unwrap_err().field, "request_timeout");
        let s = Settings {
            datagram_buffer_bytes: 100,
            ..Settings::default()
        };
        assert_eq!(s.validate().unwrap_err().field, "datagram_buffer_bytes");
        let mut s = Settings::default();
        s.hello.min_version = 5;
        s.hello.max_version = 4;
        assert_eq!(s.validate().unwrap_err().field, "hello");
    }
}
