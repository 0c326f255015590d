//! Our gateway against the Linux kernel's NAT (nftables masquerade), side by
//! side in one run, on the same namespace address plan:
//!
//! - TCP bulk, Gbit/s (iperf3, 5 s, one stream), offloads on;
//! - UDP 64-byte datagrams per second delivered (iperf3 `-u -l 64 -b 0`);
//! - new TCP connections per second (connect + close with RST, from two
//!   environments, four threads each, 2 s).
//!
//! Run as root: `cargo bench --bench compare` (`-- --quick` for 2-second
//! runs). Needs iperf3, nft, ip, sysctl. Prints each figure for both and the
//! ratio (ours / kernel), and writes `target/compare.json`. Every load is
//! bounded in time and runs only between namespaces this program made.

use control::lab::{Lab, Options};
use control::netlab::{self, KernelNat, Netns, SERVER};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Topo<'a> {
    server: &'a Netns,
    envs: Vec<&'a Netns>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    tcp_gbps: f64,
    udp_pps: f64,
    conn_per_s: f64,
}

fn iperf(t: &Topo, args: &[&str], secs: u32) -> serde_json::Value {
    let mut server = t.server.spawn(&["iperf3", "-s", "-1", "-p", "5201"]).expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let secs = secs.to_string();
    let mut cmd = vec!["iperf3", "-c", "10.1.0.2", "-p", "5201", "-J", "-t", &secs];
    cmd.extend_from_slice(args);
    let out = t.envs[0].exec(&cmd);
    let _ = server.kill();
    let _ = server.wait();
    let out = out.expect("iperf3 client");
    serde_json::from_slice(&out.stdout).expect("iperf3 JSON")
}

fn connect_rate(t: &Topo, secs: f64) -> f64 {
    let l = t.server.run(|| {
        let l = TcpListener::bind(SocketAddrV4::new(SERVER, 7600)).expect("bind");
        l.set_nonblocking(true).unwrap();
        l
    });
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let acceptor = std::thread::spawn(move || {
        while !s2.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((c, _)) => drop(c),
                Err(_) => std::thread::sleep(Duration::from_micros(50)),
            }
        }
    });
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut clients = vec![];
    for ns in &t.envs {
        for _ in 0..4 {
            let done = Arc::clone(&done);
            clients.push(ns.thread(move || {
                let dst = SocketAddr::from(SocketAddrV4::new(SERVER, 7600));
                while Instant::now() < deadline {
                    if let Ok(c) = TcpStream::connect_timeout(&dst, Duration::from_millis(500)) {
                        // RST on close: no TIME_WAIT in the client's port space.
                        linger_zero(&c);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    let t0 = Instant::now();
    for c in clients {
        let _ = c.join();
    }
    let el = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = acceptor.join();
    done.load(Ordering::Relaxed) as f64 / el
}

/// SO_LINGER 0: close sends an RST and leaves no TIME_WAIT.
fn linger_zero(c: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `c` owns a valid socket; `l` is a properly sized, initialised
    // linger struct that the kernel only reads.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn measure(t: &Topo, secs: u32) -> Figures {
    let tcp = iperf(t, &[], secs);
    let tcp_gbps = tcp["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9;
    let udp = iperf(t, &["-u", "-l", "64", "-b", "0"], secs);
    let sum = &udp["end"]["sum"];
    let packets = sum["packets"].as_f64().unwrap_or(0.0);
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let seconds = sum["seconds"].as_f64().unwrap_or(1.0).max(0.001);
    let udp_pps = (packets - lost).max(0.0) / seconds;
    let conn_per_s = connect_rate(t, 2.0);
    Figures { tcp_gbps, udp_pps, conn_per_s }
}

fn main() {
    if !netlab::is_root() {
        eprintln!("compare: needs root (namespaces, TAPs, nftables); skipping");
        return;
    }
    if netlab::find_tool("iperf3").is_err() {
        eprintln!("compare: needs iperf3 (apt-get install iperf3); skipping");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { 2 } else { 5 };

    let ours = {
        let lab = Lab::build(&Options { envs: 2, ..Options::default() }).expect("our lab");
        let t = Topo { server: &lab.server, envs: lab.envs.iter().collect() };
        let f = measure(&t, secs);
        eprintln!("hyperplane: {f:?}");
        f
    };
    let kernel = {
        let k = KernelNat::build("hpkb", 2, true).expect("kernel lab");
        let t = Topo { server: k.server_ns(), envs: (0..2).map(|i| k.env_ns(i)).collect() };
        let f = measure(&t, secs);
        eprintln!("kernel:     {f:?}");
        f
    };
    println!("{:<34} {:>12} {:>12} {:>7}", "work (same run, same machine)", "hyperplane", "kernel NAT", "ratio");
    let rows = [
        ("TCP bulk, Gbit/s (offloads on)", ours.tcp_gbps, kernel.tcp_gbps),
        ("UDP 64-byte, packets/s", ours.udp_pps, kernel.udp_pps),
        ("TCP connections/s", ours.conn_per_s, kernel.conn_per_s),
    ];
    for (name, a, b) in rows {
        println!("{name:<34} {a:>12.2} {b:>12.2} {:>6.2}x", if b > 0.0 { a / b } else { 0.0 });
    }
    let json = serde_json::json!({
        "seconds": secs,
        "hyperplane": { "tcp_gbps": ours.tcp_gbps, "udp_pps": ours.udp_pps, "conn_per_s": ours.conn_per_s },
        "kernel": { "tcp_gbps": kernel.tcp_gbps, "udp_pps": kernel.udp_pps, "conn_per_s": kernel.conn_per_s },
    });
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/compare.json", serde_json::to_string_pretty(&json).unwrap_or_default());
}
