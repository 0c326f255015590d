//! What a run reports: rates, loss, latency, the responder's counts, the
//! gateway's figures, and the report assembled from them with its table.

use super::*;

/// Packets and bytes over the measured duration.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rate {
    /// Packets (frames offered; datagrams or connections delivered).
    pub packets: u64,
    /// Bytes (frame bytes offered; payload bytes delivered).
    pub bytes: u64,
    /// Packets per second.
    pub pps: f64,
    /// Bits per second.
    pub bps: f64,
}

/// Loss of offered UDP datagrams.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Loss {
    /// Datagrams sent that the responder did not receive.
    pub packets: u64,
    /// `packets / sent` (0 when nothing was sent).
    pub ratio: f64,
}

/// UDP figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UdpFigures {
    /// Datagrams the environments sent.
    pub sent: u64,
    /// Echoes the environments received (0 without `echo`).
    pub echoed: u64,
    /// `sent - echoed` when echoing (loss as the environments see it), else null.
    pub lost_by_echo: Option<u64>,
}

/// TCP bulk figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BulkFigures {
    /// Streams established.
    pub streams: u64,
    /// Streams whose close completed (FIN sent and acknowledged, the responder's FIN seen) within the grace period.
    pub closed_clean: u64,
    /// Bytes the environments queued.
    pub sent_bytes: u64,
    /// Bytes the responder read.
    pub delivered_bytes: u64,
    /// `delivered_bytes * 8 / duration / 1e9`.
    pub gbps: f64,
}

/// Latency summary, microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// Connect figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectFigures {
    /// Connections started (SYN sent).
    pub attempted: u64,
    /// Connections that reached ESTABLISHED.
    pub established: u64,
    /// Connections that got their response and closed.
    pub completed: u64,
    /// Connections that failed (`refused + timeout + reset`).
    pub failed: u64,
    /// Answered by RST in SYN-SENT.
    pub refused: u64,
    /// Not established within `connect_timeout` (or stalled later).
    pub timeout: u64,
    /// Reset after ESTABLISHED, before the response.
    pub reset: u64,
    /// `completed / duration`.
    pub per_s: f64,
    /// SYN sent → ESTABLISHED, µs.
    pub latency_us: Latency,
}

/// What the responder saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ResponderReport {
    /// UDP datagrams received.
    pub udp_packets: u64,
    /// UDP payload bytes received.
    pub udp_bytes: u64,
    /// Connections accepted on the connect port.
    pub tcp_accepted: u64,
    /// Responses written on the connect port.
    pub tcp_responded: u64,
    /// Streams accepted on the bulk port.
    pub bulk_streams: u64,
    /// Bytes read on the bulk port.
    pub bulk_bytes: u64,
    /// Distinct (source address, source port) pairs over UDP and TCP.
    pub distinct_sources: u64,
    /// Distinct source addresses over UDP and TCP.
    pub distinct_addresses: u64,
    /// The source addresses (at most 16 shown).
    pub addresses: Vec<Ipv4Addr>,
}

/// Our gateway's counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GatewayFigures {
    /// Live sessions at the end: TCP, UDP, ICMP.
    pub live_sessions: [u64; 3],
    /// Outbound packets during the run.
    pub outbound_packets: u64,
    /// Inbound packets during the run.
    pub inbound_packets: u64,
    /// Drops during the run, by reason (non-zero only).
    pub drops: BTreeMap<String, u64>,
    /// Ended or unanswered sessions recycled for new flows during the run.
    pub sessions_recycled: u64,
    /// ARP requests the gateway sent to resolve a VPC next hop during the run.
    pub arp_requests: u64,
    /// ARP requests for an ENI address the gateway answered during the run.
    pub arp_replies: u64,
}

/// The result of one run. Field docs are in the module doc.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadReport {
    /// Scenario name.
    pub scenario: String,
    /// `ours`, `kernel` or `external`.
    pub target: String,
    /// Environments.
    pub envs: usize,
    /// How long the offered load ran, s (less than asked for when stopped early); every rate is over this.
    pub duration_s: f64,
    /// How long the load was asked to run, s.
    pub requested_duration_s: f64,
    /// Stopped (signal or [`StopHandle`]) before the requested duration.
    pub stopped_early: bool,
    /// UDP payload, bytes.
    pub payload: usize,
    /// Target rate, if any.
    pub rate: Option<f64>,
    /// The `--config` file whose `[gateway]` settings our gateway ran with, if any.
    pub gateway_config: Option<String>,
    /// Frames the load generator wrote.
    pub offered: Rate,
    /// What the responder received; for unpaced `udp` without `--echo`, what the VPC counter counted (the
    /// datagrams are discarded there, see [`LoadReport::delivered_at_vpc`]). Bytes are UDP payload bytes.
    pub delivered: Rate,
    /// UDP loss.
    pub loss: Loss,
    /// UDP figures (udp, mixed).
    pub udp: Option<UdpFigures>,
    /// Bulk figures (tcp-bulk, mixed).
    pub tcp_bulk: Option<BulkFigures>,
    /// Connect figures (connect, mixed).
    pub connect: Option<ConnectFigures>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// The responder's counts.
    pub responder: ResponderReport,
    /// The address every environment should arrive from (null for an external NAT: see `responder.addresses`).
    pub eni: Option<Ipv4Addr>,
    /// Our gateway's counters (target ours).
    pub gateway: Option<GatewayFigures>,
    /// Width of a timeline bucket, ms (100, or 1000 for loads longer than 10 minutes).
    pub timeline_bucket_ms: u64,
    /// The whole run, bucket by bucket.
    pub timeline: Vec<Bucket>,
    /// The per-second `timeline.csv` written, if any.
    pub timeline_csv: Option<String>,
    /// SVG plots written.
    pub plots: Vec<String>,
    /// UDP to the server counted by the kernel at the VPC router's link from the NAT (an external NAT: on the
    /// `--outside` link) (an nftables netdev ingress counter; packets, whole-IPv4-packet bytes, over the run's
    /// duration), independent of the generator and the responder. `udp` and `mixed` only. With `--offer-only`
    /// (target `discard`): counted at the TAP's ingress and dropped there.
    pub vpc_counted: Option<Rate>,
    /// `--offer-only`: the writers (CPUs, pinned, frames each); else null.
    pub writers: Option<crate::offer::Writers>,
    /// Figures that measure the load generator rather than the NAT: offered no more than delivered (see
    /// [`crate::comparison::saturation_warnings`]); with a `rate`, expected (the offer is paced).
    pub warnings: Vec<String>,
    /// `--trafgen`: trafgen's one flow on the same link and counter, and how far this run's delivered figure is
    /// from trafgen's; else null.
    pub trafgen: Option<TrafgenCheck>,
    /// Delivered was counted (and discarded) at the VPC edge: the responder was not in the path
    /// ([`LoadReport::delivered_at_vpc`]).
    pub delivered_at_vpc_edge: bool,
}

/// The load generator's delivered figure beside trafgen's on the same target, link and counter.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct TrafgenCheck {
    /// trafgen's rates.
    #[serde(flatten)]
    pub rates: crate::trafgen::TrafgenRates,
    /// `|delivered − trafgen's delivered| / trafgen's delivered` (0.1: 10% apart); `None` when trafgen delivered
    /// nothing (it stopped or did not send), so there is nothing to compare with.
    pub apart: Option<f64>,
}

/// What the environments' side measured.
#[derive(Debug, Default)]
pub(crate) struct Measured {
    /// How long the offered load ran (up to the stop, if stopped).
    pub load: Duration,
    /// Stopped before the requested duration.
    pub stopped: bool,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub udp: Option<UdpFigures>,
    pub bulk_sent: u64,
    pub bulk_streams: u64,
    pub bulk_clean: u64,
    pub connect: Option<ConnectFigures>,
    pub latency: Option<hdrhistogram::Histogram<u64>>,
    pub errors: BTreeMap<String, u64>,
}

/// The report from what was measured; rates are over `m.load`, the timeline covers `span` (the load's start to the
/// responder's stop).
#[allow(clippy::too_many_arguments)]
pub(crate) fn assemble(
    args: &LoadArgs,
    n: usize,
    eni: Option<Ipv4Addr>,
    m: Measured,
    seen: ResponderReport,
    gateway: Option<GatewayFigures>,
    tl: &Timeline,
    span: Duration,
) -> LoadReport {
    let secs = m.load.as_secs_f64().max(1e-3);
    let offered = Rate {
        packets: m.frames_out,
        bytes: m.bytes_out,
        pps: m.frames_out as f64 / secs,
        bps: m.bytes_out as f64 * 8.0 / secs,
    };
    let (dp, db) = match args.scenario {
        Scenario::Udp => (seen.udp_packets, seen.udp_bytes),
        Scenario::TcpBulk => (seen.bulk_streams, seen.bulk_bytes),
        Scenario::Connect => (seen.tcp_accepted, 0),
        Scenario::Mixed => (seen.udp_packets + seen.tcp_accepted, seen.udp_bytes + seen.bulk_bytes),
    };
    let delivered = Rate { packets: dp, bytes: db, pps: dp as f64 / secs, bps: db as f64 * 8.0 / secs };
    let loss = match &m.udp {
        Some(u) if u.sent > 0 => {
            let lost = u.sent.saturating_sub(seen.udp_packets);
            Loss { packets: lost, ratio: lost as f64 / u.sent as f64 }
        }
        _ => Loss::default(),
    };
    let tcp_bulk = matches!(args.scenario, Scenario::TcpBulk | Scenario::Mixed).then(|| BulkFigures {
        streams: m.bulk_streams,
        closed_clean: m.bulk_clean,
        sent_bytes: m.bulk_sent,
        delivered_bytes: seen.bulk_bytes,
        gbps: seen.bulk_bytes as f64 * 8.0 / secs / 1e9,
    });
    let mut connect = m.connect;
    if let (Some(c), Some(h)) = (connect.as_mut(), m.latency.as_ref()) {
        c.per_s = c.completed as f64 / secs;
        c.latency_us = latency(h);
    }
    LoadReport {
        scenario: args.scenario.name().into(),
        target: args.target.name().into(),
        envs: n,
        duration_s: secs,
        requested_duration_s: args.duration.as_secs_f64(),
        stopped_early: m.stopped,
        payload: args.payload,
        rate: args.rate,
        gateway_config: args.gateway.as_ref().map(|g| g.file.clone()),
        offered,
        delivered,
        loss,
        udp: m.udp,
        tcp_bulk,
        connect,
        errors: m.errors,
        responder: seen,
        eni,
        gateway,
        timeline_bucket_ms: tl.bucket().as_millis() as u64,
        timeline: tl.buckets(span),
        timeline_csv: None,
        plots: Vec::new(),
        vpc_counted: None,
        writers: None,
        warnings: Vec::new(),
        trafgen: None,
        delivered_at_vpc_edge: false,
    }
}

impl LoadReport {
    /// Takes delivered (and the loss) from the VPC counter: for raw UDP the counter discards what it counts, so the
    /// responder is not in the path and the kernel's count is the only one. Bytes are the payload's, as the
    /// responder would count them.
    pub(crate) fn delivered_at_vpc(&mut self) {
        let Some(c) = &self.vpc_counted else { return };
        self.delivered_at_vpc_edge = true;
        let secs = self.duration_s.max(1e-3);
        let bytes = c.packets * self.payload as u64;
        self.delivered = Rate { packets: c.packets, bytes, pps: c.pps, bps: bytes as f64 * 8.0 / secs };
        if let Some(u) = self.udp.as_ref().filter(|u| u.sent > 0) {
            let lost = u.sent.saturating_sub(c.packets);
            self.loss = Loss { packets: lost, ratio: lost as f64 / u.sent as f64 };
        }
    }
}

/// Summarises a histogram of microseconds.
pub(crate) fn latency(h: &hdrhistogram::Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    Latency {
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        mean: h.mean(),
    }
}

impl LoadReport {
    /// The headline figure: delivered pps (udp), Gbit/s (tcp-bulk), connections/s (connect, mixed).
    pub fn headline(&self) -> f64 {
        match self.scenario.as_str() {
            "udp" => self.delivered.pps,
            "tcp-bulk" => self.tcp_bulk.as_ref().map_or(0.0, |b| b.gbps),
            _ => self.connect.as_ref().map_or(0.0, |c| c.per_s),
        }
    }

    /// A human-readable summary.
    pub fn table(&self) -> String {
        let mut t = format!(
            "loadgen {} against {}: {} environments, {}{}\n",
            self.scenario,
            self.target,
            self.envs,
            settings::human_duration(Duration::from_secs_f64(self.duration_s)),
            self.rate.map(|r| format!(", rate {r}/s")).unwrap_or_default()
        );
        if self.stopped_early {
            t += &format!(
                "  stopped    after {} of {}: every figure covers the time the load ran\n",
                settings::human_duration(Duration::from_secs_f64(self.duration_s)),
                settings::human_duration(Duration::from_secs_f64(self.requested_duration_s))
            );
        }
        if let Some(w) = &self.writers {
            t += &format!(
                "  writers    CPUs {:?}, pinned {:?}, frames {:?}, {:?} writes\n",
                w.cpus, w.pinned, w.per_thread, w.tap_writes
            );
        }
        if let Some(f) = &self.gateway_config {
            t += &format!("  config     [gateway] settings from {f}\n");
        }
        t += &format!(
            "  offered    {:>12} frames  {:>12.0} pps  {:>8.3} Gbit/s\n",
            self.offered.packets,
            self.offered.pps,
            self.offered.bps / 1e9
        );
        t += &format!(
            "  delivered  {:>12} packets {:>12.0} pps  {:>8.3} Gbit/s (payload)\n",
            self.delivered.packets,
            self.delivered.pps,
            self.delivered.bps / 1e9
        );
        if let Some(u) = &self.udp {
            t += &format!(
                "  udp        sent {}, lost {} ({:.2} %), echoed {}\n",
                u.sent,
                self.loss.packets,
                self.loss.ratio * 100.0,
                u.echoed
            );
        }
        if let (Some(c), "discard") = (&self.vpc_counted, self.target.as_str()) {
            t += &format!(
                "  discard    {} frames counted by the kernel at the TAP's ingress and dropped ({:.0} pps)\n",
                c.packets, c.pps
            );
        } else if let Some(c) = &self.vpc_counted {
            t += &format!(
                "  vpc        {} UDP packets counted by the kernel past the NAT ({:.0} pps)\n",
                c.packets, c.pps
            );
        }
        if let Some(b) = &self.tcp_bulk {
            t += &format!(
                "  tcp-bulk   {} streams, {} bytes delivered, {:.3} Gbit/s\n",
                b.streams, b.delivered_bytes, b.gbps
            );
        }
        if let Some(c) = &self.connect {
            let l = &c.latency_us;
            t += &format!(
                "  connect    {} attempted, {} established, {} completed, {} failed (refused {}, timeout {}, reset {}); {:.0}/s\n",
                c.attempted, c.established, c.completed, c.failed, c.refused, c.timeout, c.reset, c.per_s
            );
            t += &format!(
                "  setup µs   p50 {} p90 {} p99 {} p99.9 {} max {} (n = {})\n",
                l.p50, l.p90, l.p99, l.p999, l.max, l.count
            );
        }
        let r = &self.responder;
        if self.delivered_at_vpc_edge {
            t +=
                "  responder  not in the path: unpaced udp is counted and discarded at the VPC edge (--rate or --echo \
                  take it on to the responder)\n";
        } else {
            t += &format!(
                "  responder  udp {} pkts, connect accepted {}, bulk {} bytes; {} sources from {} address(es): {:?}\n",
                r.udp_packets, r.tcp_accepted, r.bulk_bytes, r.distinct_sources, r.distinct_addresses, r.addresses
            );
        }
        if !self.errors.is_empty() {
            t += &format!("  errors     {:?}\n", self.errors);
        }
        if let Some(g) = &self.gateway {
            t += &format!(
                "  gateway    live tcp {} udp {} icmp {}; out {} in {}; arp asked {} answered {}; drops {:?}\n",
                g.live_sessions[0],
                g.live_sessions[1],
                g.live_sessions[2],
                g.outbound_packets,
                g.inbound_packets,
                g.arp_requests,
                g.arp_replies,
                g.drops
            );
        }
        if let Some(c) = &self.timeline_csv {
            t += &format!("  timeline   {c}\n");
        }
        for p in &self.plots {
            t += &format!("  plot       {p}\n");
        }
        if let Some(c) = &self.trafgen {
            let apart = match c.apart {
                Some(a) => format!("this run's delivered is {:.1}% from it", a * 100.0),
                None => "trafgen delivered nothing (it stopped or did not send): no comparison".into(),
            };
            t += &format!(
                "  trafgen    one flow, same link and counter: offered {:.0} pps, delivered {:.0} pps; {apart}\n",
                c.rates.offered_pps, c.rates.delivered_pps,
            );
        }
        for w in &self.warnings {
            t += &format!("warning: {w}\n");
        }
        t
    }
}
