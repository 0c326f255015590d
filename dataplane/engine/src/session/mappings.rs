//! The mapping table: endpoint-independent mappings in a slab, found by
//! (protocol, environment endpoint) and by (protocol, ENI endpoint) through
//! two chained hash indexes; each mapping heads the list of its sessions,
//! linked through their [`Links`] (see the module doc of [`super`]).

use super::*;

/// An endpoint-independent mapping: environment endpoint ↔ ENI endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Mapping {
    /// IP protocol number.
    pub proto: u8,
    /// The environment's attachment.
    pub port: PortId,
    /// The environment's MAC.
    pub env_mac: Mac,
    /// The environment's endpoint.
    pub inside: Endpoint,
    /// The ENI endpoint.
    pub eni: Endpoint,
    /// Sessions using it.
    pub sessions: u32,
    /// Sessions using it that are not recyclable: while this is 0 the
    /// mapping's port may be recycled with its sessions.
    pub live: u32,
    pub(super) head: u32,
    pub(super) in_next: u32,
    pub(super) out_next: u32,
}

impl SessionTable {
    /// The hash of a mapping key (proto, endpoint), as both mapping indexes
    /// use it: for [`SessionTable::find_mapping_inside_hashed`] and
    /// [`SessionTable::insert_mapping_hashed`], so a new flow hashes its
    /// inside endpoint once.
    #[inline]
    pub fn mapping_hash(&self, proto: u8, ep: Endpoint) -> u64 {
        hash2(&self.hasher, proto, ep)
    }

    /// Finds a mapping by (proto, environment endpoint).
    pub fn find_mapping_inside(&self, proto: u8, inside: Endpoint) -> Option<u32> {
        self.find_mapping_inside_hashed(proto, inside, self.mapping_hash(proto, inside))
    }

    /// [`SessionTable::find_mapping_inside`] with the key's
    /// [`SessionTable::mapping_hash`] `h`.
    #[inline]
    pub fn find_mapping_inside_hashed(&self, proto: u8, inside: Endpoint, h: u64) -> Option<u32> {
        let b = (h & self.mask) as usize;
        find_on_chain(self.map_in_buckets[b], &self.mappings, Link::Inside, |m| m.inside == inside && m.proto == proto)
    }

    /// Finds a mapping by (proto, ENI endpoint).
    pub fn find_mapping_outside(&self, proto: u8, eni: Endpoint) -> Option<u32> {
        let b = (hash2(&self.hasher, proto, eni) & self.mask) as usize;
        find_on_chain(self.map_out_buckets[b], &self.mappings, Link::Outside, |m| m.eni == eni && m.proto == proto)
    }

    /// Whether any session of mapping `m` has sent to `remote` (its address
    /// only when `port_too` is false). Walks the mapping's sessions.
    pub fn mapping_has_remote(&self, m: u32, remote: Endpoint, port_too: bool) -> bool {
        let mut id = self.mappings[m as usize].head;
        while id != NIL {
            let s = &self.sessions[id as usize];
            if s.remote.ip == remote.ip && (!port_too || s.remote.port == remote.port) && !s.inbound_origin {
                return true;
            }
            id = self.links[id as usize].map_next;
        }
        false
    }

    /// Creates a mapping with no sessions yet.
    pub fn insert_mapping(
        &mut self,
        proto: u8,
        inside: Endpoint,
        eni: Endpoint,
        port: PortId,
        env_mac: Mac,
    ) -> Result<u32, Full> {
        let (hi, ho) = (self.mapping_hash(proto, inside), self.mapping_hash(proto, eni));
        self.insert_mapping_hashed(proto, inside, eni, port, env_mac, (hi, ho))
    }

    /// [`SessionTable::insert_mapping`] with the [`SessionTable::mapping_hash`]es
    /// of its inside and ENI endpoints, in that order.
    #[inline]
    pub fn insert_mapping_hashed(
        &mut self,
        proto: u8,
        inside: Endpoint,
        eni: Endpoint,
        port: PortId,
        env_mac: Mac,
        (hi, ho): (u64, u64),
    ) -> Result<u32, Full> {
        let id = self.map_free.pop().ok_or(Full)?;
        let bi = (hi & self.mask) as usize;
        let bo = (ho & self.mask) as usize;
        self.mappings[id as usize] = Mapping {
            proto,
            port,
            env_mac,
            inside,
            eni,
            sessions: 0,
            live: 0,
            head: NIL,
            in_next: self.map_in_buckets[bi],
            out_next: self.map_out_buckets[bo],
        };
        self.map_in_buckets[bi] = id;
        self.map_out_buckets[bo] = id;
        Ok(id)
    }

    /// Removes a mapping that never got a session (its session could not be
    /// inserted). Does nothing if it has sessions.
    pub fn drop_empty_mapping(&mut self, id: u32) {
        if self.mappings[id as usize].sessions == 0 {
            self.remove_mapping(id);
        }
    }

    pub(super) fn remove_mapping(&mut self, id: u32) {
        let m = self.mappings[id as usize];
        let bi = (hash2(&self.hasher, m.proto, m.inside) & self.mask) as usize;
        let bo = (hash2(&self.hasher, m.proto, m.eni) & self.mask) as usize;
        unlink(&mut self.map_in_buckets[bi], &mut self.mappings, id, Link::Inside);
        unlink(&mut self.map_out_buckets[bo], &mut self.mappings, id, Link::Outside);
        self.map_free.push(id);
    }

    /// The sessions of mapping `m`, newest first (at most `out.len()`);
    /// how many were written.
    pub fn mapping_sessions(&self, m: u32, out: &mut [u32]) -> usize {
        let mut id = self.mappings[m as usize].head;
        let mut n = 0;
        while id != NIL && n < out.len() {
            out[n] = id;
            n += 1;
            id = self.links[id as usize].map_next;
        }
        n
    }
}

/// Which hash chain a link belongs to.
#[derive(Copy, Clone)]
enum Link {
    Inside,
    Outside,
}

/// An entry that sits on two hash chains.
trait Chained {
    fn link(&mut self, l: Link) -> &mut u32;
    fn next(&self, l: Link) -> u32;
}

/// The first entry on the chain of `l` links from `head` that `hit`
/// accepts.
#[inline]
fn find_on_chain<T: Chained>(head: u32, slab: &[T], l: Link, hit: impl Fn(&T) -> bool) -> Option<u32> {
    let mut id = head;
    while id != NIL {
        let e = &slab[id as usize];
        if hit(e) {
            return Some(id);
        }
        id = e.next(l);
    }
    None
}

/// The mapping slab keeps its two chain links in `in_next` and `out_next`.
macro_rules! chained {
    ($($t:ty),*) => {$(
        impl Chained for $t {
            fn link(&mut self, l: Link) -> &mut u32 {
                match l {
                    Link::Inside => &mut self.in_next,
                    Link::Outside => &mut self.out_next,
                }
            }

            fn next(&self, l: Link) -> u32 {
                match l {
                    Link::Inside => self.in_next,
                    Link::Outside => self.out_next,
                }
            }
        }
    )*};
}

chained!(Mapping);

/// Removes `id` from the chain of `l` links that starts at `head`.
fn unlink<T: Chained>(head: &mut u32, slab: &mut [T], id: u32, l: Link) {
    let after = *slab[id as usize].link(l);
    if *head == id {
        *head = after;
        return;
    }
    let mut cur = *head;
    while cur != NIL {
        let next = slab[cur as usize].link(l);
        if *next == id {
            *next = after;
            return;
        }
        cur = *next;
    }
}
