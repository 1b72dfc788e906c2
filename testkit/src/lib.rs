//! # vcodr-testkit: the Debian packages vcodr's tests need, installed on demand
//!
//! Some tests drive real programs: a headless browser for the DR page, and
//! soon iptables in network namespaces, `promtool` for alert rules and
//! PostgreSQL for a benchmark. [`PACKAGES`] lists every Debian package a test
//! needs, with the executables that prove it is installed — here and nowhere
//! else, so that `cargo test --release --workspace` is all a machine needs.
//!
//! ## Calling contract
//! A test calls [`require`] with the package names it needs and takes the
//! executables' paths from the [`Tools`] it returns. When some are missing and
//! the process runs as root, `require` installs them first (`apt-get update`,
//! then `apt-get install -y --no-install-recommends …`, each tried twice),
//! saying so on stderr, one test binary at a time (a lock file in `/tmp`).
//! Otherwise it returns an error naming each missing package, the executable
//! looked for and the command that installs it. It never answers that a tool
//! is there when it is not: a test that calls it with `?` or `.expect` fails
//! without its tools, it never passes without them.
//!
//! ```no_run
//! let tools = vcodr_testkit::require(&["chromium", "chromium-driver"])?;
//! let chromedriver = tools.path("chromedriver");
//! # let _ = chromedriver;
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Tests that need root for something other than packages (mounting a tmpfs)
//! say so with [`require_root`].
//!
//! For tests only: crates take it as a dev-dependency.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// A Debian package that a test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Package {
    /// Debian's name, as `apt-get install` takes it.
    pub name: &'static str,
    /// The executables that prove it installed. Each is a bare name, looked
    /// up in [`search_dirs`], or an absolute path whose components may be `*`
    /// (`/usr/lib/postgresql/*/bin/pg_ctl`; the highest version matching wins).
    pub provides: &'static [&'static str],
}

/// Every Debian package that a test of this workspace needs.
pub const PACKAGES: &[Package] = &[
    Package {
        name: "chromium",
        provides: &["chromium"],
    },
    Package {
        name: "chromium-driver",
        provides: &["chromedriver"],
    },
    Package {
        name: "iproute2",
        provides: &["ip"],
    },
    Package {
        name: "iptables",
        provides: &["iptables"],
    },
    Package {
        name: "prometheus",
        provides: &["promtool"],
    },
    Package {
        name: "postgresql",
        provides: &["/usr/lib/postgresql/*/bin/pg_ctl"],
    },
];

/// Where the executables of the packages a test required are.
#[derive(Debug, Clone, Default)]
pub struct Tools {
    /// Executable name (the last component of [`Package::provides`]) → path.
    found: BTreeMap<&'static str, PathBuf>,
}

impl Tools {
    /// The path of `exe`, by its bare name (`"chromedriver"`, `"pg_ctl"`).
    ///
    /// # Panics
    /// If no package passed to [`require`] provides `exe`: a bug in the test.
    pub fn path(&self, exe: &str) -> &Path {
        match self.found.get(exe) {
            Some(p) => p,
            None => panic!(
                "`{exe}` is not provided by the packages this test required (it has: {:?})",
                self.found.keys().collect::<Vec<_>>()
            ),
        }
    }
}

/// The packages named (from [`PACKAGES`]) with their executables, installing
/// the missing ones first when running as root; see the crate's calling
/// contract. Unknown names are an error.
pub fn require(names: &[&str]) -> Result<Tools> {
    let packages = names
        .iter()
        .map(|name| {
            PACKAGES.iter().find(|p| p.name == *name).ok_or_else(|| {
                anyhow!("`{name}` is not in vcodr-testkit's PACKAGES (testkit/src/lib.rs)")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let dirs = search_dirs();
    let (tools, missing) = look_up(&packages, &dirs);
    if missing.is_empty() {
        return Ok(tools);
    }
    let why = match install(&packages, &dirs) {
        Ok(()) => "apt-get installed them, yet they are still missing".to_string(),
        Err(e) => format!("{e:#}"),
    };
    let (tools, missing) = look_up(&packages, &dirs);
    if missing.is_empty() {
        return Ok(tools);
    }
    bail!(missing_message(&missing, &why))
}

/// Where bare executable names are looked for: `PATH`, then /usr/bin,
/// /usr/sbin and /sbin (where `iptables` and `ip` live when `PATH` is a user's).
pub fn search_dirs() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .collect()
}

/// `exe` — a bare name looked up in `dirs`, or a path pattern (see
/// [`Package::provides`]) — if it is there and executable.
pub fn find(exe: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    let candidates = if exe.starts_with('/') {
        expand(Path::new(exe))
    } else {
        dirs.iter().map(|d| d.join(exe)).collect()
    };
    let mut found = candidates.into_iter().filter(|p| is_executable(p));
    if exe.starts_with('/') {
        found.max_by_key(|p| natural_key(&p.to_string_lossy()))
    } else {
        found.next()
    }
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The paths matching `pattern`, whose components may be `*`.
fn expand(pattern: &Path) -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::new()];
    for part in pattern.components() {
        let part = part.as_os_str();
        paths = if part == "*" {
            paths
                .iter()
                .filter_map(|dir| fs::read_dir(dir).ok())
                .flat_map(|entries| entries.flatten().map(|e| e.path()))
                .collect()
        } else {
            paths.iter().map(|dir| dir.join(part)).collect()
        };
    }
    paths
}

/// Orders `…/9.6/…` before `…/15/…`: runs of digits compare as numbers.
fn natural_key(s: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut rest = s;
    while let Some(first) = rest.chars().next() {
        let digits = first.is_ascii_digit();
        let end = rest
            .find(|c: char| c.is_ascii_digit() != digits)
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        key.push(match run.parse() {
            Ok(n) if digits => (n, String::new()),
            _ => (0, run.to_string()),
        });
        rest = tail;
    }
    key
}

/// A package that is not (fully) installed, with the executables not found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Missing {
    package: &'static str,
    exes: Vec<&'static str>,
}

fn look_up(packages: &[&'static Package], dirs: &[PathBuf]) -> (Tools, Vec<Missing>) {
    let mut tools = Tools::default();
    let mut missing = Vec::new();
    for p in packages {
        let mut absent = Vec::new();
        for &exe in p.provides {
            match find(exe, dirs) {
                Some(path) => {
                    let name = exe.rsplit('/').next().unwrap_or(exe);
                    tools.found.insert(name, path);
                }
                None => absent.push(exe),
            }
        }
        if !absent.is_empty() {
            missing.push(Missing {
                package: p.name,
                exes: absent,
            });
        }
    }
    (tools, missing)
}

/// What a test fails with when its packages are missing after all.
fn missing_message(missing: &[Missing], why: &str) -> String {
    let mut msg = String::from("this test needs Debian packages that are not installed:\n");
    for m in missing {
        for exe in &m.exes {
            let place = if exe.starts_with('/') {
                String::new()
            } else {
                " on PATH or in /usr/bin, /usr/sbin, /sbin".to_string()
            };
            msg += &format!("  {}: no executable `{exe}`{place}\n", m.package);
        }
    }
    let names: Vec<_> = missing.iter().map(|m| m.package).collect();
    msg += &format!("not installed by the test: {why}\n");
    msg += &format!(
        "install them with: sudo apt-get install -y {}",
        names.join(" ")
    );
    msg
}

/// Fails unless this process runs as root (effective uid 0), naming what the
/// test does that needs it (`needs_it_to`, e.g. `"mount a tmpfs"`). CI runs
/// as root; a test that calls it with `?` or `.expect` fails elsewhere, it
/// never passes without root.
///
/// ```no_run
/// vcodr_testkit::require_root("mount a small tmpfs for a full disk")?;
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn require_root(needs_it_to: &str) -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    root_or_why(effective_uid(&status), needs_it_to)
}

fn root_or_why(uid: Option<u32>, needs_it_to: &str) -> Result<()> {
    match uid {
        Some(0) => Ok(()),
        Some(uid) => bail!(
            "this test needs root to {needs_it_to}, and runs as effective uid {uid}; CI runs as \
             root: run it as root (e.g. `sudo -E cargo test …`)"
        ),
        None => bail!(
            "no `Uid:` line in /proc/self/status: cannot tell whether this test may {needs_it_to}"
        ),
    }
}

/// The effective uid from the text of `/proc/<pid>/status`
/// (`Uid:` real, effective, saved, filesystem).
fn effective_uid(status: &str) -> Option<u32> {
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// The lock that serialises installs between test binaries.
const APT_LOCK: &str = "/tmp/vcodr-testkit-apt.lock";
/// How long a test waits for another one's install (chromium is ~100 MB).
const APT_LOCK_WAIT: Duration = Duration::from_secs(20 * 60);
/// How long apt-get waits for dpkg's own lock (someone else's apt).
const DPKG_LOCK_WAIT_S: u32 = 300;

/// Installs what `packages` lack, as root, with apt-get.
fn install(packages: &[&'static Package], dirs: &[PathBuf]) -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    match effective_uid(&status) {
        Some(0) => {}
        Some(uid) => bail!("not running as root (effective uid {uid})"),
        None => bail!("no `Uid:` line in /proc/self/status"),
    }
    let apt_get = find("apt-get", dirs).ok_or_else(|| anyhow!("no apt-get on this machine"))?;
    let _lock = Lock::acquire(Path::new(APT_LOCK), APT_LOCK_WAIT)?;
    // Another test binary may have installed them while this one waited.
    let names: Vec<_> = look_up(packages, dirs)
        .1
        .iter()
        .map(|m| m.package)
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    note(&format!(
        "installing {} (apt-get install -y --no-install-recommends)",
        names.join(" ")
    ));
    apt(&apt_get, &["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&names);
    apt(&apt_get, &install)?;
    note(&format!("installed {}", names.join(" ")));
    Ok(())
}

/// Runs `apt-get <args>`, once more if it fails.
fn apt(apt_get: &Path, args: &[&str]) -> Result<()> {
    let what = format!("apt-get {}", args.join(" "));
    let mut failure = String::new();
    for attempt in 1..=2 {
        if attempt == 2 {
            note(&format!("`{what}` failed ({failure}); trying once more"));
            std::thread::sleep(Duration::from_secs(2));
        }
        let status = Command::new(apt_get)
            .arg("-o")
            .arg(format!("DPkg::Lock::Timeout={DPKG_LOCK_WAIT_S}"))
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            // apt's progress on stderr, beside this crate's notes.
            .stdout(Stdio::from(io::stderr()))
            .status();
        failure = match status {
            Ok(s) if s.success() => return Ok(()),
            Ok(s) => s.to_string(),
            Err(e) => format!("cannot run {}: {e}", apt_get.display()),
        };
    }
    bail!("`{what}` failed twice ({failure})")
}

/// A line about an install on the process's stderr itself, beside apt-get's
/// output (libtest would hold back an `eprintln!` of a passing test).
fn note(line: &str) {
    let _ = writeln!(io::stderr(), "vcodr-testkit: {line}");
}

/// An exclusive lock between processes: a file made with `create_new` that
/// names its holder (`<pid> <start time>`), removed on drop. A lock whose
/// holder is gone (killed before it could remove the file) is stale and taken
/// over. Two waiters breaking the same stale lock at the same instant could
/// both proceed; dpkg's own lock, which apt-get waits on, still keeps them apart.
#[derive(Debug)]
struct Lock {
    path: PathBuf,
}

/// How old a lock file without a holder's name must be to count as stale
/// (its holder makes it, then writes its name at once).
const UNNAMED_LOCK_STALE: Duration = Duration::from_secs(10);

impl Lock {
    fn acquire(path: &Path, wait: Duration) -> Result<Lock> {
        let me = holder(std::process::id())
            .ok_or_else(|| anyhow!("cannot read this process's /proc/self/stat"))?;
        let deadline = Instant::now() + wait;
        let mut waiting = false;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut file) => {
                    let lock = Lock {
                        path: path.to_path_buf(),
                    };
                    file.write_all(me.as_bytes())
                        .with_context(|| format!("writing {}", path.display()))?;
                    return Ok(lock);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
            let held_by = match fs::read_to_string(path) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // just released
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            if is_stale(path, &held_by) {
                eprintln!(
                    "vcodr-testkit: removing the stale lock {} (held by {:?}, gone)",
                    path.display(),
                    held_by.trim()
                );
                let _ = fs::remove_file(path);
                continue;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} is still held by pid {} after {wait:?}",
                    path.display(),
                    held_by.split_whitespace().next().unwrap_or("?")
                );
            }
            if !waiting {
                eprintln!(
                    "vcodr-testkit: waiting for {} (pid {} is installing packages)",
                    path.display(),
                    held_by.split_whitespace().next().unwrap_or("?")
                );
                waiting = true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// How a lock names the process `pid`: `<pid> <start time>`, so that a pid
/// reused by another process does not keep a stale lock alive.
fn holder(pid: u32) -> Option<String> {
    Some(format!("{pid} {}\n", start_time(pid)?))
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks
/// since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses (which may hold spaces) come
    // fields 3, 4, …
    let (_, fields) = stat.rsplit_once(')')?;
    fields.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The pid and start time in a lock file written by [`holder`].
fn parse_holder(held_by: &str) -> Option<(u32, u64)> {
    let mut words = held_by.split_whitespace();
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

/// Whether the lock at `path`, naming `held_by`, belongs to no live process.
fn is_stale(path: &Path, held_by: &str) -> bool {
    match parse_holder(held_by) {
        Some((pid, started)) => start_time(pid) != Some(started),
        None => fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > UNNAMED_LOCK_STALE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    /// A fresh directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vcodr-testkit-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_file(path: &Path, mode: u32) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn the_list_names_each_package_once_with_what_proves_it() {
        for (i, p) in PACKAGES.iter().enumerate() {
            assert!(!p.provides.is_empty(), "{} proves nothing", p.name);
            assert!(
                PACKAGES[..i].iter().all(|q| q.name != p.name),
                "{} twice",
                p.name
            );
        }
        let pg = PACKAGES.iter().find(|p| p.name == "postgresql").unwrap();
        assert_eq!(pg.provides, ["/usr/lib/postgresql/*/bin/pg_ctl"]);
    }

    #[test]
    fn unknown_packages_are_refused_and_nothing_asks_for_nothing() {
        let e = require(&["chromium", "no-such-package"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`no-such-package` is not in vcodr-testkit's PACKAGES (testkit/src/lib.rs)"
        );
        assert!(require(&[]).unwrap().found.is_empty());
    }

    #[test]
    fn finds_executables_in_the_first_dir_that_has_them() {
        let dir = scratch("find");
        let (a, b) = (dir.join("a"), dir.join("b"));
        write_file(&a.join("tool"), 0o644); // not executable: skipped
        write_file(&b.join("tool"), 0o755);
        write_file(&a.join("other"), 0o755);
        write_file(&b.join("other"), 0o755);
        let dirs = [a.clone(), b.clone()];
        assert_eq!(find("tool", &dirs), Some(b.join("tool")));
        assert_eq!(find("other", &dirs), Some(a.join("other")));
        assert_eq!(find("absent", &dirs), None);
        fs::create_dir_all(a.join("adir")).unwrap();
        assert_eq!(find("adir", &dirs), None, "a directory is no executable");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn path_patterns_pick_the_highest_version() {
        let dir = scratch("pattern");
        for v in ["9.6", "15", "13"] {
            write_file(&dir.join(v).join("bin/pg_ctl"), 0o755);
        }
        write_file(&dir.join("17/bin/pg_ctl"), 0o644); // not executable
        fs::create_dir_all(dir.join("18/bin")).unwrap(); // no pg_ctl
        let pattern = format!("{}/*/bin/pg_ctl", dir.display());
        assert_eq!(find(&pattern, &[]), Some(dir.join("15/bin/pg_ctl")));
        assert_eq!(find(&format!("{}/*/bin/psql", dir.display()), &[]), None);
        assert_eq!(find("/nonexistent-vcodr/*/bin/pg_ctl", &[]), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn look_up_names_what_is_missing_and_where_the_rest_is() {
        let dir = scratch("look-up");
        write_file(&dir.join("chromium"), 0o755);
        let packages: Vec<_> = ["chromium", "chromium-driver"]
            .iter()
            .map(|n| PACKAGES.iter().find(|p| p.name == *n).unwrap())
            .collect();
        let (tools, missing) = look_up(&packages, std::slice::from_ref(&dir));
        assert_eq!(tools.path("chromium"), dir.join("chromium"));
        assert_eq!(
            missing,
            [Missing {
                package: "chromium-driver",
                exes: vec!["chromedriver"]
            }]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[should_panic(expected = "`chromedriver` is not provided by the packages this test required")]
    fn asking_for_a_tool_not_required_is_a_bug() {
        Tools::default().path("chromedriver");
    }

    #[test]
    fn the_message_names_package_executable_reason_and_command() {
        let missing = [
            Missing {
                package: "chromium",
                exes: vec!["chromium"],
            },
            Missing {
                package: "postgresql",
                exes: vec!["/usr/lib/postgresql/*/bin/pg_ctl"],
            },
        ];
        assert_eq!(
            missing_message(&missing, "not running as root (effective uid 1000)"),
            "this test needs Debian packages that are not installed:\n\
             \x20 chromium: no executable `chromium` on PATH or in /usr/bin, /usr/sbin, /sbin\n\
             \x20 postgresql: no executable `/usr/lib/postgresql/*/bin/pg_ctl`\n\
             not installed by the test: not running as root (effective uid 1000)\n\
             install them with: sudo apt-get install -y chromium postgresql"
        );
    }

    #[test]
    fn the_effective_uid_is_the_second_of_the_uid_line() {
        let status = "Name:\tcargo\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Uid:\t0\t1000\t1000\t1000\n"), Some(1000));
        assert_eq!(effective_uid("Name:\tx\n"), None);
        let mine = fs::read_to_string("/proc/self/status").unwrap();
        assert!(effective_uid(&mine).is_some());
    }

    #[test]
    fn root_is_required_by_name() {
        assert!(root_or_why(Some(0), "mount a tmpfs").is_ok());
        assert_eq!(
            root_or_why(Some(1000), "mount a tmpfs").unwrap_err().to_string(),
            "this test needs root to mount a tmpfs, and runs as effective uid 1000; CI runs as root: \
             run it as root (e.g. `sudo -E cargo test …`)"
        );
        assert!(root_or_why(None, "x").is_err());
    }

    #[test]
    fn a_lock_is_exclusive_and_released_on_drop() {
        let dir = scratch("lock");
        let path = dir.join("apt.lock");
        let first = Lock::acquire(&path, Duration::ZERO).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            holder(std::process::id()).unwrap()
        );
        let e = Lock::acquire(&path, Duration::from_millis(300)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} is still held by pid {} after 300ms",
                path.display(),
                std::process::id()
            )
        );
        drop(first);
        assert!(!path.exists());
        drop(Lock::acquire(&path, Duration::ZERO).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lock_of_a_dead_process_is_taken_over() {
        let dir = scratch("stale");
        let path = dir.join("apt.lock");
        // Above any pid_max (at most 2^22): no such process.
        fs::write(&path, format!("{} 12345\n", i32::MAX)).unwrap();
        let lock = Lock::acquire(&path, Duration::ZERO).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            holder(std::process::id()).unwrap()
        );
        drop(lock);
        // A live pid that started at another time: the pid was reused.
        let started = start_time(std::process::id()).unwrap();
        fs::write(&path, format!("{} {}\n", std::process::id(), started + 1)).unwrap();
        drop(Lock::acquire(&path, Duration::ZERO).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unnamed_lock_is_stale_only_once_old() {
        let dir = scratch("unnamed");
        let path = dir.join("apt.lock");
        File::create(&path).unwrap(); // its holder is about to write its name
        assert!(Lock::acquire(&path, Duration::from_millis(300)).is_err());
        let file = File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() - 2 * UNNAMED_LOCK_STALE)
            .unwrap();
        drop(file);
        drop(Lock::acquire(&path, Duration::ZERO).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }
}

/// A tmpfs a test mounts (as root: see [`require_root`]), to give a server a
/// small filesystem it can fill; unmounted (lazily if busy) and its mount
/// point removed when dropped, also when the test fails.
#[derive(Debug)]
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) at `at`,
    /// creating the mount point.
    pub fn mount(at: &Path, size: &str) -> Result<Tmpfs> {
        fs::create_dir_all(at).with_context(|| format!("creating mount point {}", at.display()))?;
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .context("running mount")?;
        if !st.success() {
            bail!("mount -t tmpfs at {} failed: {st}", at.display());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }

    /// Writes a file at `path` (on this filesystem) until the filesystem is
    /// full; returns the bytes written. Any error but ENOSPC fails.
    pub fn fill(&self, path: &Path) -> Result<u64> {
        let mut f =
            fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(e).with_context(|| format!("filling {}", path.display())),
            }
        }
        let _ = f.sync_all();
        Ok(written)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
        let _ = fs::remove_dir(&self.0);
    }
}
