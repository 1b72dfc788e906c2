//! Tests of the configuration file: defaults, bounds, and errors that name the key.

use super::*;

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    for f in ["ca.pem", "a.pem", "a.key"] {
        std::fs::write(certs.join(f), "x").expect("write");
    }
    std::fs::write(certs.join("admin.token"), "0123456789abcdef0123").expect("write");
    dir
}

const MINIMAL: &str =
    "name = \"a\"\npeer_listen = \"127.0.0.1:7443\"\nedge_listen = \"127.0.0.1:7444\"\n";

#[test]
fn minimal_file_gets_every_default() {
    let dir = setup();
    let path = dir.path().join("a.toml");
    let c = FileConfig::parse(&path, MINIMAL).expect("valid");
    assert_eq!(c.admin_listen.to_string(), "127.0.0.1:8443");
    assert_eq!(c.data_dir, dir.path().join("data/a"));
    assert_eq!(c.admin_token_file, dir.path().join("certs/admin.token"));
    assert_eq!(c.core.on_standby_loss, OnStandbyLoss::Degrade);
    assert_eq!(c.core.standby_grace_ms, 60_000);
    assert_eq!(c.advertise_peer, "127.0.0.1:7443");
    assert_eq!(c.edges.driver(), QuicDriver::Hub);
    assert_eq!(c.runtime.worker_threads, 1);
    let quinn = format!("{MINIMAL}[edges]\nquic_driver = \"quinn\"\n");
    let c = FileConfig::parse(&path, &quinn).expect("valid");
    assert_eq!(c.edges.driver(), QuicDriver::Quinn);
}

#[test]
fn one_runtime_thread_is_a_current_thread_runtime() {
    use tokio::runtime::RuntimeFlavor;
    let flavor = |threads: usize| {
        let rt = RuntimeSection {
            worker_threads: threads,
        }
        .builder()
        .enable_all()
        .build()
        .expect("runtime");
        let flavor = rt.handle().runtime_flavor();
        let workers = rt.metrics().num_workers();
        (flavor, workers)
    };
    assert_eq!(RuntimeSection::default().worker_threads, 1);
    assert_eq!(flavor(1), (RuntimeFlavor::CurrentThread, 1));
    assert_eq!(flavor(3), (RuntimeFlavor::MultiThread, 3));
}

#[test]
fn errors_name_the_key() {
    let dir = setup();
    let path = dir.path().join("a.toml");
    let cases = [
        (
            format!("{MINIMAL}[replication]\non_standby_loss = \"maybe\"\n"),
            "replication.on_standby_loss",
        ),
        (
            format!("{MINIMAL}[replication]\nstandby_grace_ms = 10\n"),
            "replication.standby_grace_ms",
        ),
        (
            format!("{MINIMAL}[edges]\nquic_driver = \"tokio\"\n"),
            "edges.quic_driver",
        ),
        (
            "name = \"a\"\npeer_listen = \"nowhere\"\nedge_listen = \"127.0.0.1:7444\"\n".into(),
            "peer_listen",
        ),
        (
            "name = \"a\"\npeer_listen = \"127.0.0.1:7443\"\nedge_listen = \"127.0.0.1:7443\"\n"
                .into(),
            "edge_listen",
        ),
        (MINIMAL.replace("name = \"a\"", "name = \"zz\""), "tls_dir"),
    ];
    for (text, key) in cases {
        let err = FileConfig::parse(&path, &text).unwrap_err();
        assert!(
            err.to_string().contains(&format!("key `{key}`")),
            "{key}: {err}"
        );
    }
    let err = FileConfig::parse(&path, &format!("{MINIMAL}colour = \"blue\"\n")).unwrap_err();
    assert!(err.to_string().contains("colour"), "{err}");
    let err = FileConfig::parse(&path, "peer_listen = \"127.0.0.1:1\"\n").unwrap_err();
    assert!(err.to_string().contains("name"), "{err}");
}

/// `[section] key = value` on top of the minimal file: the error.
fn refused(dir: &tempfile::TempDir, section: &str, kv: &str) -> String {
    let path = dir.path().join("a.toml");
    match FileConfig::parse(&path, &format!("{MINIMAL}[{section}]\n{kv}\n")) {
        Ok(_) => panic!("[{section}] {kv} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_key_has_both_bounds_and_the_error_names_key_value_and_range() {
    let dir = setup();
    let cases = [
        (
            "replication",
            "standby_grace_ms = 9223372036854775807",
            "replication.standby_grace_ms",
            "9223372036854775807 ms is outside the allowed range 10..=3600000 ms",
        ),
        (
            "replication",
            "peer_heartbeat_interval_ms = 9223372036854775807",
            "replication.peer_heartbeat_interval_ms",
            "9223372036854775807 ms is outside the allowed range 10..=60000 ms",
        ),
        (
            "replication",
            "peer_heartbeat_interval_ms = 5",
            "replication.peer_heartbeat_interval_ms",
            "5 ms is outside the allowed range 10..=60000 ms",
        ),
        (
            "replication",
            "peer_failure_threshold = 1000",
            "replication.peer_failure_threshold",
            "1000 is outside the allowed range 1..=100",
        ),
        (
            "replication",
            "max_batch_entries = 1000000",
            "replication.max_batch_entries",
            "1000000 is outside the allowed range 1..=65536",
        ),
        (
            "replication",
            "max_batch_bytes = 100",
            "replication.max_batch_bytes",
            "100 bytes is outside the allowed range 1024..=8388608 bytes",
        ),
        (
            "replication",
            "max_inflight_entries = 9223372036854775807",
            "replication.max_inflight_entries",
            "9223372036854775807 is outside the allowed range 1..=1048576",
        ),
        (
            "replication",
            "log_window_entries = 9223372036854775807",
            "replication.log_window_entries",
            "is outside the allowed range 1..=1000000",
        ),
        (
            "replication",
            "switchover_max_ticks = 4294967295",
            "replication.switchover_max_ticks",
            "4294967295 is outside the allowed range 2..=10000",
        ),
        (
            "edges",
            "heartbeat_interval_ms = 9223372036854775807",
            "edges.heartbeat_interval_ms",
            "9223372036854775807 ms is outside the allowed range 10..=600000 ms",
        ),
        (
            "edges",
            "heartbeat_interval_ms = 9",
            "edges.heartbeat_interval_ms",
            "9 ms is outside the allowed range 10..=600000 ms",
        ),
        (
            "edges",
            "contact_save_interval_ms = 99",
            "edges.contact_save_interval_ms",
            "99 ms is outside the allowed range 100..=3600000 ms",
        ),
        (
            "edges",
            "contact_save_interval_ms = 9223372036854775807",
            "edges.contact_save_interval_ms",
            "is outside the allowed range 100..=3600000 ms",
        ),
        (
            "edges",
            "max_clients = 0",
            "edges.max_clients",
            "0 is outside the allowed range 1..=10000000",
        ),
        (
            "edges",
            "max_clients = 9223372036854775807",
            "edges.max_clients",
            "is outside the allowed range 1..=10000000",
        ),
        (
            "limits",
            "max_frame_bytes = 100",
            "limits.max_frame_bytes",
            "100 bytes is outside the allowed range 4096..=1073741824 bytes",
        ),
        (
            "limits",
            "max_frame_bytes = 9223372036854775807",
            "limits.max_frame_bytes",
            "is outside the allowed range 4096..=1073741824 bytes",
        ),
        (
            "limits",
            "max_pending_writes = 0",
            "limits.max_pending_writes",
            "0 is outside the allowed range 1..=1000000",
        ),
        (
            "limits",
            "max_pending_writes = 9223372036854775807",
            "limits.max_pending_writes",
            "is outside the allowed range 1..=1000000",
        ),
        (
            "limits",
            "max_admin_requests = 0",
            "limits.max_admin_requests",
            "0 is outside the allowed range 1..=65536",
        ),
        (
            "limits",
            "max_admin_connections = 0",
            "limits.max_admin_connections",
            "0 is outside the allowed range 1..=65536",
        ),
        (
            "limits",
            "max_admin_connections = 65537",
            "limits.max_admin_connections",
            "65537 is outside the allowed range 1..=65536",
        ),
        (
            "limits",
            "admin_handshake_timeout_ms = 99",
            "limits.admin_handshake_timeout_ms",
            "99 ms is outside the allowed range 100..=60000 ms",
        ),
        (
            "limits",
            "admin_handshake_timeout_ms = 60001",
            "limits.admin_handshake_timeout_ms",
            "60001 ms is outside the allowed range 100..=60000 ms",
        ),
        (
            "limits",
            "admin_header_timeout_ms = 99",
            "limits.admin_header_timeout_ms",
            "99 ms is outside the allowed range 100..=300000 ms",
        ),
        (
            "limits",
            "admin_header_timeout_ms = 300001",
            "limits.admin_header_timeout_ms",
            "300001 ms is outside the allowed range 100..=300000 ms",
        ),
        (
            "limits",
            "admin_idle_timeout_ms = 99",
            "limits.admin_idle_timeout_ms",
            "99 ms is outside the allowed range 100..=300000 ms",
        ),
        (
            "limits",
            "write_timeout_ms = 999",
            "limits.write_timeout_ms",
            "999 ms is outside the allowed range 1000..=10800000 ms",
        ),
        (
            "limits",
            "write_timeout_ms = 9223372036854775807",
            "limits.write_timeout_ms",
            "9223372036854775807 ms is outside the allowed range 1000..=10800000 ms",
        ),
        (
            "runtime",
            "worker_threads = 0",
            "runtime.worker_threads",
            "0 is outside the allowed range 1..=64",
        ),
        (
            "runtime",
            "worker_threads = 65",
            "runtime.worker_threads",
            "65 is outside the allowed range 1..=64",
        ),
    ];
    for (section, kv, key, says) in cases {
        let err = refused(&dir, section, kv);
        assert!(err.contains(&format!("key `{key}`")), "{kv}: {err}");
        assert!(err.contains(says), "{kv}: {err}");
    }
}

#[test]
fn relations_between_timeouts_and_limits_are_checked() {
    let dir = setup();
    let path = dir.path().join("a.toml");
    // The grace covers failure detection (core).
    let err = refused(&dir, "replication", "standby_grace_ms = 1000");
    assert!(
        err.contains("shorter than failure detection (2000 ms"),
        "{err}"
    );
    // The write timeout outlasts the wait for the grace: unset, it follows the grace.
    let c = FileConfig::parse(&path, MINIMAL).unwrap();
    assert_eq!(c.write_timeout_ms, 60_000 + 5 * 500 + 10_000);
    let c = FileConfig::parse(&path, &format!("{MINIMAL}[replication]\nstandby_grace_ms = 3000\npeer_heartbeat_interval_ms = 200\npeer_failure_threshold = 3\n")).unwrap();
    assert_eq!(c.write_timeout_ms, 3_000 + 4 * 200 + 10_000);
    let err = refused(&dir, "limits", "write_timeout_ms = 62500");
    assert!(err.contains("key `limits.write_timeout_ms`: 62500 ms does not exceed the longest wait for the grace (62500 ms"), "{err}");
    assert!(err.contains("leave it unset: 72500 ms"), "{err}");
    FileConfig::parse(
        &path,
        &format!("{MINIMAL}[limits]\nwrite_timeout_ms = 62501\n"),
    )
    .unwrap();
    // ...and a planned switchover.
    let text = format!("{MINIMAL}[replication]\nswitchover_max_ticks = 10000\npeer_heartbeat_interval_ms = 1000\nstandby_grace_ms = 10000\n[limits]\nwrite_timeout_ms = 9000000\n");
    let err = FileConfig::parse(&path, &text).unwrap_err().to_string();
    assert!(
        err.contains("a planned switchover's longest run (10000000 ms"),
        "{err}"
    );
    // Frames hold two batches.
    let err = refused(&dir, "limits", "max_frame_bytes = 1048576");
    assert!(
        err.contains("at least twice replication.max_batch_bytes (1048576)"),
        "{err}"
    );
    // A request needs a connection.
    let err = refused(&dir, "limits", "max_admin_connections = 100");
    assert!(
        err.contains(
            "key `limits.max_admin_requests`: 256 is above limits.max_admin_connections (100)"
        ),
        "{err}"
    );
    // The idle timeout is within the header timeout, which also bounds the wait for a request.
    let err = refused(&dir, "limits", "admin_idle_timeout_ms = 10001");
    assert!(err.contains("key `limits.admin_idle_timeout_ms`: 10001 ms is above limits.admin_header_timeout_ms (10000 ms)"), "{err}");
    let c = FileConfig::parse(
        &path,
        &format!("{MINIMAL}[limits]\nadmin_idle_timeout_ms = 10000\nmax_admin_connections = 256\n"),
    )
    .unwrap();
    assert_eq!(
        c.limits.admin().idle_timeout,
        std::time::Duration::from_secs(10)
    );
}

#[test]
fn the_largest_u64_is_refused_by_its_range() {
    let dir = setup();
    for (section, key, range) in [
        ("replication", "standby_grace_ms", "10..=3600000 ms"),
        ("replication", "peer_heartbeat_interval_ms", "10..=60000 ms"),
        ("edges", "heartbeat_interval_ms", "10..=600000 ms"),
        ("limits", "write_timeout_ms", "1000..=10800000 ms"),
        ("limits", "admin_header_timeout_ms", "100..=300000 ms"),
    ] {
        let err = refused(&dir, section, &format!("{key} = 18446744073709551615"));
        assert!(
            err.ends_with(&format!(
                "key `{section}.{key}`: 18446744073709551615 ms is outside the allowed range {range}"
            )),
            "{err}"
        );
    }
}
