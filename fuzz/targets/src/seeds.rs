//! Seed inputs of every target, made of real messages: each wire message
//! kind of `vcodr_core::testing::wire_samples`, hellos, datagrams as both
//! QUIC drivers frame them, the JSON-RPC requests of the README, the CLI and
//! the runbook test, and the README's config files. `fuzz-seeds DIR` writes
//! them to `DIR/<target>/`; the replay test feeds them too, so a seed that
//! `cargo fuzz cmin` left out is still checked.

use serde::Serialize;
use vcodr_core::codec::{to_frame, Hello, PROTOCOL_VERSION};
use vcodr_core::testing::wire_samples;
use vcodr_transport::fuzzing as transport;

/// One seed: the target it is for, a name for its file, its bytes.
pub type Seed = (&'static str, String, Vec<u8>);

fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
    to_frame(msg).expect("a sample message encodes")
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut seeds: Vec<Seed> = Vec::new();
    // Small enough for libFuzzer's input lengths: three entries.
    let (peer, edge, server) = wire_samples(3);
    let peer: Vec<Vec<u8>> = peer.iter().map(frame).collect();
    let edge: Vec<Vec<u8>> = edge.iter().map(frame).collect();
    let server: Vec<Vec<u8>> = server.iter().map(frame).collect();
    for (target, frames) in [
        ("frame_peer", &peer),
        ("frame_edge", &edge),
        ("frame_server", &server),
    ] {
        for (i, f) in frames.iter().enumerate() {
            seeds.push((target, format!("kind-{i}"), f.clone()));
        }
        seeds.push((target, "back-to-back".into(), frames.concat()));
    }
    let hellos = [
        Hello::ours("vcodr 0.1.0"),
        Hello {
            min_version: PROTOCOL_VERSION + 1,
            max_version: PROTOCOL_VERSION + 2,
            software: "vcodr 9".into(),
        },
        Hello {
            min_version: 0,
            max_version: u16::MAX,
            software: String::new(),
        },
    ];
    for (i, h) in hellos.iter().enumerate() {
        seeds.push(("hello", format!("hello-{i}"), frame(h)));
    }
    for (i, f) in edge.iter().enumerate() {
        let d = transport::encode_datagram(transport::DGRAM_REQUEST, i as u64, f);
        seeds.push(("datagram", format!("request-{i}"), d));
    }
    for (i, f) in server.iter().enumerate() {
        let d = transport::encode_datagram(transport::DGRAM_RESPONSE, i as u64, f);
        seeds.push(("datagram", format!("response-{i}"), d));
    }
    for (name, kind) in [
        ("refused", transport::DGRAM_REFUSED),
        ("too-large", transport::DGRAM_TOO_LARGE),
    ] {
        seeds.push((
            "datagram",
            name.into(),
            transport::encode_datagram(kind, 7, &[]),
        ));
    }
    let unit = transport::encode_datagram(transport::DGRAM_REQUEST, 1, &frame(&()));
    seeds.push(("datagram", "peer-request".into(), unit));
    // Stream bytes: a chunk-size byte, then frames back to back.
    for (i, (control, frames)) in [
        (0x00, edge.concat()),
        (0x07, peer[..4].concat()),
        (0x80 | 0x1f, [frame(&hellos[0]), edge[1].clone()].concat()),
        (0x7f, server.concat()),
    ]
    .into_iter()
    .enumerate()
    {
        let mut bytes = vec![control];
        bytes.extend(frames);
        seeds.push(("frame_reader", format!("stream-{i}"), bytes));
    }
    for (i, body) in RPC_REQUESTS.iter().enumerate() {
        seeds.push((
            "rpc_request",
            format!("request-{i}"),
            body.as_bytes().to_vec(),
        ));
    }
    for (i, text) in CONFIGS.iter().enumerate() {
        seeds.push((
            "config_toml",
            format!("config-{i}"),
            text.as_bytes().to_vec(),
        ));
    }
    seeds
}

/// Requests as the README, `vcodr ctl` and `server/tests/runbook.rs` send them.
const RPC_REQUESTS: [&str; 22] = [
    r#"{"jsonrpc":"2.0","id":1,"method":"disasterRecovery/getReplicationStatus","params":{"with":["clientContact","clientCount","stateHistory","storageInfo"]}}"#,
    r#"{"jsonrpc":"2.0","id":2,"method":"disasterRecovery/getReplicationStatus","params":{}}"#,
    r#"{"jsonrpc":"2.0","id":3,"method":"disasterRecovery/prepareForStandby","params":{}}"#,
    r#"{"jsonrpc":"2.0","id":4,"method":"disasterRecovery/configureActiveForReplication","params":{"standbyList":[{"standbyAddress":"127.0.0.1:9443","standbyUuid":"00000000000000000000000000000abc"}],"pairingToken":"0x00ff-00ff"}}"#,
    r#"{"jsonrpc":"2.0","id":5,"method":"disasterRecovery/getReplicationBlob","params":{}}"#,
    r#"{"jsonrpc":"2.0","id":6,"method":"disasterRecovery/transitionToStandby","params":{"activeAccessFromStandby":"vcodr1;00000000000000000000000000000007;00000000000000000000000000000009;[::1]:7443"}}"#,
    r#"{"jsonrpc":"2.0","id":7,"method":"disasterRecovery/promoteStandbyToActive","params":{"force":true}}"#,
    r#"{"jsonrpc":"2.0","id":8,"method":"disasterRecovery/promoteStandbyToActive","params":{}}"#,
    r#"{"jsonrpc":"2.0","id":9,"method":"disasterRecovery/demoteActive","params":{"force":false}}"#,
    r#"{"jsonrpc":"2.0","id":10,"method":"disasterRecovery/removeStandby","params":{"force":true}}"#,
    r#"{"jsonrpc":"2.0","id":11,"method":"disasterRecovery/rejoinAsStandby","params":{}}"#,
    r#"{"jsonrpc":"2.0","id":12,"method":"disasterRecovery/getDivergenceArchive","params":{"offset":0,"limit":100}}"#,
    r#"{"jsonrpc":"2.0","id":13,"method":"configuration/get","params":{"key":"site/1"}}"#,
    r#"{"jsonrpc":"2.0","id":14,"method":"configuration/list","params":{}}"#,
    r#"{"jsonrpc":"2.0","id":15,"method":"configuration/put","params":{"key":"site/1","value":{"vlan":10,"tags":["a",null,1.5e3,true]}}}"#,
    r#"{"jsonrpc":"2.0","id":16,"method":"configuration/delete","params":{"key":"site/1"}}"#,
    r#"{"jsonrpc":"2.0","id":17,"method":"monitoring/getClientSamples","params":{"clientId":"edge-1","afterSeq":10,"limit":1000}}"#,
    r#"{"jsonrpc":"2.0","id":"s","method":"monitoring/getSummary"}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"configuration/explode","params":{}}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"configuration/put","params":{"value":1}}"#,
    r#"{"jsonrpc":"1.0","id":null,"method":"configuration/list","params":[1]}"#,
    "{not json",
];

/// The README's config files and the minimal one of the config tests.
const CONFIGS: [&str; 4] = [
    r#"name = "a"
data_dir = "data/a"
admin_listen = "127.0.0.1:8443"
peer_listen  = "127.0.0.1:7443"
edge_listen  = "127.0.0.1:7444"
tls_dir = "certs"
admin_token_file = "certs/admin.token"

[replication]
on_standby_loss = "degrade"     # or "block": refuse writes rather than lose RPO 0
standby_grace_ms = 60000
"#,
    "name = \"a\"\npeer_listen = \"127.0.0.1:7443\"\nedge_listen = \"127.0.0.1:7444\"\n",
    r#"name = "b"
admin_listen = "[::1]:8444"
peer_listen = "[::1]:9443"
edge_listen = "0.0.0.0:9444"
advertise_peer = "b.example:9443"
advertise_edge = "b.example:9444"
advertise_admin = "b.example:8444"

[replication]
on_standby_loss = "block"
standby_grace_ms = 2000
peer_heartbeat_interval_ms = 500
peer_failure_threshold = 4
max_batch_entries = 1024
max_batch_bytes = 1048576
max_inflight_entries = 8192
log_window_entries = 20000
switchover_max_ticks = 20

[edges]
heartbeat_interval_ms = 1000
max_clients = 200000
contact_save_interval_ms = 10000
quic_driver = "quinn"

[limits]
max_frame_bytes = 16777216
max_pending_writes = 20000
max_admin_requests = 256
write_timeout_ms = 30000
"#,
    "name = \"a\"\npeer_listen = \"127.0.0.1:7443\"\nedge_listen = \"127.0.0.1:7443\"\ncolour = 'blue'\n[edges]\nquic_driver = \"tokio\"\n",
];
