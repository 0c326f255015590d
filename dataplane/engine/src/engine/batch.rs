//! Frames in vectors, VPP style: [`Engine::process_batch`] takes up to a
//! read's worth of frames and works through them in passes, so the cache
//! misses of one frame overlap those of the others instead of following
//! them one by one.
//!
//! 1. Parse every frame and hash its flow key (inside key for a frame from
//!    an attachment, outside key for one from the VPC); prefetch the key's
//!    index bucket.
//! 2. Read each bucket and prefetch the sessions whose tags match; keep
//!    the first of them in the frame's hint (the likely hit), or the
//!    finding that the index holds no session under the hash at all (no
//!    tag matched and the home bucket never overflowed).
//! 3. Process the frames in order, exactly as [`Engine::process_offload`]
//!    would: a frame of an established flow that changes nothing but its
//!    session's counters by the established path (`fast`, whose doc lists
//!    when it applies), any other by the general path, with the IPv4 and
//!    transport headers from pass 1 (the frame is unchanged since; each is
//!    used once, for the frame it was parsed from) and the hash handed to
//!    the session lookup. A frame whose key pass 2 found stored nowhere (a
//!    new flow) skips the established path's lookup; the first packet of an
//!    outbound TCP or UDP flow goes to the new-flow path (`fast_new`, whose
//!    doc lists when it applies), any other to the general path, and both
//!    look the key up again (an earlier frame of the chunk may have created
//!    its session since).
//!
//! Passes 1 and 2 only read frames and tables and issue prefetches: every
//! decision is taken in pass 3 in arrival order, so a batch gives the same
//! frames, actions, counters and sessions as the frames one by one (a frame
//! that hits a session an earlier frame of the same batch created finds it,
//! its prefetch only came too early). A hash is used in pass 3 only for the
//! very key it was computed from. The established path takes a hint's
//! candidate session only if that slot holds the frame's key when the
//! frame's turn comes (an earlier frame of the batch may have freed or
//! recycled it; a free slot has protocol 0, which no TCP or UDP key has),
//! and looks the key up otherwise: the candidate saves pass 3 the second
//! walk of the bucket (about 60 of some 870 instructions a packet, 3–8 ns
//! at 1,000 and 100,000 sessions, `cargo bench --bench engine`, rough).

use super::{flow_of, Action, Engine, Flow, Offload};
use crate::flow::{Endpoint, FlowKey};
use crate::session::{SessionTable, NIL};
use crate::tcp::Dir;
use crate::time::Instant;
use crate::wire::{self, Ipv4, ETH_LEN};
use crate::PortId;

/// Frames a worker reads for one [`Engine::process_batch`] call.
pub const BATCH: usize = 64;

/// Frames the passes work through at a time (a longer slice is taken in
/// chunks of this many). Smaller than [`BATCH`] so that a chunk's frames,
/// index buckets and prefetched sessions stay in the first-level cache
/// until their turn: 16 was 10% faster than 64 at 100,000 sessions and
/// as fast at 1,000 (`cargo bench --bench engine`).
const CHUNK: usize = 16;

/// One frame of a batch for [`Engine::process_batch`].
#[derive(Debug)]
pub struct BatchFrame<'a> {
    /// The port it arrived on.
    pub port: PortId,
    /// Its buffer, owned by the caller: `buf[..len]` holds the frame, the
    /// rest is room for a reply (see [`Engine::process`] on sizes). The
    /// engine rewrites it in place.
    pub buf: &'a mut [u8],
    /// Frame length.
    pub len: usize,
    /// Offloads the device reported (default: none); after
    /// [`Engine::process_batch`], the offload state the frame leaves with
    /// (see [`Engine::forwarded_offload`]).
    pub offload: Offload,
    /// What to do with `buf`, written by [`Engine::process_batch`]; its
    /// value on entry is ignored.
    pub action: Action,
}

impl<'a> BatchFrame<'a> {
    /// A frame of `len` bytes in `buf` from `port`, without offloads.
    pub fn new(port: PortId, buf: &'a mut [u8], len: usize) -> BatchFrame<'a> {
        BatchFrame { port, buf, len, offload: Offload::default(), action: Action::Consumed }
    }
}

/// A frame's IPv4 header parsed, and its flow key hashed, ahead of the
/// frame's turn.
#[derive(Copy, Clone, Debug)]
pub(super) struct Hint {
    /// The header as `wire::parse_ipv4` gave it for `frame[..len]`.
    pub(super) ip: Ipv4,
    pub(super) key: FlowKey,
    pub(super) hash: u64,
    /// What `flow_of` gave for the frame (the key's ports come from it).
    pub(super) flow: Flow,
    /// The first session the key's home bucket holds under the hash's tag
    /// (pass 2): likely the key's session, to be checked. `NIL` when the
    /// index held no session under the hash at pass 2, `MAYBE` when it may
    /// hold one outside the home bucket (see
    /// [`SessionTable::prefetch_candidates`]).
    pub(super) cand: u32,
}

impl Engine {
    /// Processes `frames` in order, each as [`Engine::process_offload`]
    /// would (same rewrites, actions, counters and sessions), writing each
    /// frame's [`Action`] into its `action`. Frames the engine makes or
    /// releases meanwhile wait for [`Engine::poll_transmit`] as usual. No
    /// allocation on the established path.
    pub fn process_batch(&mut self, now: Instant, frames: &mut [BatchFrame<'_>]) {
        for chunk in frames.chunks_mut(CHUNK) {
            self.process_chunk(now, chunk);
        }
    }

    fn process_chunk(&mut self, now: Instant, frames: &mut [BatchFrame<'_>]) {
        let mut hints: [Option<Hint>; CHUNK] = [None; CHUNK];
        // Pass 1: keys, hashes, index buckets.
        for (f, h) in frames.iter().zip(hints.iter_mut()) {
            *h = hint(&self.table, f.port, &f.buf[..f.len.min(f.buf.len())]);
        }
        // Pass 2: the sessions the buckets point at.
        for (f, h) in frames.iter().zip(hints.iter_mut()) {
            if let Some(h) = h {
                h.cand = self.table.prefetch_candidates(h.hash, !f.port.is_inside());
            }
        }
        // Pass 3: in order, as one by one. A frame whose key pass 2 found
        // stored nowhere (a new flow, or one whose session an earlier frame
        // of the chunk creates) goes to the general path straight away.
        for (f, h) in frames.iter_mut().zip(hints.iter()) {
            if let Some(h) = h {
                if h.cand != NIL && self.fast(now, f, h) {
                    continue;
                }
                if h.cand == NIL && self.fast_new(now, f, h) {
                    continue;
                }
            }
            self.hint = *h;
            f.action = self.process_offload(now, f.port, f.buf, f.len, f.offload);
            f.offload = self.forwarded_offload();
        }
        self.hint = None;
    }

    /// The hash of `key`: from the batch's pass 1 when it was computed for
    /// this very key, else computed now.
    #[inline]
    pub(super) fn key_hash(&self, key: &FlowKey) -> u64 {
        match self.hint {
            Some(h) if h.key == *key => h.hash,
            _ => self.table.hash(key),
        }
    }
}

/// The hint of a frame from `port` (its IPv4 header, the session key it
/// would be looked up by and that key's hash; the key's index bucket
/// prefetched), if it is an unfragmented IPv4 TCP, UDP or ICMP echo packet
/// that parses. Reads the frame only; the decisions are left to the
/// frame's turn.
#[inline(always)]
fn hint(table: &SessionTable, port: PortId, frame: &[u8]) -> Option<Hint> {
    if frame.len() < ETH_LEN || wire::ethertype(frame) != wire::ETHERTYPE_IPV4 {
        return None;
    }
    let ip = wire::parse_ipv4_inlined(frame, ETH_LEN).ok()?;
    if ip.frag_off() != 0 {
        return None;
    }
    let dir = if port.is_inside() { Dir::Out } else { Dir::In };
    let flow = flow_of(frame, &ip, dir).ok()??;
    let (_, sport, dport, _) = flow;
    let (src, dst) = (Endpoint::new(ip.src, sport), Endpoint::new(ip.dst, dport));
    let key = match dir {
        Dir::Out => FlowKey { proto: ip.proto, local: src, remote: dst },
        Dir::In => FlowKey { proto: ip.proto, local: dst, remote: src },
    };
    let hash = table.hash(&key);
    table.prefetch_bucket(hash, dir == Dir::In);
    Some(Hint { ip, key, hash, flow, cand: NIL })
}
