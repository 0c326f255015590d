//! From an execution environment towards the VPC: the session found or
//! created (security groups, quotas, a port), the source rewritten, the
//! frame sent to its next hop, hairpinned or redirected to the worker that
//! owns its port.
//!
//! # A new flow's cost
//! A new flow looks up, once each: its environment and ENI (one lookup in
//! the bindings, which gives the environment's index: its quotas are at
//! that index, no lookup of their own), its mapping, the paired
//! address (which hands out the port and counts it live in the same
//! lookup: [`Engine::find_port`]), and hashes each key once (inside key, inside and ENI
//! endpoints, outside key), passing the hashes to the table's `*_hashed`
//! calls. The security group is checked from the protocol's compiled
//! list ([`crate::policy`]). Nothing is allocated: every bound
//! environment's quota entry is made when the bindings are set.

use super::fragment::set_ident;
use super::hold::{warm, Hold};
use super::rewrite::{finish_partial, rewrite, swap_macs, Side};
use super::{Action, Engine, Event};
use crate::arp;
use crate::bindings::Mac;
use crate::checksum;
use crate::config::Mapping;
use crate::counters::DropReason;
use crate::flow::{proto_index, Endpoint, FlowKey, ICMP, TCP};
use crate::session::{Session, SessionTable, NIL};
use crate::tcp::{self, Dir};
use crate::time::Instant;
use crate::wire::{self, get16, icmp, ip, put16, put_ip, Ipv4};
use crate::PortId;
use core::net::Ipv4Addr;

impl Engine {
    pub(super) fn outbound(&mut self, now: Instant, port: PortId, frame: &mut [u8], ip: Ipv4) -> Action {
        let Some(inside) = self.bindings.inside(port) else {
            return Action::Drop(DropReason::NotForUs);
        };
        let gateway = inside.gateway;
        if ip.dst == gateway {
            return self.local_echo(frame, ip);
        }
        if ip.ttl <= 1 {
            return self.icmp_error(frame, ip, icmp::TIME_EXCEEDED, 0, 0, gateway, DropReason::TtlExceeded);
        }
        if ip.frag_off() != 0 {
            return self.later_fragment(now, port, frame, ip);
        }
        let hairpin = self.is_eni(ip.dst);
        if ip.df && !hairpin && ip.wire_len() > usize::from(self.bindings.outside().mtu) {
            let mtu = u32::from(self.bindings.outside().mtu);
            return self.too_big(frame, ip, mtu, gateway);
        }
        let (l4, sport, dport, flags) = match self.flow_of_frame(frame, &ip, Dir::Out) {
            Ok(Some(f)) => f,
            Ok(None) => return self.icmp_error_out(now, port, frame, ip),
            Err(r) => return Action::Drop(r),
        };
        let key =
            FlowKey { proto: ip.proto, local: Endpoint::new(ip.src, sport), remote: Endpoint::new(ip.dst, dport) };
        let hash = self.key_hash(&key);
        let sid = match self.table.find_inside_hashed(&key, hash) {
            Some(sid) => {
                if self.table.get(sid).port != port {
                    return Action::Drop(DropReason::Spoofed);
                }
                let unanswered = {
                    let s = self.table.get(sid);
                    s.inbound_origin && s.no_out()
                };
                self.table.count_out(sid, ip.total());
                let s = self.table.get_mut(sid);
                s.last_seen = now;
                let mut before = None;
                if ip.proto == TCP {
                    let f = tcp::Flags::from_byte(flags);
                    let prev = s.tcp;
                    // A SYN on the 5-tuple of an ended connection is a new
                    // connection (the client reused its port): the session
                    // starts over with its mapping (RFC 6146 TRANS state).
                    let reopen = f.opens() && prev.closing();
                    let warm_before = warm(s);
                    let next = if reopen { tcp::State::initial(Dir::Out) } else { prev.next(Dir::Out, f) };
                    if next != prev {
                        s.tcp = next;
                        if reopen {
                            self.table.reopen(sid, now, ip.total());
                            self.counters.sessions_reopened.inc();
                        }
                        self.table.reschedule(sid);
                        before = Some(Hold::from_parts(unanswered, prev.closing(), warm_before));
                    }
                }
                if unanswered {
                    before = Some(Hold::Unanswered);
                }
                if let Some(b) = before {
                    self.rehold(sid, b);
                }
                sid
            }
            None => {
                let src_mac = wire::mac_at(frame, 6);
                match self.new_outbound(now, port, key, hash, flags, src_mac, ip.total()) {
                    Ok(sid) => sid,
                    Err(r) => return self.refuse(frame, ip, r, gateway),
                }
            }
        };
        let eni = self.table.get(sid).eni;
        rewrite(frame, &ip, l4, Side::Src, eni);
        if ip.mf && ip.proto != ICMP {
            // A fragmented datagram gets a fresh identification (RFC 7857 §10).
            let id = self.next_ident();
            set_ident(frame, &ip, id);
        }
        self.counters.outbound.count(ip.total());
        let foreign = hairpin && ip.proto != ICMP && !self.cfg.port_range.contains(&dport);
        let action = if foreign {
            // Another worker's mapping: it continues there, as a frame from
            // the VPC addressed to the ENI.
            self.counters.hairpinned.inc();
            let mac = self.bindings.outside().mac;
            wire::set_macs(frame, mac, mac);
            Action::Redirect { len: ip.end() }
        } else if hairpin {
            self.counters.hairpinned.inc();
            let ip2 = ip.with_src_ttl(eni.ip, ip.ttl - 1);
            self.inbound(now, frame, ip2, true)
        } else {
            self.send_outside(now, frame, ip.end(), eni.ip, ip.dst)
        };
        if ip.mf {
            self.remember_first_fragment(now, port, frame, &ip, action);
        }
        action
    }

    /// Creates the session for a new outbound flow. Short of a table slot,
    /// a mapping slot or a port, it recycles closing and unanswered
    /// sessions (oldest first); live ones are never touched (RFC 6888
    /// REQ-11d). `hash` is the key's [`crate::session::SessionTable::hash`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new_outbound(
        &mut self,
        now: Instant,
        port: PortId,
        key: FlowKey,
        hash: u64,
        flags: u8,
        src_mac: Mac,
        bytes: usize,
    ) -> Result<u32, DropReason> {
        // The bindings are read through `self` (no `Arc` clone per flow);
        // the ENI is kept as its index for the port search below.
        let b = &*self.bindings;
        let (vi, _, ei) = b.env_with_eni(key.local.ip).filter(|(_, e, _)| e.port == port).ok_or(DropReason::Spoofed)?;
        if key.proto == TCP && !tcp::Flags::from_byte(flags).opens() {
            return Err(DropReason::TcpNotSyn);
        }
        let eni = &b.enis()[ei];
        if eni.addrs.is_empty() {
            // Its function has no active ENI (being created, or reclaimed
            // while idle): the control plane wants to know.
            let _ = self.event(Event::NoEni { env: key.local.ip });
            return Err(DropReason::NoEni);
        }
        if !eni.egress.allows(key.proto, key.remote.ip, key.remote.port) {
            return Err(DropReason::PolicyDenied);
        }
        let pi = proto_index(key.proto);
        // The environment's quotas, by its index in the bindings.
        let st = *self.envs.at(vi);
        if st.sessions >= self.cfg.env_session_quota {
            return Err(DropReason::QuotaExceeded);
        }
        // The inside endpoint's mapping hash, for the lookup and the insert.
        let mhash = self.table.mapping_hash(key.proto, key.local);
        let existing = match self.cfg.mapping {
            Mapping::EndpointIndependent => self.table.find_mapping_inside_hashed(key.proto, key.local, mhash),
            Mapping::AddressAndPortDependent => None,
        };
        // A mapping held only by recyclable sessions becomes live again.
        let revived = existing.is_some_and(|m| self.table.mapping(m).live == 0);
        // Whether the address of a port taken here reached its high-water
        // mark ([`Taken::high`]); whether a session was recycled since.
        let mut high = false;
        let mut recycled = false;
        // The outside key's hash, for the insert.
        let outside_hash = |t: &SessionTable, eni: Endpoint| t.hash(&FlowKey { local: eni, ..key });
        let (mapping, eni_ep, fresh, ohash) = match existing {
            Some(m) => {
                let eni = self.table.mapping(m).eni;
                (m, eni, false, outside_hash(&self.table, eni))
            }
            None => {
                if st.ports[pi] >= self.cfg.env_port_quota {
                    return Err(DropReason::QuotaExceeded);
                }
                // Paired pooling (RFC 4787 REQ-2) while the environment
                // holds a live port: the same address for all its flows.
                let paired = st.addr.filter(|_| st.ports.iter().any(|&n| n > 0));
                // Counted as held live from here: every way out below
                // that does not create the flow gives it back.
                let ep = match self.find_port(now, ei, paired, pi, key) {
                    Ok(t) => {
                        high = t.high;
                        t.ep
                    }
                    Err(addr) => {
                        let _ = self.event(Event::Exhausted { addr, proto: key.proto });
                        return Err(DropReason::PortsExhausted);
                    }
                };
                let ohash = outside_hash(&self.table, ep);
                let m = match self.cfg.mapping {
                    Mapping::EndpointIndependent => loop {
                        let omhash = self.table.mapping_hash(key.proto, ep);
                        match self.table.insert_mapping_hashed(key.proto, key.local, ep, port, src_mac, (mhash, omhash))
                        {
                            Ok(m) => break m,
                            // Mappings are never more than sessions: a full
                            // mapping slab is a full table.
                            Err(_) if self.recycle_session(now, NIL) => recycled = true,
                            Err(_) => {
                                self.release_unused_port(ep, pi);
                                return Err(DropReason::TableFull);
                            }
                        }
                    },
                    Mapping::AddressAndPortDependent => NIL,
                };
                (m, ep, true, ohash)
            }
        };
        let mut s = Session::new(key.proto, key.local, key.remote, eni_ep, port, src_mac, now);
        s.tcp = tcp::State::initial(Dir::Out);
        s.count_first(true, bytes);
        let sid = loop {
            match self.table.insert_hashed(&s, mapping, hash, ohash) {
                Ok(sid) => break sid,
                Err(_) if self.recycle_session(now, mapping) => recycled = true,
                Err(_) => {
                    if fresh {
                        if mapping != NIL {
                            // The mapping has no session: drop it with its port.
                            self.table.drop_empty_mapping(mapping);
                        }
                        self.release_unused_port(eni_ep, pi);
                    }
                    return Err(DropReason::TableFull);
                }
            }
        };
        self.counters.sessions_created[pi].inc();
        // Again: recycling above may have changed its counts.
        let st = self.envs.at(vi);
        st.mac = src_mac;
        st.sessions += 1;
        if fresh || revived {
            st.ports[pi] += 1;
            st.addr = Some(eni_ep.ip);
        }
        if fresh {
            // Counted when taken; the mark is checked again (as after
            // counting) when it was reached or recycling moved counts.
            if high || recycled {
                self.check_high_water(eni_ep.ip, key.proto);
            }
        } else if revived {
            self.count_revived_port(eni_ep.ip, key.proto);
        }
        Ok(sid)
    }

    /// A new flow that could not be created: dropped, and for port
    /// exhaustion answered with ICMP 3/13 when configured (RFC 5508 REQ-8).
    pub(super) fn refuse(&mut self, frame: &mut [u8], ip: Ipv4, r: DropReason, gateway: Ipv4Addr) -> Action {
        let answer = self.cfg.icmp_on_exhaustion
            && matches!(r, DropReason::PortsExhausted | DropReason::QuotaExceeded | DropReason::TableFull);
        if answer {
            return self.icmp_error(frame, ip, icmp::UNREACHABLE, icmp::ADMIN_PROHIBITED, 0, gateway, r);
        }
        Action::Drop(r)
    }

    /// Sends a translated frame to its next hop on the VPC side.
    #[inline]
    pub(super) fn send_outside(
        &mut self,
        now: Instant,
        frame: &mut [u8],
        end: usize,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Action {
        let out = self.bindings.outside();
        let our_mac = out.mac;
        let Some(hop) = self.bindings.next_hop(dst) else {
            return Action::Drop(DropReason::NoRoute);
        };
        match self.arp.lookup(now, hop) {
            Some(mac) => {
                wire::set_macs(frame, mac, our_mac);
                Action::Forward { port: PortId::OUTSIDE, len: end }
            }
            None => {
                // A queued frame leaves later without its offload header:
                // finish a partial checksum now; a superframe cannot wait.
                if self.rx.gso_size != 0 {
                    return Action::Drop(DropReason::ArpUnresolved);
                }
                if self.rx.csum_partial {
                    finish_partial(&mut frame[..end]);
                }
                wire::set_macs(frame, wire::BROADCAST, our_mac);
                match self.arp.queue(now, PortId::OUTSIDE, hop, src, &frame[..end]) {
                    arp::Queued::Waiting => Action::Consumed,
                    arp::Queued::Full => Action::Drop(DropReason::ArpUnresolved),
                }
            }
        }
    }

    /// Answers an echo request to the gateway's inside address.
    pub(super) fn local_echo(&mut self, frame: &mut [u8], ip: Ipv4) -> Action {
        let l4 = ip.l4();
        if ip.proto != ICMP || ip.is_fragment() || ip.payload_len() < 8 || frame[l4] != icmp::ECHO_REQUEST {
            return Action::Drop(DropReason::Local);
        }
        if checksum::fold(checksum::sum(0, &frame[l4..ip.end()])) != 0xffff {
            return Action::Drop(DropReason::BadIcmpChecksum);
        }
        frame[l4] = icmp::ECHO_REPLY;
        let c = checksum::update16(get16(frame, l4 + 2), u16::from(icmp::ECHO_REQUEST) << 8, 0);
        put16(frame, l4 + 2, c);
        put_ip(frame, ip.off() + ip::SRC, ip.dst);
        put_ip(frame, ip.off() + ip::DST, ip.src);
        swap_macs(frame);
        Action::Reply { len: ip.end() }
    }
}
