//! The configuration schema, its validation and the plan compiled from it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use control::config::{parse, Config, ConfigError, OutsideKind, Profile};
use control::plan::{attachment_mac, plan, EniKey, Plan};
use dataplane::config::{Filtering, Mapping};
use dataplane::flow::{ICMP, TCP, UDP};
use dataplane::policy::{Rule, RuleProto};
use dataplane::PortId;

const BASE: &str = r#"
[outside]
name = "hp-out"
router = "10.0.0.1"

[vpc]
cidr = "10.0.0.0/16"

[[subnets]]
id = "subnet-a"
cidr = "10.0.0.0/24"

[[subnets]]
id = "subnet-b"
cidr = "10.0.1.0/24"

[[security_groups]]
id = "sg-web"
egress = [{ protocol = "tcp", ports = "443", destination = "0.0.0.0/0" }]

[[security_groups]]
id = "sg-db"

[[functions]]
name = "orders"
subnets = ["subnet-a"]
security_groups = ["sg-web"]

[[attachments]]
name = "hp-e0"
gateway = "172.16.0.1"

[[environments]]
function = "orders"
address = "172.16.0.2"
attachment = "hp-e0"
"#;

const EXAMPLE: &str = include_str!("../examples/gateway.toml");

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// BASE with a `[gateway]` table holding `body` in front.
fn gw(body: &str) -> String {
    format!("[gateway]\n{body}\n{BASE}")
}

/// BASE with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} not in BASE");
    BASE.replacen(from, to, 1)
}

/// Parses `text`, expecting an error on `field` whose reason contains `reason`.
#[track_caller]
fn rejects(text: &str, field: &str, reason: &str) -> ConfigError {
    let e = parse(text).expect_err("expected an error");
    assert_eq!(e.field, field, "{e}");
    assert!(e.reason.contains(reason), "reason {:?} lacks {reason:?}", e.reason);
    e
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle") + 1
}

fn planned(text: &str) -> Plan {
    plan(&parse(text).unwrap(), &BTreeMap::new()).unwrap()
}

// --- parsing ---------------------------------------------------------------

#[test]
fn base_parses_with_defaults() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.gateway.workers, 0);
    assert!(c.gateway.offloads);
    assert_eq!(c.gateway.profile, Profile::Rfc);
    assert_eq!(c.gateway.eni_quota, 250);
    assert_eq!(c.gateway.idle_reclaim_secs, 1_209_600);
    assert_eq!(c.gateway.control_socket.to_str(), Some("/run/hyperplane.sock"));
    assert_eq!(c.outside.kind, OutsideKind::Tap);
    assert_eq!(c.outside.mtu, 1500);
    assert_eq!(c.attachments[0].mtu, 1500);
    let e = c.engine_config();
    assert_eq!(e.mapping, Mapping::EndpointIndependent);
    assert_eq!(e.timeouts.udp, Duration::from_secs(300));
    assert_eq!(e.port_range, 1024..=65535);
    assert_eq!(c.environment_subnet(&c.environments[0]), Some("subnet-a"));
    assert_eq!(BASE.parse::<Config>().unwrap(), c);
}

#[test]
fn example_parses_and_plans() {
    let c = parse(EXAMPLE).unwrap();
    assert_eq!(c.subnets.len(), 2);
    let p = plan(&c, &BTreeMap::new()).unwrap();
    let keys: Vec<_> = p.enis.iter().map(|e| (e.id, e.key.subnet.as_str(), e.key.security_groups.join(","))).collect();
    assert_eq!(
        keys,
        [
            (1, "subnet-a", "sg-db,sg-web".to_string()),
            (2, "subnet-b", "sg-db".to_string()),
            (3, "subnet-b", "sg-db,sg-web".to_string()),
        ]
    );
    assert_eq!(p.enis[0].functions, ["billing", "orders"]);
    assert_eq!(p.enis[0].addrs, [ip("10.0.0.4")]);
    assert_eq!(p.enis[1].addrs, [ip("10.0.1.4")]);
    assert_eq!(p.enis[2].addrs, [ip("10.0.1.5")]);
    assert_eq!(p.eni_of(ip("172.16.0.2")).unwrap().id, 1);
    assert_eq!(p.eni_of(ip("172.16.0.3")).unwrap().id, 3);
    assert_eq!(p.eni_of(ip("172.16.1.2")).unwrap().id, 1);
    assert_eq!(p.eni_of(ip("172.16.1.3")).unwrap().id, 2);
    assert_eq!(p.bindings.envs().len(), 4);
    assert_eq!(p.attachments[1].port, PortId(2));
    assert_eq!(p.attachments[1].mtu, 9000);
    assert_eq!(p.engine.frag.frame_capacity, 9018);
    assert_eq!(p.io, dataplane_io::IoSettings::default());
    assert!(p.workers >= 1);
}

#[test]
fn malformed_toml_reports_its_line() {
    let text = format!("{BASE}\n[[subnets]\nid = \"x\"\n");
    let e = rejects(&text, "toml", "");
    assert_eq!(e.line, Some(text.lines().position(|l| l == "[[subnets]").unwrap() + 1));
    assert!(e.to_string().starts_with("toml: "), "{e}");
    assert!(e.to_string().ends_with(&format!(" (line {})", e.line.unwrap())), "{e}");
    let e = rejects("[vpc]\ncidr = \"10.0.0.0/16\n", "toml", "");
    assert_eq!(e.line, Some(2));
}

#[test]
fn unknown_keys_are_rejected_with_path_and_line() {
    let text = edit("router = \"10.0.0.1\"", "routr = \"10.0.0.1\"");
    let e = rejects(&text, "outside.routr", "unknown field `routr`");
    assert_eq!(e.line, Some(line_of(&text, "routr")));
    let text = gw("[gateway.timeouts]\nudpp = 300");
    rejects(&text, "gateway.timeouts.udpp", "unknown field");
    let text = edit("ports = \"443\",", "ports = \"443\", dest = \"1.2.3.4\",");
    rejects(&text, "security_groups[0].egress[0].dest", "unknown field");
    rejects(&gw("profile = \"gcp\""), "gateway.profile", "unknown variant `gcp`");
}

#[test]
fn missing_required_sections() {
    let e = parse("[vpc]\ncidr = \"10.0.0.0/16\"\n").unwrap_err();
    assert!(e.reason.contains("missing field `outside`"), "{e}");
}

// --- values ----------------------------------------------------------------

#[test]
fn invalid_cidr() {
    let text = edit("cidr = \"10.0.1.0/24\"", "cidr = \"10.0.1.0/33\"");
    let e = rejects(&text, "subnets[1].cidr", "IPv4 prefix");
    assert_eq!(e.line, Some(line_of(&text, "/33")));
    rejects(&edit("cidr = \"10.0.1.0/24\"", "cidr = \"10.0.1.7/24\""), "subnets[1].cidr", "host bits");
    rejects(&edit("cidr = \"10.0.0.0/16\"", "cidr = \"ten/16\""), "vpc.cidr", "IPv4 prefix");
    rejects(&edit("\"0.0.0.0/0\"", "\"0.0.0.0/x\""), "security_groups[0].egress[0].destination", "IPv4 prefix");
    rejects(&edit("cidr = \"10.0.1.0/24\"", "cidr = \"10.0.1.0/29\""), "subnets[1].cidr", "longest prefix is /28");
}

#[test]
fn invalid_address() {
    rejects(&edit("address = \"172.16.0.2\"", "address = \"172.16.0.300\""), "environments[0].address", "IPv4 address");
    rejects(&edit("gateway = \"172.16.0.1\"", "gateway = \"gw\""), "attachments[0].gateway", "IPv4 address");
    rejects(&edit("router = \"10.0.0.1\"", "router = 1"), "outside.router", "");
    rejects(&edit("address = \"172.16.0.2\"", "address = \"224.0.0.1\""), "environments[0].address", "unicast");
    rejects(&edit("router = \"10.0.0.1\"", "router = \"10.9.0.1\""), "outside.router", "in no subnet");
}

#[test]
fn invalid_mac() {
    rejects(&edit("name = \"hp-out\"", "name = \"hp-out\"\nmac = \"02:68:70:00:00\""), "outside.mac", "MAC address");
    rejects(&edit("name = \"hp-out\"", "name = \"hp-out\"\nmac = \"03:68:70:00:00:01\""), "outside.mac", "unicast");
}

#[test]
fn invalid_port_range() {
    rejects(&gw("port_range = \"0-100\""), "gateway.port_range", "start at 1");
    rejects(&gw("port_range = \"2000-1000\""), "gateway.port_range", "low-high");
    rejects(&gw("port_range = \"1024-70000\""), "gateway.port_range", "65535");
    rejects(&gw("port_range = \"lots\""), "gateway.port_range", "port range");
    rejects(&edit("ports = \"443\"", "ports = \"443-80\""), "security_groups[0].egress[0].ports", "low-high");
    let c = parse(&gw("port_range = \"2000-3000\"")).unwrap();
    assert_eq!(c.engine_config().port_range, 2000..=3000);
    let c = parse(&edit("ports = \"443\"", "ports = 8443")).unwrap();
    assert_eq!(c.security_groups[0].egress.as_ref().unwrap()[0].ports.unwrap().range(), 8443..=8443);
}

// --- structure -------------------------------------------------------------

#[test]
fn subnet_outside_the_vpc() {
    rejects(&edit("cidr = \"10.0.1.0/24\"", "cidr = \"10.1.0.0/24\""), "subnets[1].cidr", "not inside the VPC");
    rejects(&edit("cidr = \"10.0.0.0/24\"", "cidr = \"10.0.0.0/8\""), "subnets[0].cidr", "not inside the VPC");
}

#[test]
fn overlapping_subnets() {
    let text = edit("cidr = \"10.0.1.0/24\"", "cidr = \"10.0.0.128/25\"");
    let e = rejects(&text, "subnets[1].cidr", "overlaps subnets[0]");
    assert_eq!(e.line, Some(line_of(&text, "10.0.0.128/25")));
    assert_eq!(e.to_string(), format!("{}: {} (line {})", e.field, e.reason, e.line.unwrap()));
}

#[test]
fn unknown_references() {
    rejects(
        &edit("subnets = [\"subnet-a\"]", "subnets = [\"subnet-a\", \"subnet-z\"]"),
        "functions[0].subnets[1]",
        "unknown subnet \"subnet-z\"",
    );
    rejects(
        &edit("security_groups = [\"sg-web\"]", "security_groups = [\"sg-nope\"]"),
        "functions[0].security_groups[0]",
        "unknown security group",
    );
    rejects(&edit("function = \"orders\"", "function = \"payments\""), "environments[0].function", "unknown function");
    rejects(
        &edit("attachment = \"hp-e0\"", "attachment = \"hp-e9\""),
        "environments[0].attachment",
        "unknown attachment",
    );
    rejects(
        &edit(
            "{ protocol = \"tcp\", ports = \"443\", destination = \"0.0.0.0/0\" }",
            "{ protocol = \"all\", group = \"sg-x\" }",
        ),
        "security_groups[0].egress[0].group",
        "unknown security group \"sg-x\"",
    );
}

#[test]
fn rule_shape() {
    let rule = "{ protocol = \"tcp\", ports = \"443\", destination = \"0.0.0.0/0\" }";
    rejects(
        &edit(rule, "{ protocol = \"tcp\", destination = \"0.0.0.0/0\" }"),
        "security_groups[0].egress[0].ports",
        "required",
    );
    rejects(
        &edit(rule, "{ protocol = \"icmp\", ports = \"1\", destination = \"0.0.0.0/0\" }"),
        "security_groups[0].egress[0].ports",
        "only tcp and udp",
    );
    rejects(&edit(rule, "{ protocol = \"all\" }"), "security_groups[0].egress[0]", "needs `destination` or `group`");
    rejects(
        &edit(rule, "{ protocol = \"all\", destination = \"0.0.0.0/0\", group = \"sg-db\" }"),
        "security_groups[0].egress[0]",
        "not both",
    );
    rejects(
        &edit(rule, "{ protocol = \"all\", source = \"0.0.0.0/0\" }"),
        "security_groups[0].egress[0].source",
        "egress rule",
    );
    let many = vec![rule; 61].join(", ");
    rejects(&edit(rule, &many), "security_groups[0].egress", "at most 60");
    rejects(
        &edit(rule, "{ protocol = \"sctp\", destination = \"0.0.0.0/0\" }"),
        "security_groups[0].egress[0].protocol",
        "unknown variant",
    );
    let c = parse(&edit(rule, "{ protocol = \"-1\", destination = \"0.0.0.0/0\" }")).unwrap();
    assert_eq!(c.security_groups[0].egress.as_ref().unwrap()[0].protocol, control::config::Protocol::All);
}

#[test]
fn too_many_subnets_or_groups_and_none() {
    let mut text = BASE.to_string();
    let mut ids = Vec::new();
    for i in 2..=18 {
        text += &format!("\n[[subnets]]\nid = \"s{i}\"\ncidr = \"10.0.{i}.0/24\"\n");
        ids.push(format!("\"s{i}\""));
    }
    text +=
        &format!("\n[[functions]]\nname = \"wide\"\nsubnets = [{}]\nsecurity_groups = [\"sg-web\"]\n", ids.join(", "));
    rejects(&text, "functions[1].subnets", "at most 16");

    let mut text = BASE.to_string();
    let mut ids = Vec::new();
    for i in 0..6 {
        text += &format!("\n[[security_groups]]\nid = \"g{i}\"\n");
        ids.push(format!("\"g{i}\""));
    }
    text += &format!(
        "\n[[functions]]\nname = \"wide\"\nsubnets = [\"subnet-a\"]\nsecurity_groups = [{}]\n",
        ids.join(", ")
    );
    rejects(&text, "functions[1].security_groups", "at most 5");

    rejects(&edit("subnets = [\"subnet-a\"]", "subnets = []"), "functions[0].subnets", "at least one subnet");
    rejects(
        &edit("security_groups = [\"sg-web\"]", "security_groups = []"),
        "functions[0].security_groups",
        "at least one",
    );
}

#[test]
fn duplicates() {
    rejects(&edit("id = \"subnet-b\"", "id = \"subnet-a\""), "subnets[1].id", "duplicate subnet id");
    rejects(&edit("id = \"sg-db\"", "id = \"sg-web\""), "security_groups[1].id", "duplicate security group id");
    let f = "\n[[functions]]\nname = \"orders\"\nsubnets = [\"subnet-b\"]\nsecurity_groups = [\"sg-db\"]\n";
    rejects(&format!("{BASE}{f}"), "functions[1].name", "duplicate function name");
    let a = "\n[[attachments]]\nname = \"hp-e0\"\ngateway = \"172.16.1.1\"\n";
    rejects(&format!("{BASE}{a}"), "attachments[1].name", "duplicate attachment name");
    let e = "\n[[environments]]\nfunction = \"orders\"\naddress = \"172.16.0.2\"\nattachment = \"hp-e0\"\n";
    rejects(&format!("{BASE}{e}"), "environments[1].address", "duplicate environment address");
    rejects(
        &edit("subnets = [\"subnet-a\"]", "subnets = [\"subnet-a\", \"subnet-a\"]"),
        "functions[0].subnets[1]",
        "listed twice",
    );
    rejects(&edit("name = \"hp-e0\"", "name = \"hp-out\""), "attachments[0].name", "outside interface");
}

#[test]
fn environment_placement() {
    rejects(&edit("address = \"172.16.0.2\"", "address = \"10.0.5.9\""), "environments[0].address", "lies in the VPC");
    rejects(
        &edit("address = \"172.16.0.2\"", "address = \"172.16.0.1\""),
        "environments[0].address",
        "gateway address",
    );
    rejects(&edit("gateway = \"172.16.0.1\"", "gateway = \"10.0.7.1\""), "attachments[0].gateway", "lies in the VPC");
    let text = edit("attachment = \"hp-e0\"", "attachment = \"hp-e0\"\nsubnet = \"subnet-b\"");
    let e = rejects(&text, "environments[0].subnet", "not one of function \"orders\"'s subnets");
    assert_eq!(e.line, Some(line_of(&text, "subnet = \"subnet-b\"")));
}

#[test]
fn mtu_range() {
    rejects(&edit("name = \"hp-out\"", "name = \"hp-out\"\nmtu = 67"), "outside.mtu", "out of range 68..=65520");
    rejects(
        &edit("gateway = \"172.16.0.1\"", "gateway = \"172.16.0.1\"\nmtu = 65521"),
        "attachments[0].mtu",
        "out of range",
    );
    parse(&edit("gateway = \"172.16.0.1\"", "gateway = \"172.16.0.1\"\nmtu = 65520")).unwrap();
    parse(&edit("name = \"hp-out\"", "name = \"hp-out\"\nmtu = 68")).unwrap();
}

#[test]
fn interface_names() {
    rejects(&edit("name = \"hp-out\"", "name = \"a-very-long-interface\""), "outside.name", "1 to 15 bytes");
    rejects(&edit("name = \"hp-e0\"", "name = \"hp/e0\""), "attachments[0].name", "not a valid interface name");
}

#[test]
fn gateway_limits() {
    rejects(&gw("workers = 257"), "gateway.workers", "more than 256");
    parse(&gw("workers = 256")).unwrap();
    rejects(&gw("eni_quota = 0"), "gateway.eni_quota", "at least 1");
    rejects(&gw("control_socket = \"\""), "gateway.control_socket", "socket path");
    rejects(&gw("[gateway.arp]\nretry_ms = 0"), "gateway.arp.retry_ms", "positive");
    rejects(&gw("[gateway.frag]\ntimeout_secs = 0"), "gateway.frag.timeout_secs", "positive");
    rejects(&gw("workers = -1"), "gateway.workers", "");
}

#[test]
fn io_backend_and_busy_poll() {
    let p = planned(&gw("[gateway.io]\nbackend = \"syscalls\"\nbusy_poll_us = 50"));
    assert_eq!(p.io.backend, dataplane_io::Backend::Syscalls);
    assert_eq!(p.io.busy_poll, std::time::Duration::from_micros(50));
    assert_eq!(planned(&gw("io.backend = \"uring\"")).io.backend, dataplane_io::Backend::Uring);
    let d = planned(&gw(""));
    assert_eq!((d.io.backend, d.io.busy_poll), (dataplane_io::Backend::Auto, std::time::Duration::ZERO));
    parse(&gw("[gateway.io]\nbusy_poll_us = 1000")).unwrap();
    let e = rejects(&gw("[gateway.io]\nbusy_poll_us = 1001"), "gateway.io.busy_poll_us", "more than 1000");
    assert!(e.line.is_some(), "{e}");
    rejects(&gw("[gateway.io]\nbackend = \"epoll\""), "gateway.io.backend", "unknown variant");
    rejects(&gw("[gateway.io]\nbusy_poll_us = -1"), "gateway.io.busy_poll_us", "");
    rejects(&gw("[gateway.io]\nbusy_poll = 5"), "gateway.io.busy_poll", "unknown field");
}

#[test]
fn worker_cpus() {
    // CPU 0 is one every process here may run on (tests are not confined).
    let p = planned(&gw("[gateway.io]\ncpus = [0]"));
    assert_eq!(p.io.cpus.iter().collect::<Vec<_>>(), [0]);
    assert_eq!(p.io.cpus.for_worker(3), Some(0));
    assert!(planned(&gw("")).io.cpus.is_empty());
    rejects(&gw("[gateway.io]\ncpus = [0, 0]"), "gateway.io.cpus", "CPU 0 is listed twice");
    let e = rejects(
        &gw("[gateway.io]\ncpus = [0, 5000]"),
        "gateway.io.cpus",
        "CPU 5000 is not one this process may run on",
    );
    assert!(e.reason.contains("it may run on 0"), "{e}");
    rejects(&gw("[gateway.io]\ncpus = [-1]"), "gateway.io.cpus[0]", "expected usize");
}

#[test]
fn udp_timeout_floor() {
    let e = rejects(&gw("[gateway.timeouts]\nudp = 119"), "gateway.timeouts.udp", "at least 120");
    assert_eq!(e.line, Some(3));
    parse(&gw("[gateway.timeouts]\nudp = 120")).unwrap();
}

#[test]
fn engine_errors_carry_the_gateway_prefix() {
    rejects(
        &gw("mapping = \"address-and-port-dependent\"\nfiltering = \"endpoint-independent\""),
        "gateway.filtering",
        "needs address-and-port-dependent filtering",
    );
    rejects(&gw("max_sessions = 0"), "gateway.max_sessions", "between 1 and");
    rejects(&gw("env_port_quota = 0"), "gateway.env_port_quota", "positive");
    rejects(&gw("[gateway.timeouts]\ntcp_established = 0"), "gateway.timeouts.tcp_established", "positive");
    rejects(&gw("[gateway.timeouts]\nicmp = 0"), "gateway.timeouts.icmp", "positive");
}

#[test]
fn profiles_and_overrides() {
    let c = parse(&gw("profile = \"aws\"")).unwrap();
    let e = c.engine_config();
    assert_eq!((e.mapping, e.filtering), (Mapping::AddressAndPortDependent, Filtering::AddressAndPortDependent));
    assert_eq!(e.timeouts.udp, Duration::from_secs(350));
    assert!(!e.icmp_on_exhaustion);
    let c = parse(&gw(
        "profile = \"aws\"\nmapping = \"endpoint-independent\"\nfiltering = \"address-dependent\"\nicmp_on_exhaustion = true\nport_quarantine_secs = 30\nhigh_water = 1000\n[gateway.timeouts]\ntcp_established = 9000\n[gateway.arp]\nretry_ms = 250",
    ))
    .unwrap();
    let e = c.engine_config();
    assert_eq!((e.mapping, e.filtering), (Mapping::EndpointIndependent, Filtering::AddressDependent));
    assert!(e.icmp_on_exhaustion);
    assert_eq!(e.port_quarantine, Duration::from_secs(30));
    assert_eq!(e.high_water, 1000);
    assert_eq!(e.timeouts.tcp_established, Duration::from_secs(9000));
    assert_eq!(e.timeouts.udp, Duration::from_secs(350));
    assert_eq!(e.arp.retry, Duration::from_millis(250));
}

#[test]
fn validate_is_callable_on_a_built_config() {
    let mut c = parse(BASE).unwrap();
    c.gateway.workers = 1000;
    let e = c.validate().unwrap_err();
    assert_eq!(e.field, "gateway.workers");
    assert_eq!(e.line, None);
}

// --- planning --------------------------------------------------------------

/// BASE plus extra functions: `(name, subnets, groups)`.
fn with_functions(fs: &[(&str, &[&str], &[&str])]) -> String {
    let mut t = BASE.to_string();
    let q = |v: &[&str]| v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    for (name, subnets, groups) in fs {
        t += &format!(
            "\n[[functions]]\nname = \"{name}\"\nsubnets = [{}]\nsecurity_groups = [{}]\n",
            q(subnets),
            q(groups)
        );
    }
    t
}

#[test]
fn same_subnet_and_group_set_share_one_eni() {
    let text = with_functions(&[("billing", &["subnet-a"], &["sg-web"])]);
    let text = text + "\n[[environments]]\nfunction = \"billing\"\naddress = \"172.16.0.3\"\nattachment = \"hp-e0\"\n";
    let p = planned(&text);
    assert_eq!(p.enis.len(), 1);
    assert_eq!(p.enis[0].functions, ["billing", "orders"]);
    assert_eq!(p.enis[0].key, EniKey::new("subnet-a", ["sg-web"]));
    assert_eq!(p.eni_of(ip("172.16.0.2")), p.eni_of(ip("172.16.0.3")));
    // Group order does not matter.
    let p = planned(&with_functions(&[
        ("x", &["subnet-a"], &["sg-web", "sg-db"]),
        ("y", &["subnet-a"], &["sg-db", "sg-web"]),
    ]));
    assert_eq!(p.enis.len(), 2);
    assert_eq!(p.enis[0].functions, ["x", "y"]);
    assert_eq!(p.enis[0].key.security_groups, ["sg-db", "sg-web"]);
}

#[test]
fn another_group_set_or_subnet_gets_its_own_eni() {
    let p = planned(&with_functions(&[
        ("other-groups", &["subnet-a"], &["sg-db"]),
        ("other-subnet", &["subnet-b"], &["sg-web"]),
    ]));
    assert_eq!(p.enis.len(), 3);
    let by_fn = |f: &str| p.enis.iter().find(|e| e.functions.iter().any(|x| x == f)).unwrap();
    assert_ne!(by_fn("orders").id, by_fn("other-groups").id);
    assert_ne!(by_fn("orders").id, by_fn("other-subnet").id);
    assert_eq!(by_fn("other-subnet").addrs, [ip("10.0.1.4")]);
    let ids: Vec<u32> = p.enis.iter().map(|e| e.id).collect();
    assert_eq!(ids, [1, 2, 3]);
}

#[test]
fn a_function_with_two_subnets_gets_two_enis() {
    let text = edit("subnets = [\"subnet-a\"]", "subnets = [\"subnet-a\", \"subnet-b\"]");
    let text = text + "\n[[environments]]\nfunction = \"orders\"\naddress = \"172.16.0.3\"\nattachment = \"hp-e0\"\nsubnet = \"subnet-b\"\n";
    let p = planned(&text);
    assert_eq!(p.enis.len(), 2);
    assert_eq!(p.enis[0].key.subnet, "subnet-a");
    assert_eq!(p.enis[1].key.subnet, "subnet-b");
    assert_eq!(p.eni_of(ip("172.16.0.2")).unwrap().key.subnet, "subnet-a");
    assert_eq!(p.eni_of(ip("172.16.0.3")).unwrap().key.subnet, "subnet-b");
}

#[test]
fn addresses_come_from_the_subnet_and_skip_reserved_ones() {
    // Eleven distinct group sets in a /28: exactly its eleven usable addresses.
    let mut text = edit("cidr = \"10.0.1.0/24\"", "cidr = \"10.0.1.0/28\"");
    for g in 0..4 {
        text += &format!("\n[[security_groups]]\nid = \"g{g}\"\n");
    }
    let sets: Vec<Vec<String>> = (1u32..16)
        .map(|m| (0..4).filter(|b| m & (1 << b) != 0).map(|b| format!("\"g{b}\"")).collect())
        .take(11)
        .collect();
    for (i, s) in sets.iter().enumerate() {
        text += &format!(
            "\n[[functions]]\nname = \"f{i}\"\nsubnets = [\"subnet-b\"]\nsecurity_groups = [{}]\n",
            s.join(", ")
        );
    }
    let p = planned(&text);
    let cidr: dataplane::policy::Cidr = "10.0.1.0/28".parse().unwrap();
    let mut got: Vec<Ipv4Addr> =
        p.enis.iter().filter(|e| e.key.subnet == "subnet-b").flat_map(|e| e.addrs.clone()).collect();
    got.sort();
    let want: Vec<Ipv4Addr> = (4..=14).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect();
    assert_eq!(got, want);
    for a in &got {
        assert!(cidr.contains(*a));
        assert!(![0, 1, 2, 3, 15].contains(&a.octets()[3]));
    }
    // The ENI addresses are on the outside link, and ARP-reachable.
    assert_eq!(p.bindings.outside().on_link.len(), 2);
    assert_eq!(p.bindings.next_hop(ip("10.0.1.9")), Some(ip("10.0.1.9")));
    assert_eq!(p.bindings.next_hop(ip("10.0.9.9")), Some(ip("10.0.0.1")));

    // A twelfth set exhausts the subnet.
    text += "\n[[functions]]\nname = \"f-last\"\nsubnets = [\"subnet-b\"]\nsecurity_groups = [\"g0\", \"g1\", \"g2\", \"g3\"]\n";
    let c = parse(&text).unwrap();
    let e = plan(&c, &BTreeMap::new()).unwrap_err();
    assert_eq!(e.field, "subnets[1]");
    assert!(e.reason.contains("SubnetOutOfIPAddresses"), "{e}");
}

#[test]
fn router_and_members_are_never_allocated() {
    let text = edit("router = \"10.0.0.1\"", "router = \"10.0.0.4\"");
    let text = text.replace("id = \"sg-db\"", "id = \"sg-db\"\nmembers = [\"10.0.0.5\"]");
    let p = planned(&text);
    assert_eq!(p.enis[0].addrs, [ip("10.0.0.6")]);
}

#[test]
fn existing_assignment_keeps_addresses() {
    let first = planned(BASE);
    assert_eq!(first.enis[0].addrs, [ip("10.0.0.4")]);
    // A new key that sorts first would take 10.0.0.4 in a fresh plan.
    let text = with_functions(&[("audit", &["subnet-a"], &["sg-db"])]);
    let fresh = planned(&text);
    assert_eq!(fresh.enis[0].key, EniKey::new("subnet-a", ["sg-db"]));
    assert_eq!(fresh.enis[0].addrs, [ip("10.0.0.4")]);
    let kept = plan(&parse(&text).unwrap(), &first.assignments()).unwrap();
    let web = kept.enis.iter().find(|e| e.key == EniKey::new("subnet-a", ["sg-web"])).unwrap();
    let db = kept.enis.iter().find(|e| e.key == EniKey::new("subnet-a", ["sg-db"])).unwrap();
    assert_eq!(web.addrs, [ip("10.0.0.4")]);
    assert_eq!(db.addrs, [ip("10.0.0.5")]);
    // Several kept addresses stay; unusable ones are dropped.
    let mut existing = BTreeMap::new();
    existing.insert(EniKey::new("subnet-a", ["sg-web"]), vec![ip("10.0.0.9"), ip("10.0.0.20"), ip("10.0.0.255")]);
    let p = plan(&parse(BASE).unwrap(), &existing).unwrap();
    assert_eq!(p.enis[0].addrs, [ip("10.0.0.9"), ip("10.0.0.20")]);
    assert_eq!(p.bindings.eni(1).unwrap().addrs.len(), 2);
}

#[test]
fn eni_quota_is_enforced() {
    let text = with_functions(&[("audit", &["subnet-a"], &["sg-db"])]);
    let text = text.replacen("[outside]", "[gateway]\neni_quota = 1\n\n[outside]", 1);
    let c = parse(&text).unwrap();
    let e = plan(&c, &BTreeMap::new()).unwrap_err();
    assert_eq!(e.field, "gateway.eni_quota");
    assert!(e.reason.contains("EniLimitExceeded"), "{e}");
}

#[test]
fn group_references_compile_to_host_rules() {
    let text = edit(
        "{ protocol = \"tcp\", ports = \"443\", destination = \"0.0.0.0/0\" }",
        "{ protocol = \"tcp\", ports = \"5432\", group = \"sg-db\" }, { protocol = \"icmp\", destination = \"10.0.0.0/16\" }",
    )
    .replace("id = \"sg-db\"", "id = \"sg-db\"\nmembers = [\"10.0.1.10\"]\negress = []");
    let text =
        text + "\n[[functions]]\nname = \"db-client\"\nsubnets = [\"subnet-b\"]\nsecurity_groups = [\"sg-db\"]\n";
    let p = planned(&text);
    let web = p.enis.iter().find(|e| e.key.security_groups == ["sg-web"]).unwrap();
    let db = p.enis.iter().find(|e| e.key.security_groups == ["sg-db"]).unwrap();
    assert_eq!(db.addrs, [ip("10.0.1.4")]);
    let host = |a: &str| format!("{a}/32").parse().unwrap();
    let mut rules = web.egress.rules().to_vec();
    rules.sort_by_key(|r| (format!("{:?}", r.proto), r.dst.to_string()));
    assert_eq!(
        rules,
        [
            Rule { proto: RuleProto::Icmp, ports: 0..=65535, dst: "10.0.0.0/16".parse().unwrap() },
            Rule { proto: RuleProto::Tcp, ports: 5432..=5432, dst: host("10.0.1.10") },
            Rule { proto: RuleProto::Tcp, ports: 5432..=5432, dst: host("10.0.1.4") },
        ]
    );
    assert!(web.egress.allows(TCP, ip("10.0.1.4"), 5432));
    assert!(!web.egress.allows(TCP, ip("10.0.1.5"), 5432));
    assert!(!web.egress.allows(UDP, ip("10.0.1.4"), 5432));
    assert!(web.egress.allows(ICMP, ip("10.0.3.3"), 0));
    // `egress = []` denies everything; omitted egress allows everything.
    assert!(db.egress.rules().is_empty());
    let p = planned(&edit("security_groups = [\"sg-web\"]", "security_groups = [\"sg-db\"]"));
    assert!(p.enis[0].egress.allows(UDP, ip("192.0.2.1"), 9));
}

#[test]
fn ports_and_macs() {
    let text = edit("name = \"hp-out\"", "name = \"hp-out\"\nkind = \"af-packet\"\nmac = \"02:00:00:00:00:09\"")
        + "\n[[attachments]]\nname = \"hp-e1\"\ngateway = \"172.16.1.1\"\nmtu = 9000\n";
    let p = planned(&text);
    assert_eq!(p.outside.kind, OutsideKind::AfPacket);
    assert_eq!(p.outside.mac, [2, 0, 0, 0, 0, 9]);
    assert_eq!(p.bindings.outside().mac, [2, 0, 0, 0, 0, 9]);
    assert_eq!(p.outside.router, Some(ip("10.0.0.1")));
    assert_eq!(p.attachments[0].port, PortId(1));
    assert_eq!(p.attachments[0].mac, [0x02, 0x68, 0x70, 0x01, 0, 0]);
    assert_eq!(p.attachments[1].mac, [0x02, 0x68, 0x70, 0x01, 0, 1]);
    assert_eq!(attachment_mac(0x1234), [0x02, 0x68, 0x70, 0x01, 0x12, 0x34]);
    let inside = p.bindings.inside(PortId(2)).unwrap();
    assert_eq!((inside.gateway, inside.mtu), (ip("172.16.1.1"), 9000));
    assert_eq!(planned(BASE).outside.mac, [0x02, 0x68, 0x70, 0x00, 0x00, 0x01]);
    assert_eq!(p.bindings.env(ip("172.16.0.2")).unwrap().port, PortId(1));
    assert_eq!(p.lifecycle.idle_reclaim, Some(Duration::from_secs(1_209_600)));
    assert_eq!(p.control_socket.to_str(), Some("/run/hyperplane.sock"));
}

#[test]
fn workers_resolve() {
    assert_eq!(planned(&gw("workers = 3")).workers, 3);
    assert!(planned(BASE).workers >= 1);
}

/// Issue 12 item 10: every size and duration key has an upper bound, and a
/// value past it is refused with an error naming the key (it used to abort
/// allocating, or overflow a clock, at start).
#[test]
fn huge_values_are_refused_naming_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("[gateway.frag]", "max_datagrams", "gateway.frag.max_datagrams"),
        ("[gateway.frag]", "max_buffered_bytes", "gateway.frag.max_buffered_bytes"),
        ("[gateway.frag]", "max_fragments", "gateway.frag.max_fragments"),
        ("[gateway.frag]", "frame_capacity", "gateway.frag.frame_capacity"),
        ("[gateway.frag]", "timeout_secs", "gateway.frag.timeout_secs"),
        ("[gateway.arp]", "max_entries", "gateway.arp.max_entries"),
        ("[gateway.arp]", "queue_frames", "gateway.arp.queue_frames"),
        ("[gateway.arp]", "queue_per_ip", "gateway.arp.queue_per_ip"),
        ("[gateway.arp]", "frame_capacity", "gateway.arp.frame_capacity"),
        ("[gateway.arp]", "reachable_secs", "gateway.arp.reachable_secs"),
        ("[gateway.arp]", "retry_ms", "gateway.arp.retry_ms"),
        ("[gateway.timeouts]", "tcp_established", "gateway.timeouts.tcp_established"),
        ("[gateway.timeouts]", "tcp_transitory", "gateway.timeouts.tcp_transitory"),
        ("[gateway.timeouts]", "tcp_reset", "gateway.timeouts.tcp_reset"),
        ("[gateway.timeouts]", "tcp_incoming_syn", "gateway.timeouts.tcp_incoming_syn"),
        ("[gateway.timeouts]", "udp", "gateway.timeouts.udp"),
        ("[gateway.timeouts]", "icmp", "gateway.timeouts.icmp"),
        ("", "port_quarantine_secs", "gateway.port_quarantine_secs"),
        ("", "idle_reclaim_secs", "gateway.idle_reclaim_secs"),
        ("", "provisioning_delay_ms", "gateway.provisioning_delay_ms"),
        ("", "drain_limit_secs", "gateway.drain_limit_secs"),
        ("", "max_eni_addresses", "gateway.max_eni_addresses"),
        ("", "eni_quota", "gateway.eni_quota"),
    ];
    for &(table, key, field) in cases {
        // The largest value the key's type takes.
        let huge = if matches!(key, "max_eni_addresses" | "eni_quota") { "4294967295" } else { "9223372036854775807" };
        let text = gw(&format!("{table}\n{key} = {huge}"));
        let e = parse(&text).expect_err(field);
        assert_eq!(e.field, field, "{e}");
        assert!(e.reason.contains("at most"), "{field}: {e}");
    }
}

/// Issue 16: `outside.fanout` chooses how an AF_PACKET outside is read; a
/// TAP outside has no such choice and says so.
#[test]
fn outside_fanout_is_only_for_af_packet() {
    rejects(
        &edit("name = \"hp-out\"", "name = \"hp-out\"\nfanout = false"),
        "outside.fanout",
        "only for kind = \"af-packet\"",
    );
    let c = parse(&edit("name = \"hp-out\"", "name = \"hp-out\"\nkind = \"af-packet\"\nfanout = false")).unwrap();
    assert_eq!(c.outside.fanout, Some(false));
    let c = parse(&edit("name = \"hp-out\"", "name = \"hp-out\"\nkind = \"af-packet\"")).unwrap();
    assert_eq!(c.outside.fanout, None, "default: a fanout group (plan: true)");
}

/// Issue 15: `[[attachments]] kind` chooses the device: a TAP the gateway
/// makes (the default) or an existing interface opened with `AF_PACKET`
/// (a VMM's TAP); anything else is refused naming the field.
#[test]
fn attachment_kind_tap_or_af_packet() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.attachments[0].kind, control::config::AttachmentKind::Tap, "default");
    let text = edit("name = \"hp-e0\"", "name = \"hp-e0\"\nkind = \"af-packet\"");
    let c = parse(&text).unwrap();
    assert_eq!(c.attachments[0].kind, control::config::AttachmentKind::AfPacket);
    let p = planned(&text);
    assert_eq!(p.attachments[0].kind, control::config::AttachmentKind::AfPacket, "the plan carries the kind");
    rejects(&edit("name = \"hp-e0\"", "name = \"hp-e0\"\nkind = \"vhost\""), "attachments[0].kind", "unknown variant");
}

/// Issue 15: `kind = "vhost-user"` needs a `socket` (and only it takes one);
/// two attachments cannot share a socket; such an attachment turns the TAP
/// offloads off (its guest takes none).
#[test]
fn attachment_kind_vhost_user_needs_its_socket() {
    let vhost = |extra: &str| edit("name = \"hp-e0\"", &format!("name = \"hp-e0\"\nkind = \"vhost-user\"{extra}"));
    let text = vhost("\nsocket = \"/run/vm0.sock\"");
    let c = parse(&text).unwrap();
    assert_eq!(c.attachments[0].kind, control::config::AttachmentKind::VhostUser);
    assert_eq!(c.attachments[0].socket.as_deref(), Some(std::path::Path::new("/run/vm0.sock")));
    let p = planned(&text);
    assert_eq!(p.attachments[0].socket.as_deref(), Some(std::path::Path::new("/run/vm0.sock")));
    assert!(!p.offloads, "a vhost-user guest takes no offloads");
    assert!(planned(BASE).offloads, "the default is on");
    rejects(&vhost(""), "attachments[0].socket", "required for kind = \"vhost-user\"");
    rejects(&vhost("\nsocket = \"\""), "attachments[0].socket", "an empty path");
    rejects(
        &edit("name = \"hp-e0\"", "name = \"hp-e0\"\nsocket = \"/run/vm0.sock\""),
        "attachments[0].socket",
        "only for kind = \"vhost-user\"",
    );
    let two = text.clone()
        + "\n[[attachments]]\nkind = \"vhost-user\"\nname = \"vm1\"\nsocket = \"/run/vm0.sock\"\ngateway = \"172.16.1.1\"\n";
    rejects(&two, "attachments[1].socket", "also attachments[0]'s socket");
}

/// Issue 16: `outside.ring` puts an AF_PACKET outside's sockets on packet
/// rings; a TAP outside has none, and rings need the fanout group.
#[test]
fn outside_ring_is_only_for_af_packet_with_fanout() {
    rejects(
        &edit("name = \"hp-out\"", "name = \"hp-out\"\nring = true"),
        "outside.ring",
        "only for kind = \"af-packet\"",
    );
    rejects(
        &edit("name = \"hp-out\"", "name = \"hp-out\"\nkind = \"af-packet\"\nfanout = false\nring = true"),
        "outside.ring",
        "needs fanout = true",
    );
    let c = parse(&edit("name = \"hp-out\"", "name = \"hp-out\"\nkind = \"af-packet\"\nring = false")).unwrap();
    assert_eq!(c.outside.ring, Some(false));
    let c = parse(&edit("name = \"hp-out\"", "name = \"hp-out\"\nkind = \"af-packet\"")).unwrap();
    assert_eq!(c.outside.ring, None, "default: rings (plan: true)");
}

/// The base config with its first attachment made `af-packet`, plus `extra`
/// lines in that attachment.
fn direct(extra: &str) -> String {
    edit("name = \"hp-e0\"", &format!("name = \"hp-e0\"\nkind = \"af-packet\"{extra}"))
}

/// Issue 15/16: an `af-packet` attachment runs on packet rings by default
/// (`ring`, planned true); `ring = false` keeps plain sockets; any other
/// kind has no rings and the field is refused, naming it.
#[test]
fn attachment_ring_is_only_for_af_packet_and_on_by_default() {
    let p = planned(&direct(""));
    assert!(p.attachments[0].ring, "default: rings");
    let c = parse(&direct("\nring = false")).unwrap();
    assert_eq!(c.attachments[0].ring, Some(false));
    assert!(!planned(&direct("\nring = false")).attachments[0].ring);
    assert!(planned(&direct("\nring = true")).attachments[0].ring);
    rejects(
        &edit("name = \"hp-e0\"", "name = \"hp-e0\"\nring = true"),
        "attachments[0].ring",
        "only for kind = \"af-packet\"",
    );
    rejects(
        &edit("name = \"hp-e0\"", "name = \"hp-e0\"\nkind = \"vhost-user\"\nsocket = \"/run/vm0.sock\"\nring = false"),
        "attachments[0].ring",
        "only for kind = \"af-packet\"",
    );
    assert!(parse(&direct("\nring = \"yes\"")).is_err(), "a boolean");
}

/// An `af-packet` attachment's receive slots (`ring_slots`): planned as
/// given, the default for the slot size when absent; refused, naming the
/// field, out of range, on another kind, or with `ring = false`.
#[test]
fn attachment_ring_slots_are_bounded_and_only_for_rings() {
    assert_eq!(planned(&direct("")).attachments[0].ring_slots, None, "default: by slot size");
    assert_eq!(planned(&direct("\nring_slots = 64")).attachments[0].ring_slots, Some(64));
    assert_eq!(planned(&direct("\nring_slots = 4096")).attachments[0].ring_slots, Some(4096));
    rejects(&direct("\nring_slots = 63"), "attachments[0].ring_slots", "63 is outside 64..=4096");
    rejects(&direct("\nring_slots = 4097"), "attachments[0].ring_slots", "outside 64..=4096");
    rejects(&direct("\nring = false\nring_slots = 128"), "attachments[0].ring_slots", "ring = false has no slots");
    rejects(
        &edit("name = \"hp-e0\"", "name = \"hp-e0\"\nring_slots = 128"),
        "attachments[0].ring_slots",
        "only for kind = \"af-packet\"",
    );
    assert!(parse(&direct("\nring_slots = -1")).is_err(), "a count");
}
