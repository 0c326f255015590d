//! `hyperplane study --real`: both designs measured on this machine.
//!
//! For each design, a [`Lab`] with N execution environments (each in its
//! own namespace on its own TAP) and our gateway with its control plane:
//! - **per-environment ENIs** (`eni_mode = "per-environment"`): when an
//!   environment starts, its ENI is set up on its cold-start path (an
//!   address from the subnet, ARP probe, announcement, plus the modelled
//!   provisioning delay); the environment connects once it is active, as
//!   environments waited for their ENI before 2019;
//! - **shared ENI**: the ENI was set up once when the lab started; an
//!   environment connects at once.
//!
//! Per environment it records the time from its start to its first
//! successful TCP request/response with a server in the VPC, and for each
//! design the ENIs and subnet addresses used. Environments start together,
//! as in a burst of cold starts. The output uses the simulation's names
//! ([`LatencySummary`], `enis_created`, `peak_addresses`) so the two can be
//! compared, as a table, `real.json` and `real_latency.svg`.

use netlab::lab::{self, Lab, Options};
use netlab::{env_addr, SERVER};
use plotters::prelude::*;
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use study::LatencySummary;

const PORT: u16 = 7800;
/// How long one environment may take to connect.
const LIMIT: Duration = Duration::from_secs(60);

/// One design measured.
#[derive(Clone, Debug, Serialize)]
pub struct RealDesign {
    /// `per_env` or `shared`.
    pub design: &'static str,
    /// Environments started.
    pub environments: usize,
    /// Of which connected.
    pub connected: usize,
    /// Time from start to first successful request/response, seconds.
    pub cold_start_latency: LatencySummary,
    /// ENIs set up.
    pub enis_created: usize,
    /// Subnet addresses in use at the end.
    pub peak_addresses: usize,
    /// One-time ENI setup before any environment started, seconds (the
    /// shared design's; zero for per-environment).
    pub setup_s: f64,
    /// Each environment's latency, seconds, by index (None: it failed).
    pub per_environment_s: Vec<Option<f64>>,
}

/// Both designs.
#[derive(Clone, Debug, Serialize)]
pub struct RealResult {
    /// The provisioning delay modelled, ms.
    pub provisioning_delay_ms: u64,
    /// Before 2019.
    pub per_env: RealDesign,
    /// Since 2019.
    pub shared: RealDesign,
}

/// Measures both designs with `envs` environments.
pub fn run(envs: usize, provisioning_delay_ms: u64) -> Result<RealResult, lab::LabBuildError> {
    let per_env = measure(envs, true, provisioning_delay_ms)?;
    let shared = measure(envs, false, provisioning_delay_ms)?;
    Ok(RealResult { provisioning_delay_ms, per_env, shared })
}

fn summary(v: &[f64]) -> LatencySummary {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return LatencySummary::default();
    }
    let rank = |q: f64| s[((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1];
    LatencySummary {
        count: s.len() as u64,
        mean_s: s.iter().sum::<f64>() / s.len() as f64,
        p50_s: rank(0.5),
        p99_s: rank(0.99),
        max_s: s[s.len() - 1],
    }
}

fn measure(envs: usize, per_env: bool, delay_ms: u64) -> Result<RealDesign, lab::LabBuildError> {
    let mode = if per_env { "per-environment" } else { "shared" };
    let opts = Options {
        envs,
        gateway_extra: format!("eni_mode = \"{mode}\"\nprovisioning_delay_ms = {delay_ms}\n"),
        ..Options::default()
    };
    let lab = Lab::build(&opts)?;
    let setup_s = if per_env { 0.0 } else { lab.eni_setup.as_secs_f64() };
    let l = lab.server.run(|| TcpListener::bind(SocketAddrV4::new(SERVER, PORT)));
    let l = l.map_err(|e| lab::LabBuildError::Lab(netlab::LabError::io("bind the study server", e)))?;
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut line = String::new();
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            if BufReader::new(&c).read_line(&mut line).is_ok() {
                let _ = c.write_all(b"ok\n");
            }
        }
    });
    let shared = std::sync::Arc::clone(lab.runtime().shared());
    let start = Instant::now();
    let clients: Vec<_> = lab
        .envs
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let shared = std::sync::Arc::clone(&shared);
            ns.thread(move || {
                let t0 = Instant::now();
                let env = env_addr(i);
                // The environment starts: in per-environment mode this is
                // what sets up its ENI.
                {
                    let now = shared.now();
                    shared.controller().traffic(env, now);
                }
                // Wait for an ENI, as environments did before 2019.
                while shared.controller().bindings().env(env).is_none_or(|e| e.eni == 0) {
                    if t0.elapsed() > LIMIT {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                let dst = SocketAddr::from(SocketAddrV4::new(SERVER, PORT));
                while t0.elapsed() < LIMIT {
                    if let Ok(mut c) = TcpStream::connect_timeout(&dst, Duration::from_millis(500)) {
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut line = String::new();
                        if c.write_all(b"hello\n").is_ok()
                            && BufReader::new(&c).read_line(&mut line).is_ok_and(|n| n > 0)
                        {
                            return Some(t0.elapsed().as_secs_f64());
                        }
                    }
                }
                None
            })
        })
        .collect();
    let per_environment_s: Vec<Option<f64>> = clients.into_iter().map(|c| c.join().ok().flatten()).collect();
    tracing::info!(mode, elapsed = ?start.elapsed(), "study: environments done");
    let ok: Vec<f64> = per_environment_s.iter().flatten().copied().collect();
    let enis = shared.controller().enis();
    Ok(RealDesign {
        design: if per_env { "per_env" } else { "shared" },
        environments: envs,
        connected: ok.len(),
        cold_start_latency: summary(&ok),
        enis_created: enis.len(),
        peak_addresses: enis.iter().map(|e| e.addrs.len()).sum(),
        setup_s,
        per_environment_s,
    })
}

fn fmt_s(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.1} ms", s * 1000.0)
    }
}

/// Both designs side by side.
pub fn table(r: &RealResult) -> String {
    let mut t = format!(
        "{:<30} {:>26} {:>22}\n",
        "measured on this machine", "per-environment ENI (before 2019)", "shared ENI (since 2019)"
    );
    let (a, b) = (&r.per_env, &r.shared);
    let mut row = |name: &str, x: String, y: String| t += &format!("{name:<30} {x:>26} {y:>22}\n");
    row("one-time set-up before starts", fmt_s(a.setup_s), fmt_s(b.setup_s));
    row(
        "environments connected",
        format!("{}/{}", a.connected, a.environments),
        format!("{}/{}", b.connected, b.environments),
    );
    row("start → first request p50", fmt_s(a.cold_start_latency.p50_s), fmt_s(b.cold_start_latency.p50_s));
    row("start → first request p99", fmt_s(a.cold_start_latency.p99_s), fmt_s(b.cold_start_latency.p99_s));
    row("start → first request max", fmt_s(a.cold_start_latency.max_s), fmt_s(b.cold_start_latency.max_s));
    row("ENIs created", a.enis_created.to_string(), b.enis_created.to_string());
    row("subnet addresses used", a.peak_addresses.to_string(), b.peak_addresses.to_string());
    t += &format!("(modelled provisioning delay per ENI: {} ms)\n", r.provisioning_delay_ms);
    t
}

/// Writes `real.json` and `real_latency.svg` (each environment's latency,
/// both designs, log scale) into `dir`.
pub fn write(r: &RealResult, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let json = dir.join("real.json");
    std::fs::write(&json, serde_json::to_string_pretty(r).map_err(std::io::Error::other)?)?;
    let svg = dir.join("real_latency.svg");
    plot(r, &svg).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(vec![json, svg])
}

fn plot(r: &RealResult, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let all: Vec<f64> =
        [&r.per_env, &r.shared].iter().flat_map(|d| d.per_environment_s.iter().flatten().copied()).collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(1e-5) / 2.0;
    let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 4.0) * 2.0;
    let n = r.per_env.environments.max(r.shared.environments).max(1);
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Start to first request, per environment (measured)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..n as f64, (lo..hi).log_scale())?;
    chart.configure_mesh().x_desc("environment").y_desc("seconds").draw()?;
    for (d, color) in [(&r.per_env, RED), (&r.shared, BLUE)] {
        let pts: Vec<(f64, f64)> =
            d.per_environment_s.iter().enumerate().filter_map(|(i, v)| v.map(|v| (i as f64, v))).collect();
        chart
            .draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 3, color.filled())))?
            .label(match d.design {
                "per_env" => "per-environment ENI",
                _ => "shared ENI",
            })
            .legend(move |(x, y)| Circle::new((x, y), 3, color.filled()));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    root.present()?;
    Ok(())
}
