//! A hostile neighbour end to end (namespaces, root only): a VPC host
//! floods one environment's mapping from new endpoints, and that
//! environment floods new flows and lone first fragments, while another
//! environment's open connection and its new connections keep working.
//! Every flood packet that does not reach its target is counted by the
//! gateway under a drop reason.
//!
//! Bounds: 6,000 flood packets in all, paced in bursts of 100 (so the
//! kernel's device queues, which the gateway cannot count, do not overflow),
//! about 10 s. The gateway gets small per-environment budgets
//! (`env_session_quota = 300`, `env_inbound_quota = 100`) so each flood
//! reaches its limit quickly.

use dataplane::counters::DropReason;
use netlab::lab::{Lab, Options};
use netlab::{Netns, SERVER};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ECHO_PORT: u16 = 7720;
const SINK_PORT: u16 = 9000;
const FLOWS: u16 = 3000;
const ENDPOINTS: usize = 500;
const FRAGMENTS: usize = 2000;

fn echo_server(lab: &Lab) {
    netlab::line_server(&lab.server, SocketAddrV4::new(SERVER, ECHO_PORT), |line, _| line.to_string()).expect("bind");
}

fn echo(c: &mut TcpStream) -> std::io::Result<()> {
    c.write_all(b"ping\n")?;
    let mut line = String::new();
    BufReader::new(c.try_clone()?).read_line(&mut line)?;
    if line == "ping\n" {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("echo answered {line:?}")))
    }
}

fn connect(ns: &Netns) -> std::io::Result<TcpStream> {
    ns.run(connect_here)
}

/// Connects from the calling thread's namespace.
fn connect_here() -> std::io::Result<TcpStream> {
    let c =
        TcpStream::connect_timeout(&SocketAddr::from(SocketAddrV4::new(SERVER, ECHO_PORT)), Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(c)
}

fn drops(lab: &Lab) -> BTreeMap<&'static str, u64> {
    let t = lab.gateway().totals();
    DropReason::ALL.iter().map(|&r| (r.label(), t.dropped(r))).collect()
}

fn delta(before: &BTreeMap<&'static str, u64>, after: &BTreeMap<&'static str, u64>) -> BTreeMap<&'static str, u64> {
    after.iter().map(|(k, v)| (*k, v - before.get(k).copied().unwrap_or(0))).filter(|(_, v)| *v > 0).collect()
}

/// Sends `n` packets with `send(i)`, 100 at a time with a short pause.
fn paced(n: usize, mut send: impl FnMut(usize)) {
    for i in 0..n {
        send(i);
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Counts datagrams arriving on `s` until `stop`.
fn counter(s: UdpSocket, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    s.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
    std::thread::spawn(move || {
        let mut n = 0;
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            if s.recv_from(&mut buf).is_ok() {
                n += 1;
            }
        }
        while s.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    })
}

fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_hostile_environment_and_vpc_host_do_not_hurt_a_neighbour_and_every_drop_is_counted() {
    netlab::require_root();
    let extra = "env_session_quota = 300\nenv_inbound_quota = 100\n".to_string();
    let lab = Lab::build(&Options { envs: 2, gateway_extra: extra, ..Options::default() }).expect("lab");
    echo_server(&lab);
    let (hostile, victim) = (&lab.envs[0], &lab.envs[1]);

    // The victim: one connection open throughout, a new one every 100 ms.
    let mut held = connect(victim).expect("the victim connects");
    echo(&mut held).expect("echo");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let victim_thread = {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        // A thread inside the victim's namespace.
        victim.thread(move || {
            let mut errors = vec![];
            while !stop.load(Ordering::Relaxed) {
                let r = echo(&mut held).and_then(|()| connect_here()).and_then(|mut c| echo(&mut c));
                match r {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.push(e.to_string());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                std::thread::sleep(Duration::from_millis(100));
            }
            errors
        })
    };
    let t0 = Instant::now();

    // 1. A VPC host sends to the environment's mapping from 500 new
    //    endpoints, twice each: past the inbound budget each is counted.
    let sink = hostile.run(|| UdpSocket::bind("0.0.0.0:0").expect("bind"));
    let (vpc_seen, mapping) = {
        let l = lab.server.run(|| UdpSocket::bind(SocketAddrV4::new(SERVER, SINK_PORT)).expect("bind"));
        l.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        sink.send_to(b"hello", SocketAddrV4::new(SERVER, SINK_PORT)).expect("send");
        let mut buf = [0u8; 64];
        let (_, from) = l.recv_from(&mut buf).expect("the server hears the environment");
        (l, from)
    };
    drop(vpc_seen);
    let sink_stop = Arc::new(AtomicBool::new(false));
    let sink_count = counter(sink, Arc::clone(&sink_stop));
    let sockets: Vec<UdpSocket> =
        lab.server.run(|| (0..ENDPOINTS).map(|_| UdpSocket::bind("0.0.0.0:0").expect("bind")).collect());
    let before = drops(&lab);
    paced(ENDPOINTS * 2, |i| {
        let _ = sockets[i % ENDPOINTS].send_to(b"knock", mapping);
    });
    settle();
    sink_stop.store(true, Ordering::Relaxed);
    let delivered = sink_count.join().expect("counter");
    let d = delta(&before, &drops(&lab));
    eprintln!("inbound-endpoint flood: {} sent, {delivered} delivered, drops {d:?}", ENDPOINTS * 2);
    assert!(delivered <= 2 * 100 + 2, "the inbound budget holds: {delivered}");
    assert!(delivered >= 100, "the budget lets some through: {delivered}");
    assert_eq!(d.get("inbound_quota").copied().unwrap_or(0) + delivered, (ENDPOINTS * 2) as u64, "{d:?}");
    drop(sockets);

    // 2. The environment opens 3,000 new flows (UDP to 3,000 ports): past
    //    its session quota each is refused and counted.
    lab.server.exec(&["nft", "add", "table", "ip", "hp_hostile"]).expect("nft");
    lab.server
        .exec(&["nft", "add", "chain", "ip", "hp_hostile", "in", "{ type filter hook input priority 0 ; }"])
        .expect("nft");
    lab.server
        .exec(&["nft", "add", "rule", "ip", "hp_hostile", "in", "udp", "dport", "10000-12999", "counter", "drop"])
        .expect("nft");
    let before = drops(&lab);
    let s = hostile.run(|| UdpSocket::bind("0.0.0.0:0").expect("bind"));
    paced(usize::from(FLOWS), |i| {
        let _ = s.send_to(b"x", SocketAddrV4::new(SERVER, 10_000 + i as u16));
    });
    settle();
    let out = lab.server.exec(&["nft", "list", "table", "ip", "hp_hostile"]).expect("nft");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let delivered: u64 = text
        .split("packets ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("an nft counter in {text}"));
    let d = delta(&before, &drops(&lab));
    eprintln!("new-flow flood: {FLOWS} sent, {delivered} delivered, drops {d:?}");
    assert!((250..=300).contains(&delivered), "the quota lets 300 sessions through at most: {delivered}");
    assert_eq!(d.get("quota_exceeded").copied().unwrap_or(0) + delivered, u64::from(FLOWS), "{d:?}");

    // 3. The environment sends lone first fragments (its later fragments
    //    are dropped on its own link before they reach the gateway): each
    //    is a new flow past its quota, refused and counted like one.
    let nft = |args: &str| {
        let out = hostile.exec(&["nft", args]).expect("nft runs");
        assert!(out.status.success(), "nft {args}: {}", String::from_utf8_lossy(&out.stderr));
    };
    nft("add table netdev hp_hostile_dev");
    nft(&format!(
        "add chain netdev hp_hostile_dev out {{ type filter hook egress device {} priority 0 ; }}",
        lab.taps[0]
    ));
    // 2,008 bytes of UDP leave as a 1,500-byte first fragment and a
    // 548-byte last one: the last is dropped.
    nft(&format!(
        "add rule netdev hp_hostile_dev out meta protocol ip ip daddr {SERVER} ip length != 1500 counter drop"
    ));
    let s = hostile.run(|| UdpSocket::bind("0.0.0.0:0").expect("bind"));
    let big = vec![0u8; 2000];
    let before = drops(&lab);
    let mut send_errors = 0;
    paced(FRAGMENTS, |i| {
        if s.send_to(&big, SocketAddrV4::new(SERVER, 20_000 + (i % 1000) as u16)).is_err() {
            send_errors += 1;
        }
    });
    settle();
    assert_eq!(send_errors, 0);
    let out = hostile.exec(&["nft", "list", "table", "netdev", "hp_hostile_dev"]).expect("nft");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let d = delta(&before, &drops(&lab));
    eprintln!("first-fragment flood: {FRAGMENTS} sent, drops {d:?}\n{text}");
    assert!(text.contains(&format!("packets {FRAGMENTS} ")), "every last fragment stayed behind: {text}");
    assert_eq!(d.get("quota_exceeded").copied().unwrap_or(0), FRAGMENTS as u64, "{d:?}");

    // The neighbour never noticed.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let errors = victim_thread.join().expect("victim thread");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("victim: {ok} rounds ok, {failed} failed, in {:?}", t0.elapsed());
    assert_eq!(failed, 0, "the neighbour's connections kept working: {errors:?}");
    assert!(ok >= 5, "the neighbour kept connecting during the floods: {ok}");
    assert!(t0.elapsed() < Duration::from_secs(60));
}
