//! The other variants of the bench (see the crate doc in `main.rs`): `--only sessions`, `--only offer`,
//! `--only outside` and `--only attach`.

use super::*;

/// `--only sessions`: our gateway with `n` live UDP sessions made first (environment 0, source ports 2000.. ×
/// destination ports 10000.., paced), then one established flow's delivered rate. Returns (live UDP sessions
/// before the measurement, offered/s, delivered/s).
fn sessions_round(n: u64, secs: f64) -> (u64, f64, f64) {
    let extra = format!("max_sessions = 4194304\n{OPEN_QUOTAS}");
    let workers = arg_str("--workers").and_then(|v| v.parse().ok()).unwrap_or(0);
    let lab = Lab::build(&Options { envs: 1, workers, gateway_extra: extra, ..Options::default() }).expect("our lab");
    let t = Topo::of(&lab);
    let spec = template(&t);
    let counter = IngressCounter::install(t.vpc, &t.vpc_link, SERVER, Verdict::Drop).expect("VPC counter");
    let dports = 64u16;
    let sports = n.div_ceil(u64::from(dports)).clamp(1, 60_000) as u16;
    let fill = Plan {
        source: Source::Flows(FrameSpec { sport: 2000, dport: 10000, ..spec.clone() }, Flows { sports, dports }),
        cpus: sender_cpus(),
        duration: Duration::from_secs(60),
        rate: Some(100_000.0),
        max_frames: Some(u64::from(sports) * u64::from(dports)),
        progress: None,
    };
    // A deep queue on the environment's TAP while filling, so that few fill frames are lost; passes over the whole
    // space (existing sessions are only refreshed) until nearly all of them are live, at most three.
    let qlen = t.envs[0].ip(&["-j", "link", "show", "dev", &t.env_link]).ok().and_then(|o| {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v[0]["txqlen"].as_u64()
    });
    let _ = t.envs[0].ip(&["link", "set", "dev", &t.env_link, "txqueuelen", "65536"]);
    let stop = Arc::new(AtomicBool::new(false));
    let want = u64::from(sports) * u64::from(dports);
    let mut live = 0;
    for pass in 1..=3 {
        let sent = sender::send_packet(t.envs[0], &t.env_link, &fill, &stop).expect("fill");
        std::thread::sleep(Duration::from_millis(500));
        live = lab.gateway().totals().live[1];
        eprintln!(
            "  sessions: pass {pass}: {} fill frames sent in {:.1} s; {live} live UDP sessions",
            sent.frames, sent.seconds
        );
        if live * 100 >= want * 97 {
            break;
        }
    }
    // Back to the TAP's own queue for the measurement.
    let qlen = qlen.unwrap_or(1000).to_string();
    let _ = t.envs[0].ip(&["link", "set", "dev", &t.env_link, "txqueuelen", &qlen]);
    // The established flow: a first frame, then the measurement.
    let (offered, delivered) = udp_raw(&t, &spec, &counter, Flows::ONE, secs);
    (live, offered, delivered)
}

pub(super) fn sessions_main(secs: u32, rounds: usize) {
    let (mut small, mut big) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for (n, all) in [(1_000u64, &mut small), (1_000_000, &mut big)] {
            let s0 = Steal::now();
            let (live, offered, delivered) = sessions_round(n, f64::from(secs));
            let steal = s0.share_until(&Steal::now()) * 100.0;
            eprintln!(
                "round {round}: {live} live: one flow offered {offered:.0}/s, delivered {delivered:.0}/s; steal {steal:.1}%"
            );
            all.push((live as f64, offered, delivered));
        }
    }
    let med = |v: &[(f64, f64, f64)], k: usize| {
        let mut x: Vec<f64> = v.iter().map(|t| [t.0, t.1, t.2][k]).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    println!(
        "{:<44} {:>12} {:>12} {:>12}",
        "one established UDP flow, 64-byte (ours)", "live", "offered/s", "delivered/s"
    );
    for (name, v) in [("with ~1k live sessions", &small), ("with ~1M live sessions", &big)] {
        println!("{name:<44} {:>12.0} {:>12.0} {:>12.0}", med(v, 0), med(v, 1), med(v, 2));
    }
    let ratio = med(&big, 2) / med(&small, 2).max(1.0);
    println!("1M / 1k delivered: {ratio:.2} (done when >= 0.80)");
    let json = serde_json::json!({ "seconds": secs, "rounds": rounds,
        "small": { "live": med(&small, 0), "offered_pps": med(&small, 1), "delivered_pps": med(&small, 2) },
        "big": { "live": med(&big, 0), "offered_pps": med(&big, 1), "delivered_pps": med(&big, 2) },
        "ratio": ratio });
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/compare-sessions.json", serde_json::to_string_pretty(&json).unwrap_or_default());
}

/// `--only offer`: what the load generator's TAP writers (`loadgen udp --cpus`) can offer: 64-byte-payload frames
/// written into a TAP whose kernel side sits alone in a fresh namespace, where they are discarded (addressed to
/// another host). Prints frames/s for one pinned writer and for one per CPU of `--cpus` (default: all CPUs).
pub(super) fn offer_main(secs: u32) {
    use dataplane_io::tap::{Tap, TapOptions};
    let ns = Netns::new(netlab::unique("hpof")).expect("namespace");
    let name = netlab::unique("hpof");
    let tap = Tap::open(&name, TapOptions::default()).expect("TAP");
    netlab::ip_batch(None, &[format!("link set {name} netns {}", ns.name())]).expect("move the TAP");
    ns.ip(&["link", "set", "dev", &name, "up"]).expect("TAP up");
    // A multi-queue TAP too: one queue per writer.
    let mq_name = netlab::unique("hpof");
    let mq = Tap::open(&mq_name, TapOptions { multi_queue: true, ..TapOptions::default() }).expect("multi-queue TAP");
    let mut queues = vec![];
    for _ in 1..std::thread::available_parallelism().map_or(1, |n| n.get()) {
        queues.push(mq.open_queue().expect("another queue"));
    }
    queues.insert(0, mq);
    netlab::ip_batch(None, &[format!("link set {mq_name} netns {}", ns.name())]).expect("move the TAP");
    ns.ip(&["link", "set", "dev", &mq_name, "up"]).expect("TAP up");
    let spec = FrameSpec {
        src_mac: [2, 0x4c, 0x47, 0, 0, 1],
        dst_mac: [2, 0x4c, 0x47, 0, 0, 2],
        src: env_addr(0),
        dst: SERVER,
        sport: 40000,
        dport: 9000,
        payload: 64,
    };
    let all: Vec<usize> = (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    let many = arg_str("--cpus").map(|_| sender_cpus()).unwrap_or(all);
    println!("{:<40} {:>14} {:>10}", "TAP writers (64-byte payload, discarded)", "frames/s", "steal %");
    for (cpus, taps, what) in [
        (vec![many[0]], std::slice::from_ref(&tap), "one queue"),
        (many.clone(), std::slice::from_ref(&tap), "one queue"),
        (many.clone(), &queues[..], "a queue each"),
    ] {
        let plan = Plan {
            source: Source::Flows(spec.clone(), Flows::ONE),
            cpus: cpus.clone(),
            duration: Duration::from_secs(u64::from(secs)),
            rate: None,
            max_frames: None,
            progress: None,
        };
        let s0 = Steal::now();
        let sent = sender::send_tap(taps, &plan, &AtomicBool::new(false)).expect("send");
        let steal = s0.share_until(&Steal::now()) * 100.0;
        println!("{:<40} {:>14.0} {:>10.1}", format!("CPUs {cpus:?}, {what}"), sent.pps(), steal);
    }
}

/// `--only outside`: our gateway with its outside on a TAP and on a veth
/// through AF_PACKET (offloads as Linux sets them; on rings and on plain
/// sockets), and the kernel, in alternating rounds; medians, and how many
/// workers took frames from the VPC side on the AF_PACKET outside.
pub(super) fn outside_main(secs: u32, rounds: usize, workers: usize) {
    let (mut tap_all, mut af_all, mut plain_all, mut kernel_all) = (vec![], vec![], vec![], vec![]);
    let mut busy_workers = vec![];
    for round in 1..=rounds {
        // The TAP outside, AF_PACKET on rings (the default), AF_PACKET on
        // plain sockets (`ring = false`).
        for (k, (af_packet, ring)) in [(false, false), (true, true), (true, false)].into_iter().enumerate() {
            if !outside_variant_wanted(k) {
                continue;
            }
            let outside_extra = if af_packet && !ring { "ring = false".into() } else { String::new() };
            let opts = Options {
                envs: 2,
                workers,
                af_packet,
                outside_extra,
                gateway_extra: OPEN_QUOTAS.into(),
                ..Options::default()
            };
            let lab = Lab::build(&opts).expect("our lab");
            let t = Topo::of(&lab);
            let f = measure(&t, secs);
            let name = match (af_packet, lab.gateway().outside_ring) {
                (false, _) => "tap",
                (true, true) => "af-packet on rings",
                (true, false) => "af-packet on plain sockets",
            };
            let inbound: Vec<u64> = lab.gateway().counters().iter().map(|c| c.inbound.packets.get()).collect();
            eprintln!(
                "round {round}: hyperplane, {name} outside ({} workers, {}): {f:?}; inbound frames per worker {inbound:?}",
                lab.gateway().workers(),
                lab.gateway().outside_rx
            );
            match (af_packet, ring) {
                (false, _) => tap_all.push(f),
                (true, true) => {
                    busy_workers.push(inbound.iter().filter(|&&n| n > 0).count() as f64);
                    af_all.push(f);
                }
                (true, false) => plain_all.push(f),
            }
        }
        if outside_variant_wanted(3) {
            kernel_all.push(measure_kernel(round, secs));
        }
    }
    let tap = Figures::median(&tap_all);
    let (af, plain, kernel) = (Figures::median(&af_all), Figures::median(&plain_all), Figures::median(&kernel_all));
    println!(
        "{:<40} {:>12} {:>12} {:>12} {:>12} {:>9} {:>9} {:>11}",
        "work (same run, medians)",
        "TAP outside",
        "AF rings",
        "AF plain",
        "kernel NAT",
        "AF/TAP",
        "AF/kernel",
        "rings/plain"
    );
    // Each row with the measurement it comes from: rows of one `--work` left out are not printed.
    type Row = (&'static str, &'static str, fn(&Figures) -> f64);
    let rows: [Row; 5] = [
        ("tcp", "TCP bulk, Gbit/s", |f| f.tcp_gbps),
        ("udp", "UDP 64-byte one flow, delivered pkt/s", |f| f.udp_pps),
        ("udp", "UDP new flow per packet, delivered pkt/s", |f| f.new_pps),
        ("conn", "TCP connections/s, RST close, sustained", |f| f.conn_rst_per_s),
        ("conn", "TCP connections/s, FIN close, sustained", |f| f.conn_fin_per_s),
    ];
    for (_, name, get) in rows.into_iter().filter(|r| wanted(r.0)) {
        let (a, b, p, c) = (get(&tap), get(&af), get(&plain), get(&kernel));
        println!(
            "{name:<40} {a:>12.2} {b:>12.2} {p:>12.2} {c:>12.2} {:>9} {:>9} {:>11}",
            ratio(b, a),
            ratio(b, c),
            ratio(b, p)
        );
    }
    busy_workers.sort_by(f64::total_cmp);
    println!(
        "workers that took frames from the VPC on the AF_PACKET outside on rings (fewest over the rounds): {}",
        busy_workers.first().copied().unwrap_or(0.0)
    );
}

/// `--only attach`: one environment namespace (veth `e0`, its host-side
/// end `peer`) reaching our gateway through a bridge to a TAP attachment,
/// and by a direct `af-packet` attachment on `peer`, in alternating rounds;
/// TCP bulk and UDP medians, direct / bridged.
pub(super) fn attach_main(secs: u32, rounds: usize, workers: usize) {
    if netlab::find_tool("iperf3").is_err() {
        eprintln!("compare: TCP bulk needs iperf3 (apt-get install iperf3); skipping");
        return;
    }
    // Bridged TAP, direct on packet rings (the default), direct on plain
    // sockets (`ring = false`).
    const NAMES: [&str; 3] = ["bridged TAP", "direct af-packet", "direct, ring = false"];
    let mut all: [Vec<Figures>; 3] = [vec![], vec![], vec![]];
    for round in 1..=rounds {
        for (k, name) in NAMES.iter().enumerate() {
            if !attach_variant_wanted(k) {
                continue;
            }
            let direct = k > 0;
            let env = Netns::new(format!("{}e", netlab::unique("hpl"))).expect("environment namespace");
            let peer = netlab::unique("hpl");
            netlab::veth("e0", Some(&env), &peer, None).expect("environment veth");
            env.ip_batch(&[
                "link set e0 up".to_string(),
                format!("addr add {}/32 dev e0", env_addr(0)),
                format!("route add {INSIDE_GATEWAY} dev e0"),
                format!("route add default via {INSIDE_GATEWAY}"),
            ])
            .expect("environment address");
            let base = Options { workers, gateway_extra: format!("{OPEN_QUOTAS}{}", io_extra()), ..Options::default() };
            let lab = if direct {
                netlab::ip_batch(None, &[format!("link set {peer} up")]).expect("peer up");
                let attachment_extra = if k == 2 { "ring = false".to_string() } else { String::new() };
                let lab = Lab::build(&Options { direct: Some(vec![peer.clone()]), attachment_extra, ..base })
                    .expect("direct lab");
                assert_eq!(lab.gateway().inside[0].on_rings(), k == 1, "{name}");
                lab
            } else {
                let lab = Lab::build(&Options { bridged_attachments: Some(1), ..base }).expect("bridged lab");
                lab.attach_to_bridges(std::slice::from_ref(&peer), 1000).expect("bridge port");
                lab
            };
            let t = Topo {
                server: &lab.server,
                envs: vec![&env],
                vpc: &lab.vpc,
                vpc_link: lab.outside.clone(),
                env_link: "e0".into(),
            };
            let f = measure(&t, secs);
            if std::env::var_os("HP_ATTACH_DIAG").is_some() {
                attach_diag(&[("env", &env), ("server", &lab.server), ("vpc", &lab.vpc)], lab.bridge.as_ref());
            }
            let totals = lab.gateway().totals();
            eprintln!(
                "  gateway: outbound {} frames, {:.0} bytes each; inbound {} frames; system calls (read, write, epoll_wait, uring_enter, send, recv, wake) {:?}",
                totals.outbound.0,
                totals.outbound.1 as f64 / totals.outbound.0.max(1) as f64,
                totals.inbound.0,
                lab.gateway().syscalls()
            );
            eprintln!("round {round}: {name} ({} workers): {f:?}; drops {:?}", lab.gateway().workers(), totals.drops);
            all[k].push(f);
            drop(lab);
            drop(env);
        }
    }
    let [bridged, direct, plain] = [0, 1, 2].map(|k| Figures::median(&all[k]));
    println!(
        "{:<44} {:>12} {:>12} {:>12} {:>9} {:>9}",
        "work (same run, medians)", "bridged TAP", "direct", "direct plain", "direct/br", "ring/plain"
    );
    type Row = (&'static str, fn(&Figures) -> f64);
    let rows: [Row; 5] = [
        ("TCP bulk, Gbit/s", |f| f.tcp_gbps),
        ("UDP 64-byte one flow, offered pkt/s", |f| f.udp_offered_pps),
        ("UDP 64-byte one flow, delivered pkt/s", |f| f.udp_pps),
        ("UDP new flow per packet, delivered pkt/s", |f| f.new_pps),
        ("steal time over the round, %", |f| f.steal_pct),
    ];
    for (name, get) in rows {
        let (a, b, c) = (get(&bridged), get(&direct), get(&plain));
        println!("{name:<44} {a:>12.2} {b:>12.2} {c:>12.2} {:>9} {:>9}", ratio(b, a), ratio(b, c));
    }
    let json = serde_json::json!({
        "seconds": secs,
        "rounds": rounds,
        "bridged_tap": bridged.json(),
        "direct_af_packet": direct.json(),
        "direct_af_packet_plain": plain.json(),
        "rounds_bridged_tap": all[0].iter().map(Figures::json).collect::<Vec<_>>(),
        "rounds_direct_af_packet": all[1].iter().map(Figures::json).collect::<Vec<_>>(),
        "rounds_direct_af_packet_plain": all[2].iter().map(Figures::json).collect::<Vec<_>>(),
    });
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/compare-attach.json", serde_json::to_string_pretty(&json).unwrap_or_default());
}

/// Whether variant `names[k]` runs: every one without `flag`, else those its comma-separated list names.
fn variant_wanted(flag: &str, names: &[&str], k: usize) -> bool {
    let Some(list) = arg_str(flag) else { return true };
    list.split(',').any(|w| w.trim() == names[k])
}

/// `--outside-variants tap,rings,plain,kernel` (any of them; all by default): which targets `--only outside` runs.
fn outside_variant_wanted(k: usize) -> bool {
    variant_wanted("--outside-variants", &["tap", "rings", "plain", "kernel"], k)
}

/// `--attach-variants bridged,rings,plain` (any of them; all by default): which of the attach bench's paths run.
fn attach_variant_wanted(k: usize) -> bool {
    variant_wanted("--attach-variants", &["bridged", "rings", "plain"], k)
}

/// `HP_ATTACH_DIAG=1`: the kernel's nonzero drop, retransmit and
/// reordering counters in each namespace, and every link's statistics.
fn attach_diag(nss: &[(&str, &Netns)], bridge: Option<&Netns>) {
    let keys = [
        "Retrans", "Drop", "Reorder", "Lost", "Prune", "Collapse", "OFO", "Backlog", "SACK", "Overflow", "Discards",
        "InErrors",
    ];
    for (what, ns) in nss {
        if let Ok(o) = ns.exec(&["nstat", "-asz"]) {
            let text = String::from_utf8_lossy(&o.stdout);
            for l in text.lines().filter(|l| keys.iter().any(|k| l.contains(k))) {
                let v: Vec<&str> = l.split_whitespace().collect();
                if v.len() >= 2 && v[1] != "0" {
                    eprintln!("  diag {what}: {} {}", v[0], v[1]);
                }
            }
        }
    }
    let mut links: Vec<(String, Option<&Netns>)> = nss.iter().map(|(w, n)| (w.to_string(), Some(*n))).collect();
    links.push(("root".into(), None));
    if let Some(b) = bridge {
        links.push(("bridge".into(), Some(b)));
    }
    for (what, ns) in links {
        let out = match ns {
            Some(n) => n.exec(&["ip", "-s", "-s", "link"]),
            None => Netns::current().exec(&["ip", "-s", "-s", "link"]),
        };
        if let Ok(o) = out {
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                eprintln!("  diag link {what}: {l}");
            }
        }
    }
}
