//! `--offer-only`: what the raw UDP writers can offer into a TAP when nothing is behind it. The TAP's kernel side
//! sits alone in a fresh namespace, up, with an nftables netdev ingress rule ([`IngressCounter`], verdict drop)
//! that counts and discards every frame before the kernel's IP layer sees it: the NAT's side discarding, at the
//! least cost the kernel has. No NAT, no responder.
//!
//! The frames are the `udp` scenario's (one per environment, 64..=1472 bytes of payload, [`raw::frame`]), sent by
//! one writer per CPU of `--cpus`, each pinned and writing its own queue of a multi-queue TAP (one unpinned writer
//! without `--cpus`), a batch per `io_uring_enter` or a `write(2)` per frame (`--tap-writes`), for `duration` or
//! until a stop. The report's `offered` is what the writers' `write`s took;
//! `vpc_counted` is the kernel's count at the TAP's ingress (they differ by frames the kernel refused); `delivered`
//! is 0 (nothing is delivered anywhere). `target` is `discard`.

use super::{
    io_err, raw, sender, Addresses, IngressCounter, LoadArgs, LoadError, LoadReport, Port, Rate, Scenario, Verdict,
};
use netlab::Netns;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs the offer-only measurement (see the module doc). Needs root.
pub fn run(args: &LoadArgs) -> Result<LoadReport, LoadError> {
    if args.scenario != Scenario::Udp {
        return Err(super::invalid("offer_only", "measures the raw udp scenario's writers".into()));
    }
    args.validate()?;
    if !netlab::is_root() {
        return Err(LoadError::NotRoot);
    }
    let n = args.env_count();
    netlab::sweep_stale("lgof");
    let ns = Netns::new(netlab::unique("lgof"))?;
    let name = netlab::unique("lgof");
    let queues = args.cpus.len().max(1);
    let set = crate::TapSet::open(std::slice::from_ref(&name), queues)?;
    netlab::move_link(&name, &ns)?;
    ns.ip_batch(&[format!("link set {name} up")])?;
    let mac = netlab::meter::link_mac(&ns, &name)?;
    let addrs = Addresses::lab();
    let counter = IngressCounter::install(&ns, &name, addrs.server, Verdict::Drop)?;
    let frames: Vec<Vec<u8>> = (0..n).map(|i| raw::frame(&addrs, i, mac, args.payload)).collect();
    let ports: Vec<Port> = set.taps.into_iter().map(Port::Tap).collect();
    let plan = sender::Plan {
        source: sender::Source::Fixed(Arc::new(frames)),
        cpus: args.cpus.clone(),
        duration: args.duration,
        rate: args.rate,
        max_frames: None,
        progress: None,
    };
    let halt = AtomicBool::new(false);
    let t0 = Instant::now();
    let sent = std::thread::scope(|s| {
        let h = s.spawn(|| sender::send_ports(&ports, &plan, &halt, args.tap_writes));
        while !h.is_finished() {
            if args.stop.is_stopped() {
                halt.store(true, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        h.join()
    });
    let sent = sent
        .map_err(|_| io_err("offer-only writers", std::io::Error::other("a writer panicked")))?
        .map_err(|e| io_err("offer-only writers", std::io::Error::other(e.to_string())))?;
    let (packets, bytes) = counter.read()?;
    drop(counter);
    drop(ports);
    drop(ns);
    let secs = sent.seconds.max(1e-3);
    let rate =
        |packets: u64, bytes: u64| Rate { packets, bytes, pps: packets as f64 / secs, bps: bytes as f64 * 8.0 / secs };
    let mut errors = std::collections::BTreeMap::new();
    if sent.errors > 0 {
        errors.insert("tap_write".to_string(), sent.errors);
    }
    Ok(LoadReport {
        scenario: Scenario::Udp.name().into(),
        target: "discard".into(),
        envs: n,
        duration_s: secs,
        requested_duration_s: args.duration.as_secs_f64(),
        stopped_early: t0.elapsed() + Duration::from_millis(100) < args.duration,
        payload: args.payload,
        rate: args.rate,
        offered: rate(sent.frames, sent.bytes),
        vpc_counted: Some(rate(packets, bytes)),
        errors,
        writers: Some(Writers {
            cpus: args.cpus.clone(),
            pinned: sent.pinned.clone(),
            per_thread: sent.per_thread,
            tap_writes: args.tap_writes,
        }),
        ..LoadReport::default()
    })
}

/// How the writers of an offer-only run went.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Writers {
    /// The CPUs asked for (empty: one unpinned writer).
    pub cpus: Vec<usize>,
    /// Whether each writer was pinned.
    pub pinned: Vec<bool>,
    /// Frames each writer sent.
    pub per_thread: Vec<u64>,
    /// How they wrote.
    pub tap_writes: sender::TapWrites,
}
