//! The environments' loop, one per shard (see the module doc of [`super`]), and [`run`], which runs one shard on
//! the calling thread or several on pinned threads with a reader handing them their frames, then adds up what
//! they measured.

use super::super::{io_err, Addresses, ConnectFigures, LoadArgs, LoadError, Measured, Port, Timeline, UdpFigures};
use super::feed::{ChanFeed, Feed, PortFeed};
use super::{bulk_tx_buf, kinds, new_env, start_connect, step, tcp, Ctx, Env, Kind, Phase, SInstant, Stats, TxCount};
use hdrhistogram::Histogram;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// What one shard measured.
struct ShardResult {
    stats: Stats,
    hist: Histogram<u64>,
    tx: TxCount,
    end_us: i64,
    stopped: bool,
}

/// Runs a smoltcp scenario (`tcp-bulk`, `connect`, `mixed`) with `n` environments (see the module doc): all behind
/// `taps[0]`, or environment `i` behind `taps[i]` when there are `n` TAPs. With `args.cpus`, one shard per CPU
/// listed, pinned to it, holds environments `i ≡ t (mod shards)`, and a reader thread hands each shard its frames.
pub(crate) fn run(
    taps: &[Port],
    addrs: &Addresses,
    n: usize,
    args: &LoadArgs,
    grace: Duration,
    tl: &Timeline,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<Measured, LoadError> {
    let kinds = kinds(args.scenario, n);
    assert!(taps.len() <= 1 || taps.len() == n, "one TAP, or one per environment");
    let shards = args.cpus.len().clamp(1, n.max(1));
    let bulk_buf = bulk_tx_buf(kinds.iter().filter(|&&k| k == Kind::Bulk).count());
    let plan = ShardPlan { taps, addrs, n, shards, kinds: &kinds, bulk_buf, args, grace, tl };
    let t0 = Instant::now();
    tl.start(t0);
    let (results, (unclaimed, behind), rx_errors) = if shards == 1 {
        let mut feed = PortFeed::new(taps, addrs, n)?;
        let r = plan.run(0, &mut feed, t0, bar);
        (vec![r], (feed.unclaimed, 0), feed.rx_errors)
    } else {
        let mut feed = PortFeed::new(taps, addrs, n)?;
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| crossbeam_channel::bounded(SHARD_QUEUE)).unzip();
        let finished = std::sync::atomic::AtomicUsize::new(0);
        let mut behind = 0u64;
        let results = std::thread::scope(|s| {
            let handles: Vec<_> = rxs
                .into_iter()
                .enumerate()
                .map(|(t, rx)| {
                    let (plan, finished, cpu) = (&plan, &finished, args.cpus[t]);
                    let bar = if t == 0 { bar } else { None };
                    s.spawn(move || {
                        let _ = super::super::sender::pin_to(cpu);
                        let r = plan.run(t, &mut ChanFeed { rx, pending: None }, t0, bar);
                        finished.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        r
                    })
                })
                .collect();
            // The reader: every frame to the shard that holds its environment, until every shard is done.
            while finished.load(std::sync::atomic::Ordering::Relaxed) < shards {
                let got = feed.pull(&mut |i, f| {
                    if txs[i % shards].try_send((i, f)).is_err() {
                        behind += 1;
                    }
                });
                if got == 0 {
                    feed.wait(1);
                }
            }
            handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
        });
        let results: Vec<ShardResult> = results
            .into_iter()
            .map(|r| r.map_err(|_| io_err("an environment thread", std::io::Error::other("panicked"))))
            .collect::<Result<_, _>>()?;
        (results, (feed.unclaimed, behind), feed.rx_errors)
    };
    // Merge the shards.
    let mut s = Stats { unclaimed, rx_errors, behind, ..Stats::default() };
    let mut tx = TxCount::default();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    let (mut end_us, mut stopped) = (0i64, false);
    for r in results {
        s.add(&r.stats);
        tx.frames += r.tx.frames;
        tx.bytes += r.tx.bytes;
        tx.errors += r.tx.errors;
        let _ = hist.add(&r.hist);
        end_us = end_us.max(r.end_us);
        stopped |= r.stopped;
    }
    let load = Duration::from_micros(end_us.max(0) as u64);
    let mut m = Measured {
        load,
        stopped: stopped && load < args.duration,
        frames_out: tx.frames,
        bytes_out: tx.bytes,
        ..Measured::default()
    };
    if kinds.contains(&Kind::Connect) {
        m.connect = Some(ConnectFigures {
            attempted: s.attempted,
            established: s.established,
            completed: s.completed,
            failed: s.refused + s.timeout + s.reset,
            refused: s.refused,
            timeout: s.timeout,
            reset: s.reset,
            ..ConnectFigures::default()
        });
        m.latency = Some(hist);
    }
    if kinds.contains(&Kind::Udp) {
        m.udp = Some(UdpFigures {
            sent: s.udp_sent,
            echoed: s.udp_echoed,
            lost_by_echo: args.echo.then(|| s.udp_sent.saturating_sub(s.udp_echoed)),
        });
    }
    m.bulk_sent = s.bulk_sent;
    m.bulk_streams = s.bulk_streams;
    m.bulk_clean = s.bulk_clean;
    for (k, v) in [
        ("connect_refused", s.refused),
        ("connect_timeout", s.timeout),
        ("connect_reset", s.reset),
        ("tap_write", tx.errors),
        ("tap_read", s.rx_errors),
        ("udp_send", s.udp_errors),
        ("frames_unclaimed", s.unclaimed),
        ("environment_thread_behind", s.behind),
    ] {
        if v > 0 {
            m.errors.insert(k.into(), v);
        }
    }
    Ok(m)
}

/// Frames waiting for one environment thread, at most; the reader drops (and counts as
/// `environment_thread_behind`) what a thread that far behind cannot take, so memory stays bounded.
const SHARD_QUEUE: usize = 65_536;

/// What every shard shares.
struct ShardPlan<'a> {
    taps: &'a [Port],
    addrs: &'a Addresses,
    n: usize,
    shards: usize,
    kinds: &'a [Kind],
    bulk_buf: usize,
    args: &'a LoadArgs,
    grace: Duration,
    tl: &'a Timeline,
}

impl ShardPlan<'_> {
    /// Shard `t`'s loop over its environments `i = t + j × shards` (local index `j`), fed by `feed` (see the
    /// module doc for the loop).
    fn run(&self, t: usize, feed: &mut dyn Feed, t0: Instant, bar: Option<&indicatif::ProgressBar>) -> ShardResult {
        let (args, n, shards, tl) = (self.args, self.n, self.shards, self.tl);
        let per_env = self.taps.len() > 1;
        let tap_of = |i: usize| if per_env { &self.taps[i] } else { &self.taps[0] };
        let global = |j: usize| t + j * shards;
        let mine: Vec<usize> = (t..n).step_by(shards).collect();
        let mut tx = TxCount::default();
        let mut envs: Vec<Env> =
            mine.iter().map(|&i| new_env(self.addrs, i, self.kinds[i], self.bulk_buf, tap_of(i), &mut tx)).collect();
        let us = |d: Duration| d.as_micros() as i64;
        let hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        let mut cx = Ctx {
            server: self.addrs.server,
            t0,
            end_us: us(args.duration),
            timeout_us: us(args.connect_timeout),
            repeat: !args.once,
            payload: args.payload,
            pacer: args.rate.is_some(),
            tl,
            hist,
            stats: Stats::default(),
            idle: VecDeque::new(),
        };
        let mut hard_end = us(args.duration + self.grace);
        let mut stopped = false;
        // Frames already put on the timeline, and when.
        let (mut tl_frames, mut tl_at) = (0u64, t0);
        let mut heap: BinaryHeap<Reverse<(i64, u32)>> = BinaryHeap::with_capacity(2 * envs.len());
        for (j, e) in envs.iter_mut().enumerate() {
            let at = (us(args.ramp) as i128 * global(j) as i128 / n as i128) as i64;
            e.wake = Some(at);
            heap.push(Reverse((at, j as u32)));
        }
        let mut ready: Vec<u32> = Vec::with_capacity(envs.len());
        // The pacer's share: `rate / shards` connections per second.
        let rate = args.rate.map(|r| r / shards as f64);
        let mut started_paced = 0u64;
        let mut closed_out = false;
        let mut last_bar = t0;
        loop {
            let now_us = us(t0.elapsed());
            if !stopped && args.stop.is_stopped() {
                // Stop: the offered load ends now; connections in flight get STOP_GRACE.
                stopped = true;
                cx.end_us = cx.end_us.min(now_us);
                hard_end = hard_end.min(now_us + us(super::super::STOP_GRACE));
            }
            if now_us >= hard_end {
                break;
            }
            if tx.frames > tl_frames && t0 + Duration::from_micros(now_us as u64) >= tl_at + Duration::from_millis(10) {
                tl_at = t0 + Duration::from_micros(now_us as u64);
                tl.add(&tl.offered, tl_at, tx.frames - tl_frames);
                tl_frames = tx.frames;
            }
            if now_us >= cx.end_us && !closed_out {
                // End of the offered load: nothing new starts; streams close.
                closed_out = true;
                for (j, e) in envs.iter_mut().enumerate() {
                    if matches!(e.phase, Phase::Waiting | Phase::Idle | Phase::Sending | Phase::Streaming) {
                        if e.phase == Phase::Streaming {
                            e.sockets.get_mut::<tcp::Socket>(e.handle).close();
                            e.phase = Phase::Closing;
                            e.since = now_us;
                        } else {
                            e.phase = Phase::Done;
                        }
                        if !e.ready {
                            e.ready = true;
                            ready.push(j as u32);
                        }
                    }
                }
                cx.idle.clear();
            }
            if closed_out && ready.is_empty() && envs.iter().all(|e| e.phase == Phase::Done) {
                break;
            }
            // 1. What arrived, into the environments' inboxes.
            let got = feed.pull(&mut |i, f| {
                let j = i / shards;
                let e = &mut envs[j];
                e.inbox.push_back(f);
                if !e.ready {
                    e.ready = true;
                    ready.push(j as u32);
                }
            });
            // 2. Timers.
            while let Some(&Reverse((at, j))) = heap.peek() {
                if at > now_us {
                    break;
                }
                heap.pop();
                let e = &mut envs[j as usize];
                if e.wake == Some(at) {
                    e.wake = None;
                    if !e.ready {
                        e.ready = true;
                        ready.push(j);
                    }
                }
            }
            // 3. The pacer releases idle connect environments at `rate` per second.
            if let Some(rate) = rate {
                let due = (rate * now_us as f64 / 1e6) as u64;
                while started_paced < due {
                    let Some(j) = cx.idle.pop_front() else { break };
                    started_paced += 1;
                    let e = &mut envs[j as usize];
                    start_connect(e, now_us, &mut cx);
                    if !e.ready {
                        e.ready = true;
                        ready.push(j);
                    }
                }
            }
            // 4. Poll the ready environments.
            let work = !ready.is_empty();
            for j in std::mem::take(&mut ready) {
                let e = &mut envs[j as usize];
                e.ready = false;
                let now_us = us(t0.elapsed());
                step(e, j, now_us, closed_out, tap_of(global(j as usize)), &mut tx, &mut cx);
                let ts = SInstant::from_micros(now_us);
                let next = e.iface.poll_at(ts, &e.sockets).map(|t| t.total_micros());
                let next = match (next, e.app_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if let Some(t) = next {
                    let t = t.max(now_us + 1);
                    if e.wake != Some(t) {
                        e.wake = Some(t);
                        heap.push(Reverse((t, j)));
                    }
                }
            }
            if let Some(b) = bar {
                let now = Instant::now();
                if now - last_bar >= Duration::from_millis(100) {
                    last_bar = now;
                    b.set_position(now.duration_since(t0).as_millis() as u64);
                    let who = if shards > 1 { format!("thread 0 of {shards}: ") } else { String::new() };
                    b.set_message(format!(
                        "{who}{} connects, {} failed, {} MB streamed, {} udp",
                        cx.stats.completed,
                        cx.stats.refused + cx.stats.timeout + cx.stats.reset,
                        cx.stats.bulk_sent >> 20,
                        cx.stats.udp_sent
                    ));
                }
            }
            if got == 0 && !work {
                let next = heap.peek().map_or(1000, |Reverse((at, _))| (at - us(t0.elapsed())).clamp(0, 1000));
                if next > 50 {
                    feed.wait(if next >= 1000 { 1 } else { 0 });
                }
            }
        }
        tl.add(&tl.offered, Instant::now(), tx.frames - tl_frames);
        ShardResult { end_us: cx.end_us.min(us(t0.elapsed())), stopped, stats: cx.stats, hist: cx.hist, tx }
    }
}
