//! The hostile actor `x`: a node that holds a valid certificate of the
//! deployment CA and uses it to lie (SPEC §6 trust boundary).
//!
//! - On the **peer link** TLS proves the identity of a third server, `x`
//!   ([`hostile_identity`]); it signs with its own keys ([`hostile_keys`]) and
//!   never with `a`'s or `b`'s.
//! - On **edge links** TLS proves an edge identity of its own
//!   ([`HOSTILE_CLIENT`], [`ClientType::Edge`]).
//!
//! It knows everything public — pair ids, epochs, uuids, addresses, log
//! positions — and reads them from the current state when it forges. Each
//! [`Forgery`] is one message of a finite menu, built from the state by
//! [`forge`] and delivered at once to its target (see the README for why at
//! once is enough). A forgery that changes nothing in any server (refused at
//! admission, the usual fate of every peer forgery) costs no budget, exactly as
//! a refused operator command.

use crate::nodes::*;
use std::sync::Arc;
use vcodr_core::*;

/// Peer-link id of `x`'s connections (link ids 0 and 1 are the servers).
pub const HOSTILE_LINK: PeerLinkId = 2;
/// `reply_to` of `x`'s edge connections (edges use their index, below it).
pub const HOSTILE_REPLY: ReplyTo = 200;
/// The client id in `x`'s edge certificate.
pub const HOSTILE_CLIENT: &str = "ex";
/// Key and value of the configuration write `x` slips into a forged `Append`:
/// no operator ever writes it, so finding it anywhere is a violation.
pub const FORGED_KEY: &str = "kx";
pub const FORGED_VALUE: &[u8] = b"vx";
/// Payload of the monitoring sample `x` slips into a forged `SamplesBatch`.
pub const FORGED_SAMPLE: &[u8] = b"forged-sample";
/// The pairing token `x` guesses.
pub const GUESSED_TOKEN: u128 = 0x5EED_6E55;

/// The identity TLS proves for `x` on the peer link.
pub fn hostile_identity() -> PeerIdentity {
    vcodr_core::testing::identity("x")
}

/// The only keys `x` can sign with.
pub fn hostile_keys() -> Keys {
    vcodr_core::testing::TestKeys::keys("x")
}

/// `x` as a server would describe itself.
pub fn hostile_info() -> ServerInfo {
    ServerInfo {
        uuid: 0xEE,
        name: "x".into(),
        peer_address: "x:7443".into(),
        edge_address: "x:7444".into(),
        admin_address: "x:8443".into(),
    }
}

/// Which link a forgery is sent on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Peer,
    Edge,
}

/// One forged message. Peer-link forgeries to server `s` carry, in the
/// envelope, `from` = the *other* server's uuid and `pair_id` = `s`'s pair
/// (what a server would believe if it took the envelope's word); `epoch` is
/// `s`'s epoch, or, where the message claims a new epoch, `next`: the next
/// epoch `s` has not heard of, `max(epoch, highest seen) + 1` (which is
/// `epoch + 1` except on a zombie).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Forgery {
    /// `AppendAck { durable_index: u64::MAX, ok: true }`: "the standby has everything".
    AppendAck,
    /// `NewEpoch` at `next` naming `x` as the holder, no proof.
    NewEpochUnproven,
    /// `NewEpoch` at `next` naming the other server, but with `x`'s edge
    /// address (where the zombie would redirect edges), proof signed by `x`.
    NewEpochSignedByX,
    /// `DemoteRequest { new_epoch: epoch + 1 }`: "hand over, I am promoting".
    DemoteRequest,
    /// `Unpair`: "the peer removed DR".
    Unpair,
    /// `Append` of one entry, a `Put` of [`FORGED_KEY`], right after `s`'s
    /// last entry, committed at once.
    Append,
    /// `Rejoin` from "a zombie of the epoch before `s`'s": the other server's
    /// uuid and name, but `x`'s peer and edge addresses (where `s` would then
    /// replicate to).
    Rejoin,
    /// `Pair` with a guessed token, `x` as the active.
    Pair,
    /// `PairAccepted` with a guessed token, `x` as the standby.
    PairAccepted,
    /// `Refused` echoing a guessed token.
    Refused,
    /// `Join` (transitionToStandby with a blob) with a guessed token, `x` as the standby.
    Join,
    /// `SamplesPull` with no range at the highest index: "the standby's
    /// sample copy is complete" (would end an active's STANDBY_SYNC).
    SamplesDone,
    /// `SamplesPull` of every sample of edge `e0`: makes an active read its storage.
    SamplesPull,
    /// `SamplesBatch` answering "the standby lacks e0's samples 0..": one
    /// forged sample ([`FORGED_SAMPLE`]) to store.
    SamplesBatch,
    /// Edge heartbeat whose view claims the other server is STANDALONE at
    /// `next` of `s`'s pair; no proof.
    ViewUnproven,
    /// Edge heartbeat whose view claims `x`'s address is STANDALONE at
    /// `next`; proof naming `x` as the holder, signed by `x`.
    ViewSignedByX,
    /// Edge heartbeat whose view claims the other server is STANDALONE at
    /// `next`; a genuine-looking proof naming the real peer as holder,
    /// but signed by `x`.
    ViewPeerClaimSignedByX,
}

impl Forgery {
    pub const ALL: [Forgery; 17] = [
        Forgery::AppendAck,
        Forgery::NewEpochUnproven,
        Forgery::NewEpochSignedByX,
        Forgery::DemoteRequest,
        Forgery::Unpair,
        Forgery::Append,
        Forgery::Rejoin,
        Forgery::Pair,
        Forgery::PairAccepted,
        Forgery::Refused,
        Forgery::Join,
        Forgery::SamplesDone,
        Forgery::SamplesPull,
        Forgery::SamplesBatch,
        Forgery::ViewUnproven,
        Forgery::ViewSignedByX,
        Forgery::ViewPeerClaimSignedByX,
    ];

    pub fn channel(self) -> Channel {
        match self {
            Forgery::ViewUnproven | Forgery::ViewSignedByX | Forgery::ViewPeerClaimSignedByX => {
                Channel::Edge
            }
            _ => Channel::Peer,
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// The command-line spelling (`vcodr-check --forge append-ack,unpair`).
    pub fn cli_name(self) -> &'static str {
        match self {
            Forgery::AppendAck => "append-ack",
            Forgery::NewEpochUnproven => "new-epoch-unproven",
            Forgery::NewEpochSignedByX => "new-epoch-signed-by-x",
            Forgery::DemoteRequest => "demote-request",
            Forgery::Unpair => "unpair",
            Forgery::Append => "append",
            Forgery::Rejoin => "rejoin",
            Forgery::Pair => "pair",
            Forgery::PairAccepted => "pair-accepted",
            Forgery::Refused => "refused",
            Forgery::Join => "join",
            Forgery::SamplesDone => "samples-done",
            Forgery::SamplesPull => "samples-pull",
            Forgery::SamplesBatch => "samples-batch",
            Forgery::ViewUnproven => "view-unproven",
            Forgery::ViewSignedByX => "view-signed-by-x",
            Forgery::ViewPeerClaimSignedByX => "view-peer-claim-signed-by-x",
        }
    }

    /// What a trace says.
    pub fn name(self) -> &'static str {
        match self {
            Forgery::AppendAck => "AppendAck",
            Forgery::NewEpochUnproven => "NewEpoch (x holds, no proof)",
            Forgery::NewEpochSignedByX => "NewEpoch (peer holds at x's address, signed by x)",
            Forgery::DemoteRequest => "DemoteRequest",
            Forgery::Unpair => "Unpair",
            Forgery::Append => "Append of a forged Put",
            Forgery::Rejoin => "Rejoin (the peer, at x's addresses)",
            Forgery::Pair => "Pair (guessed token)",
            Forgery::PairAccepted => "PairAccepted (guessed token)",
            Forgery::Refused => "Refused (guessed token)",
            Forgery::Join => "Join (guessed token)",
            Forgery::SamplesDone => "SamplesPull (the sample copy is complete)",
            Forgery::SamplesPull => "SamplesPull of every sample of e0",
            Forgery::SamplesBatch => "SamplesBatch of a forged sample of e0",
            Forgery::ViewUnproven => "heartbeat view: peer STANDALONE at the next epoch, no proof",
            Forgery::ViewSignedByX => {
                "heartbeat view: x STANDALONE at the next epoch, proof of x signed by x"
            }
            Forgery::ViewPeerClaimSignedByX => {
                "heartbeat view: peer STANDALONE at the next epoch, proof naming the peer signed by x"
            }
        }
    }
}

/// A set of [`Forgery`] kinds (the menu a model offers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Menu(u32);

impl Menu {
    pub const NONE: Menu = Menu(0);

    pub fn of(kinds: &[Forgery]) -> Menu {
        Menu(kinds.iter().fold(0, |m, k| m | k.bit()))
    }
    /// Every forgery.
    pub fn all() -> Menu {
        Menu::of(&Forgery::ALL)
    }
    /// Every forgery sent on the peer link.
    pub fn peer() -> Menu {
        Menu::channel(Channel::Peer)
    }
    /// Every forgery sent on an edge link.
    pub fn edge() -> Menu {
        Menu::channel(Channel::Edge)
    }
    fn channel(c: Channel) -> Menu {
        Menu(
            Forgery::ALL
                .into_iter()
                .filter(|f| f.channel() == c)
                .fold(0, |m, f| m | f.bit()),
        )
    }
    /// Parses `all`, `peer`, `edge` or a comma-separated list of
    /// [`Forgery::cli_name`]s.
    pub fn parse(text: &str) -> Result<Menu, String> {
        match text {
            "all" => return Ok(Menu::all()),
            "peer" => return Ok(Menu::peer()),
            "edge" => return Ok(Menu::edge()),
            _ => {}
        }
        let mut m = Menu::NONE;
        for name in text.split(',').map(str::trim) {
            let f = Forgery::ALL
                .into_iter()
                .find(|f| f.cli_name() == name)
                .ok_or_else(|| {
                    let known: Vec<&str> = Forgery::ALL.iter().map(|f| f.cli_name()).collect();
                    format!(
                        "unknown forgery {name}: use all, peer, edge or some of {}",
                        known.join(", ")
                    )
                })?;
            m = m.with(Menu::of(&[f]));
        }
        Ok(m)
    }

    /// The union of two menus.
    pub fn with(self, other: Menu) -> Menu {
        Menu(self.0 | other.0)
    }
    pub fn contains(self, f: Forgery) -> bool {
        self.0 & f.bit() != 0
    }
    pub fn iter(self) -> impl Iterator<Item = Forgery> {
        Forgery::ALL.into_iter().filter(move |f| self.contains(*f))
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A forged message, ready to be fed to its target.
#[derive(Clone, Debug)]
pub enum Forged {
    Peer(PeerEnvelope),
    Edge(EdgeMsg),
}

/// Builds forgery `f` against server `target`, which is up as `srv`, from what
/// is public about it (pair id, epoch, uuids, addresses, log position);
/// `None` where it makes no sense (a heartbeat claim to an unpaired server).
pub fn forge(srv: &Server, target: ServerIx, f: Forgery) -> Option<Forged> {
    let other = server_info(1 - target);
    let pair_id = srv.pair_id();
    let epoch = srv.epoch();
    // The epoch a forgery claims: the next one the target has not heard of
    // (for a zombie, above the epoch that fenced it: a claim it must not
    // follow, to a redirect it must not take).
    let next = epoch.max(srv.highest_epoch_seen()) + 1;
    let x = hostile_info();
    let env = |epoch: Epoch, body: PeerMsg| {
        Some(Forged::Peer(PeerEnvelope {
            from: other.uuid,
            pair_id,
            epoch,
            body,
        }))
    };
    // A proof of `next` of the target's pair, signed with x's key.
    let proof_by_x = |holder: &ServerInfo| {
        pair_id.map(|pair_id| {
            Arc::new(hostile_keys().prove(EpochClaim {
                pair_id,
                epoch: next,
                holder: holder.uuid,
                holder_name: holder.name.clone(),
                holder_edge_address: holder.edge_address.clone(),
            }))
        })
    };
    match f {
        Forgery::AppendAck => env(
            epoch,
            PeerMsg::AppendAck {
                // The target's own run: the ack it would take, if admitted.
                incarnation: srv.incarnation(),
                durable_index: Index::MAX,
                ok: true,
            },
        ),
        Forgery::NewEpochUnproven => env(
            next,
            PeerMsg::NewEpoch {
                active: x,
                proof: None,
            },
        ),
        Forgery::NewEpochSignedByX => {
            let active = ServerInfo {
                edge_address: x.edge_address.clone(),
                ..other.clone()
            };
            let proof = proof_by_x(&active);
            env(next, PeerMsg::NewEpoch { active, proof })
        }
        Forgery::DemoteRequest => env(
            epoch,
            PeerMsg::DemoteRequest {
                new_epoch: epoch + 1,
            },
        ),
        Forgery::Unpair => env(epoch, PeerMsg::Unpair),
        Forgery::Append => {
            let last = srv.last_index();
            env(
                epoch,
                PeerMsg::Append {
                    // The newest run there could be, from nothing: a standby
                    // that admitted it would drop its whole unapplied log.
                    incarnation: Incarnation::MAX,
                    since: 0,
                    prev_index: last,
                    prev_epoch: srv.log().last_epoch(),
                    entries: vec![Entry {
                        epoch,
                        index: last + 1,
                        op: Op::Put {
                            key: FORGED_KEY.into(),
                            value: FORGED_VALUE.to_vec(),
                        },
                    }],
                    commit_index: last + 1,
                    active_durable: last + 1,
                },
            )
        }
        Forgery::Rejoin => {
            // A zombie of an older epoch asking back in: the other server's
            // uuid and name (what the pin would be checked against), x's addresses.
            let zombie_epoch = epoch.saturating_sub(1);
            env(
                zombie_epoch,
                PeerMsg::Rejoin {
                    last_index: srv.last_index(),
                    last_epoch: zombie_epoch,
                    standby: ServerInfo {
                        peer_address: x.peer_address.clone(),
                        edge_address: x.edge_address.clone(),
                        ..other.clone()
                    },
                },
            )
        }
        Forgery::Pair => env(
            epoch,
            PeerMsg::Pair {
                token: GUESSED_TOKEN,
                standby_uuid: srv.info().uuid,
                active: x,
                policy: OnStandbyLoss::Degrade,
            },
        ),
        Forgery::PairAccepted => env(
            epoch,
            PeerMsg::PairAccepted {
                standby: x,
                token: GUESSED_TOKEN,
            },
        ),
        Forgery::Refused => env(
            epoch,
            PeerMsg::Refused {
                reason: "forged".into(),
                in_reply_to: Some(GUESSED_TOKEN),
            },
        ),
        Forgery::Join => env(
            epoch,
            PeerMsg::Join {
                token: GUESSED_TOKEN,
                standby: x,
            },
        ),
        Forgery::SamplesDone => env(
            epoch,
            PeerMsg::SamplesPull {
                ranges: Vec::new(),
                applied_index: Index::MAX,
            },
        ),
        Forgery::SamplesPull => env(
            epoch,
            PeerMsg::SamplesPull {
                ranges: vec![SampleRange {
                    client: "e0".into(),
                    after_seq: 0,
                    up_to_seq: u64::MAX,
                }],
                applied_index: srv.commit_index(),
            },
        ),
        Forgery::SamplesBatch => env(
            epoch,
            PeerMsg::SamplesBatch {
                chunks: vec![SampleChunk {
                    client: "e0".into(),
                    after_seq: 0,
                    through_seq: 1,
                    samples: vec![Sample {
                        seq: 1,
                        payload: FORGED_SAMPLE.to_vec(),
                    }],
                }],
            },
        ),
        Forgery::ViewUnproven | Forgery::ViewSignedByX | Forgery::ViewPeerClaimSignedByX => {
            pair_id?;
            let (claimed, proof) = match f {
                Forgery::ViewUnproven => (other.edge_address.clone(), None),
                Forgery::ViewSignedByX => (x.edge_address.clone(), proof_by_x(&x)),
                _ => (other.edge_address.clone(), proof_by_x(&other)),
            };
            let me = srv.info();
            let mine = ViewEntry {
                address: me.edge_address.clone(),
                role: Some(srv.role()),
                epoch,
                pair_id,
                last_response_ms: Some(0),
            };
            let theirs = ViewEntry {
                address: claimed,
                role: Some(Role::Standalone),
                epoch: next,
                pair_id,
                last_response_ms: Some(0),
            };
            // Slots in the order edges keep them: a's address first.
            let view = if target == 0 {
                [mine, theirs]
            } else {
                [theirs, mine]
            };
            Some(Forged::Edge(EdgeMsg::Heartbeat(Heartbeat {
                client_id: HOSTILE_CLIENT.into(),
                client_type: ClientType::Edge,
                seq: 1,
                view,
                following: None,
                config_epoch: 0,
                config_version: 0,
                cached_samples: 0,
                dropped_samples: 0,
                proof,
            })))
        }
    }
}

/// The input that delivers a forged message to its target.
pub fn input(m: Forged) -> Input {
    match m {
        Forged::Peer(env) => Input::Peer {
            link: HOSTILE_LINK,
            from: hostile_identity(),
            env,
        },
        Forged::Edge(msg) => Input::Edge {
            reply_to: HOSTILE_REPLY,
            client: HOSTILE_CLIENT.into(),
            client_type: ClientType::Edge,
            msg,
        },
    }
}
