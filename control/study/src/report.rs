//! Output of the study: a side-by-side terminal table, a sweep table, JSON (the whole
//! [`StudyResult`]), CSV (the time series, one row per bucket per design) and two SVG plots:
//! cold-start network latency over time (log y axis) and subnet addresses against concurrency.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::sim::{Design, DesignResult};
use super::{StudyResult, SweepParam};

/// A duration in the unit that suits it: `8.12 s`, `12.3 ms`, `50 µs`.
pub fn fmt_secs(s: f64) -> String {
    if !s.is_finite() {
        return "-".into();
    }
    let a = s.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1.0 {
        format!("{s:.2} s")
    } else if a >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

fn pct(n: u64, total: u64) -> String {
    if total == 0 {
        format!("{n}")
    } else {
        format!("{n} ({:.1}%)", 100.0 * n as f64 / total as f64)
    }
}

/// Both designs side by side.
pub fn table(r: &StudyResult) -> String {
    let sc = &r.scenario;
    let mut out = String::new();
    let combos = sc.combinations().len();
    let subnets: Vec<String> =
        sc.subnets.iter().map(|s| format!("{} /{} ({} usable)", s.id, s.prefix_len, s.usable())).collect();
    let _ = writeln!(
        out,
        "shared-ENI study, seed {}: {} functions over {} (subnet, SG set) combinations; subnets {}; quota {} ENIs",
        r.seed,
        sc.functions.len(),
        combos,
        subnets.join(", "),
        sc.eni_quota
    );
    let _ = writeln!(
        out,
        "workload: {}; duration {}; {} invocations max{}",
        sc.arrival.describe(),
        sc.duration.describe(),
        sc.invocations,
        sc.horizon_s.map(|h| format!(", horizon {h} s")).unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "per-env ENI creation {} (estimate); shared set-up {} s, flow entry {}, {} conn/env, {} conn/ENI",
        sc.per_env.eni_create.describe(),
        sc.shared.setup_s,
        fmt_secs(sc.shared.flow_entry_s),
        sc.shared.connections_per_env,
        sc.shared.connections_per_eni
    );
    let rows: Vec<(&str, [String; 2])> = vec![
        ("set-up before t=0", r.designs().map(|d| fmt_secs(d.setup_s))),
        ("invocations", r.designs().map(|d| d.invocations.total.to_string())),
        ("  ok", r.designs().map(|d| pct(d.invocations.ok, d.invocations.total))),
        ("  failed", r.designs().map(|d| pct(d.invocations.failed, d.invocations.total))),
        ("    EniLimitExceeded", r.designs().map(|d| d.invocations.failed_by_reason.eni_limit_exceeded.to_string())),
        (
            "    SubnetOutOfIPAddresses",
            r.designs().map(|d| d.invocations.failed_by_reason.subnet_out_of_ip_addresses.to_string()),
        ),
        ("    ResourceNotReady", r.designs().map(|d| d.invocations.failed_by_reason.resource_not_ready.to_string())),
        ("cold starts", r.designs().map(|d| d.invocations.cold_starts.to_string())),
        ("warm starts", r.designs().map(|d| d.invocations.warm_starts.to_string())),
        ("cold-start network p50", r.designs().map(|d| fmt_secs(d.cold_start_latency.p50_s))),
        ("cold-start network p99", r.designs().map(|d| fmt_secs(d.cold_start_latency.p99_s))),
        ("cold-start network max", r.designs().map(|d| fmt_secs(d.cold_start_latency.max_s))),
        ("cold-start network mean", r.designs().map(|d| fmt_secs(d.cold_start_latency.mean_s))),
        ("ENIs created", r.designs().map(|d| d.enis_created.to_string())),
        ("ENIs deleted", r.designs().map(|d| d.enis_deleted.to_string())),
        ("peak subnet addresses", r.designs().map(|d| d.peak_addresses.to_string())),
        (
            "  by subnet",
            r.designs().map(|d| {
                d.peak_addresses_by_subnet.iter().map(|(s, n)| format!("{s}:{n}")).collect::<Vec<_>>().join(" ")
            }),
        ),
        ("peak concurrency", r.designs().map(|d| d.peak_concurrency.to_string())),
        ("peak environments", r.designs().map(|d| d.peak_environments.to_string())),
        ("peak connections", r.designs().map(|d| d.peak_connections.to_string())),
        (
            "time to target concurrency",
            r.designs().map(|d| match d.time_to_target_s {
                Some(t) => fmt_secs(t),
                None if matches!(sc.arrival, super::Arrival::Burst { .. }) => "not reached".into(),
                None => "-".into(),
            }),
        ),
        ("simulated time", r.designs().map(|d| fmt_secs(d.sim_end_s))),
        ("wall clock", r.designs().map(|d| format!("{:.1} ms", d.wall_clock_ms))),
    ];
    let w0 = rows.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(0).max(10);
    let w1 = rows
        .iter()
        .map(|(_, v)| v[0].chars().count())
        .chain([Design::PerEnvironmentEni.label().len()])
        .max()
        .unwrap_or(0);
    let _ = writeln!(out, "{:<w0$}  {:<w1$}  {}", "", Design::PerEnvironmentEni.label(), Design::SharedEni.label());
    for (name, [a, b]) in rows {
        let _ = writeln!(out, "{name:<w0$}  {a:<w1$}  {b}");
    }
    out
}

/// One row per swept value: latency, failures, addresses and ENIs of both designs.
pub fn sweep_table(param: SweepParam, results: &[(f64, StudyResult)]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "sweep of {} (P = per-environment ENI, S = shared ENI)", param.name());
    let header = [
        param.name(),
        "P p50",
        "P p99",
        "S p50",
        "S p99",
        "P failed",
        "S failed",
        "P addrs",
        "S addrs",
        "P ENIs",
        "S ENIs",
        "P to target",
        "S to target",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for (v, r) in results {
        let (p, s) = (&r.per_env, &r.shared);
        let target = |d: &DesignResult| d.time_to_target_s.map(fmt_secs).unwrap_or_else(|| "-".into());
        rows.push(vec![
            format!("{v}"),
            fmt_secs(p.cold_start_latency.p50_s),
            fmt_secs(p.cold_start_latency.p99_s),
            fmt_secs(s.cold_start_latency.p50_s),
            fmt_secs(s.cold_start_latency.p99_s),
            pct(p.invocations.failed, p.invocations.total),
            pct(s.invocations.failed, s.invocations.total),
            p.peak_addresses.to_string(),
            s.peak_addresses.to_string(),
            p.enis_created.to_string(),
            s.enis_created.to_string(),
            target(p),
            target(s),
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, &w)| format!("{c:>w$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// Writes `study.json` (the whole result) into `dir` (created if missing).
pub fn write_json(r: &StudyResult, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("study.json");
    let text = serde_json::to_string_pretty(r).map_err(io::Error::other)?;
    std::fs::write(&path, text)?;
    Ok(vec![path])
}

/// The CSV header of [`write_csv`].
pub const CSV_HEADER: &str = "design,t_start_s,t_end_s,invocations,failures,cold_starts,concurrency,environments,\
addresses,p50_latency_s,p99_latency_s";

/// Writes `series.csv` (one row per bucket per design) into `dir` (created if missing).
pub fn write_csv(r: &StudyResult, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("series.csv");
    let mut s = String::new();
    let _ = writeln!(s, "{CSV_HEADER}");
    let opt = |x: Option<f64>| x.map(|v| format!("{v:e}")).unwrap_or_default();
    for d in r.designs() {
        for b in &d.series {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{}",
                d.design.id(),
                b.t_start_s,
                b.t_end_s,
                b.invocations,
                b.failures,
                b.cold_starts,
                b.concurrency,
                b.environments,
                b.addresses,
                opt(b.p50_latency_s),
                opt(b.p99_latency_s)
            );
        }
    }
    std::fs::write(&path, s)?;
    Ok(vec![path])
}

/// Writes `sweep.json` and `sweep.csv` (one row per value per design) into `dir`.
pub fn write_sweep(param: SweepParam, results: &[(f64, StudyResult)], dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let json_path = dir.join("sweep.json");
    let points: Vec<serde_json::Value> =
        results.iter().map(|(v, r)| serde_json::json!({ "param": param.name(), "value": v, "result": r })).collect();
    std::fs::write(&json_path, serde_json::to_string_pretty(&points).map_err(io::Error::other)?)?;
    let csv_path = dir.join("sweep.csv");
    let mut s = String::from(
        "param,value,design,invocations,ok,failed,eni_limit_exceeded,subnet_out_of_ip_addresses,resource_not_ready,\
cold_starts,p50_s,p99_s,max_s,enis_created,peak_addresses,peak_concurrency,time_to_target_s\n",
    );
    for (v, r) in results {
        for d in r.designs() {
            let i = &d.invocations;
            let l = &d.cold_start_latency;
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{:e},{:e},{:e},{},{},{},{}",
                param.name(),
                v,
                d.design.id(),
                i.total,
                i.ok,
                i.failed,
                i.failed_by_reason.eni_limit_exceeded,
                i.failed_by_reason.subnet_out_of_ip_addresses,
                i.failed_by_reason.resource_not_ready,
                i.cold_starts,
                l.p50_s,
                l.p99_s,
                l.max_s,
                d.enis_created,
                d.peak_addresses,
                d.peak_concurrency,
                d.time_to_target_s.map(|t| t.to_string()).unwrap_or_default()
            );
        }
    }
    std::fs::write(&csv_path, s)?;
    Ok(vec![json_path, csv_path])
}

fn design_colors(d: Design) -> (RGBColor, RGBColor) {
    match d {
        Design::PerEnvironmentEni => (RGBColor(200, 40, 40), RGBColor(240, 150, 150)),
        Design::SharedEni => (RGBColor(30, 90, 200), RGBColor(140, 180, 240)),
    }
}

fn plot_err<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(format!("plot: {e}"))
}

/// Writes `cold_start_latency.svg` and `addresses_vs_concurrency.svg` into `dir`.
pub fn write_svgs(r: &StudyResult, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let a = dir.join("cold_start_latency.svg");
    latency_plot(r, &a)?;
    let b = dir.join("addresses_vs_concurrency.svg");
    addresses_plot(r, &b)?;
    Ok(vec![a, b])
}

/// (a) p50 and p99 cold-start network latency per bucket over time, log y axis.
fn latency_plot(r: &StudyResult, path: &Path) -> io::Result<()> {
    let values = r
        .designs()
        .into_iter()
        .flat_map(|d| d.series.iter().flat_map(|b| [b.p50_latency_s, b.p99_latency_s]))
        .flatten()
        .filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo.is_finite() && hi > 0.0 { (lo / 2.0, hi * 2.0) } else { (1e-6, 10.0) };
    let x_end = r.designs().iter().map(|d| d.sim_end_s).fold(1e-9, f64::max);
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Cold-start network latency over time (per bucket)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_end, (lo..hi).log_scale())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("network part of the cold start (s, log)")
        .y_label_formatter(&|v| fmt_secs(*v))
        .draw()
        .map_err(plot_err)?;
    for d in r.designs() {
        let (strong, light) = design_colors(d.design);
        let mid = |b: &super::Bucket| (b.t_start_s + b.t_end_s) / 2.0;
        let p50: Vec<(f64, f64)> =
            d.series.iter().filter_map(|b| b.p50_latency_s.filter(|v| *v > 0.0).map(|v| (mid(b), v))).collect();
        let p99: Vec<(f64, f64)> =
            d.series.iter().filter_map(|b| b.p99_latency_s.filter(|v| *v > 0.0).map(|v| (mid(b), v))).collect();
        chart
            .draw_series(LineSeries::new(p50.iter().copied(), strong.stroke_width(2)))
            .map_err(plot_err)?
            .label(format!("{} p50", d.design.label()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], strong.stroke_width(2)));
        chart.draw_series(p50.iter().map(|&p| Circle::new(p, 2, strong.filled()))).map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(p99.iter().copied(), light.stroke_width(1)))
            .map_err(plot_err)?
            .label(format!("{} p99", d.design.label()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], light.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// (b) subnet addresses in use against concurrency (one point per bucket), with the published
/// per-environment sizing formula as a reference line.
fn addresses_plot(r: &StudyResult, path: &Path) -> io::Result<()> {
    let max_c = r.designs().iter().flat_map(|d| d.series.iter().map(|b| b.concurrency)).max().unwrap_or(0).max(1);
    let max_a = r.designs().iter().flat_map(|d| d.series.iter().map(|b| b.addresses)).max().unwrap_or(0).max(1);
    let mem = r.scenario.weighted_memory_mb();
    let worker = f64::from(r.scenario.per_env.worker_mb.max(1));
    let formula_top = f64::from(max_c) * mem / worker;
    let y_top = (f64::from(max_a).max(formula_top.min(f64::from(max_a) * 4.0)) * 1.1).max(2.0);
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Subnet addresses in use against concurrency (per bucket)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..f64::from(max_c) * 1.05, 0f64..y_top)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("concurrency (running invocations, bucket max)")
        .y_desc("addresses (ENIs) in use")
        .draw()
        .map_err(plot_err)?;
    let grey = RGBColor(120, 120, 120);
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (f64::from(max_c), formula_top)].into_iter().filter(|p| p.1 <= y_top * 10.0),
            grey.stroke_width(1),
        ))
        .map_err(plot_err)?
        .label(format!("published sizing: concurrency x {mem:.0} MB / {worker:.0} MB"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(1)));
    for d in r.designs() {
        let (strong, _) = design_colors(d.design);
        chart
            .draw_series(
                d.series
                    .iter()
                    .map(|b| Circle::new((f64::from(b.concurrency), f64::from(b.addresses)), 3, strong.filled())),
            )
            .map_err(plot_err)?
            .label(d.design.label())
            .legend(move |(x, y)| Circle::new((x + 10, y), 3, strong.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}
