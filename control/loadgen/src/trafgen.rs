//! trafgen (netsniff-ng) as the independent sender a figure is checked against: one flow, one process pinned to
//! one CPU, the frames through the link's transmit path as the load generator's own packet-socket writers send
//! theirs ([`crate::sender::send_packet`]), counted by the same kernel counter on the VPC side.
//!
//! # Contract
//!
//! [`one_flow`] runs trafgen from a namespace out of a link for a bounded time and count (at most `secs + 2.5` s:
//! `timeout` signals trafgen's whole process group, so the senders it forks stop too), and returns what left the
//! link (the transmitted and transmit-dropped frames of the link, or of the link a tc redirect hands its frames to:
//! the load generator's decoupled feed with `--spread-receive`, where a frame the receiving CPUs refuse is dropped
//! after trafgen's system call returned, so trafgen's packet ring keeps sending) and what the counter counted, per
//! second over the same window ([`netlab::meter::window_rates`]). `None` when trafgen is not installed or could not
//! start.

use crate::sender::{self, FrameSpec};
use netlab::meter::{self, IngressCounter};
use netlab::Netns;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// trafgen's figures, per second over one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct TrafgenRates {
    /// Frames that left the link (transmitted or dropped on transmit), per second.
    pub offered_pps: f64,
    /// Packets the VPC counter counted, per second.
    pub delivered_pps: f64,
}

/// The measurement window for a load of `secs` seconds.
pub fn window(secs: f64) -> f64 {
    (secs - 0.6).max(0.4)
}

/// Runs trafgen sending `spec`'s frame (one flow) out of `link` in `ns` for `secs`, pinned to `cpu`, counted by
/// `counter`; what left is read from `counted`'s transmit counters (`link` itself, or the link a tc redirect hands
/// `link`'s frames to; see the module doc).
pub fn one_flow(
    ns: &Netns,
    link: &str,
    counted: &str,
    spec: &FrameSpec,
    cpu: usize,
    secs: f64,
    counter: &IngressCounter,
) -> Option<TrafgenRates> {
    netlab::find_tool("trafgen").ok()?;
    let path = std::env::temp_dir().join(format!("hp-trafgen-{}-{}.cfg", std::process::id(), link));
    std::fs::write(&path, spec.trafgen_config()).ok()?;
    let limit = format!("{:.1}", secs + 2.5);
    let mut args: Vec<String> = ["timeout", "-s", "INT", "-k", "1", &limit].iter().map(|s| s.to_string()).collect();
    args.extend(sender::trafgen_args(link, &path, cpu, (secs * 5e6) as u64, None));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = ns.spawn(&args);
    let Ok(mut child) = child else {
        let _ = std::fs::remove_file(&path);
        return None;
    };
    let out = AtomicU64::new(0);
    let left = || meter::link_stats(ns, counted).map(|s| s[2] + s[3]).unwrap_or(0);
    let base = left();
    let (offered_pps, delivered_pps, ()) = meter::window_rates(counter, Some(&out), window(secs), || {
        let end = Instant::now() + Duration::from_secs_f64(secs + 1.0);
        while Instant::now() < end {
            out.store(left().saturating_sub(base), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    // `timeout` ends the group 2.5 s after the start, or 1 s later by SIGKILL.
    let _ = child.wait();
    let _ = std::fs::remove_file(&path);
    Some(TrafgenRates { offered_pps, delivered_pps })
}
