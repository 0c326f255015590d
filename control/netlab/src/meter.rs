//! Counting by the kernel, independent of any load generator: an nftables netdev ingress counter on a link (what a
//! NAT delivered to the VPC side), a link's MAC and neighbour lookups (to address prebuilt frames), and the
//! machine's steal time (to recognise a noisy run).
//!
//! # Contracts
//!
//! * [`IngressCounter::install`] adds one table, `netdev hpmeter`, in the given namespace, with one chain on the
//!   link's ingress hook (priority -500, before anything else) and one rule: IPv4 UDP to the given destination
//!   address, counted and then dropped (or accepted, see [`Verdict`]). Only that namespace is touched; dropping the
//!   counter deletes the table (deleting the namespace removes it too). The counter counts frames as the link
//!   receives them, whole IPv4 packets in bytes (nftables counts from the network header), so its figure does not
//!   depend on the sender's own bookkeeping.
//! * [`window_rates`] runs a load on another thread and measures it over a window that opens once the counter
//!   moves: (offered frames/s, counted packets/s, the load's result), both rates over the same window.
//! * [`load_average`] is the 1-minute load average (runnable tasks, all CPUs together).
//! * [`Steal`] reads the `cpu` line of `/proc/stat` (units: clock ticks, summed over all CPUs); the steal share of
//!   an interval is steal ticks / all ticks, 0..=1.

use crate::{LabError, Netns};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The nftables table the counter lives in.
pub const TABLE: &str = "hpmeter";

/// What the counting rule does with what it counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Drop it: the VPC side discards, so only the NAT's forwarding is measured.
    Drop,
    /// Let it through (to a responder).
    Accept,
}

/// An nftables netdev ingress counter of UDP to one address, on one link (see the module doc).
#[derive(Debug)]
pub struct IngressCounter<'a> {
    ns: &'a Netns,
    link: String,
}

impl<'a> IngressCounter<'a> {
    /// Installs the counter in `ns` on `link` for IPv4 UDP to `daddr`. Replaces an earlier one in that namespace.
    pub fn install(
        ns: &'a Netns,
        link: &str,
        daddr: Ipv4Addr,
        verdict: Verdict,
    ) -> Result<IngressCounter<'a>, LabError> {
        crate::find_tool("nft")?;
        let _ = ns.exec(&["nft", "delete", "table", "netdev", TABLE]);
        let v = match verdict {
            Verdict::Drop => "drop",
            Verdict::Accept => "accept",
        };
        let ruleset = format!(
            "table netdev {TABLE} {{\n  counter c {{ }}\n  chain in {{\n    type filter hook ingress device \"{link}\" \
             priority -500; policy accept;\n    ip daddr {daddr} meta l4proto udp counter name \"c\" {v}\n  }}\n}}\n"
        );
        ns.exec(&["nft", &ruleset])?;
        Ok(IngressCounter { ns, link: link.to_owned() })
    }

    /// The link counted on.
    pub fn link(&self) -> &str {
        &self.link
    }

    /// (packets, bytes) counted so far.
    pub fn read(&self) -> Result<(u64, u64), LabError> {
        let out = self.ns.exec(&["nft", "-j", "list", "counter", "netdev", TABLE, "c"])?;
        parse_counter(&out.stdout).ok_or_else(|| {
            LabError::Invalid(format!(
                "no counter in `nft -j list counter netdev {TABLE} c`: {}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })
    }

    /// Zeroes the counter.
    pub fn reset(&self) -> Result<(), LabError> {
        self.ns.exec(&["nft", "reset", "counter", "netdev", TABLE, "c"]).map(drop)
    }
}

impl Drop for IngressCounter<'_> {
    fn drop(&mut self) {
        let _ = self.ns.exec(&["nft", "delete", "table", "netdev", TABLE]);
    }
}

/// The first counter's (packets, bytes) in `nft -j` output: a named counter object, or else an anonymous counter
/// in a rule.
pub fn parse_counter(json: &[u8]) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let items = v.get("nftables")?.as_array()?;
    let named = items.iter().find_map(|item| {
        let c = item.get("counter")?;
        Some((c.get("packets")?.as_u64()?, c.get("bytes")?.as_u64()?))
    });
    named.or_else(|| {
        items.iter().find_map(|item| {
            let expr = item.get("rule")?.get("expr")?.as_array()?;
            expr.iter().find_map(|e| {
                let c = e.get("counter")?;
                Some((c.get("packets")?.as_u64()?, c.get("bytes")?.as_u64()?))
            })
        })
    })
}

/// A window's rates: (offered frames/s, counted packets/s, what `load` returned), both over the same window.
///
/// Runs `load` on another thread; the window opens 0.2 s after `counter` first moves (at most 3 s after the start:
/// senders such as trafgen take a moment to set up) and lasts `window` seconds (it must end before the load does).
/// Offered comes from `progress` (the sender's running count; None: not known, 0). A counter that cannot be read
/// counts as not moving.
pub fn window_rates<R: Send>(
    counter: &IngressCounter,
    progress: Option<&AtomicU64>,
    window: f64,
    load: impl FnOnce() -> R + Send,
) -> (f64, f64, R) {
    let read = || counter.read().map_or(0, |c| c.0);
    let sent = || progress.map_or(0, |p| p.load(Ordering::Relaxed));
    std::thread::scope(|s| {
        let h = s.spawn(load);
        let (start, c0) = (Instant::now(), read());
        while read() == c0 && start.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        let (c1, o1, t1) = (read(), sent(), Instant::now());
        std::thread::sleep(Duration::from_secs_f64(window));
        let (c2, o2, t2) = (read(), sent(), Instant::now());
        let r = match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        };
        let el = (t2 - t1).as_secs_f64();
        (o2.saturating_sub(o1) as f64 / el, c2.saturating_sub(c1) as f64 / el, r)
    })
}

/// A link's (rx packets, rx dropped, tx packets, tx dropped) from `ip -s -j link show dev LINK` in `ns`.
pub fn link_stats(ns: &Netns, link: &str) -> Result<[u64; 4], LabError> {
    let out = ns.ip(&["-s", "-j", "link", "show", "dev", link])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let s = &v[0]["stats64"];
    let g = |dir: &str, k: &str| s[dir][k].as_u64().unwrap_or(0);
    Ok([g("rx", "packets"), g("rx", "dropped"), g("tx", "packets"), g("tx", "dropped")])
}

/// A link's MAC address in `ns`.
pub fn link_mac(ns: &Netns, link: &str) -> Result<[u8; 6], LabError> {
    let out = ns.ip(&["-j", "link", "show", "dev", link])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let a = v[0]["address"].as_str().unwrap_or_default();
    parse_mac(a).ok_or_else(|| LabError::Invalid(format!("{link} in {}: no MAC address ({a:?})", ns.name())))
}

/// The MAC `ns` has learned for `addr` (after some traffic to it, e.g. a ping), if any.
pub fn neigh_mac(ns: &Netns, addr: Ipv4Addr) -> Result<Option<[u8; 6]>, LabError> {
    let out = ns.ip(&["-j", "neigh", "show", &addr.to_string()])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    Ok(v.as_array().and_then(|a| a.iter().find_map(|n| parse_mac(n["lladdr"].as_str()?))))
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut m {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

/// The machine's CPU ticks at one instant: (steal, all).
#[derive(Clone, Copy, Debug, Default)]
pub struct Steal {
    steal: u64,
    total: u64,
}

impl Steal {
    /// Reads `/proc/stat` now (zeros when unreadable).
    pub fn now() -> Steal {
        std::fs::read_to_string("/proc/stat").ok().and_then(|s| Steal::parse(&s)).unwrap_or_default()
    }

    /// Parses the `cpu` line of a `/proc/stat` text.
    pub fn parse(stat: &str) -> Option<Steal> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal [guest guest_nice] (guest time is inside user already).
        let total = v.iter().take(8).sum();
        Some(Steal { steal: v.get(7).copied().unwrap_or(0), total })
    }

    /// The share of ticks stolen between `self` (earlier) and `later`, 0..=1.
    pub fn share_until(&self, later: &Steal) -> f64 {
        let all = later.total.saturating_sub(self.total);
        if all == 0 {
            return 0.0;
        }
        later.steal.saturating_sub(self.steal) as f64 / all as f64
    }
}

/// The 1-minute load average (`/proc/loadavg`): runnable tasks, a sign of other work on the machine that steal time
/// does not show (other processes on the same cores). None when unreadable.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_share_from_proc_stat() {
        let a = Steal::parse("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3\n").expect("parses");
        let b = Steal::parse("cpu  200 0 100 1500 10 0 0 140 0 0\n").expect("parses");
        // 950 ticks passed, 100 of them stolen.
        assert!((a.share_until(&b) - 100.0 / 950.0).abs() < 1e-9);
        assert_eq!(b.share_until(&a), 0.0);
        assert!(Steal::parse("intr 1 2\n").is_none());
    }

    #[test]
    fn counter_from_nft_json() {
        let j = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"chain": {"family": "netdev", "name": "in"}},
            {"rule": {"family": "netdev", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip",
            "field": "daddr"}}, "right": "10.1.0.2"}}, {"counter": {"packets": 1234, "bytes": 113528}}, {"drop": null}]}}]}"#;
        assert_eq!(parse_counter(j), Some((1234, 113528)));
        let named = br#"{"nftables": [{"metainfo": {"json_schema_version": 1}}, {"counter": {"family": "netdev",
            "name": "c", "table": "hpmeter", "handle": 1, "packets": 77, "bytes": 8162}}]}"#;
        assert_eq!(parse_counter(named), Some((77, 8162)));
        assert_eq!(parse_counter(br#"{"nftables": []}"#), None);
        assert_eq!(parse_counter(b"not json"), None);
    }

    #[test]
    fn macs_parse() {
        assert_eq!(parse_mac("02:4c:47:00:01:ff"), Some([2, 0x4c, 0x47, 0, 1, 0xff]));
        assert_eq!(parse_mac("02:4c:47:00:01"), None);
        assert_eq!(parse_mac("02:4c:47:00:01:ff:00"), None);
        assert_eq!(parse_mac("zz:4c:47:00:01:ff"), None);
    }
}
