//! Results of the admin API as JSON (SPEC §7): the core's status, replies,
//! client tables, state history and divergence-archive pages, with the
//! field names clients rely on. Pure: one function per shape, each the only
//! place its shape is written.

use super::rpc::{encode_blob, hex128};
use serde_json::{json, Value};
use vcodr_core::*;

fn doc_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// The JSON result of a core reply.
pub fn reply_json(r: &Reply) -> Value {
    match r {
        Reply::Prepared {
            vco_uuid,
            pairing_token,
        } => {
            json!({ "vcoUuid": hex128(*vco_uuid), "pairingToken": hex128(*pairing_token) })
        }
        Reply::Configured { pair_id } => {
            json!({ "pairId": hex128(*pair_id), "drState": DrState::ActiveConfiguring.as_str() })
        }
        Reply::Blob {
            active,
            pairing_token,
        } => json!({ "activeAccessFromStandby": encode_blob(active, *pairing_token) }),
        Reply::Promoted {
            epoch,
            data_loss_bound,
        } => json!({ "epoch": epoch, "dataLossBound": data_loss_bound }),
        Reply::Accepted => json!({ "accepted": true }),
        Reply::Written { key, version } | Reply::Deleted { key, version } => {
            json!({ "key": key, "version": version })
        }
        Reply::Doc {
            key,
            value,
            version,
        } => json!({ "key": key, "value": doc_value(value), "version": version }),
        Reply::List(items) => Value::Array(
            items
                .iter()
                .map(|(k, v)| json!({ "key": k, "version": v }))
                .collect(),
        ),
    }
}

/// The JSON of `getReplicationStatus` (fields of SPEC §7), without optional tables.
pub fn status_json(s: &Status) -> Value {
    let standby_list: Vec<Value> = match (s.role, &s.peer) {
        (Role::Active, Some(p)) => vec![json!({
            "standbyAddress": p.peer_address,
            "standbyUuid": hex128(p.uuid),
            "standbyName": p.name,
            "standbyAdminAddress": p.admin_address,
        })],
        _ => vec![],
    };
    json!({
        "role": s.role.as_str(),
        "drState": s.dr_state.as_str(),
        "failureDescription": s.failure_description,
        "roleTimestamp": s.role_timestamp_ms,
        "stateTimestamp": s.state_timestamp_ms,
        "lastDrProtectedTime": s.last_dr_protected_ms,
        "epoch": s.epoch,
        "highestEpochSeen": s.highest_epoch_seen,
        "fencedBy": s.fenced_by,
        "pairId": s.pair_id.map(hex128),
        "vcoUuid": hex128(s.me.uuid),
        "name": s.me.name,
        "activeAddress": s.active_admin_address,
        "activeEdgeAddress": s.active_edge_address,
        "peer": s.peer.as_ref().map(|p| json!({
            "name": p.name, "uuid": hex128(p.uuid), "peerAddress": p.peer_address,
            "edgeAddress": p.edge_address, "adminAddress": p.admin_address,
        })),
        // Pinned at pairing: only this certificate's messages are taken.
        "peerIdentity": s.peer_identity.as_ref().map(|i| json!({
            "name": i.name,
            "keyFingerprint": i.key_fingerprint,
        })),
        "epochProof": s.epoch_proof.as_ref().map(|p| json!({
            "epoch": p.claim.epoch,
            "pairId": hex128(p.claim.pair_id),
            "holderUuid": hex128(p.claim.holder),
            "holderName": p.claim.holder_name,
            "holderEdgeAddress": p.claim.holder_edge_address,
        })),
        "standbyList": standby_list,
        "replication": {
            "mode": s.replication_mode.as_str(),
            "protected": s.protected,
            "policy": s.policy.as_str(),
            "lastIndex": s.last_index,
            "commitIndex": s.commit_index,
            "durableIndex": s.durable_index,
            "standbyAckedIndex": s.standby_acked_index,
            "lagEntries": s.lag_entries,
            "lagMs": s.lag_ms,
            "unprotectedWrites": s.unprotected_writes,
            "degraded": s.degraded,
            "writesBlocked": s.writes_blocked,
            "pendingWrites": s.pending_writes,
        },
        "documents": s.documents,
        // Since this process started; what storage holds is `monitoring/getSummary`.
        "samplesStoredSinceStart": s.samples_stored_since_start,
    })
}

/// `clientCount`.
pub fn client_count_json(c: &ClientCount) -> Value {
    json!({
        "edgeCount": c.edge_count,
        "gatewayCount": c.gateway_count,
        "currentActiveEdgeCount": c.current_active_edge_count,
        "currentActiveGatewayCount": c.current_active_gateway_count,
        "currentStandbyEdgeCount": c.current_standby_edge_count,
        "currentStandbyGatewayCount": c.current_standby_gateway_count,
        "followingNoneCount": c.following_none_count,
    })
}

/// One `clientContact` row.
pub fn contact_json(c: &ClientContact) -> Value {
    // The edge's view: the server it follows is its active, the other its standby.
    let (active, standby) = match &c.following {
        Some(f) if c.view[1].address == *f => (&c.view[1], &c.view[0]),
        _ => (&c.view[0], &c.view[1]),
    };
    let view: Vec<Value> = c
        .view
        .iter()
        .map(|v| json!({ "address": v.address, "role": v.role.map(Role::as_str), "epoch": v.epoch, "lastResponseTime": v.last_response_ms }))
        .collect();
    json!({
        "id": c.client_id,
        "type": c.client_type.as_str(),
        "following": c.following,
        "activeAddress": c.following.as_ref().map(|_| active.address.clone()),
        "standbyAddress": c.following.as_ref().map(|_| standby.address.clone()),
        "activeLastResponseTime": active.last_response_ms,
        "standbyLastResponseTime": standby.last_response_ms,
        "view": view,
        "configEpoch": c.config_epoch,
        "configVersion": c.config_version,
        "cachedSamples": c.cached_samples,
        "droppedSamples": c.dropped_samples,
        "modified": c.modified_ms,
        // Heartbeats that claimed a higher epoch without a valid proof.
        "forgedEpochClaims": c.forged_epoch_claims,
    })
}

/// One state-history row.
pub fn transition_json(t: &Transition) -> Value {
    json!({
        "fromRole": t.from_role.as_str(), "from": t.from.as_str(),
        "toRole": t.to_role.as_str(), "to": t.to.as_str(),
        "epoch": t.epoch, "timestamp": t.timestamp_ms, "reason": t.reason,
    })
}

/// One page of `getDivergenceArchive` (SPEC §7): `{total, offset, limit,
/// entries, next}`. `total` counts every archived row; `next` is the
/// `offset` of the following page, or null once `entries` reach the end.
/// Each entry carries its `position` in the archive (0 is the oldest).
pub fn archive_page_json(
    total: u64,
    offset: u64,
    limit: usize,
    rows: &[crate::storage::ArchivedEntry],
) -> Value {
    let entries: Vec<Value> = rows
        .iter()
        .zip(offset..)
        .map(|(a, position)| {
            json!({
                "position": position,
                "index": a.index,
                "epoch": a.epoch,
                "reason": a.reason,
                "entry": op_json(&a.op),
            })
        })
        .collect();
    let end = offset.saturating_add(rows.len() as u64);
    json!({
        "total": total,
        "offset": offset,
        "limit": limit,
        "entries": entries,
        "next": (end < total).then_some(end),
    })
}

/// A log entry's operation, for the divergence archive.
pub fn op_json(op: &Op) -> Value {
    match op {
        Op::Put { key, value } => json!({ "op": "put", "key": key, "value": doc_value(value) }),
        Op::Delete { key } => json!({ "op": "delete", "key": key }),
        Op::Samples { client, samples } => json!({
            "op": "samples", "clientId": client,
            "firstSeq": samples.first().map(|s| s.seq), "lastSeq": samples.last().map(|s| s.seq),
        }),
        Op::EpochStart => json!({ "op": "epochStart" }),
    }
}
