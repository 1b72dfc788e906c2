//! Each setting's range and the relations between them.

use super::*;

#[test]
fn defaults_are_valid_and_relations_are_checked() {
    ServerConfig::default().validate().unwrap();
    let bad = ServerConfig {
        standby_grace_ms: 100,
        ..ServerConfig::default()
    };
    let err = bad.validate().unwrap_err();
    assert_eq!(err.key, "replication.standby_grace_ms");
    assert!(
        err.to_string().contains("shorter than failure detection"),
        "{err}"
    );
    let edge = EdgeConfig::new("e1", ClientType::Edge, ["a".into(), "a".into()]);
    assert_eq!(edge.validate().unwrap_err().key, "servers");
}

/// One setting out of its range: the error names the key, the value and the range.
fn refused(cfg: ServerConfig, key: &str, value: &str, range: &str) {
    let err = cfg.validate().unwrap_err();
    assert_eq!(err.key, key, "{err}");
    let text = err.to_string();
    assert!(text.contains(value), "{key}: {text}");
    assert!(text.contains(range), "{key}: {text}");
}

#[test]
fn every_server_setting_has_both_bounds() {
    let d = ServerConfig::default;
    let cases: Vec<(ServerConfig, &str, &str, &str)> = vec![
        (
            ServerConfig {
                peer_heartbeat_interval_ms: 9,
                ..d()
            },
            "replication.peer_heartbeat_interval_ms",
            "9 ms",
            "10..=60000 ms",
        ),
        (
            ServerConfig {
                peer_heartbeat_interval_ms: 60_001,
                standby_grace_ms: 3_600_000,
                ..d()
            },
            "replication.peer_heartbeat_interval_ms",
            "60001 ms",
            "10..=60000 ms",
        ),
        (
            ServerConfig {
                peer_heartbeat_interval_ms: u64::MAX,
                ..d()
            },
            "replication.peer_heartbeat_interval_ms",
            "18446744073709551615 ms",
            "10..=60000 ms",
        ),
        (
            ServerConfig {
                peer_failure_threshold: 0,
                ..d()
            },
            "replication.peer_failure_threshold",
            "0 is",
            "1..=100",
        ),
        (
            ServerConfig {
                peer_failure_threshold: 101,
                ..d()
            },
            "replication.peer_failure_threshold",
            "101 is",
            "1..=100",
        ),
        (
            ServerConfig {
                standby_grace_ms: 3_600_001,
                ..d()
            },
            "replication.standby_grace_ms",
            "3600001 ms",
            "10..=3600000 ms",
        ),
        (
            ServerConfig {
                standby_grace_ms: u64::MAX,
                ..d()
            },
            "replication.standby_grace_ms",
            "18446744073709551615 ms",
            "10..=3600000 ms",
        ),
        (
            ServerConfig {
                standby_grace_ms: 0,
                ..d()
            },
            "replication.standby_grace_ms",
            "0 ms",
            "10..=3600000 ms",
        ),
        (
            ServerConfig {
                max_batch_entries: 0,
                ..d()
            },
            "replication.max_batch_entries",
            "0 is",
            "1..=65536",
        ),
        (
            ServerConfig {
                max_batch_entries: 65_537,
                max_inflight_entries: 1 << 20,
                log_window_entries: 1 << 20,
                ..d()
            },
            "replication.max_batch_entries",
            "65537",
            "1..=65536",
        ),
        (
            ServerConfig {
                max_batch_bytes: 1023,
                ..d()
            },
            "replication.max_batch_bytes",
            "1023 bytes",
            "1024..=8388608 bytes",
        ),
        (
            ServerConfig {
                max_batch_bytes: usize::MAX,
                ..d()
            },
            "replication.max_batch_bytes",
            "is outside",
            "1024..=8388608 bytes",
        ),
        (
            ServerConfig {
                max_inflight_entries: 0,
                ..d()
            },
            "replication.max_inflight_entries",
            "0 is",
            "1..=1048576",
        ),
        (
            ServerConfig {
                max_inflight_entries: u64::MAX,
                ..d()
            },
            "replication.max_inflight_entries",
            "18446744073709551615",
            "1..=1048576",
        ),
        (
            ServerConfig {
                log_window_entries: 0,
                ..d()
            },
            "replication.log_window_entries",
            "0 is",
            "1..=1000000",
        ),
        (
            ServerConfig {
                log_window_entries: 1_000_001,
                ..d()
            },
            "replication.log_window_entries",
            "1000001",
            "1..=1000000",
        ),
        (
            ServerConfig {
                max_pending_writes: 0,
                ..d()
            },
            "limits.max_pending_writes",
            "0 is",
            "1..=1000000",
        ),
        (
            ServerConfig {
                max_pending_writes: usize::MAX,
                ..d()
            },
            "limits.max_pending_writes",
            "is outside",
            "1..=1000000",
        ),
        (
            ServerConfig {
                max_clients: 0,
                ..d()
            },
            "edges.max_clients",
            "0 is",
            "1..=10000000",
        ),
        (
            ServerConfig {
                max_clients: 10_000_001,
                ..d()
            },
            "edges.max_clients",
            "10000001",
            "1..=10000000",
        ),
        (
            ServerConfig {
                history_entries: 0,
                ..d()
            },
            "limits.history_entries",
            "0 is",
            "1..=100000",
        ),
        (
            ServerConfig {
                history_entries: 100_001,
                ..d()
            },
            "limits.history_entries",
            "100001",
            "1..=100000",
        ),
        (
            ServerConfig {
                switchover_max_ticks: 1,
                ..d()
            },
            "replication.switchover_max_ticks",
            "1 is",
            "2..=10000",
        ),
        (
            ServerConfig {
                switchover_max_ticks: u32::MAX,
                ..d()
            },
            "replication.switchover_max_ticks",
            "4294967295",
            "2..=10000",
        ),
    ];
    for (cfg, key, value, range) in cases {
        refused(cfg, key, value, range);
    }
    // The largest values of every range are valid together.
    ServerConfig {
        peer_heartbeat_interval_ms: 36_000,
        peer_failure_threshold: 100,
        standby_grace_ms: 3_600_000,
        max_batch_entries: 65_536,
        max_batch_bytes: crate::codec::DEFAULT_MAX_FRAME_BYTES / 2,
        max_inflight_entries: 1_048_576,
        log_window_entries: 1_000_000,
        max_pending_writes: 1_000_000,
        max_clients: 10_000_000,
        history_entries: 100_000,
        switchover_max_ticks: 10_000,
        ..d()
    }
    .validate()
    .unwrap();
}

#[test]
fn relations_between_server_settings_are_checked() {
    let d = ServerConfig::default;
    // The grace must cover failure detection (500 ms × 4 by default).
    let err = ServerConfig {
        standby_grace_ms: 1_999,
        ..d()
    }
    .validate()
    .unwrap_err();
    assert_eq!(err.key, "replication.standby_grace_ms");
    assert!(
        err.why
            .contains("1999 ms is shorter than failure detection (2000 ms"),
        "{err}"
    );
    ServerConfig {
        standby_grace_ms: 2_000,
        ..d()
    }
    .validate()
    .unwrap();
    // The largest heartbeat and threshold detect in 100 minutes: no grace covers it.
    let err = ServerConfig {
        peer_heartbeat_interval_ms: 60_000,
        peer_failure_threshold: 100,
        standby_grace_ms: 3_600_000,
        ..d()
    }
    .validate()
    .unwrap_err();
    assert!(err.why.contains("failure detection (6000000 ms"), "{err}");
    // Batches fit the in-flight window and the in-memory log window.
    let err = ServerConfig {
        max_inflight_entries: 1023,
        ..d()
    }
    .validate()
    .unwrap_err();
    assert_eq!(err.key, "replication.max_inflight_entries");
    assert!(err.why.contains("below max_batch_entries (1024)"), "{err}");
    let err = ServerConfig {
        log_window_entries: 1023,
        ..d()
    }
    .validate()
    .unwrap_err();
    assert_eq!(err.key, "replication.log_window_entries");
    assert_eq!(d().failure_detection_ms(), 2_000);
    let huge = ServerConfig {
        peer_heartbeat_interval_ms: u64::MAX,
        peer_failure_threshold: u32::MAX,
        ..d()
    };
    assert_eq!(
        huge.failure_detection_ms(),
        u64::MAX,
        "saturates, never wraps"
    );
}

#[test]
fn every_edge_setting_has_both_bounds() {
    let d = || EdgeConfig::new("e1", ClientType::Edge, ["a".into(), "b".into()]);
    d().validate().unwrap();
    let cases: Vec<(EdgeConfig, &str, &str, &str)> = vec![
        (
            EdgeConfig {
                heartbeat_interval_ms: 9,
                ..d()
            },
            "edges.heartbeat_interval_ms",
            "9 ms",
            "10..=600000 ms",
        ),
        (
            EdgeConfig {
                heartbeat_interval_ms: u64::MAX,
                ..d()
            },
            "edges.heartbeat_interval_ms",
            "18446744073709551615 ms",
            "10..=600000 ms",
        ),
        (
            EdgeConfig {
                jitter_percent: 51,
                ..d()
            },
            "edges.jitter_percent",
            "51 %",
            "0..=50 %",
        ),
        (
            EdgeConfig {
                missed_threshold: 0,
                ..d()
            },
            "edges.missed_threshold",
            "0 is",
            "1..=100",
        ),
        (
            EdgeConfig {
                missed_threshold: 101,
                ..d()
            },
            "edges.missed_threshold",
            "101 is",
            "1..=100",
        ),
        (
            EdgeConfig {
                cache_max_bytes: 1023,
                ..d()
            },
            "edges.monitoring_cache",
            "1023 bytes",
            "1024..=1073741824 bytes",
        ),
        (
            EdgeConfig {
                cache_max_bytes: usize::MAX,
                ..d()
            },
            "edges.monitoring_cache",
            "is outside",
            "1024..=1073741824 bytes",
        ),
        (
            EdgeConfig {
                batch_max_samples: 0,
                ..d()
            },
            "edges.batch_max_samples",
            "0 is",
            "1..=65536",
        ),
        (
            EdgeConfig {
                batch_max_samples: 65_537,
                ..d()
            },
            "edges.batch_max_samples",
            "65537",
            "1..=65536",
        ),
    ];
    for (cfg, key, value, range) in cases {
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.key, key, "{err}");
        assert!(
            err.why.contains(value) && err.why.contains(range),
            "{key}: {err}"
        );
    }
    let empty = EdgeConfig {
        client_id: String::new(),
        ..d()
    };
    assert_eq!(empty.validate().unwrap_err().key, "client_id");
}
