//! From the VPC towards an execution environment: the session found (or
//! admitted to an endpoint-independent mapping, as the filtering behaviour
//! allows), the destination rewritten, the frame sent to the environment's
//! attachment.

use super::hold::Hold;
use super::rewrite::rewrite_inbound;
use super::{Action, Engine};
use crate::config::{Filtering, Mapping};
use crate::counters::DropReason;
use crate::flow::{proto_index, Endpoint, FlowKey, ICMP, TCP};
use crate::session::Session;
use crate::tcp::{self, Dir};
use crate::time::Instant;
use crate::wire::{self, icmp, Ipv4};
use crate::PortId;

impl Engine {
    /// A frame from the VPC (or a hairpinned one, already translated on its
    /// way out and with its TTL already decremented).
    pub(super) fn inbound(&mut self, now: Instant, frame: &mut [u8], ip: Ipv4, hairpin: bool) -> Action {
        if !self.is_eni(ip.dst) {
            return Action::Drop(DropReason::NotForUs);
        }
        if !hairpin && ip.ttl <= 1 {
            return self.icmp_error(frame, ip, icmp::TIME_EXCEEDED, 0, 0, ip.dst, DropReason::TtlExceeded);
        }
        if ip.frag_off() != 0 {
            return self.later_fragment(now, PortId::OUTSIDE, frame, ip);
        }
        let (l4, sport, dport, flags) = match self.flow_of_frame(frame, &ip, Dir::In) {
            Ok(Some(f)) => f,
            Ok(None) => return self.icmp_error_in(now, frame, ip, hairpin),
            Err(r) => return Action::Drop(r),
        };
        let key =
            FlowKey { proto: ip.proto, local: Endpoint::new(ip.dst, dport), remote: Endpoint::new(ip.src, sport) };
        let sid = match self.table.find_outside_hashed(&key, self.key_hash(&key)) {
            Some(sid) => {
                self.table.count_in(sid, ip.total());
                let s = self.table.get_mut(sid);
                if ip.proto == TCP {
                    // TCP is refreshed by both directions; UDP and ICMP only
                    // by outbound traffic (RFC 4787 REQ-6, REQ-6a not taken).
                    s.last_seen = now;
                    let next = s.tcp.next(Dir::In, tcp::Flags::from_byte(flags));
                    if next != s.tcp {
                        let before = Hold::of(s);
                        if next == tcp::State::FinIn {
                            s.remote_closed_first = true;
                        }
                        s.tcp = next;
                        self.table.reschedule(sid);
                        self.rehold(sid, before);
                    }
                }
                sid
            }
            None => match self.new_inbound(now, key, flags, ip.total()) {
                Ok(sid) => sid,
                Err(r) => return Action::Drop(r),
            },
        };
        // Only the session's hot fields: the rest is another cache line.
        let s = self.table.get(sid);
        let (s_port, s_inside, s_env_mac) = (s.port, s.inside, s.env_mac);
        let Some(inside) = self.bindings.inside(s_port) else {
            return Action::Drop(DropReason::NoRoute);
        };
        let (mtu, port_mac) = (usize::from(inside.mtu), inside.mac);
        if ip.df && ip.wire_len() > mtu {
            if hairpin {
                return self.hairpin_too_big(now, frame, ip, mtu as u32);
            }
            // Quote the packet as it arrived: undo nothing, it is untouched.
            return self.too_big(frame, ip, mtu as u32, ip.dst);
        }
        rewrite_inbound(frame, &ip, l4, s_inside, !hairpin);
        wire::set_macs(frame, s_env_mac, port_mac);
        self.counters.inbound.count(ip.total());
        let action = Action::Forward { port: s_port, len: ip.end() };
        if ip.mf && !hairpin {
            self.remember_first_fragment(now, PortId::OUTSIDE, frame, &ip, action);
        }
        action
    }

    /// An inbound frame with no session: admitted only to an existing
    /// endpoint-independent mapping, as the filtering behaviour allows.
    pub(super) fn new_inbound(
        &mut self,
        now: Instant,
        key: FlowKey,
        flags: u8,
        bytes: usize,
    ) -> Result<u32, DropReason> {
        if self.cfg.mapping != Mapping::EndpointIndependent || key.proto == ICMP {
            return Err(DropReason::NoSession);
        }
        let m = self.table.find_mapping_outside(key.proto, key.local).ok_or(DropReason::NoSession)?;
        let allowed = match self.cfg.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => self.table.mapping_has_remote(m, key.remote, false),
            Filtering::AddressAndPortDependent => false,
        };
        if !allowed {
            return Err(DropReason::Filtered);
        }
        if key.proto == TCP && !tcp::Flags::from_byte(flags).opens() {
            return Err(DropReason::Filtered);
        }
        let map = *self.table.mapping(m);
        let st = self.envs.entry(&self.bindings, map.inside.ip);
        // Its own budget: never the environment's quotas, and recyclable by
        // any new outbound flow until the environment answers.
        if st.unanswered >= self.cfg.env_inbound_quota {
            return Err(DropReason::InboundQuota);
        }
        let mut s = Session::new(key.proto, map.inside, key.remote, map.eni, map.port, map.env_mac, now);
        s.inbound_origin = true;
        s.tcp = tcp::State::initial(Dir::In);
        s.count_first(false, bytes);
        let sid = self.table.insert(s, m).map_err(|_| DropReason::TableFull)?;
        self.counters.sessions_created[proto_index(key.proto)].inc();
        self.envs.entry(&self.bindings, map.inside.ip).unanswered += 1;
        // Inserted as live for the instant: taking it off again leaves the
        // mapping's live count as it was.
        let list = self.addrs.get(&map.eni.ip).map_or(crate::session::LISTS as u16 - 1, |a| a.list);
        self.table.set_recyclable(sid, Some(list));
        Ok(sid)
    }
}
