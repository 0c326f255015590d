//! SVG plots of a run (plotters): over the whole run, bucket by bucket (100 ms, or 1 s for runs longer than 10
//! minutes), the scenario's figure, the frames offered and the failures per second; and the connection-setup
//! latency distribution.
//! A plot that cannot be drawn is skipped (and not listed); plotting never fails a run.

use super::LoadReport;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::path::Path;

/// Writes `{stem}-throughput.svg` and, with latencies, `{stem}-latency.svg` into `dir`; the paths written.
pub(crate) fn write_all(dir: &Path, stem: &str, r: &LoadReport, hist: Option<&Histogram<u64>>) -> Vec<String> {
    let mut out = Vec::new();
    let p = dir.join(format!("{stem}-throughput.svg"));
    if throughput(&p, r).is_ok() {
        out.push(p.display().to_string());
    }
    if let Some(h) = hist.filter(|h| !h.is_empty()) {
        let p = dir.join(format!("{stem}-latency.svg"));
        if latency(&p, h, r).is_ok() {
            out.push(p.display().to_string());
        }
    }
    out
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

fn throughput(path: &Path, r: &LoadReport) -> PlotResult {
    let secs = (r.timeline_bucket_ms.max(1) as f64) / 1e3;
    // The x axis in seconds, minutes or hours, by the length of the run.
    let span = r.timeline.last().map_or(1.0, |b| b.t_ms as f64 / 1e3 + secs);
    let (unit, per) = if span > 6.0 * 3600.0 {
        ("h", 3600.0)
    } else if span > 1800.0 {
        ("min", 60.0)
    } else {
        ("s", 1.0)
    };
    let x = |b: &super::Bucket| b.t_ms as f64 / 1e3 / per;
    let per_s =
        |f: fn(&super::Bucket) -> f64| -> Vec<(f64, f64)> { r.timeline.iter().map(|b| (x(b), f(b) / secs)).collect() };
    // The figure each scenario is about, per second.
    let (label, series) = match r.scenario.as_str() {
        "udp" => ("datagrams/s delivered", per_s(|b| b.delivered_packets as f64)),
        "tcp-bulk" => ("Gbit/s delivered", per_s(|b| b.delivered_bytes as f64 * 8.0 / 1e9)),
        _ => ("connections/s completed", per_s(|b| b.connects as f64)),
    };
    let offered = per_s(|b| b.offered_packets as f64);
    // Failures: datagrams not delivered (udp: offered − delivered in the bucket), else failed connections.
    let (fail_label, failures) = match r.scenario.as_str() {
        "udp" => ("datagrams/s lost", per_s(|b| b.offered_packets.saturating_sub(b.delivered_packets) as f64)),
        _ => ("failures/s", per_s(|b| b.connect_failures as f64)),
    };
    let xmax = (span / per).max(1e-3);
    let scale = |v: &[(f64, f64)]| v.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.1;
    let root = SVGBackend::new(path, (900, 660)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));
    let title = format!(
        "{} against {}: {} environments, {:.0} s{}",
        r.scenario,
        r.target,
        r.envs,
        r.duration_s,
        if r.stopped_early { " (stopped early)" } else { "" }
    );
    let panes = [(label, series, BLUE), ("frames/s offered", offered, RED), (fail_label, failures, BLACK)];
    for (k, (area, (label, data, colour))) in panels.iter().zip(panes).enumerate() {
        let mut b = ChartBuilder::on(area);
        if k == 0 {
            b.caption(&title, ("sans-serif", 18));
        }
        let mut c =
            b.margin(8).x_label_area_size(30).y_label_area_size(70).build_cartesian_2d(0.0..xmax, 0.0..scale(&data))?;
        c.configure_mesh().x_desc(unit).y_desc(label).draw()?;
        c.draw_series(LineSeries::new(data, &colour))?;
    }
    root.present()?;
    Ok(())
}

fn latency(path: &Path, h: &Histogram<u64>, r: &LoadReport) -> PlotResult {
    // Counts per logarithmic bucket (10 µs, doubling).
    let pts: Vec<(f64, f64)> = h
        .iter_log(10, 2.0)
        .map(|v| (v.value_iterated_to() as f64 / 1e3, v.count_since_last_iteration() as f64))
        .collect();
    let xmax = pts.iter().map(|p| p.0).fold(0.0f64, f64::max).max(0.01) * 1.1;
    let ymax = pts.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1.0) * 1.1;
    let root = SVGBackend::new(path, (900, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "connection setup (SYN → established), {}: p50 {} µs, p99 {} µs, max {} µs",
        r.target,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
    let mut c = ChartBuilder::on(&root)
        .caption(&title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d((0.01..xmax).log_scale(), 0.0..ymax)?;
    c.configure_mesh().x_desc("ms (log)").y_desc("connections").draw()?;
    c.draw_series(LineSeries::new(pts.iter().copied(), &BLUE))?;
    c.draw_series(pts.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bucket;

    #[test]
    fn a_two_hour_run_is_plotted_second_by_second() {
        let timeline = (0..7200u64)
            .map(|s| Bucket {
                t_ms: s * 1000,
                offered_packets: 5000,
                connects: 1000 - s % 7,
                connect_failures: u64::from(s % 600 == 0),
                ..Bucket::default()
            })
            .collect();
        let r = LoadReport {
            scenario: "connect".into(),
            target: "ours".into(),
            envs: 1000,
            duration_s: 7200.0,
            timeline_bucket_ms: 1000,
            timeline,
            ..LoadReport::default()
        };
        let dir = std::env::temp_dir().join(format!("loadgen-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let written = write_all(&dir, "soak", &r, None);
        assert_eq!(written.len(), 1, "{written:?}");
        let svg = std::fs::read_to_string(&written[0]).expect("svg");
        assert!(svg.contains("failures/s") && svg.contains("min"), "three panels, minutes on the x axis");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
