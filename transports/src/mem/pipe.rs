//! One link of the in-memory network: its two ends, the packets between
//! them (each delayed, reordered, duplicated or dropped as the link's
//! [`Faults`](super::Faults) say, drawn from its own generator) and the pipe task that
//! delivers them; the [`MemLink`] and [`MemResponder`] a connection holds.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tracing::warn;

use crate::error::CloseReason;
use crate::link::{
    decode_whole_frame, incoming_channel, whole_frame_payload, Answerer, Backend, Connection,
    Incoming, IncomingTx, LinkInfo, PendingRequests, RequestFailure, Responder, ResponderInner,
};
use crate::rng::SplitMix64;
use crate::settings::Settings;
use crate::Protocol;

use super::MemNetwork;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Client,
    Server,
}

#[derive(Clone, Debug)]
pub(super) enum Cause {
    App(String),
    Protocol(String),
    Partition,
    Crash,
}

/// The state both ends of one mem link share: whether and why it closed.
pub(super) struct MemLinkShared {
    pub(super) closed: watch::Sender<Option<(Side, Cause)>>,
}

impl MemLinkShared {
    pub(super) fn new() -> Self {
        MemLinkShared {
            closed: watch::channel(None).0,
        }
    }

    /// Closes the link; false if it was closed already.
    pub(super) fn close(&self, by: Side, cause: Cause) -> bool {
        self.closed.send_if_modified(|state| {
            if state.is_some() {
                return false;
            }
            *state = Some((by, cause.clone()));
            true
        })
    }

    pub(super) fn reason_for(&self, side: Side) -> Option<CloseReason> {
        let state = self.closed.borrow();
        let (by, cause) = state.as_ref()?;
        let ours = *by == side;
        Some(match cause {
            Cause::App(reason) if ours => CloseReason::Local(reason.clone()),
            Cause::App(reason) => CloseReason::Peer(reason.clone()),
            Cause::Protocol(reason) if ours => CloseReason::Protocol(reason.clone()),
            Cause::Protocol(reason) => CloseReason::Peer(format!("protocol violation: {reason}")),
            Cause::Partition => CloseReason::TimedOut,
            Cause::Crash if ours => CloseReason::Local("this host crashed".into()),
            Cause::Crash => CloseReason::Reset,
        })
    }

    pub(super) async fn closed(&self, side: Side) -> CloseReason {
        let mut rx = self.closed.subscribe();
        // The sender lives in `self`, so `wait_for` cannot see it dropped.
        let _ = rx.wait_for(Option::is_some).await;
        self.reason_for(side).unwrap_or(CloseReason::Reset)
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    Message,
    Request(u64),
    Response(u64),
    Refused(u64),
}

#[derive(Clone, Debug)]
pub(super) struct Packet {
    pub(super) kind: Kind,
    pub(super) frame: Vec<u8>,
}

/// Requests awaiting a response (or a refusal, as text).
pub(super) type Pending = Arc<PendingRequests<Result<Vec<u8>, String>>>;

/// The mem half of a [`Backend`]: one side of a link.
pub(crate) struct MemLink {
    shared: Arc<MemLinkShared>,
    side: Side,
    outgoing: mpsc::Sender<Packet>,
    pending: Pending,
    request_slots: Semaphore,
    max_frame_bytes: usize,
    request_timeout: Duration,
}

/// Removes a request's slot when the request ends, however it ends.
impl MemLink {
    pub(super) fn reason(&self) -> CloseReason {
        self.shared
            .reason_for(self.side)
            .unwrap_or(CloseReason::Reset)
    }

    pub(crate) async fn send_frame(&self, frame: Vec<u8>) -> Result<(), CloseReason> {
        if let Some(reason) = self.shared.reason_for(self.side) {
            return Err(reason);
        }
        self.outgoing
            .send(Packet {
                kind: Kind::Message,
                frame,
            })
            .await
            .map_err(|_| self.reason())
    }

    pub(crate) async fn request(&self, frame: Vec<u8>) -> Result<Vec<u8>, RequestFailure> {
        let exchange = async {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = self
                .request_slots
                .acquire()
                .await
                .map_err(|_| RequestFailure::Closed(self.reason()))?;
            if let Some(reason) = self.shared.reason_for(self.side) {
                return Err(RequestFailure::Closed(reason));
            }
            let (slot, rx) = self.pending.register();
            self.outgoing
                .send(Packet {
                    kind: Kind::Request(slot.id),
                    frame,
                })
                .await
                .map_err(|_| RequestFailure::Closed(self.reason()))?;
            let answer = tokio::select! {
                biased;
                answer = rx => answer,
                reason = self.shared.closed(self.side) => return Err(RequestFailure::Closed(reason)),
            };
            match answer {
                Ok(Ok(frame)) => whole_frame_payload(&frame, self.max_frame_bytes)
                    .map(<[u8]>::to_vec)
                    .map_err(RequestFailure::Bad),
                Ok(Err(reason)) => Err(RequestFailure::NoResponse(reason)),
                Err(_) => Err(RequestFailure::Closed(self.reason())),
            }
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(RequestFailure::TimedOut),
        }
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub(crate) fn close(&self, reason: &str) {
        self.shared.close(self.side, Cause::App(reason.to_string()));
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.shared.reason_for(self.side)
    }

    pub(crate) async fn closed(&self) -> CloseReason {
        self.shared.closed(self.side).await
    }
}

/// Answers one request over a mem link.
pub(crate) struct MemResponder {
    id: u64,
    outgoing: mpsc::Sender<Packet>,
}

impl MemResponder {
    pub(crate) async fn respond(self, frame: Vec<u8>) -> Result<(), String> {
        self.outgoing
            .send(Packet {
                kind: Kind::Response(self.id),
                frame,
            })
            .await
            .map_err(|_| "the link closed".to_string())
    }

    pub(crate) fn refuse(self) {
        // Best effort, like a QUIC stream reset: if the queue is full or the
        // link closed, the requester times out instead.
        let _ = self.outgoing.try_send(Packet {
            kind: Kind::Refused(self.id),
            frame: Vec::new(),
        });
    }
}

/// Where a pipe delivers: the receiving side's queues.
pub(super) struct Dest<P: Protocol> {
    pub(super) incoming: IncomingTx<P>,
    pub(super) pending: Pending,
    /// The receiving side's own outgoing queue, for its responders.
    pub(super) outgoing: mpsc::Sender<Packet>,
    pub(super) info: Arc<LinkInfo>,
    pub(super) side: Side,
    pub(super) max_frame_bytes: usize,
}

pub(super) struct EndParts<P: Protocol> {
    pub(super) dest: Dest<P>,
    pub(super) outgoing: mpsc::Receiver<Packet>,
}

pub(super) struct End {
    pub(super) outgoing: (mpsc::Sender<Packet>, mpsc::Receiver<Packet>),
    pub(super) pending: Pending,
}

impl End {
    pub(super) fn new(settings: &Settings) -> Self {
        End {
            outgoing: mpsc::channel(settings.max_pending_sends),
            pending: Arc::default(),
        }
    }

    pub(super) fn connection<P: Protocol>(
        self,
        info: LinkInfo,
        shared: &Arc<MemLinkShared>,
        side: Side,
        settings: &Settings,
        max_frame_bytes: usize,
        answerer: Option<Answerer<P>>,
    ) -> (Connection<P>, EndParts<P>) {
        let (incoming_tx, incoming_rx) = incoming_channel(settings.max_pending_incoming, answerer);
        let (out_tx, out_rx) = self.outgoing;
        let link = MemLink {
            shared: shared.clone(),
            side,
            outgoing: out_tx.clone(),
            pending: self.pending.clone(),
            request_slots: Semaphore::new(settings.max_concurrent_requests as usize),
            max_frame_bytes,
            request_timeout: settings.request_timeout,
        };
        let connection = Connection::new(info, max_frame_bytes, Backend::Mem(link), incoming_rx);
        let dest = Dest {
            incoming: incoming_tx,
            pending: self.pending,
            outgoing: out_tx,
            info: connection.info_arc(),
            side,
            max_frame_bytes,
        };
        (
            connection,
            EndParts {
                dest,
                outgoing: out_rx,
            },
        )
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Due {
    pub(super) at: Instant,
    pub(super) seq: u64,
}

/// Carries one direction of one link through the faults.
pub(super) struct Pipe<P: Protocol> {
    pub(super) net: MemNetwork,
    pub(super) from: SocketAddr,
    pub(super) to: SocketAddr,
    pub(super) rng: SplitMix64,
    pub(super) capacity: usize,
    pub(super) dest: Dest<P>,
    pub(super) shared: Arc<MemLinkShared>,
}

impl<P: Protocol> Pipe<P> {
    pub(super) async fn run(mut self, mut input: mpsc::Receiver<Packet>) {
        let mut due: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
        let mut packets: HashMap<u64, Packet> = HashMap::new();
        let mut seq = 0u64;
        let mut fifo_at = Instant::now();
        let mut input_open = true;
        let mut closed = self.shared.closed.subscribe();
        let mut topology = self.net.inner.topology.subscribe();
        loop {
            if closed.borrow_and_update().is_some() || (!input_open && due.is_empty()) {
                return;
            }
            topology.borrow_and_update();
            let blocked = self.net.state().blocked(self.from, self.to);
            let next_at = if blocked {
                None
            } else {
                due.peek().map(|d| d.0.at)
            };
            tokio::select! {
                biased;
                _ = closed.changed() => {}
                _ = topology.changed(), if blocked => {}
                _ = tokio::time::sleep_until(next_at.unwrap_or_else(Instant::now)), if next_at.is_some() => {
                    if let Some(Reverse(next)) = due.pop() {
                        if let Some(packet) = packets.remove(&next.seq) {
                            if !self.deliver(packet, &mut closed).await {
                                return;
                            }
                        }
                    }
                }
                packet = input.recv(), if input_open && due.len() < self.capacity => match packet {
                    None => input_open = false,
                    Some(packet) => self.schedule(packet, &mut due, &mut packets, &mut seq, &mut fifo_at),
                },
            }
        }
    }

    pub(super) fn schedule(
        &mut self,
        packet: Packet,
        due: &mut BinaryHeap<Reverse<Due>>,
        packets: &mut HashMap<u64, Packet>,
        seq: &mut u64,
        fifo_at: &mut Instant,
    ) {
        let faults = self.net.state().faults(self.from, self.to);
        // A fixed number of draws per frame, so that enabling one fault does
        // not shift the choices of the others.
        let dropped = self.rng.chance(faults.drop);
        let duplicated = self.rng.chance(faults.duplicate);
        let now = Instant::now();
        let mut copies = Vec::with_capacity(2);
        for _ in 0..2 {
            let delay = self
                .rng
                .duration_between(faults.delay_min, faults.delay_max);
            let reordered = self.rng.chance(faults.reorder);
            let hold = self.rng.duration_between(
                Duration::from_millis(1),
                faults.delay_max.max(Duration::from_millis(1)) * 2,
            );
            copies.push((delay, reordered, hold));
        }
        let copy_count = if dropped {
            0
        } else if duplicated {
            2
        } else {
            1
        };
        {
            let mut state = self.net.state();
            if dropped {
                state.counts.dropped += 1;
            }
            if duplicated && !dropped {
                state.counts.duplicated += 1;
            }
        }
        for (delay, reordered, hold) in copies.into_iter().take(copy_count) {
            let at = if reordered {
                self.net.state().counts.reordered += 1;
                now + delay + hold
            } else {
                let at = (now + delay).max(*fifo_at);
                *fifo_at = at;
                at
            };
            packets.insert(*seq, packet.clone());
            due.push(Reverse(Due { at, seq: *seq }));
            *seq += 1;
        }
    }

    /// Hands `packet` over; false once the link is closed.
    pub(super) async fn deliver(
        &mut self,
        packet: Packet,
        closed: &mut watch::Receiver<Option<(Side, Cause)>>,
    ) -> bool {
        self.net.state().counts.delivered += 1;
        let dest = &self.dest;
        let incoming = match packet.kind {
            Kind::Response(id) => {
                dest.pending.answer(id, Ok(packet.frame));
                return true;
            }
            Kind::Refused(id) => {
                dest.pending
                    .answer(id, Err("the peer dropped the request unanswered".into()));
                return true;
            }
            Kind::Message => {
                match decode_whole_frame::<P::Message>(&packet.frame, dest.max_frame_bytes) {
                    Ok(message) => Incoming::Message(message),
                    Err(e) => {
                        warn!(link = %dest.info, reason = %e, "bad frame on the ordered stream; closing this connection only");
                        self.shared.close(
                            dest.side,
                            Cause::Protocol(format!("bad frame on the ordered stream: {e}")),
                        );
                        return false;
                    }
                }
            }
            Kind::Request(id) => {
                match decode_whole_frame::<P::Request>(&packet.frame, dest.max_frame_bytes) {
                    Ok(request) => Incoming::Request {
                        request,
                        responder: Responder::new(
                            dest.info.clone(),
                            dest.max_frame_bytes,
                            ResponderInner::Mem(MemResponder {
                                id,
                                outgoing: dest.outgoing.clone(),
                            }),
                        ),
                    },
                    Err(e) => {
                        warn!(link = %dest.info, reason = %e, "rejected a request frame; the link stays up");
                        let _ = dest.outgoing.try_send(Packet {
                            kind: Kind::Refused(id),
                            frame: Vec::new(),
                        });
                        return true;
                    }
                }
            }
        };
        tokio::select! {
            biased;
            _ = closed.wait_for(Option::is_some) => false,
            sent = dest.incoming.send(incoming) => sent.is_ok(),
        }
    }
}
