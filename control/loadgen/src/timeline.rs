//! What happened when: the in-memory [`Timeline`] (per-bucket counters shared by the environments' loop, the raw
//! sender and the responder) and the `timeline.csv` writer ([`CsvWriter`]).
//!
//! # Buckets and memory
//!
//! The timeline is sized once, for the longest the run can last, and never grows: [`FINE_BUCKET`] (100 ms) buckets
//! for loads of up to [`FINE_SPAN`], [`COARSE_BUCKET`] (1 s) buckets for longer ones, so a 24 h soak holds 86,400
//! buckets of five counters (about 3.5 MB). Bucket 0 starts when the load starts ([`Timeline::start`]); what is counted before that
//! falls into bucket 0, and what falls after the span into the last bucket.
//!
//! # `timeline.csv`
//!
//! One header line, then one line per second of the run, each flushed when written (so a run killed outright keeps
//! every second it finished):
//!
//! ```text
//! t_s,connections_completed,connect_failures,packets_offered,packets_delivered,bytes_delivered,gateway_sessions,gateway_ports_in_use,eni_addresses,gateway_ports_cooling
//! ```
//!
//! `t_s` is the end of the second the line covers (1 for the first second); the five counts are what happened
//! within that second (connections the environments completed, connections that failed (refused, timed out or
//! reset), frames the load generator wrote, packets (UDP datagrams, accepted connections) the responder received,
//! payload bytes it received). The last four are gauges read when the line is written, against our gateway only
//! (empty for the kernel): live sessions summed over the workers, ENI ports held by live or ended connections (all
//! protocols, summed over the workers' per-address gauges), the number of distinct ENI addresses with a gauge, and
//! of the ports held by ended connections those whose remote closed first (they may sit in its TIME_WAIT, so they
//! count towards the high-water mark that adds an ENI address: when `eni_addresses` grows, this column says how much
//! of it is the remotes' TIME_WAIT). A line is written
//! [`CSV_LAG`] after its second ends, so late counts land first; when the run ends (also when it is stopped early)
//! the remaining seconds are written, the last one possibly covering less than a second.

use super::{io_err, LoadError};
use dataplane::counters::{Counters, ProtoIndex};
use serde::Serialize;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bucket width for runs up to [`FINE_SPAN`].
pub const FINE_BUCKET: Duration = Duration::from_millis(100);
/// Bucket width for longer runs.
pub const COARSE_BUCKET: Duration = Duration::from_secs(1);
/// The longest load kept in [`FINE_BUCKET`]s (6,000 buckets and its grace period).
pub const FINE_SPAN: Duration = Duration::from_secs(600);
/// How long after its second ends a `timeline.csv` line is written.
pub const CSV_LAG: Duration = Duration::from_millis(150);
/// The `timeline.csv` header.
pub const CSV_HEADER: &str = "t_s,connections_completed,connect_failures,packets_offered,packets_delivered,\
                              bytes_delivered,gateway_sessions,gateway_ports_in_use,eni_addresses,gateway_ports_cooling";

const NOT_STARTED: u64 = u64::MAX;

/// Per-bucket counters (see the module doc).
#[derive(Debug)]
pub struct Timeline {
    base: Instant,
    /// When the load started, ns after `base` ([`NOT_STARTED`] before).
    start_ns: AtomicU64,
    bucket_ms: u64,
    /// Frames the load generator wrote.
    pub offered: Vec<AtomicU64>,
    /// Packets (UDP datagrams, accepted connections) the responder received.
    pub delivered: Vec<AtomicU64>,
    /// Payload bytes the responder received.
    pub bytes: Vec<AtomicU64>,
    /// Connections completed (connect) by the environments.
    pub connects: Vec<AtomicU64>,
    /// Connections (and bulk streams) that failed: refused, timed out or reset.
    pub failures: Vec<AtomicU64>,
}

impl Timeline {
    /// A timeline for a load of `duration` and at most `after` more (grace, drain); the bucket width is chosen from
    /// `duration`.
    pub fn new(duration: Duration, after: Duration) -> Timeline {
        let bucket = if duration <= FINE_SPAN { FINE_BUCKET } else { COARSE_BUCKET };
        let span = duration + after;
        let bucket_ms = bucket.as_millis() as u64;
        let n = (span.as_millis() as u64 / bucket_ms) as usize + 2;
        let v = || (0..n).map(|_| AtomicU64::new(0)).collect();
        Timeline {
            base: Instant::now(),
            start_ns: AtomicU64::new(NOT_STARTED),
            bucket_ms,
            offered: v(),
            delivered: v(),
            bytes: v(),
            connects: v(),
            failures: v(),
        }
    }

    /// The bucket width.
    pub fn bucket(&self) -> Duration {
        Duration::from_millis(self.bucket_ms)
    }

    /// Marks the start of the load: bucket 0 begins at `at`. Only the first call counts.
    pub fn start(&self, at: Instant) {
        let ns = at.saturating_duration_since(self.base).as_nanos() as u64;
        let _ = self.start_ns.compare_exchange(NOT_STARTED, ns, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// When the load started, once it has.
    pub fn started(&self) -> Option<Instant> {
        match self.start_ns.load(Ordering::Relaxed) {
            NOT_STARTED => None,
            ns => Some(self.base + Duration::from_nanos(ns)),
        }
    }

    /// Adds `n` to `series` in the bucket of `at` (see the module doc for before the start and after the span).
    pub fn add(&self, series: &[AtomicU64], at: Instant, n: u64) {
        let i = match self.started() {
            Some(t0) => (at.saturating_duration_since(t0).as_millis() as u64 / self.bucket_ms) as usize,
            None => 0,
        };
        if let Some(c) = series.get(i.min(series.len().saturating_sub(1))) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The sum of `series` over the buckets starting in `[from, to)` (ms after the start).
    fn sum(&self, series: &[AtomicU64], from_ms: u64, to_ms: u64) -> u64 {
        let a = from_ms.div_ceil(self.bucket_ms) as usize;
        let b = (to_ms.div_ceil(self.bucket_ms) as usize).min(series.len());
        series.get(a..b).map_or(0, |s| s.iter().map(|c| c.load(Ordering::Relaxed)).sum())
    }

    /// The buckets starting before `until` (after the start).
    pub fn buckets(&self, until: Duration) -> Vec<Bucket> {
        let n = (until.as_millis() as u64).div_ceil(self.bucket_ms).max(1) as usize;
        let get = |s: &[AtomicU64], i: usize| s[i].load(Ordering::Relaxed);
        (0..n.min(self.offered.len()))
            .map(|i| Bucket {
                t_ms: i as u64 * self.bucket_ms,
                offered_packets: get(&self.offered, i),
                delivered_packets: get(&self.delivered, i),
                delivered_bytes: get(&self.bytes, i),
                connects: get(&self.connects, i),
                connect_failures: get(&self.failures, i),
            })
            .collect()
    }
}

/// One timeline bucket ([`Timeline::bucket`] wide).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Bucket {
    /// Start of the bucket, ms after the load began.
    pub t_ms: u64,
    /// Frames the load generator wrote.
    pub offered_packets: u64,
    /// UDP datagrams / accepted connections the responder got.
    pub delivered_packets: u64,
    /// Payload bytes the responder got.
    pub delivered_bytes: u64,
    /// Connections the environments completed.
    pub connects: u64,
    /// Connections (and bulk streams) that failed.
    pub connect_failures: u64,
}

/// Our gateway's gauges, summed over its workers: (sessions in the tables, ENI ports held by live or ended
/// connections, distinct ENI addresses, ports of ended connections whose remote closed first).
pub fn gateway_gauges(workers: &[Arc<Counters>]) -> (u64, u64, usize, u64) {
    let mut sessions = 0u64;
    let mut ports = 0u64;
    let mut cooling = 0u64;
    let mut addrs = BTreeSet::new();
    for c in workers {
        for p in [ProtoIndex::Tcp, ProtoIndex::Udp, ProtoIndex::Icmp] {
            // Expired before created, so a session created in between cannot make the difference negative; the
            // counters are independent atomics, so saturate anyway.
            let expired = c.sessions_expired[p as usize].get();
            sessions += c.sessions_created[p as usize].get().saturating_sub(expired);
        }
        for (a, g) in c.port_gauges() {
            ports += (0..3).map(|i| u64::from(g.in_use[i] + g.closing[i])).sum::<u64>();
            cooling += g.cooling.iter().map(|&c| u64::from(c)).sum::<u64>();
            addrs.insert(a);
        }
    }
    (sessions, ports, addrs.len(), cooling)
}

/// Writes `timeline.csv` from a thread (see the module doc); [`CsvWriter::finish`] (or Drop) writes the remaining
/// seconds and closes it.
pub struct CsvWriter {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<u64>>>,
}

impl CsvWriter {
    /// Creates `path`, writes the header and starts the thread. `gateway`: our gateway's worker counters (None for
    /// the kernel: the gauge columns stay empty).
    pub fn start(path: &Path, tl: Arc<Timeline>, gateway: Option<Vec<Arc<Counters>>>) -> Result<CsvWriter, LoadError> {
        let file = std::fs::File::create(path).map_err(|e| io_err(format!("create {}", path.display()), e))?;
        let mut w = std::io::BufWriter::new(file);
        writeln!(w, "{CSV_HEADER}")
            .and_then(|()| w.flush())
            .map_err(|e| io_err(format!("write {}", path.display()), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("lg-csv".into())
            .spawn(move || write_loop(w, &tl, gateway.as_deref(), &flag))
            .map_err(|e| io_err("spawn the timeline writer", e))?;
        Ok(CsvWriter { path: path.to_path_buf(), stop, thread: Some(thread) })
    }

    /// Writes the seconds not yet written (the last possibly partial), closes the file; the lines written.
    pub fn finish(mut self) -> Result<u64, LoadError> {
        self.halt().map_err(|e| io_err(format!("write {}", self.path.display()), e))
    }

    fn halt(&mut self) -> std::io::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("the timeline writer panicked")),
            None => Ok(0),
        }
    }
}

impl Drop for CsvWriter {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

fn write_loop(
    mut w: impl Write,
    tl: &Timeline,
    gateway: Option<&[Arc<Counters>]>,
    stop: &AtomicBool,
) -> std::io::Result<u64> {
    let nap = |d: Duration| std::thread::sleep(d.min(Duration::from_millis(50)));
    let t0 = loop {
        if let Some(t0) = tl.started() {
            break t0;
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(0);
        }
        nap(Duration::from_millis(10));
    };
    let mut k = 1u64;
    let mut lines = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = t0 + Duration::from_secs(k) + CSV_LAG;
        let now = Instant::now();
        if now < due {
            nap(due - now);
            continue;
        }
        line(&mut w, tl, gateway, k)?;
        w.flush()?;
        lines += 1;
        k += 1;
    }
    // The rest of the run: every second begun before now.
    let end_ms = t0.elapsed().as_millis() as u64;
    while (k - 1) * 1000 < end_ms {
        line(&mut w, tl, gateway, k)?;
        lines += 1;
        k += 1;
    }
    w.flush()?;
    Ok(lines)
}

fn line(w: &mut impl Write, tl: &Timeline, gateway: Option<&[Arc<Counters>]>, k: u64) -> std::io::Result<()> {
    let (a, b) = ((k - 1) * 1000, k * 1000);
    let gauges = match gateway {
        Some(g) => {
            let (s, p, n, c) = gateway_gauges(g);
            format!("{s},{p},{n},{c}")
        }
        None => ",,,".into(),
    };
    writeln!(
        w,
        "{k},{},{},{},{},{},{gauges}",
        tl.sum(&tl.connects, a, b),
        tl.sum(&tl.failures, a, b),
        tl.sum(&tl.offered, a, b),
        tl.sum(&tl.delivered, a, b),
        tl.sum(&tl.bytes, a, b),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_fine_for_short_runs_and_coarse_for_long_ones() {
        assert_eq!(Timeline::new(Duration::from_secs(10), Duration::from_secs(10)).bucket(), FINE_BUCKET);
        assert_eq!(Timeline::new(FINE_SPAN, Duration::from_secs(10)).bucket(), FINE_BUCKET);
        let day = Timeline::new(Duration::from_secs(86_400), Duration::from_secs(10));
        assert_eq!(day.bucket(), COARSE_BUCKET);
        assert_eq!(day.offered.len(), 86_412, "bounded: one bucket per second");
    }

    #[test]
    fn per_second_sums_cover_whole_buckets() {
        let tl = Timeline::new(Duration::from_secs(5), Duration::ZERO);
        let t0 = Instant::now();
        tl.start(t0);
        tl.add(&tl.connects, t0 + Duration::from_millis(50), 1);
        tl.add(&tl.connects, t0 + Duration::from_millis(950), 2);
        tl.add(&tl.connects, t0 + Duration::from_millis(1000), 4);
        assert_eq!(tl.sum(&tl.connects, 0, 1000), 3);
        assert_eq!(tl.sum(&tl.connects, 1000, 2000), 4);
        let mut out = Vec::new();
        line(&mut out, &tl, None, 2).expect("writes");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "2,4,0,0,0,0,,,,\n");
        assert_eq!(CSV_HEADER.split(',').count(), 10);
    }
}
