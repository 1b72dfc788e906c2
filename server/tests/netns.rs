//! The operator's runbook on non-loopback addresses: three network
//! namespaces this test makes (a and b, one server each, and c for the
//! operator's `vcodr ctl` and `vcodr edge-sim`), joined by a bridge in c,
//! with 10.99.0.10 (a), 10.99.0.11 (b) and 10.99.0.12 (c). Certificates
//! from `vcodr certs init` naming each server's DNS name and address, two
//! `vcodr serve`, pairing through `ctl` (by address and by DNS name, which
//! c's own /etc/hosts resolves), a write, a planned switchover, and
//! `edge-sim` edges following the promoted server. Nothing is added to the
//! test machine's own namespace; the namespaces, c's hosts file and every
//! process are removed when the test ends, passed or not (guards, by PID).
//!
//! Needs root (namespaces) and iproute2 (`vcodr_testkit` installs it when
//! root); otherwise it fails saying what is missing.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vcodr_server::tools::cluster::{temp_dir, FAST_TIMERS};

const T: Duration = Duration::from_secs(60);
const A_IP: &str = "10.99.0.10";
const B_IP: &str = "10.99.0.11";
const C_IP: &str = "10.99.0.12";

fn vcodr() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vcodr"))
}

/// Runs `ip` with `args`; panics naming the command if it fails.
fn ip(ip: &Path, args: &[&str]) {
    let out = Command::new(ip).args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The three namespaces, and c's hosts file; removed on drop.
struct Netns {
    ip: PathBuf,
    names: Vec<String>,
    /// `/etc/netns/<c>`, c's own /etc/hosts.
    etc: Option<PathBuf>,
    /// Whether this test made `/etc/netns` itself (removed again if empty).
    made_etc_netns: bool,
}

impl Netns {
    fn create(ip_path: &Path) -> Netns {
        let tag = format!("vcodr-{}", std::process::id());
        let mut ns = Netns {
            ip: ip_path.to_path_buf(),
            names: Vec::new(),
            etc: None,
            made_etc_netns: false,
        };
        for n in ["a", "b", "c"] {
            let name = format!("{tag}-{n}");
            ip(ip_path, &["netns", "add", &name]);
            ns.names.push(name);
        }
        let [a, b, c] = [ns.a(), ns.b(), ns.c()].map(str::to_string);
        ip(ip_path, &["-n", &c, "link", "add", "br0", "type", "bridge"]);
        ip(
            ip_path,
            &["-n", &c, "addr", "add", &format!("{C_IP}/24"), "dev", "br0"],
        );
        ip(ip_path, &["-n", &c, "link", "set", "br0", "up"]);
        ip(ip_path, &["-n", &c, "link", "set", "lo", "up"]);
        for (ns_name, addr, port) in [(&a, A_IP, "va"), (&b, B_IP, "vb")] {
            ip(
                ip_path,
                &[
                    "-n", ns_name, "link", "add", "eth0", "type", "veth", "peer", "name", port,
                    "netns", &c,
                ],
            );
            ip(ip_path, &["-n", &c, "link", "set", port, "master", "br0"]);
            ip(ip_path, &["-n", &c, "link", "set", port, "up"]);
            ip(
                ip_path,
                &[
                    "-n",
                    ns_name,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "eth0",
                ],
            );
            ip(ip_path, &["-n", ns_name, "link", "set", "eth0", "up"]);
            ip(ip_path, &["-n", ns_name, "link", "set", "lo", "up"]);
        }
        // `ip netns exec c …` sees this as /etc/hosts: the servers' DNS names.
        let parent = Path::new("/etc/netns");
        ns.made_etc_netns = !parent.exists();
        let etc = parent.join(&c);
        std::fs::create_dir_all(&etc).unwrap();
        ns.etc = Some(etc.clone());
        std::fs::write(
            etc.join("hosts"),
            format!(
                "127.0.0.1 localhost\n{A_IP} vco-a.example.net\n{B_IP} vco-b.example.net\n{B_IP} not-in-the-certificate.example.net\n"
            ),
        )
        .unwrap();
        ns
    }

    fn a(&self) -> &str {
        &self.names[0]
    }
    fn b(&self) -> &str {
        &self.names[1]
    }
    fn c(&self) -> &str {
        &self.names[2]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = Command::new(&self.ip).args(["netns", "del", n]).status();
        }
        if let Some(etc) = &self.etc {
            let _ = std::fs::remove_dir_all(etc);
        }
        if self.made_etc_netns {
            // Only if empty: another test may use it meanwhile.
            let _ = std::fs::remove_dir("/etc/netns");
        }
    }
}

/// Processes this test started (`ip netns exec` execs them: same PID);
/// killed by PID on drop if still running.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Procs {
    fn push(&mut self, c: Child) -> usize {
        self.0.push(c);
        self.0.len() - 1
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The deployment directory, removed at the end (kept for its logs on failure).
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("deployment kept for its logs: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

struct Env {
    ip: PathBuf,
    dir: PathBuf,
    token: PathBuf,
}

impl Env {
    /// `vcodr <args>` inside namespace `ns`, from the deployment directory.
    fn vcodr_in(&self, ns: &str) -> Command {
        let mut c = Command::new(&self.ip);
        c.args(["netns", "exec", ns])
            .arg(vcodr())
            .current_dir(&self.dir);
        c
    }

    /// `vcodr ctl --server URL <args>` in namespace `ns`: (exit code, stdout, stderr).
    fn ctl(&self, ns: &str, url: &str, args: &[&str]) -> (i32, String, String) {
        let out: Output = self
            .vcodr_in(ns)
            .args(["ctl", "--server", url, "--token-file"])
            .arg(&self.token)
            .args(args)
            .output()
            .expect("running vcodr ctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// Polls `ctl --json status` until `pred` holds.
    fn wait_status(&self, ns: &str, url: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let (code, out, err) = self.ctl(ns, url, &["--json", "status"]);
            let last = if code == 0 {
                let v: Value = serde_json::from_str(&out).unwrap();
                if pred(&v) {
                    return v;
                }
                format!("role {} drState {}", v["role"], v["drState"])
            } else {
                err
            };
            assert!(
                Instant::now() < deadline,
                "{url}: {what} not reached within {T:?}; last: {last}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_state(&self, ns: &str, url: &str, role: &str, state: &str) -> Value {
        self.wait_status(ns, url, &format!("{role} / {state}"), |s| {
            s["role"] == role && s["drState"] == state
        })
    }
}

/// Starts `vcodr serve --config <name>.toml` in `ns` and waits for its
/// "serving" line.
fn serve(env: &Env, procs: &mut Procs, ns: &str, name: &str) -> usize {
    let log = std::fs::File::create(env.dir.join(format!("{name}.log"))).unwrap();
    let mut child = env
        .vcodr_in(ns)
        .args(["serve", "--config", &format!("{name}.toml")])
        .env("RUST_LOG", "info,quinn=warn,rustls=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let lines = line_reader(child.stdout.take().unwrap());
    let i = procs.push(child);
    wait_line(&lines, &format!("{name} serving"), |l| {
        l.contains(" serving ")
    });
    i
}

/// The lines `r` produces, as they come.
fn line_reader(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (up to `T`) for a line of `rx` that `pred` accepts; returns it.
fn wait_line(rx: &mpsc::Receiver<String>, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + T;
    let mut last = String::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) if pred(&l) => return l,
            Ok(l) => last = l,
            Err(_) => panic!("no line for {what} within {T:?}; last line: {last}"),
        }
    }
}

/// The number of edges an edge-sim live line shows following `addr`.
fn following(line: &str, addr: &str) -> Option<u64> {
    line.split(" | ")
        .filter_map(|part| part.strip_prefix("following ").or(Some(part)))
        .find_map(|part| part.strip_prefix(&format!("{addr}: "))?.parse().ok())
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

/// Waits (up to `T`) for child `i` to exit; returns its exit code.
fn wait_exit(procs: &mut Procs, i: usize) -> Option<i32> {
    let deadline = Instant::now() + T;
    loop {
        if let Some(st) = procs.0[i].try_wait().unwrap() {
            return st.code();
        }
        assert!(
            Instant::now() < deadline,
            "process {} did not exit",
            procs.0[i].id()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn config(name: &str, addr: &str) -> String {
    format!(
        "name = \"{name}\"\ndata_dir = \"data/{name}\"\nadmin_listen = \"{addr}:8443\"\npeer_listen = \"{addr}:7443\"\nedge_listen = \"{addr}:7444\"\ntls_dir = \"certs\"\nadmin_token_file = \"certs/admin.token\"\n\n{FAST_TIMERS}"
    )
}

#[test]
fn runbook_on_non_loopback_addresses_in_network_namespaces() {
    let tools = vcodr_testkit::require(&["iproute2"]).expect("the packages this test needs");
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|u| u.split_whitespace().nth(1)?.parse::<u32>().ok());
    assert_eq!(
        euid,
        Some(0),
        "this test makes network namespaces (`ip netns add`): run it as root"
    );
    let dir = temp_dir("vcodr-netns").unwrap();
    let _dir = DirGuard(dir.clone());
    let ns = Netns::create(tools.path("ip"));
    let mut procs = Procs::default();
    let env = Env {
        ip: tools.path("ip").to_path_buf(),
        dir: dir.clone(),
        token: dir.join("certs/admin.token"),
    };

    // 1. Certificates naming each server's DNS name and address.
    let out = Command::new(vcodr())
        .args(["certs", "init", "--out"])
        .arg(dir.join("certs"))
        .args([
            "--servers",
            &format!("a=vco-a.example.net,{A_IP}"),
            "--servers",
            &format!("b=vco-b.example.net,{B_IP}"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "a.pem: server, valid for a, localhost, 127.0.0.1, vco-a.example.net, {A_IP}"
        )),
        "{text}"
    );
    // Edge certificates later, from the same CA; nothing is ever overwritten.
    let out = Command::new(vcodr())
        .args(["certs", "add-edges", "--count", "3", "--dir"])
        .arg(dir.join("certs"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(dir.join("certs/edge-3.pem").exists());
    let a_pem = std::fs::read(dir.join("certs/a.pem")).unwrap();
    let out = Command::new(vcodr())
        .args(["certs", "add-server", "--dir"])
        .arg(dir.join("certs"))
        .arg(format!("a={A_IP}"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("a.pem"), "{err}");
    assert_eq!(std::fs::read(dir.join("certs/a.pem")).unwrap(), a_pem);

    // 2. One config per server, on its namespace's address; two `vcodr serve`.
    std::fs::write(dir.join("a.toml"), config("a", A_IP)).unwrap();
    std::fs::write(dir.join("b.toml"), config("b", B_IP)).unwrap();
    let a = serve(&env, &mut procs, ns.a(), "a");
    let b = serve(&env, &mut procs, ns.b(), "b");
    let (a_ip, b_ip) = (
        format!("https://{A_IP}:8443"),
        format!("https://{B_IP}:8443"),
    );
    let (a_dns, b_dns) = (
        "https://vco-a.example.net:8443",
        "https://vco-b.example.net:8443",
    );

    // 3. Pair through `ctl` from the operator's namespace: by address, by name.
    let (code, out, err) = env.ctl(ns.c(), &b_ip, &["--json", "prepare-standby"]);
    assert_eq!(code, 0, "{err}");
    let prep: Value = serde_json::from_str(&out).unwrap();
    let (code, out, err) = env.ctl(
        ns.c(),
        a_dns,
        &[
            "configure-active",
            "--standby-address",
            &format!("{B_IP}:7443"),
            "--standby-uuid",
            prep["vcoUuid"].as_str().unwrap(),
            "--pairing-token",
            prep["pairingToken"].as_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    env.wait_state(ns.c(), &a_ip, "ACTIVE", "STANDBY_RUNNING");
    env.wait_state(ns.c(), b_dns, "STANDBY", "STANDBY_RUNNING");
    // A name the certificate does not carry is refused, saying what to do.
    let (code, _, err) = env.ctl(
        ns.c(),
        "https://not-in-the-certificate.example.net:8443",
        &["status"],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("not valid for `not-in-the-certificate.example.net`")
            && err.contains("add-server"),
        "{err}"
    );

    // 4. A write, acknowledged once durable on both.
    let (code, out, err) = env.ctl(ns.c(), &a_ip, &["put", "site/1", r#"{"vlan": 10}"#]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("site/1 version "), "{out}");

    // 5. Edges in the operator's namespace, bound to the unspecified address.
    let mut sim = env
        .vcodr_in(ns.c())
        .args([
            "edge-sim",
            "--servers",
            &format!("{A_IP}:7444,{B_IP}:7444"),
            "--count",
            "3",
            "--certs",
            "certs",
            "--heartbeat-ms",
            "500",
            "--sample-interval-ms",
            "500",
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sim_out = sim.stdout.take().unwrap();
    let live = line_reader(sim.stderr.take().unwrap());
    let sim_pid = sim.id();
    let s = procs.push(sim);
    let a_edge = format!("{A_IP}:7444");
    let b_edge = format!("{B_IP}:7444");
    let line = wait_line(&live, "3 edges following a", |l| {
        following(l, &a_edge) == Some(3)
    });
    assert!(line.contains("send failures 0"), "{line}");

    // 6. Planned switchover: b promoted; a a zombie; the edges follow b.
    let (code, out, err) = env.ctl(ns.c(), b_dns, &["promote", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("epoch          2") && out.contains("dataLossBound  0"),
        "{out}"
    );
    env.wait_state(ns.c(), &a_ip, "ZOMBIE", "ZOMBIE");
    let line = wait_line(&live, "3 edges following b", |l| {
        following(l, &b_edge) == Some(3)
    });
    assert!(line.contains("send failures 0"), "{line}");
    env.wait_status(
        ns.c(),
        &b_ip,
        "3 edges following b in its contact table",
        |s| {
            s["clientCount"]["currentActiveEdgeCount"]
                .as_u64()
                .unwrap_or(0)
                + s["clientCount"]["currentActiveGatewayCount"]
                    .as_u64()
                    .unwrap_or(0)
                == 3
        },
    );
    let (code, out, _) = env.ctl(ns.c(), &b_ip, &["get", "site/1"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["vlan"], 10);

    // edge-sim stops on SIGINT with its summary.
    signal(sim_pid, "INT");
    assert_eq!(wait_exit(&mut procs, s), Some(0));
    let mut summary = String::new();
    std::io::Read::read_to_string(&mut { sim_out }, &mut summary).unwrap();
    let summary: Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["following"], serde_json::json!([0, 3]), "{summary}");
    assert_eq!(summary["sendFailures"], 0, "{summary}");

    // 7. What went wrong before: a simulator bound to loopback reaches nobody,
    //    and now says why instead of "errors 0".
    let out = env
        .vcodr_in(ns.c())
        .args([
            "edge-sim",
            "--servers",
            &format!("{A_IP}:7444,{B_IP}:7444"),
            "--count",
            "1",
            "--certs",
            "certs",
            "--heartbeat-ms",
            "500",
            "--duration-s",
            "3",
            "--bind",
            "127.0.0.1:0",
            "--json",
        ])
        .output()
        .unwrap();
    let stranded: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stranded["followingNone"], 1, "{stranded}");
    assert!(stranded["sendFailures"].as_u64().unwrap() > 0, "{stranded}");
    let live_lines = String::from_utf8_lossy(&out.stderr);
    let last = live_lines.lines().last().unwrap_or_default();
    assert!(
        last.contains("send failures ") && !last.contains("send failures 0"),
        "{last}"
    );

    // Both servers stop cleanly.
    signal(procs.0[a].id(), "TERM");
    signal(procs.0[b].id(), "TERM");
    assert_eq!(wait_exit(&mut procs, a), Some(0));
    assert_eq!(wait_exit(&mut procs, b), Some(0));
    drop(procs);
    drop(ns);
}
