//! The raw UDP sender (`loadgen::sender`) and the VPC-side kernel counter (`netlab::meter::IngressCounter`) against
//! an independent generator, trafgen (netsniff-ng), through each NAT.
//!
//! Each test builds one NAT with one environment, counts IPv4 UDP to the server at the VPC router's link from the
//! NAT (nftables netdev ingress, dropped there), and offers a fixed number of 64-byte UDP frames at a rate both
//! NATs carry without loss on this machine, first from our sender (pinned to CPU 0, `sendmmsg` on `AF_PACKET`),
//! then from trafgen (pinned to CPU 0, paced by itself, stopping after as many frames). What must hold: the sender
//! reports exactly the frames it was asked for, the kernel counter sees at least 98% of them for each generator
//! (the rest is the allowance for a shared machine), and the two counts agree within 2%. Every load is bounded
//! (20,000 frames, 10 s at most). The tests need root and trafgen; without either they say so and return.

use loadgen::sender::{self, Flows, FrameSpec, Plan, Source};
use netlab::lab::{Lab, Options};
use netlab::meter::{IngressCounter, Verdict};
use netlab::{env_addr, KernelNat, Netns, INSIDE_GATEWAY, SERVER};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Frames per generator.
const FRAMES: u64 = 20_000;
/// Frames per second, both generators.
const RATE: u64 = 20_000;

/// The tests take turns, so neither measures the other's load.
static TURN: Mutex<()> = Mutex::new(());

fn ready() -> bool {
    if !netlab::is_root() {
        eprintln!("skipping: needs root");
        return false;
    }
    if netlab::find_tool("trafgen").is_err() || netlab::find_tool("taskset").is_err() {
        eprintln!("skipping: needs trafgen (apt-get install netsniff-ng) and taskset");
        return false;
    }
    true
}

/// Waits until `counter` stops moving (at most 2 s), then reads it.
fn settled(counter: &IngressCounter) -> u64 {
    let mut last = counter.read().expect("read the counter").0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
        let now = counter.read().expect("read the counter").0;
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// Offers FRAMES from our sender and then from trafgen out of `link` in `env`; (sent, counted ours, counted trafgen).
fn both(env: &Netns, link: &str, vpc: &Netns, vpc_link: &str) -> (u64, u64, u64) {
    // A deep queue on the environment's link: a NAT thread the scheduler keeps off the CPU for a while (other work on
    // a shared machine) then loses nothing; this test is about the counts, not the NAT's scheduling.
    env.ip(&["link", "set", "dev", link, "txqueuelen", "65536"]).expect("txqueuelen");
    let spec = FrameSpec::from_link(env, link, env_addr(0), INSIDE_GATEWAY, SERVER).expect("frame template");
    let counter = IngressCounter::install(vpc, vpc_link, SERVER, Verdict::Drop).expect("VPC counter");
    counter.reset().expect("reset");
    let plan = Plan {
        source: Source::Flows(spec.clone(), Flows::ONE),
        cpus: vec![0],
        duration: Duration::from_secs(10),
        rate: Some(RATE as f64),
        max_frames: Some(FRAMES),
        progress: None,
    };
    let sent = sender::send_packet(env, link, &plan, &Arc::new(AtomicBool::new(false))).expect("our sender");
    assert_eq!(sent.pinned, vec![true], "pinned to CPU 0");
    let ours = settled(&counter);

    counter.reset().expect("reset");
    let cfg = std::env::temp_dir().join(format!("hp-sender-test-{}-{link}.cfg", std::process::id()));
    std::fs::write(&cfg, spec.trafgen_config()).expect("write the trafgen config");
    let args = sender::trafgen_args(link, &cfg, 0, FRAMES, Some(RATE));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = env.spawn(&args).expect("trafgen");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("trafgen status").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&cfg);
    let theirs = settled(&counter);
    eprintln!(
        "{link}: our sender sent {} ({:.0}/s), counted {ours}; trafgen counted {theirs}",
        sent.frames,
        sent.pps()
    );
    (sent.frames, ours, theirs)
}

fn check((sent, ours, theirs): (u64, u64, u64)) {
    assert_eq!(sent, FRAMES, "the sender sends what it was asked for");
    let floor = FRAMES * 98 / 100;
    assert!(ours >= floor && ours <= FRAMES + 10, "our sender: counted {ours} of {FRAMES}");
    assert!(theirs >= floor && theirs <= FRAMES + 10, "trafgen: counted {theirs} of {FRAMES}");
    let apart = ours.abs_diff(theirs) as f64 / theirs as f64;
    assert!(apart <= 0.02, "our sender {ours} and trafgen {theirs} are {:.1}% apart", apart * 100.0);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn sender_and_trafgen_agree_through_the_kernel_nat() {
    if !ready() {
        return;
    }
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let k = KernelNat::build("hpst", 1, true).expect("kernel lab");
    check(both(k.env_ns(0), netlab::ENV_LINK, k.vpc_ns(), "gw"));
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn sender_and_trafgen_agree_through_our_gateway() {
    if !ready() {
        return;
    }
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::build(&Options { envs: 1, ..Options::default() }).expect("our lab");
    let r = both(&lab.envs[0], &lab.taps[0].clone(), &lab.vpc, &lab.outside.clone());
    let t = lab.gateway().totals();
    eprintln!(
        "gateway: {} frames in, {} packets out; drops {:?}; environment link {:?}",
        t.rx_frames,
        t.outbound.0,
        t.drops,
        netlab::meter::link_stats(&lab.envs[0], &lab.taps[0])
    );
    check(r);
}
