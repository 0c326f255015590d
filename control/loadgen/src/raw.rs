//! Raw-frame UDP: the highest packet rates the load generator can offer.
//!
//! One prebuilt Ethernet + IPv4 + UDP frame per environment (source [`env_mac`]`(i)` / the plan's address `i`
//! ([`Addresses::env`]) port [`RAW_SPORT`], destination the gateway's MAC / the responder's [`UDP_PORT`]; IPv4 and
//! UDP checksums complete, built with `dataplane::testkit`). Writer threads ([`sender::send_ports`]; one per CPU of
//! `--cpus`, pinned, or one unpinned) send them round-robin in batches of [`sender::BATCH`], open loop: at `rate`
//! frames/s (paced per batch) or as fast as they can, for `duration` or until `args.stop`. Writer `t` sends on
//! port `t % ports` (a TAP queue each: one `io_uring_enter` per batch, or one `write(2)` per frame as
//! `tap_writes` says; or the one packet socket of an external NAT's inside link, one `sendmmsg` per batch).
//! Meanwhile the calling thread reads every port: it answers ARP requests for every environment address (the NAT
//! must resolve environments to deliver replies) and counts UDP datagrams that come back to [`RAW_SPORT`]
//! (echoes).

use super::sender;
use super::{env_mac, io_err, Addresses, LoadArgs, LoadError, Measured, Port, Timeline, UdpFigures, UDP_PORT};
use dataplane::testkit::{ipv4_frame, udp_segment, IpOpts};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The environments' UDP source port in raw mode.
pub const RAW_SPORT: u16 = 40000;
const BROADCAST: [u8; 6] = [0xff; 6];

/// An ARP frame (Ethernet header included): `op` 1 request, 2 reply.
pub fn arp_frame(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(if op == 1 { &BROADCAST } else { &tha });
    f[6..12].copy_from_slice(&sha);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, op as u8]);
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa.octets());
    f[32..38].copy_from_slice(if op == 1 { &[0; 6] } else { &tha });
    f[38..42].copy_from_slice(&tpa.octets());
    f
}

/// A parsed ARP frame: (op, sender MAC, sender IP, target IP).
pub fn parse_arp(f: &[u8]) -> Option<(u16, [u8; 6], Ipv4Addr, Ipv4Addr)> {
    if f.len() < 42 || f[12..14] != [0x08, 0x06] || f[14..20] != [0, 1, 0x08, 0x00, 6, 4] {
        return None;
    }
    let op = u16::from_be_bytes([f[20], f[21]]);
    let mut sha = [0u8; 6];
    sha.copy_from_slice(&f[22..28]);
    let ip = |o: usize| Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]);
    Some((op, sha, ip(28), ip(38)))
}

/// ARPs for the plan's gateway from environment 0 (every 200 ms) until it answers; its MAC.
pub fn resolve_gateway(tap: &Port, addrs: &Addresses, timeout: Duration) -> Result<[u8; 6], LoadError> {
    let gateway = addrs.gateway;
    let req = arp_frame(1, env_mac(0), addrs.env(0), [0; 6], gateway);
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 2048];
    while Instant::now() < deadline {
        tap.send(&req).map_err(|e| io_err("write ARP request to the loadgen TAP", e))?;
        let until = (Instant::now() + Duration::from_millis(200)).min(deadline);
        while Instant::now() < until {
            match tap.recv(&mut buf) {
                Ok(n) => {
                    if let Some((2, mac, ip, _)) = parse_arp(&buf[..n]) {
                        if ip == gateway {
                            return Ok(mac);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait(tap, 10),
                Err(e) => return Err(io_err("read the loadgen TAP", e)),
            }
        }
    }
    Err(LoadError::GatewayUnresolved(gateway, timeout))
}

/// Waits up to `ms` milliseconds for the TAP to become readable.
pub(crate) fn wait(tap: &Port, ms: u64) {
    let _ = dataplane_io::wait_readable(tap, std::time::Duration::from_millis(ms));
}

/// The frame environment `i` sends.
pub fn frame(addrs: &Addresses, i: usize, gw_mac: [u8; 6], payload: usize) -> Vec<u8> {
    let mut data = vec![0u8; payload];
    data[..8].copy_from_slice(&(i as u64).to_be_bytes());
    let (src, dst) = (addrs.env(i), addrs.server);
    let seg = udp_segment(src, RAW_SPORT, dst, UDP_PORT, &data);
    ipv4_frame(gw_mac, env_mac(i), src, dst, 17, IpOpts { ident: i as u16, ..IpOpts::default() }, &seg)
}

/// Runs the raw UDP scenario (see the module doc).
pub(crate) fn run(
    ports: &[Port],
    addrs: &Addresses,
    gw_mac: [u8; 6],
    n: usize,
    args: &LoadArgs,
    tl: &Timeline,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<Measured, LoadError> {
    let tap = &ports[0];
    let frames: Vec<Vec<u8>> = (0..n).map(|i| frame(addrs, i, gw_mac, args.payload)).collect();
    let sent = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let t0 = Instant::now();
    tl.start(t0);
    let end = t0 + args.duration;
    let mut echoed = 0u64;
    let mut arp_replies = 0u64;
    let mut read_errors = 0u64;
    let halt = AtomicBool::new(false);
    let progress = std::sync::Arc::new(AtomicU64::new(0));
    let ended = std::thread::scope(|s| -> Result<Instant, LoadError> {
        let writer = std::thread::Builder::new()
            .name("lg-raw".into())
            .spawn_scoped(s, || {
                // One pinned writer per CPU (one unpinned without --cpus; the sender module); the reader below keeps
                // the timeline.
                let plan = sender::Plan {
                    source: sender::Source::Fixed(std::sync::Arc::new(frames.clone())),
                    cpus: args.cpus.clone(),
                    duration: end.saturating_duration_since(Instant::now()),
                    rate: args.rate,
                    max_frames: None,
                    progress: Some(std::sync::Arc::clone(&progress)),
                };
                let r = sender::send_ports(ports, &plan, &halt, args.tap_writes);
                let ended = Instant::now().min(end);
                if let Ok(r) = r {
                    sent.fetch_add(r.frames, Ordering::Relaxed);
                    bytes.fetch_add(r.bytes, Ordering::Relaxed);
                    errors.fetch_add(r.errors, Ordering::Relaxed);
                }
                done.store(true, Ordering::Relaxed);
                ended
            })
            .map_err(|e| io_err("spawn the raw writer", e))?;
        // Reader: ARP answers and echoes, until the writer is done plus a short drain.
        let mut buf = vec![0u8; 65536];
        let mut drain_until: Option<Instant> = None;
        let mut last_bar = Instant::now();
        let mut counted = 0u64;
        loop {
            let now = Instant::now();
            if args.stop.is_stopped() {
                halt.store(true, Ordering::Relaxed);
            }
            // The pinned writers' progress, into the timeline.
            let p = progress.load(Ordering::Relaxed);
            if p > counted {
                tl.add(&tl.offered, now, p - counted);
                counted = p;
            }
            if done.load(Ordering::Relaxed) && drain_until.is_none() {
                drain_until = Some(now + Duration::from_millis(300));
            }
            if drain_until.is_some_and(|d| now >= d) || now >= end + Duration::from_secs(5) {
                break;
            }
            if let Some(b) = bar {
                if now - last_bar >= Duration::from_millis(100) {
                    last_bar = now;
                    b.set_position((now - t0).as_millis() as u64);
                    b.set_message(format!("{} sent", sent.load(Ordering::Relaxed)));
                }
            }
            // Every port (the kernel spreads frames towards a multi-queue TAP over its queues).
            let mut got = false;
            for port in ports {
                match port.recv(&mut buf) {
                    Ok(len) => {
                        got = true;
                        let f = &buf[..len];
                        if let Some((1, sha, spa, tpa)) = parse_arp(f) {
                            if let Some(i) = addrs.env_index(tpa).filter(|&i| i < n) {
                                let reply = arp_frame(2, env_mac(i), tpa, sha, spa);
                                if port.send(&reply).is_ok() {
                                    arp_replies += 1;
                                }
                            }
                        } else if len >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 17 {
                            let ihl = usize::from(f[14] & 0x0f) * 4;
                            let dport = f.get(14 + ihl + 2..14 + ihl + 4).map(|p| u16::from_be_bytes([p[0], p[1]]));
                            if dport == Some(RAW_SPORT) {
                                echoed += 1;
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => read_errors += 1,
                }
            }
            if !got {
                wait(tap, 1);
            }
        }
        Ok(writer.join().unwrap_or_else(|_| Instant::now()))
    })?;
    let load = ended.saturating_duration_since(t0);
    let mut m = Measured {
        load,
        stopped: load < args.duration,
        frames_out: sent.load(Ordering::Relaxed),
        bytes_out: bytes.load(Ordering::Relaxed),
        ..Measured::default()
    };
    let sent_n = m.frames_out;
    m.udp = Some(UdpFigures { sent: sent_n, echoed, lost_by_echo: args.echo.then(|| sent_n.saturating_sub(echoed)) });
    for (k, v) in [("tap_write", errors.load(Ordering::Relaxed)), ("tap_read", read_errors)] {
        if v > 0 {
            m.errors.insert(k.into(), v);
        }
    }
    let _ = arp_replies;
    Ok(m)
}
