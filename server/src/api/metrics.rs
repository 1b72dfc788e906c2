//! Counters and gauges, rendered as Prometheus text at `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;
use vcodr_core::{PeerRefusal, Role, Server};

/// Bucket upper bounds of the commit latency histogram, in seconds.
const LATENCY_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.buckets[i].load(Relaxed)
            );
        }
        let n = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {n}");
    }
}

/// Everything `/metrics` shows. Counters are bumped by the driver and the
/// links; gauges are refreshed from the core after each input.
#[derive(Debug, Default)]
pub struct Metrics {
    pub heartbeats_edge: AtomicU64,
    pub heartbeats_gateway: AtomicU64,
    pub config_pulls: AtomicU64,
    pub samples_received: AtomicU64,
    pub sample_duplicates: AtomicU64,
    pub writes_acknowledged: AtomicU64,
    pub peer_sent: AtomicU64,
    pub peer_received: AtomicU64,
    pub peer_dropped: AtomicU64,
    pub persist_batches: AtomicU64,
    pub persist_requests: AtomicU64,
    pub persisted_entries: AtomicU64,
    pub fenced: AtomicU64,
    /// Peer messages refused at admission, by [`PeerRefusal`] (in `PeerRefusal::ALL` order).
    pub peer_messages_refused: [AtomicU64; PeerRefusal::ALL.len()],
    /// Heartbeats that claimed a higher epoch without a valid proof.
    pub forged_epoch_claims: AtomicU64,
    /// Peer links closed or refused beyond `MAX_ACCEPTED_PEER_LINKS`.
    pub peer_links_refused: AtomicU64,
    /// Peer addresses dialled now.
    pub peer_dial_targets: AtomicU64,
    /// Edge requests refused (identity mismatch, full contact table).
    pub clients_refused: AtomicU64,
    /// Edge links closed because their client opened more than `MAX_EDGE_LINKS_PER_CLIENT`.
    pub edge_links_replaced: AtomicU64,
    /// Admin calls without the right token.
    pub admin_unauthorized: AtomicU64,
    /// TLS handshakes refused by the peer and edge listeners (from the transport).
    pub handshakes_refused_peer: AtomicU64,
    pub handshakes_refused_edge: AtomicU64,
    /// Admin connections open now (gauge), refused beyond
    /// `limits.max_admin_connections`, and closed by a timeout (by phase:
    /// handshake, header, idle; see `admin::TIMEOUT_PHASES`).
    pub admin_connections_open: AtomicU64,
    pub admin_connections_refused: AtomicU64,
    pub admin_connections_timed_out: [AtomicU64; 3],
    /// Admin requests in flight now (gauge), and refused for want of a permit.
    pub admin_requests_in_flight: AtomicU64,
    pub admin_requests_refused: AtomicU64,
    /// 1 once a storage commit failed (the server is fail-stop).
    pub storage_failed: AtomicU64,
    /// Writes logged, then answered as not acknowledged (fenced, demoted,
    /// blocked at the grace).
    pub writes_not_acknowledged: AtomicU64,
    /// Calls answered "outcome unknown" (write timeout, storage failure, shutdown).
    pub writes_outcome_unknown: AtomicU64,
    pub commit_latency: Histogram,
    /// Gauges from the core.
    pub role: AtomicI64,
    pub epoch: AtomicU64,
    pub lag_entries: AtomicU64,
    pub lag_ms: AtomicU64,
    pub unprotected_writes: AtomicU64,
    pub protected: AtomicU64,
    /// 1 while writes are refused because the standby is lost.
    pub writes_blocked: AtomicU64,
    pub clients_following: AtomicU64,
    /// Edges and gateways whose last heartbeat said they follow nobody.
    pub clients_following_nobody: AtomicU64,
    pub clients_known: AtomicU64,
    pub commit_index: AtomicU64,
    pub samples_stored: AtomicU64,
    /// The drState names, for the label of `vcodr_dr_state`.
    state_name: Mutex<(&'static str, &'static str)>,
}

impl Metrics {
    /// Counts a peer message refused at admission.
    pub fn peer_refused(&self, reason: PeerRefusal) {
        if let Some(i) = PeerRefusal::ALL.iter().position(|r| *r == reason) {
            self.peer_messages_refused[i].fetch_add(1, Relaxed);
        }
    }

    /// Refreshes the gauges from the core.
    pub fn observe(&self, s: &Server) {
        let st = s.status();
        self.role.store(
            Role::ALL.iter().position(|r| *r == st.role).unwrap_or(0) as i64,
            Relaxed,
        );
        self.epoch.store(st.epoch, Relaxed);
        self.lag_entries.store(st.lag_entries, Relaxed);
        self.lag_ms.store(st.lag_ms, Relaxed);
        self.unprotected_writes
            .store(st.unprotected_writes, Relaxed);
        self.protected.store(u64::from(st.protected), Relaxed);
        self.writes_blocked
            .store(u64::from(st.writes_blocked), Relaxed);
        self.commit_index.store(st.commit_index, Relaxed);
        self.samples_stored
            .store(st.samples_stored_since_start, Relaxed);
        let c = st.client_count;
        self.clients_following_nobody
            .store(c.following_none_count, Relaxed);
        self.clients_following.store(
            c.current_active_edge_count + c.current_active_gateway_count,
            Relaxed,
        );
        self.clients_known
            .store(c.edge_count + c.gateway_count, Relaxed);
        if let Ok(mut n) = self.state_name.lock() {
            *n = (st.role.as_str(), st.dr_state.as_str());
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let (role, state) = self
            .state_name
            .lock()
            .map(|n| *n)
            .unwrap_or(("STANDALONE", "UNCONFIGURED"));
        let gauge = |o: &mut String, name: &str, help: &str, v: String| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let _ = writeln!(
            o,
            "# HELP vcodr_role The server's role (1 for the current one).\n# TYPE vcodr_role gauge"
        );
        for r in Role::ALL {
            let _ = writeln!(
                o,
                "vcodr_role{{role=\"{}\"}} {}",
                r.as_str(),
                u8::from(r.as_str() == role)
            );
        }
        let _ = writeln!(o, "# HELP vcodr_dr_state The server's drState (1 for the current one).\n# TYPE vcodr_dr_state gauge");
        let _ = writeln!(
            o,
            "vcodr_dr_state{{role=\"{role}\",dr_state=\"{state}\"}} 1"
        );
        gauge(
            &mut o,
            "vcodr_epoch",
            "The pair epoch this server is in.",
            self.epoch.load(Relaxed).to_string(),
        );
        gauge(
            &mut o,
            "vcodr_replication_lag_entries",
            "Log entries the standby has not acknowledged.",
            self.lag_entries.load(Relaxed).to_string(),
        );
        gauge(
            &mut o,
            "vcodr_replication_lag_seconds",
            "How long the standby has been behind.",
            format!("{}", self.lag_ms.load(Relaxed) as f64 / 1000.0),
        );
        gauge(
            &mut o,
            "vcodr_dr_protected",
            "1 while every acknowledged write is on the standby (RPO 0).",
            self.protected.load(Relaxed).to_string(),
        );
        gauge(
            &mut o,
            "vcodr_commit_index",
            "Highest committed log index.",
            self.commit_index.load(Relaxed).to_string(),
        );
        gauge(
            &mut o,
            "vcodr_clients_following",
            "Edges and gateways following this server.",
            self.clients_following.load(Relaxed).to_string(),
        );
        gauge(
            &mut o,
            "vcodr_clients_following_nobody",
            "Edges and gateways whose last heartbeat said they follow no server (they cache monitoring).",
            self.clients_following_nobody.load(Relaxed).to_string(),
        );
        gauge(
            &mut o,
            "vcodr_clients_known",
            "Edges and gateways in the contact table.",
            self.clients_known.load(Relaxed).to_string(),
        );
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut o,
            "vcodr_unprotected_writes_total",
            "Writes acknowledged without the standby (degrade policy).",
            self.unprotected_writes.load(Relaxed),
        );
        let _ = writeln!(o, "# HELP vcodr_heartbeats_total DR heartbeats received.\n# TYPE vcodr_heartbeats_total counter");
        let _ = writeln!(
            o,
            "vcodr_heartbeats_total{{client_type=\"EDGE\"}} {}",
            self.heartbeats_edge.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "vcodr_heartbeats_total{{client_type=\"GATEWAY\"}} {}",
            self.heartbeats_gateway.load(Relaxed)
        );
        counter(
            &mut o,
            "vcodr_config_pulls_total",
            "Configuration pulls from edges.",
            self.config_pulls.load(Relaxed),
        );
        counter(
            &mut o,
            "vcodr_writes_acknowledged_total",
            "Configuration writes acknowledged.",
            self.writes_acknowledged.load(Relaxed),
        );
        counter(
            &mut o,
            "vcodr_monitoring_samples_received_total",
            "Monitoring samples received (with re-sends).",
            self.samples_received.load(Relaxed),
        );
        counter(
            &mut o,
            "vcodr_monitoring_samples_stored_total",
            "Monitoring samples stored (committed) since this process started.",
            self.samples_stored.load(Relaxed),
        );
        counter(
            &mut o,
            "vcodr_monitoring_samples_deduplicated_total",
            "Re-sent samples discarded as already stored.",
            self.sample_duplicates.load(Relaxed),
        );
        counter(
            &mut o,
            "vcodr_peer_messages_sent_total",
            "Messages sent to the peer server.",
            self.peer_sent.load(Relaxed),
        );
        counter(
            &mut o,
            "vcodr_peer_messages_received_total",
            "Messages received from the peer server.",
            self.peer_received.load(Relaxed),
        );
        counter(
            &mut o,
            "vcodr_peer_messages_dropped_total",
            "Peer messages dropped on full queues (retransmitted).",
            self.peer_dropped.load(Relaxed),
        );
        counter(
            &mut o,
            "vcodr_persist_batches_total",
            "Group commits to disk.",
            self.persist_batches.load(Relaxed),
        );
        counter(
            &mut o,
            "vcodr_persist_requests_total",
            "Persist requests made durable.",
            self.persist_requests.load(Relaxed),
        );
        counter(
            &mut o,
            "vcodr_persisted_entries_total",
            "Log entries made durable.",
            self.persisted_entries.load(Relaxed),
        );
        counter(
            &mut o,
            "vcodr_fenced_total",
            "Times this server learned a higher epoch and fenced itself.",
            self.fenced.load(Relaxed),
        );
        let _ = writeln!(o, "# HELP vcodr_peer_messages_refused_total Peer messages refused at admission (sender not allowed to send them).
# TYPE vcodr_peer_messages_refused_total counter");
        for (i, r) in PeerRefusal::ALL.iter().enumerate() {
            let _ = writeln!(
                o,
                "vcodr_peer_messages_refused_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.peer_messages_refused[i].load(Relaxed)
            );
        }
        counter(
            &mut o,
            "vcodr_forged_epoch_claims_total",
            "Heartbeats claiming a higher epoch without a valid proof (fenced nobody).",
            self.forged_epoch_claims.load(Relaxed),
        );
        counter(
            &mut o,
            "vcodr_peer_links_refused_total",
            "Peer links refused or closed beyond the limit of open peer links.",
            self.peer_links_refused.load(Relaxed),
        );
        gauge(
            &mut o,
            "vcodr_peer_dial_targets",
            "Peer addresses this server dials (its configured or pinned peer only).",
            self.peer_dial_targets.load(Relaxed).to_string(),
        );
        counter(
            &mut o,
            "vcodr_clients_refused_total",
            "Edge requests refused (certificate mismatch, full contact table).",
            self.clients_refused.load(Relaxed),
        );
        counter(
            &mut o,
            "vcodr_edge_links_replaced_total",
            "Edge links closed because their client (one certificate) opened more than allowed at once.",
            self.edge_links_replaced.load(Relaxed),
        );
        counter(
            &mut o,
            "vcodr_admin_unauthorized_total",
            "Admin API calls without the right token.",
            self.admin_unauthorized.load(Relaxed),
        );
        let _ = writeln!(o, "# HELP vcodr_handshakes_refused_total TLS handshakes refused (wrong role, unknown CA, no certificate, timeouts).
# TYPE vcodr_handshakes_refused_total counter");
        let _ = writeln!(
            o,
            "vcodr_handshakes_refused_total{{listener=\"peer\"}} {}\nvcodr_handshakes_refused_total{{listener=\"edge\"}} {}",
            self.handshakes_refused_peer.load(Relaxed),
            self.handshakes_refused_edge.load(Relaxed)
        );
        gauge(
            &mut o,
            "vcodr_writes_blocked",
            "1 while writes are refused because the standby is lost (block policy after the grace, or restarted without reaching it).",
            self.writes_blocked.load(Relaxed).to_string(),
        );
        counter(
            &mut o,
            "vcodr_writes_not_acknowledged_total",
            "Writes logged, then answered as not acknowledged (fenced, demoted, blocked at the grace); they may still take effect.",
            self.writes_not_acknowledged.load(Relaxed),
        );
        counter(
            &mut o,
            "vcodr_writes_outcome_unknown_total",
            "Admin calls answered 'outcome unknown' (no acknowledgement within write_timeout_ms, storage failure, shutdown).",
            self.writes_outcome_unknown.load(Relaxed),
        );
        gauge(
            &mut o,
            "vcodr_storage_failed",
            "1 once a storage commit failed: the server is fail-stop and exits for its supervisor to restart it.",
            self.storage_failed.load(Relaxed).to_string(),
        );
        gauge(
            &mut o,
            "vcodr_admin_connections_open",
            "Admin API connections open now.",
            self.admin_connections_open.load(Relaxed).to_string(),
        );
        counter(
            &mut o,
            "vcodr_admin_connections_refused_total",
            "Admin API connections closed at once because limits.max_admin_connections were open.",
            self.admin_connections_refused.load(Relaxed),
        );
        let _ = writeln!(o, "# HELP vcodr_admin_connections_timed_out_total Admin API connections closed by a timeout: TLS handshake, request headers or body, idle.\n# TYPE vcodr_admin_connections_timed_out_total counter");
        for (i, phase) in crate::api::admin::TIMEOUT_PHASES.iter().enumerate() {
            let _ = writeln!(
                o,
                "vcodr_admin_connections_timed_out_total{{phase=\"{phase}\"}} {}",
                self.admin_connections_timed_out[i].load(Relaxed)
            );
        }
        gauge(
            &mut o,
            "vcodr_admin_requests_in_flight",
            "Admin API requests being handled now.",
            self.admin_requests_in_flight.load(Relaxed).to_string(),
        );
        counter(
            &mut o,
            "vcodr_admin_requests_refused_total",
            "Admin API requests answered 503: limits.max_admin_requests were in flight.",
            self.admin_requests_refused.load(Relaxed),
        );
        self.commit_latency.render(
            &mut o,
            "vcodr_commit_seconds",
            "Time of a durable group commit.",
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_valid_looking_exposition() {
        let m = Metrics::default();
        m.commit_latency.observe(Duration::from_micros(700));
        m.heartbeats_edge.fetch_add(3, Relaxed);
        let text = m.render();
        assert!(text.contains("vcodr_heartbeats_total{client_type=\"EDGE\"} 3"));
        assert!(text.contains("vcodr_commit_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("vcodr_commit_seconds_count 1"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(!name.is_empty() && value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn every_metric_has_help_and_type() {
        let text = Metrics::default().render();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(name);
            let help = format!("# HELP {family} ");
            assert!(text.contains(&help), "{family} has no HELP");
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} has no TYPE"
            );
        }
        for name in [
            "vcodr_admin_connections_open",
            "vcodr_admin_connections_refused_total",
            "vcodr_admin_connections_timed_out_total",
            "vcodr_admin_requests_in_flight",
            "vcodr_admin_requests_refused_total",
            "vcodr_storage_failed",
            "vcodr_writes_outcome_unknown_total",
            "vcodr_writes_not_acknowledged_total",
            "vcodr_writes_blocked",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
    }
}
