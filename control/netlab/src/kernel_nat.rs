//! The kernel-NAT reference topology that hyperplane is compared with.

use std::net::Ipv4Addr;

use super::{
    delete_namespaces, env_addr, find_tool, ip_batch, sweep_stale, unique, veth_batch_line, LabError, Netns, ENI,
    INSIDE_GATEWAY, MAX_ENVS, SERVER, SERVER_PREFIX_LEN, SERVER_ROUTER, VPC_PREFIX_LEN, VPC_ROUTER,
};

/// The gateway namespace's link towards the VPC router (the masquerade's `oifname`).
pub const GW_OUTSIDE_LINK: &str = "vpc";
/// The link name inside every environment namespace (towards the gateway).
pub const ENV_LINK: &str = "gw";

/// Prefix length of [`INSIDE_GATEWAY`] on the inside link of [`KernelNat::build_with_tap`]: `172.16.0.0/16`.
pub const INSIDE_PREFIX_LEN: u8 = 16;

/// The nftables ruleset installed in the gateway namespace.
const RULESET: &str = "table ip hp {
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"vpc\" masquerade
  }
}
";

/// A router namespace doing NAT with the kernel (nftables masquerade), wired with the same address plan as the
/// hyperplane gateway (see the parent module doc):
///
/// * `gw`: `ip_forward=1`; link `vpc` = [`ENI`]/24 with default route via [`VPC_ROUTER`]; link `e{i}` per environment
///   with [`INSIDE_GATEWAY`]/32 and a /32 route to [`env_addr`]`(i)`; nftables `oifname "vpc" masquerade`.
/// * VPC namespace: `ip_forward=1`; link `gw` = [`VPC_ROUTER`]/24, link `srv` = [`SERVER_ROUTER`]/24, and no route
///   to `172.16.0.0/12`, so only masqueraded traffic can get an answer.
/// * server namespace: link `vpc` = [`SERVER`]/24, default via [`SERVER_ROUTER`].
/// * environment `i`: link `gw` = [`env_addr`]`(i)`/32, on-link route to [`INSIDE_GATEWAY`], default via it.
///
/// Namespaces are named `{unique(tag)}-gw`, `-vpc`, `-srv`, `-e{i}`, so [`sweep_stale`]`(tag)` (which `build` calls
/// first) removes those of crashed runs. Drop removes every namespace, and with them every link.
#[derive(Debug)]
pub struct KernelNat {
    gw: Netns,
    vpc: Netns,
    server: Netns,
    envs: Vec<Netns>,
}

impl KernelNat {
    /// Builds the topology with `envs` environments. `offloads: false` turns TSO, GSO, GRO and TX checksumming off on
    /// every veth end (needs `ethtool`). Needs `ip`, `nft` and `sysctl`; a missing one is reported before anything is
    /// created. About `envs + 10` processes in all, thanks to `ip -batch`.
    pub fn build(tag: &str, envs: usize, offloads: bool) -> Result<KernelNat, LabError> {
        if envs > MAX_ENVS {
            return Err(LabError::Invalid(format!("{envs} environments exceed the address plan ({MAX_ENVS})")));
        }
        for tool in ["ip", "nft", "sysctl"] {
            find_tool(tool)?;
        }
        if !offloads {
            find_tool("ethtool")?;
        }
        sweep_stale(tag);
        let base = unique(tag);
        let mut names = vec![format!("{base}-gw"), format!("{base}-vpc"), format!("{base}-srv")];
        names.extend((0..envs).map(|i| format!("{base}-e{i}")));
        let mut all = Netns::add_many(&names)?;
        let env_nss = all.split_off(3);
        let mut it = all.into_iter();
        let (Some(gw), Some(vpc), Some(server)) = (it.next(), it.next(), it.next()) else {
            unreachable!("add_many returns one namespace per name")
        };
        // From here on Drop cleans up whatever fails.
        let lab = KernelNat { gw, vpc, server, envs: env_nss };
        lab.wire(offloads)?;
        Ok(lab)
    }

    /// Builds the topology with no veth environments and the root-namespace link `tap` (e.g. a load generator's TAP,
    /// whose other side emulates many environments) moved into the gateway namespace as its inside link: there it
    /// gets [`INSIDE_GATEWAY`]`/16` (so `172.16.0.0/16`, every [`env_addr`], is on-link through it) and is brought
    /// up. Offloads stay on. The masquerade is the same as [`KernelNat::build`]'s (out of [`GW_OUTSIDE_LINK`]).
    /// Drop deletes the gateway namespace, and with it the moved link.
    pub fn build_with_tap(tag: &str, tap: &str) -> Result<KernelNat, LabError> {
        let lab = KernelNat::build(tag, 0, true)?;
        super::move_link(tap, &lab.gw)?;
        lab.gw.ip_batch(&[
            format!("addr add {INSIDE_GATEWAY}/{INSIDE_PREFIX_LEN} dev {tap}"),
            format!("link set {tap} up"),
        ])?;
        Ok(lab)
    }

    /// Builds the topology with no veth environments and the root-namespace links `taps` (e.g. one load generator
    /// TAP per emulated environment) moved into the gateway namespace, `taps[i]` as environment `i`'s inside link,
    /// wired like [`KernelNat::build`]'s veth environments: [`INSIDE_GATEWAY`]`/32` on it and a /32 route to
    /// [`env_addr`]`(i)` through it, up, `txqueuelen` frames. Offloads stay on. Drop deletes the gateway namespace,
    /// and with it the moved links.
    pub fn build_with_taps(tag: &str, taps: &[String], txqueuelen: u32) -> Result<KernelNat, LabError> {
        if taps.len() > MAX_ENVS {
            return Err(LabError::Invalid(format!("{} environments exceed the address plan ({MAX_ENVS})", taps.len())));
        }
        let lab = KernelNat::build(tag, 0, true)?;
        let moves: Vec<String> = taps.iter().map(|t| format!("link set {t} netns {}", lab.gw.name())).collect();
        ip_batch(None, &moves)?;
        let mut cmds = Vec::with_capacity(3 * taps.len());
        for (i, t) in taps.iter().enumerate() {
            cmds.push(format!("addr add {INSIDE_GATEWAY}/32 dev {t}"));
            cmds.push(format!("link set {t} up txqueuelen {txqueuelen}"));
            cmds.push(format!("route add {}/32 dev {t} src {INSIDE_GATEWAY}", env_addr(i)));
        }
        lab.gw.ip_batch(&cmds)?;
        Ok(lab)
    }

    fn wire(&self, offloads: bool) -> Result<(), LabError> {
        let (gw, vpc, server) = (&self.gw, &self.vpc, &self.server);
        let mut links = vec![
            veth_batch_line(GW_OUTSIDE_LINK, Some(gw), "gw", Some(vpc)),
            veth_batch_line("srv", Some(vpc), "vpc", Some(server)),
        ];
        links.extend(
            self.envs
                .iter()
                .enumerate()
                .map(|(i, env)| veth_batch_line(&Self::gw_env_link(i), Some(gw), ENV_LINK, Some(env))),
        );
        ip_batch(None, &links)?;

        let mut gw_cmds = vec![
            "link set lo up".to_owned(),
            format!("addr add {ENI}/{VPC_PREFIX_LEN} dev {GW_OUTSIDE_LINK}"),
            format!("link set {GW_OUTSIDE_LINK} up"),
            format!("route add default via {VPC_ROUTER}"),
        ];
        for i in 0..self.envs.len() {
            let link = Self::gw_env_link(i);
            gw_cmds.push(format!("addr add {INSIDE_GATEWAY}/32 dev {link}"));
            gw_cmds.push(format!("link set {link} up"));
            gw_cmds.push(format!("route add {}/32 dev {link} src {INSIDE_GATEWAY}", env_addr(i)));
        }
        gw.ip_batch(&gw_cmds)?;
        vpc.ip_batch(&[
            "link set lo up".to_owned(),
            format!("addr add {VPC_ROUTER}/{VPC_PREFIX_LEN} dev gw"),
            "link set gw up".to_owned(),
            format!("addr add {SERVER_ROUTER}/{SERVER_PREFIX_LEN} dev srv"),
            "link set srv up".to_owned(),
        ])?;
        server.ip_batch(&[
            "link set lo up".to_owned(),
            format!("addr add {SERVER}/{SERVER_PREFIX_LEN} dev vpc"),
            "link set vpc up".to_owned(),
            format!("route add default via {SERVER_ROUTER}"),
        ])?;
        for (i, env) in self.envs.iter().enumerate() {
            env.ip_batch(&[
                "link set lo up".to_owned(),
                format!("addr add {}/32 dev {ENV_LINK}", env_addr(i)),
                format!("link set {ENV_LINK} up"),
                format!("route add {INSIDE_GATEWAY}/32 dev {ENV_LINK}"),
                format!("route add default via {INSIDE_GATEWAY}"),
            ])?;
        }
        gw.sysctl("net.ipv4.ip_forward", "1")?;
        vpc.sysctl("net.ipv4.ip_forward", "1")?;
        gw.exec(&["nft", RULESET])?;

        if !offloads {
            let off = |ns: &Netns, link: &str| {
                ns.exec(&["ethtool", "-K", link, "tso", "off", "gso", "off", "gro", "off", "tx", "off"]).map(drop)
            };
            off(gw, GW_OUTSIDE_LINK)?;
            off(vpc, "gw")?;
            off(vpc, "srv")?;
            off(server, "vpc")?;
            for (i, env) in self.envs.iter().enumerate() {
                off(gw, &Self::gw_env_link(i))?;
                off(env, ENV_LINK)?;
            }
        }
        Ok(())
    }

    /// The gateway namespace's link towards environment `i`.
    pub fn gw_env_link(i: usize) -> String {
        format!("e{i}")
    }

    /// Number of environments.
    pub fn envs(&self) -> usize {
        self.envs.len()
    }

    /// Environment `i`'s namespace (its address is [`env_addr`]`(i)`).
    ///
    /// # Panics
    /// If `i >= self.envs()`.
    pub fn env_ns(&self, i: usize) -> &Netns {
        &self.envs[i]
    }

    /// The server's namespace.
    pub fn server_ns(&self) -> &Netns {
        &self.server
    }

    /// The VPC router's namespace.
    pub fn vpc_ns(&self) -> &Netns {
        &self.vpc
    }

    /// The NAT router's namespace.
    pub fn gw_ns(&self) -> &Netns {
        &self.gw
    }

    /// [`SERVER`].
    pub fn server_addr(&self) -> Ipv4Addr {
        SERVER
    }

    /// [`ENI`], the address every environment is masqueraded to.
    pub fn eni_addr(&self) -> Ipv4Addr {
        ENI
    }
}

impl Drop for KernelNat {
    fn drop(&mut self) {
        // One batch for all namespaces; the fields' own Drop then sees empty names and does nothing.
        let mut names = vec![
            std::mem::take(&mut self.gw.name),
            std::mem::take(&mut self.vpc.name),
            std::mem::take(&mut self.server.name),
        ];
        names.extend(self.envs.iter_mut().map(|ns| std::mem::take(&mut ns.name)));
        delete_namespaces(&names);
    }
}
