//! Run settings from outside the argument list: the `[gateway]` table of a config file ([`GatewayTable`],
//! `--config`) and human durations ([`parse_duration`]).
//!
//! # `--config`
//!
//! The file has the schema of `hyperplane run --config` (`control/core/src/config.rs`, `control/core/examples/gateway.toml`),
//! but the load generator's lab builds its own topology (outside link, VPC, subnet, security groups, attachments,
//! environments), so only the `[gateway]` table is taken (with its sub-tables `timeouts`, `arp`, `frag`); every
//! other table is ignored. Of the `[gateway]` keys, `control_socket` is the lab's own (a per-process path, so a
//! running gateway's socket is never touched); `workers` applies unless `--workers` is given; `port_range` and
//! `max_eni_addresses` apply unless the same flags are given. The result is checked by the gateway's own config
//! parser in the lab's generated config before anything is built: a bad value is an error naming the field
//! (`gateway.timeouts.udp`) and, when it can be found, its line in the file.

use super::{invalid, LoadError};
use control::config;
use std::path::Path;
use std::time::Duration;

/// `[gateway]` keys the lab sets itself.
const LAB_OWNED: &[&str] = &["control_socket"];

/// The `[gateway]` table of a config file (see the module doc).
#[derive(Clone, Debug)]
pub struct GatewayTable {
    /// Where the settings came from (the file's path), for messages and the report.
    pub file: String,
    text: String,
    table: toml::Table,
}

impl GatewayTable {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<GatewayTable, LoadError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::Config {
            file: file.clone(),
            field: "config".into(),
            reason: format!("cannot read: {e}"),
            line: None,
        })?;
        GatewayTable::parse(&file, &text)
    }

    /// Parses a config document; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<GatewayTable, LoadError> {
        let err = |field: &str, reason: String, line: Option<usize>| LoadError::Config {
            file: file.to_string(),
            field: field.to_string(),
            reason,
            line,
        };
        // Malformed TOML is reported as the gateway's parser reports it (field `toml`, with the line); the rest of
        // the document need not be a whole config.
        if let Err(e) = config::parse(text) {
            if e.field == "toml" && e.line.is_some() {
                return Err(err("toml", e.reason, e.line));
            }
        }
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| err("toml", e.message().to_string(), None))?;
        let table = match doc.get("gateway") {
            Some(toml::Value::Table(t)) => t.clone(),
            Some(_) => return Err(err("gateway", "is not a table".into(), line_of_header(text))),
            None => return Err(err("gateway", "the file has no [gateway] table".into(), None)),
        };
        Ok(GatewayTable { file: file.to_string(), text: text.to_string(), table })
    }

    /// The settings as given, without the keys the lab owns.
    pub(crate) fn table(&self) -> toml::Table {
        let mut t = self.table.clone();
        for k in LAB_OWNED {
            t.remove(*k);
        }
        t
    }

    /// An error about `field` (a `gateway.…` path) placed in the file when the key can be found.
    pub(crate) fn error(&self, field: &str, reason: String) -> LoadError {
        LoadError::Config {
            file: self.file.clone(),
            field: field.to_string(),
            reason,
            line: line_of_key(&self.text, field),
        }
    }
}

/// `[gateway]` lines (dotted keys for sub-tables, so they can follow the lab's own `[gateway]` keys) for `t`.
pub(crate) fn gateway_lines(t: &toml::Table) -> String {
    fn walk(prefix: &str, t: &toml::Table, out: &mut String) {
        for (k, v) in t {
            let bare = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            let key = if bare { k.clone() } else { toml::Value::String(k.clone()).to_string() };
            let path = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
            match v {
                toml::Value::Table(sub) => walk(&path, sub, out),
                v => *out += &format!("{path} = {v}\n"),
            }
        }
    }
    let mut out = String::new();
    walk("", t, &mut out);
    out
}

/// The line of the `[gateway]` header.
fn line_of_header(text: &str) -> Option<usize> {
    text.lines().position(|l| l.trim_start().starts_with("[gateway]")).map(|i| i + 1)
}

/// The line where `field` (`gateway.timeouts.udp`) is set: its last key, inside `[gateway]` or the matching
/// sub-table (or as a dotted key there).
fn line_of_key(text: &str, field: &str) -> Option<usize> {
    let mut section = String::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if let Some(h) = l.strip_prefix('[') {
            section = h.split(']').next().unwrap_or("").trim().to_string();
            continue;
        }
        let Some((key, _)) = l.split_once('=') else { continue };
        let key: String = key.split('.').map(|s| s.trim().trim_matches('"')).collect::<Vec<_>>().join(".");
        let full = if section.is_empty() { key } else { format!("{section}.{key}") };
        // The key itself, or an inline table holding it.
        if full == field || field.starts_with(&format!("{full}.")) {
            return Some(i + 1);
        }
    }
    None
}

/// Parses a duration: plain seconds (`600`, `0.5`) or numbers with units `ms`, `s`, `m`/`min`, `h`, one or more
/// (`90s`, `10m`, `2h`, `1h30m`). `field` names it in the error.
pub fn parse_duration(field: &'static str, s: &str) -> Result<Duration, LoadError> {
    let bad = || invalid(field, format!("{s:?} is not a duration (seconds, or e.g. 90s, 10m, 2h, 1h30m)"));
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (num, tail) = rest.split_at(n);
        let u = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(u);
        let v: f64 = num.parse().map_err(|_| bad())?;
        let scale = match unit.trim() {
            "ms" => 1e-3,
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(v * scale).map_err(|_| bad())?;
        rest = tail.trim_start();
    }
    Ok(total)
}

/// A duration for people: `850 ms`, `42 s`, `12 min 30 s`, `2 h 5 min`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if s < 60 {
        let f = d.as_secs_f64();
        if f.fract() < 0.05 {
            format!("{s} s")
        } else {
            format!("{f:.1} s")
        }
    } else if s < 3600 {
        match s % 60 {
            0 => format!("{} min", s / 60),
            r => format!("{} min {r} s", s / 60),
        }
    } else {
        match (s % 3600) / 60 {
            0 => format!("{} h", s / 3600),
            m => format!("{} h {m} min", s / 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_seconds_and_units() {
        let d = |s| parse_duration("duration", s).expect(s);
        assert_eq!(d("600"), Duration::from_secs(600));
        assert_eq!(d("0.5"), Duration::from_millis(500));
        assert_eq!(d("90s"), Duration::from_secs(90));
        assert_eq!(d("10m"), Duration::from_secs(600));
        assert_eq!(d("2h"), Duration::from_secs(7200));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("1h 30min"), Duration::from_secs(5400));
        assert_eq!(d("250ms"), Duration::from_millis(250));
        for bad in ["", "abc", "10x", "-5", "h", "1.2.3s"] {
            assert!(
                matches!(parse_duration("duration", bad), Err(LoadError::Invalid { param: "duration", .. })),
                "{bad:?}"
            );
        }
        assert_eq!(human_duration(Duration::from_secs(5400)), "1 h 30 min");
        assert_eq!(human_duration(Duration::from_secs(750)), "12 min 30 s");
        assert_eq!(human_duration(Duration::from_millis(2500)), "2.5 s");
    }

    #[test]
    fn gateway_table_only_and_dotted_lines() {
        let text =
            "[gateway]\nmax_sessions = 4096\ncontrol_socket = \"/run/x.sock\"\n\n[gateway.timeouts]\nudp = 150\n\n\
                    [outside]\nname = \"whatever\"\n";
        let s = GatewayTable::parse("f.toml", text).expect("parses");
        let lines = gateway_lines(&s.table());
        assert!(lines.contains("max_sessions = 4096\n"), "{lines}");
        assert!(lines.contains("timeouts.udp = 150\n"), "{lines}");
        assert!(!lines.contains("control_socket"), "the lab owns its socket: {lines}");
        assert_eq!(line_of_key(text, "gateway.timeouts.udp"), Some(6));
        assert_eq!(line_of_key(text, "gateway.max_sessions"), Some(2));
        let none = GatewayTable::parse("f.toml", "[outside]\nname = \"x\"\n");
        assert!(matches!(none, Err(LoadError::Config { ref field, .. }) if field == "gateway"), "{none:?}");
        let broken = GatewayTable::parse("f.toml", "[gateway\nx = 1\n");
        assert!(matches!(broken, Err(LoadError::Config { ref field, line: Some(1), .. }) if field == "toml"));
    }
}
