//! Engine settings: timers, mapping and filtering behaviour, port ranges,
//! quotas and table sizes.
//!
//! Defaults follow the BEHAVE RFCs (4787, 5382, 5508, 7857, 6888):
//! endpoint-independent mapping and endpoint-independent filtering, UDP
//! 300 s, TCP established 7440 s and transitory 240 s, ICMP 60 s, ports
//! 1024–65535 chosen at random with a 120 s quarantine. [`EngineConfig::aws`]
//! is the profile that behaves like an AWS NAT Gateway (address-and-port
//! dependent mapping and filtering, 350 s idle timeouts).

use core::ops::RangeInclusive;
use std::time::Duration;

/// How an environment's endpoint maps to an ENI endpoint (RFC 4787 §4.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// One ENI port per environment ip:port, for every destination.
    EndpointIndependent,
    /// One ENI port per (environment ip:port, destination ip:port); the same
    /// ENI port is reused towards different destinations, so capacity is per
    /// destination ("symmetric", as AWS NAT Gateway).
    AddressAndPortDependent,
}

/// Which inbound packets a mapping admits (RFC 4787 §5).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Filtering {
    /// From any remote endpoint.
    EndpointIndependent,
    /// From remote addresses the environment has sent to.
    AddressDependent,
    /// Only from remote ip:port pairs the environment has sent to.
    AddressAndPortDependent,
}

/// Idle timeouts.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP established (and half-closed). RFC 5382: at least 2 h 4 min.
    pub tcp_established: Duration,
    /// TCP opening and closing. RFC 7857 §2.1: 4 min recommended.
    pub tcp_transitory: Duration,
    /// TCP after an RST (RFC 7857 §2.2: kept about 4 min).
    pub tcp_reset: Duration,
    /// A SYN from the VPC on an existing mapping (RFC 6146 TCP_INCOMING_SYN).
    pub tcp_incoming_syn: Duration,
    /// UDP. RFC 4787 REQ-5: never below 2 min, 5 min recommended.
    pub udp: Duration,
    /// ICMP query (echo). RFC 5508 REQ-2: at least 60 s.
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            tcp_established: Duration::from_secs(7440),
            tcp_transitory: Duration::from_secs(240),
            tcp_reset: Duration::from_secs(240),
            tcp_incoming_syn: Duration::from_secs(6),
            udp: Duration::from_secs(300),
            icmp: Duration::from_secs(60),
        }
    }
}

/// Everything the engine is configured with apart from its bindings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Idle timeouts.
    pub timeouts: Timeouts,
    /// Mapping behaviour.
    pub mapping: Mapping,
    /// Filtering behaviour (TCP and UDP alike; ICMP echo is always matched
    /// on its full session).
    pub filtering: Filtering,
    /// External ports handed out, per (ENI address, protocol).
    pub port_range: RangeInclusive<u16>,
    /// A freed external port is not used for a new mapping for this long
    /// (RFC 6888 REQ-8).
    pub port_quarantine: Duration,
    /// Keep the environment's own port when it is free (RFC 6056 §4 allows
    /// it; off by default so ports are never predictable).
    pub port_preservation: bool,
    /// Mappings one environment may hold per protocol (RFC 6888 REQ-4).
    pub env_port_quota: u32,
    /// Sessions one environment may hold (RFC 6888 REQ-5).
    pub env_session_quota: u32,
    /// Sessions opened from the VPC (endpoint-independent or
    /// address-dependent filtering) that one environment may hold before it
    /// answers them. They do not count against the two quotas above and a
    /// new outbound flow may recycle them, so a VPC host spraying an
    /// environment's mapping from many ports never crowds out its flows.
    pub env_inbound_quota: u32,
    /// Ports in use on one ENI address past which the engine raises
    /// [`crate::engine::Event::HighWater`] (AWS sizes an ENI at 65,000).
    pub high_water: u32,
    /// Session table capacity (preallocated).
    pub max_sessions: usize,
    /// Answer a new flow that cannot get a port, a table slot or its quota
    /// with ICMP destination unreachable (code 13, administratively
    /// prohibited; RFC 5508 REQ-8), so the environment's connect fails at
    /// once instead of retransmitting into a full gateway.
    pub icmp_on_exhaustion: bool,
    /// Answer TTL expiry with ICMP time exceeded (RFC 5508 §7.2).
    pub icmp_time_exceeded: bool,
    /// Seed of the port randomisation and the flow hash.
    pub seed: u64,
    /// ARP resolver settings (outside port).
    pub arp: crate::arp::ArpConfig,
    /// Fragment handling settings.
    pub frag: crate::frag::FragConfig,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            timeouts: Timeouts::default(),
            mapping: Mapping::EndpointIndependent,
            filtering: Filtering::EndpointIndependent,
            port_range: 1024..=65535,
            port_quarantine: Duration::from_secs(120),
            port_preservation: false,
            env_port_quota: 16_384,
            env_session_quota: 65_536,
            env_inbound_quota: 1024,
            high_water: 65_000,
            max_sessions: 1 << 18,
            icmp_on_exhaustion: true,
            icmp_time_exceeded: true,
            seed: 0x6879_7065_7270_6c6e,
            arp: Default::default(),
            frag: Default::default(),
        }
    }
}

impl EngineConfig {
    /// The AWS NAT Gateway-like profile: symmetric mapping, address-and-port
    /// dependent filtering, 350 s idle timeouts, silent on exhaustion.
    pub fn aws() -> EngineConfig {
        let idle = Duration::from_secs(350);
        EngineConfig {
            timeouts: Timeouts { tcp_established: idle, udp: idle, ..Timeouts::default() },
            mapping: Mapping::AddressAndPortDependent,
            filtering: Filtering::AddressAndPortDependent,
            icmp_on_exhaustion: false,
            ..EngineConfig::default()
        }
    }

    /// Checks the settings; the error names the field and the reason.
    pub fn validate(&self) -> Result<(), EngineConfigError> {
        let err = |field: &'static str, reason: &'static str| Err(EngineConfigError { field, reason });
        if self.timeouts.udp < Duration::from_secs(120) {
            return err("timeouts.udp", "must be at least 120 s (RFC 4787 REQ-5)");
        }
        if self.timeouts.icmp.is_zero() {
            return err("timeouts.icmp", "must be positive");
        }
        for (field, d) in [
            ("timeouts.tcp_established", self.timeouts.tcp_established),
            ("timeouts.tcp_transitory", self.timeouts.tcp_transitory),
            ("timeouts.tcp_reset", self.timeouts.tcp_reset),
            ("timeouts.tcp_incoming_syn", self.timeouts.tcp_incoming_syn),
        ] {
            if d.is_zero() {
                return err(field, "must be positive");
            }
        }
        if self.port_range.is_empty() || *self.port_range.start() == 0 {
            return err("port_range", "must be a non-empty range of ports 1-65535");
        }
        if self.mapping == Mapping::AddressAndPortDependent && self.filtering != Filtering::AddressAndPortDependent {
            return err(
                "filtering",
                "address-and-port-dependent mapping reuses ports across destinations, so it needs address-and-port-dependent filtering",
            );
        }
        if self.max_sessions == 0 || self.max_sessions > (1 << 26) {
            return err("max_sessions", "must be between 1 and 67,108,864");
        }
        if self.env_port_quota == 0 {
            return err("env_port_quota", "must be positive");
        }
        if self.env_session_quota == 0 {
            return err("env_session_quota", "must be positive");
        }
        if self.env_inbound_quota == 0 {
            return err("env_inbound_quota", "must be positive");
        }
        self.validate_bounds()
    }

    /// Upper bounds: sizes that are allocated up front, and durations that
    /// are added to clocks. A value past them is a mistake (a size would
    /// abort allocating, a duration overflow a deadline).
    fn validate_bounds(&self) -> Result<(), EngineConfigError> {
        let err = |field: &'static str, reason: &'static str| Err(EngineConfigError { field, reason });
        const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
        for (field, d, max, reason) in [
            ("timeouts.tcp_established", self.timeouts.tcp_established, YEAR, "must be at most one year (31536000 s)"),
            ("timeouts.tcp_transitory", self.timeouts.tcp_transitory, YEAR, "must be at most one year (31536000 s)"),
            ("timeouts.tcp_reset", self.timeouts.tcp_reset, YEAR, "must be at most one year (31536000 s)"),
            (
                "timeouts.tcp_incoming_syn",
                self.timeouts.tcp_incoming_syn,
                YEAR,
                "must be at most one year (31536000 s)",
            ),
            ("timeouts.udp", self.timeouts.udp, YEAR, "must be at most one year (31536000 s)"),
            ("timeouts.icmp", self.timeouts.icmp, YEAR, "must be at most one year (31536000 s)"),
            ("port_quarantine", self.port_quarantine, Duration::from_secs(86_400), "must be at most one day (86400 s)"),
            ("arp.reachable", self.arp.reachable, Duration::from_secs(86_400), "must be at most one day (86400 s)"),
            ("arp.retry", self.arp.retry, Duration::from_secs(60), "must be at most 60000 ms"),
            ("frag.timeout", self.frag.timeout, Duration::from_secs(120), "must be at most 120 s"),
        ] {
            if d > max {
                return err(field, reason);
            }
        }
        for (field, v, max, reason) in [
            ("frag.max_datagrams", self.frag.max_datagrams, 1 << 20, "must be at most 1048576"),
            ("frag.max_buffered_bytes", self.frag.max_buffered_bytes, 1 << 30, "must be at most 1073741824 (1 GiB)"),
            ("frag.max_fragments", self.frag.max_fragments, 8192, "must be at most 8192 (64 KiB in 8-byte pieces)"),
            (
                "frag.frame_capacity",
                self.frag.frame_capacity,
                MAX_FRAME,
                "must be at most 65553 (a 64 KiB datagram and its Ethernet header)",
            ),
            ("arp.max_entries", self.arp.max_entries, 1 << 20, "must be at most 1048576"),
            ("arp.queue_frames", self.arp.queue_frames, 1 << 16, "must be at most 65536"),
            ("arp.queue_per_ip", self.arp.queue_per_ip, 1 << 16, "must be at most 65536"),
            (
                "arp.frame_capacity",
                self.arp.frame_capacity,
                MAX_FRAME,
                "must be at most 65553 (a 64 KiB datagram and its Ethernet header)",
            ),
        ] {
            if v > max {
                return err(field, reason);
            }
        }
        if self.arp.queue_frames.saturating_mul(self.arp.frame_capacity) > 1 << 30 {
            return err("arp.queue_frames", "must be at most 1 GiB divided by arp.frame_capacity");
        }
        Ok(())
    }
}

/// The longest frame any buffer holds: a 65,535-byte datagram with its
/// Ethernet header and a VLAN tag.
pub const MAX_FRAME: usize = 65_535 + 18;

/// An engine setting that is not acceptable, and why.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct EngineConfigError {
    /// The field, as a dotted path.
    pub field: &'static str,
    /// Why it is rejected.
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_rfc_sized() {
        let c = EngineConfig::default();
        c.validate().unwrap();
        EngineConfig::aws().validate().unwrap();
        assert_eq!(c.mapping, Mapping::EndpointIndependent);
        assert_eq!(c.timeouts.udp, Duration::from_secs(300));
        assert_eq!(c.port_range, 1024..=65535);
    }

    #[test]
    fn rejects_short_udp_timer_and_bad_combinations() {
        let mut c = EngineConfig::default();
        c.timeouts.udp = Duration::from_secs(119);
        assert_eq!(c.validate().unwrap_err().field, "timeouts.udp");
        let c = EngineConfig { mapping: Mapping::AddressAndPortDependent, ..EngineConfig::default() };
        assert_eq!(c.validate().unwrap_err().field, "filtering");
        #[allow(clippy::reversed_empty_ranges)]
        let c = EngineConfig { port_range: 2000..=1000, ..EngineConfig::default() };
        let e = c.validate().unwrap_err();
        assert_eq!(e.to_string(), "port_range: must be a non-empty range of ports 1-65535");
    }
}
