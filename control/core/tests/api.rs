//! The runtime API: JSON shapes, the control socket (framing, errors,
//! permissions, lifecycle) and the metrics endpoint.

mod reports;

use control::api::{self, call, serve, ApiError, ApplyReport, Client, Request, Response};
use control::metrics::{render, serve_metrics};
use reports::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A fresh directory under /tmp with mode 0755 (traversable by anyone, so
/// an unprivileged child can reach the socket and only the socket's own
/// mode decides).
/// The first line of a root-only test here (ignored unless built as root, see
/// `dataplane/io/build.rs`): fails loudly if run without root.
fn require_root() {
    assert!(rustix::process::geteuid().is_root(), "needs root");
}

fn tmpdir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = PathBuf::from(format!("/tmp/hp-api-{}-{}-{name}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Answers every request with a fixed report; `Apply` with "boom" panics.
fn handler() -> api::Handler {
    Arc::new(|req| match req {
        Request::Status => Response::Status(status_report()),
        Request::Stats => Response::Stats(stats_report()),
        Request::Sessions { limit, .. } => {
            let mut r = sessions_report();
            r.sessions.truncate(limit.unwrap_or(usize::MAX));
            Response::Sessions(r)
        }
        Request::Apply { config } if config == "boom" => panic!("test handler panics on purpose"),
        Request::Apply { .. } => Response::Applied(apply_report()),
        Request::Flush { .. } => Response::Flushed(api::FlushReport { removed: 3 }),
        Request::Capture { out, .. } => {
            Response::Captured(api::CaptureReport { out, frames: 10, dropped: 1, seconds: 0.5 })
        }
    })
}

// --- JSON -------------------------------------------------------------------

#[test]
fn every_request_and_response_round_trips_through_json() {
    let reqs = [
        Request::Status,
        Request::Stats,
        Request::Sessions { eni: Some(1), env: Some(Ipv4Addr::new(172, 16, 0, 2)), limit: Some(10) },
        Request::Sessions { eni: None, env: None, limit: None },
        Request::Apply { config: "[gateway]\nname = \"x\"\n".into() },
        Request::Flush {
            env: Some(Ipv4Addr::new(172, 16, 0, 2)),
            eni: None,
            proto: Some("udp".into()),
            dst: None,
            dport: Some(53),
            sport: None,
        },
        Request::Capture { port: "hp-out".into(), out: "/tmp/x.pcap".into(), count: Some(5), seconds: None },
    ];
    for r in reqs {
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains('\n'), "one line: {text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r, "{text}");
    }
    let resps = [
        Response::Status(status_report()),
        Response::Sessions(sessions_report()),
        Response::Stats(stats_report()),
        Response::Applied(apply_report()),
        Response::Flushed(api::FlushReport { removed: 7 }),
        Response::Captured(api::CaptureReport { out: "/tmp/x.pcap".into(), frames: 3, dropped: 0, seconds: 1.5 }),
        Response::Error { message: "nope".into() },
    ];
    for r in resps {
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains('\n'), "one line: {text}");
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), r, "{text}");
    }
}

#[test]
fn the_json_of_requests_is_pinned() {
    let r = Request::Sessions { eni: Some(1), env: None, limit: None };
    assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"cmd":"sessions","eni":1,"env":null,"limit":null}"#);
    assert_eq!(serde_json::to_string(&Request::Status).unwrap(), r#"{"cmd":"status"}"#);
    assert_eq!(
        serde_json::to_string(&Request::Apply { config: "x".into() }).unwrap(),
        r#"{"cmd":"apply","config":"x"}"#
    );
    // Options may be left out; unknown fields of sessions and apply are refused.
    assert_eq!(serde_json::from_str::<Request>(r#"{"cmd":"sessions","eni":1}"#).unwrap(), r);
    assert!(serde_json::from_str::<Request>(r#"{"cmd":"sessions","enii":1}"#).is_err());
    // A typo in a flush filter must not flush everything.
    assert!(serde_json::from_str::<Request>(r#"{"cmd":"flush","evn":"172.16.0.2"}"#).is_err());
    assert_eq!(
        serde_json::from_str::<Request>(r#"{"cmd":"flush"}"#).unwrap(),
        Request::Flush { env: None, eni: None, proto: None, dst: None, dport: None, sport: None }
    );
    // (serde ignores extra fields on the field-less commands.)
    assert_eq!(serde_json::from_str::<Request>(r#"{"cmd":"status","x":1}"#).unwrap(), Request::Status);
    let e = Response::Error { message: "m".into() };
    assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"kind":"error","message":"m"}"#);
    let a = serde_json::to_string(&Response::Applied(ApplyReport { changes: vec![] })).unwrap();
    assert_eq!(a, r#"{"kind":"applied","changes":[]}"#);
}

// --- the socket -------------------------------------------------------------

fn send_line(w: &mut UnixStream, r: &mut BufReader<UnixStream>, line: &str) -> Response {
    w.write_all(line.as_bytes()).unwrap();
    w.write_all(b"\n").unwrap();
    let mut resp = String::new();
    r.read_line(&mut resp).unwrap();
    serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{e}: {resp:?}"))
}

#[test]
fn the_server_answers_several_requests_on_one_connection() {
    let dir = tmpdir("serve");
    let path = dir.join("api.sock");
    let server = serve(&path, handler()).unwrap();
    assert_eq!(call(&path, &Request::Status).unwrap(), Response::Status(status_report()));

    let mut c = Client::connect(&path).unwrap();
    assert_eq!(c.call(&Request::Stats).unwrap(), Response::Stats(stats_report()));
    assert_eq!(c.call(&Request::Apply { config: "x".into() }).unwrap(), Response::Applied(apply_report()));
    match c.call(&Request::Sessions { eni: None, env: None, limit: Some(1) }).unwrap() {
        Response::Sessions(r) => assert_eq!((r.sessions.len(), r.total), (1, 5)),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.call(&Request::Status).unwrap(), Response::Status(status_report()));
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_malformed_line_gets_an_error_and_the_connection_keeps_working() {
    let dir = tmpdir("malformed");
    let path = dir.join("api.sock");
    let _server = serve(&path, handler()).unwrap();
    let mut w = UnixStream::connect(&path).unwrap();
    let mut r = BufReader::new(w.try_clone().unwrap());
    for bad in ["not json", r#"{"cmd":"frobnicate"}"#, r#"{"cmd":"sessions","eni":"one"}"#, "[1,2", "\u{fffd}\u{0}"] {
        match send_line(&mut w, &mut r, bad) {
            Response::Error { message } => assert!(message.starts_with("bad request"), "{message}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    // Invalid UTF-8 too.
    w.write_all(b"\xff\xfe{\n").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains(r#""kind":"error""#), "{line}");
    // A panicking handler is an error response, not a dead server.
    match send_line(&mut w, &mut r, r#"{"cmd":"apply","config":"boom"}"#) {
        Response::Error { message } => assert!(message.contains("panicked"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Blank lines are skipped; the next request is answered.
    w.write_all(b"\n\n").unwrap();
    assert_eq!(send_line(&mut w, &mut r, r#"{"cmd":"status"}"#), Response::Status(status_report()));
    assert_eq!(call(&path, &Request::Stats).unwrap(), Response::Stats(stats_report()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_request_over_4_mib_is_refused_and_the_server_keeps_serving() {
    let dir = tmpdir("large");
    let path = dir.join("api.sock");
    let _server = serve(&path, handler()).unwrap();
    // The client refuses to send it.
    let big = Request::Apply { config: "x".repeat(api::MAX_REQUEST_BYTES) };
    assert!(matches!(call(&path, &big), Err(ApiError::TooLarge { .. })));
    // The server refuses a raw one.
    let w = UnixStream::connect(&path).unwrap();
    let mut r = BufReader::new(w.try_clone().unwrap());
    let writer = std::thread::spawn(move || {
        let mut w = w;
        let mut line = vec![b'x'; api::MAX_REQUEST_BYTES + 100];
        line.push(b'\n');
        let _ = w.write_all(&line); // the server may close before all of it is read
    });
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let resp: Response = serde_json::from_str(&line).unwrap();
    assert!(matches!(&resp, Response::Error { message } if message.contains("4 MiB")), "{resp:?}");
    writer.join().unwrap();
    // A request of exactly the limit is read (and is bad JSON).
    let mut w = UnixStream::connect(&path).unwrap();
    let mut r = BufReader::new(w.try_clone().unwrap());
    let resp = send_line(&mut w, &mut r, &"y".repeat(api::MAX_REQUEST_BYTES));
    assert!(matches!(&resp, Response::Error { message } if message.starts_with("bad request")), "{resp:?}");
    assert_eq!(call(&path, &Request::Status).unwrap(), Response::Status(status_report()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_socket_is_0600_and_stop_removes_it() {
    let dir = tmpdir("mode");
    let path = dir.join("api.sock");
    let server = serve(&path, handler()).unwrap();
    let md = std::fs::metadata(&path).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    assert_eq!(server.path(), path);
    server.stop();
    assert!(!path.exists(), "stop removes the socket file");
    assert!(matches!(call(&path, &Request::Status), Err(ApiError::NoSocket { .. })));
    // Drop does the same.
    let server = serve(&path, handler()).unwrap();
    drop(server);
    assert!(!path.exists(), "drop removes the socket file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stop_closes_open_connections() {
    let dir = tmpdir("stopconn");
    let path = dir.join("api.sock");
    let server = serve(&path, handler()).unwrap();
    let mut c = Client::connect(&path).unwrap();
    assert!(c.call(&Request::Status).is_ok());
    let t = std::time::Instant::now();
    server.stop();
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "stop waited {:?}", t.elapsed());
    assert!(c.call(&Request::Status).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_live_path_is_in_use_a_stale_one_is_reclaimed_anything_else_is_left_alone() {
    let dir = tmpdir("inuse");
    let path = dir.join("api.sock");
    let first = serve(&path, handler()).unwrap();
    let err = serve(&path, handler()).unwrap_err();
    assert!(matches!(err, ApiError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains("already in use"), "{err}");
    // The failed attempt did not disturb the first server.
    assert_eq!(call(&path, &Request::Status).unwrap(), Response::Status(status_report()));
    drop(first);

    // A stale socket file: bound, then its listener gone.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    assert!(matches!(call(&path, &Request::Status), Err(ApiError::NotListening { .. })));
    let server = serve(&path, handler()).unwrap();
    assert_eq!(call(&path, &Request::Stats).unwrap(), Response::Stats(stats_report()));
    drop(server);

    // A regular file is not removed.
    std::fs::write(&path, "precious").unwrap();
    let err = serve(&path, handler()).unwrap_err();
    assert!(matches!(err, ApiError::NotASocket { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn client_errors_say_what_to_do() {
    let dir = tmpdir("client");
    let err = call(&dir.join("nothing.sock"), &Request::Status).unwrap_err();
    assert!(err.to_string().contains("is the gateway running?"), "{err}");
    assert!(err.to_string().contains("nothing.sock"), "{err}");
    let denied = ApiError::PermissionDenied { path: "/run/hyperplane.sock".into() };
    assert!(denied.to_string().contains("0600: run as its owner (root)"), "{denied}");
    // A server that answers garbage is a protocol error.
    let path = dir.join("garbage.sock");
    let l = UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap()).read_line(&mut line).unwrap();
        s.write_all(b"hello\n").unwrap();
    });
    let err = call(&path, &Request::Status).unwrap_err();
    assert!(matches!(err, ApiError::Protocol(_)), "{err:?}");
    t.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Absolute path of a python3 that an unprivileged user can run (the one
/// on PATH may live under /root, e.g. pyenv shims).
fn python_for_nobody() -> Option<PathBuf> {
    ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"].iter().map(PathBuf::from).find(|p| {
        p.exists()
            && Command::new(p)
                .args(["-c", "pass"])
                .uid(65534)
                .gid(65534)
                .current_dir("/")
                .output()
                .is_ok_and(|o| o.status.success())
    })
}

/// Runs a python connect to `path` as uid/gid 65534 (no supplementary
/// groups: std drops them when root sets a uid); (success, stderr).
fn connect_as_nobody(python: &Path, path: &Path) -> (bool, String) {
    let out = Command::new(python)
        .args(["-c", "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])"])
        .arg(path)
        .uid(65534)
        .gid(65534)
        .current_dir("/")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn a_client_that_is_not_the_owner_is_refused() {
    require_root();
    let Some(python) = python_for_nobody() else {
        eprintln!("skipping: no python3 that uid 65534 can run");
        return;
    };
    let dir = tmpdir("perm");
    let path = dir.join("api.sock");
    let _server = serve(&path, handler()).unwrap();
    // Control: with the socket opened up, the same child connects, so the
    // refusal below is the socket's mode and nothing else (e.g. the path).
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, err) = connect_as_nobody(&python, &path);
    assert!(ok, "uid 65534 should connect to a 0666 socket: {err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, err) = connect_as_nobody(&python, &path);
    assert!(!ok, "uid 65534 connected to a 0600 socket");
    assert!(err.contains("PermissionError") && err.contains("Permission denied"), "{err}");
    // The owner still can.
    assert_eq!(call(&path, &Request::Status).unwrap(), Response::Status(status_report()));
    let _ = std::fs::remove_dir_all(&dir);
}

// --- metrics ----------------------------------------------------------------

#[test]
fn metrics_render_in_the_text_exposition_format() {
    let m = render(&stats_report());
    for want in [
        "# TYPE hyperplane_rx_frames_total counter",
        "hyperplane_rx_frames_total 1000",
        "hyperplane_packets_total{direction=\"outbound\"} 600",
        "hyperplane_packets_total{direction=\"inbound\"} 390",
        "hyperplane_bytes_total{direction=\"outbound\"} 60000",
        "hyperplane_hairpinned_total 2",
        "# TYPE hyperplane_sessions gauge",
        "hyperplane_sessions{proto=\"tcp\"} 3",
        "hyperplane_sessions_created_total{proto=\"udp\"} 5",
        "hyperplane_sessions_expired_total{proto=\"icmp\"} 2",
        "hyperplane_drops_total{reason=\"no_session\"} 3",
        "hyperplane_drops_total{reason=\"port_exhausted\"} 0",
        "hyperplane_drops_total{reason=\"bad \\\"label\\\"\"} 1",
        "hyperplane_port_use{addr=\"10.0.0.4\",proto=\"tcp\"} 3",
        "hyperplane_port_use{addr=\"10.0.0.4\",proto=\"icmp\"} 0",
        "hyperplane_port_capacity{addr=\"10.0.0.4\"} 64512",
        "hyperplane_eni_setup_seconds{eni=\"1\"} 0.4125",
        "# TYPE hyperplane_workers gauge",
        "hyperplane_workers 4",
        "hyperplane_sessions_table{state=\"live\"} 5",
        "hyperplane_sessions_table{state=\"recyclable\"} 40",
        "hyperplane_sessions_table{state=\"capacity\"} 262144",
        "hyperplane_sessions_recycled_total 1200",
        "hyperplane_sessions_evicted_total 3",
        "hyperplane_sessions_reopened_total 7",
        "hyperplane_sessions_flushed_total 2",
        "hyperplane_port_recyclable{addr=\"10.0.0.4\",proto=\"tcp\"} 40",
        "hyperplane_port_cooling{addr=\"10.0.0.4\",proto=\"tcp\"} 25",
        "hyperplane_port_quarantined{addr=\"10.0.0.4\",proto=\"udp\"} 2",
        "hyperplane_eni_addresses{eni=\"1\",limit=\"in_use\"} 2",
        "hyperplane_eni_addresses{eni=\"1\",limit=\"max\"} 16",
        "hyperplane_syscalls_total{kind=\"io_uring_enter\"} 495",
        "hyperplane_syscalls_total{kind=\"read\"} 0",
        "hyperplane_syscalls_per_packet 0.505",
        "hyperplane_io_backend{backend=\"uring\"} 1",
        "hyperplane_vhost_user_total{attachment=\"vm0\",counter=\"malformed_chains\"} 1",
        "hyperplane_vhost_user_total{attachment=\"vm0\",counter=\"guest_tx_frames\"} 12",
    ] {
        assert!(m.lines().any(|l| l == want), "missing line {want:?} in\n{m}");
    }
    // Every family: HELP, TYPE, then at least one sample of that name.
    let lines: Vec<&str> = m.lines().collect();
    let mut families = 0;
    for (i, l) in lines.iter().enumerate() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            families += 1;
            let name = rest.split(' ').next().unwrap();
            assert!(lines[i - 1].starts_with(&format!("# HELP {name} ")), "HELP before {l}");
            let next = lines.get(i + 1).copied().unwrap_or("");
            assert!(
                next.starts_with(&format!("{name} ")) || next.starts_with(&format!("{name}{{")),
                "no sample after {l}: {next:?}"
            );
        } else if !l.starts_with('#') {
            let value = l.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad value in {l:?}");
        }
    }
    assert_eq!(families, 25, "{m}");
    assert!(m.ends_with('\n'));
}

fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn the_metrics_server_answers_get_metrics_and_404_otherwise() {
    let calls = Arc::new(AtomicUsize::new(0));
    let source = {
        let calls = calls.clone();
        Arc::new(move || {
            calls.fetch_add(1, Ordering::Relaxed);
            stats_report()
        })
    };
    let server = serve_metrics("127.0.0.1:0".parse().unwrap(), source).unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let ok = http(addr, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.contains("Content-Type: text/plain; version=0.0.4"), "{ok}");
    let (head, body) = ok.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
    assert_eq!(body, render(&stats_report()));
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    for bad in
        ["GET / HTTP/1.1\r\n\r\n", "POST /metrics HTTP/1.1\r\n\r\n", "GET /metricsx HTTP/1.1\r\n\r\n", "junk\r\n\r\n"]
    {
        let r = http(addr, bad);
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{bad:?}: {r}");
    }
    // A client that connects and says nothing does not block the others.
    let _idle = TcpStream::connect(addr).unwrap();
    assert!(http(addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200 OK"));
    drop(server);
    assert!(TcpStream::connect(addr).is_err(), "stopped on drop");
}

#[test]
fn metrics_are_refused_on_a_non_loopback_address() {
    for a in ["0.0.0.0:0", "10.0.0.1:9100", "[::]:0"] {
        let err = serve_metrics(a.parse().unwrap(), Arc::new(stats_report)).unwrap_err();
        assert!(matches!(err, ApiError::NotLoopback { .. }), "{a}: {err:?}");
        assert!(err.to_string().contains("loopback only"), "{err}");
    }
}

/// Issue 12 item 10: a metrics client trickling its request a byte a
/// second (each read well inside a per-read timeout) is cut off at the
/// connection's total deadline.
#[test]
fn a_trickling_metrics_client_is_cut_off_at_the_deadline() {
    use control::metrics::HTTP_TIMEOUT;
    let server = serve_metrics("127.0.0.1:0".parse().unwrap(), Arc::new(stats_report)).unwrap();
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    let start = std::time::Instant::now();
    let limit = HTTP_TIMEOUT + std::time::Duration::from_secs(3);
    let mut closed = false;
    while start.elapsed() < limit {
        if s.write_all(b"G").is_err() {
            closed = true;
            break;
        }
        s.set_read_timeout(Some(std::time::Duration::from_secs(1))).unwrap();
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(_) => {
                closed = true;
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "still open after {:?}", start.elapsed());
    assert!(start.elapsed() < HTTP_TIMEOUT + std::time::Duration::from_secs(2), "{:?}", start.elapsed());
}

/// Issue 12 item 10: one local user cannot hold every metrics slot: past
/// `MAX_PER_PEER` idle connections, its next one is closed at once.
#[test]
fn one_peer_cannot_take_every_metrics_slot() {
    use control::metrics::MAX_PER_PEER;
    let server = serve_metrics("127.0.0.1:0".parse().unwrap(), Arc::new(stats_report)).unwrap();
    let addr = server.local_addr();
    let held: Vec<TcpStream> = (0..MAX_PER_PEER).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut extra = TcpStream::connect(addr).unwrap();
    extra.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
    let mut b = [0u8; 16];
    let r = extra.read(&mut b);
    assert!(matches!(r, Ok(0)) || r.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset), "{r:?}");
    drop(held);
    // Their slots come back once the server sees them closed.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(http(addr, "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 OK"));
}
