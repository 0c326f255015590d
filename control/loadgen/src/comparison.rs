//! `--compare`: the same scenario against our gateway and then the kernel's NAT, in one run, figure by figure.
//!
//! A ratio (`ours / kernel`) is given only where one means something: rates, throughput, latencies. For counts
//! and shares (loss %, failed connections) both values are shown and the ratio is `—` (null in JSON), as it is when
//! the kernel's figure is 0. Every throughput figure comes as a pair, offered beside delivered, for both targets:
//! when a target was offered no more than it carried (`offered ≤ delivered × 1.05`), the figure measures the load
//! generator rather than the NAT, and a warning line says so.
//!
//! For `udp` and `mixed` the kernel's own count of UDP packets that reached the VPC router from the NAT (an
//! nftables netdev ingress counter, [`netlab::meter`]) is shown beside the responder's delivered datagrams.
//!
//! What "offered" is per scenario: `udp`, datagrams the environments sent per second; `connect` (and the connect
//! share of `mixed`), `--rate` when given, else connections started per second; `tcp-bulk`, bytes the environments
//! queued, in Gbit/s.

use super::{run, LoadArgs, LoadError, LoadReport, Scenario, Target};
use serde::Serialize;
use std::fmt::Write as _;

/// Offered within this factor of delivered: not saturated.
pub const SATURATION_MARGIN: f64 = 1.05;

/// One figure for both targets.
#[derive(Clone, Debug, Serialize)]
pub struct CompareRow {
    /// What is measured, with its unit.
    pub figure: String,
    /// Our gateway.
    pub ours: f64,
    /// The kernel.
    pub kernel: f64,
    /// `ours / kernel` where a ratio means something (rates, throughput, latencies) and the kernel's figure is not
    /// 0; else null (printed `—`).
    pub ratio: Option<f64>,
}

/// The same scenario against our gateway and the kernel, in one run.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// Our gateway's run.
    pub ours: LoadReport,
    /// The kernel's run (None when the run was stopped before it).
    pub kernel: Option<LoadReport>,
    /// Each figure side by side (empty without the kernel's run).
    pub rows: Vec<CompareRow>,
    /// Figures that measure the load generator rather than the NAT (see the module doc).
    pub warnings: Vec<String>,
}

/// Whether a figure has a meaningful ratio.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A rate, a throughput or a latency.
    Ratio,
    /// A count or a share: both values, no ratio.
    Plain,
}

/// An offered/delivered pair: (what, offered, delivered).
type Pair = (&'static str, fn(&LoadReport) -> f64, fn(&LoadReport) -> f64);

fn secs(r: &LoadReport) -> f64 {
    r.duration_s.max(1e-9)
}

fn offered_connects(r: &LoadReport) -> f64 {
    r.rate.unwrap_or_else(|| r.connect.as_ref().map_or(0.0, |c| c.attempted as f64 / secs(r)))
}

fn completed_connects(r: &LoadReport) -> f64 {
    r.connect.as_ref().map_or(0.0, |c| c.per_s)
}

fn offered_datagrams(r: &LoadReport) -> f64 {
    r.udp.as_ref().map_or(0.0, |u| u.sent as f64 / secs(r))
}

fn delivered_datagrams(r: &LoadReport) -> f64 {
    match Scenario::parse(&r.scenario) {
        // The VPC counter's count without --echo, the responder's with it (see `LoadReport::delivered`).
        Ok(Scenario::Udp) => r.delivered.pps,
        _ => r.responder.udp_packets as f64 / secs(r),
    }
}

fn offered_gbps(r: &LoadReport) -> f64 {
    r.tcp_bulk.as_ref().map_or(0.0, |b| b.sent_bytes as f64 * 8.0 / secs(r) / 1e9)
}

fn delivered_gbps(r: &LoadReport) -> f64 {
    r.tcp_bulk.as_ref().map_or(0.0, |b| b.gbps)
}

/// The offered/delivered pairs of a scenario.
fn pairs(s: Scenario) -> Vec<Pair> {
    let udp: Pair = ("datagrams/s", offered_datagrams, delivered_datagrams);
    let conn: Pair = ("connections/s", offered_connects, completed_connects);
    let bulk: Pair = ("Gbit/s", offered_gbps, delivered_gbps);
    match s {
        Scenario::Udp => vec![udp],
        Scenario::TcpBulk => vec![bulk],
        Scenario::Connect => vec![conn],
        Scenario::Mixed => vec![conn, udp, bulk],
    }
}

/// The figures of one run that measure the load generator rather than the NAT: for each offered/delivered pair of
/// its scenario, a warning when the target was offered no more than it carried (`offered ≤ delivered × 1.05`).
pub fn saturation_warnings(r: &LoadReport) -> Vec<String> {
    let scenario = Scenario::parse(&r.scenario).unwrap_or(Scenario::Connect);
    let mut warnings = Vec::new();
    for (what, offered, delivered) in pairs(scenario) {
        let (o, d) = (offered(r), delivered(r));
        if o <= d * SATURATION_MARGIN {
            warnings.push(format!(
                "{}: {what}: not saturated: offered {} ≤ delivered {} × {SATURATION_MARGIN} — this figure is the \
                 generator's, not the NAT's",
                r.target,
                num(o),
                num(d)
            ));
        }
    }
    warnings
}

impl CompareReport {
    /// Sets `ours` and `kernel` side by side.
    pub fn new(ours: LoadReport, kernel: Option<LoadReport>) -> CompareReport {
        let scenario = Scenario::parse(&ours.scenario).unwrap_or(Scenario::Connect);
        let mut rows = Vec::new();
        let warnings: Vec<String> =
            std::iter::once(&ours).chain(kernel.as_ref()).flat_map(saturation_warnings).collect();
        if let Some(k) = &kernel {
            let mut row = |figure: &str, kind: Kind, get: &dyn Fn(&LoadReport) -> f64| {
                let (a, b) = (get(&ours), get(k));
                let ratio = (kind == Kind::Ratio && b > 0.0).then(|| a / b);
                rows.push(CompareRow { figure: figure.into(), ours: a, kernel: b, ratio });
            };
            if scenario != Scenario::Udp {
                // (For udp, every frame written is an offered datagram.)
                row("frames written/s", Kind::Ratio, &|r| r.offered.pps);
            }
            for (what, offered, delivered) in pairs(scenario) {
                row(&format!("offered {what}"), Kind::Ratio, &offered);
                row(&format!("delivered {what}"), Kind::Ratio, &delivered);
            }
            if matches!(scenario, Scenario::Udp | Scenario::Mixed) {
                // The kernel's own count at the VPC side, next to the responder's.
                row("VPC counter, packets/s", Kind::Ratio, &|r| r.vpc_counted.as_ref().map_or(0.0, |c| c.pps));
                row("loss, %", Kind::Plain, &|r| r.loss.ratio * 100.0);
            }
            if ours.trafgen.is_some() || k.trafgen.is_some() {
                let t = |r: &LoadReport, f: fn(&super::TrafgenCheck) -> f64| r.trafgen.as_ref().map_or(0.0, f);
                row("trafgen one flow, offered/s", Kind::Ratio, &|r| t(r, |c| c.rates.offered_pps));
                row("trafgen one flow, delivered/s", Kind::Ratio, &|r| t(r, |c| c.rates.delivered_pps));
                row("delivered vs trafgen, % apart", Kind::Plain, &|r| {
                    t(r, |c| c.apart.map_or(f64::NAN, |a| a * 100.0))
                });
            }
            if matches!(scenario, Scenario::Connect | Scenario::Mixed) {
                let c = |r: &LoadReport, f: fn(&super::ConnectFigures) -> f64| r.connect.as_ref().map_or(0.0, f);
                row("failed connections", Kind::Plain, &|r| c(r, |c| c.failed as f64));
                row("setup p50, µs", Kind::Ratio, &|r| c(r, |c| c.latency_us.p50 as f64));
                row("setup p99, µs", Kind::Ratio, &|r| c(r, |c| c.latency_us.p99 as f64));
                row("setup p99.9, µs", Kind::Ratio, &|r| c(r, |c| c.latency_us.p999 as f64));
                row("setup max, µs", Kind::Ratio, &|r| c(r, |c| c.latency_us.max as f64));
            }
            if matches!(scenario, Scenario::TcpBulk | Scenario::Mixed) {
                row("bulk streams reset", Kind::Plain, &|r| r.errors.get("connect_reset").copied().unwrap_or(0) as f64);
            }
            row("errors (all kinds)", Kind::Plain, &|r| r.errors.values().sum::<u64>() as f64);
        }
        CompareReport { ours, kernel, rows, warnings }
    }

    /// A human-readable table, then the warnings.
    pub fn table(&self) -> String {
        let mut t = format!(
            "loadgen compare: {} with {} environments, {:.1} s against hyperplane{}\n",
            self.ours.scenario,
            self.ours.envs,
            self.ours.duration_s,
            self.kernel.as_ref().map(|k| format!(", {:.1} s against the kernel", k.duration_s)).unwrap_or_default()
        );
        if self.kernel.is_none() {
            t += "  stopped before the kernel's run: no comparison\n";
        } else {
            let _ = writeln!(t, "{:<28} {:>14} {:>14} {:>8}", "figure", "hyperplane", "kernel NAT", "ratio");
            for r in &self.rows {
                let ratio = r.ratio.map_or("—".to_string(), |x| format!("{x:.2}×"));
                let _ = writeln!(t, "{:<28} {:>14} {:>14} {:>8}", r.figure, num(r.ours), num(r.kernel), ratio);
            }
        }
        for w in &self.warnings {
            let _ = writeln!(t, "warning: {w}");
        }
        t
    }
}

/// A figure for the table: grouped integers from 100 up, else up to three decimals.
pub(crate) fn num(v: f64) -> String {
    if v.is_nan() {
        // A figure that does not exist (nothing to compare with).
        return "—".into();
    }
    if !v.is_finite() {
        return v.to_string();
    }
    if v.abs() >= 100.0 {
        let s = format!("{:.0}", v.abs());
        let mut g = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                g.push(',');
            }
            g.push(c);
        }
        return if v < 0.0 { format!("-{g}") } else { g };
    }
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Runs `args` against our gateway, then against the kernel NAT (unless stopped meanwhile), and sets the figures
/// side by side. With `out_dir`, each run writes into its own sub-directory (`ours/`, `kernel/`) and the comparison
/// goes to `compare.json`.
pub fn compare(args: &LoadArgs) -> Result<CompareReport, LoadError> {
    let sub = |name: &str| args.out_dir.as_ref().map(|d| d.join(name));
    let ours = run(&LoadArgs { target: Target::Ours, out_dir: sub("ours"), ..args.clone() })?;
    let kernel = if args.stop.is_stopped() {
        None
    } else {
        // The `[gateway]` settings are ours; the kernel has none.
        let k = LoadArgs { target: Target::Kernel, out_dir: sub("kernel"), gateway: None, ..args.clone() };
        match run(&k) {
            Ok(r) => Some(r),
            Err(LoadError::Stopped) => None,
            Err(e) => return Err(e),
        }
    };
    let c = CompareReport::new(ours, kernel);
    if let Some(dir) = &args.out_dir {
        let path = dir.join("compare.json");
        let json = serde_json::to_string_pretty(&c).unwrap_or_default();
        std::fs::write(&path, json).map_err(|e| super::io_err(format!("write {}", path.display()), e))?;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConnectFigures, Latency};

    #[test]
    fn a_trafgen_run_that_delivered_nothing_has_no_distance_to_show() {
        let mut r = connect_report("kernel", 10, 10, 0, 100);
        r.scenario = "udp".into();
        let nothing = crate::trafgen::TrafgenRates { offered_pps: 0.0, delivered_pps: 0.0 };
        r.trafgen = Some(crate::TrafgenCheck { rates: nothing, apart: None });
        let c = CompareReport::new(r.clone(), Some(r));
        let row = c.rows.iter().find(|x| x.figure.contains("apart")).expect("the distance row");
        assert!(row.ours.is_nan() && row.kernel.is_nan(), "{row:?}");
        assert!(c.table().lines().any(|l| l.starts_with("delivered vs trafgen") && l.contains('—')), "{}", c.table());
        assert_eq!(num(f64::NAN), "—");
    }

    fn connect_report(target: &str, attempted: u64, completed: u64, failed: u64, p50: u64) -> LoadReport {
        LoadReport {
            scenario: "connect".into(),
            target: target.into(),
            envs: 1000,
            duration_s: 2.0,
            connect: Some(ConnectFigures {
                attempted,
                established: completed,
                completed,
                failed,
                per_s: completed as f64 / 2.0,
                latency_us: Latency { p50, p99: 2 * p50, p999: 4 * p50, max: 8 * p50, ..Latency::default() },
                ..ConnectFigures::default()
            }),
            ..LoadReport::default()
        }
    }

    #[test]
    fn ratios_only_where_they_mean_something() {
        let c = CompareReport::new(
            connect_report("ours", 30_000, 20_000, 7, 200),
            Some(connect_report("kernel", 20_100, 20_000, 3, 100)),
        );
        let row = |f: &str| c.rows.iter().find(|r| r.figure == f).unwrap_or_else(|| panic!("row {f}: {:?}", c.rows));
        assert_eq!(row("delivered connections/s").ratio, Some(1.0));
        assert_eq!(row("setup p50, µs").ratio, Some(2.0));
        let failed = row("failed connections");
        assert_eq!((failed.ours, failed.kernel, failed.ratio), (7.0, 3.0, None));
        let t = c.table();
        let line = t.lines().find(|l| l.starts_with("failed connections")).expect("failed row");
        assert!(line.trim_end().ends_with('—'), "{line}");
        assert!(t.contains("offered connections/s"), "offered beside delivered: {t}");
        // The kernel was offered 20,100/s and carried 20,000/s: its figure is the generator's; ours was offered more.
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].starts_with("kernel: connections/s: not saturated: offered"), "{:?}", c.warnings);
        assert!(t.contains("this figure is the generator's, not the NAT's"), "{t}");
        let json = serde_json::to_value(&c).expect("serialises");
        assert!(json["rows"].as_array().expect("rows").iter().any(|r| r["ratio"].is_null()));
    }

    #[test]
    fn compare_prints_no_ratio_for_counts_and_warns_when_not_saturated() {
        let c = CompareReport::new(
            connect_report("ours", 40_000, 30_000, 12, 200),
            Some(connect_report("kernel", 30_000, 30_000, 0, 400)),
        );
        let t = c.table();
        eprintln!("{t}");
        let line = |f: &str| t.lines().find(|l| l.starts_with(f)).unwrap_or_else(|| panic!("{f} in {t}")).to_string();
        assert!(line("failed connections").trim_end().ends_with('—'), "{t}");
        assert!(line("setup p50, µs").trim_end().ends_with("0.50×"), "{t}");
        assert!(line("delivered connections/s").trim_end().ends_with("1.00×"), "{t}");
        assert!(t.find("offered connections/s") < t.find("delivered connections/s"), "offered beside delivered: {t}");
        let warnings: Vec<&str> = t.lines().filter(|l| l.starts_with("warning:")).collect();
        assert_eq!(warnings.len(), 1, "only the kernel was not offered more than it carried: {t}");
        assert!(warnings[0].contains("kernel") && warnings[0].contains("not saturated: offered"), "{t}");
    }

    #[test]
    fn a_single_run_says_when_its_figure_is_the_generators() {
        // Offered 20,100/s, carried 20,000/s: within 5%, so the generator was the limit.
        let paced = connect_report("external", 40_200, 40_000, 0, 100);
        let w = saturation_warnings(&paced);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("external: connections/s: not saturated"), "{w:?}");
        // Offered 30,000/s, carried 10,000/s: the NAT was the limit.
        assert!(saturation_warnings(&connect_report("external", 60_000, 20_000, 0, 100)).is_empty());
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(16_962.4), "16,962");
        assert_eq!(num(1.54), "1.540");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(42.34), "42.3");
        assert_eq!(num(-1234.0), "-1,234");
    }
}
