//! The DR readiness page (SPEC §7) in a real headless browser: Debian
//! `chromium` driven by `chromedriver` over the W3C WebDriver HTTP API, with a
//! tiny blocking JSON-over-HTTP/1.1 client written here.
//!
//! A pair of real `vcodr serve` processes with a few documents and simulated
//! edges; the standby's page refuses a wrong token (nothing changes), logs in
//! with the admin token, shows STANDBY / STANDBY_RUNNING, the client table and
//! the state history; promote asks twice because the active is healthy
//! (declining the second question changes nothing), accepting both promotes
//! the standby (STANDALONE / STANDBY_PROMOTED, on the page and through the API)
//! and the old active becomes a ZOMBIE, which its own page shows.
//!
//! Screenshots: `target/dr-page.png` (the running pair, after login),
//! `target/dr-page-clients.png` (its client table), `target/dr-page-login-error.png`, `target/dr-page-promoted.png`,
//! `target/dr-page-zombie.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver`: `vcodr_testkit::require`
//! installs them when missing and the test runs as root; otherwise the test
//! fails, naming the packages and the command that installs them.

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vcodr_server::tools::cluster::{free_port, temp_dir, ProcCluster, FAST_TIMERS};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long the page may take to show something after the state changed
/// (it refreshes itself every 2 s).
const PAGE: Duration = Duration::from_secs(20);
const API: Duration = Duration::from_secs(30);
const EDGES: usize = 6;

fn artifact(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).join(name)
}

/// Polls `f` every 100 ms until it gives `Some`, or fails after `timeout`
/// with the last error `f` returned.
fn poll<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("; last error: {e:#}"),
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}{last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks `f` every 100 ms for `period`: something that must stay true.
fn hold(
    what: &str,
    period: Duration,
    mut f: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let end = Instant::now() + period;
    while Instant::now() < end {
        if !f()? {
            bail!("{what}: stopped holding within {period:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One HTTP/1.1 exchange with JSON bodies; returns the status and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> anyhow::Result<(u16, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to chromedriver on 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s
            .read(&mut chunk)
            .with_context(|| format!("{method} {path}"))?;
        if n == 0 {
            bail!("{method} {path}: connection closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{method} {path}: bad status line in {head:?}"))?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_ascii_lowercase())
        })
    };
    let mut rest = buf[end..].to_vec();
    let body = if let Some(len) = header("content-length") {
        let len: usize = len.parse()?;
        while rest.len() < len {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                bail!("{method} {path}: connection closed mid-body");
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        // Read to the end (Connection: close), then decode the chunks.
        s.read_to_end(&mut rest)?;
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let nl = rest[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| anyhow!("{method} {path}: bad chunked body"))?;
            let size = String::from_utf8_lossy(&rest[at..at + nl]);
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
            at += nl + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
        out
    } else {
        s.read_to_end(&mut rest)?;
        rest
    };
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "{method} {path}: non-JSON answer {}",
                String::from_utf8_lossy(&body)
            )
        })?
    };
    Ok((status, v))
}

fn base64_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\r' | b'\n' => continue,
            _ => bail!("not base64: byte {c}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// chromedriver (in its own process group, with chromium under it) and one
/// WebDriver session; both end on drop, also when the test panics.
struct Browser {
    port: u16,
    session: String,
    driver: Child,
    log: PathBuf,
}

/// A WebDriver error: `error` code and message.
#[derive(Debug)]
struct WdError {
    code: String,
    message: String,
}

impl std::fmt::Display for WdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let first = self.message.lines().next().unwrap_or("");
        write!(f, "webdriver {}: {first}", self.code)
    }
}

impl std::error::Error for WdError {}

fn is_wd(e: &anyhow::Error, code: &str) -> bool {
    e.downcast_ref::<WdError>().is_some_and(|w| w.code == code)
}

impl Browser {
    fn start(chromedriver: &Path, chromium: &Path, dir: &Path) -> anyhow::Result<Browser> {
        let port = free_port(false)?;
        let log = dir.join("chromedriver.log");
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", chromedriver.display()))?;
        let mut b = Browser {
            port,
            session: String::new(),
            driver,
            log,
        };
        poll(
            "chromedriver /status ready",
            Duration::from_secs(20),
            || {
                if let Some(st) = b.driver.try_wait()? {
                    bail!("chromedriver exited with {st}; see {}", b.log.display());
                }
                let (_, v) = http(port, "GET", "/status", None, Duration::from_secs(5))?;
                Ok((v["value"]["ready"] == true).then_some(()))
            },
        )?;
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile)?;
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            // Leave confirm() dialogs open for the test to accept or dismiss.
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--ignore-certificate-errors", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let (status, v) = http(
            port,
            "POST",
            "/session",
            Some(&caps),
            Duration::from_secs(60),
        )?;
        b.session = v["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| {
                anyhow!(
                    "chromedriver could not start chromium (HTTP {status}): {}; see {}",
                    v["value"]["message"],
                    b.log.display()
                )
            })?
            .to_string();
        b.cmd(
            "POST",
            "/window/rect",
            json!({"x": 0, "y": 0, "width": 1280, "height": 900}),
        )?;
        Ok(b)
    }

    /// A session command; returns its `value` or the WebDriver error.
    fn cmd(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let body = (method == "POST").then_some(&body);
        let full = format!("/session/{}{path}", self.session);
        let (status, mut v) = http(self.port, method, &full, body, Duration::from_secs(60))?;
        let v = v["value"].take();
        if status != 200 {
            return Err(WdError {
                code: v["error"].as_str().unwrap_or("?").to_string(),
                message: v["message"].as_str().unwrap_or("").to_string(),
            }
            .into());
        }
        Ok(v)
    }

    fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.cmd("POST", "/url", json!({ "url": url }))?;
        Ok(())
    }

    /// The element matching `css` now, if any.
    fn find(&self, css: &str) -> anyhow::Result<Option<String>> {
        match self.cmd(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        ) {
            Ok(v) => Ok(Some(
                v[ELEMENT]
                    .as_str()
                    .ok_or_else(|| anyhow!("element reference without id: {v}"))?
                    .to_string(),
            )),
            Err(e) if is_wd(&e, "no such element") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits for an element matching `css` to exist.
    fn wait_find(&self, css: &str) -> anyhow::Result<String> {
        poll(&format!("element {css}"), PAGE, || self.find(css))
    }

    /// The rendered text of `css` (empty when hidden), `None` if absent.
    fn text(&self, css: &str) -> anyhow::Result<Option<String>> {
        let Some(el) = self.find(css)? else {
            return Ok(None);
        };
        let t = self.cmd("GET", &format!("/element/{el}/text"), Value::Null)?;
        Ok(Some(t.as_str().unwrap_or("").to_string()))
    }

    fn displayed(&self, css: &str) -> anyhow::Result<bool> {
        let Some(el) = self.find(css)? else {
            return Ok(false);
        };
        Ok(self.cmd("GET", &format!("/element/{el}/displayed"), Value::Null)? == true)
    }

    /// Waits until the text of `css` satisfies `pred`; returns it.
    fn wait_text(
        &self,
        css: &str,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let mut last = None;
        poll(&format!("{css} {what}"), PAGE, || {
            let t = self.text(css)?;
            let ok = t.as_deref().is_some_and(&pred);
            last = t.clone();
            Ok(if ok { t } else { None })
        })
        .with_context(|| format!("{css} shows {last:?}"))
    }

    /// Clicks `css`, retrying while the page re-renders it (stale references).
    fn click(&self, css: &str) -> anyhow::Result<()> {
        poll(&format!("click {css}"), PAGE, || {
            let Some(el) = self.find(css)? else {
                return Ok(None);
            };
            match self.cmd("POST", &format!("/element/{el}/click"), json!({})) {
                Ok(_) => Ok(Some(())),
                Err(e) if is_wd(&e, "stale element reference") => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let el = self.wait_find(css)?;
        self.cmd("POST", &format!("/element/{el}/clear"), json!({}))?;
        self.cmd(
            "POST",
            &format!("/element/{el}/value"),
            json!({ "text": text }),
        )?;
        Ok(())
    }

    /// Waits for a `confirm()`/`alert()` dialog; returns its text.
    fn wait_dialog(&self) -> anyhow::Result<String> {
        poll("a confirmation dialog", PAGE, || {
            match self.cmd("GET", "/alert/text", Value::Null) {
                Ok(v) => Ok(Some(v.as_str().unwrap_or("").to_string())),
                Err(e) if is_wd(&e, "no such alert") => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn answer_dialog(&self, accept: bool) -> anyhow::Result<()> {
        let what = if accept { "accept" } else { "dismiss" };
        self.cmd("POST", &format!("/alert/{what}"), json!({}))?;
        Ok(())
    }

    fn no_dialog(&self) -> anyhow::Result<bool> {
        match self.cmd("GET", "/alert/text", Value::Null) {
            Ok(_) => Ok(false),
            Err(e) if is_wd(&e, "no such alert") => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// A PNG of the viewport, written to `target/<name>`; returns the bytes.
    fn screenshot(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let v = self.cmd("GET", "/screenshot", Value::Null)?;
        let png = base64_decode(v.as_str().unwrap_or(""))?;
        if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
            bail!("the screenshot is not a PNG");
        }
        let path = artifact(name);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&path, &png).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("screenshot: {}", path.display());
        Ok(png)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Quits chromium.
            let path = format!("/session/{}", self.session);
            let _ = http(self.port, "DELETE", &path, None, Duration::from_secs(10));
        }
        // Then chromedriver itself, cleanly if it answers (it reaps what it started).
        let _ = http(self.port, "GET", "/shutdown", None, Duration::from_secs(5));
        let _ = poll("chromedriver exit", Duration::from_secs(5), || {
            Ok(self.driver.try_wait()?.map(|_| ()))
        });
        // Whatever is left of its process group (a hung chromium), by id.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `vcodr edge-sim` against the pair: clients for the page's table.
struct EdgeSim(Child);

impl Drop for EdgeSim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status_of(rt: &tokio::runtime::Runtime, c: &ProcCluster, i: usize) -> anyhow::Result<Value> {
    rt.block_on(c.client(i).status())
}

#[test]
fn dr_page_in_headless_chromium() -> anyhow::Result<()> {
    let started = Instant::now();
    let tools = vcodr_testkit::require(&["chromium", "chromium-driver"])
        .context("the DR page test drives a real headless browser")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = temp_dir("vcodr-dr-page")?;
    eprintln!("deployment, logs and browser profile in {}", dir.display());

    // 1. A running pair with documents and clients.
    let mut cluster = ProcCluster::create(
        env!("CARGO_BIN_EXE_vcodr").as_ref(),
        &dir,
        &["a", "b"],
        FAST_TIMERS,
    )?;
    cluster.start(0)?;
    cluster.start(1)?;
    rt.block_on(cluster.pair(0, 1, API))?;
    for i in 0..5 {
        let r = rt.block_on(cluster.client(0).call(
            "configuration/put",
            json!({"key": format!("site/{i}"), "value": {"name": format!("branch {i}"), "vlan": 100 + i}}),
        ))?;
        assert_eq!(r["key"], format!("site/{i}"));
    }
    let sim_log = std::fs::File::create(dir.join("edge-sim.log"))?;
    let _edges = EdgeSim(
        Command::new(env!("CARGO_BIN_EXE_vcodr"))
            .arg("edge-sim")
            .arg("--servers")
            .arg(format!(
                "{},{}",
                cluster.servers[0].edge, cluster.servers[1].edge
            ))
            .args(["--count", &EDGES.to_string()])
            .arg("--certs")
            .arg(&cluster.certs)
            .args(["--heartbeat-ms", "1000", "--gateway-every", "3"])
            .args(["--duration-s", "600"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(sim_log.try_clone()?)
            .stderr(sim_log)
            .spawn()
            .context("starting vcodr edge-sim")?,
    );
    // Wait until the standby knows every client and its contact was saved.
    rt.block_on(
        cluster.wait_status(1, &format!("{EDGES} clients"), API, |s| {
            s["clientContact"]
                .as_array()
                .is_some_and(|c| c.len() >= EDGES)
        }),
    )?;
    let before = status_of(&rt, &cluster, 1)?;
    assert_eq!(
        (before["role"].as_str(), before["drState"].as_str()),
        (Some("STANDBY"), Some("STANDBY_RUNNING"))
    );
    let token = std::fs::read_to_string(&cluster.token_file)?
        .trim()
        .to_string();

    let browser = Browser::start(tools.path("chromedriver"), tools.path("chromium"), &dir)?;
    let b_url = format!("{}/", cluster.servers[1].url());

    // 2a. A wrong token: the login error, the app stays hidden, nothing changes.
    browser.goto(&b_url)?;
    poll("the login form", PAGE, || {
        Ok(browser.displayed("#login")?.then_some(()))
    })?;
    let title = browser.cmd("GET", "/title", Value::Null)?;
    assert!(
        title.as_str().is_some_and(|t| t.contains("DR readiness")),
        "page title {title}"
    );
    browser.type_into("#token", "not-the-admin-token")?;
    browser.click("#loginBtn")?;
    browser.wait_text("#loginMsg", "says the token is wrong", |t| {
        t.contains("wrong token")
    })?;
    assert!(
        !browser.displayed("#app")?,
        "the app shows after a wrong token"
    );
    assert!(
        browser.displayed("#login")?,
        "the login form went away after a wrong token"
    );
    assert!(browser.find("#act-promote")?.is_none() || !browser.displayed("#act-promote")?);
    browser.screenshot("dr-page-login-error.png")?;
    // And it stays so across the page's 2 s refresh (a refused token is not kept).
    hold(
        "the login error with the app hidden",
        Duration::from_secs(3),
        || {
            Ok(browser.text("#loginMsg")?.as_deref() == Some("wrong token")
                && !browser.displayed("#app")?)
        },
    )?;
    for i in 0..2 {
        let s = status_of(&rt, &cluster, i)?;
        let want = if i == 0 { "ACTIVE" } else { "STANDBY" };
        assert_eq!(
            s["role"], want,
            "{} after a refused login",
            cluster.servers[i].name
        );
        assert_eq!(s["drState"], "STANDBY_RUNNING");
        assert_eq!(s["epoch"], before["epoch"]);
    }

    // 2b. The admin token: role, state, client table, state history.
    browser.type_into("#token", &token)?;
    browser.click("#loginBtn")?;
    poll("the app after login", PAGE, || {
        Ok(browser.displayed("#app")?.then_some(()))
    })?;
    assert!(
        !browser.displayed("#login")?,
        "the login form still shows after login"
    );
    browser.wait_text("#role", "is STANDBY", |t| t == "STANDBY")?;
    browser.wait_text("#drState", "is STANDBY_RUNNING", |t| t == "STANDBY_RUNNING")?;
    browser.wait_text("#who", "names b", |t| t.starts_with("b ·"))?;
    let rows = poll("client rows", PAGE, || {
        Ok(browser
            .cmd(
                "POST",
                "/elements",
                json!({"using": "css selector", "value": "#clients tr"}),
            )?
            .as_array()
            .map(Vec::len)
            .filter(|&n| n >= EDGES))
    })?;
    assert_eq!(rows, EDGES, "one row per client");
    assert!(browser.displayed("#clients")?, "the client table is hidden");
    let clients = browser.text("#clients")?.unwrap_or_default();
    assert!(
        clients.contains(&cluster.servers[0].edge),
        "the client table does not show the edges' view of a: {clients}"
    );
    let history = browser.wait_text("#history", "has the pairing", |t| {
        t.contains("STANDBY_RUNNING")
    })?;
    assert!(history.contains("STANDBY"), "state history: {history}");
    let server = browser.text("#server")?.unwrap_or_default();
    let pair_id = before["pairId"].as_str().unwrap_or("no pairId");
    assert!(
        server.contains("STANDBY_RUNNING") && server.contains(pair_id),
        "this server's card: {server}"
    );
    browser.wait_text("#peer", "shows a reachable peer", |t| {
        t.contains("reachable") && !t.contains("unreachable")
    })?;
    browser.wait_text("#actionHelp", "explains the double confirmation", |t| {
        t.contains("asked twice")
    })?;
    browser.wait_text("#act-promote", "is the promote button", |t| {
        t.contains("Promote")
    })?;
    let png = browser.screenshot("dr-page.png")?;
    assert!(png.len() > 10_000, "a suspiciously small screenshot");
    browser.cmd(
        "POST",
        "/execute/sync",
        json!({"script": "document.getElementById('clients').scrollIntoView(); return null;", "args": []}),
    )?;
    browser.screenshot("dr-page-clients.png")?;
    browser.cmd(
        "POST",
        "/execute/sync",
        json!({"script": "window.scrollTo(0, 0); return null;", "args": []}),
    )?;

    // 3a. Promote, accept the first question, decline the second: nothing changes.
    browser.click("#act-promote")?;
    let q1 = browser.wait_dialog()?;
    assert!(
        q1.contains("HEALTHY") && q1.contains("planned switchover"),
        "first question: {q1}"
    );
    browser.answer_dialog(true)?;
    let q2 = browser.wait_dialog()?;
    assert!(q2.contains("Really switch over"), "second question: {q2}");
    browser.answer_dialog(false)?;
    poll("the dialog closed", PAGE, || {
        Ok(browser.no_dialog()?.then_some(()))
    })?;
    // The page asked nothing of the server: still a healthy pair, same epoch.
    browser.wait_text("#role", "is still STANDBY", |t| t == "STANDBY")?;
    let s = status_of(&rt, &cluster, 1)?;
    assert_eq!(
        (s["role"].as_str(), s["drState"].as_str()),
        (Some("STANDBY"), Some("STANDBY_RUNNING"))
    );
    assert_eq!(s["epoch"], before["epoch"]);
    assert_eq!(status_of(&rt, &cluster, 0)?["role"], "ACTIVE");

    // 3b. Promote and accept both questions: a planned switchover.
    browser.click("#act-promote")?;
    let again = browser.wait_dialog()?;
    assert_eq!(again, q1);
    browser.answer_dialog(true)?;
    let again = browser.wait_dialog()?;
    assert_eq!(again, q2);
    browser.answer_dialog(true)?;
    let promoted = rt.block_on(cluster.wait_state(1, "STANDALONE", "STANDBY_PROMOTED", API))?;
    let epoch = before["epoch"]
        .as_u64()
        .ok_or_else(|| anyhow!("no epoch"))?;
    assert_eq!(promoted["epoch"], epoch + 1);
    rt.block_on(cluster.wait_state(0, "ZOMBIE", "ZOMBIE", API))?;
    browser.wait_text("#msg", "reports the promotion", |t| {
        t.contains(&format!("promoted: epoch {}", epoch + 1)) && t.contains("dataLossBound 0")
    })?;
    browser.wait_text("#role", "is STANDALONE", |t| t == "STANDALONE")?;
    browser.wait_text("#drState", "is STANDBY_PROMOTED", |t| {
        t == "STANDBY_PROMOTED"
    })?;
    browser.wait_text("#history", "shows the promotion", |t| {
        t.contains("STANDBY_PROMOTED")
    })?;
    poll("no promote button", PAGE, || {
        Ok(browser.find("#act-promote")?.is_none().then_some(()))
    })?;
    browser.screenshot("dr-page-promoted.png")?;

    // The old active's own page: a ZOMBIE that offers to rejoin.
    browser.goto(&format!("{}/", cluster.servers[0].url()))?;
    browser.type_into("#token", &token)?;
    browser.click("#loginBtn")?;
    browser.wait_text("#role", "is ZOMBIE", |t| t == "ZOMBIE")?;
    browser.wait_text("#act-rejoin", "offers to rejoin", |t| t.contains("Rejoin"))?;
    browser.screenshot("dr-page-zombie.png")?;

    drop(browser);
    drop(_edges);
    cluster.stop_all();
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "dr_page: passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
