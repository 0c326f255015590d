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

use dataplane::bindings::Mac;
use dataplane::config::{EngineConfig, Filtering, Mapping};
use dataplane::policy::Cidr;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

mod compile;
mod schema;
mod validate;
mod values;

pub use schema::*;
pub use values::*;

/// Most subnets one function may use (AWS Lambda).
pub const MAX_FUNCTION_SUBNETS: usize = 16;
/// Most security groups one function may carry (AWS Lambda).
pub const MAX_FUNCTION_SECURITY_GROUPS: usize = 5;
/// Most rules per direction in one security group (AWS default quota).
pub const MAX_RULES_PER_DIRECTION: usize = 60;
/// Most worker threads.
pub const MAX_WORKERS: usize = 256;
/// Longest busy-poll, microseconds (`gateway.io.busy_poll_us`).
pub const MAX_BUSY_POLL_US: u64 = 1000;
/// Fewest receive slots of an `af-packet` attachment's ring
/// (`attachments[].ring_slots`): a worker's batch.
pub const MIN_RING_SLOTS: u32 = 64;
/// Most receive slots of an `af-packet` attachment's ring.
pub const MAX_RING_SLOTS: u32 = 4096;
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
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}{}", .line.map_or(String::new(), |l| format!(" (line {l})")))]
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

fn fail<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::new(field, reason))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_types_parse() {
        assert_eq!(format_mac(&parse_mac("02:68:70:00:00:01").unwrap()), "02:68:70:00:00:01");
        assert!(parse_mac("01:00:5e:00:00:01").is_err());
        assert!(parse_mac("02:68:70:00:00").is_err());
        assert!(parse_mac("02:68:70:00:00:01:02").is_err());
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
