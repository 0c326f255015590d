//! What the engine forwards between: its ports, the shared ENIs with their
//! addresses and security groups, and the execution environments bound to
//! them.
//!
//! The control plane builds a [`Bindings`] snapshot, validated by
//! [`Bindings::new`], and hands it to every worker
//! ([`crate::engine::Engine::set_bindings`]). Replacing it is atomic for the
//! packet path: a frame sees either the old or the new snapshot. New flows
//! use the snapshot in force when they start; established sessions carry
//! everything they need (their ENI endpoint, attachment and MAC) and keep
//! working after their ENI or rules change, until they close or time out.

use crate::policy::{Cidr, RuleSet};
use crate::PortId;
use core::net::Ipv4Addr;
use std::collections::HashMap;
use std::sync::Arc;

/// A MAC address.
pub type Mac = [u8; 6];

/// An inside attachment: a TAP carrying one or more environments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InsidePort {
    /// Its port number (never [`PortId::OUTSIDE`]).
    pub id: PortId,
    /// The gateway's MAC on this attachment.
    pub mac: Mac,
    /// The gateway's address on this attachment: the environments' default
    /// router. ARP for it is answered here; it is the source of ICMP errors
    /// the gateway sends to environments.
    pub gateway: Ipv4Addr,
    /// Largest IP datagram towards the environments, bytes.
    pub mtu: u16,
}

/// The VPC-side port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutsidePort {
    /// The gateway's MAC on the VPC side.
    pub mac: Mac,
    /// Prefixes reached directly (their hosts are ARPed for).
    pub on_link: Vec<Cidr>,
    /// The VPC router for everything else, if any.
    pub router: Option<Ipv4Addr>,
    /// Largest IP datagram towards the VPC, bytes.
    pub mtu: u16,
}

/// A shared ENI: one or more addresses in a subnet and the compiled egress
/// rules of its security groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eni {
    /// The control plane's identifier.
    pub id: u32,
    /// Its addresses. New mappings prefer the first one with capacity left;
    /// an environment keeps using one address while it can ("paired").
    pub addrs: Vec<Ipv4Addr>,
    /// Egress security-group rules for new flows.
    pub egress: Arc<RuleSet>,
}

/// An execution environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    /// Its address.
    pub ip: Ipv4Addr,
    /// The attachment it sits behind.
    pub port: PortId,
    /// The [`Eni::id`] its function uses.
    pub eni: u32,
}

/// Why a snapshot was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct BindingError {
    /// The offending field.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// A validated, indexed snapshot of ports, ENIs and environments.
#[derive(Clone, Debug)]
pub struct Bindings {
    outside: OutsidePort,
    inside: Vec<InsidePort>,
    enis: Vec<Eni>,
    envs: Vec<Env>,
    /// Index into `inside` by port number (dense: port numbers are small).
    inside_by_port: Vec<Option<u16>>,
    eni_by_id: HashMap<u32, usize, Hasher>,
    /// Index into `envs` and into `enis` (its function's ENI) by address:
    /// a new flow finds both with one lookup.
    env_by_ip: HashMap<Ipv4Addr, (u32, u32), Hasher>,
}

/// The indexes' hasher: seeded per process, cheap for small keys (a new
/// flow looks an environment up by address).
type Hasher = foldhash::fast::RandomState;

fn fail<T>(field: String, reason: impl Into<String>) -> Result<T, BindingError> {
    Err(BindingError { field, reason: reason.into() })
}

impl Bindings {
    /// Validates and indexes a snapshot.
    pub fn new(
        outside: OutsidePort,
        inside: Vec<InsidePort>,
        enis: Vec<Eni>,
        envs: Vec<Env>,
    ) -> Result<Bindings, BindingError> {
        if outside.mtu < 68 {
            return fail("outside.mtu".into(), "must be at least 68 bytes");
        }
        let mut inside_by_port: Vec<Option<u16>> = Vec::new();
        for (i, p) in inside.iter().enumerate() {
            if !p.id.is_inside() {
                return fail(format!("inside[{i}].id"), "port 0 is the outside port");
            }
            if p.mtu < 68 {
                return fail(format!("inside[{i}].mtu"), "must be at least 68 bytes");
            }
            let slot = usize::from(p.id.0);
            if inside_by_port.len() <= slot {
                inside_by_port.resize(slot + 1, None);
            }
            if inside_by_port[slot].replace(i as u16).is_some() {
                return fail(format!("inside[{i}].id"), format!("port {} listed twice", p.id.0));
            }
        }
        let mut eni_by_id = HashMap::default();
        let mut addr_owner = HashMap::new();
        for (i, e) in enis.iter().enumerate() {
            if eni_by_id.insert(e.id, i).is_some() {
                return fail(format!("enis[{i}].id"), format!("ENI {} listed twice", e.id));
            }
            for (j, a) in e.addrs.iter().enumerate() {
                if let Some(other) = addr_owner.insert(*a, e.id) {
                    return fail(format!("enis[{i}].addrs[{j}]"), format!("{a} already belongs to ENI {other}"));
                }
            }
        }
        let mut env_by_ip = HashMap::default();
        for (i, v) in envs.iter().enumerate() {
            if inside_by_port.get(usize::from(v.port.0)).copied().flatten().is_none() {
                return fail(format!("envs[{i}].port"), format!("no inside port {}", v.port.0));
            }
            let Some(&eni) = eni_by_id.get(&v.eni) else {
                return fail(format!("envs[{i}].eni"), format!("no ENI {}", v.eni));
            };
            if addr_owner.contains_key(&v.ip) {
                return fail(format!("envs[{i}].ip"), format!("{} is an ENI address", v.ip));
            }
            if env_by_ip.insert(v.ip, (i as u32, eni as u32)).is_some() {
                return fail(format!("envs[{i}].ip"), format!("{} is used by two environments", v.ip));
            }
        }
        Ok(Bindings { outside, inside, enis, envs, inside_by_port, eni_by_id, env_by_ip })
    }

    /// The VPC-side port.
    pub fn outside(&self) -> &OutsidePort {
        &self.outside
    }

    /// An inside attachment.
    #[inline]
    pub fn inside(&self, port: PortId) -> Option<&InsidePort> {
        self.inside.get(usize::from((*self.inside_by_port.get(usize::from(port.0))?)?))
    }

    /// Every inside attachment.
    pub fn inside_ports(&self) -> &[InsidePort] {
        &self.inside
    }

    /// An environment by address.
    #[inline]
    pub fn env(&self, ip: Ipv4Addr) -> Option<&Env> {
        self.envs.get(self.env_by_ip.get(&ip)?.0 as usize)
    }

    /// An environment by address with its index in [`Bindings::envs`] and
    /// the index in [`Bindings::enis`] of its function's ENI
    /// ([`Env::eni`]), in one lookup: `(env index, env, ENI index)`.
    #[inline]
    pub fn env_with_eni(&self, ip: Ipv4Addr) -> Option<(usize, &Env, usize)> {
        let &(env, eni) = self.env_by_ip.get(&ip)?;
        Some((env as usize, self.envs.get(env as usize)?, eni as usize))
    }

    /// An environment's index in [`Bindings::envs`], by address.
    #[inline]
    pub fn env_index(&self, ip: Ipv4Addr) -> Option<usize> {
        self.env_by_ip.get(&ip).map(|&(env, _)| env as usize)
    }

    /// Every environment.
    pub fn envs(&self) -> &[Env] {
        &self.envs
    }

    /// An ENI by id.
    #[inline]
    pub fn eni(&self, id: u32) -> Option<&Eni> {
        self.enis.get(*self.eni_by_id.get(&id)?)
    }

    /// Every ENI.
    pub fn enis(&self) -> &[Eni] {
        &self.enis
    }

    /// The next hop towards `dst` on the VPC side, if it is routable.
    #[inline]
    pub fn next_hop(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        if self.outside.on_link.iter().any(|c| c.contains(dst)) {
            Some(dst)
        } else {
            self.outside.router
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outside() -> OutsidePort {
        OutsidePort {
            mac: [2, 0, 0, 0, 0, 1],
            on_link: vec!["10.0.0.0/24".parse().unwrap()],
            router: Some("10.0.0.1".parse().unwrap()),
            mtu: 1500,
        }
    }

    fn inside(id: u16) -> InsidePort {
        InsidePort {
            id: PortId(id),
            mac: [2, 0, 0, 0, 1, id as u8],
            gateway: "169.254.0.1".parse().unwrap(),
            mtu: 1500,
        }
    }

    fn eni(id: u32, a: &str) -> Eni {
        Eni { id, addrs: vec![a.parse().unwrap()], egress: Arc::new(RuleSet::allow_all()) }
    }

    fn env(ip: &str, port: u16, eni: u32) -> Env {
        Env { ip: ip.parse().unwrap(), port: PortId(port), eni }
    }

    #[test]
    fn valid_snapshot_indexes_everything() {
        let b = Bindings::new(outside(), vec![inside(1)], vec![eni(7, "10.0.0.10")], vec![env("172.16.0.2", 1, 7)])
            .unwrap();
        assert_eq!(b.env("172.16.0.2".parse().unwrap()).unwrap().eni, 7);
        assert_eq!(b.eni(7).unwrap().addrs.len(), 1);
        let (i, v, e) = b.env_with_eni("172.16.0.2".parse().unwrap()).unwrap();
        assert_eq!((i, v.port, b.enis()[e].id), (0, PortId(1), 7));
        assert_eq!(b.env_index("172.16.0.2".parse().unwrap()), Some(0));
        assert_eq!(b.env_index("172.16.0.3".parse().unwrap()), None);
        assert!(b.env_with_eni("172.16.0.3".parse().unwrap()).is_none());
        assert_eq!(b.next_hop("10.0.0.5".parse().unwrap()), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(b.next_hop("10.1.0.5".parse().unwrap()), Some("10.0.0.1".parse().unwrap()));
    }

    /// The one-lookup index gives each environment its own function's ENI,
    /// whatever the order of ENIs and environments in the snapshot.
    #[test]
    fn each_environment_finds_its_eni_in_one_lookup() {
        let b = Bindings::new(
            outside(),
            vec![inside(1), inside(2)],
            vec![eni(9, "10.0.0.19"), eni(7, "10.0.0.17"), eni(8, "10.0.0.18")],
            vec![env("172.16.0.2", 1, 7), env("172.16.0.3", 2, 8), env("172.16.0.4", 1, 9), env("172.16.0.5", 2, 7)],
        )
        .unwrap();
        for (i, v) in b.envs().iter().enumerate() {
            let (j, found, e) = b.env_with_eni(v.ip).unwrap();
            assert_eq!((j, found), (i, v));
            assert_eq!(b.env_index(v.ip), Some(i));
            assert_eq!(b.enis()[e].id, v.eni, "{}", v.ip);
            assert_eq!(&b.enis()[e], b.eni(v.eni).unwrap());
        }
        assert!(b.env_with_eni("172.16.0.9".parse().unwrap()).is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let e = Bindings::new(outside(), vec![inside(1)], vec![eni(7, "10.0.0.10")], vec![env("172.16.0.2", 2, 7)])
            .unwrap_err();
        assert_eq!(e.to_string(), "envs[0].port: no inside port 2");
        let e = Bindings::new(
            outside(),
            vec![inside(1)],
            vec![eni(7, "10.0.0.10")],
            vec![env("172.16.0.2", 1, 7), env("172.16.0.2", 1, 7)],
        )
        .unwrap_err();
        assert_eq!(e.field, "envs[1].ip");
        let e = Bindings::new(outside(), vec![inside(1)], vec![eni(7, "10.0.0.10"), eni(8, "10.0.0.10")], vec![])
            .unwrap_err();
        assert_eq!(e.to_string(), "enis[1].addrs[0]: 10.0.0.10 already belongs to ENI 7");
        let e = Bindings::new(outside(), vec![inside(0)], vec![], vec![]).unwrap_err();
        assert_eq!(e.field, "inside[0].id");
        let e = Bindings::new(outside(), vec![inside(1)], vec![eni(7, "10.0.0.10")], vec![env("172.16.0.2", 1, 9)])
            .unwrap_err();
        assert_eq!(e.field, "envs[0].eni");
    }
}
