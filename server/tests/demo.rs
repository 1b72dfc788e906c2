//! `vcodr demo --edges 200` as a test: the report's checks are assertions on
//! the system's state, read back through the admin API.

use std::process::Command;

#[test]
fn demo_with_200_edges_passes_every_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_vcodr"))
        .args(["demo", "--edges", "200"])
        .output()
        .expect("running vcodr demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("DEMO PASSED"), "{stdout}");
    for check in [
        "[ok] every acknowledged write is on b",
        "[ok] every edge follows b",
        "[ok] each sample stored once, none missing",
        "[ok] a fenced as ZOMBIE",
        "[ok] DR restored the other way round",
        "[ok] the rejoined standby holds every sample",
    ] {
        assert!(stdout.contains(check), "missing `{check}` in:\n{stdout}");
    }
    assert!(
        stdout.contains("500 of 500 acknowledged writes present"),
        "{stdout}"
    );
    assert!(stdout.contains("200 of 200 edges exact"), "{stdout}");
}

/// A `vcodr demo --keep-running` and what it started, killed by PID when the
/// test ends (passed or not): the demo, then any of its servers still there.
struct DemoGuard {
    demo: std::process::Child,
    servers: Vec<u32>,
    dir: Option<std::path::PathBuf>,
}

/// Whether process `pid` exists and runs a `vcodr serve` of `dir`.
fn serves_from(pid: u32, dir: &std::path::Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let c = String::from_utf8_lossy(&c);
        c.contains("serve") && c.contains(&*dir.to_string_lossy())
    })
}

impl Drop for DemoGuard {
    fn drop(&mut self) {
        if self.demo.try_wait().ok().flatten().is_none() {
            let _ = self.demo.kill();
            let _ = self.demo.wait();
        }
        if let Some(dir) = &self.dir {
            for pid in &self.servers {
                if serves_from(*pid, dir) {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// SIGTERM ends `vcodr demo --keep-running` as ctrl-c does: both servers it
/// started are stopped and its temporary directory is removed.
#[test]
fn demo_keep_running_ends_on_sigterm_leaving_nothing_behind() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    let mut child = Command::new(env!("CARGO_BIN_EXE_vcodr"))
        .args(["demo", "--edges", "5", "--writes", "40", "--keep-running"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting vcodr demo");
    let stdout = child.stdout.take().unwrap();
    let mut guard = DemoGuard {
        demo: child,
        servers: Vec::new(),
        dir: None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Wait for the "running" line, collecting the PIDs and the directory.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no `running:` line; output so far:\n{}", seen.join("\n")));
        if let Some(pid) = line
            .trim()
            .split_once(": pid ")
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        {
            guard.servers.push(pid);
        }
        if let Some(d) = line.trim().strip_prefix("deployment in ") {
            guard.dir = Some(d.into());
        }
        let running = line.starts_with("running:");
        seen.push(line);
        if running {
            break;
        }
    }
    let out = seen.join("\n");
    assert!(out.contains("DEMO PASSED"), "{out}");
    let dir = guard
        .dir
        .clone()
        .expect("the deployment directory is printed");
    assert_eq!(guard.servers.len(), 2, "two server PIDs printed:\n{out}");
    for pid in &guard.servers {
        assert!(serves_from(*pid, &dir), "server {pid} runs:\n{out}");
    }

    let st = Command::new("kill")
        .args(["-TERM", &guard.demo.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(st) = guard.demo.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the demo is still running 90 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest: Vec<String> = rx.try_iter().collect();
    assert_eq!(status.code(), Some(0), "{}", rest.join("\n"));
    assert!(
        rest.iter()
            .any(|l| l.contains("SIGTERM: stopping both servers")),
        "{rest:?}"
    );
    for pid in &guard.servers {
        assert!(
            !serves_from(*pid, &dir),
            "server {pid} still runs after the demo ended"
        );
    }
    assert!(!dir.exists(), "{} is left behind", dir.display());
}
