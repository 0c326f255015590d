//! Real guests for the end-to-end tests: a QEMU microVM (virtio-net on a TAP)
//! running a Debian kernel and a busybox initramfs built here, whose `/init`
//! is a shell script the test writes.
//!
//! - [`GuestKit::obtain`] finds `qemu-system-x86_64` and a static busybox,
//!   and fetches the guest kernel once into a cache directory: the newest
//!   `linux-image-*-cloud-amd64` package apt knows (`apt-get download`,
//!   `dpkg-deb -x`; nothing is installed), from which only `vmlinuz` and the
//!   virtio-net modules ([`MODULES`]) are kept. Every failure is a reason
//!   string (the caller skips or fails with it).
//! - [`initramfs`] writes a `newc` cpio archive (uncompressed; the kernel
//!   takes it as is): busybox as `/bin/busybox`, the modules in
//!   `/lib/modules`, `/dev/console`, and `/init`.
//! - [`Vm::boot`] starts QEMU (TCG by default: nested KVM is not
//!   dependable; `HP_VM_ACCEL=kvm` picks KVM) with the serial console in a
//!   file, in a network namespace or the caller's, on an existing TAP
//!   (`-netdev tap,ifname=...,script=no`: the caller owns the device, QEMU
//!   only opens a queue of it) or on a vhost-user socket ([`Net::VhostUser`]:
//!   `-netdev vhost-user` with the guest's memory in a shared memfd, which
//!   the backend maps). [`Vm::wait`] waits until the guest powers
//!   off (the script ends with `reboot -f`, QEMU runs with `-no-reboot`) or
//!   a deadline passes; dropping a [`Vm`] kills QEMU.
//!
//! The guest sees one NIC, `eth0`, with MAC [`GUEST_MAC`]. Results come back
//! as serial console lines; [`results`] collects the `HP key value...`
//! lines a script prints.

use crate::{find_tool, Netns};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The guest NIC's MAC address.
pub const GUEST_MAC: &str = "52:54:00:12:34:56";

/// Modules that give a guest of the cloud kernel its virtio-net NIC, in
/// load order (their dependencies first).
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// The meta-package whose dependency names the kernel package to fetch.
const KERNEL_META: &str = "linux-image-cloud-amd64";

/// What booting a guest takes.
#[derive(Clone, Debug)]
pub struct GuestKit {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// A statically linked busybox.
    pub busybox: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The modules of [`MODULES`], in that order.
    pub modules: Vec<PathBuf>,
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl GuestKit {
    /// Finds QEMU and busybox and fetches the kernel into `cache` (reused
    /// when already there). Err: why a guest cannot be booted here.
    pub fn obtain(cache: &Path) -> Result<GuestKit, String> {
        let qemu = find_tool("qemu-system-x86_64")
            .map_err(|_| "qemu-system-x86_64 not found (Debian: apt-get install qemu-system-x86)".to_string())?;
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| is_static_elf(p))
            .ok_or("no statically linked busybox (Debian: apt-get install busybox-static)")?;
        let (kernel, modules) = fetch_kernel(cache)?;
        Ok(GuestKit { qemu, busybox, kernel, modules })
    }
}

/// Whether `p` is an ELF file without a program interpreter (static).
fn is_static_elf(p: &Path) -> bool {
    let Ok(b) = std::fs::read(p) else { return false };
    b.starts_with(b"\x7fELF") && !b.windows(14).any(|w| w == b"/lib64/ld-linu")
}

/// The kernel and modules in `cache`, fetched first when missing.
fn fetch_kernel(cache: &Path) -> Result<(PathBuf, Vec<PathBuf>), String> {
    let kernel = cache.join("vmlinuz");
    let modules: Vec<PathBuf> = MODULES.iter().map(|m| cache.join(format!("{m}.ko"))).collect();
    if kernel.is_file() && modules.iter().all(|m| m.is_file()) {
        return Ok((kernel, modules));
    }
    let apt_cache = find_tool("apt-cache").map_err(|_| "no apt-cache: cannot fetch a Debian guest kernel")?;
    let apt_get = find_tool("apt-get").map_err(|_| "no apt-get: cannot fetch a Debian guest kernel")?;
    let dpkg_deb = find_tool("dpkg-deb").map_err(|_| "no dpkg-deb: cannot unpack the guest kernel")?;
    let deps = run(Command::new(apt_cache).args(["depends", KERNEL_META]), "apt-cache depends")?;
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .ok_or_else(|| format!("apt knows no kernel package behind {KERNEL_META} (apt-get update?)"))?
        .to_string();
    let work = cache.join("fetch");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("mkdir {}: {e}", work.display()))?;
    run(Command::new(apt_get).current_dir(&work).args(["download", "-q", &pkg]), "apt-get download")?;
    let deb = std::fs::read_dir(&work)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| format!("apt-get download {pkg} left no .deb"))?;
    let tree = work.join("x");
    run(Command::new(dpkg_deb).arg("-x").arg(&deb).arg(&tree), "dpkg-deb -x")?;
    let find = |dir: &Path, pred: &dyn Fn(&str) -> bool| -> Option<PathBuf> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).ok()?.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.file_name().and_then(|n| n.to_str()).is_some_and(pred) {
                    return Some(p);
                }
            }
        }
        None
    };
    let vmlinuz = find(&tree.join("boot"), &|n| n.starts_with("vmlinuz-")).ok_or("no vmlinuz in the package")?;
    std::fs::copy(&vmlinuz, &kernel).map_err(|e| format!("copy vmlinuz: {e}"))?;
    for (name, dst) in MODULES.iter().zip(&modules) {
        let want = format!("{name}.ko");
        let src = find(&tree.join("lib/modules"), &|n| n == want).ok_or_else(|| format!("no {want} in {pkg}"))?;
        std::fs::copy(&src, dst).map_err(|e| format!("copy {want}: {e}"))?;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok((kernel, modules))
}

/// One `newc` cpio entry.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let name_z = name.len() + 1;
    let fields = [ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name_z as u32, 0];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The initramfs: busybox, the kit's modules in `/lib/modules/NAME.ko`,
/// `/dev/console`, and `init` as `/init` (a script: start it with
/// `#!/bin/busybox sh`). A `newc` cpio archive.
pub fn initramfs(kit: &GuestKit, init: &str) -> Result<Vec<u8>, String> {
    const DIR: u32 = 0o040755;
    const FILE: u32 = 0o100755;
    const CHR: u32 = 0o020600;
    let mut out = Vec::new();
    let mut ino = 1;
    let mut next = || {
        ino += 1;
        ino
    };
    for d in ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"] {
        cpio_entry(&mut out, next(), d, DIR, (0, 0), &[]);
    }
    cpio_entry(&mut out, next(), "dev/console", CHR, (5, 1), &[]);
    let bb = std::fs::read(&kit.busybox).map_err(|e| format!("read {}: {e}", kit.busybox.display()))?;
    cpio_entry(&mut out, next(), "bin/busybox", FILE, (0, 0), &bb);
    for (name, path) in MODULES.iter().zip(&kit.modules) {
        let m = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        cpio_entry(&mut out, next(), &format!("lib/modules/{name}.ko"), 0o100644, (0, 0), &m);
    }
    cpio_entry(&mut out, next(), "init", FILE, (0, 0), init.as_bytes());
    cpio_entry(&mut out, 0, "TRAILER!!!", 0, (0, 0), &[]);
    Ok(out)
}

/// The start of an `/init` script: busybox's applets installed, `/proc`,
/// `/sys` and `/dev` mounted, the virtio-net modules loaded, `lo` and
/// `eth0` up with `addr` (CIDR) and a default route via `gateway` (on
/// link).
pub fn init_prelude(addr: &str, gateway: &str) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n",
    );
    for m in MODULES {
        s += &format!("insmod /lib/modules/{m}.ko\n");
    }
    s += &format!(
        "ip link set lo up\nip link set eth0 up\nip addr add {addr} dev eth0\n\
         ip route add {gateway} dev eth0\nip route add default via {gateway}\necho HP up\n"
    );
    s
}

/// A running QEMU. See the module docs.
pub struct Vm {
    child: Option<Child>,
    serial: PathBuf,
    started: Instant,
}

/// What the guest's virtio-net NIC is connected to.
#[derive(Clone, Copy, Debug)]
pub enum Net<'a> {
    /// A TAP the VMM opens (it must exist in `ns`, or in this namespace).
    Tap(&'a str),
    /// A vhost-user-net backend listening on this Unix socket (QEMU
    /// connects; guest memory is a shared memfd of the guest's size).
    VhostUser(&'a Path),
}

/// How to boot a guest.
pub struct Boot<'a> {
    /// The kit.
    pub kit: &'a GuestKit,
    /// Where the initramfs and the serial log go.
    pub dir: &'a Path,
    /// The `/init` script.
    pub init: &'a str,
    /// The guest's NIC's backend.
    pub net: Net<'a>,
    /// The namespace QEMU runs in (`None`: this one).
    pub ns: Option<&'a Netns>,
    /// Guest memory, MiB.
    pub mem_mib: u32,
}

impl Vm {
    /// Writes the initramfs and starts QEMU.
    pub fn boot(b: &Boot<'_>) -> Result<Vm, String> {
        std::fs::create_dir_all(b.dir).map_err(|e| format!("mkdir {}: {e}", b.dir.display()))?;
        let initrd = b.dir.join("initrd.cpio");
        let serial = b.dir.join("serial.log");
        let _ = std::fs::remove_file(&serial);
        let image = initramfs(b.kit, b.init)?;
        std::fs::File::create(&initrd)
            .and_then(|mut f| f.write_all(&image))
            .map_err(|e| format!("write {}: {e}", initrd.display()))?;
        let accel = std::env::var("HP_VM_ACCEL").unwrap_or_else(|_| "tcg".into());
        let args: Vec<String> = vec![
            b.kit.qemu.display().to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-accel".into(),
            accel.clone(),
            "-m".into(),
            b.mem_mib.to_string(),
            "-smp".into(),
            "1".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            format!("file:{}", serial.display()),
            "-no-reboot".into(),
            "-kernel".into(),
            b.kit.kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            "console=ttyS0 panic=-1 quiet loglevel=3".into(),
        ];
        let mut args = args;
        match b.net {
            Net::Tap(tap) => {
                args.push("-netdev".into());
                args.push(format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
            }
            Net::VhostUser(sock) => {
                // The backend reads and writes the guest's memory: it must
                // be a shared file, the guest's only RAM.
                args.extend([
                    "-object".into(),
                    format!("memory-backend-memfd,id=mem,size={}M,share=on", b.mem_mib),
                    "-numa".into(),
                    "node,memdev=mem".into(),
                    "-chardev".into(),
                    format!("socket,id=c0,path={}", sock.display()),
                    "-netdev".into(),
                    "vhost-user,id=n0,chardev=c0".into(),
                ]);
            }
        }
        // QEMU 7.2 under TCG crashes starting a vhost-user NIC with MSI-X
        // (in `msix_set_vector_notifiers`); the NIC then uses INTx.
        let vectors = match b.net {
            Net::VhostUser(_) if accel == "tcg" => ",vectors=0",
            _ => "",
        };
        args.extend(["-device".into(), format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC}{vectors}")]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = match b.ns {
            Some(ns) => ns.command(&argv).map_err(|e| e.to_string())?,
            None => {
                let mut c = Command::new(argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        let log = std::fs::File::create(b.dir.join("qemu.log")).map_err(|e| format!("qemu.log: {e}"))?;
        cmd.stdin(Stdio::null()).stdout(log.try_clone().map_err(|e| e.to_string())?).stderr(log);
        let child = cmd.spawn().map_err(|e| format!("spawn qemu: {e}"))?;
        Ok(Vm { child: Some(child), serial, started: Instant::now() })
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        std::fs::read(&self.serial).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Waits until the guest powers off (Ok: its console) or `limit` from
    /// boot passes (Err: the console so far; QEMU is killed).
    pub fn wait(&mut self, limit: Duration) -> Result<String, String> {
        let Some(child) = self.child.as_mut() else { return Ok(self.console()) };
        loop {
            match child.try_wait() {
                Ok(Some(_)) => {
                    self.child = None;
                    return Ok(self.console());
                }
                Ok(None) if self.started.elapsed() < limit => std::thread::sleep(Duration::from_millis(200)),
                _ => {
                    self.kill();
                    return Err(self.console());
                }
            }
        }
    }

    /// Time since boot.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `HP key value...` lines of a console: key → the rest of the line
/// (the last one wins).
pub fn results(console: &str) -> BTreeMap<String, String> {
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("HP "))
        .map(|l| match l.split_once(' ') {
            Some((k, v)) => (k.to_string(), v.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// A TAP device `name` made persistent in `ns` (or this namespace) for a
/// VMM to open, up; deleted on drop.
pub struct VmTap {
    name: String,
    ns: Option<String>,
}

impl VmTap {
    /// Creates it (`ip tuntap add NAME mode tap vnet_hdr`) and brings it up.
    pub fn create(name: &str, ns: Option<&Netns>) -> Result<VmTap, crate::LabError> {
        crate::ip_batch(ns, &[format!("tuntap add name {name} mode tap vnet_hdr"), format!("link set {name} up")])?;
        Ok(VmTap { name: name.to_string(), ns: ns.map(|n| n.name().to_string()) })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for VmTap {
    fn drop(&mut self) {
        let mut cmd = Command::new("ip");
        if let Some(ns) = &self.ns {
            cmd.args(["-n", ns]);
        }
        let _ = cmd.args(["link", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `newc` entry: magic, 13 eight-digit hex fields, the name with its
    /// NUL padded to 4 bytes, the data padded to 4 bytes.
    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut out = Vec::new();
        cpio_entry(&mut out, 7, "init", 0o100755, (0, 0), b"#!x");
        assert_eq!(&out[..6], b"070701");
        let field = |i: usize| u32::from_str_radix(std::str::from_utf8(&out[6 + 8 * i..14 + 8 * i]).unwrap(), 16);
        assert_eq!(field(0), Ok(7), "ino");
        assert_eq!(field(1), Ok(0o100755), "mode");
        assert_eq!(field(6), Ok(3), "file size");
        assert_eq!(field(11), Ok(5), "name size with its NUL");
        // 110-byte header + "init\0" = 115, padded to 116; data 3, padded to 4.
        assert_eq!(&out[110..116], b"init\0\0");
        assert_eq!(&out[116..120], b"#!x\0");
        assert_eq!(out.len(), 120);
    }

    #[test]
    fn results_take_the_hp_lines() {
        let r = results("boot noise\r\nHP up\nHP ping_gw 0 3\r\nHP upload 0 count 5 secs 1\nxHP no\n");
        assert_eq!(r.get("up").map(String::as_str), Some(""));
        assert_eq!(r.get("ping_gw").map(String::as_str), Some("0 3"));
        assert_eq!(r.get("upload").map(String::as_str), Some("0 count 5 secs 1"));
        assert_eq!(r.len(), 3);
    }
}
