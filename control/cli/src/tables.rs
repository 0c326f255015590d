//! The text `hyperplane status`, `sessions` and `stats` print: the reports
//! of the control socket ([`control::api`]) as tables and lines.

use control::api::{Headroom, PortUseLine, SessionsReport, StatsReport, StatusReport};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddrV4;

/// Renders rows as left-aligned columns under `headers`, two spaces apart.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let _ = write!(l, "{cell:<w$}");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

fn join<T: std::fmt::Display>(items: &[T], sep: &str) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(sep)
}

fn with_reason(what: &str, reason: &Option<String>) -> String {
    match reason {
        Some(r) if !r.is_empty() => format!("{what} ({r})"),
        _ => what.to_string(),
    }
}

/// Port use summed over addresses: `tcp=3 udp=1 icmp=0 of 64512/addr`.
fn port_use_summary(lines: &[PortUseLine]) -> String {
    if lines.is_empty() {
        return "-".into();
    }
    let sum = |f: fn(&PortUseLine) -> u32| lines.iter().map(|l| u64::from(f(l))).sum::<u64>();
    let cap = lines.iter().map(|l| u64::from(l.capacity)).sum::<u64>();
    format!("tcp={} udp={} icmp={} of {cap}", sum(|l| l.tcp), sum(|l| l.udp), sum(|l| l.icmp))
}

/// The ENI table then the functions table, as `hyperplane status` prints
/// them; ENIs with setup steps get a line listing them.
pub fn format_status(r: &StatusReport) -> String {
    let mut out = String::new();
    if r.enis.is_empty() {
        out.push_str("no shared ENIs\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .enis
            .iter()
            .map(|e| {
                vec![
                    e.id.to_string(),
                    or_dash(e.subnet.clone()),
                    or_dash(e.security_groups.join(",")),
                    or_dash(join(&e.addrs, ",")),
                    e.generation.to_string(),
                    or_dash(e.state.clone()),
                    or_dash(e.functions.join(",")),
                    e.sessions.to_string(),
                    port_use_summary(&e.port_use),
                    e.setup_ms.map_or_else(|| "-".into(), |ms| format!("{ms:.1}ms")),
                ]
            })
            .collect();
        let headers =
            ["ENI", "SUBNET", "GROUPS", "ADDRESSES", "GEN", "STATE", "FUNCTIONS", "SESSIONS", "PORTS", "SETUP"];
        out.push_str(&table(&headers, &rows));
        for e in r.enis.iter().filter(|e| !e.setup_steps.is_empty()) {
            let steps: Vec<String> = e.setup_steps.iter().map(|s| format!("{} {:.1}ms", s.step, s.ms)).collect();
            let _ = writeln!(out, "eni {} setup: {}", e.id, steps.join(", "));
        }
    }
    out.push('\n');
    if r.functions.is_empty() {
        out.push_str("no functions\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .functions
            .iter()
            .map(|f| {
                vec![
                    f.name.clone(),
                    with_reason(&f.state, &f.state_reason),
                    with_reason(&f.last_update_status, &f.last_update_reason),
                    or_dash(join(&f.enis, ",")),
                ]
            })
            .collect();
        out.push_str(&table(&["FUNCTION", "STATE", "LAST UPDATE", "ENIS"], &rows));
    }
    out.push('\n');
    out.push_str(&format_headroom(&r.headroom, r.enis.iter().flat_map(|e| &e.port_use)));
    out
}

/// The room left for new connections: the session tables (live and
/// recyclable against capacity), each ENI's addresses against its maximum,
/// and every address's ports by state.
pub fn format_headroom<'a>(h: &Headroom, ports: impl Iterator<Item = &'a PortUseLine>) -> String {
    let mut out = String::from("headroom:\n");
    let live = h.sessions.saturating_sub(h.sessions_recyclable);
    let _ = writeln!(
        out,
        "  sessions: {live} live + {} recyclable of {} ({:.1}% used); {} recycled, {} reopened",
        h.sessions_recyclable,
        h.sessions_capacity,
        percent(h.sessions, h.sessions_capacity),
        h.sessions_recycled,
        h.sessions_reopened,
    );
    for e in &h.eni_addresses {
        let _ = writeln!(out, "  eni {}: {} of {} addresses", e.eni, e.addresses, e.max);
    }
    let rows: Vec<Vec<String>> = ports
        .flat_map(|l| {
            [
                ("tcp", l.tcp, l.closing.tcp, l.cooling.tcp, l.quarantined.tcp),
                ("udp", l.udp, l.closing.udp, l.cooling.udp, l.quarantined.udp),
                ("icmp", l.icmp, l.closing.icmp, l.cooling.icmp, l.quarantined.icmp),
            ]
            .into_iter()
            .map(move |(proto, live, closing, cooling, q)| {
                let free = l.capacity.saturating_sub(live + closing + q);
                vec![
                    l.addr.to_string(),
                    proto.to_string(),
                    live.to_string(),
                    closing.to_string(),
                    cooling.to_string(),
                    q.to_string(),
                    free.to_string(),
                    format!("{:.1}%", percent(u64::from(live), u64::from(l.capacity))),
                ]
            })
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(
            &["  ADDRESS", "PROTO", "LIVE", "RECYCLABLE", "COOLING", "QUARANTINED", "FREE", "LIVE%"],
            &rows,
        ));
    }
    out
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// One tuple's addresses and ports, conntrack style; for ICMP, `id` is the
/// query id on that side (the source port of the outbound tuple).
fn tuple(proto: &str, src: &SocketAddrV4, dst: &SocketAddrV4, id: u16) -> String {
    if proto == "icmp" {
        format!("src={} dst={} id={id}", src.ip(), dst.ip())
    } else {
        format!("src={} dst={} sport={} dport={}", src.ip(), dst.ip(), src.port(), dst.port())
    }
}

/// One line per session in the spirit of `conntrack -L`: protocol, seconds
/// left, state, the original tuple (as the environment sent it), the
/// environment, the reply tuple (as the remote end answers the translated
/// packets), packets and bytes out/in, the ENI; then a count line.
///
/// ```text
/// tcp  7435 ESTABLISHED src=172.16.0.2 dst=10.1.0.2 sport=40000 dport=7000 [env=172.16.0.2] src=10.1.0.2 dst=10.0.0.4 sport=7000 dport=13050 packets=12/10 bytes=1200/900 eni=1
/// 1 session
/// ```
pub fn format_sessions(r: &SessionsReport) -> String {
    let mut out = String::new();
    for s in &r.sessions {
        let _ = writeln!(
            out,
            "{:<4} {} {} {} [env={}] {} packets={}/{} bytes={}/{} eni={}",
            s.proto,
            s.timeout_s,
            if s.state.is_empty() { "-" } else { &s.state },
            tuple(&s.proto, &s.original_src, &s.original_dst, s.original_src.port()),
            s.env,
            // The reply: from the translated destination back to the
            // translated (ENI) source.
            tuple(&s.proto, &s.translated_dst, &s.translated_src, s.translated_src.port()),
            s.packets_out,
            s.packets_in,
            s.bytes_out,
            s.bytes_in,
            s.eni.map_or_else(|| "-".into(), |e| e.to_string()),
        );
    }
    let shown = r.sessions.len();
    let noun = |n: usize| if n == 1 { "session" } else { "sessions" };
    if shown == r.total {
        let _ = writeln!(out, "{shown} {}", noun(shown));
    } else {
        let _ = writeln!(out, "{shown} of {} {} shown", r.total, noun(r.total));
    }
    out
}

fn by_proto(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// The counters, the non-zero drops by reason, port use per address and
/// ENI setup times, as `hyperplane stats` prints them.
pub fn format_stats(s: &StatsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "workers           {}", s.workers);
    let _ = writeln!(out, "rx frames         {}", s.rx_frames);
    let _ = writeln!(out, "outbound          packets={} bytes={}", s.outbound_packets, s.outbound_bytes);
    let _ = writeln!(out, "inbound           packets={} bytes={}", s.inbound_packets, s.inbound_bytes);
    let _ = writeln!(out, "hairpinned        {}", s.hairpinned);
    if !s.io.backend.is_empty() {
        let total: u64 = s.io.syscalls.values().sum();
        let _ = writeln!(out, "io                {}", s.io.backend);
        let kinds: Vec<String> =
            s.io.syscalls.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(
            out,
            "syscalls          {total} ({})",
            if kinds.is_empty() { "none".into() } else { kinds.join(" ") }
        );
        let _ = writeln!(out, "syscalls/packet   {:.2}", s.io.syscalls_per_packet);
    }
    let _ = writeln!(out, "sessions          {}", by_proto(&s.sessions));
    let _ = writeln!(out, "sessions created  {}", by_proto(&s.sessions_created));
    let _ = writeln!(out, "sessions expired  {}", by_proto(&s.sessions_expired));
    if s.sessions_flushed > 0 {
        let _ = writeln!(out, "sessions flushed  {}", s.sessions_flushed);
    }
    let drops: Vec<(&String, &u64)> = s.drops.iter().filter(|(_, n)| **n > 0).collect();
    if drops.is_empty() {
        out.push_str("drops             none\n");
    } else {
        let total: u64 = drops.iter().map(|(_, n)| **n).sum();
        let _ = writeln!(out, "drops             {total}");
        let w = drops.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
        for (reason, n) in drops {
            let _ = writeln!(out, "  {reason:<w$}  {n}");
        }
    }
    if s.port_use.is_empty() {
        out.push_str("port use          -\n");
    } else {
        out.push_str("port use\n");
        let rows: Vec<Vec<String>> = s
            .port_use
            .iter()
            .map(|p| {
                vec![
                    p.addr.to_string(),
                    p.tcp.to_string(),
                    p.udp.to_string(),
                    p.icmp.to_string(),
                    p.capacity.to_string(),
                ]
            })
            .collect();
        for l in table(&["ADDRESS", "TCP", "UDP", "ICMP", "CAPACITY"], &rows).lines() {
            let _ = writeln!(out, "  {l}");
        }
    }
    if !s.eni_setup_seconds.is_empty() {
        out.push_str("eni setup\n");
        for (eni, secs) in &s.eni_setup_seconds {
            let _ = writeln!(out, "  eni {eni}  {secs:.3}s");
        }
    }
    out
}
