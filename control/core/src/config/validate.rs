//! Validation: every field checked, each error naming the field and the
//! reason.

use super::*;

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
        "arp.reachable" => "arp.reachable_secs",
        "arp.retry" => "arp.retry_ms",
        "frag.timeout" => "frag.timeout_secs",
        f => f,
    };
    format!("gateway.{f}")
}

/// `gateway.io.cpus`: none listed twice, each one this process may run on
/// (its affinity mask, as `taskset` or a cgroup's cpuset left it).
fn check_worker_cpus(cpus: &[usize]) -> Result<(), String> {
    for (i, c) in cpus.iter().enumerate() {
        if cpus[..i].contains(c) {
            return Err(format!("CPU {c} is listed twice"));
        }
    }
    if cpus.is_empty() {
        return Ok(());
    }
    let allowed =
        rustix::thread::sched_getaffinity(None).map_err(|e| format!("cannot read this process's CPUs: {e}"))?;
    let may: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| allowed.is_set(c)).collect();
    match cpus.iter().find(|&&c| !may.contains(&c)) {
        Some(c) => {
            let list: Vec<String> = may.iter().map(usize::to_string).collect();
            Err(format!("CPU {c} is not one this process may run on (it may run on {})", list.join(", ")))
        }
        None => Ok(()),
    }
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
        // Upper bounds: durations are added to clocks, counts size tables.
        for (field, v, max) in [
            ("gateway.eni_quota", u64::from(g.eni_quota), 100_000),
            ("gateway.max_eni_addresses", u64::from(g.max_eni_addresses), 4096),
            ("gateway.idle_reclaim_secs", g.idle_reclaim_secs, 10 * 365 * 86_400),
            ("gateway.provisioning_delay_ms", g.provisioning_delay_ms, 3_600_000),
            ("gateway.drain_limit_secs", g.drain_limit_secs, 365 * 86_400),
        ] {
            if v > max {
                return fail(field, format!("must be at most {max}"));
            }
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
        if g.io.busy_poll_us > MAX_BUSY_POLL_US {
            return fail(
                "gateway.io.busy_poll_us",
                format!("{} is more than {MAX_BUSY_POLL_US} microseconds", g.io.busy_poll_us),
            );
        }
        if let Err(reason) = check_worker_cpus(&g.io.cpus) {
            return fail("gateway.io.cpus", reason);
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
        if o.fanout.is_some() && o.kind != OutsideKind::AfPacket {
            return fail("outside.fanout", "only for kind = \"af-packet\" (a TAP outside has one queue per worker)");
        }
        if o.ring.is_some() && o.kind != OutsideKind::AfPacket {
            return fail("outside.ring", "only for kind = \"af-packet\" (a TAP outside has no packet rings)");
        }
        if o.ring == Some(true) && o.fanout == Some(false) {
            return fail("outside.ring", "needs fanout = true (each worker has its own ring in the fanout group)");
        }
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
            match (a.kind, &a.socket) {
                (AttachmentKind::VhostUser, None) => {
                    return fail(format!("attachments[{i}].socket"), "required for kind = \"vhost-user\"");
                }
                (AttachmentKind::VhostUser, Some(p)) if p.as_os_str().is_empty() => {
                    return fail(format!("attachments[{i}].socket"), "an empty path");
                }
                (AttachmentKind::VhostUser, Some(_)) | (_, None) => {}
                (_, Some(_)) => {
                    return fail(format!("attachments[{i}].socket"), "only for kind = \"vhost-user\"");
                }
            }
            if a.ring.is_some() && a.kind != AttachmentKind::AfPacket {
                return fail(
                    format!("attachments[{i}].ring"),
                    "only for kind = \"af-packet\" (a TAP or vhost-user attachment has no packet rings)",
                );
            }
            if let Some(n) = a.ring_slots {
                let field = format!("attachments[{i}].ring_slots");
                if a.kind != AttachmentKind::AfPacket || a.ring == Some(false) {
                    return fail(field, "only for kind = \"af-packet\" on rings (ring = false has no slots)");
                }
                if !(MIN_RING_SLOTS..=MAX_RING_SLOTS).contains(&n) {
                    return fail(field, format!("{n} is outside {MIN_RING_SLOTS}..={MAX_RING_SLOTS}"));
                }
            }
            if let Some(p) = &a.socket {
                if let Some(j) = self.attachments[..i].iter().position(|b| b.socket.as_ref() == Some(p)) {
                    return fail(
                        format!("attachments[{i}].socket"),
                        format!("{} is also attachments[{j}]'s socket", p.display()),
                    );
                }
            }
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
}
