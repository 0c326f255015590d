//! A validated config turned into what the rest needs: the engine's
//! settings, an environment's subnet.

use super::*;

impl Config {
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

    /// The workers' I/O settings from `[gateway.io]`.
    pub fn io_settings(&self) -> dataplane_io::IoSettings {
        let io = &self.gateway.io;
        dataplane_io::IoSettings {
            backend: match io.backend {
                IoBackend::Auto => dataplane_io::Backend::Auto,
                IoBackend::Uring => dataplane_io::Backend::Uring,
                IoBackend::Syscalls => dataplane_io::Backend::Syscalls,
            },
            busy_poll: Duration::from_micros(io.busy_poll_us.min(MAX_BUSY_POLL_US)),
            // Checked by `validate` (every CPU one this process may run on).
            cpus: dataplane_io::WorkerCpus::new(&io.cpus).unwrap_or_default(),
        }
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
