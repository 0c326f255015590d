//! Incident tools end to end, over the control socket (namespaces, real
//! TCP, root only): `flush` removes the sessions it names and counts them,
//! `sessions --delete` removes one flow, and `capture` writes a pcap that
//! `tcpdump -r` reads, with the ENI address on the outside and the
//! environment's address on its attachment.

use control::api::{self, Request, Response};
use netlab::lab::{Lab, Options};
use netlab::SERVER;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

const PORTS: [u16; 2] = [7710, 7711];

/// Servers on both ports that echo each line.
fn servers(lab: &Lab) {
    for port in PORTS {
        netlab::line_server(&lab.server, SocketAddrV4::new(SERVER, port), |line, _| line.to_string()).expect("bind");
    }
}

fn connect(lab: &Lab, env: usize, port: u16) -> TcpStream {
    lab.envs[env].run(move || {
        let c = TcpStream::connect_timeout(&SocketAddr::from(SocketAddrV4::new(SERVER, port)), Duration::from_secs(2))
            .expect("connects");
        c.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        c
    })
}

fn echo(c: &mut TcpStream) {
    c.write_all(b"ping\n").expect("write");
    let mut line = String::new();
    BufReader::new(c.try_clone().unwrap()).read_line(&mut line).expect("answer");
    assert_eq!(line, "ping\n");
}

/// The control socket of this lab, served on a path of its own.
struct Socket {
    path: PathBuf,
    server: Option<api::Server>,
}

impl Socket {
    fn new(lab: &Lab, tag: &str) -> Socket {
        let shared = std::sync::Arc::clone(lab.runtime().shared());
        let path = std::env::temp_dir().join(format!("hp-incident-{tag}-{}.sock", std::process::id()));
        let server = api::serve(&path, std::sync::Arc::new(move |r| shared.handle(r))).expect("serves");
        Socket { path, server: Some(server) }
    }

    fn call(&self, req: &Request) -> Response {
        api::call(&self.path, req).expect("the gateway answers")
    }

    fn total(&self, env: Ipv4Addr) -> usize {
        match self.call(&Request::Sessions { eni: None, env: Some(env), limit: None }) {
            Response::Sessions(s) => s.total,
            r => panic!("sessions: {r:?}"),
        }
    }

    fn flush(&self, req: Request) -> u64 {
        match self.call(&req) {
            Response::Flushed(r) => r.removed,
            r => panic!("flush: {r:?}"),
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
    }
}

fn flush(env: Option<Ipv4Addr>, eni: Option<u32>, proto: Option<&str>, dport: Option<u16>) -> Request {
    Request::Flush { env, eni, proto: proto.map(str::to_string), dst: None, dport, sport: None }
}

fn flushed_counter(lab: &Lab) -> u64 {
    lab.gateway().counters().iter().map(|c| c.sessions_flushed.get()).sum()
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn flush_and_delete_remove_the_sessions_they_name_and_count_them() {
    netlab::require_root();
    let lab = Lab::build(&Options { envs: 2, workers: 2, ..Options::default() }).expect("lab");
    servers(&lab);
    let sock = Socket::new(&lab, "flush");
    let (e0, e1) = (netlab::env_addr(0), netlab::env_addr(1));
    let mut keep: Vec<TcpStream> = (0..3).map(|_| connect(&lab, 0, PORTS[0])).collect();
    keep.push(connect(&lab, 0, PORTS[1]));
    let mut gone: Vec<TcpStream> = (0..2).map(|_| connect(&lab, 1, PORTS[0])).collect();
    for c in keep.iter_mut().chain(gone.iter_mut()) {
        echo(c);
    }
    let (n0, n1) = (sock.total(e0), sock.total(e1));
    assert!(n0 >= 4 && n1 >= 2, "sessions before: {n0} {n1}");

    // Bad filters: an error naming the field, nothing removed.
    for (req, field) in [(flush(None, None, Some("sctp"), None), "proto"), (flush(None, Some(999), None, None), "eni")]
    {
        match sock.call(&req) {
            Response::Error { message } => assert!(message.starts_with(field), "{message}"),
            r => panic!("{req:?} must be refused: {r:?}"),
        }
    }
    assert_eq!((sock.total(e0), sock.total(e1)), (n0, n1));
    assert_eq!(flushed_counter(&lab), 0);

    // flush --env: exactly that environment's sessions, counted.
    assert_eq!(sock.flush(flush(Some(e1), None, None, None)), n1 as u64);
    assert_eq!((sock.total(e0), sock.total(e1)), (n0, 0));
    assert_eq!(flushed_counter(&lab), n1 as u64);

    // sessions --delete --env --dport: the one connection to that port.
    assert_eq!(sock.flush(flush(Some(e0), None, Some("tcp"), Some(PORTS[1]))), 1);
    assert_eq!(sock.total(e0), n0 - 1);
    // The other connections of the environment still work.
    for c in &mut keep[..3] {
        echo(c);
    }
    // A new connection makes a new session.
    let mut fresh = connect(&lab, 1, PORTS[0]);
    echo(&mut fresh);
    assert!(sock.total(e1) >= 1);

    // flush --eni: everything on the shared ENI.
    let Response::Status(st) = sock.call(&Request::Status) else { panic!("status") };
    let before = sock.total(e0) + sock.total(e1);
    assert_eq!(sock.flush(flush(None, Some(st.enis[0].id), None, None)), before as u64);
    assert_eq!(sock.total(e0) + sock.total(e1), 0);
    assert_eq!(flushed_counter(&lab), n1 as u64 + 1 + before as u64);
    let Response::Stats(stats) = sock.call(&Request::Stats) else { panic!("stats") };
    assert_eq!(stats.sessions.values().sum::<u64>(), 0, "{:?}", stats.sessions);
    assert_eq!(stats.sessions_flushed, flushed_counter(&lab), "stats report the flushed sessions");
}

/// `tcpdump -r FILE -n` lines (one per frame), or a panic with its stderr.
fn tcpdump(file: &Path) -> Vec<String> {
    let out = std::process::Command::new("tcpdump")
        .args(["-r", &file.display().to_string(), "-n", "-nn"])
        .output()
        .expect("tcpdump runs (apt-get install tcpdump)");
    assert!(out.status.success(), "tcpdump -r: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// Captures `port` while environment 0 opens a connection and echoes a
/// line; returns the report and what tcpdump reads from the file.
fn capture_during_traffic(lab: &Lab, sock: &Socket, port: &str, file: &Path) -> (api::CaptureReport, Vec<String>) {
    let path = sock.path.clone();
    let req = Request::Capture { port: port.into(), out: file.to_path_buf(), count: Some(12), seconds: Some(5.0) };
    let t = std::thread::spawn(move || api::call(&path, &req).expect("the gateway answers"));
    let t0 = std::time::Instant::now();
    while !lab.gateway().capture().running() {
        assert!(t0.elapsed() < Duration::from_secs(5), "the capture starts");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    let mut c = connect(lab, 0, PORTS[0]);
    // Enough frames to fill the count even with the link's own chatter
    // (ARP, an IPv6 listener report) among them.
    for _ in 0..4 {
        echo(&mut c);
    }
    let r = match t.join().expect("capture thread") {
        Response::Captured(r) => r,
        r => panic!("capture: {r:?}"),
    };
    let lines = tcpdump(file);
    (r, lines)
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn capture_writes_a_pcap_with_translated_addresses_outside_and_originals_inside() {
    netlab::require_root();
    let lab = Lab::build(&Options { envs: 1, ..Options::default() }).expect("lab");
    servers(&lab);
    let sock = Socket::new(&lab, "capture");
    let dir = std::env::temp_dir().join(format!("hp-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let env = netlab::env_addr(0).to_string();
    let eni = lab.eni.to_string();

    // The outside: the ENI address, never the environment's.
    let (r, lines) = capture_during_traffic(&lab, &sock, &lab.outside, &dir.join("outside.pcap"));
    assert_eq!(r.frames, 12, "count bounds it: {r:?}");
    assert_eq!(lines.len() as u64, r.frames, "{lines:#?}");
    let ip: Vec<&String> = lines.iter().filter(|l| l.contains(" IP ")).collect();
    assert!(ip.len() >= 8, "{lines:#?}");
    assert!(ip.iter().all(|l| l.contains(&format!("{eni}.")) && !l.contains(&env)), "{lines:#?}");
    assert!(ip.iter().any(|l| l.contains(&format!("{SERVER}.{}", PORTS[0]))), "{lines:#?}");

    // The attachment: the environment's address, never the ENI's.
    let (r, lines) = capture_during_traffic(&lab, &sock, &lab.taps[0], &dir.join("inside.pcap"));
    assert_eq!(lines.len() as u64, r.frames);
    let ip: Vec<&String> = lines.iter().filter(|l| l.contains(" IP ")).collect();
    assert!(ip.len() >= 8, "{lines:#?}");
    assert!(ip.iter().all(|l| l.contains(&format!("{env}.")) && !l.contains(&eni)), "{lines:#?}");

    // Time bounds it too: nothing flows, it ends after its seconds.
    let file = dir.join("quiet.pcap");
    let req = Request::Capture { port: lab.outside.clone(), out: file.clone(), count: Some(1000), seconds: Some(0.5) };
    let t0 = std::time::Instant::now();
    let Response::Captured(r) = sock.call(&req) else { panic!("capture") };
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(tcpdump(&file).len() as u64, r.frames);

    // Bad requests name the field.
    for (req, field) in [
        (Request::Capture { port: "nope".into(), out: file.clone(), count: None, seconds: None }, "port"),
        (Request::Capture { port: lab.outside.clone(), out: "rel.pcap".into(), count: None, seconds: None }, "out"),
        (Request::Capture { port: lab.outside.clone(), out: file.clone(), count: Some(0), seconds: None }, "count"),
        (Request::Capture { port: lab.outside.clone(), out: file.clone(), count: None, seconds: Some(1e9) }, "seconds"),
    ] {
        match sock.call(&req) {
            Response::Error { message } => assert!(message.starts_with(field), "{message}"),
            r => panic!("{req:?} must be refused: {r:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
