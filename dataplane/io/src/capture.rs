//! Frame capture to pcap (`hyperplane capture`): the frames one port
//! receives and sends, as the gateway saw them: before translation on
//! receive, after it on send. The model is passt's `--pcap`.
//!
//! # Cost and bounds
//! - Off (the normal state), a tap point costs one relaxed atomic load:
//!   [`Capture::frame`] returns at once.
//! - On, a worker copies at most [`SNAPLEN`] bytes of each matching frame
//!   into a spare buffer and hands it to the writer over a bounded channel
//!   with `try_send`. It never waits and never allocates: with no spare
//!   buffer or a full channel the frame is not captured and counted in
//!   [`Summary::dropped`]. The spare buffers ([`POOL`] of them) exist only
//!   while a capture runs.
//! - One capture runs at a time; it ends after a number of frames or a
//!   time, whichever comes first, and writes at most `max_frames` records of
//!   at most [`SNAPLEN`] bytes each.
//!
//! # File format
//! Classic pcap (the format tcpdump and Wireshark read): a 24-byte global
//! header (magic `0xa1b2c3d4` in native byte order, version 2.4, link type
//! 1, Ethernet) and per frame a 16-byte record header (seconds and
//! microseconds since the Unix epoch, captured length, original length).
//! Frames with a partial checksum (an offload the kernel finishes) are
//! written as they are, so tcpdump may call that checksum wrong.

use crossbeam_channel::{Receiver, Sender};
use dataplane::PortId;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bytes kept of each frame (longer ones, GSO superframes, are cut).
pub const SNAPLEN: usize = 4096;
/// Spare buffers while a capture runs (also the channel's capacity).
pub const POOL: usize = 1024;
/// pcap link type of Ethernet frames.
const LINKTYPE_ETHERNET: u32 = 1;
/// No port: nothing matches.
const NO_PORT: u32 = u32::MAX;

/// One captured frame.
struct Record {
    buf: Vec<u8>,
    caplen: usize,
    len: usize,
    at: Duration,
}

/// The capture point all workers share.
pub struct Capture {
    on: AtomicBool,
    busy: AtomicBool,
    port: AtomicU32,
    dropped: AtomicU64,
    records: (Sender<Record>, Receiver<Record>),
    spare: (Sender<Vec<u8>>, Receiver<Vec<u8>>),
}

impl Default for Capture {
    fn default() -> Capture {
        Capture::new()
    }
}

/// What a capture wrote.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Frames written.
    pub frames: u64,
    /// Matching frames not written: no spare buffer, or the writer behind.
    pub dropped: u64,
}

impl Capture {
    /// An idle capture point.
    pub fn new() -> Capture {
        Capture {
            on: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            port: AtomicU32::new(NO_PORT),
            dropped: AtomicU64::new(0),
            records: crossbeam_channel::bounded(POOL),
            spare: crossbeam_channel::bounded(POOL),
        }
    }

    /// The tap point: `frame` was received on, or is sent out of, `port`.
    /// One relaxed load when no capture runs.
    #[inline]
    pub fn frame(&self, port: PortId, frame: &[u8]) {
        if self.on.load(Ordering::Relaxed) {
            self.record(port, frame);
        }
    }

    #[cold]
    fn record(&self, port: PortId, frame: &[u8]) {
        if self.port.load(Ordering::Relaxed) != u32::from(port.0) {
            return;
        }
        let Ok(mut buf) = self.spare.1.try_recv() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let caplen = frame.len().min(SNAPLEN).min(buf.len());
        buf[..caplen].copy_from_slice(&frame[..caplen]);
        let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        if let Err(e) = self.records.0.try_send(Record { buf, caplen, len: frame.len(), at }) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            let _ = self.spare.0.try_send(e.into_inner().buf);
        }
    }

    /// Whether a capture is running.
    pub fn running(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    /// Captures the frames of `port` into `out` (pcap) until `max_frames`
    /// are written or `max_time` passes, whichever comes first. Refused
    /// (`WouldBlock`) while another capture runs. Blocks the caller (not
    /// the workers) for the capture's length.
    pub fn run(&self, port: PortId, out: &mut impl Write, max_frames: u64, max_time: Duration) -> io::Result<Summary> {
        if self.busy.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "another capture is running"));
        }
        let r = self.run_claimed(port, out, max_frames, max_time);
        // Off, then what is left goes: the pool's memory is only held while
        // a capture runs.
        self.on.store(false, Ordering::Relaxed);
        self.port.store(NO_PORT, Ordering::Relaxed);
        while self.records.1.try_recv().is_ok() {}
        while self.spare.1.try_recv().is_ok() {}
        self.busy.store(false, Ordering::Release);
        r
    }

    fn run_claimed(
        &self,
        port: PortId,
        out: &mut impl Write,
        max_frames: u64,
        max_time: Duration,
    ) -> io::Result<Summary> {
        write_header(out)?;
        // A worker that saw the last capture's flag late may have left a
        // frame of it behind.
        while self.records.1.try_recv().is_ok() {}
        for _ in 0..POOL {
            let _ = self.spare.0.try_send(vec![0u8; SNAPLEN]);
        }
        self.dropped.store(0, Ordering::Relaxed);
        self.port.store(u32::from(port.0), Ordering::Relaxed);
        self.on.store(true, Ordering::Relaxed);
        let end = Instant::now() + max_time;
        let mut frames = 0;
        while frames < max_frames {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Ok(r) = self.records.1.recv_timeout(left) else {
                continue;
            };
            let written = write_record(out, &r);
            let _ = self.spare.0.try_send(r.buf);
            written?;
            frames += 1;
        }
        self.on.store(false, Ordering::Relaxed);
        out.flush()?;
        // Frames in the channel when it stopped were seen but not written.
        let late = self.records.1.len() as u64;
        Ok(Summary { frames, dropped: self.dropped.load(Ordering::Relaxed) + late })
    }
}

/// The pcap global header.
pub fn write_header(out: &mut impl Write) -> io::Result<()> {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_ne_bytes());
    h[4..6].copy_from_slice(&2u16.to_ne_bytes());
    h[6..8].copy_from_slice(&4u16.to_ne_bytes());
    // thiszone and sigfigs: zero.
    h[16..20].copy_from_slice(&(SNAPLEN as u32).to_ne_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
    out.write_all(&h)
}

fn write_record(out: &mut impl Write, r: &Record) -> io::Result<()> {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&(r.at.as_secs() as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&r.at.subsec_micros().to_ne_bytes());
    h[8..12].copy_from_slice(&(r.caplen as u32).to_ne_bytes());
    h[12..16].copy_from_slice(&(r.len as u32).to_ne_bytes());
    out.write_all(&h)?;
    out.write_all(&r.buf[..r.caplen])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn off_captures_nothing_and_on_writes_matching_frames_only() {
        let c = Arc::new(Capture::new());
        c.frame(PortId(1), &[1u8; 60]);
        assert!(c.records.1.is_empty() && c.spare.1.is_empty(), "off: nothing taken");
        let c2 = Arc::clone(&c);
        let feeder = std::thread::spawn(move || {
            while !c2.on.load(Ordering::Relaxed) {
                std::thread::yield_now();
            }
            for i in 0..10u8 {
                c2.frame(PortId(2), &[i; 60]); // another port
                c2.frame(PortId(1), &[i; 70]);
            }
            c2.frame(PortId(1), &vec![9u8; SNAPLEN + 100]);
        });
        let mut out = vec![];
        let s = c.run(PortId(1), &mut out, 11, Duration::from_secs(5)).unwrap();
        feeder.join().unwrap();
        assert_eq!(s, Summary { frames: 11, dropped: 0 });
        assert_eq!(out.len(), 24 + 10 * (16 + 70) + 16 + SNAPLEN);
        assert_eq!(u32::from_ne_bytes(out[0..4].try_into().unwrap()), 0xa1b2_c3d4);
        // First record: 70 bytes of zeros; the last is cut at SNAPLEN.
        assert_eq!(u32::from_ne_bytes(out[32..36].try_into().unwrap()), 70);
        let last = 24 + 10 * 86;
        assert_eq!(u32::from_ne_bytes(out[last + 8..last + 12].try_into().unwrap()), SNAPLEN as u32);
        assert_eq!(u32::from_ne_bytes(out[last + 12..last + 16].try_into().unwrap()), (SNAPLEN + 100) as u32);
        assert!(!c.running() && c.spare.1.is_empty(), "the pool is freed after the capture");
    }

    /// A pcap writer whose record writes block until `open` is set (at most
    /// 20 s, noting whether it had to give up): a writer that has fallen
    /// behind, for as long as the test wants.
    struct Gate {
        open: Arc<AtomicBool>,
        writes: usize,
        gave_up: bool,
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            // The global header goes through; the first record waits.
            if self.writes > 1 {
                let t = Instant::now();
                while !self.open.load(Ordering::Acquire) {
                    if t.elapsed() > Duration::from_secs(20) {
                        self.gave_up = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(b.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_writer_that_falls_behind_costs_counted_drops_not_waits() {
        let c = Arc::new(Capture::new());
        let c2 = Arc::clone(&c);
        let open = Arc::new(AtomicBool::new(false));
        let open2 = Arc::clone(&open);
        let feeder = std::thread::spawn(move || {
            while !c2.on.load(Ordering::Relaxed) {
                std::thread::yield_now();
            }
            // Far more than the pool, at once, while the writer is stuck on
            // its first record: the workers' side must not wait for it.
            for _ in 0..(POOL * 4) {
                c2.frame(PortId::OUTSIDE, &[0u8; 100]);
            }
            open2.store(true, Ordering::Release);
        });
        let mut out = Gate { open, writes: 0, gave_up: false };
        let s = c.run(PortId::OUTSIDE, &mut out, 1, Duration::from_secs(30)).unwrap();
        feeder.join().unwrap();
        assert!(!out.gave_up, "the feeder finished while the writer was stuck: frames never wait for it");
        assert_eq!(s.frames, 1);
        assert!(s.dropped >= (POOL * 3) as u64, "everything past the pool is dropped and counted: {s:?}");
    }

    #[test]
    fn one_capture_at_a_time_and_time_bounds_it() {
        let c = Arc::new(Capture::new());
        let c2 = Arc::clone(&c);
        let t = std::thread::spawn(move || c2.run(PortId(3), &mut io::sink(), 1000, Duration::from_millis(300)));
        while !c.running() {
            std::thread::yield_now();
        }
        let e = c.run(PortId(3), &mut io::sink(), 1, Duration::from_millis(10)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let t0 = Instant::now();
        let s = t.join().unwrap().unwrap();
        assert_eq!(s.frames, 0);
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(!c.running());
    }
}
