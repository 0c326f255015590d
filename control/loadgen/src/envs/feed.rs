//! Where a shard's frames come from ([`Feed`]): the ports themselves ([`PortFeed`]: read, then demultiplexed by
//! destination MAC, broadcast ARP by its target address), or, with several shards, the reader thread's channel
//! ([`ChanFeed`]). Frames reach the shard as owned buffers with their environment's index (over all environments).

use super::super::{env_of_mac, io_err, raw, Addresses, LoadError, Port};
use super::RX_BATCH;
use dataplane_io::{Events, Poller};
use std::time::Duration;

/// Where a shard's frames come from: the ports themselves ([`PortFeed`], one shard), or the reader thread's
/// channel ([`ChanFeed`], several).
pub(super) trait Feed {
    /// Takes what has arrived, up to a batch, handing each frame to `deliver` with its environment's index (all
    /// environments); returns how many were taken.
    fn pull(&mut self, deliver: &mut dyn FnMut(usize, Vec<u8>)) -> usize;
    /// Waits at most `ms` milliseconds for something to arrive.
    fn wait(&mut self, ms: u64);
}

/// Reads the ports and demultiplexes: by destination MAC ([`env_of_mac`]), broadcast ARP by its target address.
pub(super) struct PortFeed<'a> {
    taps: &'a [Port],
    addrs: &'a Addresses,
    n: usize,
    poller: Option<Poller>,
    events: Events,
    readable: Vec<usize>,
    buf: Vec<u8>,
    /// Frames for no environment.
    pub(super) unclaimed: u64,
    /// Failed reads.
    pub(super) rx_errors: u64,
}

impl<'a> PortFeed<'a> {
    pub(super) fn new(taps: &'a [Port], addrs: &'a Addresses, n: usize) -> Result<PortFeed<'a>, LoadError> {
        let poller = if taps.len() > 1 {
            let p = Poller::new().map_err(|e| io_err("epoll_create1", e))?;
            for (j, t) in taps.iter().enumerate() {
                p.add(t, j as u64).map_err(|e| io_err(format!("epoll add {}", t.name()), e))?;
            }
            Some(p)
        } else {
            None
        };
        Ok(PortFeed {
            taps,
            addrs,
            n,
            poller,
            events: Events::with_capacity(taps.len().min(1024)),
            readable: Vec::with_capacity(taps.len()),
            buf: vec![0u8; 65536],
            unclaimed: 0,
            rx_errors: 0,
        })
    }
}

impl Feed for PortFeed<'_> {
    fn pull(&mut self, deliver: &mut dyn FnMut(usize, Vec<u8>)) -> usize {
        self.readable.clear();
        match &self.poller {
            Some(p) => {
                if p.wait(&mut self.events, Some(Duration::ZERO)).is_ok() {
                    self.readable.extend(self.events.tokens().map(|t| t as usize));
                }
            }
            None => self.readable.push(0),
        }
        let mut got = 0;
        for &j in &self.readable {
            let tap = &self.taps[j];
            let mut got_here = 0;
            while got_here < RX_BATCH {
                match tap.recv(&mut self.buf) {
                    Ok(len) => {
                        got += 1;
                        got_here += 1;
                        let f = &self.buf[..len];
                        let to = if len < 14 {
                            None
                        } else if f[..6] == [0xff; 6] {
                            raw::parse_arp(f).and_then(|(_, _, _, tpa)| self.addrs.env_index(tpa))
                        } else {
                            env_of_mac(&f[..6])
                        };
                        match to.filter(|&i| i < self.n) {
                            Some(i) => deliver(i, f.to_vec()),
                            None => self.unclaimed += 1,
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.rx_errors += 1;
                        break;
                    }
                }
            }
        }
        got
    }

    fn wait(&mut self, ms: u64) {
        match &self.poller {
            Some(p) => {
                let _ = p.wait(&mut self.events, Some(Duration::from_millis(ms)));
            }
            None => raw::wait(&self.taps[0], ms),
        }
    }
}

/// One shard's share of the reader thread's frames.
pub(super) struct ChanFeed {
    pub(super) rx: crossbeam_channel::Receiver<(usize, Vec<u8>)>,
    /// A frame [`Feed::wait`] received, handed over by the next pull.
    pub(super) pending: Option<(usize, Vec<u8>)>,
}

impl Feed for ChanFeed {
    fn pull(&mut self, deliver: &mut dyn FnMut(usize, Vec<u8>)) -> usize {
        let mut got = 0;
        if let Some((i, f)) = self.pending.take() {
            deliver(i, f);
            got += 1;
        }
        while got < RX_BATCH {
            match self.rx.try_recv() {
                Ok((i, f)) => {
                    deliver(i, f);
                    got += 1;
                }
                Err(_) => break,
            }
        }
        got
    }

    fn wait(&mut self, ms: u64) {
        if self.pending.is_none() {
            self.pending = self.rx.recv_timeout(Duration::from_millis(ms)).ok();
        }
    }
}
