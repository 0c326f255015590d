//! The shared-ENI study simulator: determinism, the two designs' invariants, failures exactly
//! when a subnet or the quota runs out, latency, speed, and the writers.

use std::time::Instant;

use study::report;
use study::{run, sweep, Arrival, Dist, FunctionSpec, Scenario, StudyError, StudyResult, SubnetSpec, SweepParam};

/// Serialized with the wall-clock zeroed: every other output must match.
fn comparable(r: &StudyResult) -> serde_json::Value {
    let mut r = r.clone();
    r.per_env.wall_clock_ms = 0.0;
    r.shared.wall_clock_ms = 0.0;
    serde_json::to_value(&r).unwrap()
}

/// One function per entry of `memory`, all in subnet 0 with SG set 0 unless said otherwise.
fn one_combo(memory_mb: u32, target: u32, invocations: u64) -> Scenario {
    Scenario {
        functions: vec![FunctionSpec { memory_mb, subnet: 0, sg_set: 0, weight: 1.0 }],
        subnets: vec![SubnetSpec { id: 0, prefix_len: 20 }],
        eni_quota: 5000,
        arrival: Arrival::Burst { target_concurrency: target, ramp_s: 0.0 },
        invocations,
        ..Scenario::default()
    }
}

#[test]
fn default_run_prints_table_and_is_fast() {
    let t = Instant::now();
    let r = run(&Scenario::default(), 1).unwrap();
    let elapsed = t.elapsed();
    println!("{}", report::table(&r));
    println!("both designs: {elapsed:?}");
    assert_eq!(r.per_env.invocations.total, 100_000);
    assert_eq!(r.shared.invocations.total, 100_000);
    for d in r.designs() {
        let i = &d.invocations;
        assert_eq!(i.ok + i.failed, i.total);
        assert_eq!(i.failed, i.failed_by_reason.total());
        assert_eq!(i.cold_starts + i.warm_starts, i.ok);
        assert!(!d.series.is_empty());
    }
    // The shared design reaches the burst's target shortly after the ramp ends.
    let t = r.shared.time_to_target_s.expect("shared reaches the target");
    assert!((59.0..62.0).contains(&t), "{t}");
}

#[test]
fn deterministic_for_a_seed_and_seed_matters() {
    let sc = Scenario { invocations: 20_000, ..Scenario::default() };
    let a = run(&sc, 7).unwrap();
    let b = run(&sc, 7).unwrap();
    assert_eq!(comparable(&a), comparable(&b));
    let c = run(&sc, 8).unwrap();
    assert_ne!(comparable(&a)["per_env"], comparable(&c)["per_env"]);
    assert_ne!(comparable(&a)["shared"], comparable(&c)["shared"]);
    // Open-loop patterns too.
    let steady = Scenario { arrival: Arrival::Steady { rate_per_s: 200.0 }, invocations: 10_000, ..sc.clone() };
    assert_eq!(comparable(&run(&steady, 3).unwrap()), comparable(&run(&steady, 3).unwrap()));
    assert_ne!(comparable(&run(&steady, 3).unwrap()), comparable(&run(&steady, 4).unwrap()));
}

#[test]
fn shared_creates_one_eni_per_combination_under_65000_connections() {
    let sc = Scenario::default();
    let combos = sc.combinations().len() as u64;
    assert_eq!(combos, 3);
    let r = run(&sc, 11).unwrap();
    assert_eq!(r.shared.enis_created, combos);
    assert_eq!(u64::from(r.shared.peak_addresses), combos);
    // Exactly at the capacity: 65 running invocations x 1,000 connections = 65,000.
    let mut at = one_combo(1024, 65, 5_000);
    at.shared.connections_per_env = 1000;
    let r = run(&at, 1).unwrap();
    assert_eq!(r.shared.peak_connections, 65_000);
    assert_eq!(r.shared.enis_created, 1);
    // One more invocation's worth crosses it: a second ENI.
    let mut over = one_combo(1024, 66, 5_000);
    over.shared.connections_per_env = 1000;
    let r = run(&over, 1).unwrap();
    assert_eq!(r.shared.peak_connections, 66_000);
    assert_eq!(r.shared.enis_created, 2);
    // 200 x 1,000 = 200,000 connections: ceil(200,000 / 65,000) = 4 ENIs.
    let mut big = one_combo(1024, 200, 5_000);
    big.shared.connections_per_env = 1000;
    let r = run(&big, 1).unwrap();
    assert_eq!(r.shared.enis_created, 4);
    assert_eq!(r.shared.peak_addresses, 4);
    assert_eq!(r.shared.invocations.failed, 0);
}

#[test]
fn per_env_peak_addresses_follow_the_sizing_formula() {
    for memory in [512u32, 1024, 1536, 3072] {
        let concurrency = 300u32;
        let r = run(&one_combo(memory, concurrency, 20_000), 5).unwrap();
        let d = &r.per_env;
        assert_eq!(d.peak_concurrency, concurrency);
        assert_eq!(d.peak_environments, concurrency);
        let formula = (f64::from(concurrency) * f64::from(memory) / 3072.0).ceil() as u32;
        assert_eq!(d.peak_addresses, formula, "memory {memory}");
        assert_eq!(d.invocations.failed, 0);
        assert_eq!(r.shared.peak_addresses, 1);
    }
    // Memory not dividing 3 GB: one ENI per environment, within a factor 3072/2048 of the formula.
    let r = run(&one_combo(2048, 300, 20_000), 5).unwrap();
    assert_eq!(r.per_env.peak_addresses, 300);
    // Open loop, steady rate: the formula holds for the environments' peak, which the slow
    // cold starts inflate well past rate x mean duration (arrivals during an ENI's creation
    // each start another environment): 200/s x (1 s + ~8 s) ~ 1,800 environments, not 200.
    let mut steady = one_combo(1024, 1, 50_000);
    steady.arrival = Arrival::Steady { rate_per_s: 200.0 };
    let r = run(&steady, 9).unwrap();
    let a = f64::from(r.per_env.peak_addresses);
    let expected = (f64::from(r.per_env.peak_environments) * 1024.0 / 3072.0).ceil();
    assert_eq!(a, expected);
    assert!(r.per_env.peak_environments > 1000, "{}", r.per_env.peak_environments);
    // The shared design's environments stay near the running concurrency.
    assert!(r.shared.peak_environments < 400, "{}", r.shared.peak_environments);
}

#[test]
fn tiny_subnet_fails_per_env_only() {
    // /28: 11 usable addresses; 50 concurrent 3 GB environments need 50 ENIs before 2019.
    let mut sc = one_combo(3072, 50, 5_000);
    sc.subnets = vec![SubnetSpec { id: 0, prefix_len: 28 }];
    let r = run(&sc, 2).unwrap();
    assert_eq!(r.per_env.peak_addresses, 11);
    assert!(r.per_env.invocations.failed_by_reason.subnet_out_of_ip_addresses > 0);
    assert_eq!(r.per_env.invocations.failed_by_reason.eni_limit_exceeded, 0);
    assert_eq!(r.shared.invocations.failed, 0);
    assert_eq!(r.shared.peak_addresses, 1);
    // Fitting exactly: 11 environments on 11 addresses, no failure.
    let mut fits = one_combo(3072, 11, 5_000);
    fits.subnets = vec![SubnetSpec { id: 0, prefix_len: 28 }];
    let r = run(&fits, 2).unwrap();
    assert_eq!(r.per_env.invocations.failed, 0);
    assert_eq!(r.per_env.peak_addresses, 11);
}

#[test]
fn quota_below_combinations_fails_shared() {
    let functions = (0..10).map(|i| FunctionSpec { memory_mb: 1024, subnet: 0, sg_set: i, weight: 1.0 }).collect();
    let sc = Scenario {
        functions,
        eni_quota: 5,
        arrival: Arrival::Burst { target_concurrency: 100, ramp_s: 1.0 },
        invocations: 10_000,
        ..Scenario::default()
    };
    assert_eq!(sc.combinations().len(), 10);
    let r = run(&sc, 4).unwrap();
    assert_eq!(r.shared.enis_created, 5);
    assert!(r.shared.invocations.failed_by_reason.eni_limit_exceeded > 0);
    assert_eq!(r.shared.invocations.failed_by_reason.subnet_out_of_ip_addresses, 0);
    assert!(r.shared.invocations.ok > 0);
    assert!(r.per_env.invocations.failed_by_reason.eni_limit_exceeded > 0);
    // With a quota of 10 the shared design has no failure.
    let r = run(&Scenario { eni_quota: 10, ..sc }, 4).unwrap();
    assert_eq!(r.shared.invocations.failed, 0);
}

#[test]
fn shared_cold_starts_are_orders_of_magnitude_cheaper() {
    let sc = Scenario {
        eni_quota: 5000,
        subnets: vec![SubnetSpec { id: 0, prefix_len: 20 }, SubnetSpec { id: 1, prefix_len: 20 }],
        invocations: 30_000,
        arrival: Arrival::Burst { target_concurrency: 1000, ramp_s: 10.0 },
        ..Scenario::default()
    };
    let r = run(&sc, 3).unwrap();
    let (p, s) = (&r.per_env.cold_start_latency, &r.shared.cold_start_latency);
    println!("per-env p50 {} p99 {}; shared p50 {} p99 {}", p.p50_s, p.p99_s, s.p50_s, s.p99_s);
    assert!(p.p50_s >= 1.0, "per-env p50 {}", p.p50_s);
    assert!(s.p50_s <= 1e-3 && s.p99_s <= 1e-3, "shared {} {}", s.p50_s, s.p99_s);
    assert!(p.count > 0 && s.count > 0);
    // The per-environment design reaches the target later, by about an ENI creation.
    let (tp, ts) = (r.per_env.time_to_target_s.unwrap(), r.shared.time_to_target_s.unwrap());
    assert!(tp > ts + 1.0, "{tp} {ts}");
}

#[test]
fn hundred_thousand_invocations_simulate_quickly() {
    let sc = Scenario { arrival: Arrival::Steady { rate_per_s: 2000.0 }, ..Scenario::default() };
    let t = Instant::now();
    let r = run(&sc, 1).unwrap();
    let elapsed = t.elapsed();
    println!(
        "100,000 invocations: per-env {:.1} ms, shared {:.1} ms, total {elapsed:?}",
        r.per_env.wall_clock_ms, r.shared.wall_clock_ms
    );
    assert_eq!(r.per_env.invocations.total, 100_000);
    assert!(elapsed.as_secs_f64() < 30.0);
}

#[test]
fn idle_reclaim_and_restore() {
    // Two bursts of arrivals 20 days apart: the function goes Inactive after 14 days, its ENI is
    // reclaimed, the next invocation fails with ResourceNotReady and restores it.
    let mut sc = one_combo(1024, 1, 1_000);
    sc.arrival = Arrival::Daily { peak_rate_per_s: 5.0, period_s: 40.0 * 86_400.0 };
    sc.invocations = 3_000;
    sc.shared.idle_reclaim_s = 3_600.0;
    let r = run(&sc, 6).unwrap();
    assert!(r.shared.enis_deleted >= 1, "{:?}", r.shared.enis_deleted);
    assert!(r.shared.enis_created >= 2);
    assert!(r.shared.invocations.failed_by_reason.resource_not_ready >= 1);
}

#[test]
fn bad_parameters_are_typed_errors() {
    let bad = |sc: Scenario, param: &str| match run(&sc, 1) {
        Err(StudyError::InvalidParameter { param: p, .. }) => assert_eq!(p, param),
        Ok(_) => panic!("{param} accepted"),
    };
    bad(
        Scenario { subnets: vec![SubnetSpec { id: 0, prefix_len: 30 }], ..Scenario::default() },
        "subnets[0].prefix_len",
    );
    let mut sc = Scenario::default();
    sc.functions[2].memory_mb = 64;
    bad(sc, "functions[2].memory_mb");
    bad(Scenario { invocations: 0, ..Scenario::default() }, "invocations");
    bad(Scenario { duration: Dist::Exponential { mean_s: -1.0 }, ..Scenario::default() }, "duration.mean_s");
    let mut sc = Scenario::default();
    sc.per_env.eni_create = Dist::LogNormal { median_s: 8.0, p99_s: 2.0 };
    bad(sc, "per_env.eni_create.p99_s");
    bad(Scenario { arrival: Arrival::Steady { rate_per_s: f64::NAN }, ..Scenario::default() }, "arrival.rate_per_s");
    assert!(sweep(&Scenario::default(), SweepParam::SubnetPrefix, &[24.5], 1).is_err());
    assert!("no-such".parse::<SweepParam>().is_err());
    assert_eq!("memory-mb".parse::<SweepParam>().unwrap(), SweepParam::MemoryMb);
    // Scenarios deserialize with defaults and reject unknown fields.
    let sc: Scenario =
        serde_json::from_str(r#"{"eni_quota": 7, "arrival": {"kind": "steady", "rate_per_s": 5}}"#).unwrap();
    assert_eq!(sc.eni_quota, 7);
    assert_eq!(sc.functions.len(), 10);
    assert!(serde_json::from_str::<Scenario>(r#"{"eni_qouta": 7}"#).is_err());
}

#[test]
fn sweeps_vary_the_parameter() {
    let base = Scenario { invocations: 10_000, eni_quota: 5000, ..Scenario::default() };
    let base =
        Scenario { subnets: vec![SubnetSpec { id: 0, prefix_len: 20 }, SubnetSpec { id: 1, prefix_len: 20 }], ..base };
    let pts = sweep(&base, SweepParam::EniCreateSeconds, &[2.0, 8.0, 20.0], 1).unwrap();
    println!("{}", report::sweep_table(SweepParam::EniCreateSeconds, &pts));
    let p50: Vec<f64> = pts.iter().map(|(_, r)| r.per_env.cold_start_latency.p50_s).collect();
    assert!(p50[0] < p50[1] && p50[1] < p50[2], "{p50:?}");
    let pts = sweep(&base, SweepParam::SubnetPrefix, &[28.0, 24.0], 1).unwrap();
    assert!(pts[0].1.per_env.invocations.failed_by_reason.subnet_out_of_ip_addresses > 0);
    let pts = sweep(&base, SweepParam::MemoryMb, &[512.0, 1536.0], 1).unwrap();
    assert!(pts[0].1.per_env.peak_addresses < pts[1].1.per_env.peak_addresses);
    let quick = Scenario { arrival: Arrival::Burst { target_concurrency: 1, ramp_s: 1.0 }, ..base.clone() };
    let pts = sweep(&quick, SweepParam::TargetConcurrency, &[100.0, 400.0], 1).unwrap();
    assert_eq!(pts[0].1.shared.peak_concurrency, 100);
    assert_eq!(pts[1].1.shared.peak_concurrency, 400);
}

#[test]
fn writers_produce_parseable_files() {
    let dir = std::env::temp_dir().join(format!("hyperplane-study-{}", std::process::id()));
    let r = run(&Scenario { invocations: 20_000, ..Scenario::default() }, 1).unwrap();
    let json = report::write_json(&r, &dir).unwrap();
    let back: StudyResult = serde_json::from_str(&std::fs::read_to_string(&json[0]).unwrap()).unwrap();
    assert_eq!(back.shared.invocations, r.shared.invocations);
    let csv = report::write_csv(&r, &dir).unwrap();
    let text = std::fs::read_to_string(&csv[0]).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), report::CSV_HEADER);
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), r.per_env.series.len() + r.shared.series.len());
    let columns = report::CSV_HEADER.split(',').count();
    assert!(rows.iter().all(|l| l.split(',').count() == columns));
    assert!(rows.iter().any(|l| l.starts_with("per_environment_eni,")));
    assert!(rows.iter().any(|l| l.starts_with("shared_eni,")));
    let svgs = report::write_svgs(&r, &dir).unwrap();
    assert_eq!(svgs.len(), 2);
    for p in &svgs {
        let s = std::fs::read_to_string(p).unwrap();
        assert!(s.trim_start().starts_with("<svg"), "{}", &s[..s.len().min(80)]);
        assert!(s.trim_end().ends_with("</svg>"));
    }
    let pts =
        sweep(&Scenario { invocations: 5_000, ..Scenario::default() }, SweepParam::EniQuota, &[5.0, 250.0], 1).unwrap();
    let files = report::write_sweep(SweepParam::EniQuota, &pts, &dir).unwrap();
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}
