//! Config updates while traffic flows, end to end (namespaces, real TCP):
//! a function's security groups change (a new shared ENI, make-before-break),
//! a rule is tightened, an invalid config is refused. Root only.

use control::controller::EniState;
use dataplane::counters::DropReason;
use netlab::lab::{Lab, Options};
use netlab::SERVER;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

const PORT: u16 = 7700;

/// A server that answers each line with the peer it sees.
fn server(lab: &Lab) {
    netlab::line_server(&lab.server, SocketAddrV4::new(SERVER, PORT), |_, peer| format!("{peer}\n")).expect("bind");
}

fn connect(lab: &Lab) -> std::io::Result<TcpStream> {
    lab.envs[0].run(|| {
        let c = TcpStream::connect_timeout(
            &SocketAddr::from(SocketAddrV4::new(SERVER, PORT)),
            Duration::from_millis(1500),
        )?;
        c.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(c)
    })
}

/// Sends a line and returns the source address the server saw.
fn ask(c: &mut TcpStream) -> Ipv4Addr {
    c.write_all(b"who\n").expect("write");
    let mut line = String::new();
    BufReader::new(c.try_clone().unwrap()).read_line(&mut line).expect("answer");
    *line.trim().parse::<SocketAddrV4>().expect("an address").ip()
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn security_group_changes_while_connections_are_open() {
    netlab::require_root();
    let lab = Lab::build(&Options { envs: 1, ..Options::default() }).expect("lab");
    server(&lab);
    let shared = lab.runtime().shared();
    let mut before = connect(&lab).expect("connects");
    let first_eni = ask(&mut before);
    assert_eq!(first_eni, lab.eni);

    // An invalid config changes nothing.
    let cfg_before = shared.controller().config().clone();
    let enis = |s: &control::runtime::Shared| {
        s.controller().enis().iter().map(|e| (e.id, e.addrs.clone(), e.state, e.generation)).collect::<Vec<_>>()
    };
    let enis_before = enis(shared);
    let sessions_before = lab.gateway().totals().live;
    let bad = lab.config_with(|o| {
        o.alt_egress = r#"[ { protocol = "tcp", ports = "90-80", destination = "0.0.0.0/0" } ]"#.into()
    });
    let e = shared.apply(&bad).expect_err("a bad port range is refused");
    assert!(e.field.contains("security_groups[1]"), "{e}");
    assert_eq!(shared.controller().config(), &cfg_before);
    assert_eq!(enis(shared), enis_before, "ENIs exactly as they were");
    assert_eq!(lab.gateway().totals().live, sessions_before);
    // Changing devices needs a restart, and says so.
    let e = shared.apply(&lab.config_with(|o| o.mtu = 1400)).expect_err("device change refused");
    assert!(e.reason.contains("restart"), "{e}");

    // The function moves to another security group: a new shared ENI.
    let changes = shared.apply(&lab.config_with(|o| o.group = "sg-alt".into())).expect("applies");
    assert!(changes.iter().any(|l| l.contains("sg-alt")), "{changes:?}");
    assert!(lab.runtime().wait_settled(Duration::from_secs(5)));
    let enis = shared.controller().enis();
    let new_eni = enis.iter().find(|e| e.key.security_groups == ["sg-alt"]).expect("the new ENI");
    assert_eq!(new_eni.state, EniState::Active);
    let new_addr = new_eni.addrs[0];
    assert_ne!(new_addr, first_eni);
    let old = enis.iter().find(|e| e.addrs.contains(&first_eni)).expect("the old ENI drains");
    assert_eq!(old.state, EniState::Draining, "its connection is still open");

    // The open connection keeps its ENI; a new one leaves from the new ENI.
    assert_eq!(ask(&mut before), first_eni, "the connection opened before the update still works");
    let mut after = connect(&lab).expect("a new connection");
    assert_eq!(ask(&mut after), new_addr, "new connections leave from the new ENI's address");

    // Tighten the new group: new connections to the port are blocked, the
    // established one is not.
    let tight = r#"[ { protocol = "tcp", ports = "7701", destination = "0.0.0.0/0" } ]"#;
    shared
        .apply(&lab.config_with(|o| {
            o.group = "sg-alt".into();
            o.alt_egress = tight.into();
        }))
        .expect("applies");
    std::thread::sleep(Duration::from_millis(200));
    let denied_before = lab.gateway().totals().dropped(DropReason::PolicyDenied);
    assert!(connect(&lab).is_err(), "the tightened rule blocks a new connection");
    assert!(lab.gateway().totals().dropped(DropReason::PolicyDenied) > denied_before);
    assert_eq!(ask(&mut after), new_addr, "the established connection continues");
    assert_eq!(ask(&mut before), first_eni);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn the_control_socket_reports_enis_functions_sessions_and_stats() {
    netlab::require_root();
    use control::api::{self, Request, Response};
    let lab = Lab::build(&Options { envs: 1, ..Options::default() }).expect("lab");
    server(&lab);
    let mut c = connect(&lab).expect("connects");
    assert_eq!(ask(&mut c), lab.eni);
    let shared = std::sync::Arc::clone(lab.runtime().shared());
    let path = std::env::temp_dir().join(format!("hp-test-{}.sock", std::process::id()));
    let s = std::sync::Arc::clone(&shared);
    let srv = api::serve(&path, std::sync::Arc::new(move |r| s.handle(r))).expect("serves");

    let Response::Status(st) = api::call(&path, &Request::Status).unwrap() else { panic!("status") };
    assert_eq!(st.enis.len(), 1);
    assert_eq!((st.enis[0].addrs.clone(), st.enis[0].state.as_str()), (vec![lab.eni], "Active"));
    assert!(st.enis[0].setup_steps.iter().any(|s| s.step == "probe"));
    assert_eq!((st.functions[0].name.as_str(), st.functions[0].state.as_str()), ("lab", "Active"));

    let env = netlab::env_addr(0);
    let req = Request::Sessions { eni: Some(st.enis[0].id), env: Some(env), limit: None };
    let Response::Sessions(ss) = api::call(&path, &req).unwrap() else { panic!("sessions") };
    let tcp: Vec<_> = ss.sessions.iter().filter(|l| l.proto == "tcp").collect();
    assert_eq!(tcp.len(), 1, "{:?}", ss.sessions);
    assert_eq!((*tcp[0].translated_src.ip(), *tcp[0].original_dst.ip()), (lab.eni, SERVER));
    assert!(tcp[0].packets_out >= 2 && tcp[0].timeout_s > 7000, "{:?}", tcp[0]);
    let other = Request::Sessions { eni: None, env: Some(Ipv4Addr::new(172, 16, 9, 9)), limit: None };
    let Response::Sessions(none) = api::call(&path, &other).unwrap() else { panic!("sessions") };
    assert_eq!(none.total, 0);

    let Response::Stats(stats) = api::call(&path, &Request::Stats).unwrap() else { panic!("stats") };
    assert!(stats.outbound_packets >= 2 && stats.sessions["tcp"] >= 1);
    assert!(stats.drops.contains_key("no_session"));
    let text = control::metrics::render(&stats);
    assert!(text.contains("hyperplane_sessions{proto=\"tcp\"}"), "{text}");
    let Response::Error { message } = api::call(&path, &Request::Apply { config: "nonsense =".into() }).unwrap() else {
        panic!("a bad config is an error")
    };
    assert!(message.contains("line"), "{message}");
    srv.stop();
}

/// Issue 12 item 3: two workers, an environment only behind the first
/// attachment at start; `apply` adds one behind the second (read by the
/// other worker). Its connections must work: its worker owns ports of its
/// own (it used to get the range's first port only, whose replies were
/// steered to the first worker).
#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn an_environment_added_by_apply_on_another_workers_attachment_connects() {
    netlab::require_root();
    let lab = Lab::build(&Options { envs: 2, workers: 2, absent_envs: vec![1], ..Options::default() }).expect("lab");
    server(&lab);
    let shared = lab.runtime().shared();
    shared.apply(&lab.config_with(|o| o.absent_envs.clear())).expect("applies");
    assert!(lab.runtime().wait_settled(Duration::from_secs(5)));
    let mut ok = 0;
    let mut conns = vec![];
    for _ in 0..8 {
        let c = lab.envs[1].run(|| {
            let c = TcpStream::connect_timeout(
                &SocketAddr::from(SocketAddrV4::new(SERVER, PORT)),
                Duration::from_millis(1500),
            )?;
            c.set_read_timeout(Some(Duration::from_secs(3)))?;
            Ok::<_, std::io::Error>(c)
        });
        if let Ok(mut c) = c {
            assert_eq!(ask(&mut c), lab.eni);
            ok += 1;
            conns.push(c);
        }
    }
    assert_eq!(ok, 8, "connections from the environment added on the second worker's attachment");
}
