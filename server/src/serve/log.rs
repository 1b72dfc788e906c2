//! One log line per DR event (SPEC §7), text or JSON (`--log-format json`).

use crate::api::metrics::Metrics;
use crate::serve::throttle::LogThrottle;
use std::sync::atomic::Ordering::Relaxed;
use vcodr_core::Event;

/// Sets up `tracing` output: `format` is `text` or `json`; `RUST_LOG` filters.
pub fn init(format: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,quinn=warn,rustls=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let r = match format {
        "json" => builder.json().flatten_event(true).try_init(),
        "text" => builder.try_init(),
        other => anyhow::bail!("--log-format {other:?}: use `text` or `json`"),
    };
    // Initialised twice in one process (tests, demo): keep the first.
    let _ = r;
    Ok(())
}

/// Logs a core event and counts what metrics need. Events an outsider can
/// cause (refused peer messages, forged epoch claims, refused clients) go
/// through `throttle`: counts per interval, never a line each.
pub fn event(e: &Event, metrics: &Metrics, throttle: &LogThrottle) {
    match e {
        Event::Transition(t) => tracing::info!(
            target: "vcodr::dr",
            event = "transition",
            from_role = t.from_role.as_str(),
            from = t.from.as_str(),
            to_role = t.to_role.as_str(),
            to = t.to.as_str(),
            epoch = t.epoch,
            reason = %t.reason,
            "{} {} -> {} {}: {}",
            t.from_role,
            t.from,
            t.to_role,
            t.to,
            t.reason
        ),
        Event::Fenced {
            epoch,
            learned_from,
        } => {
            metrics.fenced.fetch_add(1, Relaxed);
            tracing::warn!(target: "vcodr::dr", event = "fenced", epoch, learned_from = %learned_from, "fenced by epoch {epoch} (learned from {learned_from})")
        }
        Event::Degraded { since_index } => tracing::warn!(
            target: "vcodr::dr",
            event = "degraded",
            since_index,
            "standby lost beyond standby_grace: acknowledging writes WITHOUT the standby from index {since_index} (RPO > 0)"
        ),
        Event::WritesBlocked {
            refused_pending,
            why,
        } => tracing::warn!(
            target: "vcodr::dr",
            event = "writes_blocked",
            refused_pending,
            why = %why,
            "writes blocked: {why}; {refused_pending} waiting writes answered as not acknowledged"
        ),
        Event::Protected { at_index } => {
            tracing::info!(target: "vcodr::dr", event = "protected", at_index, "RPO is 0 again: the standby has every write up to {at_index}")
        }
        Event::SnapshotSent { index, chunks } => {
            tracing::info!(target: "vcodr::dr", event = "snapshot_sent", index, chunks, "sending a snapshot at index {index} in {chunks} chunks")
        }
        Event::DivergenceArchived {
            after,
            entries_upto,
        } => tracing::warn!(
            target: "vcodr::dr",
            event = "divergence_archived",
            after,
            entries_upto,
            "entries {}..={entries_upto} moved to the divergence archive (see disasterRecovery/getDivergenceArchive)",
            after + 1
        ),
        Event::PeerIgnored { kind, reason } => {
            tracing::debug!(target: "vcodr::dr", event = "peer_ignored", kind, reason = %reason, "peer {kind} ignored: {reason}")
        }
        Event::SamplesDeduplicated { client, count } => {
            metrics.sample_duplicates.fetch_add(*count, Relaxed);
            tracing::debug!(target: "vcodr::dr", event = "samples_deduplicated", client = %client, count, "discarded {count} re-sent samples")
        }
        Event::ClientRefused { client, reason } => {
            metrics.clients_refused.fetch_add(1, Relaxed);
            throttle.note("client_refused", || {
                format!("client {client} refused: {reason}")
            });
        }
        Event::PeerRefused {
            link,
            from,
            kind,
            reason,
        } => {
            metrics.peer_refused(*reason);
            throttle.note(reason.as_str(), || {
                format!(
                    "refused a peer {kind} from {from} on link {link}: {}",
                    match reason {
                        vcodr_core::PeerRefusal::NotPinnedPeer => "not the peer pinned at pairing",
                        vcodr_core::PeerRefusal::NotPaired =>
                            "this server is not paired and it is not a pairing step",
                        vcodr_core::PeerRefusal::OtherPair => "it names another pair",
                        vcodr_core::PeerRefusal::PairingRefused =>
                            "a pairing step with the wrong token, server or state",
                    }
                )
            });
        }
        Event::PeerPinned { identity, how } => {
            tracing::warn!(target: "vcodr::dr", event = "peer_pinned", identity = %identity, how, "pinned the peer {identity}: {how}")
        }
        Event::ForgedEpochClaim {
            client,
            claimed,
            why,
        } => {
            metrics.forged_epoch_claims.fetch_add(1, Relaxed);
            throttle.note("forged_epoch_claim", || {
                format!("client {client} claimed epoch {claimed} and fenced nobody: {why}")
            });
        }
    }
}
