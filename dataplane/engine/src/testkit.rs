//! Frame builders and checkers for tests, benches, fuzzing and load
//! generators.
//!
//! Every builder writes a complete Ethernet frame with valid IPv4 and
//! transport checksums computed in full (never incrementally), so a test can
//! compare the engine's incremental updates against [`checksums_ok`].

use crate::bindings::{Bindings, Eni, Env, InsidePort, Mac, OutsidePort};
use crate::checksum;
use crate::flow::{ICMP, TCP, UDP};
use crate::policy::{Cidr, Rule, RuleProto, RuleSet};
use crate::wire::{get16, put16, put_ip, ETH_LEN};
use crate::PortId;
use core::net::Ipv4Addr;
use std::sync::Arc;

/// The gateway's MAC on the VPC side in [`Topology`].
pub const OUTSIDE_MAC: Mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// The VPC router's MAC in [`Topology`].
pub const ROUTER_MAC: Mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
/// The VPC router in [`Topology`].
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// A VPC server on the ENI subnet.
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
/// A second VPC server, off-link (through the router).
pub const SERVER2: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 9);
/// The environments' gateway address on every attachment.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);

/// IP header fields a builder lets the caller choose.
#[derive(Copy, Clone, Debug)]
pub struct IpOpts {
    /// TTL.
    pub ttl: u8,
    /// Identification.
    pub ident: u16,
    /// Don't fragment.
    pub df: bool,
    /// More fragments.
    pub mf: bool,
    /// Fragment offset in bytes (multiple of 8).
    pub frag_off: u16,
    /// IP options (length a multiple of 4, at most 40).
    pub options: &'static [u8],
}

impl Default for IpOpts {
    fn default() -> IpOpts {
        IpOpts { ttl: 64, ident: 1, df: false, mf: false, frag_off: 0, options: &[] }
    }
}

/// An Ethernet + IPv4 frame around `payload` (the transport header and data
/// as they should appear, checksum fields already filled in).
pub fn ipv4_frame(
    dst_mac: Mac,
    src_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    o: IpOpts,
    payload: &[u8],
) -> Vec<u8> {
    let hlen = 20 + o.options.len();
    let total = hlen + payload.len();
    let mut f = vec![0u8; ETH_LEN + total];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let h = &mut f[ETH_LEN..];
    h[0] = 0x40 | (hlen / 4) as u8;
    put16(h, 2, total as u16);
    put16(h, 4, o.ident);
    let flags = (u16::from(o.df) << 14) | (u16::from(o.mf) << 13) | (o.frag_off / 8);
    put16(h, 6, flags);
    h[8] = o.ttl;
    h[9] = proto;
    put_ip(h, 12, src);
    put_ip(h, 16, dst);
    h[20..hlen].copy_from_slice(o.options);
    let c = checksum::checksum(&h[..hlen]);
    put16(h, 10, c);
    h[hlen..].copy_from_slice(payload);
    f
}

/// A UDP header and `data`, checksummed for `src` → `dst`.
pub fn udp_segment(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut s = vec![0u8; 8 + data.len()];
    put16(&mut s, 0, sport);
    put16(&mut s, 2, dport);
    let n = s.len() as u16;
    put16(&mut s, 4, n);
    s[8..].copy_from_slice(data);
    let c = match checksum::transport(src, dst, UDP, &s) {
        0 => 0xffff,
        c => c,
    };
    put16(&mut s, 6, c);
    s
}

/// TCP flag bits.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// A 20-byte TCP header and `data`, checksummed for `src` → `dst`.
pub fn tcp_segment(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut s = vec![0u8; 20 + data.len()];
    put16(&mut s, 0, sport);
    put16(&mut s, 2, dport);
    s[4..8].copy_from_slice(&1000u32.to_be_bytes());
    s[12] = 5 << 4;
    s[13] = flags;
    put16(&mut s, 14, 65535);
    s[20..].copy_from_slice(data);
    let c = checksum::transport(src, dst, TCP, &s);
    put16(&mut s, 16, c);
    s
}

/// An ICMP message of `kind`/`code` with the 4-byte `rest` and `data`.
pub fn icmp_message(kind: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut s = vec![0u8; 8 + data.len()];
    s[0] = kind;
    s[1] = code;
    s[4..8].copy_from_slice(&rest);
    s[8..].copy_from_slice(data);
    let c = checksum::checksum(&s);
    put16(&mut s, 2, c);
    s
}

/// An ICMP echo request (`request`) or reply with identifier `ident`.
pub fn echo(request: bool, ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut rest = [0u8; 4];
    rest[..2].copy_from_slice(&ident.to_be_bytes());
    rest[2..].copy_from_slice(&seq.to_be_bytes());
    icmp_message(if request { 8 } else { 0 }, 0, rest, data)
}

/// Whether the IPv4 header checksum and the TCP, UDP or ICMP checksum of a
/// frame's datagram verify when computed in full. For ICMP errors the
/// embedded IP header checksum is checked too. A later fragment's transport
/// checksum is not checked (its header is elsewhere); a first fragment's is
/// not either (it covers bytes not in this frame).
pub fn checksums_ok(frame: &[u8]) -> bool {
    let Ok(ip) = crate::wire::parse_ipv4(frame, ETH_LEN) else {
        return false;
    };
    if ip.is_fragment() {
        return true;
    }
    let seg = &frame[ip.l4()..ip.end()];
    match ip.proto {
        TCP | UDP if seg.len() < if ip.proto == TCP { 20 } else { 8 } => false,
        ICMP if seg.len() < 8 => false,
        TCP => {
            checksum::fold(checksum::sum(checksum::pseudo_header(ip.src, ip.dst, TCP, seg.len() as u16), seg)) == 0xffff
        }
        UDP => {
            get16(seg, 6) == 0
                || checksum::fold(checksum::sum(checksum::pseudo_header(ip.src, ip.dst, UDP, seg.len() as u16), seg))
                    == 0xffff
        }
        ICMP => {
            let ok = checksum::fold(checksum::sum(0, seg)) == 0xffff;
            if ok && crate::wire::is_icmp_error(seg[0]) && seg.len() >= 28 {
                let e = &seg[8..];
                let hl = usize::from(e[0] & 0x0f) * 4;
                return e.len() >= hl && checksum::fold(checksum::sum(0, &e[..hl])) == 0xffff;
            }
            ok
        }
        _ => true,
    }
}

/// Recomputes the IP header checksum and, for a whole datagram, the
/// transport checksum (for an ICMP error the quoted header's first), as far
/// as the frame's own lengths allow.
pub fn fix_checksums(f: &mut [u8]) {
    let o = ETH_LEN;
    if f.len() < o + 20 {
        return;
    }
    let hl = usize::from(f[o] & 0x0f) * 4;
    if hl < 20 || o + hl > f.len() {
        return;
    }
    put16(f, o + 10, 0);
    let c = checksum::checksum(&f[o..o + hl]);
    put16(f, o + 10, c);
    let total = usize::from(get16(f, o + 2));
    if total < hl || o + total > f.len() || get16(f, o + 6) & 0x3fff != 0 {
        return;
    }
    let src = crate::wire::get_ip(f, o + 12);
    let dst = crate::wire::get_ip(f, o + 16);
    let proto = f[o + 9];
    let seg = &mut f[o + hl..o + total];
    match proto {
        TCP if seg.len() >= 20 => {
            put16(seg, 16, 0);
            let c = checksum::transport(src, dst, TCP, seg);
            put16(seg, 16, c);
        }
        UDP if seg.len() >= 8 && get16(seg, 6) != 0 => {
            put16(seg, 6, 0);
            let c = match checksum::transport(src, dst, UDP, seg) {
                0 => 0xffff,
                c => c,
            };
            put16(seg, 6, c);
        }
        ICMP if seg.len() >= 8 => {
            if crate::wire::is_icmp_error(seg[0]) && seg.len() >= 28 {
                let ehl = usize::from(seg[8] & 0x0f) * 4;
                if ehl >= 20 && seg.len() >= 8 + ehl {
                    put16(seg, 18, 0);
                    let c = checksum::checksum(&seg[8..8 + ehl]);
                    put16(seg, 18, c);
                }
            }
            put16(seg, 2, 0);
            let c = checksum::checksum(seg);
            put16(seg, 2, c);
        }
        _ => {}
    }
}

/// A ready-made topology: one outside port on 10.0.0.0/24 with router
/// 10.0.0.1, `attachments` inside ports (1..), `envs` environments
/// 172.16.x.y spread over the attachments round-robin, all bound to ENI 1
/// (address 10.0.0.10) with an allow-all egress rule.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Outside port.
    pub outside: OutsidePort,
    /// Inside ports.
    pub inside: Vec<InsidePort>,
    /// ENIs.
    pub enis: Vec<Eni>,
    /// Environments.
    pub envs: Vec<Env>,
}

impl Topology {
    /// See the type's doc.
    pub fn new(attachments: u16, envs: u32) -> Topology {
        let outside = OutsidePort {
            mac: OUTSIDE_MAC,
            on_link: vec!["10.0.0.0/24".parse().expect("literal prefix")],
            router: Some(ROUTER),
            mtu: 1500,
        };
        let inside = (1..=attachments)
            .map(|i| InsidePort { id: PortId(i), mac: inside_mac(i), gateway: GATEWAY, mtu: 1500 })
            .collect();
        let enis =
            vec![Eni { id: 1, addrs: vec![Ipv4Addr::new(10, 0, 0, 10)], egress: Arc::new(RuleSet::allow_all()) }];
        let envs = (0..envs)
            .map(|i| Env { ip: env_ip(i), port: PortId(1 + (i % u32::from(attachments)) as u16), eni: 1 })
            .collect();
        Topology { outside, inside, enis, envs }
    }

    /// The validated snapshot.
    pub fn bindings(&self) -> Arc<Bindings> {
        Arc::new(
            Bindings::new(self.outside.clone(), self.inside.clone(), self.enis.clone(), self.envs.clone())
                .expect("test topology is valid"),
        )
    }
}

/// The gateway's MAC on inside port `i`.
pub fn inside_mac(i: u16) -> Mac {
    [0x02, 0x00, 0x00, 0x01, (i >> 8) as u8, i as u8]
}

/// The address of environment `i` in [`Topology`]: 172.16.0.0/12 from .2.
pub fn env_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 2)) + i)
}

/// The MAC of environment `i`.
pub fn env_mac(i: u32) -> Mac {
    let b = i.to_be_bytes();
    [0x02, 0xee, b[0], b[1], b[2], b[3]]
}

/// Splits the IPv4 datagram in `frame` into fragments whose IP datagrams
/// are at most `mtu` bytes (the way a sending host fragments), keeping the
/// identification; returns whole Ethernet frames in offset order.
pub fn fragment(frame: &[u8], mtu: usize) -> Vec<Vec<u8>> {
    let hlen = usize::from(frame[ETH_LEN] & 0x0f) * 4;
    let total = usize::from(get16(frame, ETH_LEN + 2));
    let payload = &frame[ETH_LEN + hlen..ETH_LEN + total];
    let step = (mtu - hlen) / 8 * 8;
    let mut out = vec![];
    let mut off = 0;
    while off < payload.len() {
        let end = (off + step).min(payload.len());
        let mut f = frame[..ETH_LEN + hlen].to_vec();
        f.extend_from_slice(&payload[off..end]);
        let h = &mut f[ETH_LEN..];
        put16(h, 2, (hlen + end - off) as u16);
        let mf = u16::from(end < payload.len());
        put16(h, 6, (mf << 13) | (off / 8) as u16);
        put16(h, 10, 0);
        let c = checksum::checksum(&h[..hlen]);
        put16(h, 10, c);
        out.push(f);
        off = end;
    }
    out
}

/// Reassembles the fragments' payload (any order) and returns the whole IP
/// payload, or `None` if there is a hole.
pub fn reassemble(frames: &[Vec<u8>]) -> Option<Vec<u8>> {
    let mut parts: Vec<(usize, &[u8])> = frames
        .iter()
        .map(|f| {
            let hlen = usize::from(f[ETH_LEN] & 0x0f) * 4;
            let total = usize::from(get16(f, ETH_LEN + 2));
            let off = usize::from(get16(f, ETH_LEN + 6) & 0x1fff) * 8;
            (off, &f[ETH_LEN + hlen..ETH_LEN + total])
        })
        .collect();
    parts.sort_by_key(|p| p.0);
    let mut out = vec![];
    for (off, p) in parts {
        if off != out.len() {
            return None;
        }
        out.extend_from_slice(p);
    }
    Some(out)
}

// The engine bench's workload (`benches/engine.rs`, `examples/new_flows.rs`).

/// Small deterministic PRNG (splitmix64) for the shuffles.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Shuffles `v` (Fisher–Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// The bench's remote server `i`: `10.1.(i / 250).(1 + i % 250)`.
pub fn bench_remote(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, (i / 250) as u8, (1 + i % 250) as u8)
}

/// A security group of 20 egress rules, as a real function's might be; the
/// rule the benchmark traffic matches (UDP/TCP 443 to 10.1.0.0/16) is among
/// the last, so a new flow checks most of them.
pub fn bench_security_group() -> RuleSet {
    let p = |s: &str| s.parse::<Cidr>().expect("literal prefix");
    let tcp = |port: u16, dst: &str| Rule { proto: RuleProto::Tcp, ports: port..=port, dst: p(dst) };
    let udp = |port: u16, dst: &str| Rule { proto: RuleProto::Udp, ports: port..=port, dst: p(dst) };
    RuleSet::new(vec![
        udp(53, "10.0.0.2/32"),
        tcp(53, "10.0.0.2/32"),
        tcp(5432, "10.2.0.0/16"),
        tcp(3306, "10.2.0.0/16"),
        tcp(6379, "10.3.0.0/24"),
        tcp(11211, "10.3.1.0/24"),
        tcp(9092, "10.4.0.0/20"),
        tcp(2181, "10.4.16.0/20"),
        Rule { proto: RuleProto::Tcp, ports: 8000..=8099, dst: p("10.5.0.0/16") },
        tcp(27017, "10.6.0.0/16"),
        tcp(5439, "10.7.0.0/16"),
        tcp(9200, "10.8.0.0/16"),
        tcp(80, "52.94.0.0/22"),
        tcp(443, "52.94.0.0/22"),
        tcp(443, "54.239.0.0/16"),
        udp(123, "169.254.169.123/32"),
        Rule { proto: RuleProto::Icmp, ports: 0..=0, dst: p("10.0.0.0/8") },
        udp(443, "10.1.0.0/16"),
        tcp(443, "10.1.0.0/16"),
        tcp(22, "10.9.0.0/24"),
    ])
}
