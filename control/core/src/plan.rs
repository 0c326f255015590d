//! Compiling a validated [`Config`] into what the dataplane runs.
//!
//! * **Shared ENIs.** A function gets one shared ENI per subnet in its
//!   configuration; the ENI's identity is the [`EniKey`] (subnet, sorted set
//!   of security groups), so every function with the same subnet and the
//!   same whole set of groups shares it, as AWS Lambda does. ENIs are
//!   numbered 1, 2, ... in the order of their keys (subnet id, then group
//!   ids), so the same configuration always yields the same plan.
//! * **Addresses.** Each ENI gets one address from its subnet's [`Ipam`],
//!   lowest free first; the five AWS-reserved addresses, the outside router
//!   and the security groups' `members` are never handed out. Addresses from an earlier plan (`existing`)
//!   are kept for keys that still exist, so re-planning after an edit does
//!   not renumber ENIs' addresses; kept addresses that no longer fit their
//!   subnet are dropped and, if none is left, a new one is allocated. Keys
//!   that disappeared give their addresses back.
//! * **Egress policy.** An ENI's [`RuleSet`] is the union of the egress rules
//!   of its groups. A rule whose peer is `group = "sg-x"` allows, as in AWS,
//!   traffic to "the private addresses of the network interfaces associated
//!   with sg-x". The gateway knows two kinds of such interfaces: the shared
//!   ENIs it plans that carry sg-x, and the `members` listed under sg-x
//!   (other VPC resources). Each becomes one /32 rule with the rule's
//!   protocol and ports. A group with no known member compiles to nothing.
//! * **Ports.** Attachment `i` (file order, 0-based) is
//!   `PortId(i + 1)`, with MAC `02:68:70:01:HI:LO` where `HI:LO` is `i`. The
//!   outside port's MAC is the configured one or `02:68:70:00:00:01`; its
//!   on-link prefixes are the subnets' blocks (where the ENI addresses and
//!   their peers are reached by ARP); everything else goes to the router.

use core::net::Ipv4Addr;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dataplane::bindings::{BindingError, Bindings, Eni, Env, InsidePort, Mac, OutsidePort};
use dataplane::config::EngineConfig;
use dataplane::policy::{Cidr, Rule, RuleProto, RuleSet};
use dataplane::PortId;

use crate::config::{Config, ConfigError, OutsideKind, Protocol, SgRule};
use crate::ipam::Ipam;

/// The default MAC of the outside port.
pub const OUTSIDE_MAC: Mac = [0x02, 0x68, 0x70, 0x00, 0x00, 0x01];

/// The identity of a shared ENI.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EniKey {
    /// The subnet id.
    pub subnet: String,
    /// The security group ids, sorted and deduplicated.
    pub security_groups: Vec<String>,
    /// The environment that owns it, in per-environment mode (`None`:
    /// shared).
    pub owner: Option<Ipv4Addr>,
}

impl EniKey {
    /// A key; `security_groups` is sorted and deduplicated.
    pub fn new(subnet: impl Into<String>, security_groups: impl IntoIterator<Item = impl Into<String>>) -> EniKey {
        let set: BTreeSet<String> = security_groups.into_iter().map(Into::into).collect();
        EniKey { subnet: subnet.into(), security_groups: set.into_iter().collect(), owner: None }
    }
}

/// One planned shared ENI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniPlan {
    /// Its [`Eni::id`], 1-based.
    pub id: u32,
    /// Its identity.
    pub key: EniKey,
    /// Its addresses in the key's subnet.
    pub addrs: Vec<Ipv4Addr>,
    /// The functions using it, by name, sorted.
    pub functions: Vec<String>,
    /// Its compiled egress rules.
    pub egress: Arc<RuleSet>,
}

/// One planned inside attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentPlan {
    /// How its device is opened.
    pub kind: crate::config::AttachmentKind,
    /// Interface name.
    pub name: String,
    /// The vhost-user socket (kind `vhost-user` only).
    pub socket: Option<std::path::PathBuf>,
    /// Engine port.
    pub port: PortId,
    /// Our address on it.
    pub gateway: Ipv4Addr,
    /// MTU, bytes.
    pub mtu: u16,
    /// Our MAC on it.
    pub mac: Mac,
    /// `af-packet` only: on packet rings (else, or where the kernel
    /// refuses them, plain sockets).
    pub ring: bool,
    /// `af-packet` on rings: receive slots asked for (`None`: the default
    /// for the slot size, see [`crate::gateway`]).
    pub ring_slots: Option<usize>,
}

/// The planned outside port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutsidePlan {
    /// How it is opened.
    pub kind: OutsideKind,
    /// Interface name.
    pub name: String,
    /// MTU, bytes.
    pub mtu: u16,
    /// Our MAC on it.
    pub mac: Mac,
    /// Next hop for off-link destinations.
    pub router: Option<Ipv4Addr>,
    /// AF_PACKET: one socket per worker in a fanout group (else one reader
    /// thread).
    pub fanout: bool,
    /// AF_PACKET with a fanout group: each worker's socket on `TPACKET`
    /// rings (else plain sockets).
    pub ring: bool,
}

/// Control-plane timers and limits from `[gateway]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    /// Most ENIs.
    pub eni_quota: u32,
    /// Idle time after which a function's ENIs are reclaimed; `None` =
    /// never.
    pub idle_reclaim: Option<Duration>,
    /// Time a new ENI takes to become usable.
    pub provisioning_delay: Duration,
    /// Longest drain of an old ENI generation.
    pub drain_limit: Duration,
}

/// Everything the gateway runs from one configuration.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Engine settings.
    pub engine: EngineConfig,
    /// The validated snapshot handed to the workers.
    pub bindings: Bindings,
    /// The shared ENIs, by id.
    pub enis: Vec<EniPlan>,
    /// Inside attachments, in file order.
    pub attachments: Vec<AttachmentPlan>,
    /// The outside port.
    pub outside: OutsidePlan,
    /// Worker threads (0 in the file resolved to the available cores).
    pub workers: usize,
    /// TAP offloads on (the config's `offloads`, unless an attachment is
    /// `vhost-user`).
    pub offloads: bool,
    /// The workers' I/O path and busy-poll (`[gateway.io]`).
    pub io: dataplane_io::IoSettings,
    /// Runtime API socket.
    pub control_socket: PathBuf,
    /// Control-plane timers and limits.
    pub lifecycle: Lifecycle,
}

impl Plan {
    /// Each ENI key's addresses: pass it to the next [`plan`] to keep them.
    pub fn assignments(&self) -> BTreeMap<EniKey, Vec<Ipv4Addr>> {
        self.enis.iter().map(|e| (e.key.clone(), e.addrs.clone())).collect()
    }

    /// The ENI an environment address uses.
    pub fn eni_of(&self, env: Ipv4Addr) -> Option<&EniPlan> {
        let id = self.bindings.env(env)?.eni;
        self.enis.iter().find(|e| e.id == id)
    }
}

/// MAC of inside attachment `i` (0-based).
pub fn attachment_mac(i: usize) -> Mac {
    [0x02, 0x68, 0x70, 0x01, (i >> 8) as u8, i as u8]
}

fn rule_proto(p: Protocol) -> RuleProto {
    match p {
        Protocol::All => RuleProto::All,
        Protocol::Tcp => RuleProto::Tcp,
        Protocol::Udp => RuleProto::Udp,
        Protocol::Icmp => RuleProto::Icmp,
    }
}

fn compile_rule(r: &SgRule, dst: Cidr) -> Rule {
    let ports = r.ports.map_or(0..=65535, |p| p.range());
    Rule { proto: rule_proto(r.protocol), ports, dst }
}

/// Maps a [`Bindings::new`] error onto the configuration's field names.
fn binding_error(e: BindingError) -> ConfigError {
    let f = e.field;
    let field = if let Some(rest) = f.strip_prefix("inside[") {
        format!("attachments[{rest}")
    } else if let Some(rest) = f.strip_prefix("envs[") {
        format!("environments[{}", rest.replace("].ip", "].address"))
    } else if f.starts_with("outside.") {
        f
    } else {
        format!("plan.{f}")
    };
    ConfigError::new(field, e.reason)
}

/// One address allocator per subnet, in config order, with the addresses
/// that are not ours to hand out already taken: the VPC router and the
/// listed members of security groups (other VPC resources).
pub fn subnet_allocators(cfg: &Config) -> Vec<Ipam> {
    let mut ipams: Vec<Ipam> = cfg.subnets.iter().map(|s| Ipam::new(s.id.clone(), s.cidr)).collect();
    let taken =
        cfg.outside.router.into_iter().chain(cfg.security_groups.iter().flat_map(|g| g.members.iter().copied()));
    for a in taken {
        for p in ipams.iter_mut().filter(|p| p.is_usable(a)) {
            let _ = p.reserve(a);
        }
    }
    ipams
}

/// Compiles `cfg` (which must have passed [`Config::validate`]; it is
/// checked again) into a [`Plan`]. `existing` holds the addresses of an
/// earlier plan ([`Plan::assignments`]) to keep; pass an empty map at first
/// start.
///
/// Errors: `subnets[i]` with `SubnetOutOfIPAddresses`, `gateway.eni_quota`
/// with `EniLimitExceeded`, or a validation error.
pub fn plan(cfg: &Config, existing: &BTreeMap<EniKey, Vec<Ipv4Addr>>) -> Result<Plan, ConfigError> {
    cfg.validate()?;
    let engine = cfg.engine_config();

    // The keys, with the functions that use each.
    let mut keys: BTreeMap<EniKey, BTreeSet<String>> = BTreeMap::new();
    for f in &cfg.functions {
        for s in &f.subnets {
            keys.entry(EniKey::new(s, &f.security_groups)).or_default().insert(f.name.clone());
        }
    }
    let quota = cfg.gateway.eni_quota as usize;
    if keys.len() > quota {
        return Err(ConfigError::new(
            "gateway.eni_quota",
            format!("EniLimitExceeded: the functions need {} shared ENIs, the quota is {quota}", keys.len()),
        ));
    }

    let subnet_index: BTreeMap<&str, usize> = cfg.subnets.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    let mut ipams = subnet_allocators(cfg);
    // Kept addresses first, so that new keys cannot take them.
    let mut addrs: BTreeMap<&EniKey, Vec<Ipv4Addr>> = BTreeMap::new();
    for key in keys.keys() {
        let pool = &mut ipams[subnet_index[key.subnet.as_str()]];
        let kept = existing.get(key).map(|v| v.iter().copied().filter(|&a| pool.reserve(a).is_ok()).collect());
        addrs.insert(key, kept.unwrap_or_default());
    }
    for (key, list) in addrs.iter_mut() {
        if list.is_empty() {
            let i = subnet_index[key.subnet.as_str()];
            let a = ipams[i].allocate().map_err(|e| ConfigError::new(format!("subnets[{i}]"), e.to_string()))?;
            list.push(a);
        }
    }

    // Who carries each group: our ENIs' addresses and the listed members.
    let mut carriers: BTreeMap<&str, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for g in &cfg.security_groups {
        carriers.entry(g.id.as_str()).or_default().extend(g.members.iter().copied());
    }
    for (key, list) in &addrs {
        for g in &key.security_groups {
            carriers.entry(g.as_str()).or_default().extend(list.iter().copied());
        }
    }
    let groups: BTreeMap<&str, &crate::config::SecurityGroup> =
        cfg.security_groups.iter().map(|g| (g.id.as_str(), g)).collect();
    let compile = |key: &EniKey| -> RuleSet {
        let mut rules = Vec::new();
        for g in &key.security_groups {
            match &groups[g.as_str()].egress {
                None => rules.push(Rule::allow_all()),
                Some(list) => {
                    for r in list {
                        match (&r.destination, &r.group) {
                            (Some(dst), _) => rules.push(compile_rule(r, *dst)),
                            (None, Some(peer)) => {
                                for &a in carriers.get(peer.as_str()).into_iter().flatten() {
                                    let dst = Cidr::new(a, 32).expect("/32 is a valid prefix");
                                    rules.push(compile_rule(r, dst));
                                }
                            }
                            (None, None) => {}
                        }
                    }
                }
            }
        }
        RuleSet::new(rules)
    };

    let mut enis = Vec::with_capacity(keys.len());
    for (i, (key, functions)) in keys.iter().enumerate() {
        enis.push(EniPlan {
            id: i as u32 + 1,
            key: key.clone(),
            addrs: addrs[key].clone(),
            functions: functions.iter().cloned().collect(),
            egress: Arc::new(compile(key)),
        });
    }
    let eni_by_key: BTreeMap<&EniKey, u32> = enis.iter().map(|e| (&e.key, e.id)).collect();

    let attachments: Vec<AttachmentPlan> = cfg
        .attachments
        .iter()
        .enumerate()
        .map(|(i, a)| AttachmentPlan {
            kind: a.kind,
            name: a.name.clone(),
            socket: a.socket.clone(),
            port: PortId(i as u16 + 1),
            gateway: a.gateway,
            mtu: a.mtu as u16,
            mac: attachment_mac(i),
            ring: a.ring.unwrap_or(true),
            ring_slots: a.ring_slots.map(|n| n as usize),
        })
        .collect();
    let port_of: BTreeMap<&str, PortId> = attachments.iter().map(|a| (a.name.as_str(), a.port)).collect();
    let functions: BTreeMap<&str, &crate::config::Function> =
        cfg.functions.iter().map(|f| (f.name.as_str(), f)).collect();
    let envs: Vec<Env> = cfg
        .environments
        .iter()
        .map(|e| {
            let f = functions[e.function.as_str()];
            let subnet = e.subnet.as_deref().unwrap_or(&f.subnets[0]);
            let key = EniKey::new(subnet, &f.security_groups);
            Env { ip: e.address, port: port_of[e.attachment.as_str()], eni: eni_by_key[&key] }
        })
        .collect();

    let outside = OutsidePlan {
        kind: cfg.outside.kind,
        name: cfg.outside.name.clone(),
        mtu: cfg.outside.mtu as u16,
        mac: cfg.outside.mac.unwrap_or(OUTSIDE_MAC),
        router: cfg.outside.router,
        fanout: cfg.outside.fanout.unwrap_or(true),
        ring: cfg.outside.ring.unwrap_or(true),
    };
    let bindings = Bindings::new(
        OutsidePort {
            mac: outside.mac,
            on_link: cfg.subnets.iter().map(|s| s.cidr).collect(),
            router: outside.router,
            mtu: outside.mtu,
        },
        attachments.iter().map(|a| InsidePort { id: a.port, mac: a.mac, gateway: a.gateway, mtu: a.mtu }).collect(),
        enis.iter().map(|e| Eni { id: e.id, addrs: e.addrs.clone(), egress: e.egress.clone() }).collect(),
        envs,
    )
    .map_err(binding_error)?;

    let g = &cfg.gateway;
    let workers = match g.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()).min(crate::config::MAX_WORKERS),
        n => n,
    };
    Ok(Plan {
        engine,
        bindings,
        enis,
        attachments,
        outside,
        workers,
        // A vhost-user guest takes no offloads: no superframe may reach it.
        offloads: g.offloads && !cfg.attachments.iter().any(|a| a.kind == crate::config::AttachmentKind::VhostUser),
        io: cfg.io_settings(),
        control_socket: g.control_socket.clone(),
        lifecycle: Lifecycle {
            eni_quota: g.eni_quota,
            idle_reclaim: (g.idle_reclaim_secs > 0).then(|| Duration::from_secs(g.idle_reclaim_secs)),
            provisioning_delay: Duration::from_millis(g.provisioning_delay_ms),
            drain_limit: Duration::from_secs(g.drain_limit_secs),
        },
    })
}
