//! What an operator deploys with (`deploy/`), checked against the real
//! tools and the real server: the Prometheus rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`), the example scrape
//! config `promtool check config`; every metric the rules and the Grafana
//! dashboard use is one a running `vcodr serve` exports at `/metrics`; the
//! systemd unit restarts on failure and runs a command line and a config
//! file that `vcodr` itself accepts.
//!
//! `promtool` comes from Debian's `prometheus` package, which
//! `vcodr_testkit` installs when the test runs as root; otherwise the test
//! fails naming it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vcodr_server::tools::cluster::{temp_dir, ProcCluster, FAST_TIMERS};

fn vcodr() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vcodr"))
}

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(rel: &str) -> String {
    let path = deploy().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fresh directory, removed when the test ends, passed or not.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        TempDir(temp_dir(prefix).unwrap())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Metrics Prometheus makes itself for every target (not in `/metrics`).
const SYNTHETIC: [&str; 1] = ["up"];

/// Aggregation operators, which may be followed by `by (…)` before their `(`.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Words of PromQL that are neither metrics nor functions.
const KEYWORDS: [&str; 12] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
];

/// The metric names a PromQL expression reads: identifiers outside label
/// matchers, strings and ranges that are neither functions or aggregations
/// (followed by `(`), nor keywords, nor the label lists of `by (…)`,
/// `on (…)` and the like.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |mut i: usize, close: char| {
        while i < chars.len() && chars[i] != close {
            if chars[i] == '"' || chars[i] == '\'' {
                let q = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != q {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_to(i + 1, c);
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let call = j < chars.len() && chars[j] == '(';
            let label_list = matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            );
            if label_list && call {
                i = skip_to(j + 1, ')');
            } else if !call
                && !KEYWORDS.contains(&word.as_str())
                && !AGGREGATIONS.contains(&word.as_str())
            {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn promql_metric_names_are_found_and_nothing_else() {
    let got = metric_names(
        r#"max by (job) (vcodr_clients_known{a="x}y"}) - sum without(le) (rate(vcodr_b_total[5m] offset 1h)) > bool 0 and on (instance) up unless histogram_quantile(0.99, c_bucket{job=~"$job"}[$__rate_interval])"#,
    );
    let want: BTreeSet<String> = ["vcodr_clients_known", "vcodr_b_total", "up", "c_bucket"]
        .map(String::from)
        .into();
    assert_eq!(got, want);
}

/// The sample names of a running server's `/metrics` (a single server,
/// standalone: every metric is rendered whatever the role).
fn exported_metrics() -> BTreeSet<String> {
    let dir = TempDir::new("vcodr-deploy");
    let dir = &dir.0;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let text = {
        let mut cl = ProcCluster::create(vcodr(), dir, &["a"], FAST_TIMERS).unwrap();
        cl.start(0).unwrap();
        let (status, text) = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(30), cl.client(0).get("/metrics")).await
            })
            .expect("/metrics within 30 s")
            .unwrap();
        assert_eq!(status, 200);
        cl.stop_all();
        text
    };
    let names: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            l.split(['{', ' '])
                .next()
                .expect("a sample line starts with its name")
                .to_string()
        })
        .collect();
    assert!(names.contains("vcodr_dr_protected"), "{text}");
    names
}

fn unknown_metrics(used: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    used.iter()
        .filter(|n| !exported.contains(*n) && !SYNTHETIC.contains(&n.as_str()))
        .cloned()
        .collect()
}

/// Every `expr:` of a rules file (each on one line, as the file promises).
fn rule_exprs(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| {
            let e = e.trim();
            assert!(
                !e.starts_with('|') && !e.starts_with('>') && !e.is_empty(),
                "keep each expr on one line: {e:?}"
            );
            e.trim_matches('\'').to_string()
        })
        .collect()
}

fn promtool(tools: &vcodr_testkit::Tools, args: &[&str], cwd: &Path) -> String {
    let out = Command::new(tools.path("promtool"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}:\n{text}", args.join(" "));
    text
}

#[test]
fn alert_rules_pass_promtool_and_use_only_metrics_a_server_exports() {
    let tools = vcodr_testkit::require(&["prometheus"]).expect("the packages this test needs");
    let prom = deploy().join("prometheus");
    let out = promtool(&tools, &["check", "rules", "vcodr-alerts.yml"], &prom);
    assert!(out.contains("SUCCESS"), "{out}");
    promtool(&tools, &["test", "rules", "vcodr-alerts.test.yml"], &prom);
    // The scrape config, with its CA at a path that exists here.
    let scratch = TempDir::new("vcodr-promtool");
    let scratch = &scratch.0;
    let ca = scratch.join("vcodr-ca.pem");
    std::fs::write(&ca, "").unwrap();
    let config = read("prometheus/prometheus.yml")
        .replace("/etc/prometheus/vcodr-ca.pem", ca.to_str().unwrap());
    assert!(config.contains(ca.to_str().unwrap()));
    std::fs::write(scratch.join("prometheus.yml"), config).unwrap();
    std::fs::copy(
        prom.join("vcodr-alerts.yml"),
        scratch.join("vcodr-alerts.yml"),
    )
    .unwrap();
    promtool(&tools, &["check", "config", "prometheus.yml"], scratch);

    let rules = read("prometheus/vcodr-alerts.yml");
    let exprs = rule_exprs(&rules);
    let alerts = rules.matches("- alert:").count();
    assert_eq!(exprs.len(), alerts, "one expr per alert");
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    // What the brief of these rules names, at least.
    for m in [
        "vcodr_dr_protected",
        "vcodr_unprotected_writes_total",
        "vcodr_dr_state",
        "vcodr_clients_following_nobody",
        "vcodr_forged_epoch_claims_total",
        "vcodr_peer_messages_refused_total",
        "vcodr_handshakes_refused_total",
        "up",
    ] {
        assert!(used.contains(m), "no rule uses {m}");
    }
    let exported = exported_metrics();
    let unknown = unknown_metrics(&used, &exported);
    assert!(
        unknown.is_empty(),
        "the rules use metrics no server exports: {unknown:?}\nexported: {exported:?}"
    );
}

#[test]
fn the_dashboard_shows_only_metrics_a_server_exports() {
    let text = read("grafana/vcodr-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut exprs = 0;
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{}: the data source is chosen at import",
            p["title"]
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} shows nothing", p["title"]);
        for t in targets {
            let e = t["expr"].as_str().expect("expr");
            let names = metric_names(e);
            assert!(!names.is_empty(), "{}: {e} reads no metric", p["title"]);
            used.extend(names);
            exprs += 1;
        }
    }
    assert!(exprs >= 20, "{exprs} queries");
    let exported = exported_metrics();
    let unknown = unknown_metrics(&used, &exported);
    assert!(
        unknown.is_empty(),
        "the dashboard uses metrics no server exports: {unknown:?}"
    );
    // Every vcodr metric is on it somewhere (histograms by their buckets).
    let missing: Vec<_> = exported
        .iter()
        .filter(|m| !m.ends_with("_sum") && !m.ends_with("_count") && !used.contains(*m))
        .collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}

/// `Key=value` lines of `section` in a systemd unit.
fn unit_keys(unit: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for l in unit.lines().map(str::trim) {
        if l.starts_with('[') {
            inside = l == format!("[{section}]");
        } else if inside && !l.starts_with('#') {
            if let Some((k, v)) = l.split_once('=') {
                out.push((k.to_string(), v.to_string()));
            }
        }
    }
    out
}

#[test]
fn the_systemd_unit_restarts_on_failure_and_runs_what_vcodr_accepts() {
    let unit = read("systemd/vcodr.service");
    let service = unit_keys(&unit, "Service");
    let get = |k: &str| {
        service
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("[Service] has no {k}="))
    };
    assert_eq!(get("Restart"), "on-failure");
    assert_eq!(get("KillSignal"), "SIGTERM");
    assert_eq!(get("NoNewPrivileges"), "yes");
    assert_eq!(get("ProtectSystem"), "strict");
    assert_eq!(get("StateDirectory"), "vcodr");
    assert!(get("LimitNOFILE").parse::<u64>().unwrap() >= 65_536);
    assert_eq!(
        unit_keys(&unit, "Install"),
        [("WantedBy".into(), "multi-user.target".into())]
    );
    // ExecStart is `vcodr serve --config <file>`; the example config is what
    // that file holds: vcodr parses every key of it and stops only at the
    // admin token, which is not installed here.
    let exec: Vec<&str> = get("ExecStart").split_whitespace().collect();
    assert_eq!(exec[1..3], ["serve", "--config"], "{exec:?}");
    assert_eq!(exec[3], "/etc/vcodr/vcodr.toml");
    let config = read("systemd/vcodr.toml");
    assert!(
        config.contains("data_dir = \"/var/lib/vcodr\""),
        "the unit's StateDirectory"
    );
    assert!(config.contains("name = \"a\""));
    // The example config, with its directories and addresses moved to this
    // test's own (nothing else changed), runs a server that stops cleanly
    // on SIGTERM, as systemd stops it.
    let dir = TempDir::new("vcodr-unit");
    let dir = &dir.0;
    let certs = dir.join("certs");
    vcodr_server::cli::certs_init(
        &certs,
        &[vcodr_transport::certs::ServerSpec::named("a")],
        &[],
    )
    .unwrap();
    let free = |udp| vcodr_server::tools::cluster::free_port(udp).unwrap();
    let moved = config
        .replace("/etc/vcodr/certs", certs.to_str().unwrap())
        .replace("/var/lib/vcodr", dir.join("data").to_str().unwrap())
        .replace("10.0.0.1:8443", &format!("127.0.0.1:{}", free(false)))
        .replace("10.0.0.1:7443", &format!("127.0.0.1:{}", free(true)))
        .replace("10.0.0.1:7444", &format!("127.0.0.1:{}", free(true)));
    let settings: Vec<&str> = moved.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(
        settings
            .iter()
            .all(|l| !l.contains("/etc/") && !l.contains("10.0.0.1")),
        "{moved}"
    );
    std::fs::write(dir.join("vcodr.toml"), moved).unwrap();
    let mut child = Command::new(vcodr())
        .args(["serve", "--config"])
        .arg(dir.join("vcodr.toml"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    /// Kills the server by PID if the test fails before it stopped.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            if self.0.try_wait().ok().flatten().is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut child = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).expect("a `serving` line within 30 s");
        if line.contains("vcodr a serving") {
            break;
        }
    }
    let st = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    let code = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit within the unit's TimeoutStopSec"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        code,
        Some(0),
        "a clean stop exits 0, which Restart=on-failure leaves stopped"
    );
    drop(child);
}
