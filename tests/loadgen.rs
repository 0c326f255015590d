//! The load generator against our gateway: short runs (250 environments behind one shared attachment, 2 s) whose
//! figures are checked against what the responder in the server namespace counted, and port exhaustion made visible.
//!
//! Every run builds its own namespaces and TAP and removes them (Drop guards, also on panic). Without root the tests
//! print "skipping: needs root" and pass.

use loadgen::{LoadArgs, LoadReport, Scenario, Target};
use std::path::PathBuf;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// Unpaced UDP floods fill the kernel's per-CPU receive backlog (`net.core.netdev_max_backlog`), which every
/// namespace shares: a test running beside one loses ARP, SYNs and datagrams that no NAT dropped. So a flood runs
/// alone ([`alone`]) and the other tests run beside each other ([`beside`]).
static FLOODS: RwLock<()> = RwLock::new(());

/// A test that sends no unpaced UDP: it runs beside the others, never beside a flood. Needs root.
fn beside() -> RwLockReadGuard<'static, ()> {
    netlab::require_root();
    FLOODS.read().unwrap_or_else(|e| e.into_inner())
}

/// A test that floods: it runs alone. Needs root.
fn alone() -> RwLockWriteGuard<'static, ()> {
    netlab::require_root();
    FLOODS.write().unwrap_or_else(|e| e.into_inner())
}

fn args(scenario: Scenario, envs: usize) -> LoadArgs {
    LoadArgs {
        scenario,
        envs: Some(envs),
        duration: Duration::from_secs(2),
        target: Target::Ours,
        json: true,
        progress: false,
        ..LoadArgs::default()
    }
}

/// Every environment arrived from the lab's shared ENI address, and only from it.
fn one_source_address(r: &LoadReport) {
    let eni = r.eni.expect("the report names the ENI");
    assert_eq!(r.responder.distinct_addresses, 1, "{:?}", r.responder);
    assert_eq!(r.responder.addresses, vec![eni], "the server saw only the shared ENI address");
}

/// The JSON result has the documented fields.
fn documented_fields(r: &LoadReport) {
    let v = serde_json::to_value(r).expect("serialises");
    for k in [
        "scenario",
        "target",
        "envs",
        "duration_s",
        "requested_duration_s",
        "stopped_early",
        "payload",
        "rate",
        "gateway_config",
        "offered",
        "delivered",
        "loss",
        "udp",
        "tcp_bulk",
        "connect",
        "errors",
        "responder",
        "eni",
        "gateway",
        "timeline_bucket_ms",
        "timeline",
        "timeline_csv",
        "plots",
        "vpc_counted",
        "writers",
        "warnings",
    ] {
        assert!(v.get(k).is_some(), "JSON field {k} missing: {v}");
    }
    for k in ["packets", "bytes", "pps", "bps"] {
        assert!(v["offered"].get(k).is_some() && v["delivered"].get(k).is_some(), "rate field {k}");
    }
    assert!(v["gateway"]["drops"].is_object(), "gateway drops by reason");
    assert!(!v["timeline"].as_array().expect("timeline").is_empty());
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn udp_counts_match_the_responder_and_come_from_the_eni() {
    let _turn = beside();
    // A modest rate, with echoes, so nothing is lost either way: then the datagrams the responder counted equal
    // sent - lost, where lost is what the environments measured (sent - echoes received).
    let out = std::env::temp_dir().join(format!("loadgen-test-{}", std::process::id()));
    let r = loadgen::run(&LoadArgs {
        rate: Some(20_000.0),
        echo: true,
        payload: 64,
        out_dir: Some(out.clone()),
        ..args(Scenario::Udp, 250)
    })
    .expect("udp run");
    eprintln!("{}", r.table());
    let udp = r.udp.as_ref().expect("udp figures");
    assert!(udp.sent > 20_000, "{udp:?}");
    let lost = udp.lost_by_echo.expect("echo measures loss");
    assert_eq!(r.responder.udp_packets, udp.sent - lost, "{udp:?} {:?}", r.responder);
    assert_eq!(r.responder.distinct_sources, 250, "one mapping per environment");
    one_source_address(&r);
    documented_fields(&r);
    assert!(r.plots.iter().any(|p| p.ends_with("throughput.svg")), "{:?}", r.plots);
    assert!(out.join("report.json").exists());
    assert!(out.join("timeline.csv").exists());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn udp_delivered_matches_the_vpc_kernel_counter_with_pinned_writers() {
    let _turn = beside();
    // Two writer threads pinned to CPUs 0 and 1 (`--cpus 0,1`), at a rate both NATs carry: the kernel's own count at
    // the VPC router (nftables netdev ingress) and the responder's count are independent and must agree, for both.
    for target in [Target::Ours, Target::Kernel] {
        let r = loadgen::run(&LoadArgs { rate: Some(20_000.0), cpus: vec![0, 1], target, ..args(Scenario::Udp, 250) })
            .expect("udp run");
        let udp = r.udp.as_ref().expect("udp figures");
        let vpc = r.vpc_counted.as_ref().expect("the VPC counter");
        eprintln!("{target:?}: sent {}, VPC counter {}, responder {}", udp.sent, vpc.packets, r.responder.udp_packets);
        assert!(udp.sent > 30_000, "two writers at 20,000/s for 2 s: {udp:?}");
        assert_eq!(vpc.packets, r.responder.udp_packets, "{target:?}: the kernel counter and the responder");
        assert!(vpc.packets * 100 >= udp.sent * 95, "{target:?}: {} of {} reached the VPC", vpc.packets, udp.sent);
        assert_eq!(vpc.bytes, vpc.packets * (20 + 8 + 64), "whole IPv4 packets of 64-byte datagrams");
    }
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn unpaced_udp_is_counted_at_the_vpc_edge_beside_trafgen_on_the_same_link() {
    let _turn = alone();
    netlab::find_tool("trafgen").expect("trafgen (netsniff-ng; .ci/run installs it)");
    // Unpaced, one pinned writer through the veth, then trafgen's one flow on the same link and counter: the
    // report's delivered figure is the kernel counter's, and trafgen's figures sit beside it. (How close the two
    // are is a figure, not asserted: see `udp_compare_against_trafgen_figures`.)
    for target in [Target::Ours, Target::Kernel] {
        let r = loadgen::run(&LoadArgs { cpus: vec![0], trafgen: true, target, ..args(Scenario::Udp, 50) })
            .expect("unpaced udp with the trafgen check");
        eprintln!("{}", r.table());
        let vpc = r.vpc_counted.as_ref().expect("the VPC counter");
        assert!(r.delivered_at_vpc_edge, "{target:?}");
        assert_eq!(r.delivered.packets, vpc.packets, "{target:?}: delivered is the counter's");
        assert_eq!(r.responder.udp_packets, 0, "{target:?}: discarded at the VPC edge");
        assert!(vpc.packets > 0, "{target:?}: {vpc:?}");
        let udp = r.udp.as_ref().expect("udp figures");
        assert_eq!(r.loss.packets, udp.sent - vpc.packets, "{target:?}");
        let t = r.trafgen.expect("trafgen's figures");
        assert!(t.rates.offered_pps > 0.0 && t.rates.delivered_pps > 0.0, "{target:?}: {t:?}");
        assert!(t.apart.is_some_and(f64::is_finite), "{target:?}: {t:?}");
    }
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn connect_counts_match_the_responder_and_come_from_the_eni() {
    let _turn = beside();
    // Open loop at 3000 connections/s: every environment connects more than once.
    let r = loadgen::run(&LoadArgs { rate: Some(3000.0), ..args(Scenario::Connect, 250) }).expect("connect run");
    eprintln!("{}", r.table());
    let c = r.connect.as_ref().expect("connect figures");
    assert!(c.completed >= 250, "every environment completed at least once: {c:?}");
    assert_eq!(c.failed, 0, "{c:?}");
    assert_eq!(r.responder.tcp_accepted, c.established, "{c:?} {:?}", r.responder);
    assert_eq!(c.latency_us.count, c.established);
    assert!(c.latency_us.p50 > 0 && c.latency_us.p50 <= c.latency_us.p99 && c.latency_us.p99 <= c.latency_us.max);
    one_source_address(&r);
    documented_fields(&r);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn environments_spread_over_pinned_threads_still_count_every_connection_and_stream() {
    let _turn = beside();
    // `--cpus 0,1`: two environment threads, each with half the environments, a reader handing them their frames.
    // Every environment connects (the pacer's rate is split between the threads), nothing fails, and the
    // responder's counts match the environments' own, against both targets.
    for target in [Target::Ours, Target::Kernel] {
        let a = LoadArgs { rate: Some(2000.0), cpus: vec![0, 1], target, ..args(Scenario::Connect, 250) };
        let r = loadgen::run(&a).expect("connect over two threads");
        eprintln!("{}", r.table());
        let c = r.connect.as_ref().expect("connect figures");
        assert!(c.completed >= 250, "{target:?}: every environment completed at least once: {c:?}");
        assert_eq!(c.failed, 0, "{target:?}: {c:?}");
        assert_eq!(r.responder.tcp_accepted, c.established, "{target:?}: {c:?} {:?}", r.responder);
        assert_eq!(c.latency_us.count, c.established, "{target:?}: both threads' latencies merged");
        one_source_address(&r);
    }
    let r = loadgen::run(&LoadArgs { cpus: vec![0, 1], ..args(Scenario::TcpBulk, 6) }).expect("bulk over two threads");
    eprintln!("{}", r.table());
    let b = r.tcp_bulk.as_ref().expect("bulk figures");
    assert_eq!((b.streams, r.responder.bulk_streams), (6, 6), "{b:?}");
    assert!(b.delivered_bytes > 1_000_000 && b.delivered_bytes <= b.sent_bytes, "{b:?}");
    one_source_address(&r);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn tcp_bulk_bytes_reach_the_responder_from_the_eni() {
    let _turn = beside();
    let r = loadgen::run(&args(Scenario::TcpBulk, 16)).expect("bulk run");
    eprintln!("{}", r.table());
    let b = r.tcp_bulk.as_ref().expect("bulk figures");
    assert_eq!(b.streams, 16, "{b:?}");
    assert_eq!(r.responder.bulk_streams, 16);
    assert!(b.delivered_bytes > 1_000_000, "{b:?}");
    // A stream whose close completed had every byte acknowledged by the server's kernel, and the responder reads
    // to end of stream: then everything the environments queued was delivered. (Under heavy parallel load a close
    // can outlast the grace period; then at most what was queued arrived.)
    assert!(b.delivered_bytes <= b.sent_bytes, "{b:?}");
    if b.closed_clean == 16 {
        assert_eq!(b.delivered_bytes, b.sent_bytes, "{b:?}");
    }
    one_source_address(&r);
    documented_fields(&r);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn mixed_runs_every_kind_through_the_eni() {
    let _turn = beside();
    // Connects paced at 1000/s; the four bulk streams are unpaced, so the gateway's attachment queue may overflow
    // and a handshake may need a retransmission: every completed connection was accepted, and nothing was accepted
    // that the environments did not see established.
    let r = loadgen::run(&LoadArgs { rate: Some(1000.0), ..args(Scenario::Mixed, 200) }).expect("mixed run");
    eprintln!("{}", r.table());
    let c = r.connect.as_ref().expect("connect figures");
    assert!(c.completed > 1000, "{c:?}");
    assert!(c.completed <= r.responder.tcp_accepted && r.responder.tcp_accepted <= c.established, "{c:?}");
    assert!(r.responder.udp_packets > 0 && r.responder.bulk_bytes > 0, "{:?}", r.responder);
    one_source_address(&r);
    documented_fields(&r);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn connect_with_one_tap_per_environment_through_its_own_attachment() {
    let _turn = beside();
    // 100 loadgen TAPs, each bridged alone to its own gateway attachment: every environment connects once through
    // its own attachment, and all leave through the one shared ENI.
    let r = loadgen::run(&LoadArgs { once: true, tap_per_env: true, ..args(Scenario::Connect, 100) })
        .expect("tap-per-env connect run");
    eprintln!("{}", r.table());
    let c = r.connect.as_ref().expect("connect figures");
    assert_eq!(r.responder.tcp_accepted, c.established, "{c:?} {:?}", r.responder);
    assert_eq!((c.attempted, c.established, c.completed, c.failed), (100, 100, 100, 0), "every environment: {c:?}");
    assert_eq!(r.responder.distinct_sources, 100, "one mapping per environment: {:?}", r.responder);
    one_source_address(&r);
    documented_fields(&r);
    let too_many = loadgen::run(&LoadArgs { tap_per_env: true, ..args(Scenario::Connect, 1001) });
    assert!(matches!(too_many, Err(loadgen::LoadError::Invalid { param: "envs", .. })), "{too_many:?}");
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn port_exhaustion_is_visible_in_the_report_and_the_drop_counter() {
    let _turn = beside();
    // 50 ports for 200 environments that each connect once, all at the same moment: 50 get a port, the other 150
    // SYNs are refused (`ports_exhausted`, ICMP 3/13) and retried until the connect timeout. A port comes back for a
    // retried SYN only if its connection ended without leaving the server in TIME_WAIT (the environment's FIN came
    // first): where the server closed first, the port is not given to a new connection to it for 60 s. So at least
    // 50 connect, and every failure is counted. Two workers:
    // the gateway weighs each worker's port slice by the environments it serves, so the one worker that reads this
    // single attachment owns all 50 ports (an equal split would leave it 25).
    let r = loadgen::run(&LoadArgs {
        once: true,
        port_range: Some("2000-2049".into()),
        // The ENI may not grow: otherwise the control plane adds an address
        // when the 50 ports run out.
        max_eni_addresses: Some(1),
        connect_timeout: Duration::from_millis(1500),
        workers: 2,
        ..args(Scenario::Connect, 200)
    })
    .expect("exhaustion run");
    eprintln!("{}", r.table());
    let c = r.connect.as_ref().expect("connect figures");
    assert_eq!(c.attempted, 200, "{c:?}");
    assert!(c.established >= 50, "every port used: {c:?}");
    assert_eq!(c.established + c.failed, 200, "{c:?}");
    let g = r.gateway.as_ref().expect("gateway counters");
    let drops = g.drops.get("ports_exhausted").copied().unwrap_or(0);
    assert!(drops >= 150, "the first 150 SYNs found no port: {drops} ports_exhausted drops");
    assert!(drops >= c.failed, "ports_exhausted drops {drops} < failed connections {}", c.failed);
    assert_eq!(r.responder.tcp_accepted, c.established);
    one_source_address(&r);
}

/// A fresh output directory for one test.
fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loadgen-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `timeline.csv`: the header, then the rows, each split into its columns.
fn read_csv(path: &std::path::Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).expect("timeline.csv written");
    let mut lines = text.lines();
    let header = lines.next().expect("a header").split(',').map(String::from).collect();
    let rows = lines.map(|l| l.split(',').map(String::from).collect()).collect();
    (header, rows)
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn timeline_csv_has_one_line_per_second_with_the_gateway_gauges() {
    let _turn = beside();
    let out = out_dir("csv");
    let r = loadgen::run(&LoadArgs {
        rate: Some(1000.0),
        duration: Duration::from_secs(3),
        out_dir: Some(out.clone()),
        ..args(Scenario::Connect, 250)
    })
    .expect("connect run");
    eprintln!("{}", r.table());
    let (header, rows) = read_csv(&out.join("timeline.csv"));
    assert_eq!(
        header,
        [
            "t_s",
            "connections_completed",
            "connect_failures",
            "packets_offered",
            "packets_delivered",
            "bytes_delivered",
            "gateway_sessions",
            "gateway_ports_in_use",
            "eni_addresses",
            "gateway_ports_cooling"
        ]
    );
    // One line per second: t_s = 1, 2, 3 (the load), then the seconds of the grace period and the drain.
    assert!((3..=8).contains(&rows.len()), "{rows:?}");
    let num = |row: &[String], k: usize| row[k].parse::<u64>().unwrap_or_else(|_| panic!("column {k} of {row:?}"));
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 10, "{row:?}");
        assert_eq!(num(row, 0), i as u64 + 1, "consecutive seconds: {rows:?}");
    }
    // Each second of the load saw connections, and the counts add up to the report's.
    for row in &rows[..3] {
        assert!(num(row, 1) > 0 && num(row, 3) > 0 && num(row, 4) > 0, "{row:?}");
        assert!(num(row, 6) > 0 && num(row, 7) > 0 && num(row, 8) == 1, "gauges against ours: {row:?}");
        assert!(num(row, 9) <= num(row, 7), "cooling ports are among the held ones: {row:?}");
    }
    let c = r.connect.as_ref().expect("connect figures");
    assert_eq!(rows.iter().map(|row| num(row, 1)).sum::<u64>(), c.completed, "{rows:?}");
    assert_eq!(rows.iter().map(|row| num(row, 4)).sum::<u64>(), r.responder.tcp_accepted, "{rows:?}");
    assert_eq!(rows.iter().map(|row| num(row, 3)).sum::<u64>(), r.offered.packets, "{rows:?}");
    assert_eq!(r.timeline_bucket_ms, 100, "a short run keeps 100 ms buckets");
    assert_eq!(r.timeline_csv.as_deref(), Some(out.join("timeline.csv").to_str().expect("utf-8")));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_run_stopped_early_reports_what_it_measured() {
    let _turn = beside();
    // Asked for a minute, stopped (as SIGINT would) 2 s into the load: the report covers those 2 s.
    let out = out_dir("stop");
    let a = LoadArgs {
        rate: Some(1000.0),
        duration: Duration::from_secs(60),
        out_dir: Some(out.clone()),
        ..args(Scenario::Connect, 250)
    };
    let stop = a.stop.clone();
    let t0 = Instant::now();
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            // Stop 2 s after the load began (timeline.csv appears when the responder starts).
            while !out.join("timeline.csv").exists() && t0.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_secs(2));
            stop.stop();
        });
        loadgen::run(&a)
    })
    .expect("stopped run");
    eprintln!("{}", r.table());
    assert!(t0.elapsed() < Duration::from_secs(20), "the stop ended the run: {:?}", t0.elapsed());
    assert!(r.stopped_early && r.requested_duration_s == 60.0, "{} {}", r.stopped_early, r.requested_duration_s);
    assert!((1.5..4.0).contains(&r.duration_s), "the elapsed load, not the minute asked for: {}", r.duration_s);
    let c = r.connect.as_ref().expect("connect figures");
    assert!(c.completed > 1000, "{c:?}");
    assert!((c.per_s - c.completed as f64 / r.duration_s).abs() < 1e-6, "rates over the elapsed time: {c:?}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report.json written"))
            .expect("JSON");
    // serde_json parses floats to within one ulp (no `float_roundtrip`).
    let written = v["duration_s"].as_f64().expect("duration_s");
    assert!((written - r.duration_s).abs() < 1e-9, "{written} against {}", r.duration_s);
    assert_eq!(v["stopped_early"].as_bool(), Some(true));
    let (_, rows) = read_csv(&out.join("timeline.csv"));
    assert!((2..=5).contains(&rows.len()), "the seconds measured: {rows:?}");
    assert!(r.plots.iter().any(|p| p.ends_with("throughput.svg")), "{:?}", r.plots);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn config_file_gateway_settings_reach_our_gateway() {
    let _turn = beside();
    // A session table of 100 for 200 environments connecting once, each connection closed by the server after its
    // response: the table never holds more than 100 sessions, and the ended connections' sessions are recycled for
    // the later ones, so every connection still completes.
    let path = out_dir("config").with_extension("toml");
    std::fs::write(&path, "[gateway]\nmax_sessions = 100\nworkers = 1\n\n[outside]\nname = \"ignored\"\n")
        .expect("write config");
    let gateway = Some(loadgen::GatewayTable::load(&path).expect("settings"));
    let r = loadgen::run(&LoadArgs { once: true, gateway, ..args(Scenario::Connect, 200) })
        .expect("run with the config's settings");
    eprintln!("{}", r.table());
    let c = r.connect.as_ref().expect("connect figures");
    assert_eq!(c.established + c.failed, 200, "{c:?}");
    let g = r.gateway.as_ref().expect("gateway counters");
    assert!(g.live_sessions[0] <= 100, "the table holds at most max_sessions: {g:?}");
    assert!(g.sessions_recycled >= 100, "ended sessions made room for the other 100: {g:?}");
    assert_eq!(r.gateway_config.as_deref(), path.to_str());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_bad_config_file_names_the_field() {
    let bad = |text: &str| match loadgen::GatewayTable::parse("gw.toml", text)
        .and_then(|g| LoadArgs { gateway: Some(g), ..args(Scenario::Connect, 10) }.validate())
    {
        Err(loadgen::LoadError::Config { field, line, .. }) => (field, line),
        other => panic!("{text:?}: {other:?}"),
    };
    assert_eq!(bad("[gateway]\nmax_sessions = 0\n"), ("gateway.max_sessions".into(), Some(2)));
    assert_eq!(bad("[gateway]\n\n[gateway.timeouts]\nudp = 5\n"), ("gateway.timeouts.udp".into(), Some(4)));
    assert_eq!(bad("[gateway]\nmax_sesions = 10\n").0, "gateway.max_sesions");
    assert_eq!(bad("[outside]\nname = \"x\"\n").0, "gateway");
    // The kernel has no [gateway].
    let g = loadgen::GatewayTable::parse("gw.toml", "[gateway]\nmax_sessions = 100\n").expect("parses");
    let k = LoadArgs { gateway: Some(g), target: Target::Kernel, ..args(Scenario::Connect, 10) }.validate();
    assert!(matches!(k, Err(loadgen::LoadError::Invalid { param: "config", .. })), "{k:?}");
}

#[test]
fn duration_is_checked_and_reads_like_people_write_it() {
    let check = |d: Duration| LoadArgs { duration: d, ..args(Scenario::Connect, 10) }.validate();
    assert!(check(Duration::from_secs(24 * 3600)).is_ok(), "a day's soak is accepted");
    for d in [Duration::ZERO, Duration::from_secs(24 * 3600 + 1)] {
        let e = check(d);
        assert!(matches!(e, Err(loadgen::LoadError::Invalid { param: "duration", .. })), "{d:?}: {e:?}");
    }
    let p = |s| loadgen::parse_duration("duration", s).expect(s);
    assert_eq!(p("600"), Duration::from_secs(600));
    assert_eq!(p("10m"), Duration::from_secs(600));
    assert_eq!(p("2h"), Duration::from_secs(7200));
    let e = loadgen::parse_duration("duration", "ten minutes");
    assert!(matches!(e, Err(loadgen::LoadError::Invalid { param: "duration", .. })), "{e:?}");
}

/// The figures: `compare` for udp (64-byte payload, 1000 environments), tcp-bulk (16) and connect (10,000
/// environments), each 5 s. Not part of the normal run (about a minute and a half); run with
/// `cargo test --release --test loadgen -- --ignored --nocapture compare_figures` (`LOADGEN_ONLY=udp|tcp-bulk|connect`
/// for one; `LOADGEN_RATE=R` for an open-loop rate, `LOADGEN_RAMP_MS=M` for a ramp, `LOADGEN_ONCE=1` for one connection per environment,
/// `LOADGEN_OUT=DIR` to write the JSON results, timelines and SVG plots, under `DIR/SCENARIO/`).
#[test]
#[ignore]
fn compare_figures() {
    let _turn = alone();
    let only = std::env::var("LOADGEN_ONLY").ok();
    for (scenario, envs) in [(Scenario::Udp, 1000), (Scenario::TcpBulk, 16), (Scenario::Connect, 10_000)] {
        if only.as_deref().is_some_and(|o| o != scenario.name()) {
            continue;
        }
        let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
        let a = LoadArgs {
            duration: Duration::from_secs(5),
            rate: var("LOADGEN_RATE"),
            ramp: Duration::from_millis(var("LOADGEN_RAMP_MS").unwrap_or(0.0) as u64),
            once: var("LOADGEN_ONCE").is_some_and(|v| v > 0.0),
            out_dir: std::env::var_os("LOADGEN_OUT").map(|d| PathBuf::from(d).join(scenario.name())),
            ..args(scenario, envs)
        };
        let c = loadgen::compare(&a).expect("compare");
        println!("{}", c.ours.table());
        if let Some(k) = &c.kernel {
            println!("{}", k.table());
        }
        println!("{}", c.table());
    }
}

/// `loadgen udp --compare --cpus 0 --trafgen` (and with `--spread-receive`): the load generator's delivered figure
/// beside trafgen's one flow on the same link and counter, for both targets, in rounds. Figures, not assertions:
/// `cargo test --release --test loadgen -- --ignored --nocapture udp_compare_against_trafgen_figures`
/// (`LOADGEN_ROUNDS`, default 3; `LOADGEN_ENVS`, default 200).
#[test]
#[ignore]
fn udp_compare_against_trafgen_figures() {
    let _turn = alone();
    let var = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let a = LoadArgs {
        duration: Duration::from_secs(4),
        cpus: vec![0],
        trafgen: true,
        ..args(Scenario::Udp, var("LOADGEN_ENVS", 200))
    };
    for round in 0..var("LOADGEN_ROUNDS", 3) {
        let c = loadgen::compare(&a).expect("compare with trafgen");
        println!("round {round}, writer and trafgen pinned to CPU 0:\n{}", c.table());
        let s = loadgen::compare(&LoadArgs { spread_receive: true, ..a.clone() }).expect("spread");
        println!("round {round}, --spread-receive (the targets' receive path on CPU 1):\n{}", s.table());
    }
}

/// A NAT made by hand, as a user would: the kernel's masquerade in a namespace of its own between two veths, an
/// inside namespace holding the link towards its inside, an outside namespace holding the responder's address.
/// Every namespace is deleted when this is dropped (also on panic).
struct HandMadeNat {
    lan: netlab::Netns,
    wan: netlab::Netns,
    _nat: netlab::Netns,
}

/// The hand-made NAT's plan: environments in 192.168.50.0/24 behind 192.168.50.1; the NAT's outside address
/// 198.51.100.1, the responder 198.51.100.2.
const HAND_ENV_NET: &str = "192.168.50.0/24";
const HAND_GATEWAY: &str = "192.168.50.1";
const HAND_NAT_OUTSIDE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 51, 100, 1);
const HAND_RESPONDER: &str = "198.51.100.2";

impl HandMadeNat {
    fn build() -> HandMadeNat {
        let ns = || netlab::Netns::new(netlab::unique("lgx")).expect("namespace");
        let (lan, nat, wan) = (ns(), ns(), ns());
        netlab::veth("in1", Some(&lan), "in0", Some(&nat)).expect("inside veth");
        netlab::veth("out0", Some(&nat), "out1", Some(&wan)).expect("outside veth");
        lan.ip_batch(&["link set in1 up"]).expect("lan");
        nat.ip_batch(&[
            format!("addr add {HAND_GATEWAY}/24 dev in0"),
            "link set in0 up".into(),
            format!("addr add {HAND_NAT_OUTSIDE}/24 dev out0"),
            "link set out0 up".into(),
        ])
        .expect("nat links");
        wan.ip_batch(&[format!("addr add {HAND_RESPONDER}/24 dev out1"), "link set out1 up".into()]).expect("wan");
        nat.sysctl("net.ipv4.ip_forward", "1").expect("forwarding");
        nat.exec(&[
            "nft",
            "table ip handnat {\n  chain post {\n    type nat hook postrouting priority srcnat; policy accept;\n    \
             oifname \"out0\" masquerade\n  }\n}\n",
        ])
        .expect("masquerade");
        HandMadeNat { lan, wan, _nat: nat }
    }

    fn external(&self) -> loadgen::ExternalNat {
        loadgen::ExternalNat::parse(
            (Some(self.lan.name()), "in1"),
            (Some(self.wan.name()), "out1"),
            HAND_ENV_NET,
            HAND_GATEWAY,
            HAND_RESPONDER,
        )
        .expect("the hand-made NAT's flags")
    }
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn any_nat_between_two_links_counts_as_the_kernel_target_does() {
    let _turn = beside();
    let nat = HandMadeNat::build();
    let external = Some(nat.external());
    let ext = |a: LoadArgs| LoadArgs { target: Target::External, external: external.clone(), ..a };

    // UDP at a rate the kernel carries: the kernel's counter on the outside link and the responder agree, every
    // environment arrives as one mapping from the NAT's outside address.
    let udp = LoadArgs { rate: Some(20_000.0), ..args(Scenario::Udp, 200) };
    let r = loadgen::run(&ext(udp.clone())).expect("udp through the hand-made NAT");
    eprintln!("{}", r.table());
    assert_eq!(r.target, "external");
    let sent = r.udp.as_ref().expect("udp figures").sent;
    let vpc = r.vpc_counted.as_ref().expect("the kernel's counter on the outside link");
    assert!(sent > 30_000, "20,000/s for 2 s: {sent}");
    assert_eq!(vpc.packets, r.responder.udp_packets, "the kernel counter and the responder");
    assert!(vpc.packets * 100 >= sent * 95, "{} of {sent} crossed the NAT", vpc.packets);
    assert_eq!(r.responder.addresses, vec![HAND_NAT_OUTSIDE], "masqueraded to the NAT's outside address");
    assert_eq!(r.responder.distinct_sources, 200, "one mapping per environment");
    let k = loadgen::run(&LoadArgs { target: Target::Kernel, ..udp }).expect("udp through the kernel target");
    let kv = k.vpc_counted.as_ref().expect("the kernel target's counter");
    assert_eq!(kv.packets, k.responder.udp_packets);
    eprintln!(
        "udp at 20,000/s: external delivered {:.0}/s (counted {:.0}/s), kernel target {:.0}/s (counted {:.0}/s)",
        r.delivered.pps, vpc.pps, k.delivered.pps, kv.pps
    );
    // The same NAT, made by hand or by the load generator, offered the same paced load: the same figure.
    assert!(
        (r.delivered.pps - k.delivered.pps).abs() <= 0.1 * k.delivered.pps,
        "udp delivered: external {:.0}/s, kernel target {:.0}/s",
        r.delivered.pps,
        k.delivered.pps
    );

    // Connections: every one completes, the responder accepted each one the environments saw established.
    let connect = LoadArgs { rate: Some(1000.0), ..args(Scenario::Connect, 200) };
    let r = loadgen::run(&ext(connect.clone())).expect("connect through the hand-made NAT");
    eprintln!("{}", r.table());
    let c = r.connect.as_ref().expect("connect figures");
    assert!(c.completed >= 1000, "1,000/s for 2 s: {c:?}");
    assert_eq!(c.failed, 0, "{c:?}");
    assert_eq!(r.responder.tcp_accepted, c.established, "{c:?} {:?}", r.responder);
    assert_eq!(r.responder.addresses, vec![HAND_NAT_OUTSIDE]);
    let k = loadgen::run(&LoadArgs { target: Target::Kernel, ..connect }).expect("connect through the kernel target");
    let kc = k.connect.as_ref().expect("connect figures");
    assert_eq!(kc.failed, 0, "{kc:?}");
    eprintln!("connect at 1,000/s: external {:.0}/s, kernel target {:.0}/s", c.per_s, kc.per_s);
    assert!(
        (c.per_s - kc.per_s).abs() <= 0.1 * kc.per_s,
        "connections/s: external {}, kernel target {}",
        c.per_s,
        kc.per_s
    );
    drop(nat);
}

#[test]
fn external_arguments_are_checked() {
    let x = loadgen::ExternalNat::parse((None, "a0"), (None, "b0"), "10.9.0.0/29", "10.9.0.1", "192.0.2.1")
        .expect("valid flags");
    // Five environments fit a /29 (eight addresses less the network, the broadcast and the gateway's).
    let a = |envs, f: fn(&mut LoadArgs)| {
        let mut a = LoadArgs { target: Target::External, external: Some(x.clone()), ..args(Scenario::Connect, envs) };
        f(&mut a);
        a.validate()
    };
    assert!(a(5, |_| {}).is_ok());
    let param = |r: Result<(), loadgen::LoadError>| match r {
        Err(loadgen::LoadError::Invalid { param, .. }) => param,
        other => panic!("{other:?}"),
    };
    assert_eq!(param(a(6, |_| {})), "envs");
    assert_eq!(param(a(5, |a| a.port_range = Some("2000-2100".into()))), "port_range");
    assert_eq!(param(a(5, |a| a.tap_per_env = true)), "tap_per_env");
    assert_eq!(param(a(5, |a| a.external = None)), "target");
    assert_eq!(param(a(5, |a| a.target = Target::Kernel)), "inside");
}

/// The hand-made NAT measured through `--inside/--outside` and the kernel target, unpaced, 5 s each (udp, then
/// connect, 200 environments each: the hand-made NAT's /24): the figures the issue asks to agree within 10%. A measurement, not
/// a check: `cargo test --release --test loadgen -- --ignored --nocapture external_against_kernel_figures`.
#[test]
#[ignore]
fn external_against_kernel_figures() {
    let _turn = alone();
    let nat = HandMadeNat::build();
    let external = Some(nat.external());
    for scenario in [Scenario::Udp, Scenario::Connect] {
        let a = LoadArgs { duration: Duration::from_secs(5), ..args(scenario, 200) };
        let x = loadgen::run(&LoadArgs { target: Target::External, external: external.clone(), ..a.clone() })
            .expect("external");
        let k = loadgen::run(&LoadArgs { target: Target::Kernel, ..a }).expect("kernel");
        println!("{}\n{}", x.table(), k.table());
        let (fx, fk) = (x.headline(), k.headline());
        println!(
            "{}: external {:.0}, kernel target {:.0} (offered {:.0} / {:.0} frames/s): external / kernel = {:.2}",
            scenario.name(),
            fx,
            fk,
            x.offered.pps,
            k.offered.pps,
            fx / fk.max(1e-9)
        );
    }
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn offer_only_counts_every_frame_the_writers_wrote_at_the_tap() {
    let _turn = beside();
    // Paced: the kernel's count at the TAP's ingress is every frame the writers' writes took, whichever way they
    // write.
    for writes in [loadgen::sender::TapWrites::Write, loadgen::sender::TapWrites::Uring] {
        let r = loadgen::offer::run(&LoadArgs {
            duration: Duration::from_secs(1),
            rate: Some(50_000.0),
            cpus: vec![0],
            tap_writes: writes,
            ..args(Scenario::Udp, 100)
        })
        .expect("offer-only run");
        eprintln!("{}", r.table());
        let counted = r.vpc_counted.as_ref().expect("the kernel's count");
        assert_eq!(r.target, "discard");
        // (How many depends on the CPU the machine leaves the writer: not a timing test.)
        assert!(r.offered.packets >= 1_000, "{writes:?}: 50,000/s for 1 s: {:?}", r.offered);
        assert_eq!(counted.packets, r.offered.packets, "{writes:?}: every frame written reached the TAP's ingress");
        assert_eq!(counted.bytes, counted.packets * (20 + 8 + 64), "whole IPv4 packets of 64-byte datagrams");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }
    let not_udp = loadgen::offer::run(&args(Scenario::Connect, 10));
    assert!(matches!(not_udp, Err(loadgen::LoadError::Invalid { param: "offer_only", .. })), "{not_udp:?}");
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn spread_receive_runs_the_kernel_nat_off_the_writers_cpu() {
    let _turn = alone();
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("skipping: needs a CPU besides the writer's");
        return;
    }
    // One writer pinned to CPU 0, unpaced; the kernel's NAT on the other CPUs. Without the spread the NAT runs in
    // the writer's own system call, so what it is offered is what it carries (the generator's figure); spread, the
    // offer can exceed it, by as much as the NAT's CPUs are slower than the writer's (on a fast machine the NAT on
    // a CPU of its own may keep up: then the report says the figure is the generator's).
    // trafgen too (when installed): the decoupled feed drops a refused frame after its system call, so its packet
    // ring keeps sending for the whole window instead of stopping at the first refusal.
    let trafgen = netlab::find_tool("trafgen").is_ok() && netlab::find_tool("taskset").is_ok();
    if !trafgen {
        eprintln!("trafgen part skipped: needs trafgen (apt-get install netsniff-ng) and taskset");
    }
    let a =
        LoadArgs { cpus: vec![0], target: Target::Kernel, spread_receive: true, trafgen, ..args(Scenario::Udp, 250) };
    // Frames each CPU took from its receive backlogs.
    let before = loadgen::softnet(0);
    let r = loadgen::run(&a).expect("udp with the receive path spread");
    let after = loadgen::softnet(0);
    eprintln!("{}", r.table());
    if trafgen {
        let t = r.trafgen.as_ref().expect("trafgen's figures").rates;
        assert!(t.delivered_pps > 10_000.0, "trafgen kept sending through the window: {t:?}");
    }
    let vpc = r.vpc_counted.as_ref().expect("the VPC counter");
    assert!(vpc.packets > 0, "{vpc:?}");
    // The NAT ran on the other CPUs: every frame it carried was taken from a receive backlog there (twice: into
    // the NAT, then into the VPC side).
    let elsewhere: u64 =
        after.iter().filter(|&(&c, _)| c != 0).map(|(c, n)| n - before.get(c).copied().unwrap_or(0)).sum();
    assert!(elsewhere >= vpc.packets, "{elsewhere} frames processed off CPU 0, {} carried", vpc.packets);
    // Offered is what left the writer, carried what the counter saw: never more; and the report's warning says
    // exactly when the offer did not exceed it.
    assert!(r.offered.packets >= vpc.packets, "offered {:?}, carried {vpc:?}", r.offered);
    let saturated = r.offered.pps > vpc.pps * loadgen::comparison::SATURATION_MARGIN;
    assert_eq!(
        r.warnings.is_empty(),
        saturated,
        "offered {:.0}/s, carried {:.0}/s: {:?}",
        r.offered.pps,
        vpc.pps,
        r.warnings
    );
    let no_cpus = LoadArgs { cpus: vec![], trafgen: false, ..a }.validate();
    assert!(matches!(no_cpus, Err(loadgen::LoadError::Invalid { param: "spread_receive", .. })), "{no_cpus:?}");
}
