//! A whole shared-ENI world on one machine: our gateway between execution
//! environment namespaces (one TAP each, as Firecracker attaches microVMs)
//! and a VPC namespace with a server behind a router. The demo, the
//! end-to-end tests and the benchmark scripts all build this.
//!
//! ```text
//!  env i ns ── TAP ──┐                     VPC ns (router 10.0.0.1)     server ns
//!  172.16.x.y        │  hyperplane  ── TAP ── 10.0.0.1/24 │ 10.1.0.1 ── veth ── 10.1.0.2
//!  gw 172.16.0.1  ───┘  (this process)        ENI 10.0.0.4 (from IPAM)
//! ```
//!
//! The gateway creates every TAP in the root namespace and keeps their
//! descriptors; the lab moves each TAP's kernel side into its namespace.
//!
//! With [`Options::shared_attachment`] `= Some(n)` the lab instead has ONE
//! attachment carrying `n` environments (addresses [`env_addr`]`(0..n)`),
//! and no environment namespaces: the attachment TAP's kernel side is a port
//! of a Linux bridge (`br0`, no addresses) in a bridge namespace, and
//! [`Lab::attach_to_bridge`] adds another port (the load generator's TAP),
//! so frames flow load generator → bridge → the gateway's attachment.
//!
//! With [`Options::bridged_attachments`] `= Some(n)` the lab has `n`
//! attachments (one environment, [`env_addr`]`(i)`, each, as in the
//! per-namespace mode) and no environment namespaces: attachment `i`'s kernel
//! side is the only gateway port of its own bridge [`bridge_name`]`(i)`
//! (`br{i}`) in the bridge namespace, and [`Lab::attach_to_bridges`] adds the
//! load generator's TAP for environment `i` to it, so each environment only
//! ever sees its own attachment's frames (ARP replies too).
//!
//! Direct attach (`kind = "af-packet"` attachments on interfaces the gateway
//! does not own): with [`Options::direct`] `= Some(names)` on root-namespace
//! interfaces the caller made (a VMM's TAP), one environment each and no
//! environment namespaces; with [`Options::direct_veth`] each environment
//! namespace's link is a veth ([`DIRECT_ENV_LINK`]) whose root-namespace
//! end is the attachment.
//! The VPC namespace routes between the ENI subnet and the server subnet, so
//! a traceroute sees the VPC router as a hop beyond the gateway. Nothing
//! outside the namespaces the lab made is touched, and dropping the lab
//! stops the gateway and deletes them all (also when a test panics).

use crate::{env_addr, ip_batch, move_link, LabError, Netns, INSIDE_GATEWAY, SERVER, SERVER_ROUTER};
use control::config::{self, ConfigError};
use control::gateway::RunningGateway;
use control::runtime::{self, Runtime};
use core::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The VPC router's address on the ENI subnet.
pub const VPC_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The ENI subnet.
pub const SUBNET: &str = "10.0.0.0/24";

/// Why a lab could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LabBuildError {
    /// A namespace or link operation failed.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// The generated config was refused (a bug in the options).
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    /// The gateway did not start.
    #[error(transparent)]
    Start(#[from] runtime::RuntimeError),
    /// The shared ENI did not become active.
    #[error("the shared ENI was not active after {0:?}")]
    NotSettled(Duration),
}

/// What to build.
#[derive(Clone, Debug)]
pub struct Options {
    /// Execution environments (one namespace and one TAP each).
    pub envs: usize,
    /// TAP offloads (virtio-net header, TSO, checksum offload).
    pub offloads: bool,
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// MTU of every TAP, bytes.
    pub mtu: u16,
    /// The security group's egress rules, as a TOML inline array.
    pub egress: String,
    /// Extra `[gateway]` lines (e.g. `port_range = "2000-2009"`).
    pub gateway_extra: String,
    /// Reach the VPC through AF_PACKET on a veth instead of a TAP. The
    /// veth keeps the offloads Linux gives it.
    pub af_packet: bool,
    /// Extra `[outside]` lines (e.g. `fanout = false`).
    pub outside_extra: String,
    /// The second security group's egress rules (`sg-alt`).
    pub alt_egress: String,
    /// The function's security group: `sg-lab` or `sg-alt`.
    pub group: String,
    /// `Some(n)`: `n` environments behind one attachment TAP bridged in a
    /// bridge namespace (see the module doc); `envs` is then ignored and no
    /// environment namespaces are made. `None`: one namespace and TAP per
    /// environment.
    pub shared_attachment: Option<usize>,
    /// `Some(n)`: `n` environments with one attachment each, every attachment
    /// TAP bridged alone (bridge `br{i}`) in a bridge namespace (see the
    /// module doc); `envs` is then ignored and no environment namespaces are
    /// made. Ignored when `shared_attachment` is set.
    pub bridged_attachments: Option<usize>,
    /// `Some(names)`: direct attach: one attachment of kind `"af-packet"`
    /// on each of these existing root-namespace interfaces (a VMM's TAP, a
    /// veth end the caller made and owns), one environment each
    /// ([`env_addr`]`(i)`); nothing is moved and no environment namespaces
    /// are made. Takes precedence over `shared_attachment` and
    /// `bridged_attachments`, except that one name with
    /// `shared_attachment = Some(n)` is one `af-packet` attachment with `n`
    /// environments (e.g. a load generator's link; no bridge namespace).
    pub direct: Option<Vec<String>>,
    /// `Some(sockets)`: one attachment of kind `"vhost-user"` per socket
    /// path (named `vm{i}`; the gateway binds the socket, a VMM connects),
    /// one environment each ([`env_addr`]`(i)`); no TAPs and no
    /// environment namespaces. Takes precedence over every other
    /// attachment option.
    pub vhost_user: Option<Vec<std::path::PathBuf>>,
    /// One-namespace-per-environment mode with direct attach: each
    /// environment namespace's link is a veth ([`DIRECT_ENV_LINK`] inside),
    /// its root-namespace end (named `taps[i]`) the gateway's `af-packet`
    /// attachment. Ignored with `direct`, `shared_attachment` or
    /// `bridged_attachments`.
    pub direct_veth: bool,
    /// Lines added to every `af-packet` attachment's section (e.g.
    /// `ring = false`).
    pub attachment_extra: String,
    /// One-namespace-per-environment mode: environments whose attachment is
    /// in the config but the environment itself is not (yet): an `apply`
    /// with this cleared adds them.
    pub absent_envs: Vec<usize>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            envs: 16,
            offloads: true,
            workers: 0,
            mtu: 1500,
            egress: r#"[ { protocol = "all", destination = "0.0.0.0/0" } ]"#.into(),
            gateway_extra: String::new(),
            af_packet: false,
            outside_extra: String::new(),
            alt_egress: r#"[ { protocol = "all", destination = "0.0.0.0/0" } ]"#.into(),
            group: "sg-lab".into(),
            shared_attachment: None,
            bridged_attachments: None,
            direct: None,
            vhost_user: None,
            direct_veth: false,
            attachment_extra: String::new(),
            absent_envs: Vec::new(),
        }
    }
}

/// A built lab with its gateway running.
pub struct Lab {
    /// The gateway and its control plane (None once stopped).
    runtime: Option<Runtime>,
    /// The shared ENI's address.
    pub eni: Ipv4Addr,
    /// Time from config to an active shared ENI (devices, address, ARP
    /// probe, announcement): the one-time ENI setup.
    pub eni_setup: Duration,
    /// Environment namespaces, by index.
    pub envs: Vec<Netns>,
    /// The VPC router namespace.
    pub vpc: Netns,
    /// The server namespace (address [`SERVER`]).
    pub server: Netns,
    /// TAP names, by environment.
    pub taps: Vec<String>,
    /// The options it was built with.
    pub opts: Options,
    /// The outside device's name.
    pub outside: String,
    /// The bridge namespace (shared- and bridged-attachment modes only).
    pub bridge: Option<Netns>,
}

/// An environment namespace's link with [`Options::direct_veth`].
pub const DIRECT_ENV_LINK: &str = "e0";
/// With [`Options::af_packet`]: the VPC router's end of the veth the
/// gateway's AF_PACKET outside sits on (in the VPC namespace).
pub const VPC_AF_PACKET_LINK: &str = "hplvo";

/// The bridge's name inside the bridge namespace (shared-attachment mode).
pub const BRIDGE: &str = "br0";

/// The bridge of attachment `i` in bridged-attachment mode ([`Options::bridged_attachments`]): `br{i}`.
pub fn bridge_name(i: usize) -> String {
    format!("br{i}")
}

/// The gateway config for a lab (TOML, parsed by the same code as
/// `hyperplane run --config`).
pub fn config_text(opts: &Options, outside: &str, taps: &[String]) -> String {
    let mut t = format!(
        "[gateway]\nworkers = {}\noffloads = {}\ncontrol_socket = \"/run/hyperplane-{}.sock\"\n{}\n\n\
         [outside]\nkind = \"{}\"\nname = \"{outside}\"\nmtu = {}\nrouter = \"{VPC_ROUTER}\"\n{}\n\n\
         [vpc]\ncidr = \"10.0.0.0/16\"\n\n[[subnets]]\nid = \"subnet-a\"\ncidr = \"{SUBNET}\"\n\n\
         [[security_groups]]\nid = \"sg-lab\"\negress = {}\n\n\
         [[security_groups]]\nid = \"sg-alt\"\negress = {}\n\n\
         [[functions]]\nname = \"lab\"\nsubnets = [\"subnet-a\"]\nsecurity_groups = [\"{}\"]\n",
        opts.workers,
        opts.offloads,
        std::process::id(),
        opts.gateway_extra,
        if opts.af_packet { "af-packet" } else { "tap" },
        opts.mtu,
        opts.outside_extra,
        opts.egress,
        opts.alt_egress,
        opts.group,
    );
    if let Some(sockets) = &opts.vhost_user {
        for (i, sock) in sockets.iter().enumerate() {
            t += &format!(
                "\n[[attachments]]\nkind = \"vhost-user\"\nname = \"vm{i}\"\nsocket = \"{}\"\n\
                 gateway = \"{INSIDE_GATEWAY}\"\nmtu = {}\n\n\
                 [[environments]]\nfunction = \"lab\"\naddress = \"{}\"\nattachment = \"vm{i}\"\n",
                sock.display(),
                opts.mtu,
                env_addr(i)
            );
        }
        return t;
    }
    if let (Some(n), Some(tap)) = (opts.shared_attachment, taps.first()) {
        // With `direct`, the one attachment is an `af-packet` one on the caller's interface.
        let kind = if opts.direct.is_some() { "af-packet" } else { "tap" };
        t += &format!(
            "\n[[attachments]]\nkind = \"{kind}\"\nname = \"{tap}\"\ngateway = \"{INSIDE_GATEWAY}\"\nmtu = {}\n",
            opts.mtu
        );
        for i in 0..n {
            t += &format!(
                "\n[[environments]]\nfunction = \"lab\"\naddress = \"{}\"\nattachment = \"{tap}\"\n",
                env_addr(i)
            );
        }
        return t;
    }
    let direct_veth = opts.direct_veth && opts.shared_attachment.is_none() && opts.bridged_attachments.is_none();
    let kind = if opts.direct.is_some() || direct_veth { "af-packet" } else { "tap" };
    let extra = if kind == "af-packet" && !opts.attachment_extra.is_empty() {
        format!("{}\n", opts.attachment_extra)
    } else {
        String::new()
    };
    for tap in taps {
        t += &format!(
            "\n[[attachments]]\nkind = \"{kind}\"\nname = \"{tap}\"\ngateway = \"{INSIDE_GATEWAY}\"\nmtu = {}\n{extra}",
            opts.mtu
        );
    }
    for (i, tap) in taps.iter().enumerate().filter(|(i, _)| !opts.absent_envs.contains(i)) {
        t +=
            &format!("\n[[environments]]\nfunction = \"lab\"\naddress = \"{}\"\nattachment = \"{tap}\"\n", env_addr(i));
    }
    t
}

impl Lab {
    /// Builds the namespaces, starts the gateway and wires its TAPs in.
    pub fn build(opts: &Options) -> Result<Lab, LabBuildError> {
        crate::sweep_stale("hpl");
        let tag = crate::unique("hpl");
        let outside = crate::unique("hpl");
        let vhost = opts.vhost_user.is_some();
        let direct = opts.direct.as_ref().filter(|_| !vhost);
        // A shared attachment with `direct` is one af-packet attachment on the caller's interface.
        let shared_direct = direct.is_some_and(|d| d.len() == 1) && opts.shared_attachment.is_some();
        let shared = if (direct.is_some() && !shared_direct) || vhost { None } else { opts.shared_attachment };
        let bridged = if shared.is_some() || direct.is_some() || vhost { None } else { opts.bridged_attachments };
        let (ntaps, nenvs) = match (direct, shared, bridged) {
            _ if vhost => (0, 0),
            (Some(d), _, _) => (d.len(), 0),
            (None, Some(_), _) => (1, 0),
            (None, None, Some(n)) => (n, 0),
            (None, None, None) => (opts.envs, opts.envs),
        };
        let bridge_ns = (shared.is_some() && !shared_direct) || bridged.is_some();
        let taps: Vec<String> = match direct {
            Some(d) => d.clone(),
            None => (0..ntaps).map(|_| crate::unique("hpl")).collect(),
        };
        let names: Vec<String> = [format!("{tag}v"), format!("{tag}s")]
            .into_iter()
            .chain(bridge_ns.then(|| format!("{tag}b")))
            .chain((0..nenvs).map(|i| format!("{tag}e{i}")))
            .collect();
        let mut nss = Netns::new_many(&names)?.into_iter();
        let (vpc, server) = (nss.next().expect("vpc"), nss.next().expect("server"));
        let bridge = if bridge_ns { nss.next() } else { None };
        let envs: Vec<Netns> = nss.collect();

        // The VPC: a router with the server behind it.
        crate::veth("hplvs0", Some(&vpc), "hplvs1", Some(&server))?;
        ip_batch(Some(&vpc), &["addr add 10.1.0.1/24 dev hplvs0".to_string(), "link set hplvs0 up".to_string()])?;
        ip_batch(
            Some(&server),
            &[
                format!("addr add {SERVER}/24 dev hplvs1"),
                "link set hplvs1 up".to_string(),
                format!("route add default via {SERVER_ROUTER}"),
            ],
        )?;
        vpc.sysctl("net.ipv4.ip_forward", "1")?;

        // AF_PACKET: the outside is a veth whose other end is the router's.
        let vpc_link = if opts.af_packet { VPC_AF_PACKET_LINK.to_string() } else { outside.clone() };
        if opts.af_packet {
            crate::veth(&outside, None, &vpc_link, Some(&vpc))?;
            ip_batch(None, &[format!("link set {outside} up")])?;
        }

        // Direct attach on veths: the gateway opens the root-namespace ends.
        let direct_veth = !vhost && direct.is_none() && bridged.is_none() && shared.is_none() && opts.direct_veth;
        if direct_veth {
            for (i, (tap, ns)) in taps.iter().zip(&envs).enumerate() {
                crate::veth(DIRECT_ENV_LINK, Some(ns), tap, None)?;
                ip_batch(None, &[format!("link set {tap} up")])?;
                ip_batch(
                    Some(ns),
                    &[
                        format!("link set {DIRECT_ENV_LINK} up"),
                        format!("addr add {}/32 dev {DIRECT_ENV_LINK}", env_addr(i)),
                        format!("route add {INSIDE_GATEWAY} dev {DIRECT_ENV_LINK}"),
                        format!("route add default via {INSIDE_GATEWAY}"),
                    ],
                )?;
            }
        }

        // The gateway: config → plan → devices → workers.
        let t0 = Instant::now();
        let cfg = config::parse(&config_text(opts, &outside, &taps))?;
        let rt = Runtime::start(cfg)?;
        let limit = Duration::from_secs(10);
        if !rt.wait_settled(limit) {
            return Err(LabBuildError::NotSettled(limit));
        }
        let eni_setup = t0.elapsed();
        let eni = rt.shared().controller().enis().first().and_then(|e| e.addrs.first().copied());
        let eni = eni.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let lab = Lab {
            runtime: Some(rt),
            eni,
            eni_setup,
            envs,
            vpc,
            server,
            taps,
            opts: opts.clone(),
            outside: outside.clone(),
            bridge,
        };

        // Wire the TAPs' kernel sides into their namespaces.
        if !opts.af_packet {
            move_link(&outside, &lab.vpc)?;
        }
        ip_batch(
            Some(&lab.vpc),
            &[format!("addr add {VPC_ROUTER}/24 dev {vpc_link}"), format!("link set {vpc_link} up")],
        )?;
        if let Some(br) = &lab.bridge {
            // The bridges are plain wires: bridged frames skip the bridge namespace's iptables/arptables hooks
            // (br_netfilter, when loaded), which would otherwise cost every frame a netfilter traversal. The keys
            // are per namespace and absent without br_netfilter, so a failure is ignored.
            let _ = br.exec(&[
                "sysctl",
                "-e",
                "-qw",
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
                "net.bridge.bridge-nf-call-arptables=0",
            ]);
        }
        if direct.is_some() || direct_veth || vhost {
            return Ok(lab);
        }
        if let (Some(br), Some(_)) = (&lab.bridge, bridged) {
            // One bridge per attachment.
            let moves: Vec<String> = lab.taps.iter().map(|t| format!("link set {t} netns {}", br.name())).collect();
            ip_batch(None, &moves)?;
            let mut cmds = Vec::with_capacity(5 * lab.taps.len());
            for (i, tap) in lab.taps.iter().enumerate() {
                let b = bridge_name(i);
                cmds.push(format!("link add {b} type bridge"));
                cmds.push(format!("link set {b} type bridge stp_state 0 forward_delay 0"));
                cmds.push(format!("link set {tap} master {b}"));
                cmds.push(format!("link set {tap} up"));
                cmds.push(format!("link set {b} up"));
            }
            ip_batch(Some(br), &cmds)?;
            return Ok(lab);
        }
        if let Some(br) = &lab.bridge {
            // One attachment, bridged: its kernel side becomes a bridge port.
            let tap = &lab.taps[0];
            ip_batch(None, &[format!("link set {tap} netns {}", br.name())])?;
            ip_batch(
                Some(br),
                &[
                    format!("link add {BRIDGE} type bridge"),
                    format!("link set {BRIDGE} type bridge stp_state 0 forward_delay 0"),
                    format!("link set {tap} master {BRIDGE}"),
                    format!("link set {tap} up"),
                    format!("link set {BRIDGE} up"),
                ],
            )?;
            return Ok(lab);
        }
        let moves: Vec<String> =
            lab.taps.iter().zip(&lab.envs).map(|(t, ns)| format!("link set {t} netns {}", ns.name())).collect();
        ip_batch(None, &moves)?;
        for (i, (tap, ns)) in lab.taps.iter().zip(&lab.envs).enumerate() {
            ip_batch(
                Some(ns),
                &[
                    format!("link set {tap} up"),
                    format!("addr add {}/32 dev {tap}", env_addr(i)),
                    format!("route add {INSIDE_GATEWAY} dev {tap}"),
                    format!("route add default via {INSIDE_GATEWAY}"),
                ],
            )?;
        }
        Ok(lab)
    }

    /// Shared-attachment mode: moves the root-namespace link `link` (e.g. a
    /// load generator's TAP) into the bridge namespace as a port of
    /// [`BRIDGE`] and brings it up. Without a bridge (per-environment mode)
    /// this is [`LabError::Invalid`].
    pub fn attach_to_bridge(&self, link: &str) -> Result<(), LabBuildError> {
        let Some(br) = &self.bridge else {
            return Err(LabError::Invalid(format!("attach_to_bridge({link}): the lab has no shared attachment")).into());
        };
        move_link(link, br)?;
        ip_batch(Some(br), &[format!("link set {link} master {BRIDGE}"), format!("link set {link} up")])?;
        Ok(())
    }

    /// Bridged-attachment mode: moves the root-namespace links `links[i]` (e.g. the load generator's TAP for
    /// environment `i`) into the bridge namespace as ports of [`bridge_name`]`(i)` and brings them up, with
    /// `txqueuelen` (frames) on each. Without bridged attachments, or with more links than attachments, this is
    /// [`LabError::Invalid`].
    pub fn attach_to_bridges(&self, links: &[String], txqueuelen: u32) -> Result<(), LabBuildError> {
        let (Some(br), Some(n)) = (&self.bridge, self.opts.bridged_attachments) else {
            return Err(LabError::Invalid("attach_to_bridges: the lab has no bridged attachments".into()).into());
        };
        if links.len() > n || self.opts.shared_attachment.is_some() {
            return Err(
                LabError::Invalid(format!("attach_to_bridges: {} links for {n} attachments", links.len())).into()
            );
        }
        let moves: Vec<String> = links.iter().map(|l| format!("link set {l} netns {}", br.name())).collect();
        ip_batch(None, &moves)?;
        let mut cmds = Vec::with_capacity(2 * links.len());
        for (i, l) in links.iter().enumerate() {
            cmds.push(format!("link set {l} master {} txqueuelen {txqueuelen}", bridge_name(i)));
            cmds.push(format!("link set {l} up"));
        }
        ip_batch(Some(br), &cmds)?;
        Ok(())
    }

    /// Environment `i`'s link inside its namespace (per-environment mode).
    pub fn env_link(&self, i: usize) -> &str {
        if self.opts.direct_veth && self.opts.direct.is_none() {
            DIRECT_ENV_LINK
        } else {
            &self.taps[i]
        }
    }

    /// This lab's config with some options changed (for `apply`).
    pub fn config_with(&self, change: impl FnOnce(&mut Options)) -> String {
        let mut o = self.opts.clone();
        change(&mut o);
        config_text(&o, &self.outside, &self.taps)
    }

    /// The VPC router's link from the gateway, in the VPC namespace: the
    /// outside TAP, or with [`Options::af_packet`] the veth end
    /// [`VPC_AF_PACKET_LINK`].
    pub fn vpc_link(&self) -> &str {
        if self.opts.af_packet {
            VPC_AF_PACKET_LINK
        } else {
            &self.outside
        }
    }

    /// The running gateway.
    pub fn gateway(&self) -> &RunningGateway {
        &self.runtime().shared().gateway
    }

    /// The gateway with its control plane.
    pub fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("the gateway runs until the lab is dropped")
    }

    /// Stops the gateway (its TAPs go away) and deletes the namespaces.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.stop();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The gateway first, then the namespaces (fields drop after this).
        self.shutdown();
    }
}
