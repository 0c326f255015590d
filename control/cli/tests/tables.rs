//! The text `hyperplane status`, `sessions` and `stats` print.

#[path = "../../core/tests/reports/mod.rs"]
mod reports;

use control::api::{SessionsReport, StatusReport};
use hyperplane::tables::{format_sessions, format_stats, format_status};
use reports::*;

#[test]
fn status_text_has_the_eni_and_function_tables() {
    let t = format_status(&status_report());
    for want in [
        "ENI",
        "SUBNET",
        "subnet-a",
        "sg-a,sg-b",
        "10.0.0.4,10.0.0.5",
        "active",
        "orders,billing",
        "17",
        "tcp=12 udp=4 icmp=1 of 64512",
        "412.5ms",
        "eni 1 setup: create 120.0ms, attach 292.5ms",
        "FUNCTION",
        "Pending (creating eni 2)",
        "InProgress (security groups sg-a -> sg-c)",
        "Successful",
        "headroom:",
        "sessions: 5 live + 40 recyclable of 262144 (0.0% used); 1200 recycled, 7 reopened",
        "eni 1: 2 of 16 addresses",
        "RECYCLABLE",
        "COOLING",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    // Per address and protocol: live, recyclable (and of those, cooling in the remote's TIME_WAIT), quarantined,
    // free.
    let tcp = t.lines().find(|l| l.contains("10.0.0.4") && l.contains(" tcp ")).expect("tcp port line");
    let cols: Vec<&str> = tcp.split_whitespace().collect();
    assert_eq!(cols[1..7], ["tcp", "12", "40", "25", "0", "64460"], "{tcp}");
    let empty = format_status(&StatusReport { enis: vec![], functions: vec![], headroom: Default::default() });
    assert!(empty.contains("no shared ENIs") && empty.contains("no functions"), "{empty}");
}

#[test]
fn sessions_text_is_conntrack_like() {
    let t = format_sessions(&sessions_report());
    let first = t.lines().next().unwrap();
    assert_eq!(
        first,
        "tcp  7435 ESTABLISHED src=172.16.0.2 dst=10.1.0.2 sport=40000 dport=7000 [env=172.16.0.2] \
         src=10.1.0.2 dst=10.0.0.4 sport=7000 dport=13050 packets=12/10 bytes=1200/900 eni=1"
    );
    let icmp = t.lines().nth(1).unwrap();
    assert!(icmp.starts_with("icmp 25 - src=172.16.0.3 dst=10.1.0.2 id=77"), "{icmp}");
    assert!(icmp.contains("src=10.1.0.2 dst=10.0.0.4 id=1024") && icmp.ends_with("eni=-"), "{icmp}");
    assert_eq!(t.lines().last().unwrap(), "2 of 5 sessions shown");
    let all = format_sessions(&SessionsReport { sessions: vec![session()], total: 1 });
    assert_eq!(all.lines().last().unwrap(), "1 session");
}

#[test]
fn stats_text_has_counters_nonzero_drops_and_port_use() {
    let t = format_stats(&stats_report());
    for want in [
        "workers           4",
        "rx frames         1000",
        "packets=600 bytes=60000",
        "packets=390 bytes=39000",
        "hairpinned        2",
        "icmp=0 tcp=3 udp=1",
        "no_session",
        "bad \"label\"",
        "10.0.0.4",
        "64512",
        "eni 1  0.412s",
        "io                uring",
        "syscalls          500 (io_uring_enter=495 wake=2 write=3)",
        "syscalls/packet   0.51",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    assert!(!t.contains("port_exhausted"), "zero drops are left out:\n{t}");
}
