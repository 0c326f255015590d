//! The churn server: listeners on a range of ports, every connection
//! accepted, drained and counted by how it ended and by its peer address.

use super::*;
use control::threads::StopGroup;

/// Where and how the server listens.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    /// The address to listen on (default [`SERVER`]).
    pub addr: Ipv4Addr,
    /// The first port (default [`DEFAULT_BASE_PORT`]).
    pub base_port: u16,
    /// How many consecutive ports (default [`DEFAULT_PORTS`]).
    pub ports: u16,
    /// Epoll threads (default 4), each owning every `threads`-th port.
    pub threads: usize,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig { addr: SERVER, base_port: DEFAULT_BASE_PORT, ports: DEFAULT_PORTS, threads: 4 }
    }
}

/// What the server saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServerReport {
    /// Connections accepted.
    pub accepted: u64,
    /// Accepted connections by the peer address the server saw (through a NAT: its outside address).
    pub peers: BTreeMap<Ipv4Addr, u64>,
    /// Connections that ended with the client's FIN (end of stream).
    pub fin: u64,
    /// Connections that ended with an error on read (the client's RST).
    pub reset: u64,
    /// Connections dropped after [`SERVER_IDLE`] without either, or still open at the stop.
    pub abandoned: u64,
}

impl ServerReport {
    /// Accepted connections whose peer address was not `addr`.
    pub fn not_from(&self, addr: Ipv4Addr) -> u64 {
        self.peers.iter().filter(|(a, _)| **a != addr).map(|(_, n)| n).sum()
    }
}

#[derive(Default)]
struct ServerShared {
    accepted: AtomicU64,
    fin: AtomicU64,
    reset: AtomicU64,
    abandoned: AtomicU64,
    peers: Mutex<BTreeMap<Ipv4Addr, u64>>,
}

/// A running churn server; [`ChurnServer::stop`] (or drop) ends it.
pub struct ChurnServer {
    cfg: ServerConfig,
    shared: Arc<ServerShared>,
    threads: StopGroup,
}

impl ChurnServer {
    /// Binds `cfg.ports` listeners on `cfg.addr` inside `ns`, deepens their queues and starts the threads.
    pub fn start(ns: &Netns, cfg: ServerConfig) -> Result<ChurnServer, ChurnError> {
        if cfg.ports == 0 || cfg.threads == 0 {
            return Err(ChurnError::Invalid("the server needs at least one port and one thread".into()));
        }
        if u32::from(cfg.base_port) + u32::from(cfg.ports) - 1 > u32::from(u16::MAX) || cfg.base_port == 0 {
            return Err(ChurnError::Invalid(format!("ports {}+{} leave 1..=65535", cfg.base_port, cfg.ports)));
        }
        for (key, value) in [("net.core.somaxconn", "65535"), ("net.ipv4.tcp_max_syn_backlog", "65535")] {
            if let Err(e) = ns.sysctl(key, value) {
                tracing::warn!(key, error = %e, "churn server: cannot deepen the accept queue");
            }
        }
        let (addr, base, n) = (cfg.addr, cfg.base_port, cfg.ports);
        let bound: Vec<io::Result<TcpListener>> =
            ns.run(move || (0..n).map(|i| TcpListener::bind(SocketAddrV4::new(addr, base + i))).collect());
        let mut listeners = Vec::with_capacity(bound.len());
        for (i, l) in bound.into_iter().enumerate() {
            let port = usize::from(base) + i;
            let l = l.map_err(|e| io_err(format!("bind tcp {addr}:{port} in {}", ns.name()), e))?;
            // std listens with a backlog of 128; at tens of thousands of connections per second that overflows
            // (SYNs dropped: a 1 s retransmission on the client). listen(2) again only resizes the queues.
            rustix::net::listen(&l, ACCEPT_BACKLOG)
                .map_err(|e| io_err(format!("listen backlog on port {port}"), e.into()))?;
            l.set_nonblocking(true).map_err(|e| io_err("listener non-blocking", e))?;
            listeners.push(l);
        }
        let threads_n = cfg.threads.min(listeners.len());
        let mut per_thread: Vec<Vec<TcpListener>> = (0..threads_n).map(|_| Vec::new()).collect();
        for (i, l) in listeners.into_iter().enumerate() {
            per_thread[i % threads_n].push(l);
        }
        let shared = Arc::new(ServerShared::default());
        let mut server = ChurnServer { cfg, shared: Arc::clone(&shared), threads: StopGroup::new() };
        let stop = server.threads.flag();
        for (i, ls) in per_thread.into_iter().enumerate() {
            let poller = Poller::new().map_err(|e| io_err("epoll_create1", e))?;
            for (j, l) in ls.iter().enumerate() {
                poller.add(l, LISTENER | j as u64).map_err(|e| io_err("epoll add listener", e))?;
            }
            let (stop, shared) = (Arc::clone(&stop), Arc::clone(&shared));
            let t = std::thread::Builder::new()
                .name(format!("churn-srv{i}"))
                .spawn(move || serve(&poller, &ls, &stop, &shared))
                .map_err(|e| io_err("spawn a churn server thread", e))?;
            // Pushed one by one, so that an error here still stops (Drop) the threads already started.
            server.threads.push(t);
        }
        Ok(server)
    }

    /// Its configuration.
    pub fn config(&self) -> ServerConfig {
        self.cfg
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Stops the threads (open connections are dropped and counted as abandoned) and reports.
    pub fn stop(mut self) -> ServerReport {
        self.threads.halt();
        let s = &self.shared;
        ServerReport {
            accepted: s.accepted.load(Ordering::Relaxed),
            peers: s.peers.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            fin: s.fin.load(Ordering::Relaxed),
            reset: s.reset.load(Ordering::Relaxed),
            abandoned: s.abandoned.load(Ordering::Relaxed),
        }
    }
}

/// One server thread: accepts on its listeners, reads every connection to its end, drops it.
fn serve(poller: &Poller, listeners: &[TcpListener], stop: &AtomicBool, shared: &ServerShared) {
    let mut events = Events::with_capacity(256);
    let mut ready: Vec<u64> = Vec::with_capacity(256);
    let mut open: HashMap<u64, (TcpStream, Instant)> = HashMap::new();
    let mut peers: BTreeMap<Ipv4Addr, u64> = BTreeMap::new();
    let mut next = 0u64;
    let mut last_sweep = Instant::now();
    let mut buf = [0u8; 512];
    let publish = |peers: &mut BTreeMap<Ipv4Addr, u64>| {
        let mut all = shared.peers.lock().unwrap_or_else(|e| e.into_inner());
        for (a, n) in std::mem::take(peers) {
            *all.entry(a).or_default() += n;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        if poller.wait(&mut events, Some(Duration::from_millis(50))).is_err() {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        ready.clear();
        ready.extend(events.tokens());
        for &t in &ready {
            if t & LISTENER != 0 {
                let Some(l) = usize::try_from(t & !LISTENER).ok().and_then(|j| listeners.get(j)) else { continue };
                for _ in 0..ACCEPT_BATCH {
                    match l.accept() {
                        Ok((s, peer)) => {
                            shared.accepted.fetch_add(1, Ordering::Relaxed);
                            if let SocketAddr::V4(p) = peer {
                                *peers.entry(*p.ip()).or_default() += 1;
                            }
                            // The client's RST or FIN usually follows its handshake ACK at once, so it is
                            // often here already: then the connection ends without entering the epoll set.
                            if let Some(counter) = drain(&s, &mut buf, shared) {
                                counter.fetch_add(1, Ordering::Relaxed);
                            } else if poller.add(&s, next).is_ok() {
                                open.insert(next, (s, Instant::now()));
                                next += 1;
                            } else {
                                shared.abandoned.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // WouldBlock: the queue is empty; anything else (EMFILE, ...): try again next wake-up.
                        Err(_) => break,
                    }
                }
                continue;
            }
            let Some((s, _)) = open.get(&t) else { continue };
            if let Some(counter) = drain(s, &mut buf, shared) {
                counter.fetch_add(1, Ordering::Relaxed);
                // Dropping the stream closes it (after a FIN: the server's FIN) and takes it out of the epoll set.
                open.remove(&t);
            }
        }
        if last_sweep.elapsed() >= Duration::from_millis(500) {
            last_sweep = Instant::now();
            let before = open.len();
            open.retain(|_, (_, at)| at.elapsed() < SERVER_IDLE);
            shared.abandoned.fetch_add((before - open.len()) as u64, Ordering::Relaxed);
            publish(&mut peers);
        }
    }
    shared.abandoned.fetch_add(open.len() as u64, Ordering::Relaxed);
    publish(&mut peers);
}

/// Reads what the connection has without blocking: `Some(counter)` once it has ended (end of stream: the FIN
/// counter; an error: the reset counter), `None` while it is still open.
fn drain<'a>(s: &TcpStream, buf: &mut [u8], shared: &'a ServerShared) -> Option<&'a AtomicU64> {
    loop {
        match recv_nonblocking(s, buf) {
            Ok(0) => return Some(&shared.fin),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Some(&shared.reset),
        }
    }
}

/// `recv(MSG_DONTWAIT)`: a non-blocking read of a blocking socket (one system call per accepted connection fewer
/// than making it non-blocking first).
fn recv_nonblocking(s: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let (n, _) = rustix::net::recv(s, buf, rustix::net::RecvFlags::DONTWAIT)?;
    Ok(n)
}
