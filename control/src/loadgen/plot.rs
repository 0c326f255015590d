//! SVG plots of a run (plotters): throughput per 100 ms bucket, and the connection-setup latency distribution.
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
    let secs = 0.1;
    // The figure each scenario is about, per second.
    let (label, series): (&str, Vec<(f64, f64)>) = match r.scenario.as_str() {
        "udp" => (
            "datagrams/s delivered",
            r.timeline.iter().map(|b| (b.t_ms as f64 / 1e3, b.delivered_packets as f64 / secs)).collect(),
        ),
        "tcp-bulk" => (
            "Gbit/s delivered",
            r.timeline.iter().map(|b| (b.t_ms as f64 / 1e3, b.delivered_bytes as f64 * 8.0 / secs / 1e9)).collect(),
        ),
        _ => (
            "connections/s completed",
            r.timeline.iter().map(|b| (b.t_ms as f64 / 1e3, b.connects as f64 / secs)).collect(),
        ),
    };
    let offered: Vec<(f64, f64)> =
        r.timeline.iter().map(|b| (b.t_ms as f64 / 1e3, b.offered_packets as f64 / secs)).collect();
    let xmax = series.last().map_or(1.0, |p| p.0 + 0.1);
    let scale = |v: &[(f64, f64)]| v.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.1;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(250);
    let title = format!("{} against {}: {} environments", r.scenario, r.target, r.envs);
    let mut c = ChartBuilder::on(&top)
        .caption(&title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..xmax, 0.0..scale(&series))?;
    c.configure_mesh().x_desc("s").y_desc(label).draw()?;
    c.draw_series(LineSeries::new(series, &BLUE))?.label(label);
    let mut c = ChartBuilder::on(&bottom)
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..xmax, 0.0..scale(&offered))?;
    c.configure_mesh().x_desc("s").y_desc("frames/s offered").draw()?;
    c.draw_series(LineSeries::new(offered, &RED))?;
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
