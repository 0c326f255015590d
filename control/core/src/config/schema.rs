//! The schema: the document's tables and fields, with their defaults.

use super::*;

/// The whole document.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[gateway]`: engine and control-plane settings. Optional: every key
    /// has a default.
    #[serde(default)]
    pub gateway: GatewaySettings,
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
    /// Like an AWS NAT GatewaySettings: address-and-port-dependent mapping and
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
pub struct GatewaySettings {
    /// Worker threads; 0 = one per available core. At most 256. Default 0.
    pub workers: usize,
    /// Open TAPs with `IFF_VNET_HDR` and enable TSO/checksum offload (and,
    /// with an AF_PACKET outside, send through it with `PACKET_VNET_HDR`).
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
    /// `[gateway.io]`: how the workers do their I/O.
    pub io: IoConfig,
}

impl Default for GatewaySettings {
    fn default() -> GatewaySettings {
        GatewaySettings {
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
            io: IoConfig::default(),
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

/// `backend` of `[gateway.io]`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoBackend {
    /// io_uring when the kernel allows it, otherwise `syscalls` (logged).
    #[default]
    Auto,
    /// One io_uring per worker; the gateway does not start without it.
    Uring,
    /// `read`/`write` and `epoll_wait`, one system call per frame.
    Syscalls,
}

/// `[gateway.io]`: the workers' I/O path. Every key is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IoConfig {
    /// `"auto"`, `"uring"` or `"syscalls"`. Default `"auto"`.
    pub backend: IoBackend,
    /// Microseconds a worker with nothing to do polls before it sleeps;
    /// 0..=1000, 0 = sleep at once (an idle gateway then uses no CPU).
    /// Default 0.
    pub busy_poll_us: u64,
    /// CPUs to pin the workers to: worker `i` runs on the `i mod n`-th of
    /// the `n` CPUs listed, in ascending order. Each must be one this
    /// process may run on, none listed twice. Default `[]`: not pinned.
    pub cpus: Vec<usize>,
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
    #[serde(default, deserialize_with = "de_opt_mac")]
    pub mac: Option<Mac>,
    /// `"af-packet"` only: each worker reads its own socket of a
    /// `PACKET_FANOUT` group (`true`), or one reader thread reads for every
    /// worker (`false`; also what happens when the kernel refuses the
    /// group). Default `true`.
    #[serde(default)]
    pub fanout: Option<bool>,
    /// `"af-packet"` only: each worker's socket of the fanout group reads
    /// and writes through `TPACKET` rings mapped into the gateway (no
    /// system call per frame), falling back to plain sockets where the
    /// kernel refuses the rings. Needs `fanout = true`. Default `true`.
    #[serde(default)]
    pub ring: Option<bool>,
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

/// How an attachment's device is opened.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachmentKind {
    /// A TAP device the gateway creates or attaches by name (its kernel
    /// side is where the environments are, e.g. bridged to a VMM's TAP).
    #[default]
    Tap,
    /// An existing interface, opened with `AF_PACKET` sockets: the host
    /// side of a VMM's TAP (direct attach), or a veth. The gateway does not
    /// configure it (MTU, link state are the owner's).
    AfPacket,
    /// A vhost-user-net device on a Unix socket (`socket`) that a VMM
    /// (QEMU, cloud-hypervisor) connects to: the gateway is the VM's
    /// network device, reading and writing its virtqueues in shared
    /// memory. The guest takes no offloads, so the gateway's TAP offloads
    /// are turned off when any attachment is of this kind.
    VhostUser,
}

/// `[[attachments]]`: an inside device.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// `"tap"`, `"af-packet"` or `"vhost-user"`. Default `"tap"`.
    #[serde(default)]
    pub kind: AttachmentKind,
    /// Interface name, 1 to 15 bytes, unique, not the outside interface's
    /// (for `vhost-user`: the attachment's name, same rules). Required.
    pub name: String,
    /// `vhost-user` only, and required there: the Unix socket's path (an
    /// existing socket file there is replaced; the VMM connects to it).
    #[serde(default)]
    pub socket: Option<std::path::PathBuf>,
    /// Our address on this attachment: its environments' default gateway.
    /// Outside the VPC. Several attachments may share it. Required.
    #[serde(deserialize_with = "de_ip")]
    pub gateway: Ipv4Addr,
    /// Largest IP datagram towards the environments, bytes, 68..=65520.
    /// Default 1500.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// `af-packet` only: read and write the interface through `TPACKET`
    /// rings mapped into the gateway (no system call per frame; the
    /// outside's rings), falling back to plain sockets with a warning
    /// where the kernel refuses the rings. Default `true`.
    #[serde(default)]
    pub ring: Option<bool>,
    /// `af-packet` on rings only: receive slots, 64..=4096. A slot holds
    /// a superframe with offloads on (65 KiB: the default 256 slots take
    /// 18 MiB of kernel memory), an MTU-sized frame without (2 KiB: the
    /// default 2,048 take 4 MiB). Fewer slots for hosts with many
    /// attachments; frames the ring has no room for are dropped and
    /// counted (`rx_overflow`).
    #[serde(default)]
    pub ring_slots: Option<u32>,
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
