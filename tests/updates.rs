//! Config updates while traffic flows, end to end (namespaces, real TCP):
//! a function's security groups change (a new shared ENI, make-before-break),
//! a rule is tightened, an invalid config is refused. Root only.

use control::controller::EniState;
use control::lab::{Lab, Options};
use control::netlab::{self, SERVER};
use dataplane::counters::DropReason;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

const PORT: u16 = 7700;

/// A server that answers each line with the peer it sees.
fn server(lab: &Lab) {
    let l = lab.server.run(|| TcpListener::bind(SocketAddrV4::new(SERVER, PORT)).expect("bind"));
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let peer = c.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                let mut r = BufReader::new(c.try_clone().expect("clone"));
                let mut w = c;
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if w.write_all(format!("{peer}\n").as_bytes()).is_err() {
                        break;
                    }
                    line.clear();
                }
            });
        }
    });
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
fn security_group_changes_while_connections_are_open() {
    if !netlab::is_root() {
        eprintln!("skipping: needs root (network namespaces and TAP devices)");
        return;
    }
    let lab = Lab::build(&Options { envs: 1, ..Options::default() }).expect("lab");
    server(&lab);
    let shared = lab.runtime().shared();
    let mut before = connect(&lab).expect("connects");
    let first_eni = ask(&mut before);
    assert_eq!(first_eni, lab.eni);

    // An invalid config changes nothing.
    let cfg_before = shared.controller().config().clone();
    let sessions_before = lab.gateway().totals().live;
    let bad = lab.config_with(|o| {
        o.alt_egress = r#"[ { protocol = "tcp", ports = "90-80", destination = "0.0.0.0/0" } ]"#.into()
    });
    let e = shared.apply(&bad).expect_err("a bad port range is refused");
    assert!(e.field.contains("security_groups[1]"), "{e}");
    assert_eq!(shared.controller().config(), &cfg_before);
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
