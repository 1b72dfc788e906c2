//! The divergence archive at scale, on a real pair (127.0.0.1, free ports),
//! driven as an operator would: `degrade` policy, the standby cut off
//! (SIGSTOP), thousands of writes acknowledged unprotected on the active,
//! the active lost (kill -9), the standby promoted by disaster, the old
//! active restarted (a zombie) and rejoined. Every write the promoted server
//! never had is archived, and `vcodr ctl archive` lists every one of them
//! with the total — as text, as `--json` and as a `--out` export, which
//! agree. Every wait polls with a deadline.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vcodr_server::tools::cluster::{temp_dir, ProcCluster, FAST_TIMERS};

const A: usize = 0;
const B: usize = 1;
const T: Duration = Duration::from_secs(60);
/// Writes acknowledged while the standby is cut off: more than three pages
/// of `vcodr ctl archive` (1,000 rows per call).
const UNPROTECTED_WRITES: usize = 3_200;
const WRITERS: usize = 16;

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

/// Removes the deployment directory when the test ends, passed or not
/// (the cluster's own Drop kills its servers first: declare it after this).
struct DirGuard(std::path::PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("deployment kept for its logs: {}", self.0.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_archived_entries_are_all_listed_with_their_total() {
    let dir = temp_dir("vcodr-archive").unwrap();
    let _dir = DirGuard(dir.clone());
    let mut cl = ProcCluster::create(vcodr(), &dir, &["a", "b"], FAST_TIMERS).unwrap();
    cl.start(A).unwrap();
    cl.start(B).unwrap();
    cl.pair(A, B, T).await.unwrap();
    let (code, out, err) = ctl(&cl, A, &["put", "before/cut", "1"]);
    assert_eq!(code, 0, "{out}{err}");

    // The standby is cut off: the active degrades (policy `degrade`, 3 s grace).
    // The writes start only once it has: a write made while the active's link
    // to the stopped standby is still up is shipped at once, lands in the
    // standby's socket buffer, and is taken when the standby resumes: then
    // the standby holds it and it is not divergent.
    cl.signal(B, "STOP").unwrap();
    cl.wait_state(A, "ACTIVE", "FAILURE_GET_STANDBY_STATUS", T)
        .await
        .unwrap();
    cl.wait_status(A, "writes acknowledged without the standby", T, |s| {
        s["replication"]["mode"] == "ASYNC_DEGRADED"
    })
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let c = cl.client(A).clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in (w..UNPROTECTED_WRITES).step_by(WRITERS) {
                let key = format!("unprotected/{i:05}");
                c.call("configuration/put", json!({"key": key, "value": {"i": i}}))
                    .await
                    .unwrap_or_else(|e| panic!("{key}: {e:#}"));
                acked.push(key);
            }
            acked
        }));
    }
    let mut unprotected = BTreeSet::new();
    for t in tasks {
        unprotected.extend(t.await.unwrap());
    }
    assert_eq!(unprotected.len(), UNPROTECTED_WRITES);
    let s = cl.client(A).status().await.unwrap();
    assert_eq!(s["replication"]["mode"], "ASYNC_DEGRADED", "{s}");
    assert!(
        s["replication"]["unprotectedWrites"].as_u64().unwrap() >= UNPROTECTED_WRITES as u64,
        "{s}"
    );

    // The active is lost; the standby wakes up alone and is promoted by disaster.
    cl.kill9(A);
    cl.signal(B, "CONT").unwrap();
    cl.wait_state(B, "STANDBY", "FAILURE_GET_ACTIVE_STATUS", T)
        .await
        .unwrap();
    let (code, out, err) = ctl(&cl, B, &["promote"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("epoch          2"), "{out}");

    // The old active comes back fenced, and rejoins: what b lacks is archived.
    cl.start(A).unwrap();
    cl.wait_state(A, "ZOMBIE", "ZOMBIE", T).await.unwrap();
    let (code, out, err) = ctl(&cl, A, &["rejoin"]);
    assert_eq!(code, 0, "{out}{err}");
    cl.wait_state(A, "STANDBY", "STANDBY_RUNNING", T)
        .await
        .unwrap();
    cl.wait_state(B, "ACTIVE", "STANDBY_RUNNING", T)
        .await
        .unwrap();

    // JSON-RPC: a page says the total and where the next one starts.
    let page = cl
        .client(A)
        .call("disasterRecovery/getDivergenceArchive", json!({}))
        .await
        .unwrap();
    let total = page["total"].as_u64().unwrap();
    assert!(total >= UNPROTECTED_WRITES as u64, "{total}");
    assert_eq!(
        (&page["offset"], &page["limit"], &page["next"]),
        (&json!(0), &json!(100), &json!(100))
    );
    assert_eq!(page["entries"].as_array().unwrap().len(), 100);
    let last = cl
        .client(A)
        .call(
            "disasterRecovery/getDivergenceArchive",
            json!({"offset": total - 5, "limit": 10}),
        )
        .await
        .unwrap();
    assert_eq!(last["entries"].as_array().unwrap().len(), 5);
    assert_eq!(last["next"], Value::Null, "the last page says so");
    let info = cl.client(A).status().await.unwrap();
    assert_eq!(info["storageInfo"]["archive_entries"], total, "{info}");

    // `vcodr ctl archive`: every entry, the total first and last.
    let (code, out, err) = ctl(&cl, A, &["archive"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "divergence archive of {}: {total} entries",
            cl.servers[A].admin
        )
    );
    assert_eq!(
        *lines.last().unwrap(),
        format!(
            "{total} of {total} entries listed (positions 0..={})",
            total - 1
        )
    );
    let rows = &lines[1..lines.len() - 1];
    assert_eq!(rows.len() as u64, total, "one line per archived entry");
    for (i, row) in rows.iter().enumerate() {
        let position: u64 = row.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!(position, i as u64, "{row}");
    }
    for key in [
        "unprotected/00000",
        "unprotected/01234",
        "unprotected/03199",
    ] {
        assert!(
            rows.iter()
                .any(|r| r.contains(&format!("\"key\":\"{key}\""))),
            "{key} is listed"
        );
    }

    // `--json`: one document with every entry; each unprotected write is there.
    let (code, out, err) = ctl(&cl, A, &["--json", "archive"]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let entries = doc["entries"].as_array().unwrap();
    assert_eq!(
        (&doc["total"], &doc["count"], &doc["next"]),
        (&json!(total), &json!(total), &Value::Null)
    );
    assert_eq!(entries.len() as u64, total);
    let archived: BTreeSet<String> = entries
        .iter()
        .filter_map(|e| e["entry"]["key"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<_> = unprotected.difference(&archived).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged unprotected writes not archived: {missing:?}"
    );

    // `--out FILE`: the same entries as JSON lines, written atomically.
    let file = dir.join("archive.jsonl");
    let (code, out, err) = ctl(&cl, A, &["archive", "--out", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!(
            "wrote {total} of {total} entries (positions 0..={}) to {} as JSON lines",
            total - 1,
            file.display()
        )
    );
    let exported: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(&exported, entries, "--out and --json agree");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // A window, and where the rest starts.
    let (code, out, err) = ctl(&cl, A, &["archive", "--offset", "10", "--limit", "25"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 25 + 2, "{out}");
    assert_eq!(
        *lines.last().unwrap(),
        format!("25 of {total} entries listed (positions 10..=34); more from --offset 35")
    );
    let (code, out, err) = ctl(
        &cl,
        A,
        &["--json", "archive", "--offset", "10", "--limit", "25"],
    );
    assert_eq!(code, 0, "{err}");
    let window: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(window["entries"].as_array().unwrap()[..], entries[10..35]);
    assert_eq!(window["next"], 35);

    // An export that cannot be written fails naming the file, leaving nothing.
    let bad = dir.join("no-such-dir").join("archive.jsonl");
    let (code, _, err) = ctl(&cl, A, &["archive", "--out", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("no-such-dir"), "{err}");

    cl.stop_all();
}
