//! Network-namespace lab: build and tear down namespace topologies for the demo, the end-to-end tests and the
//! benchmarks. [`lab`] puts our gateway and its control plane into such a topology; [`demo`] is `hyperplane demo`;
//! [`churn`] is the connection-churn harness; [`probe`] sends and reads ICMP.
//!
//! Everything here shells out to `ip` (iproute2) and, where named, `nft`, `ethtool`, `sysctl` and `ping`; a missing
//! tool is reported as [`LabError::MissingTool`] with the Debian package that provides it. All of it needs root
//! ([`is_root`]); root-only tests call [`require_root`] first and are ignored when not built as root.
//!
//! # Contracts
//!
//! * **Ownership.** A [`Netns`] owns the namespace it names: dropping it kills (SIGKILL) every process whose main
//!   thread is still in the namespace (the same test `ip netns pids` makes; this process itself is never killed) and
//!   then runs `ip netns del`, ignoring errors. Drop runs during unwinding too, so a panicking test leaves nothing
//!   behind. Setting `NETLAB_KEEP=1` in the environment keeps namespaces for post-mortem debugging (a later
//!   [`sweep_stale`] removes them).
//! * **Names.** [`unique`] makes `{prefix}-{pid}-{counter}` with the creating process id and a process-wide counter,
//!   both in lowercase base 36. With a prefix of at most 4 characters the result fits in 15 bytes, so it is valid as
//!   an interface name as well as a namespace name. Any namespace or root-namespace link whose name *starts* with
//!   `{prefix}-{pid}-` (a role suffix such as `-gw` may follow) is considered to belong to that process:
//!   [`sweep_stale`] deletes those whose process is gone, which is how a crashed run's litter is cleaned up. Parallel
//!   tests never collide as long as every name comes from [`unique`].
//! * **Sockets in a namespace.** [`Netns::run`] and [`Netns::thread`] run a closure on a fresh thread that has
//!   entered the namespace (`setns(CLONE_NEWNET)`). A socket belongs to the namespace it was *created* in, so a
//!   listener or stream created inside `run` may be returned and used from any thread afterwards.
//! * **Links.** Veth ends are created directly inside their target namespaces (`ip link add A netns X type veth peer
//!   name B netns Y`), so short fixed names such as `gw` or `e0` can be reused in every namespace without clashing
//!   with the root namespace or with parallel tests. A link left in the root namespace must have a unique name; note
//!   that when its peer's namespace is deleted the kernel removes it asynchronously, a few milliseconds later.
//! * **Batching.** [`ip_batch`] feeds many commands to one `ip -batch -` process; [`Netns::new_many`],
//!   [`destroy_all`] and [`KernelNat`] use it so that topologies of 50+ environments build in a fraction of a
//!   second. A failing batch reports the failing line.
//! * **Errors.** Every failure is a typed [`LabError`] that names the command and shows its stderr.
//!
//! # Address plan
//!
//! Shared by the kernel-NAT reference topology ([`KernelNat`]) and the TAP-gateway topology:
//!
//! ```text
//!  env i (env_addr(i)/32) ── gw: INSIDE_GATEWAY/32 ─┐
//!                                                  gw (router: kernel NAT or hyperplane) ENI/24
//!                                                   └── VPC namespace: VPC_ROUTER/24, forwards,
//!                                                         SERVER_ROUTER/24 ── server ns: SERVER/24
//! ```

use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

pub mod churn;
pub mod demo;
mod kernel_nat;
pub mod lab;
pub mod meter;
pub mod probe;
pub mod vm;

pub use kernel_nat::{KernelNat, ENV_LINK, GW_OUTSIDE_LINK};

/// The VPC router's address towards the gateway (`/24` with [`ENI`]).
pub const VPC_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The gateway's outside ("ENI") address; every environment is masqueraded to it.
pub const ENI: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
/// Prefix length of the VPC link between the gateway and [`VPC_ROUTER`].
pub const VPC_PREFIX_LEN: u8 = 24;
/// The VPC router's address towards the server.
pub const SERVER_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
/// The server's address (behind the VPC router, which has no route back to `172.16.0.0/12`).
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
/// Prefix length of the server link.
pub const SERVER_PREFIX_LEN: u8 = 24;
/// The gateway's address on every environment link (a `/32` on each link, point to point).
pub const INSIDE_GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
/// Largest number of environments [`env_addr`] can number.
pub const MAX_ENVS: usize = 250 * 256;

/// The address of environment `i`: `172.16.(i / 250).(i % 250 + 2)`, used as a `/32`.
///
/// # Panics
/// If `i >= MAX_ENVS`.
pub fn env_addr(i: usize) -> Ipv4Addr {
    assert!(i < MAX_ENVS, "env_addr: environment {i} is beyond the plan ({MAX_ENVS} environments)");
    Ipv4Addr::new(172, 16, (i / 250) as u8, (i % 250 + 2) as u8)
}

/// Everything that can go wrong while building or probing a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command ran and exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line, roughly as a shell would show it.
        cmd: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A command could not be started at all.
    #[error("could not start `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why it did not start.
        #[source]
        source: io::Error,
    },
    /// A required program is not installed.
    #[error(
        "`{tool}` not found in PATH, /usr/sbin, /sbin, /usr/bin or /bin{}",
        .package.map(|p| format!(" (install the Debian package `{p}`)")).unwrap_or_default()
    )]
    MissingTool {
        /// The program.
        tool: String,
        /// The Debian package that provides it, when it is one this module knows.
        package: Option<&'static str>,
    },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An argument that can never work.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl LabError {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        LabError::Io { what: what.into(), source }
    }
}

/// Whether the process runs with effective uid 0 (everything in this module needs it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A TCP server on `addr` inside `ns` that answers every line it reads with `answer(line, peer)` (one thread per
/// connection, living as long as the process: the tests' echo and who-am-I servers).
pub fn line_server(
    ns: &Netns,
    addr: std::net::SocketAddrV4,
    answer: fn(&str, std::net::SocketAddr) -> String,
) -> io::Result<()> {
    use std::io::{BufRead, BufReader};
    let l = ns.run(move || std::net::TcpListener::bind(addr))?;
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(peer) = c.peer_addr() else { return };
                let Ok(read) = c.try_clone() else { return };
                let (mut r, mut w) = (BufReader::new(read), c);
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if w.write_all(answer(&line, peer).as_bytes()).is_err() {
                        break;
                    }
                    line.clear();
                }
            });
        }
    });
    Ok(())
}

/// The first line of every root-only test: such tests are `#[ignore]`d unless built as root (`cfg(root_tests)`,
/// set by the build script `dataplane/io/build.rs`), and this makes one that runs anyway without root fail loudly
/// instead of passing without testing anything.
pub fn require_root() {
    assert!(is_root(), "needs root: network namespaces and TAP devices (run the tests as root)");
}

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// The counter wraps at 36^4 so that it keeps to 4 base-36 digits.
const COUNTER_MODULUS: u32 = 36 * 36 * 36 * 36;

/// A short name unique to this process and call: `{prefix}-{pid}-{counter}` (pid and counter in base 36).
///
/// Budget: prefix ≤ 4 + `-` + pid ≤ 5 (pids are < 2^22 < 36^5) + `-` + counter ≤ 4 = 15 bytes, the interface-name
/// limit. The counter wraps after 1,679,616 names per process. See the module doc for the naming convention that
/// [`sweep_stale`] relies on.
///
/// # Panics
/// If `prefix` is empty, longer than 4 bytes or not ASCII alphanumeric (a programming error).
pub fn unique(prefix: &str) -> String {
    assert!(
        !prefix.is_empty() && prefix.len() <= 4 && prefix.bytes().all(|b| b.is_ascii_alphanumeric()),
        "netlab::unique: prefix {prefix:?} must be 1 to 4 ASCII letters or digits"
    );
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) % COUNTER_MODULUS;
    format!("{prefix}-{}-{}", base36(std::process::id()), base36(n))
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

/// The pid encoded in a name that follows the [`unique`] convention for `prefix`.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (pid, counter) = rest.split_once('-')?;
    let digit = |b: u8| b.is_ascii_digit() || b.is_ascii_lowercase();
    if pid.is_empty() || counter.is_empty() || !pid.bytes().all(digit) {
        return None;
    }
    u32::from_str_radix(pid, 36).ok().filter(|&p| p > 0)
}

fn pid_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else { return false };
    // Signal 0: existence and permission only, nothing is delivered.
    matches!(rustix::process::test_kill_process(pid), Ok(()) | Err(rustix::io::Errno::PERM))
}

/// Deletes namespaces (and root-namespace links) named by [`unique`] with this `prefix` whose creating process is no
/// longer alive, killing processes left in them first. Returns the names removed.
///
/// Names of live processes — this one, or a parallel test run — are never touched. A stale name whose pid has since
/// been reused by an unrelated process stays until that process exits.
pub fn sweep_stale(prefix: &str) -> Vec<String> {
    let stale = |name: &String| owner_pid(name, prefix).is_some_and(|pid| !pid_alive(pid));
    let namespaces: Vec<String> = list_dir(Path::new(NETNS_DIR)).into_iter().filter(stale).collect();
    let links: Vec<String> = list_dir(Path::new("/sys/class/net")).into_iter().filter(stale).collect();
    if !namespaces.is_empty() {
        warn!(?namespaces, "netlab: removing stale namespaces");
        delete_namespaces(&namespaces);
    }
    if !links.is_empty() {
        warn!(?links, "netlab: removing stale links");
        let cmds: Vec<String> = links.iter().map(|l| format!("link del dev {l}")).collect();
        let _ = ip_batch_inner(None, &cmds, true);
    }
    namespaces.into_iter().chain(links).collect()
}

fn list_dir(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect(),
        Err(_) => Vec::new(),
    }
}

const NETNS_DIR: &str = "/run/netns";

/// A named network namespace (`/run/netns/NAME`), deleted on drop. See the module doc for the contract.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace (`ip netns add NAME`) and brings its loopback up.
    pub fn new(name: impl Into<String>) -> Result<Netns, LabError> {
        let name = name.into();
        validate_ns_name(&name)?;
        run_tool("ip", &["netns", "add", &name], None)?;
        // From here on the namespace is ours: Drop cleans it up if the rest fails.
        let ns = Netns { name };
        ns.link_up("lo")?;
        Ok(ns)
    }

    /// Creates several namespaces with one `ip -batch` process (plus one `ip` per namespace for the loopback).
    /// On error, namespaces this call created are deleted again.
    pub fn new_many<S: AsRef<str>>(names: &[S]) -> Result<Vec<Netns>, LabError> {
        let nss = Netns::add_many(names)?;
        for ns in &nss {
            ns.link_up("lo")?;
        }
        Ok(nss)
    }

    /// `ip -batch` of `netns add` lines, loopback left down.
    pub(crate) fn add_many<S: AsRef<str>>(names: &[S]) -> Result<Vec<Netns>, LabError> {
        for name in names {
            validate_ns_name(name.as_ref())?;
        }
        if let Some(name) = names.iter().find(|n| ns_path(n.as_ref()).exists()) {
            return Err(LabError::Invalid(format!("namespace {} already exists", name.as_ref())));
        }
        let cmds: Vec<String> = names.iter().map(|n| format!("netns add {}", n.as_ref())).collect();
        let added = ip_batch(None, &cmds);
        // Adopt whatever exists now (created by this call, see the check above), so Drop cleans up on error.
        let nss: Vec<Netns> = names
            .iter()
            .filter(|n| ns_path(n.as_ref()).exists())
            .map(|n| Netns { name: n.as_ref().to_owned() })
            .collect();
        added?;
        Ok(nss)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind-mount file, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        ns_path(&self.name)
    }

    /// Runs `ip netns exec NAME args...` to completion; a non-zero exit is an error carrying stderr.
    /// `args[0]` is resolved to an absolute path first (also in /usr/sbin and /sbin).
    pub fn exec(&self, args: &[&str]) -> Result<Output, LabError> {
        let (mut cmd, line) = self.exec_command(args)?;
        finish(&mut cmd, &line, None)
    }

    /// Starts `ip netns exec NAME args...` in the background with stdin, stdout and stderr on /dev/null, and returns
    /// once the child is inside the namespace (or has already exited). The child's pid is the program's own (`ip
    /// netns exec` execs it); the caller kills and waits for it, and dropping the namespace SIGKILLs it if the caller
    /// did not. For other stdio, use [`Netns::command`] (which does not wait for the setns).
    pub fn spawn(&self, args: &[&str]) -> Result<Child, LabError> {
        let (mut cmd, line) = self.exec_command(args)?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        debug!(cmd = %line, "netlab: spawn");
        let target =
            std::fs::metadata(self.path()).map_err(|e| LabError::io(format!("stat {}", self.path().display()), e))?;
        let mut child = cmd.spawn().map_err(|source| LabError::Spawn { cmd: line.clone(), source })?;
        // Return only once the child is inside the namespace, so that dropping the namespace right away finds
        // (and kills) it instead of racing with `ip netns exec`'s setns.
        let deadline = Instant::now() + Duration::from_secs(5);
        let proc_ns = format!("/proc/{}/ns/net", child.id());
        loop {
            if std::fs::metadata(&proc_ns).is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino()) {
                return Ok(child);
            }
            match child.try_wait() {
                // Already finished (a quick command): the caller's wait() returns the status.
                Ok(Some(_)) => return Ok(child),
                Ok(None) => {}
                Err(e) => return Err(LabError::io(format!("wait for `{line}`"), e)),
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let e = io::Error::new(io::ErrorKind::TimedOut, "did not enter the namespace within 5 s");
                return Err(LabError::io(format!("spawn `{line}`"), e));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A prepared `ip netns exec NAME args...` command, for callers that want their own stdio or environment.
    pub fn command(&self, args: &[&str]) -> Result<Command, LabError> {
        Ok(self.exec_command(args)?.0)
    }

    fn exec_command(&self, args: &[&str]) -> Result<(Command, String), LabError> {
        let (program, rest) =
            args.split_first().ok_or_else(|| LabError::Invalid("Netns::exec needs a program".into()))?;
        let program = if program.contains('/') { PathBuf::from(program) } else { find_tool(program)? };
        let mut cmd = Command::new(find_tool("ip")?);
        cmd.args(["netns", "exec", &self.name]).arg(&program).args(rest);
        let line = display_cmd(
            "ip",
            ["netns", "exec", &self.name, &program.to_string_lossy()].into_iter().chain(rest.iter().copied()),
        );
        Ok((cmd, line))
    }

    /// Runs `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> Result<Output, LabError> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_tool("ip", &full, None)
    }

    /// Runs many `ip` commands (without the leading `ip`) in this namespace with one `ip -n NAME -batch -`.
    pub fn ip_batch<S: AsRef<str>>(&self, cmds: &[S]) -> Result<(), LabError> {
        ip_batch(Some(self), cmds)
    }

    /// Sets a sysctl inside the namespace (`sysctl -qw key=value`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), LabError> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]).map(drop)
    }

    /// `ip -n NAME addr add CIDR dev LINK`, e.g. `addr_add("eth0", "10.0.0.1/24")`.
    pub fn addr_add(&self, link: &str, cidr: &str) -> Result<(), LabError> {
        self.ip(&["addr", "add", cidr, "dev", link]).map(drop)
    }

    /// `ip -n NAME link set LINK up`.
    pub fn link_up(&self, link: &str) -> Result<(), LabError> {
        self.ip(&["link", "set", link, "up"]).map(drop)
    }

    /// `ip -n NAME route add DST via VIA`; `dst` may be `default`.
    pub fn route_add(&self, dst: &str, via: Ipv4Addr) -> Result<(), LabError> {
        self.ip(&["route", "add", dst, "via", &via.to_string()]).map(drop)
    }

    /// `ip -n NAME route add DST dev LINK` (an on-link route).
    pub fn route_add_dev(&self, dst: &str, link: &str) -> Result<(), LabError> {
        self.ip(&["route", "add", dst, "dev", link]).map(drop)
    }

    /// Runs `f` on a new thread inside the namespace, waits for it and returns its result; a panic in `f` (or a
    /// failure to enter the namespace) is propagated.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        match self.thread(f).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Spawns a thread that enters the namespace and then runs `f`. The thread holds its own reference to the
    /// namespace, so it keeps working (with the namespace's links) even if this `Netns` is dropped meanwhile.
    ///
    /// The thread panics before calling `f` if it cannot enter the namespace.
    pub fn thread<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let path = self.path();
        let file = File::open(&path);
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("ns:{name}"))
            .spawn(move || {
                let file = file.unwrap_or_else(|e| panic!("netlab: cannot open {}: {e}", path.display()));
                enter(&file).unwrap_or_else(|e| panic!("netlab: cannot enter namespace {name}: {e}"));
                f()
            })
            .expect("netlab: cannot spawn a thread")
    }

    /// Moves the *calling* thread into the namespace, for good. Meant for threads the caller owns (e.g. a
    /// gateway's worker); prefer [`Netns::run`] / [`Netns::thread`].
    pub fn enter_current_thread(&self) -> Result<(), LabError> {
        let file = File::open(self.path()).map_err(|e| LabError::io(format!("open {}", self.path().display()), e))?;
        enter(&file)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Empty when destroy_all took the name over.
        let name = std::mem::take(&mut self.name);
        delete_namespaces(&[name]);
    }
}

fn enter(file: &File) -> Result<(), LabError> {
    use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
        .map_err(|e| LabError::io("setns(CLONE_NEWNET)", e.into()))
}

fn ns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn validate_ns_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b.is_ascii_whitespace() || b.is_ascii_control());
    if ok {
        Ok(())
    } else {
        Err(LabError::Invalid(format!("{name:?} is not a valid namespace name")))
    }
}

/// Deletes several namespaces at once: kills the processes left in them, then one `ip -force -batch` with
/// `netns del` lines. Errors are ignored (as in `Drop`).
pub fn destroy_all(namespaces: Vec<Netns>) {
    let names: Vec<String> = namespaces.into_iter().map(|mut ns| std::mem::take(&mut ns.name)).collect();
    delete_namespaces(&names);
}

fn delete_namespaces(names: &[String]) {
    let names: Vec<&String> = names.iter().filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        return;
    }
    if std::env::var_os("NETLAB_KEEP").is_some_and(|v| !v.is_empty() && v != "0") {
        warn!(?names, "netlab: NETLAB_KEEP is set, keeping namespaces");
        return;
    }
    kill_processes_in(&names);
    let cmds: Vec<String> = names.iter().map(|n| format!("netns del {n}")).collect();
    if let Err(e) = ip_batch_inner(None, &cmds, true) {
        debug!(%e, "netlab: deleting namespaces");
    }
}

/// SIGKILLs every process (other than this one) whose main thread is in one of the named namespaces, found the way
/// `ip netns pids` finds them: by comparing `/proc/PID/ns/net` with the namespace file.
fn kill_processes_in(names: &[&String]) {
    let ids: Vec<(u64, u64)> =
        names.iter().filter_map(|n| std::fs::metadata(ns_path(n)).ok()).map(|m| (m.dev(), m.ino())).collect();
    if ids.is_empty() {
        return;
    }
    let me = std::process::id();
    for entry in list_dir(Path::new("/proc")) {
        let Ok(pid) = entry.parse::<u32>() else { continue };
        if pid == me {
            continue;
        }
        let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else { continue };
        if ids.contains(&(meta.dev(), meta.ino())) {
            debug!(pid, "netlab: killing process left in a namespace");
            if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Moves a root-namespace link into `ns` (`ip link set LINK netns NAME`).
pub fn move_link(link: &str, ns: &Netns) -> Result<(), LabError> {
    run_tool("ip", &["link", "set", link, "netns", ns.name()], None).map(drop)
}

/// Creates the veth pair `a`/`b`, each end directly in its namespace (`None`: the root namespace). Both ends stay
/// down. Names in the root namespace must be unique (use [`unique`]).
pub fn veth(a: &str, ns_a: Option<&Netns>, b: &str, ns_b: Option<&Netns>) -> Result<(), LabError> {
    run_tool("ip", &veth_args(a, ns_a, b, ns_b).iter().map(String::as_str).collect::<Vec<_>>(), None).map(drop)
}

fn veth_args(a: &str, ns_a: Option<&Netns>, b: &str, ns_b: Option<&Netns>) -> Vec<String> {
    let mut args = vec!["link".to_owned(), "add".to_owned(), a.to_owned()];
    if let Some(ns) = ns_a {
        args.extend(["netns".to_owned(), ns.name().to_owned()]);
    }
    args.extend(["type", "veth", "peer", "name", b].map(str::to_owned));
    if let Some(ns) = ns_b {
        args.extend(["netns".to_owned(), ns.name().to_owned()]);
    }
    args
}

/// The `ip` batch line that [`veth`] would run, for use with [`ip_batch`].
pub fn veth_batch_line(a: &str, ns_a: Option<&Netns>, b: &str, ns_b: Option<&Netns>) -> String {
    veth_args(a, ns_a, b, ns_b).join(" ")
}

/// Runs many `ip` commands (each line without the leading `ip`, e.g. `link set e0 up`) with one `ip -batch -`,
/// in `ns` or in the root namespace. Stops at the first failing line and reports it.
pub fn ip_batch<S: AsRef<str>>(ns: Option<&Netns>, cmds: &[S]) -> Result<(), LabError> {
    ip_batch_inner(ns, cmds, false)
}

fn ip_batch_inner<S: AsRef<str>>(ns: Option<&Netns>, cmds: &[S], force: bool) -> Result<(), LabError> {
    if cmds.is_empty() {
        return Ok(());
    }
    let mut args: Vec<&str> = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n", ns.name()]);
    }
    if force {
        args.push("-force");
    }
    args.extend(["-batch", "-"]);
    let mut input = String::new();
    for c in cmds {
        input.push_str(c.as_ref());
        input.push('\n');
    }
    run_tool("ip", &args, Some(&input)).map(drop).map_err(|e| match e {
        LabError::Command { cmd, status, stderr } => {
            // ip reports "Command failed -:LINE"; name the line so the error is self-explanatory.
            let failed = stderr
                .rsplit_once("Command failed -:")
                .and_then(|(_, n)| n.split_whitespace().next()?.parse::<usize>().ok())
                .and_then(|n| Some((n, cmds.get(n.checked_sub(1)?)?)));
            let cmd = match failed {
                Some((n, l)) => format!("{cmd} <<< '{}' (line {n} of {})", l.as_ref(), cmds.len()),
                None => format!("{cmd} <<< ({} lines)", cmds.len()),
            };
            LabError::Command { cmd, status, stderr }
        }
        other => other,
    })
}

/// The Debian package that provides a tool this module uses.
fn package_of(tool: &str) -> Option<&'static str> {
    Some(match tool {
        "ip" => "iproute2",
        "nft" => "nftables",
        "ethtool" => "ethtool",
        "ping" => "iputils-ping",
        "sysctl" => "procps",
        "iperf3" => "iperf3",
        _ => return None,
    })
}

/// Finds an executable in PATH, then in the sbin/bin directories (root's tools are often in /usr/sbin, which a
/// CI's PATH may lack).
pub fn find_tool(tool: &str) -> Result<PathBuf, LabError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let fallback = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(fallback)
        .map(|dir| dir.join(tool))
        .find(|p| is_executable(p))
        .ok_or_else(|| LabError::MissingTool { tool: tool.to_owned(), package: package_of(tool) })
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

fn display_cmd<'a>(program: &str, args: impl IntoIterator<Item = &'a str>) -> String {
    let mut line = program.to_owned();
    for a in args {
        line.push(' ');
        let plain = !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b));
        if plain {
            line.push_str(a);
        } else {
            line.push('\'');
            line.push_str(&a.replace('\'', r"'\''"));
            line.push('\'');
        }
    }
    line
}

/// Runs a tool to completion; non-zero exit is [`LabError::Command`].
pub(crate) fn run_tool(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, LabError> {
    let mut cmd = Command::new(find_tool(tool)?);
    cmd.args(args);
    finish(&mut cmd, &display_cmd(tool, args.iter().copied()), stdin)
}

fn finish(cmd: &mut Command, line: &str, stdin: Option<&str>) -> Result<Output, LabError> {
    debug!(cmd = %line, "netlab: run");
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let spawn_err = |source| LabError::Spawn { cmd: line.to_owned(), source };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // Feed stdin from another thread so a chatty child cannot deadlock against us.
    let feeder = match (stdin, child.stdin.take()) {
        (Some(text), Some(mut pipe)) => {
            let text = text.to_owned();
            Some(std::thread::spawn(move || pipe.write_all(text.as_bytes())))
        }
        _ => None,
    };
    let output = child.wait_with_output().map_err(spawn_err)?;
    if let Some(feeder) = feeder {
        // A write error (EPIPE) only means the child stopped reading; its exit status tells why.
        let _ = feeder.join();
    }
    if output.status.success() {
        Ok(output)
    } else {
        Err(LabError::Command {
            cmd: line.to_owned(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_fits_interface_names_and_parses_back() {
        let a = unique("abcd");
        let b = unique("abcd");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
        assert_eq!(owner_pid(&a, "abcd"), Some(std::process::id()));
        assert_eq!(owner_pid(&format!("{a}-gw"), "abcd"), Some(std::process::id()));
        // The worst case: the largest pid Linux can hand out and the largest counter.
        let worst = format!("abcd-{}-{}", base36(4_194_303), base36(COUNTER_MODULUS - 1));
        assert_eq!(worst.len(), 15, "{worst}");
    }

    #[test]
    fn owner_pid_does_not_confuse_prefixes() {
        assert_eq!(owner_pid("hpx-1a-0", "hp"), None);
        assert_eq!(owner_pid("hp-1a-0", "hpx"), None);
        assert_eq!(owner_pid("hp-1a-0", "hp"), Some(46));
        assert_eq!(owner_pid("hp-1a", "hp"), None);
        assert_eq!(owner_pid("hp--0", "hp"), None);
        assert_eq!(owner_pid("hp-1A-0", "hp"), None);
    }

    #[test]
    fn env_addresses_follow_the_plan() {
        assert_eq!(env_addr(0), Ipv4Addr::new(172, 16, 0, 2));
        assert_eq!(env_addr(249), Ipv4Addr::new(172, 16, 0, 251));
        assert_eq!(env_addr(250), Ipv4Addr::new(172, 16, 1, 2));
        assert_eq!(env_addr(MAX_ENVS - 1), Ipv4Addr::new(172, 16, 255, 251));
    }

    #[test]
    fn commands_display_like_a_shell() {
        assert_eq!(display_cmd("nft", ["-f", "a b", "it's"]), r"nft -f 'a b' 'it'\''s'");
    }
}
