//! The value types of the config: MAC addresses, port ranges, CIDRs and
//! addresses, each parsed from its string form with an error that says why.

use super::*;

/// Parses a MAC address written `02:68:70:00:00:01`: six two-digit hex
/// octets, unicast and not all zero.
pub fn parse_mac(s: &str) -> Result<Mac, &'static str> {
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
    Ok(out)
}

/// A MAC address as `parse_mac` reads it: `02:68:70:00:00:01`.
pub fn format_mac(m: &Mac) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

pub(super) fn de_opt_mac<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Mac>, D::Error> {
    let s = String::deserialize(d)?;
    parse_mac(&s).map(Some).map_err(de::Error::custom)
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
pub(super) fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let c: Cidr = s.parse().map_err(|e: dataplane::policy::CidrParseError| e.to_string())?;
    let (addr, _) = s.split_once('/').unwrap_or((s, ""));
    if addr.trim().parse::<Ipv4Addr>().ok() != Some(c.network()) {
        return Err(format!("host bits are set: the prefix is {c}"));
    }
    Ok(c)
}

pub(super) fn de_cidr<'de, D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
    let s = String::deserialize(d)?;
    parse_cidr(&s).map_err(de::Error::custom)
}

pub(super) fn de_opt_cidr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cidr>, D::Error> {
    de_cidr(d).map(Some)
}

pub(super) fn de_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Addr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| de::Error::custom(format!("expected an IPv4 address such as 10.0.0.1, got {s:?}")))
}

pub(super) fn de_opt_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
    de_ip(d).map(Some)
}

pub(super) fn de_ips<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv4Addr>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .map(|s| s.parse().map_err(|_| format!("expected IPv4 addresses such as 10.0.0.1, got {s:?}")))
        .collect::<Result<_, _>>()
        .map_err(de::Error::custom)
}
