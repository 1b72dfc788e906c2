//! What goes into a [`crate::Server`]: its inputs, the time they happen at
//! and the timers whose expiry is an input.

use super::command::Command;
use super::output::PersistSeq;
use crate::msg::*;
use crate::types::*;
use serde::{Deserialize, Serialize};

/// Identifies an operator request so its reply can be matched; chosen by the I/O layer.
pub type RequestId = u64;
/// Identifies an edge request so its reply can be routed; chosen by the I/O layer.
pub type ReplyTo = u64;

/// The time of an input: a monotonic clock for timeouts and lag, and wall-clock
/// time for timestamps shown to operators. Neither has to agree with the peer's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Now {
    pub mono_ms: Millis,
    pub wall_ms: Millis,
}

impl Now {
    /// Both clocks at `ms` (tests and simulations).
    pub fn at(ms: Millis) -> Self {
        Now {
            mono_ms: ms,
            wall_ms: ms,
        }
    }
}

/// Timers of a server. The I/O layer arms them on [`Output::SetTimer`](crate::Output::SetTimer) and
/// feeds [`Input::Timeout`] when one expires; arming an armed timer re-arms it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Timer {
    /// Peer heartbeat, retransmission and failure counting.
    PeerTick,
    /// `standby_grace` ran out: apply the `on_standby_loss` policy.
    StandbyGrace,
}

/// Inputs of a server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// An operator command (admin API).
    Command { req: RequestId, cmd: Command },
    /// A message from a server over the peer link. `from` is the identity
    /// TLS proved for the sender, `link` the link it came in on; the core
    /// decides whether the sender may send it (see [`PeerRefusal`](crate::PeerRefusal)).
    Peer {
        link: PeerLinkId,
        from: PeerIdentity,
        env: PeerEnvelope,
    },
    /// A message from an edge or gateway whose identity `client` and type
    /// `client_type` the transport verified (both from its certificate).
    Edge {
        reply_to: ReplyTo,
        client: ClientId,
        client_type: ClientType,
        msg: EdgeMsg,
    },
    /// A timer expired.
    Timeout(Timer),
    /// Every [`Output::Persist`](crate::Output::Persist) with `seq <= up_to` is durable.
    Persisted { up_to: PersistSeq },
    /// What the storage read for the outstanding
    /// [`Output::ReadSamples`](crate::Output::ReadSamples).
    SamplesRead { chunks: Vec<SampleChunk> },
}
