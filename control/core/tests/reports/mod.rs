//! Example reports of every kind, shared by the API tests here and the text
//! tests of the `hyperplane` crate (`control/cli/tests/tables.rs`).
#![allow(dead_code)]

use control::api::{
    ApplyReport, EniAddresses, EniStatus, FunctionStatus, Headroom, IoStats, PortUseLine, ProtoCounts, SessionLine,
    SessionsReport, SetupStep, StatsReport, StatusReport,
};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

pub fn headroom() -> Headroom {
    Headroom {
        sessions: 45,
        sessions_recyclable: 40,
        sessions_capacity: 262144,
        sessions_recycled: 1200,
        sessions_evicted: 3,
        sessions_reopened: 7,
        eni_addresses: vec![EniAddresses { eni: 1, addresses: 2, max: 16 }],
    }
}

pub fn status_report() -> StatusReport {
    StatusReport {
        enis: vec![EniStatus {
            id: 1,
            subnet: "subnet-a".into(),
            security_groups: vec!["sg-a".into(), "sg-b".into()],
            addrs: vec![Ipv4Addr::new(10, 0, 0, 4), Ipv4Addr::new(10, 0, 0, 5)],
            generation: 3,
            state: "active".into(),
            functions: vec!["orders".into(), "billing".into()],
            sessions: 17,
            port_use: vec![PortUseLine {
                addr: Ipv4Addr::new(10, 0, 0, 4),
                tcp: 12,
                udp: 4,
                icmp: 1,
                closing: ProtoCounts { tcp: 40, udp: 0, icmp: 0 },
                cooling: ProtoCounts { tcp: 25, udp: 0, icmp: 0 },
                quarantined: ProtoCounts { tcp: 0, udp: 2, icmp: 0 },
                capacity: 64512,
            }],
            setup_ms: Some(412.5),
            setup_steps: vec![
                SetupStep { step: "create".into(), ms: 120.0 },
                SetupStep { step: "attach".into(), ms: 292.5 },
            ],
        }],
        functions: vec![
            FunctionStatus {
                name: "orders".into(),
                state: "Active".into(),
                state_reason: None,
                last_update_status: "Successful".into(),
                last_update_reason: None,
                enis: vec![1],
            },
            FunctionStatus {
                name: "reports".into(),
                state: "Pending".into(),
                state_reason: Some("creating eni 2".into()),
                last_update_status: "InProgress".into(),
                last_update_reason: Some("security groups sg-a -> sg-c".into()),
                enis: vec![],
            },
        ],
        headroom: headroom(),
    }
}

pub fn session() -> SessionLine {
    SessionLine {
        proto: "tcp".into(),
        timeout_s: 7435,
        state: "ESTABLISHED".into(),
        env: Ipv4Addr::new(172, 16, 0, 2),
        eni: Some(1),
        original_src: SocketAddrV4::new(Ipv4Addr::new(172, 16, 0, 2), 40000),
        original_dst: SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 2), 7000),
        translated_src: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 4), 13050),
        translated_dst: SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 2), 7000),
        packets_out: 12,
        bytes_out: 1200,
        packets_in: 10,
        bytes_in: 900,
    }
}

pub fn sessions_report() -> SessionsReport {
    let icmp = SessionLine {
        proto: "icmp".into(),
        timeout_s: 25,
        state: "-".into(),
        eni: None,
        original_src: SocketAddrV4::new(Ipv4Addr::new(172, 16, 0, 3), 77),
        original_dst: SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 2), 0),
        translated_src: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 4), 1024),
        translated_dst: SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 2), 0),
        ..session()
    };
    SessionsReport { sessions: vec![session(), icmp], total: 5 }
}

pub fn stats_report() -> StatsReport {
    let m = |kv: &[(&str, u64)]| kv.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>();
    StatsReport {
        workers: 4,
        rx_frames: 1000,
        outbound_packets: 600,
        outbound_bytes: 60000,
        inbound_packets: 390,
        inbound_bytes: 39000,
        hairpinned: 2,
        sessions: m(&[("tcp", 3), ("udp", 1), ("icmp", 0)]),
        sessions_created: m(&[("tcp", 10), ("udp", 5), ("icmp", 2)]),
        sessions_expired: m(&[("tcp", 7), ("udp", 4), ("icmp", 2)]),
        drops: m(&[("no_session", 3), ("port_exhausted", 0), ("bad \"label\"", 1)]),
        port_use: vec![PortUseLine {
            addr: Ipv4Addr::new(10, 0, 0, 4),
            tcp: 3,
            udp: 1,
            icmp: 0,
            closing: ProtoCounts { tcp: 40, udp: 0, icmp: 0 },
            cooling: ProtoCounts { tcp: 25, udp: 0, icmp: 0 },
            quarantined: ProtoCounts { tcp: 0, udp: 2, icmp: 0 },
            capacity: 64512,
        }],
        eni_setup_seconds: vec![(1, 0.4125)],
        sessions_flushed: 2,
        headroom: headroom(),
        io: Box::new(IoStats {
            backend: "uring".into(),
            syscalls: m(&[("read", 0), ("write", 3), ("io_uring_enter", 495), ("wake", 2)]),
            syscalls_per_packet: 0.505,
            vhost_user: [("vm0".to_string(), m(&[("guest_tx_frames", 12), ("malformed_chains", 1)]))].into(),
        }),
    }
}

pub fn apply_report() -> ApplyReport {
    ApplyReport {
        changes: vec![
            "function orders: security groups sg-a -> sg-b".into(),
            "eni 3 created for subnet-a [sg-b]".into(),
        ],
    }
}
