//! The `hyperplane` binary's commands and their errors.

use std::process::Command;

fn hyperplane(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hyperplane")).args(args).output().expect("runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("hp-cli-{}-{name}.toml", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_prints_the_plan_of_the_example_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/examples/gateway.toml");
    let (ok, out, err) = hyperplane(&["check", "--config", path]);
    assert!(ok, "{err}");
    assert!(out.contains("config ok"), "{out}");
    assert!(out.contains("eni 1"), "{out}");
    assert!(out.contains("egress  tcp ports 80-443 to 10.0.0.0/16"), "{out}");
    assert!(out.contains("ingress tcp ports 443 from 10.0.0.0/16"), "ingress rules are kept and shown: {out}");
}

#[test]
fn a_bad_config_is_refused_with_the_field_and_the_reason() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../core/examples/gateway.toml")).unwrap();
    let bad = example.replace("cidr = \"10.0.0.0/24\"", "cidr = \"10.0.0.0/33\"");
    let p = write("bad", &bad);
    let (ok, _, err) = hyperplane(&["run", "--config", p.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("subnets[0].cidr"), "{err}");
    let (ok, _, err) = hyperplane(&["run", "--config", "/nonexistent/hyperplane.toml"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/hyperplane.toml"), "{err}");
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_missing_outside_interface_is_reported_before_anything_starts() {
    netlab::require_root();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../core/examples/gateway.toml")).unwrap();
    let cfg =
        example.replace("kind = \"tap\"", "kind = \"af-packet\"").replace("name = \"hp-out\"", "name = \"hpnosuch0\"");
    let p = write("afp", &cfg);
    let (ok, _, err) = hyperplane(&["run", "--config", p.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("hpnosuch0") && err.contains("no such network interface"), "{err}");
    // No TAP from the config was left behind.
    assert!(!std::path::Path::new("/sys/class/net/hp-e0").exists());
}

/// Issue 12 item 10: once its devices are open, `hyperplane run` keeps only
/// CAP_NET_ADMIN and CAP_NET_RAW, in every thread (the signal thread none).
/// Read from `/proc/PID/task/*/status` of the running gateway, in a
/// namespace of its own.
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_running_gateway_keeps_only_the_network_capabilities() {
    use std::io::{BufRead, BufReader};
    netlab::require_root();
    let ns = netlab::Netns::new(format!("hpcap{}", std::process::id())).expect("netns");
    let sock = std::env::temp_dir().join(format!("hp-cap-{}.sock", std::process::id()));
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../core/examples/gateway.toml")).unwrap();
    let cfg = example
        .replace("control_socket = \"/run/hyperplane.sock\"", &format!("control_socket = \"{}\"", sock.display()))
        .replace("workers = 0 ", "workers = 2 ");
    let p = write("caps", &cfg);
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_hyperplane"), "run", "--config", p.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    let pid = child.id();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut seen = String::new();
    while err.read_line(&mut line).unwrap_or(0) > 0 {
        seen.push_str(&line);
        if line.contains("hyperplane: running") {
            break;
        }
        line.clear();
    }
    let caps: Vec<(String, u64)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|t| {
                    let st = std::fs::read_to_string(t.path().join("status")).ok()?;
                    let name = st.lines().find_map(|l| l.strip_prefix("Name:"))?.trim().to_string();
                    let eff = st.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim().to_string();
                    Some((name, u64::from_str_radix(&eff, 16).ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let status = child.wait().expect("exits");
    let _ = std::fs::remove_file(&p);
    assert!(seen.contains("hyperplane: running"), "{seen}");
    assert!(status.success(), "{seen}");
    assert!(caps.len() >= 4, "{caps:?}");
    let kept = 0x3000u64; // CAP_NET_ADMIN (12) and CAP_NET_RAW (13)
    for (name, eff) in &caps {
        let want = if name == "hp-signals" { 0 } else { kept };
        assert_eq!(*eff, want, "thread {name}: CapEff {eff:#x} in {caps:x?}");
    }
    drop(ns);
}

#[test]
fn sessions_delete_needs_a_filter_and_its_filters_need_delete() {
    let sock = "/nonexistent/hyperplane.sock";
    let (ok, _, err) = hyperplane(&["sessions", "--delete", "--socket", sock]);
    assert!(!ok);
    assert!(err.contains("needs a filter") && err.contains("flush"), "{err}");
    let (ok, _, err) = hyperplane(&["sessions", "--proto", "tcp", "--socket", sock]);
    assert!(!ok);
    assert!(err.contains("--delete"), "{err}");
    // With a filter it goes to the socket (none here).
    let (ok, _, err) = hyperplane(&["sessions", "--delete", "--env", "172.16.0.2", "--socket", sock]);
    assert!(!ok);
    assert!(err.contains("no control socket"), "{err}");
    let (ok, _, err) = hyperplane(&["capture", "--port", "hp-out", "--out", "x.pcap", "--socket", sock]);
    assert!(!ok);
    assert!(err.contains("no control socket"), "{err}");
}

/// `--target` names a NAT of the lab; `--inside/--outside` name the user's.
/// Given both, the run is refused (naming both) before anything is built,
/// instead of measuring one of them silently.
#[test]
fn loadgen_refuses_a_target_with_an_external_nat() {
    for target in ["kernel", "ours"] {
        let (ok, _, err) =
            hyperplane(&["loadgen", "udp", "--target", target, "--inside", "hpnosuch-in", "--outside", "hpnosuch-out"]);
        assert!(!ok, "--target {target} with --inside was accepted");
        assert!(err.contains("--target") && err.contains("--inside"), "{err}");
    }
    let (ok, _, err) = hyperplane(&["loadgen", "udp", "--inside", "hpnosuch-in"]);
    assert!(!ok);
    assert!(err.contains("--outside"), "{err}");
}
