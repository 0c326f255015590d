//! Any NAT between two links the user made (`--inside IF --outside IF`, each optionally in a named namespace,
//! `--inside-ns`, `--outside-ns`): the load generator builds nothing around it.
//!
//! ```text
//!  environments ── inside link (AF_PACKET) ──▶ the NAT under test ──▶ outside link ── responder (its address)
//!                                                                      (nft ingress counter)
//! ```
//!
//! - The environments send and receive through a promiscuous packet socket on the inside link ([`Port::packet`]),
//!   with the addresses of [`Addresses::net`] (`--env-net`), routing through the NAT's inside address
//!   (`--gateway`, resolved with ARP) to the responder (`--responder`).
//! - The responder binds its address in the outside link's namespace; the address must already be on the outside
//!   link (the load generator changes nothing of the user's links, addresses or routes), and the NAT must route
//!   to it through that link.
//! - Delivered UDP is counted by the kernel on the outside link's ingress (an nftables netdev counter in the
//!   outside namespace, removed afterwards), as for the built-in targets.
//!
//! Nothing is created but the counter's table and the sockets, so nothing is left behind; the namespaces are the
//! user's and are never deleted ([`Netns::existing`], [`Netns::current`]).
//!
//! [`Port::packet`]: super::port::Port::packet

use super::{invalid, Addresses, LoadError};
use netlab::Netns;
use std::net::Ipv4Addr;

/// Where the NAT under test sits, and the addresses to use. See the module doc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalNat {
    /// The inside link's namespace (`None`: the one the load generator runs in).
    pub inside_ns: Option<String>,
    /// The link towards the NAT's inside.
    pub inside: String,
    /// The outside link's namespace (`None`: the one the load generator runs in).
    pub outside_ns: Option<String>,
    /// The link the NAT's outside traffic arrives on.
    pub outside: String,
    /// The environments' addresses, the NAT's inside address and the responder's.
    pub addrs: Addresses,
}

impl ExternalNat {
    /// From the command line's strings: `env_net` as `A.B.C.D/P`; the error names the flag.
    pub fn parse(
        inside: (Option<&str>, &str),
        outside: (Option<&str>, &str),
        env_net: &str,
        gateway: &str,
        responder: &str,
    ) -> Result<ExternalNat, LoadError> {
        let addr = |param: &'static str, s: &str| {
            s.parse::<Ipv4Addr>().map_err(|_| invalid(param, format!("{s:?} is not an IPv4 address")))
        };
        let (net, prefix) = env_net
            .split_once('/')
            .and_then(|(a, p)| Some((a.parse::<Ipv4Addr>().ok()?, p.parse::<u8>().ok()?)))
            .ok_or_else(|| invalid("env_net", format!("{env_net:?} is not an IPv4 network such as 172.16.0.0/16")))?;
        let addrs = Addresses::net(net, prefix, addr("gateway", gateway)?, addr("responder", responder)?)
            .map_err(|(param, reason)| invalid(param, reason))?;
        let x = ExternalNat {
            inside_ns: inside.0.map(str::to_owned),
            inside: inside.1.to_owned(),
            outside_ns: outside.0.map(str::to_owned),
            outside: outside.1.to_owned(),
            addrs,
        };
        x.validate()?;
        Ok(x)
    }

    /// Checks what can be checked without touching the system.
    pub fn validate(&self) -> Result<(), LoadError> {
        for (param, link) in [("inside", &self.inside), ("outside", &self.outside)] {
            dataplane_io::ifreq::validate_name(link).map_err(|e| invalid(param, e.to_string()))?;
        }
        if self.inside == self.outside && self.inside_ns == self.outside_ns {
            return Err(invalid(
                "outside",
                format!("{} is the inside link too: the NAT sits between two", self.inside),
            ));
        }
        Ok(())
    }

    /// The namespaces (inside, outside), checked to exist and to hold their links, and the responder's address
    /// checked to be on the outside link.
    pub(crate) fn open(&self) -> Result<(Netns, Netns), LoadError> {
        let ns = |param: &'static str, name: &Option<String>| match name {
            Some(n) => Netns::existing(n).map_err(|e| invalid(param, e.to_string())),
            None => Ok(Netns::current()),
        };
        let (inside, outside) = (ns("inside_ns", &self.inside_ns)?, ns("outside_ns", &self.outside_ns)?);
        let addrs_of = |param: &'static str, ns: &Netns, link: &str| {
            let out = ns
                .ip(&["-j", "-4", "addr", "show", "dev", link])
                .map_err(|_| invalid(param, format!("no link {link} in {}", where_(ns))))?;
            Ok::<_, LoadError>(local_addrs(&out.stdout))
        };
        addrs_of("inside", &inside, &self.inside)?;
        let server = self.addrs.server;
        if !addrs_of("outside", &outside, &self.outside)?.contains(&server) {
            return Err(invalid(
                "responder",
                format!(
                    "{server} is not an address of {} in {} (add it: ip addr add {server}/32 dev {}; the NAT must \
                     route it there)",
                    self.outside,
                    where_(&outside),
                    self.outside
                ),
            ));
        }
        Ok((inside, outside))
    }
}

/// "namespace NAME" or "this namespace".
fn where_(ns: &Netns) -> String {
    if ns.name().is_empty() {
        "this namespace".into()
    } else {
        format!("namespace {}", ns.name())
    }
}

/// The IPv4 addresses in `ip -j addr show` output.
fn local_addrs(json: &[u8]) -> Vec<Ipv4Addr> {
    let v: serde_json::Value = serde_json::from_slice(json).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().into_iter().flatten())
        .filter_map(|a| a["local"].as_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_bad_ones_name_the_flag() {
        let p = |net: &str, gw: &str, resp: &str, out: &str| {
            ExternalNat::parse((Some("lan"), "in0"), (None, out), net, gw, resp)
        };
        let x = p("192.168.0.0/24", "192.168.0.1", "198.51.100.7", "out0").expect("valid");
        assert_eq!(x.addrs.env(0), Ipv4Addr::new(192, 168, 0, 2));
        assert_eq!((x.inside_ns.as_deref(), x.outside_ns.as_deref()), (Some("lan"), None));
        let param = |r: Result<ExternalNat, LoadError>| match r {
            Err(LoadError::Invalid { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(param(p("192.168.0.0", "192.168.0.1", "198.51.100.7", "out0")), "env_net");
        assert_eq!(param(p("192.168.0.0/24", "192.168.1.1", "198.51.100.7", "out0")), "gateway");
        assert_eq!(param(p("192.168.0.0/24", "192.168.0.1", "nope", "out0")), "responder");
        assert_eq!(param(p("192.168.0.0/24", "192.168.0.1", "192.168.0.9", "out0")), "responder");
        assert_eq!(param(p("192.168.0.0/24", "192.168.0.1", "198.51.100.7", "an/interface/name")), "outside");
        let same = ExternalNat::parse((None, "x0"), (None, "x0"), "10.0.0.0/8", "10.0.0.1", "192.0.2.1");
        assert_eq!(param(same), "outside");
    }

    #[test]
    fn addresses_are_read_from_ip_json() {
        let j = br#"[{"ifname":"out0","addr_info":[{"family":"inet","local":"10.0.0.1","prefixlen":24},
                    {"family":"inet","local":"10.1.0.2","prefixlen":32}]}]"#;
        assert_eq!(local_addrs(j), vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 1, 0, 2)]);
        assert!(local_addrs(b"[]").is_empty());
    }
}
