//! The gateway's configuration: one typed, validated TOML schema, read by
//! `hyperplane run --config` and `hyperplane apply`.
//!
//! [`parse`] turns a document into a [`Config`] and validates it; a document
//! that does not parse, does not match the schema or fails
//! [`Config::validate`] is returned as a [`ConfigError`] naming the field
//! (`subnets[1].cidr`, `functions[0].security_groups`, ...), the reason and,
//! when the error can be placed in the text, its line. Both functions are
//! pure: nothing is created, opened or changed. [`crate::plan::plan`] compiles
//! a valid `Config` into what the dataplane runs.
//!
//! Every table rejects keys it does not know (`deny_unknown_fields`), so a
//! misspelt key is an error rather than a silently ignored setting.
//!
//! ```toml
//! [gateway]
//! profile = "rfc"
//!
//! [outside]
//! name = "hp-out"
//! router = "10.0.0.1"
//!
//! [vpc]
//! cidr = "10.0.0.0/16"
//!
//! [[subnets]]
//! id = "subnet-a"
//! cidr = "10.0.0.0/24"
//!
//! [[security_groups]]
//! id = "sg-web"
//! egress = [{ protocol = "tcp", ports = "443", destination = "0.0.0.0/0" }]
//!
//! [[functions]]
//! name = "orders"
//! subnets = ["subnet-a"]
//! security_groups = ["sg-web"]
//!
//! [[attachments]]
//! name = "hp-e0"
//! gateway = "172.16.0.1"
//!
//! [[environments]]
//! function = "orders"
//! address = "172.16.0.2"
//! attachment = "hp-e0"
//! ```
//!
//! The example `control/core/examples/gateway.toml` shows and explains every key.

use core::fmt;
use core::net::Ipv4Addr;
use core::ops::RangeInclusive;
use core::str::FromStr;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use dataplane::config::{EngineConfig, Filtering, Mapping};
use dataplane::policy::Cidr;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Most subnets one function may use (AWS Lambda).
pub const MAX_FUNCTION_SUBNETS: usize = 16;
/// Most security groups one function may carry (AWS Lambda).
pub const MAX_FUNCTION_SECURITY_GROUPS: usize = 5;
/// Most rules per direction in one security group (AWS default quota).
pub const MAX_RULES_PER_DIRECTION: usize = 60;
/// Most worker threads.
pub const MAX_WORKERS: usize = 256;
/// Smallest MTU accepted (RFC 791: every host handles 68-byte datagrams).
pub const MIN_MTU: u32 = 68;
/// Largest MTU accepted (Linux's limit for a TAP device).
pub const MAX_MTU: u32 = 65520;
/// Longest prefix accepted for the VPC and its subnets (AWS's smallest
/// subnet is a /28: 16 addresses, 11 usable).
pub const MAX_PREFIX_LEN: u8 = 28;
/// Longest interface name (Linux `IFNAMSIZ` less the terminating NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// Longest control socket path (`sun_path` less the terminating NUL).
pub const MAX_SOCKET_PATH_LEN: usize = 107;
/// The gateway's session table when the config does not size it: a million
/// sessions (120 B each plus 8 B of index) and as many mapping slots (44 B
/// plus 8 B): about 180 MB, split between the workers. With ended
/// connections recycled, the table bounds live flows and the UDP mapping
/// rate (sessions / UDP timeout), not TCP churn.
pub const DEFAULT_MAX_SESSIONS: usize = 1 << 20;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A configuration that is not acceptable: which field, why, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The field as a path: `gateway.timeouts.udp`, `subnets[1].cidr`,
    /// `security_groups[0].egress[2].group`. `toml` for a document that is
    /// not TOML at all.
    pub field: String,
    /// Why it is rejected.
    pub reason: String,
    /// The 1-based line of the offending text, when known (always for
    /// malformed TOML; for other errors found by [`parse`] when the field is
    /// present in the text).
    pub line: Option<usize>,
}

impl ConfigError {
    /// An error without a line.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError { field: field.into(), reason: reason.into(), line: None }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

fn fail<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::new(field, reason))
}

// ---------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------

/// A MAC address, written `02:68:70:00:00:01`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl FromStr for MacAddr {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<MacAddr, &'static str> {
        const WHY: &str = "expected a MAC address such as 02:68:70:00:00:01";
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or(WHY)?;
            if p.len() != 2 {
                return Err(WHY);
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| WHY)?;
        }
        if parts.next().is_some() {
            return Err(WHY);
        }
        if out[0] & 1 != 0 {
            return Err("must be a unicast MAC address (the low bit of the first octet clear)");
        }
        if out == [0; 6] {
            return Err("must not be 00:00:00:00:00:00");
        }
        Ok(MacAddr(out))
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// An inclusive range of TCP/UDP ports, written `"1024-65535"`, `"443"` or
/// `443`. Both ends lie in 1..=65535 and `lo <= hi`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port (inclusive).
    pub hi: u16,
}

impl PortRange {
    /// Every port, 1-65535.
    pub const ALL: PortRange = PortRange { lo: 1, hi: 65535 };

    /// As a `RangeInclusive`.
    pub fn range(self) -> RangeInclusive<u16> {
        self.lo..=self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<PortRange, String> {
        let why = || format!("expected a port or a port range such as \"1024-65535\", got {s:?}");
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let lo: u32 = a.trim().parse().map_err(|_| why())?;
        let hi: u32 = b.trim().parse().map_err(|_| why())?;
        if lo == 0 {
            return Err("ports start at 1".into());
        }
        if lo > 65535 || hi > 65535 {
            return Err("ports end at 65535".into());
        }
        if lo > hi {
            return Err(format!("{lo} is above {hi}: the range must run low-high"));
        }
        Ok(PortRange { lo: lo as u16, hi: hi as u16 })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PortRange, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port or a port range such as \"1024-65535\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a prefix strictly: `a.b.c.d/n` (or a bare address, a /32) with no
/// host bits set.
fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let c: Cidr = s.parse().map_err(|e: dataplane::policy::CidrParseError| e.to_string())?;
    let (addr, _) = s.split_once('/').unwrap_or((s, ""));
    if addr.trim().parse::<Ipv4Addr>().ok() != Some(c.network()) {
        return Err(format!("host bits are set: the prefix is {c}"));
    }
    Ok(c)
}

fn de_cidr<'de, D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
    let s = String::deserialize(d)?;
    parse_cidr(&s).map_err(de::Error::custom)
}

fn de_opt_cidr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cidr>, D::Error> {
    de_cidr(d).map(Some)
}

fn de_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Addr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| de::Error::custom(format!("expected an IPv4 address such as 10.0.0.1, got {s:?}")))
}

fn de_opt_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
    de_ip(d).map(Some)
}

fn de_ips<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv4Addr>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .map(|s| s.parse().map_err(|_| format!("expected IPv4 addresses such as 10.0.0.1, got {s:?}")))
        .collect::<Result<_, _>>()
        .map_err(de::Error::custom)
}

// ---------------------------------------------------------------------------
// The schema
// ---------------------------------------------------------------------------

/// The whole document.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[gateway]`: engine and control-plane settings. Optional: every key
    /// has a default.
    #[serde(default)]
    pub gateway: Gateway,
    /// `[outside]`: the VPC-side interface. Required.
    pub outside: Outside,
    /// `[vpc]`: the customer VPC. Required.
    pub vpc: Vpc,
    /// `[[subnets]]`: the VPC's subnets the gateway may place ENIs in.
    #[serde(default)]
    pub subnets: Vec<Subnet>,
    /// `[[security_groups]]`.
    #[serde(default)]
    pub security_groups: Vec<SecurityGroup>,
    /// `[[functions]]`: each function's VPC configuration.
    #[serde(default)]
    pub functions: Vec<Function>,
    /// `[[attachments]]`: inside TAPs, one per microVM or shared by many
    /// environments. Attachment `i` (0-based, file order) is engine port
    /// `i + 1`.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// `[[environments]]`: execution environments present at start; more
    /// arrive and leave through the runtime API.
    #[serde(default)]
    pub environments: Vec<Environment>,
}

/// Which set of engine defaults the `[gateway]` overrides start from.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// RFC-conformant (BEHAVE): endpoint-independent mapping and filtering,
    /// UDP 300 s, TCP established 7440 s, transitory 240 s, ICMP 60 s,
    /// ICMP "administratively prohibited" when out of ports.
    #[default]
    Rfc,
    /// Like an AWS NAT Gateway: address-and-port-dependent mapping and
    /// filtering, 350 s idle timeouts for TCP established and UDP, silent
    /// drop when out of ports.
    Aws,
}

/// `mapping` (RFC 4787 §4.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MappingKind {
    /// One ENI port per environment ip:port for every destination.
    EndpointIndependent,
    /// One ENI port per (environment ip:port, destination ip:port)
    /// ("symmetric"); needs address-and-port-dependent filtering.
    AddressAndPortDependent,
}

impl From<MappingKind> for Mapping {
    fn from(m: MappingKind) -> Mapping {
        match m {
            MappingKind::EndpointIndependent => Mapping::EndpointIndependent,
            MappingKind::AddressAndPortDependent => Mapping::AddressAndPortDependent,
        }
    }
}

/// `filtering` (RFC 4787 §5).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilteringKind {
    /// Inbound from any remote endpoint.
    EndpointIndependent,
    /// Inbound from remote addresses the environment has sent to.
    AddressDependent,
    /// Inbound only from remote ip:port pairs the environment has sent to.
    AddressAndPortDependent,
}

impl From<FilteringKind> for Filtering {
    fn from(m: FilteringKind) -> Filtering {
        match m {
            FilteringKind::EndpointIndependent => Filtering::EndpointIndependent,
            FilteringKind::AddressDependent => Filtering::AddressDependent,
            FilteringKind::AddressAndPortDependent => Filtering::AddressAndPortDependent,
        }
    }
}

/// How execution environments get ENIs.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EniMode {
    /// One ENI per (subnet, security-group set), shared by every function
    /// and environment with that key.
    #[default]
    Shared,
    /// One ENI per execution environment, created when it starts.
    PerEnvironment,
}

/// `[gateway]`. Keys marked "default: from the profile" are optional
/// overrides of the chosen [`Profile`]'s engine settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gateway {
    /// Worker threads; 0 = one per available core. At most 256. Default 0.
    pub workers: usize,
    /// Open TAPs with `IFF_VNET_HDR` and enable TSO/checksum offload.
    /// Default true.
    pub offloads: bool,
    /// Engine defaults: `"rfc"` or `"aws"`. Default `"rfc"`.
    pub profile: Profile,
    /// `"endpoint-independent"` | `"address-and-port-dependent"`.
    /// Default: from the profile (rfc: endpoint-independent, aws:
    /// address-and-port-dependent).
    pub mapping: Option<MappingKind>,
    /// `"endpoint-independent"` | `"address-dependent"` |
    /// `"address-and-port-dependent"`. Default: from the profile (rfc:
    /// endpoint-independent, aws: address-and-port-dependent).
    pub filtering: Option<FilteringKind>,
    /// External ports handed out per (ENI address, protocol), `"lo-hi"`.
    /// Default: from the profile (both `"1024-65535"`).
    pub port_range: Option<PortRange>,
    /// Seconds a freed external port stays unused (RFC 6888 REQ-8).
    /// Default: from the profile (both 120).
    pub port_quarantine_secs: Option<u64>,
    /// Keep the environment's source port when it is free. Default: from the
    /// profile (both false).
    pub port_preservation: Option<bool>,
    /// Mappings with a live flow one environment may hold per protocol.
    /// Default: from the profile (both 16384).
    pub env_port_quota: Option<u32>,
    /// Live sessions one environment may hold (ended connections waiting
    /// out their closing timer do not count). Default: from the profile
    /// (both 65536).
    pub env_session_quota: Option<u32>,
    /// Sessions opened from the VPC that one environment may hold before it
    /// answers them (they never count against the quotas above, and new
    /// outbound flows may recycle them). Default: 1024.
    pub env_inbound_quota: Option<u32>,
    /// Ports in use on one ENI address past which the control plane is told
    /// to add an address (AWS: 65,000 connections per ENI). Default: from
    /// the profile (both 65000).
    pub high_water: Option<u32>,
    /// Session table capacity, sessions, preallocated and split between the
    /// workers; 1..=67108864. Default: 1048576 (about 180 MB with the
    /// mappings), for either profile.
    pub max_sessions: Option<usize>,
    /// Answer a flow that cannot get a port with ICMP "administratively
    /// prohibited". Default: from the profile (rfc: true, aws: false).
    pub icmp_on_exhaustion: Option<bool>,
    /// Answer TTL expiry with ICMP time exceeded. Default: from the profile
    /// (both true).
    pub icmp_time_exceeded: Option<bool>,
    /// Seed of port randomisation and flow hashing (0..=2^63-1: TOML
    /// integers are signed). Default: a fixed built-in seed.
    pub seed: Option<u64>,
    /// Path of the runtime API's Unix socket (at most 107 bytes). Default
    /// `/run/hyperplane.sock`.
    pub control_socket: PathBuf,
    /// Most shared ENIs the gateway creates (AWS: 250 per VPC); planning
    /// more fails with `EniLimitExceeded`. At least 1. Default 250.
    pub eni_quota: u32,
    /// Seconds a function may go without invocations before its ENIs are
    /// reclaimed (function `Inactive`, reason `Idle`); 0 = never. Default
    /// 1209600 (14 days).
    pub idle_reclaim_secs: u64,
    /// Milliseconds a new ENI takes to become usable (models AWS's ENI
    /// creation, while the function is `Pending`); 0 = at once. Default 0.
    pub provisioning_delay_ms: u64,
    /// Seconds an old generation of an ENI keeps serving its established
    /// flows after a config update before it is torn down; 0 = tear down at
    /// once. Default 3600.
    pub drain_limit_secs: u64,
    /// `"shared"` (default): one ENI per (subnet, security-group set), set
    /// up when a function is created. `"per-environment"`: the design
    /// before 2019, kept for the study: each execution environment gets its
    /// own ENI when it starts, on its cold-start path.
    pub eni_mode: EniMode,
    /// Most addresses one shared ENI may grow to past its high-water mark
    /// (each takes a subnet address). Default 16.
    pub max_eni_addresses: u32,
    /// `[gateway.timeouts]`: idle timeouts.
    pub timeouts: TimeoutSettings,
    /// `[gateway.arp]`: the outside port's ARP resolver.
    pub arp: ArpSettings,
    /// `[gateway.frag]`: fragment handling.
    pub frag: FragSettings,
}

impl Default for Gateway {
    fn default() -> Gateway {
        Gateway {
            workers: 0,
            offloads: true,
            profile: Profile::Rfc,
            mapping: None,
            filtering: None,
            port_range: None,
            port_quarantine_secs: None,
            port_preservation: None,
            env_port_quota: None,
            env_session_quota: None,
            env_inbound_quota: None,
            high_water: None,
            max_sessions: None,
            icmp_on_exhaustion: None,
            icmp_time_exceeded: None,
            seed: None,
            control_socket: PathBuf::from("/run/hyperplane.sock"),
            eni_quota: 250,
            idle_reclaim_secs: 14 * 24 * 3600,
            provisioning_delay_ms: 0,
            drain_limit_secs: 3600,
            eni_mode: EniMode::Shared,
            max_eni_addresses: 16,
            timeouts: TimeoutSettings::default(),
            arp: ArpSettings::default(),
            frag: FragSettings::default(),
        }
    }
}

/// `[gateway.timeouts]`, seconds. Every key defaults to the profile's value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutSettings {
    /// TCP established and half-closed. rfc: 7440 (RFC 5382: at least 2 h
    /// 4 min), aws: 350.
    pub tcp_established: Option<u64>,
    /// TCP opening and closing. Both profiles: 240 (RFC 7857 §2.1).
    pub tcp_transitory: Option<u64>,
    /// TCP after an RST. Both profiles: 240 (RFC 7857 §2.2).
    pub tcp_reset: Option<u64>,
    /// A SYN from the VPC on an existing mapping. Both profiles: 6.
    pub tcp_incoming_syn: Option<u64>,
    /// UDP; never below 120 (RFC 4787 REQ-5). rfc: 300, aws: 350.
    pub udp: Option<u64>,
    /// ICMP query (echo); positive. Both profiles: 60 (RFC 5508 REQ-2).
    pub icmp: Option<u64>,
}

/// `[gateway.arp]`: the outside port's ARP resolver. Every key is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArpSettings {
    /// Entries held; the least recently confirmed is evicted when full.
    /// Default 1024.
    pub max_entries: Option<usize>,
    /// Seconds an entry is used after it was last confirmed; positive.
    /// Default 300.
    pub reachable_secs: Option<u64>,
    /// Milliseconds between two requests for the same address; positive.
    /// Default 1000.
    pub retry_ms: Option<u64>,
    /// Requests sent for an address before giving up on it; 1..=255.
    /// Default 3.
    pub max_requests: Option<u8>,
    /// Frames waiting for resolution, in total. Default 64.
    pub queue_frames: Option<usize>,
    /// Frames waiting for one address. Default 8.
    pub queue_per_ip: Option<usize>,
    /// Bytes per queued frame (Ethernet header included); longer frames are
    /// not queued. Default: the outside MTU + 18 (at least 1518).
    pub frame_capacity: Option<usize>,
}

/// `[gateway.frag]`: IPv4 fragment handling. Every key is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FragSettings {
    /// Datagrams tracked at once. Default 1024.
    pub max_datagrams: Option<usize>,
    /// Bytes of buffered fragments in total. Default 1048576.
    pub max_buffered_bytes: Option<usize>,
    /// Fragments per datagram. Default 64.
    pub max_fragments: Option<usize>,
    /// Seconds a datagram is tracked from its first fragment; positive.
    /// Default 5.
    pub timeout_secs: Option<u64>,
    /// Longest frame buffered, bytes, Ethernet header included. Default:
    /// the largest MTU of any port + 18 (at least 1518).
    pub frame_capacity: Option<usize>,
}

/// How the outside interface is opened.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutsideKind {
    /// A TAP device, created or attached by name.
    #[default]
    Tap,
    /// An existing interface, opened with an `AF_PACKET` socket.
    AfPacket,
}

/// `[outside]`: the VPC-side interface, where the ENI addresses live.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outside {
    /// `"tap"` or `"af-packet"`. Default `"tap"`.
    #[serde(default)]
    pub kind: OutsideKind,
    /// Interface name, 1 to 15 bytes. Required.
    pub name: String,
    /// Largest IP datagram on this link, bytes, 68..=65520. Default 1500.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Next hop for destinations outside every subnet; must lie in one of
    /// the subnets (it is resolved by ARP on this link). Default: none, so
    /// only on-link destinations are reachable.
    #[serde(default, deserialize_with = "de_opt_ip")]
    pub router: Option<Ipv4Addr>,
    /// Our MAC on this link, unicast. Default `02:68:70:00:00:01`.
    #[serde(default)]
    pub mac: Option<MacAddr>,
}

fn default_mtu() -> u32 {
    1500
}

/// `[vpc]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vpc {
    /// The VPC's IPv4 block, e.g. `"10.0.0.0/16"`: no host bits, prefix at
    /// most /28. Required.
    #[serde(deserialize_with = "de_cidr")]
    pub cidr: Cidr,
}

/// `[[subnets]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    /// Unique id, e.g. `"subnet-a"`. Required.
    pub id: String,
    /// Its block, inside the VPC's and disjoint from every other subnet's;
    /// no host bits, prefix at most /28. The network address, the next
    /// three and the broadcast address are never handed out. Required.
    #[serde(deserialize_with = "de_cidr")]
    pub cidr: Cidr,
}

/// `[[security_groups]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    /// Unique id, e.g. `"sg-web"`. Required.
    pub id: String,
    /// Egress allow rules, at most 60, enforced on new flows. Omitted: allow
    /// everything (what AWS gives a new group); `[]`: deny every new flow.
    #[serde(default)]
    pub egress: Option<Vec<SgRule>>,
    /// Ingress rules, at most 60: kept and shown, not enforced (the gateway
    /// carries outbound connections only). Default none.
    #[serde(default)]
    pub ingress: Vec<SgRule>,
    /// Addresses of other VPC resources (databases, instances) that carry
    /// this group, so that rules referencing it by `group` reach them.
    /// Every address lies in the VPC. Default none.
    #[serde(default, deserialize_with = "de_ips")]
    pub members: Vec<Ipv4Addr>,
}

/// The protocol of a rule.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Every protocol (AWS `-1`); takes no `ports`.
    #[serde(alias = "-1")]
    All,
    /// TCP; needs `ports`.
    Tcp,
    /// UDP; needs `ports`.
    Udp,
    /// ICMP; takes no `ports`.
    Icmp,
}

/// One security-group rule. Exactly one of `destination` (egress), `source`
/// (ingress) or `group` names the peer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgRule {
    /// `"all"` (or `"-1"`), `"tcp"`, `"udp"` or `"icmp"`. Required.
    pub protocol: Protocol,
    /// Ports, `"lo-hi"` or a single port: required for tcp and udp, refused
    /// otherwise.
    #[serde(default)]
    pub ports: Option<PortRange>,
    /// Egress only: the destination prefix (a bare address is a /32).
    #[serde(default, deserialize_with = "de_opt_cidr")]
    pub destination: Option<Cidr>,
    /// Ingress only: the source prefix (a bare address is a /32).
    #[serde(default, deserialize_with = "de_opt_cidr")]
    pub source: Option<Cidr>,
    /// The peer is every address carrying this security group (see
    /// [`crate::plan`] for how it compiles).
    #[serde(default)]
    pub group: Option<String>,
    /// Free text. Default none.
    #[serde(default)]
    pub description: Option<String>,
}

/// `[[functions]]`: a function's VPC configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Function {
    /// Unique name. Required.
    pub name: String,
    /// Subnet ids, 1 to 16, no repeats; the function gets one shared ENI per
    /// subnet. Required.
    pub subnets: Vec<String>,
    /// Security group ids, 1 to 5, no repeats. Functions with the same
    /// subnet and the same set (order does not matter) share an ENI.
    /// Required.
    pub security_groups: Vec<String>,
}

/// `[[attachments]]`: an inside TAP.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// TAP name, 1 to 15 bytes, unique, not the outside interface's.
    /// Required.
    pub name: String,
    /// Our address on this attachment: its environments' default gateway.
    /// Outside the VPC. Several attachments may share it. Required.
    #[serde(deserialize_with = "de_ip")]
    pub gateway: Ipv4Addr,
    /// Largest IP datagram towards the environments, bytes, 68..=65520.
    /// Default 1500.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
}

/// `[[environments]]`: an execution environment.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// The function it runs. Required.
    pub function: String,
    /// Its address: unique, unicast, outside the VPC (environments live on
    /// the inside). Required.
    #[serde(deserialize_with = "de_ip")]
    pub address: Ipv4Addr,
    /// The attachment it sits behind. Required.
    pub attachment: String,
    /// Which of the function's subnets (hence which ENI) it uses. Default:
    /// the function's first subnet.
    #[serde(default)]
    pub subnet: Option<String>,
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Parses and validates a TOML document. Pure: nothing happens besides the
/// parse.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let doc = match toml::de::DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            return Err(ConfigError {
                field: "toml".into(),
                reason: e.message().to_string(),
                line: e.span().map(|s| line_of(text, s.start)),
            })
        }
    };
    let index = SpanIndex::new(doc.get_ref());
    let cfg: Config = toml::from_str(text).map_err(|e| {
        let (field, line) = match e.span() {
            Some(s) => (index.field_at(s.start), Some(line_of(text, s.start))),
            None => (String::new(), None),
        };
        ConfigError { field: if field.is_empty() { "toml".into() } else { field }, reason: e.message().into(), line }
    })?;
    cfg.validate().map_err(|mut e| {
        e.line = index.line_of_field(text, &e.field);
        e
    })?;
    Ok(cfg)
}

impl FromStr for Config {
    type Err = ConfigError;
    /// [`parse`].
    fn from_str(s: &str) -> Result<Config, ConfigError> {
        parse(s)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Every key and value of the document with its path and spans.
struct SpanIndex {
    /// (path, key span or header span, value span)
    nodes: Vec<(String, core::ops::Range<usize>, core::ops::Range<usize>)>,
}

impl SpanIndex {
    fn new(root: &toml::de::DeTable<'_>) -> SpanIndex {
        let mut nodes = Vec::new();
        for (k, v) in root.iter() {
            Self::walk(k.get_ref().to_string(), k.span(), v, &mut nodes);
        }
        SpanIndex { nodes }
    }

    fn walk(
        path: String,
        key: core::ops::Range<usize>,
        v: &toml::Spanned<toml::de::DeValue<'_>>,
        out: &mut Vec<(String, core::ops::Range<usize>, core::ops::Range<usize>)>,
    ) {
        out.push((path.clone(), key, v.span()));
        match v.get_ref() {
            toml::de::DeValue::Table(t) => {
                for (k, c) in t.iter() {
                    Self::walk(format!("{path}.{}", k.get_ref()), k.span(), c, out);
                }
            }
            toml::de::DeValue::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    Self::walk(format!("{path}[{i}]"), c.span(), c, out);
                }
            }
            _ => {}
        }
    }

    /// The most specific field whose key or value holds `offset`.
    fn field_at(&self, offset: usize) -> String {
        let hit = |r: &core::ops::Range<usize>| r.start <= offset && (offset < r.end || r.start == offset);
        self.nodes
            .iter()
            .filter(|(_, k, v)| hit(k) || hit(v))
            .max_by_key(|(p, _, _)| p.len())
            .map(|(p, _, _)| p.clone())
            .unwrap_or_default()
    }

    /// The line of a field's value, or of its closest present ancestor.
    fn line_of_field(&self, text: &str, field: &str) -> Option<usize> {
        let mut f = field;
        loop {
            if let Some((_, _, v)) = self.nodes.iter().find(|(p, _, _)| p == f) {
                return Some(line_of(text, v.start));
            }
            let cut = f.rfind(['.', '['])?;
            f = &f[..cut];
        }
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

fn check_mtu(field: String, mtu: u32) -> Result<(), ConfigError> {
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return fail(field, format!("{mtu} is out of range {MIN_MTU}..={MAX_MTU} bytes"));
    }
    Ok(())
}

fn check_ifname(field: String, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return fail(field, format!("an interface name has 1 to {MAX_IFNAME_LEN} bytes"));
    }
    if name == "." || name == ".." || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return fail(field, format!("{name:?} is not a valid interface name"));
    }
    Ok(())
}

fn check_id(field: String, id: &str) -> Result<(), ConfigError> {
    if id.trim().is_empty() {
        return fail(field, "must not be empty");
    }
    Ok(())
}

fn check_unicast(field: String, ip: Ipv4Addr) -> Result<(), ConfigError> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return fail(field, format!("{ip} is not a unicast host address"));
    }
    Ok(())
}

fn check_prefix(field: String, c: Cidr) -> Result<(), ConfigError> {
    if c.prefix_len() > MAX_PREFIX_LEN {
        return fail(field, format!("/{} is too small: the longest prefix is /{MAX_PREFIX_LEN}", c.prefix_len()));
    }
    Ok(())
}

/// Field names of [`EngineConfig::validate`] that are named differently here.
fn engine_field(field: &str) -> String {
    let f = match field {
        "port_quarantine" => "port_quarantine_secs",
        f => f,
    };
    format!("gateway.{f}")
}

impl Config {
    /// Checks the whole configuration; the first problem found is returned,
    /// naming the field path and the reason (no line: [`parse`] adds it).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_gateway()?;
        self.validate_network()?;
        self.validate_groups()?;
        self.validate_functions()?;
        self.validate_inside()?;
        Ok(())
    }

    fn validate_gateway(&self) -> Result<(), ConfigError> {
        let g = &self.gateway;
        if g.workers > MAX_WORKERS {
            return fail("gateway.workers", format!("{} is more than {MAX_WORKERS} workers", g.workers));
        }
        if g.eni_quota == 0 {
            return fail("gateway.eni_quota", "must be at least 1");
        }
        let sock = g.control_socket.as_os_str().len();
        if sock == 0 || sock > MAX_SOCKET_PATH_LEN {
            return fail("gateway.control_socket", format!("a socket path has 1 to {MAX_SOCKET_PATH_LEN} bytes"));
        }
        if let Some(s) = g.seed {
            if s > i64::MAX as u64 {
                return fail("gateway.seed", "must be at most 9223372036854775807");
            }
        }
        if g.arp.reachable_secs == Some(0) {
            return fail("gateway.arp.reachable_secs", "must be positive");
        }
        if g.arp.retry_ms == Some(0) {
            return fail("gateway.arp.retry_ms", "must be positive");
        }
        if g.arp.max_requests == Some(0) {
            return fail("gateway.arp.max_requests", "must be at least 1");
        }
        if g.frag.timeout_secs == Some(0) {
            return fail("gateway.frag.timeout_secs", "must be positive");
        }
        if g.frag.max_fragments == Some(0) {
            return fail("gateway.frag.max_fragments", "must be at least 1");
        }
        for (field, cap) in [
            ("gateway.arp.frame_capacity", g.arp.frame_capacity),
            ("gateway.frag.frame_capacity", g.frag.frame_capacity),
        ] {
            if let Some(c) = cap {
                if c < 60 {
                    return fail(field, "must hold a minimum Ethernet frame (60 bytes)");
                }
            }
        }
        self.engine_config().validate().map_err(|e| ConfigError::new(engine_field(e.field), e.reason))
    }

    fn validate_network(&self) -> Result<(), ConfigError> {
        let o = &self.outside;
        check_ifname("outside.name".into(), &o.name)?;
        check_mtu("outside.mtu".into(), o.mtu)?;
        check_prefix("vpc.cidr".into(), self.vpc.cidr)?;
        let vpc = self.vpc.cidr;
        let mut ids = BTreeMap::new();
        for (i, s) in self.subnets.iter().enumerate() {
            check_id(format!("subnets[{i}].id"), &s.id)?;
            if let Some(j) = ids.insert(s.id.as_str(), i) {
                return fail(format!("subnets[{i}].id"), format!("duplicate subnet id {:?} (also subnets[{j}])", s.id));
            }
            check_prefix(format!("subnets[{i}].cidr"), s.cidr)?;
            if !(vpc.contains(s.cidr.network()) && s.cidr.prefix_len() >= vpc.prefix_len()) {
                return fail(format!("subnets[{i}].cidr"), format!("{} is not inside the VPC {vpc}", s.cidr));
            }
            if let Some((j, t)) = self.subnets[..i].iter().enumerate().find(|(_, t)| t.cidr.overlaps(s.cidr)) {
                return fail(
                    format!("subnets[{i}].cidr"),
                    format!("{} overlaps subnets[{j}] {:?} ({})", s.cidr, t.id, t.cidr),
                );
            }
        }
        if let Some(r) = o.router {
            check_unicast("outside.router".into(), r)?;
            if !self.subnets.iter().any(|s| s.cidr.contains(r)) {
                return fail(
                    "outside.router",
                    format!("{r} is in no subnet: the router must be on-link (it is resolved by ARP)"),
                );
            }
        }
        Ok(())
    }

    fn validate_groups(&self) -> Result<(), ConfigError> {
        let mut ids = BTreeMap::new();
        for (i, g) in self.security_groups.iter().enumerate() {
            check_id(format!("security_groups[{i}].id"), &g.id)?;
            if let Some(j) = ids.insert(g.id.as_str(), i) {
                return fail(
                    format!("security_groups[{i}].id"),
                    format!("duplicate security group id {:?} (also security_groups[{j}])", g.id),
                );
            }
        }
        for (i, g) in self.security_groups.iter().enumerate() {
            let dirs: [(&str, &[SgRule], bool); 2] =
                [("egress", g.egress.as_deref().unwrap_or(&[]), true), ("ingress", &g.ingress, false)];
            for (dir, rules, egress) in dirs {
                if rules.len() > MAX_RULES_PER_DIRECTION {
                    return fail(
                        format!("security_groups[{i}].{dir}"),
                        format!("{} rules: at most {MAX_RULES_PER_DIRECTION} per direction", rules.len()),
                    );
                }
                for (j, r) in rules.iter().enumerate() {
                    let at = |f: &str| format!("security_groups[{i}].{dir}[{j}]{f}");
                    match (r.protocol, r.ports) {
                        (Protocol::Tcp | Protocol::Udp, None) => {
                            return fail(at(".ports"), "required for tcp and udp rules")
                        }
                        (Protocol::All | Protocol::Icmp, Some(_)) => {
                            return fail(at(".ports"), "only tcp and udp rules take ports")
                        }
                        _ => {}
                    }
                    let (own, other, own_name, other_name) = if egress {
                        (r.destination, r.source, "destination", "source")
                    } else {
                        (r.source, r.destination, "source", "destination")
                    };
                    if other.is_some() {
                        return fail(
                            at(&format!(".{other_name}")),
                            format!("an {dir} rule names its peer with `{own_name}` or `group`"),
                        );
                    }
                    match (&own, &r.group) {
                        (Some(_), Some(_)) => {
                            return fail(at(""), format!("give either `{own_name}` or `group`, not both"))
                        }
                        (None, None) => return fail(at(""), format!("needs `{own_name}` or `group`")),
                        (None, Some(grp)) if !ids.contains_key(grp.as_str()) => {
                            return fail(at(".group"), format!("unknown security group {grp:?}"))
                        }
                        _ => {}
                    }
                }
            }
            for (j, m) in g.members.iter().enumerate() {
                if !self.vpc.cidr.contains(*m) {
                    return fail(
                        format!("security_groups[{i}].members[{j}]"),
                        format!("{m} is not in the VPC {}", self.vpc.cidr),
                    );
                }
            }
        }
        Ok(())
    }

    fn validate_functions(&self) -> Result<(), ConfigError> {
        let subnets: BTreeSet<&str> = self.subnets.iter().map(|s| s.id.as_str()).collect();
        let groups: BTreeSet<&str> = self.security_groups.iter().map(|s| s.id.as_str()).collect();
        let mut names = BTreeMap::new();
        for (i, f) in self.functions.iter().enumerate() {
            check_id(format!("functions[{i}].name"), &f.name)?;
            if let Some(j) = names.insert(f.name.as_str(), i) {
                return fail(
                    format!("functions[{i}].name"),
                    format!("duplicate function name {:?} (also functions[{j}])", f.name),
                );
            }
            let field = format!("functions[{i}].subnets");
            if f.subnets.is_empty() {
                return fail(field, "a function in a VPC needs at least one subnet");
            }
            if f.subnets.len() > MAX_FUNCTION_SUBNETS {
                return fail(
                    field,
                    format!("{} subnets: at most {MAX_FUNCTION_SUBNETS} per function", f.subnets.len()),
                );
            }
            let mut seen = BTreeSet::new();
            for (j, s) in f.subnets.iter().enumerate() {
                if !subnets.contains(s.as_str()) {
                    return fail(format!("{field}[{j}]"), format!("unknown subnet {s:?} (InvalidSubnet)"));
                }
                if !seen.insert(s) {
                    return fail(format!("{field}[{j}]"), format!("subnet {s:?} listed twice"));
                }
            }
            let field = format!("functions[{i}].security_groups");
            if f.security_groups.is_empty() {
                return fail(field, "a function in a VPC needs at least one security group");
            }
            if f.security_groups.len() > MAX_FUNCTION_SECURITY_GROUPS {
                return fail(
                    field,
                    format!(
                        "{} security groups: at most {MAX_FUNCTION_SECURITY_GROUPS} per function",
                        f.security_groups.len()
                    ),
                );
            }
            let mut seen = BTreeSet::new();
            for (j, g) in f.security_groups.iter().enumerate() {
                if !groups.contains(g.as_str()) {
                    return fail(
                        format!("{field}[{j}]"),
                        format!("unknown security group {g:?} (InvalidSecurityGroup)"),
                    );
                }
                if !seen.insert(g) {
                    return fail(format!("{field}[{j}]"), format!("security group {g:?} listed twice"));
                }
            }
        }
        Ok(())
    }

    fn validate_inside(&self) -> Result<(), ConfigError> {
        let vpc = self.vpc.cidr;
        if self.attachments.len() > usize::from(u16::MAX) {
            return fail("attachments", format!("at most {} attachments", u16::MAX));
        }
        let mut names = BTreeMap::new();
        for (i, a) in self.attachments.iter().enumerate() {
            check_ifname(format!("attachments[{i}].name"), &a.name)?;
            if a.name == self.outside.name {
                return fail(format!("attachments[{i}].name"), format!("{:?} is the outside interface", a.name));
            }
            if let Some(j) = names.insert(a.name.as_str(), i) {
                return fail(
                    format!("attachments[{i}].name"),
                    format!("duplicate attachment name {:?} (also attachments[{j}])", a.name),
                );
            }
            check_unicast(format!("attachments[{i}].gateway"), a.gateway)?;
            if vpc.contains(a.gateway) {
                return fail(
                    format!("attachments[{i}].gateway"),
                    format!("{} lies in the VPC {vpc}: attachments live on the inside", a.gateway),
                );
            }
            check_mtu(format!("attachments[{i}].mtu"), a.mtu)?;
        }
        let gateways: BTreeSet<Ipv4Addr> = self.attachments.iter().map(|a| a.gateway).collect();
        let functions: BTreeMap<&str, &Function> = self.functions.iter().map(|f| (f.name.as_str(), f)).collect();
        let mut addrs = BTreeMap::new();
        for (i, e) in self.environments.iter().enumerate() {
            let at = |f: &str| format!("environments[{i}].{f}");
            let Some(f) = functions.get(e.function.as_str()) else {
                return fail(at("function"), format!("unknown function {:?}", e.function));
            };
            check_unicast(at("address"), e.address)?;
            if vpc.contains(e.address) {
                return fail(
                    at("address"),
                    format!("{} lies in the VPC {vpc}: environments live on the inside", e.address),
                );
            }
            if gateways.contains(&e.address) {
                return fail(at("address"), format!("{} is an attachment's gateway address", e.address));
            }
            if let Some(j) = addrs.insert(e.address, i) {
                return fail(
                    at("address"),
                    format!("duplicate environment address {} (also environments[{j}])", e.address),
                );
            }
            if !names.contains_key(e.attachment.as_str()) {
                return fail(at("attachment"), format!("unknown attachment {:?}", e.attachment));
            }
            if let Some(s) = &e.subnet {
                if !f.subnets.contains(s) {
                    return fail(at("subnet"), format!("{s:?} is not one of function {:?}'s subnets", f.name));
                }
            }
        }
        Ok(())
    }

    /// The engine settings: the profile's defaults with the `[gateway]`
    /// overrides applied (not validated; [`Config::validate`] does that).
    pub fn engine_config(&self) -> EngineConfig {
        let g = &self.gateway;
        let mut e = match g.profile {
            Profile::Rfc => EngineConfig::default(),
            Profile::Aws => EngineConfig::aws(),
        };
        let secs = Duration::from_secs;
        let t = &g.timeouts;
        let set = |d: &mut Duration, v: Option<u64>, f: fn(u64) -> Duration| {
            if let Some(v) = v {
                *d = f(v);
            }
        };
        set(&mut e.timeouts.tcp_established, t.tcp_established, secs);
        set(&mut e.timeouts.tcp_transitory, t.tcp_transitory, secs);
        set(&mut e.timeouts.tcp_reset, t.tcp_reset, secs);
        set(&mut e.timeouts.tcp_incoming_syn, t.tcp_incoming_syn, secs);
        set(&mut e.timeouts.udp, t.udp, secs);
        set(&mut e.timeouts.icmp, t.icmp, secs);
        set(&mut e.port_quarantine, g.port_quarantine_secs, secs);
        if let Some(m) = g.mapping {
            e.mapping = m.into();
        }
        if let Some(f) = g.filtering {
            e.filtering = f.into();
        }
        if let Some(r) = g.port_range {
            e.port_range = r.range();
        }
        e.port_preservation = g.port_preservation.unwrap_or(e.port_preservation);
        e.env_port_quota = g.env_port_quota.unwrap_or(e.env_port_quota);
        e.env_session_quota = g.env_session_quota.unwrap_or(e.env_session_quota);
        e.env_inbound_quota = g.env_inbound_quota.unwrap_or(e.env_inbound_quota);
        e.high_water = g.high_water.unwrap_or(e.high_water);
        e.max_sessions = g.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS);
        e.icmp_on_exhaustion = g.icmp_on_exhaustion.unwrap_or(e.icmp_on_exhaustion);
        e.icmp_time_exceeded = g.icmp_time_exceeded.unwrap_or(e.icmp_time_exceeded);
        e.seed = g.seed.unwrap_or(e.seed);

        let a = &g.arp;
        e.arp.max_entries = a.max_entries.unwrap_or(e.arp.max_entries);
        set(&mut e.arp.reachable, a.reachable_secs, secs);
        set(&mut e.arp.retry, a.retry_ms, Duration::from_millis);
        e.arp.max_requests = a.max_requests.unwrap_or(e.arp.max_requests);
        e.arp.queue_frames = a.queue_frames.unwrap_or(e.arp.queue_frames);
        e.arp.queue_per_ip = a.queue_per_ip.unwrap_or(e.arp.queue_per_ip);
        let outside_frame = (self.outside.mtu as usize + 18).max(e.arp.frame_capacity);
        e.arp.frame_capacity = a.frame_capacity.unwrap_or(outside_frame);

        let f = &g.frag;
        e.frag.max_datagrams = f.max_datagrams.unwrap_or(e.frag.max_datagrams);
        e.frag.max_buffered_bytes = f.max_buffered_bytes.unwrap_or(e.frag.max_buffered_bytes);
        e.frag.max_fragments = f.max_fragments.unwrap_or(e.frag.max_fragments);
        set(&mut e.frag.timeout, f.timeout_secs, secs);
        let largest = self.attachments.iter().map(|a| a.mtu).chain([self.outside.mtu]).max().unwrap_or(1500);
        let frame = (largest as usize + 18).max(e.frag.frame_capacity);
        e.frag.frame_capacity = f.frame_capacity.unwrap_or(frame);
        e
    }

    /// The subnet an environment uses: its `subnet`, or its function's first.
    /// `None` if the function is unknown or has no subnet.
    pub fn environment_subnet<'a>(&'a self, env: &'a Environment) -> Option<&'a str> {
        if let Some(s) = &env.subnet {
            return Some(s);
        }
        let f = self.functions.iter().find(|f| f.name == env.function)?;
        f.subnets.first().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_types_parse() {
        assert_eq!("02:68:70:00:00:01".parse::<MacAddr>().unwrap().to_string(), "02:68:70:00:00:01");
        assert!("01:00:5e:00:00:01".parse::<MacAddr>().is_err());
        assert!("02:68:70:00:00".parse::<MacAddr>().is_err());
        assert!("02:68:70:00:00:01:02".parse::<MacAddr>().is_err());
        assert_eq!("1024-65535".parse::<PortRange>().unwrap(), PortRange { lo: 1024, hi: 65535 });
        assert_eq!("443".parse::<PortRange>().unwrap().range(), 443..=443);
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("20-10".parse::<PortRange>().is_err());
        assert!("1-65536".parse::<PortRange>().is_err());
        assert!(parse_cidr("10.0.1.0/24").is_ok());
        assert!(parse_cidr("10.0.1.7/24").unwrap_err().contains("10.0.1.0/24"));
        assert_eq!(parse_cidr("10.0.1.7").unwrap().prefix_len(), 32);
    }

    #[test]
    fn engine_overrides_apply_to_the_profile() {
        let mut c: Config = toml::from_str(
            "[gateway]\nprofile = \"aws\"\n[gateway.timeouts]\nudp = 600\n[outside]\nname = \"o\"\nmtu = 9001\n[vpc]\ncidr = \"10.0.0.0/16\"\n",
        )
        .unwrap();
        let e = c.engine_config();
        assert_eq!(e.mapping, Mapping::AddressAndPortDependent);
        assert_eq!(e.timeouts.udp, Duration::from_secs(600));
        assert_eq!(e.timeouts.tcp_established, Duration::from_secs(350));
        assert_eq!(e.arp.frame_capacity, 9019);
        c.gateway.profile = Profile::Rfc;
        assert_eq!(c.engine_config().mapping, Mapping::EndpointIndependent);
        assert_eq!(c.engine_config().arp.frame_capacity, 9019);
    }
}
