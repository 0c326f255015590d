//! End to end with a real guest: a QEMU microVM (virtio-net, a Debian
//! kernel, a busybox initramfs built by [`netlab::vm`]) behind the gateway,
//! once per way of attaching it:
//! - bridged: the VM's TAP and a gateway TAP attachment joined by a kernel
//!   bridge (in a bridge namespace, where QEMU runs);
//! - direct: an `af-packet` attachment on the VM's TAP itself;
//! - vhost-user: a `vhost-user` attachment, the gateway being the VM's
//!   network device (QEMU's `-netdev vhost-user`, guest memory in a shared
//!   memfd).
//!
//! From inside the guest: ping the gateway and the VPC server, an HTTP GET
//! the server answers with the source address it saw (the ENI's), and a
//! 100 MB upload (`nc`) the server counts byte-exact. The guest prints its
//! results on the serial console (`HP key value`); the test parses them and
//! checks the server's side too.
//!
//! Needs root (else ignored) and a guest: `qemu-system-x86_64`, a static
//! busybox and a Debian kernel fetched once with apt into the target
//! directory. Without them the test prints why and returns, unless
//! `HP_REQUIRE_VM` is set (CI sets it), which turns that into a failure.
//! TCG is slow: each guest gets [`GUEST_LIMIT`]. One guest at a time.

use netlab::lab::{Lab, Options};
use netlab::vm::{self, Boot, GuestKit, Net, Vm, VmTap};
use netlab::{env_addr, INSIDE_GATEWAY, SERVER};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddrV4, TcpListener};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

/// From boot to power-off, per guest: boot under TCG takes some 10 to 30 s
/// here and the upload some more; this leaves room for a loaded machine.
const GUEST_LIMIT: Duration = Duration::from_secs(300);
/// Bytes the guest uploads.
const UPLOAD: u64 = 100_000_000;
const HTTP_PORT: u16 = 8080;
const UPLOAD_PORT: u16 = 9000;

/// One guest at a time (TCG takes a core).
static ONE_GUEST: Mutex<()> = Mutex::new(());

/// How the guest's TAP reaches the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attach {
    /// Bridged to a gateway TAP attachment.
    Bridged,
    /// An `af-packet` attachment on the VM's TAP.
    Direct,
    /// A `vhost-user` attachment: the gateway is the VM's network device.
    VhostUser,
}

/// The guest kit, or `None` (with the reason printed) when this machine
/// cannot boot one and `HP_REQUIRE_VM` is unset.
fn kit() -> Option<GuestKit> {
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("hp-vm-kernel");
    match GuestKit::obtain(&cache) {
        Ok(k) => Some(k),
        Err(why) if std::env::var_os("HP_REQUIRE_VM").is_none() => {
            eprintln!("SKIPPED (no guest can be booted here): {why}");
            None
        }
        Err(why) => panic!("HP_REQUIRE_VM is set but no guest can be booted: {why}"),
    }
}

/// What the servers saw: the HTTP client's address, and each upload's
/// (client address, bytes).
struct Seen {
    http: mpsc::Receiver<IpAddr>,
    uploads: mpsc::Receiver<(IpAddr, u64)>,
}

/// The HTTP and upload servers in the lab's server namespace (one thread
/// each, serving until the process ends).
fn servers(lab: &Lab) -> Seen {
    let (http_tx, http) = mpsc::channel();
    let (up_tx, uploads) = mpsc::channel();
    let l = lab.server.run(|| TcpListener::bind(SocketAddrV4::new(SERVER, HTTP_PORT))).expect("bind http");
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let Ok(peer) = c.peer_addr() else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(n) if n > 0 => req.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let body = format!("from {}\n", peer.ip());
            let _ = write!(c, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            let _ = http_tx.send(peer.ip());
        }
    });
    let l = lab.server.run(|| TcpListener::bind(SocketAddrV4::new(SERVER, UPLOAD_PORT))).expect("bind upload");
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let Ok(peer) = c.peer_addr() else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
            let mut n = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => n += k as u64,
                    Err(_) => break,
                }
            }
            let _ = writeln!(c, "count {n}");
            let _ = up_tx.send((peer.ip(), n));
        }
    });
    Seen { http, uploads }
}

/// The guest's `/init`: network up, then the checks, each printing one
/// `HP` line, then power-off.
fn guest_script() -> String {
    let mut s = vm::init_prelude(&format!("{}/32", env_addr(0)), &INSIDE_GATEWAY.to_string());
    s += &format!(
        "ping -c 3 -W 5 {INSIDE_GATEWAY} > /tmp/p 2>&1; echo \"HP ping_gw $? $(grep -c 'bytes from' /tmp/p)\"\n\
         ping -c 3 -W 5 {SERVER} > /tmp/p 2>&1; echo \"HP ping_server $? $(grep -c 'bytes from' /tmp/p)\"\n\
         wget -q -O /tmp/w http://{SERVER}:{HTTP_PORT}/ > /tmp/e 2>&1; echo \"HP http $? $(cat /tmp/w /tmp/e)\"\n\
         t0=$(date +%s)\n\
         head -c {UPLOAD} /dev/zero | nc {SERVER} {UPLOAD_PORT} > /tmp/u 2>&1; rc=$?\n\
         echo \"HP upload $rc $(cat /tmp/u) secs $(( $(date +%s) - t0 ))\"\n\
         echo \"HP done\"\nreboot -f\n"
    );
    s
}

fn run_guest(attach: Attach) {
    netlab::require_root();
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let Some(kit) = kit() else { return };
    let dir =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hp-vm-{attach:?}-{}", std::process::id()));
    let name = netlab::unique("hpl");
    // A Unix socket path has at most 107 bytes: a short one.
    let sock = std::env::temp_dir().join(format!("{name}.sock"));

    // Drop order (reverse of declaration): the VM, then the lab (gateway
    // and namespaces), then the VM's TAP.
    let tap_holder: Option<VmTap>;
    let lab = match attach {
        Attach::Bridged => {
            let opts = Options { bridged_attachments: Some(1), ..Options::default() };
            let lab = Lab::build(&opts).expect("lab builds");
            let br = lab.bridge.as_ref().expect("bridge namespace");
            tap_holder = Some(VmTap::create(&name, Some(br)).expect("VM TAP"));
            br.ip_batch(&[format!("link set {name} master {}", netlab::lab::bridge_name(0))]).expect("bridge port");
            lab
        }
        Attach::Direct => {
            tap_holder = Some(VmTap::create(&name, None).expect("VM TAP"));
            let opts = Options { direct: Some(vec![name.clone()]), ..Options::default() };
            let lab = Lab::build(&opts).expect("lab builds");
            assert!(lab.gateway().inside[0].on_rings(), "the direct attach on packet rings (the default)");
            lab
        }
        Attach::VhostUser => {
            tap_holder = None;
            let opts = Options { vhost_user: Some(vec![sock.clone()]), ..Options::default() };
            Lab::build(&opts).expect("lab builds")
        }
    };
    let net = match attach {
        Attach::VhostUser => Net::VhostUser(&sock),
        _ => Net::Tap(&name),
    };
    let seen = servers(&lab);
    let init = guest_script();
    let ns = match attach {
        Attach::Bridged => lab.bridge.as_ref(),
        Attach::Direct | Attach::VhostUser => None,
    };
    let mut guest = Vm::boot(&Boot { kit: &kit, dir: &dir, init: &init, net, ns, mem_mib: 256 }).expect("boot");
    let console = match guest.wait(GUEST_LIMIT) {
        Ok(c) => c,
        Err(c) => panic!("{attach:?}: the guest did not finish within {GUEST_LIMIT:?}; console:\n{c}"),
    };
    let took = guest.elapsed();
    drop(guest);
    let r = vm::results(&console);
    let show = || format!("{attach:?} guest console:\n{console}");
    eprintln!("{attach:?}: guest ran {took:?}: {r:?}");
    assert!(r.contains_key("up"), "the guest's network did not come up; {}", show());
    assert_eq!(r.get("ping_gw").map(String::as_str), Some("0 3"), "ping the gateway; {}", show());
    assert_eq!(r.get("ping_server").map(String::as_str), Some("0 3"), "ping the server; {}", show());
    assert_eq!(r.get("http").map(String::as_str), Some(format!("0 from {}", lab.eni).as_str()), "HTTP; {}", show());
    let http = seen.http.recv_timeout(Duration::from_secs(1)).expect("the HTTP server saw a request");
    assert_eq!(http, IpAddr::V4(lab.eni), "the server sees the ENI address");
    let (from, bytes) = seen.uploads.recv_timeout(Duration::from_secs(1)).expect("the upload server saw a client");
    assert_eq!((from, bytes), (IpAddr::V4(lab.eni), UPLOAD), "byte-exact upload from the ENI; {}", show());
    let up = r.get("upload").cloned().unwrap_or_default();
    assert!(up.starts_with(&format!("0 count {UPLOAD} ")), "the guest's nc: {up:?}; {}", show());
    assert!(r.contains_key("done"), "{}", show());
    let t = lab.gateway().totals();
    assert!(t.outbound.1 >= UPLOAD, "the gateway carried the upload: {t:?}");
    let failed = t.dropped(dataplane::counters::DropReason::TxFailed);
    assert_eq!(failed, 0, "every frame to and from the guest left (offload headers carried): {t:?}");
    drop(lab);
    drop(tap_holder);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces, TAP devices and a VM")]
fn guest_through_a_bridged_tap() {
    run_guest(Attach::Bridged);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces, TAP devices and a VM")]
fn guest_on_a_direct_af_packet_attach() {
    run_guest(Attach::Direct);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and a VM")]
fn guest_on_a_vhost_user_attach() {
    run_guest(Attach::VhostUser);
}
