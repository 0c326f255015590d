//! The `hyperplane` binary: the gateway, its demo and its tools.

use clap::{Parser, Subcommand};
use control::{api, config, metrics, plan, runtime, signals};
use hyperplane::{tables, CliError};
use netlab::{demo, lab};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "hyperplane", version, about = "A userspace shared-ENI NAT gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway as the config file describes, until SIGINT/SIGTERM.
    Run {
        /// The TOML config (see control/core/examples/gateway.toml).
        #[arg(long)]
        config: PathBuf,
        /// Serve Prometheus metrics on this loopback address (e.g.
        /// 127.0.0.1:9100).
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
    },
    /// ENIs (addresses, states, generations, users, port use) and functions.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Sessions, one per line, in the spirit of `conntrack -L`.
    Sessions {
        #[command(flatten)]
        api: ApiArgs,
        /// Only this ENI's sessions.
        #[arg(long)]
        eni: Option<u32>,
        /// Only this environment's sessions.
        #[arg(long)]
        env: Option<std::net::Ipv4Addr>,
        /// At most this many lines.
        #[arg(long)]
        limit: Option<usize>,
        /// Remove the matching sessions instead of listing them (as
        /// `conntrack -D`); at least one filter is needed (`flush` removes
        /// all).
        #[arg(long)]
        delete: bool,
        /// With --delete: only this protocol (tcp, udp, icmp).
        #[arg(long, requires = "delete")]
        proto: Option<String>,
        /// With --delete: only sessions to this remote address.
        #[arg(long, requires = "delete")]
        dst: Option<std::net::Ipv4Addr>,
        /// With --delete: only sessions to this remote port.
        #[arg(long, requires = "delete")]
        dport: Option<u16>,
        /// With --delete: only sessions from this source port.
        #[arg(long, requires = "delete")]
        sport: Option<u16>,
    },
    /// Remove sessions, in the spirit of `conntrack -F`: all of them, or
    /// those of one environment, ENI or protocol. Counted and logged.
    Flush {
        #[command(flatten)]
        api: ApiArgs,
        /// Only this environment's sessions (its address).
        #[arg(long)]
        env: Option<std::net::Ipv4Addr>,
        /// Only this ENI's sessions (its id).
        #[arg(long)]
        eni: Option<u32>,
        /// Only this protocol (tcp, udp, icmp).
        #[arg(long)]
        proto: Option<String>,
    },
    /// Write the frames one port receives and sends to a pcap file
    /// (tcpdump -r, Wireshark): an attachment (environments' addresses) or
    /// the outside interface (ENI addresses). Ends after --count frames or
    /// --seconds, whichever comes first.
    Capture {
        #[command(flatten)]
        api: ApiArgs,
        /// The attachment's name, or the outside interface's.
        #[arg(long)]
        port: String,
        /// The pcap file (written by the gateway).
        #[arg(long)]
        out: PathBuf,
        /// Stop after this many frames (at most 1,000,000).
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Stop after this many seconds (at most 600).
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Counters, drops by reason, port use.
    Stats {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Send a new config to the running gateway (applied atomically, or not at all).
    Apply {
        #[command(flatten)]
        api: ApiArgs,
        /// The new TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Self-contained demo (root): N environments behind one shared ENI.
    Demo {
        /// Execution environments, each in its own namespace on its own TAP.
        #[arg(long, default_value_t = 16)]
        envs: usize,
        /// Worker threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Turn TAP offloads (TSO, checksum offload) off.
        #[arg(long)]
        no_offloads: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    #[cfg(feature = "loadgen")]
    /// Load-test a NAT with emulated execution environments (root): ours,
    /// the kernel's nftables masquerade, both side by side (--compare), or
    /// any NAT between two links (--inside/--outside). Ctrl-C
    /// (SIGINT/SIGTERM) ends the load early and reports what was measured.
    Loadgen(Box<LoadgenCmd>),
    #[cfg(feature = "study")]
    /// Study the shared-ENI design: per-environment ENIs against one shared
    /// ENI, simulated (default) or measured on this machine (--real, root).
    Study {
        /// Scenario as JSON (defaults: the published figures, estimates
        /// marked in the docs).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Random seed: the same seed gives the same result.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where JSON, CSV and SVG files go.
        #[arg(long, default_value = "hyperplane-study")]
        out: PathBuf,
        /// Sweep one parameter (eni-create-seconds, subnet-prefix,
        /// target-concurrency, memory-mb, connections-per-env, eni-quota).
        #[arg(long)]
        sweep: Option<String>,
        /// The sweep's values, comma-separated.
        #[arg(long, value_delimiter = ',')]
        values: Vec<f64>,
        /// Measure both designs for real on this machine (root).
        #[arg(long)]
        real: bool,
        /// Environments for --real.
        #[arg(long, default_value_t = 100)]
        envs: usize,
        /// Modelled provisioning delay per ENI for --real, ms.
        #[arg(long, default_value_t = 0)]
        provisioning_ms: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check a config file and print the plan it gives (ENIs, addresses).
    Check {
        /// The TOML config.
        #[arg(long)]
        config: PathBuf,
    },
}

/// `hyperplane loadgen`'s arguments.
#[cfg(feature = "loadgen")]
#[derive(clap::Args)]
struct LoadgenCmd {
    /// udp, tcp-bulk, connect or mixed.
    scenario: String,
    /// Run against ours and the kernel in one run and print the ratios.
    #[arg(long)]
    compare: bool,
    /// Which NAT: ours or kernel (without --compare; not with --inside,
    /// which names the NAT itself).
    #[arg(long, default_value = "ours", conflicts_with = "inside")]
    target: String,
    /// Emulated environments (default 1000; 16 for tcp-bulk).
    #[arg(long)]
    envs: Option<usize>,
    /// How long the load runs: seconds (600) or with units (90s, 10m,
    /// 2h, 1h30m); at most 24h.
    #[arg(long, default_value = "5")]
    duration: String,
    /// Open loop: packets/s (udp) or connections/s (connect, mixed);
    /// default as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    /// UDP payload, bytes (64-1472).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Environments appear over this time (seconds, or 30s, 5m).
    #[arg(long, default_value = "0")]
    ramp: String,
    /// connect: each environment connects once (the cold start).
    #[arg(long)]
    once: bool,
    /// Our gateway's port range, e.g. 2000-2049.
    #[arg(long)]
    port_range: Option<String>,
    /// Our gateway's workers (0: one per core, or the --config file's).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Run our gateway with the [gateway] settings of this config file
    /// (the schema of `hyperplane run --config`; other tables ignored).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write timeline.csv (each second, as the run goes), report.json
    /// and SVG plots here (with --compare: ours/, kernel/ and
    /// compare.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print JSON; no progress bar.
    #[arg(long)]
    json: bool,
    /// One loadgen TAP per environment (and, against ours, one gateway
    /// attachment per environment); at most 1000 environments.
    #[arg(long)]
    tap_per_env: bool,
    /// One thread per CPU listed (e.g. 0,1), each pinned to its CPU:
    /// udp, a writer each; tcp-bulk, connect, mixed, a shard of the
    /// environments each (a reader thread hands them their frames).
    /// Default: one unpinned writer, or all environments on one thread.
    #[arg(long)]
    cpus: Option<String>,
    /// udp: no NAT; measure what the writers offer into a TAP whose
    /// kernel side counts and discards every frame.
    #[arg(long, conflicts_with_all = ["compare", "inside"])]
    offer_only: bool,
    /// udp: how the writers hand frames to a TAP queue: uring (a batch
    /// per system call) or write (one per frame).
    #[arg(long, default_value = "uring")]
    tap_writes: String,
    /// udp --cpus: the target's receive path (the kernel's NAT, our
    /// attachment) on the CPUs not writing (receive packet steering), so
    /// the offer can exceed what the target carries; the writers' link
    /// hands its frames on through a tc redirect, so a frame those CPUs
    /// refuse is dropped (and counted) after the sender's system call.
    #[arg(long, requires = "cpus")]
    spread_receive: bool,
    /// udp (unpaced): after each target's load, trafgen (netsniff-ng)
    /// sends one flow for as long, pinned to the first of --cpus, on the
    /// same link and counter; the report puts its figure beside the
    /// load's.
    #[arg(long)]
    trafgen: bool,
    /// Any NAT: the link towards its inside (the environments send
    /// and receive here; a packet socket, promiscuous). With --outside.
    #[arg(long, requires = "outside")]
    inside: Option<String>,
    /// The namespace of --inside (default: this one).
    #[arg(long, requires = "inside")]
    inside_ns: Option<String>,
    /// Any NAT: the link its outside traffic arrives on (the responder
    /// and the kernel's counter are here). With --inside.
    #[arg(long, requires = "inside")]
    outside: Option<String>,
    /// The namespace of --outside (default: this one).
    #[arg(long, requires = "outside")]
    outside_ns: Option<String>,
    /// With --inside: the environments' network (their addresses are
    /// its hosts, the gateway's skipped).
    #[arg(long, default_value = "172.16.0.0/16", requires = "inside")]
    env_net: String,
    /// With --inside: the NAT's inside address, the environments'
    /// default gateway.
    #[arg(long, default_value = "172.16.0.1", requires = "inside")]
    gateway: String,
    /// With --inside: the responder's address; it must be on --outside,
    /// and the NAT must route it there.
    #[arg(long, default_value = "10.1.0.2", requires = "inside")]
    responder: String,
}

#[derive(clap::Args)]
struct ApiArgs {
    /// The gateway's control socket.
    #[arg(long, default_value = "/run/hyperplane.sock")]
    socket: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = signals::install() {
        eprintln!("hyperplane: cannot install signal handling: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Run { config, metrics } => run(&config, metrics),
        Command::Status { api } => ask(&api, api::Request::Status),
        Command::Sessions { api, eni, env, limit, delete: false, .. } => {
            ask(&api, api::Request::Sessions { eni, env, limit })
        }
        Command::Sessions { api, eni, env, limit: _, delete: true, proto, dst, dport, sport } => {
            if (eni, env, &proto, dst, dport, sport) == (None, None, &None, None, None, None) {
                Err(CliError::Usage(
                    "sessions --delete needs a filter (--env, --eni, --proto, --dst, --dport, --sport); \
                     `hyperplane flush` removes every session"
                        .into(),
                ))
            } else {
                ask(&api, api::Request::Flush { env, eni, proto, dst, dport, sport })
            }
        }
        Command::Flush { api, env, eni, proto } => {
            ask(&api, api::Request::Flush { env, eni, proto, dst: None, dport: None, sport: None })
        }
        Command::Capture { api, port, out, count, seconds } => capture(&api, port, &out, count, seconds),
        Command::Stats { api } => ask(&api, api::Request::Stats),
        Command::Apply { api, config } => match std::fs::read_to_string(&config) {
            Ok(text) => ask(&api, api::Request::Apply { config: text }),
            Err(e) => Err(CliError::read(&config)(e)),
        },
        Command::Demo { envs, workers, no_offloads, json } => run_demo(envs, workers, !no_offloads, json),
        Command::Check { config } => check(&config),
        #[cfg(feature = "loadgen")]
        Command::Loadgen(cmd) => (|| {
            let LoadgenCmd {
                scenario,
                compare,
                target,
                envs,
                duration,
                rate,
                payload,
                ramp,
                once,
                port_range,
                workers,
                config,
                out,
                json,
                tap_per_env,
                cpus,
                inside,
                inside_ns,
                outside,
                outside_ns,
                env_net,
                gateway,
                responder,
                offer_only,
                tap_writes,
                spread_receive,
                trafgen,
            } = *cmd;
            let external = match (&inside, &outside) {
                (Some(i), Some(o)) => {
                    if compare {
                        return Err(CliError::Usage(
                            "--compare runs ours and the kernel in the lab; --inside/--outside measure one NAT".into(),
                        ));
                    }
                    Some(loadgen::ExternalNat::parse(
                        (inside_ns.as_deref(), i),
                        (outside_ns.as_deref(), o),
                        &env_net,
                        &gateway,
                        &responder,
                    )?)
                }
                _ => None,
            };
            let args = loadgen::LoadArgs {
                scenario: loadgen::Scenario::parse(&scenario)?,
                target: match (target.as_str(), &external) {
                    (_, Some(_)) => loadgen::Target::External,
                    ("ours", None) => loadgen::Target::Ours,
                    ("kernel", None) => loadgen::Target::Kernel,
                    (t, None) => {
                        return Err(CliError::Usage(format!("--target {t}: ours or kernel (or --inside/--outside)")))
                    }
                },
                external,
                tap_writes: loadgen::sender::TapWrites::parse(&tap_writes)?,
                spread_receive,
                trafgen,
                envs,
                duration: loadgen::parse_duration("duration", &duration)?,
                rate,
                payload,
                ramp: loadgen::parse_duration("ramp", &ramp)?,
                once,
                port_range,
                workers,
                out_dir: out,
                json,
                progress: !json,
                tap_per_env,
                cpus: match &cpus {
                    Some(c) => loadgen::parse_cpus(c)?,
                    None => Vec::new(),
                },
                gateway: match &config {
                    Some(p) => Some(loadgen::GatewayTable::load(p)?),
                    None => None,
                },
                ..loadgen::LoadArgs::default()
            };
            // SIGINT/SIGTERM (see `signals`) stop the run through `args.stop`:
            // the report below then covers what was measured until then.
            if offer_only {
                let r = loadgen::offer::run(&args)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    print!("{}", r.table());
                }
            } else if compare {
                let r = loadgen::compare(&args)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    print!("{}", r.table());
                }
            } else {
                let r = loadgen::run(&args)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    print!("{}", r.table());
                }
            }
            if args.stop.is_stopped() {
                eprintln!("hyperplane: loadgen stopped early; the topology it made is gone");
            }
            Ok(())
        })(),
        #[cfg(feature = "study")]
        Command::Study { scenario, seed, out, sweep, values, real, envs, provisioning_ms, json } => {
            run_study(scenario, seed, &out, sweep, &values, real, envs, provisioning_ms, json)
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyperplane: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads and validates a config file.
fn read_config(path: &Path) -> Result<config::Config, CliError> {
    let text = std::fs::read_to_string(path).map_err(CliError::read(path))?;
    config::parse(&text).map_err(CliError::config(path))
}

/// One security-group rule, as `check` shows it.
fn rule_text(r: &config::SgRule, peer_word: &str) -> String {
    let proto = format!("{:?}", r.protocol).to_lowercase();
    let ports = r.ports.map_or(String::new(), |p| format!(" ports {p}"));
    let peer = match (&r.destination, &r.source, &r.group) {
        (Some(c), _, _) | (None, Some(c), _) => format!("{peer_word} {c}"),
        (None, None, Some(g)) => format!("group {g}"),
        _ => String::new(),
    };
    let note = r.description.as_ref().map_or(String::new(), |d| format!("  ({d})"));
    format!("{proto}{ports} {peer}{note}")
}

fn check(path: &Path) -> Result<(), CliError> {
    let cfg = read_config(path)?;
    let p = plan::plan(&cfg, &BTreeMap::new()).map_err(CliError::config(path))?;
    println!(
        "config ok: {} ENI(s), {} attachment(s), {} environment(s)",
        p.enis.len(),
        p.attachments.len(),
        p.bindings.envs().len()
    );
    for e in &p.enis {
        let addrs: Vec<String> = e.addrs.iter().map(ToString::to_string).collect();
        println!(
            "  eni {} subnet {} groups [{}] addresses [{}] functions [{}]",
            e.id,
            e.key.subnet,
            e.key.security_groups.join(","),
            addrs.join(","),
            e.functions.join(",")
        );
    }
    // Every group's rules: egress is enforced on new flows; ingress is
    // kept and shown (the link is one-way: nothing enters from the VPC).
    for g in &cfg.security_groups {
        println!("  security group {}", g.id);
        match &g.egress {
            None => println!("    egress  all traffic (no rules given)"),
            Some(rules) if rules.is_empty() => println!("    egress  none"),
            Some(rules) => rules.iter().for_each(|r| println!("    egress  {}", rule_text(r, "to"))),
        }
        for r in &g.ingress {
            println!("    ingress {}  (kept, not enforced)", rule_text(r, "from"));
        }
    }
    Ok(())
}

fn run(path: &Path, metrics_addr: Option<std::net::SocketAddr>) -> Result<(), CliError> {
    let cfg = read_config(path)?;
    let socket = cfg.gateway.control_socket.clone();
    control::gateway::drop_capabilities_once_started(true);
    let rt = runtime::Runtime::start(cfg)?;
    let shared = std::sync::Arc::clone(rt.shared());
    let s = std::sync::Arc::clone(&shared);
    let server = api::serve(&socket, std::sync::Arc::new(move |req| s.handle(req)))?;
    let s = std::sync::Arc::clone(&shared);
    let metrics = match metrics_addr {
        Some(a) => Some(metrics::serve_metrics(a, std::sync::Arc::new(move || s.stats()))?),
        None => None,
    };
    eprintln!(
        "hyperplane: running: {} worker(s), {} attachment(s), offloads {}, control socket {}{}",
        shared.gateway.workers(),
        shared.gateway.inside.len(),
        if shared.gateway.offloads { "on" } else { "off" },
        socket.display(),
        metrics.as_ref().map_or(String::new(), |m| format!(", metrics http://{}/metrics", m.local_addr()))
    );
    while !signals::stopped() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let t = shared.gateway.totals();
    server.stop();
    drop(metrics);
    drop(shared);
    rt.stop();
    eprintln!("hyperplane: stopped after {} packets out, {} in", t.outbound.0, t.inbound.0);
    Ok(())
}

/// One request to the running gateway, printed as text or JSON.
fn ask(a: &ApiArgs, req: api::Request) -> Result<(), CliError> {
    let resp = api::call(&a.socket, &req)?;
    print_response(a, resp)
}

/// Prints a response as a table, or JSON with `--json`.
fn print_response(a: &ApiArgs, resp: api::Response) -> Result<(), CliError> {
    if let api::Response::Error { message } = &resp {
        return Err(CliError::Refused(message.clone()));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(());
    }
    match resp {
        api::Response::Status(r) => print!("{}", tables::format_status(&r)),
        api::Response::Sessions(r) => print!("{}", tables::format_sessions(&r)),
        api::Response::Stats(r) => print!("{}", tables::format_stats(&r)),
        api::Response::Applied(r) => {
            if r.changes.is_empty() {
                println!("applied: no change");
            }
            for l in r.changes {
                println!("applied: {l}");
            }
        }
        api::Response::Flushed(r) => println!("{} session(s) removed", r.removed),
        api::Response::Captured(r) => println!(
            "{} frame(s) written to {} in {:.1} s; {} not captured (writer behind)",
            r.frames,
            r.out.display(),
            r.seconds,
            r.dropped
        ),
        api::Response::Error { .. } => {}
    }
    Ok(())
}

/// `hyperplane capture`: the gateway writes the file and answers when the
/// capture ends, so the client waits that long (plus the usual timeout).
fn capture(a: &ApiArgs, port: String, out: &Path, count: u64, seconds: f64) -> Result<(), CliError> {
    // The gateway resolves the path itself: make it absolute here.
    let out = if out.is_absolute() {
        out.to_path_buf()
    } else {
        let cwd = std::env::current_dir().map_err(|e| CliError::Usage(format!("--out: {e}")))?;
        cwd.join(out)
    };
    let req = api::Request::Capture { port, out, count: Some(count), seconds: Some(seconds) };
    let mut c = api::Client::connect(&a.socket)?;
    if seconds.is_finite() && seconds > 0.0 {
        c.set_timeout(api::IO_TIMEOUT + Duration::from_secs_f64(seconds.min(api::CAPTURE_MAX_SECONDS)))?;
    }
    let resp = c.call(&req)?;
    print_response(a, resp)
}

#[cfg(feature = "study")]
#[allow(clippy::too_many_arguments)]
fn run_study(
    scenario: Option<PathBuf>,
    seed: u64,
    out: &std::path::Path,
    sweep: Option<String>,
    values: &[f64],
    real: bool,
    envs: usize,
    provisioning_ms: u64,
    json: bool,
) -> Result<(), CliError> {
    if real {
        if envs == 0 || envs > 240 {
            return Err(CliError::Usage(format!(
                "--envs {envs}: must be between 1 and 240 (the lab subnet's addresses)"
            )));
        }
        let r = hyperplane::study_real::run(envs, provisioning_ms)?;
        let files = hyperplane::study_real::write(&r, out).map_err(CliError::write(out))?;
        if json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print!("{}", hyperplane::study_real::table(&r));
            for f in files {
                println!("wrote {}", f.display());
            }
        }
        return Ok(());
    }
    let sc: study::Scenario = match scenario {
        Some(p) => {
            let text = std::fs::read_to_string(&p).map_err(CliError::read(&p))?;
            serde_json::from_str(&text).map_err(|source| CliError::Json { path: p.clone(), source })?
        }
        None => study::Scenario::default(),
    };
    if let Some(name) = sweep {
        let param: study::SweepParam = name.parse().map_err(|e| CliError::Usage(format!("--sweep {name}: {e}")))?;
        if values.is_empty() {
            return Err(CliError::Usage("--values: give the sweep's values, e.g. --values 2,8,30".into()));
        }
        let results = study::sweep(&sc, param, values, seed)?;
        let files = study::report::write_sweep(param, &results, out).map_err(CliError::write(out))?;
        if json {
            let v: Vec<_> = results.iter().map(|(x, r)| serde_json::json!({ "value": x, "result": r })).collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print!("{}", study::report::sweep_table(param, &results));
            for f in files {
                println!("wrote {}", f.display());
            }
        }
        return Ok(());
    }
    let r = study::run(&sc, seed)?;
    let mut files = study::report::write_json(&r, out).map_err(CliError::write(out))?;
    files.extend(study::report::write_csv(&r, out).map_err(CliError::write(out))?);
    files.extend(study::report::write_svgs(&r, out).map_err(CliError::write(out))?);
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", study::report::table(&r));
        for f in files {
            println!("wrote {}", f.display());
        }
    }
    Ok(())
}

fn run_demo(envs: usize, workers: usize, offloads: bool, json: bool) -> Result<(), CliError> {
    if envs == 0 || envs > 1000 {
        return Err(CliError::Usage(format!("--envs {envs}: must be between 1 and 1000")));
    }
    let opts = lab::Options { envs, workers, offloads, ..lab::Options::default() };
    let r = demo::run(&opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_report(&r);
    }
    if r.envs_ok == r.envs && r.server_saw_sources == [r.eni_address] {
        Ok(())
    } else {
        Err(CliError::DemoIncomplete { failed: r.envs - r.envs_ok, total: r.envs })
    }
}

fn print_report(r: &demo::Report) {
    let sources: Vec<String> = r.server_saw_sources.iter().map(ToString::to_string).collect();
    println!("hyperplane demo: {} execution environments, one shared ENI {}", r.envs, r.eni_address);
    println!("  gateway: {} worker(s), offloads {}", r.workers, if r.offloads { "on" } else { "off" });
    println!(
        "  server saw {} environment(s) arrive from: {}{}",
        r.per_env.iter().filter(|e| e.tcp_seen_as.is_some()).count(),
        sources.join(", "),
        if r.server_saw_sources == [r.eni_address] { "  (the shared ENI address only)" } else { "" }
    );
    println!("  TCP, UDP and ping worked for {}/{} environments", r.envs_ok, r.envs);
    println!();
    println!("  cold-start story:");
    println!("    one-time shared ENI setup        {:>9.1} ms  (once per subnet + security groups)", r.eni_setup_ms);
    println!(
        "    first connection per environment {:>9.1} ms p50, {:.1} ms p99, {:.1} ms max  (no ENI work)",
        r.first_connection_ms.p50, r.first_connection_ms.p99, r.first_connection_ms.max
    );
    println!();
    println!(
        "  {:>4}  {:<14} {:>10} {:<22} {:>8} {:>8}",
        "env", "address", "first ms", "server saw (tcp)", "ping ms", "sessions"
    );
    for e in &r.per_env {
        println!(
            "  {:>4}  {:<14} {:>10} {:<22} {:>8} {:>8}{}",
            e.env,
            e.address.to_string(),
            e.first_connection_ms.map_or("-".into(), |v| format!("{v:.1}")),
            e.tcp_seen_as.clone().unwrap_or_else(|| "-".into()),
            e.ping_ms.map_or("-".into(), |v| format!("{v:.2}")),
            e.sessions,
            if e.errors.is_empty() { String::new() } else { format!("  {}", e.errors.join("; ")) }
        );
    }
    println!();
    let s: Vec<String> = r.sessions.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("  sessions: {}", s.join(", "));
    let p: Vec<String> = r.packets.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("  packets: {}", p.join(", "));
    let d: Vec<String> = r.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("  drops: {}", if d.is_empty() { "none".into() } else { d.join(", ") });
    println!("  finished in {:.1} s; every namespace and TAP it made is gone", r.elapsed_s);
}
