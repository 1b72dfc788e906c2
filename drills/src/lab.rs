//! The drills' network: four network namespaces this process makes and
//! removes, and the links a nemesis cuts.
//!
//! ```text
//!   root namespace (this test process: writers, operator, checker)
//!        vd<pid>-<n>h  10.X.Y.254
//!            │ veth
//!   ┌────────┴──────────── vd<pid>-<n>s: bridge br0 ─────────────┐
//!   │ veth                  │ veth                  │ veth        │
//! vd<pid>-<n>a            vd<pid>-<n>b            vd<pid>-<n>e
//! eth0 10.X.Y.1           eth0 10.X.Y.2           eth0 10.X.Y.3
//! `vcodr serve` a         `vcodr serve` b         `vcodr edge-sim`
//! ```
//!
//! One /24 (`10.X.Y.0/24`, X in 64..=127, chosen from the pid and checked
//! against every route and address of the root namespace) holds every
//! address. The root namespace gets one veth end with `.254`, which is
//! the only thing the drills add there: it disappears with the switch
//! namespace. Cuts are `iptables -j DROP` rules inside a server's
//! namespace, by peer address, so a cut between a and b or between a server
//! and the edges never touches the admin traffic from `.254`.
//!
//! Names carry this process's pid. [`Lab::create`] first removes the
//! namespaces (and what runs in them) and tmpfs mounts of earlier runs
//! whose pid is dead; a live run's are never touched. [`Lab`]'s `Drop`
//! removes its own, also when a drill panics.

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// Prefix of every name the drills make (namespaces, the root-side veth,
/// directories under the temp dir: `vcodr-drill-<pid>-…`).
pub const PREFIX: &str = "vd";
/// Prefix of the drills' directories under the system temp dir.
pub const DIR_PREFIX: &str = "vcodr-drill";

/// Where a process of the drill runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// Server a (index 0).
    A,
    /// Server b (index 1).
    B,
    /// The edge simulator.
    Edges,
}

impl Host {
    fn suffix(self) -> char {
        match self {
            Host::A => 'a',
            Host::B => 'b',
            Host::Edges => 'e',
        }
    }

    fn last_octet(self) -> u8 {
        match self {
            Host::A => 1,
            Host::B => 2,
            Host::Edges => 3,
        }
    }

    /// Server `i` (0: a, 1: b).
    pub fn server(i: usize) -> Host {
        match i {
            0 => Host::A,
            _ => Host::B,
        }
    }
}

/// Last octet of the root namespace's address on the drills' subnet.
const HOST_OCTET: u8 = 254;

/// The namespaces, bridge and addresses of one drill run; removed on drop.
#[derive(Debug)]
pub struct Lab {
    ip: PathBuf,
    iptables: PathBuf,
    /// `vd<pid>-<n>`: the stem of every name.
    pub tag: String,
    /// The first three octets of the /24.
    pub net: [u8; 3],
    /// Namespaces made so far (removed on drop, last first).
    made: Vec<String>,
    /// The root-side veth, once made.
    host_link: Option<String>,
}

/// Labs made by this process (names stay unique if a process makes several).
static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Makes the namespaces, bridge, veths and addresses. Needs root,
    /// `ip` and `iptables` (from [`vcodr_testkit::require`]).
    pub fn create(ip: &Path, iptables: &Path) -> Result<Lab> {
        clean_stale(ip)?;
        let pid = std::process::id();
        let n = LABS.fetch_add(1, Relaxed);
        let tag = format!("{PREFIX}{pid}-{n}");
        let net = free_subnet(ip, pid.wrapping_mul(31).wrapping_add(n))?;
        let mut lab = Lab {
            ip: ip.to_path_buf(),
            iptables: iptables.to_path_buf(),
            tag,
            net,
            made: Vec::new(),
            host_link: None,
        };
        lab.build()
            .with_context(|| format!("building the drill network {}", lab.tag))?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        let sw = self.ns_name('s');
        self.add_ns(&sw)?;
        self.ip_in(&sw, &["link", "add", "br0", "type", "bridge"])?;
        self.ip_in(&sw, &["link", "set", "br0", "up"])?;
        for host in [Host::A, Host::B, Host::Edges] {
            let ns = self.ns(host);
            self.add_ns(&ns)?;
            let port = format!("p{}", host.suffix());
            self.ip_in(
                &ns,
                &[
                    "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &sw,
                ],
            )?;
            self.ip_in(&sw, &["link", "set", &port, "master", "br0"])?;
            self.ip_in(&sw, &["link", "set", &port, "up"])?;
            let addr = format!("{}/24", self.addr(host));
            self.ip_in(&ns, &["addr", "add", &addr, "dev", "eth0"])?;
            self.ip_in(&ns, &["link", "set", "eth0", "up"])?;
        }
        let host_link = format!("{}h", self.tag);
        run(
            &self.ip,
            &[
                "link", "add", &host_link, "type", "veth", "peer", "name", "ph", "netns", &sw,
            ],
        )?;
        self.host_link = Some(host_link.clone());
        self.ip_in(&sw, &["link", "set", "ph", "master", "br0"])?;
        self.ip_in(&sw, &["link", "set", "ph", "up"])?;
        let addr = format!("{}/24", self.host_addr());
        run(&self.ip, &["addr", "add", &addr, "dev", &host_link])?;
        run(&self.ip, &["link", "set", &host_link, "up"])?;
        Ok(())
    }

    fn add_ns(&mut self, name: &str) -> Result<()> {
        run(&self.ip, &["netns", "add", name])?;
        self.made.push(name.to_string());
        self.ip_in(name, &["link", "set", "lo", "up"])
    }

    fn ns_name(&self, suffix: char) -> String {
        format!("{}{suffix}", self.tag)
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: Host) -> String {
        self.ns_name(host.suffix())
    }

    /// The address of `host` on the drills' subnet.
    pub fn addr(&self, host: Host) -> String {
        let [a, b, c] = self.net;
        format!("{a}.{b}.{c}.{}", host.last_octet())
    }

    /// This (root) namespace's address on the drills' subnet.
    pub fn host_addr(&self) -> String {
        let [a, b, c] = self.net;
        format!("{a}.{b}.{c}.{HOST_OCTET}")
    }

    /// `ip netns exec <ns of host> <program>`: the command runs as that
    /// process (ip execs it), so its pid is the program's.
    pub fn command_in(&self, host: Host, program: &Path) -> Command {
        let mut c = Command::new(&self.ip);
        c.args(["netns", "exec", &self.ns(host)]).arg(program);
        c
    }

    fn ip_in(&self, ns: &str, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        run(&self.ip, &all)
    }

    fn iptables_in(&self, host: Host, args: &[&str]) -> Result<()> {
        let ns = self.ns(host);
        let mut all = vec!["netns", "exec", &ns];
        let prog = self.iptables.to_string_lossy().into_owned();
        all.push(&prog);
        all.push("-w");
        all.extend_from_slice(args);
        run(&self.ip, &all)
    }

    /// Drops, silently, what `on` receives from `from` (`inbound`) and sends
    /// to it (`outbound`).
    pub fn drop_traffic(&self, on: Host, from: Host, inbound: bool, outbound: bool) -> Result<()> {
        let other = self.addr(from);
        if inbound {
            self.iptables_in(on, &["-I", "INPUT", "-s", &other, "-j", "DROP"])?;
        }
        if outbound {
            self.iptables_in(on, &["-I", "OUTPUT", "-d", &other, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<()> {
        for host in [Host::A, Host::B, Host::Edges] {
            self.iptables_in(host, &["-F"])?;
        }
        Ok(())
    }

    /// Pids of the processes running in `host`'s namespace.
    pub fn pids_in(&self, host: Host) -> Vec<u32> {
        pids_in_ns(&self.ip, &self.ns(host))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in self.made.iter().rev() {
            // Whatever still runs in it (the drill kills its own processes
            // first; this is for a panic halfway through starting one).
            for pid in pids_in_ns(&self.ip, name) {
                kill9(pid);
            }
            let _ = Command::new(&self.ip).args(["netns", "del", name]).status();
        }
        // Gone with the switch namespace; deleted in case that failed.
        if let Some(link) = &self.host_link {
            let _ = Command::new(&self.ip)
                .args(["link", "del", link])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Runs `program args`; fails naming the command and its stderr.
pub fn run(program: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "`{} {}` failed ({}): {}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn output(program: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "`{} {}` failed: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pids_in_ns(ip: &Path, ns: &str) -> Vec<u32> {
    output(ip, &["netns", "pids", ns])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn kill9(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

/// Whether a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid in a drill name `vd<pid>-<n><suffix>`, if `name` is one.
pub fn pid_of_name(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, tail) = rest.split_once('-')?;
    let digits = tail.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &tail[digits.len()..];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || suffix.len() != 1 {
        return None;
    }
    pid.parse().ok()
}

/// The pid in a drill directory name `vcodr-drill-<pid>-…`.
pub fn pid_of_dir(name: &str) -> Option<u32> {
    name.strip_prefix(DIR_PREFIX)?
        .strip_prefix('-')?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Removes what earlier drill runs left behind when they died without
/// cleaning up (SIGKILL, a crash): their namespaces with whatever runs in
/// them, their root-side veth, their tmpfs mounts. Only names whose pid is
/// dead; their directories are kept (they hold the logs).
pub fn clean_stale(ip: &Path) -> Result<()> {
    let list = output(ip, &["netns", "list"])?;
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = pid_of_name(name) else {
            continue;
        };
        if alive(pid) {
            continue;
        }
        eprintln!("drills: removing namespace {name} left by dead process {pid}");
        for p in pids_in_ns(ip, name) {
            kill9(p);
        }
        let _ = run(ip, &["netns", "del", name]);
    }
    let links = output(ip, &["-o", "link", "show"])?;
    for line in links.lines() {
        // "12: vd123-0h@if11: <...>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if let Some(pid) = pid_of_name(name) {
            if !alive(pid) {
                let _ = run(ip, &["link", "del", name]);
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let tmp = std::env::temp_dir();
    for line in mounts.lines() {
        let Some(target) = line.split_whitespace().nth(1) else {
            continue;
        };
        let target = Path::new(target);
        let Ok(rest) = target.strip_prefix(&tmp) else {
            continue;
        };
        let Some(top) = rest.iter().next().and_then(|s| s.to_str()) else {
            continue;
        };
        if pid_of_dir(top).is_some_and(|pid| !alive(pid)) {
            eprintln!("drills: unmounting {} left by a dead run", target.display());
            let _ = Command::new("umount").arg("-l").arg(target).status();
        }
    }
    Ok(())
}

/// IPv4 networks (address, prefix length) of the root namespace's routes
/// and addresses.
fn used_networks(ip: &Path) -> Result<Vec<(u32, u32)>> {
    let mut nets = Vec::new();
    let routes = output(ip, &["-4", "-o", "route", "show", "table", "all"])?;
    let addrs = output(ip, &["-4", "-o", "addr", "show"])?;
    let words = routes
        .lines()
        .filter_map(|l| {
            let w = l.split_whitespace().next()?;
            // "broadcast 10.0.0.255 …", "local …" in table local
            if matches!(
                w,
                "broadcast" | "local" | "unicast" | "anycast" | "multicast"
            ) {
                l.split_whitespace().nth(1)
            } else {
                Some(w)
            }
        })
        .chain(addrs.lines().filter_map(|l| {
            let mut it = l.split_whitespace();
            it.position(|w| w == "inet")?;
            it.next()
        }));
    for w in words {
        if let Some(n) = parse_cidr(w) {
            nets.push(n);
        }
    }
    Ok(nets)
}

/// `a.b.c.d/len` or `a.b.c.d` (a /32); `default` is no network here.
pub fn parse_cidr(s: &str) -> Option<(u32, u32)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse().ok()?),
        None => (s, 32),
    };
    let ip: std::net::Ipv4Addr = addr.parse().ok()?;
    (len <= 32).then_some((u32::from(ip), len))
}

/// Whether two IPv4 networks share an address.
pub fn overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

/// A /24 in 10.64.0.0/10 that no route or address of this namespace
/// touches, starting from `hint`.
fn free_subnet(ip: &Path, hint: u32) -> Result<[u8; 3]> {
    let used = used_networks(ip)?;
    const CANDIDATES: u32 = 64 * 256;
    for k in 0..CANDIDATES {
        let c = (hint.wrapping_add(k)) % CANDIDATES;
        let net = [10, 64 + (c / 256) as u8, (c % 256) as u8];
        let n = (
            u32::from(std::net::Ipv4Addr::new(net[0], net[1], net[2], 0)),
            24,
        );
        if !used.iter().any(|u| u.1 > 0 && overlaps(*u, n)) {
            return Ok(net);
        }
    }
    Err(anyhow!("no free /24 in 10.64.0.0/10 for the drills"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_pid() {
        assert_eq!(pid_of_name("vd1234-0a"), Some(1234));
        assert_eq!(pid_of_name("vd1234-12h"), Some(1234));
        assert_eq!(pid_of_name("vd1234-0"), None);
        assert_eq!(pid_of_name("vd1234-xa"), None);
        assert_eq!(pid_of_name("vdx-0a"), None);
        assert_eq!(pid_of_name("vcodr-1234-a"), None);
        assert_eq!(pid_of_dir("vcodr-drill-99-0a1b"), Some(99));
        assert_eq!(pid_of_dir("vcodr-drills"), None);
    }

    #[test]
    fn networks_overlap_by_their_common_prefix() {
        let n = |s| parse_cidr(s).unwrap();
        assert!(overlaps(n("10.0.0.0/8"), n("10.70.3.0/24")));
        assert!(!overlaps(n("10.70.4.0/24"), n("10.70.3.0/24")));
        assert!(overlaps(n("10.70.3.7"), n("10.70.3.0/24")));
        assert!(!overlaps(n("192.0.2.0/24"), n("10.70.3.0/24")));
        assert_eq!(parse_cidr("default"), None);
        assert_eq!(parse_cidr("10.1.2.3/33"), None);
    }
}
