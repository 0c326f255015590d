//! ARP on the engine's ports: requests answered, environments' MACs
//! learned, the VPC side's resolver fed, and the RFC 5227 probes of new ENI
//! addresses.

use super::{Action, Engine, TX_FRAME, TX_QUEUE};
use crate::arp;
use crate::bindings::Mac;
use crate::counters::DropReason;
use crate::time::Instant;
use crate::PortId;
use core::net::Ipv4Addr;

impl Engine {
    pub(super) fn on_arp(&mut self, now: Instant, port: PortId, our_mac: Mac, frame: &mut [u8], len: usize) -> Action {
        let Some(msg) = arp::parse(&frame[..len]) else {
            return Action::Drop(DropReason::BadArp);
        };
        let ours = if port.is_inside() {
            // Learn the environment's MAC, if the sender is one of ours here.
            if let Some((i, env, _)) = self.bindings.env_with_eni(msg.sender_ip) {
                if env.port == port {
                    self.envs.at(i).mac = msg.sender_mac;
                }
            }
            self.bindings.inside(port).is_some_and(|p| p.gateway == msg.target_ip)
        } else {
            // Someone using an address we probe, or probing it too (a
            // probe from another MAC; ours come back on an AF_PACKET link).
            let our = msg.sender_mac == our_mac;
            for (a, claimed) in &mut self.probes {
                if !our && (msg.sender_ip == *a || (msg.sender_ip.is_unspecified() && msg.target_ip == *a)) {
                    *claimed = true;
                }
            }
            let ours = self.is_eni(msg.target_ip);
            self.arp.learn(now, msg.sender_ip, msg.sender_mac, ours);
            ours
        };
        if ours && msg.operation == arp::ArpOp::Request {
            self.counters.arp_replies.inc();
            let n = arp::write_reply(frame, &msg, our_mac);
            return Action::Reply { len: n };
        }
        if ours {
            Action::Consumed
        } else {
            Action::Drop(DropReason::Local)
        }
    }

    /// Sends an ARP probe for `addr` on the outside port (RFC 5227 §2.1.1:
    /// sender address 0.0.0.0) and watches the link for anyone claiming it:
    /// an ARP from `addr`, or another host's probe for it. Call again to
    /// send the next probe; [`Engine::probe_result`] ends the watch.
    pub fn probe(&mut self, addr: Ipv4Addr) {
        if !self.probes.iter().any(|(a, _)| *a == addr) {
            if self.probes.len() >= 64 {
                self.probes.remove(0);
            }
            self.probes.push((addr, false));
        }
        let mac = self.bindings.outside().mac;
        if self.queue_outside(|f| arp::write_probe(f, mac, addr)) {
            self.counters.arp_requests.inc();
        }
    }

    /// Ends the watch on `addr`: whether anyone claimed it (None if it was
    /// not being probed).
    pub fn probe_result(&mut self, addr: Ipv4Addr) -> Option<bool> {
        let i = self.probes.iter().position(|(a, _)| *a == addr)?;
        Some(self.probes.remove(i).1)
    }

    /// Queues a frame the engine makes for the outside port (an ARP
    /// announcement, request or probe) if the queue has room: `write` fills
    /// the buffer and returns the frame's length (0: no frame). Whether it
    /// was queued.
    pub(super) fn queue_outside(&mut self, write: impl FnOnce(&mut [u8]) -> usize) -> bool {
        let mut f = [0u8; TX_FRAME];
        let n = write(&mut f);
        if n > 0 && self.tx.len() < TX_QUEUE {
            self.tx.push_back((PortId::OUTSIDE, f, n));
            return true;
        }
        false
    }
}
