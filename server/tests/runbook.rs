//! The operator's runbook on real processes and sockets (127.0.0.1, free
//! ports): certificates from `vcodr certs init`, two `vcodr serve`, pairing,
//! writes through `vcodr ctl` and JSON-RPC, refusals, planned switchover,
//! rejoin, kill -9 during a write burst, disaster promotion, restart of the
//! killed server as a zombie. Every wait polls with a deadline.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vcodr_server::tools::cluster::{temp_dir, ProcCluster, FAST_TIMERS};
use vcodr_server::tools::ctl::{ApiError, Client};

const A: usize = 0;
const B: usize = 1;
const T: Duration = Duration::from_secs(30);

fn vcodr() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vcodr"))
}

/// Runs `vcodr ctl` against server `i`; returns (exit code, stdout, stderr).
fn ctl(cl: &ProcCluster, i: usize, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(vcodr())
        .args(["ctl", "--server", &cl.servers[i].url(), "--token-file"])
        .arg(&cl.token_file)
        .args(args)
        .output()
        .expect("running vcodr ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn api_error(r: anyhow::Result<Value>) -> ApiError {
    match r {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => e
            .downcast_ref::<ApiError>()
            .cloned()
            .unwrap_or_else(|| panic!("not an API error: {e:#}")),
    }
}

async fn docs(c: &Client) -> BTreeMap<String, u64> {
    let list = c.call("configuration/list", json!({})).await.expect("list");
    list.as_array()
        .expect("array")
        .iter()
        .map(|d| {
            (
                d["key"].as_str().unwrap().to_string(),
                d["version"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_runbook_on_real_processes() {
    let dir = temp_dir("vcodr-runbook").unwrap();
    // Certificates through the CLI, exactly as an operator makes them.
    let st = Command::new(vcodr())
        .args(["certs", "init", "--out"])
        .arg(dir.join("certs0"))
        .args(["--servers", "a,b", "--edges", "2"])
        .status()
        .unwrap();
    assert!(st.success());
    for f in [
        "ca.pem",
        "a.pem",
        "a.key",
        "b.pem",
        "b.key",
        "edge-1.pem",
        "edge-2.key",
        "admin.token",
    ] {
        assert!(dir.join("certs0").join(f).exists(), "certs init wrote {f}");
    }
    let again = Command::new(vcodr())
        .args(["certs", "init", "--out"])
        .arg(dir.join("certs0"))
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "an existing CA is never overwritten"
    );
    let mut cl = ProcCluster::create(vcodr(), &dir, &["a", "b"], FAST_TIMERS).unwrap();
    cl.start(A).unwrap();
    cl.start(B).unwrap();

    // 1. Prepare the standby and configure the active with `vcodr ctl`.
    let (code, out, err) = ctl(&cl, B, &["--json", "prepare-standby"]);
    assert_eq!(code, 0, "{err}");
    let prep: Value = serde_json::from_str(&out).unwrap();
    let uuid = prep["vcoUuid"].as_str().unwrap().to_string();
    let token = prep["pairingToken"].as_str().unwrap().to_string();
    let peer = cl.servers[B].peer.clone();
    let (code, out, err) = ctl(
        &cl,
        A,
        &[
            "configure-active",
            "--standby-address",
            &peer,
            "--standby-uuid",
            &uuid,
            "--pairing-token",
            &token,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pairId"), "{out}");
    cl.wait_state(A, "ACTIVE", "STANDBY_RUNNING", T)
        .await
        .unwrap();
    cl.wait_state(B, "STANDBY", "STANDBY_RUNNING", T)
        .await
        .unwrap();
    let (code, out, _) = ctl(&cl, A, &["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("STANDBY_RUNNING") && out.contains("SYNC"),
        "{out}"
    );

    // 2. 500 documents: 20 through `vcodr ctl put`, 480 through JSON-RPC (8 writers).
    for i in 0..20 {
        let (code, out, err) = ctl(
            &cl,
            A,
            &["put", &format!("cli/{i}"), &format!("{{\"n\":{i}}}")],
        );
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with(&format!("cli/{i} version ")), "{out}");
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let c = cl.client(A).clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..60 {
                let k = format!("rpc/{w}/{i}");
                c.call(
                    "configuration/put",
                    json!({"key": k, "value": {"w": w, "i": i, "tags": ["x", "y"]}}),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let written = docs(cl.client(A)).await;
    assert_eq!(written.len(), 500);
    let (_, out, _) = ctl(&cl, A, &["get", "rpc/3/7"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, json!({"w": 3, "i": 7, "tags": ["x", "y"]}));

    // 3. The standby refuses configuration calls, naming the active.
    let e = api_error(
        cl.client(B)
            .call("configuration/put", json!({"key": "no", "value": 1}))
            .await,
    );
    assert_eq!(e.code, -32001);
    assert!(e.message.contains(&cl.servers[A].admin), "{}", e.message);
    assert_eq!(e.data, Some(json!({"activeAddress": cl.servers[A].admin})));
    let (code, _, err) = ctl(&cl, B, &["put", "no", "1"]);
    assert_eq!(code, 3);
    assert!(
        err.contains("STANDBY") && err.contains(&cl.servers[A].admin),
        "{err}"
    );

    // Bad input changes nothing: wrong token, malformed JSON, unknown method, bad params.
    let bad = cl.client(A).with_token("wrong-token-0000000000");
    let (status, body) = bad.post_raw(br#"{"jsonrpc":"2.0","id":1,"method":"configuration/put","params":{"key":"evil","value":1}}"#.to_vec()).await.unwrap();
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], -32004);
    let (_, body) = cl.client(A).post_raw(b"{not json".to_vec()).await.unwrap();
    assert_eq!(body["error"]["code"], -32700);
    // The portal takes POST only; a GET of it is no call.
    let (status, body) = cl.client(A).get("/portal/").await.unwrap();
    assert_eq!((status, body.as_str()), (405, ""));
    let e = api_error(cl.client(A).call("configuration/explode", json!({})).await);
    assert_eq!(e.code, -32601);
    assert!(e.message.contains("configuration/explode"));
    let e = api_error(
        cl.client(A)
            .call("configuration/put", json!({"value": 1}))
            .await,
    );
    assert!(e.message.contains("`key`"), "{}", e.message);
    assert_eq!(docs(cl.client(A)).await, written, "nothing changed");
    let (code, body) = cl.client(A).get("/healthz").await.unwrap();
    assert_eq!((code, body.trim()), (200, "ok a ACTIVE"));

    // 4. Planned switchover: promote --force on the standby.
    let (code, out, err) = ctl(&cl, B, &["promote", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("epoch          2") && out.contains("dataLossBound  0"),
        "{out}"
    );
    assert_eq!(
        docs(cl.client(B)).await,
        written,
        "the new server has all 500"
    );
    cl.wait_state(A, "ZOMBIE", "ZOMBIE", T).await.unwrap();
    let e = api_error(
        cl.client(A)
            .call("configuration/put", json!({"key": "z", "value": 1}))
            .await,
    );
    assert!(
        e.message.contains("ZOMBIE") && e.message.contains(&cl.servers[B].admin),
        "{}",
        e.message
    );

    // 5. Rejoin the zombie: DR is back the other way round.
    let (code, _, err) = ctl(&cl, A, &["rejoin"]);
    assert_eq!(code, 0, "{err}");
    cl.wait_state(A, "STANDBY", "STANDBY_RUNNING", T)
        .await
        .unwrap();
    cl.wait_state(B, "ACTIVE", "STANDBY_RUNNING", T)
        .await
        .unwrap();

    // 6. kill -9 the active (b) during a burst of concurrent writes.
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..16 {
        let c = cl.client(B).clone();
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..4_000 {
                let k = format!("burst/{w}/{i}");
                match c
                    .call("configuration/put", json!({"key": k, "value": i}))
                    .await
                {
                    Ok(r) => {
                        acked.push((k, r["version"].as_u64().unwrap()));
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    let metrics_before = cl.client(B).get("/metrics").await.unwrap().1;
    assert!(
        metrics_before.contains("vcodr_role{role=\"ACTIVE\"} 1"),
        "{metrics_before}"
    );
    // The kill lands mid-burst: after 300 acknowledgements, with 16 writers in flight.
    let deadline = std::time::Instant::now() + T;
    while count.load(std::sync::atomic::Ordering::Relaxed) < 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "the burst did not get going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cl.kill9(B);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(
        acked.len() >= 300 && acked.len() < 64_000,
        "{} acknowledged: the kill interrupted the burst",
        acked.len()
    );
    cl.wait_state(A, "STANDBY", "FAILURE_GET_ACTIVE_STATUS", T)
        .await
        .unwrap();
    let r = cl
        .client(A)
        .call("disasterRecovery/promoteStandbyToActive", json!({}))
        .await
        .unwrap();
    assert_eq!(r["epoch"], 3);
    let have = docs(cl.client(A)).await;
    for (k, v) in &acked {
        assert_eq!(
            have.get(k),
            Some(v),
            "acknowledged write {k} (version {v}) is on the promoted server"
        );
    }
    for (k, v) in &written {
        assert_eq!(have.get(k), Some(v));
    }
    let metrics = cl.client(A).get("/metrics").await.unwrap().1;
    assert!(
        metrics.contains("vcodr_role{role=\"STANDALONE\"} 1") && metrics.contains("vcodr_epoch 3"),
        "{metrics}"
    );

    // 7. Restart the killed server: back as ACTIVE at epoch 2, then it learns epoch 3 and turns ZOMBIE.
    cl.start(B).unwrap();
    let z = cl.wait_state(B, "ZOMBIE", "ZOMBIE", T).await.unwrap();
    assert_eq!(z["epoch"], 2);
    assert_eq!(z["fencedBy"], 3);
    let log = std::fs::read_to_string(&cl.servers[B].log).unwrap();
    assert!(
        log.contains("started as ACTIVE / STANDBY_RUNNING at epoch 2")
            || log.contains("started as ACTIVE / STANDBY_SYNC at epoch 2"),
        "{log}"
    );
    let hist = z["stateHistory"].as_array().unwrap();
    assert!(
        hist.iter()
            .any(|t| t["to"] == "ZOMBIE" && t["reason"].as_str().unwrap().contains("fenced")),
        "{hist:?}"
    );

    // Graceful stop finishes cleanly.
    assert_eq!(cl.stop(A).unwrap(), Some(0));
    cl.stop_all();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_config_file_exits_non_zero_naming_the_key() {
    let dir = temp_dir("vcodr-badcfg").unwrap();
    let cfg = dir.join("a.toml");
    std::fs::write(&cfg, "name = \"a\"\npeer_listen = \"127.0.0.1:1\"\nedge_listen = \"127.0.0.1:2\"\n[replication]\non_standby_loss = \"sometimes\"\n").unwrap();
    let out = Command::new(vcodr())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("replication.on_standby_loss") && err.contains("sometimes"),
        "{err}"
    );
    std::fs::write(
        &cfg,
        "name = \"a\"\npeer_listen = \"127.0.0.1:1\"\nedge_listen = \"127.0.0.1:2\"\nwhat = 1\n",
    )
    .unwrap();
    let out = Command::new(vcodr())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("what"), "{err}");
    let out = Command::new(vcodr())
        .args(["serve", "--config"])
        .arg(dir.join("missing.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("missing.toml"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
