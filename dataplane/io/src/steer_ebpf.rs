//! An eBPF steering program for the outside's multi-queue TAP
//! (`TUNSETSTEERINGEBPF`): the kernel gives each frame from the VPC to the
//! queue of the worker owning its ENI port, the steering
//! [`crate::fanout_bpf`] does for an AF_PACKET outside.
//!
//! Why: without a steering program a multi-queue TAP hashes every frame
//! *written* to it (`__skb_get_hash_symmetric`) to remember which queue a
//! flow last came from (`tun_flow_update`), and picks the queue of a frame
//! it transmits from that table. With a program the kernel skips both: the
//! program alone chooses the queue (its return value modulo the number of
//! queues; queue `i` is the `i`-th attached, worker `i`'s).
//!
//! The program is a `BPF_PROG_TYPE_SOCKET_FILTER` run on the frame's
//! `sk_buff` and translates [`crate::fanout_bpf`]'s classic program
//! nearly one to one (the legacy `BPF_LD | BPF_ABS/BPF_IND` loads, with
//! offsets relative to the network header, `SKF_NET_OFF`), built from the
//! same [`Shards::port_slices`]. It returns the owning worker's index for
//! - unfragmented IPv4 TCP and UDP: by destination port;
//! - ICMP echo replies: by identifier;
//!
//! and for everything else (ARP, fragments, ICMP errors, ports outside
//! every slice) the `sk_buff`'s hash (`__sk_buff.hash`, 0 when none was
//! computed: queue 0). A load beyond the frame's end ends the program with
//! 0 (queue 0). Those frames are steered by the workers as before, so a
//! wrong answer costs a hand-over, never a misdelivery.
//!
//! [`load`] loads a program with `bpf(BPF_PROG_LOAD)`; the kernel may
//! refuse it (no BPF, `EPERM` without `CAP_BPF`/`CAP_SYS_ADMIN` where
//! unprivileged BPF is off), in which case the TAP keeps hashing.

use crate::error::IoError;
use crate::steer::Shards;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfInsn {
    /// Opcode.
    pub code: u8,
    /// Destination register (low nibble) and source register (high).
    pub regs: u8,
    /// Signed jump offset in instructions, or memory offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ALU: u8 = 0x04;
const JMP: u8 = 0x05;
const ALU64: u8 = 0x07;
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const ABS: u8 = 0x20;
const IND: u8 = 0x40;
const MEM: u8 = 0x60;
const K: u8 = 0x00;
const X: u8 = 0x08;
const AND: u8 = 0x50;
const LSH: u8 = 0x60;
const MOV: u8 = 0xb0;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JSET: u8 = 0x40;
const JNE: u8 = 0x50;
const EXIT: u8 = 0x90;
const JLT: u8 = 0xa0;

const R0: u8 = 0;
const R1: u8 = 1;
const R6: u8 = 6;
const R7: u8 = 7;

const NET: i32 = libc::SKF_NET_OFF;
/// `offsetof(struct __sk_buff, protocol)`: the EtherType, network order.
const SKB_PROTOCOL: i16 = 16;
/// `offsetof(struct __sk_buff, hash)`.
const SKB_HASH: i16 = 68;

/// Most queues a TAP has (`MAX_TAP_QUEUES`), hence most workers.
pub const MAX_WORKERS: usize = 256;

/// One instruction with a symbolic jump target (an instruction index).
#[derive(Clone, Copy)]
enum Ins {
    /// A plain instruction: code, dst, src, off, imm.
    Op(u8, u8, u8, i16, i32),
    /// `if dst <op> imm goto to` (a conditional jump with an immediate).
    Jmp(u8, u8, i32, usize),
    /// `goto to`.
    Ja(usize),
}

fn ld_abs(size: u8, off: i32) -> Ins {
    Ins::Op(LD | ABS | size, 0, 0, 0, NET + off)
}

fn ld_ind(size: u8, src: u8, off: i32) -> Ins {
    Ins::Op(LD | IND | size, 0, src, 0, NET + off)
}

/// r7 = the IPv4 header length in bytes (4 × IHL): cBPF's `ldx msh`.
fn header_len() -> [Ins; 4] {
    [
        ld_abs(B, 0),
        Ins::Op(ALU | AND | K, R0, 0, 0, 0x0f),
        Ins::Op(ALU | LSH | K, R0, 0, 0, 2),
        Ins::Op(ALU64 | MOV | X, R7, R0, 0, 0),
    ]
}

/// A steering program that gives every frame to queue `queue`: for a
/// multi-queue TAP whose frames towards its queues need no spreading (the
/// load generator's, written from several queues, read from the first),
/// where it spares every write the kernel's flow hash.
pub fn constant(queue: u32) -> Vec<BpfInsn> {
    vec![
        BpfInsn { code: ALU64 | MOV | K, regs: R0, off: 0, imm: queue as i32 },
        BpfInsn { code: JMP | EXIT, regs: 0, off: 0, imm: 0 },
    ]
}

/// The outside TAP's steering program for `shards` (one queue per worker,
/// in order); `None` with more than [`MAX_WORKERS`] workers.
pub fn program(shards: &Shards) -> Option<Vec<BpfInsn>> {
    if shards.len() > MAX_WORKERS {
        return None;
    }
    let slices: Vec<(usize, u16, u16)> = shards.port_slices().collect();
    // Fixed part: 22 instructions, then four per slice, then the hash.
    const PORTS: usize = 17;
    const CMP: usize = 22;
    let hash = CMP + 4 * slices.len();
    let ipv4 = i32::from(0x0800u16.to_be());
    let mut p = vec![
        /* 0 */ Ins::Op(ALU64 | MOV | X, R6, R1, 0, 0),
        /* 1 */ Ins::Op(LDX | MEM | W, R0, R6, SKB_PROTOCOL, 0),
        /* 2 */ Ins::Jmp(JNE, R0, ipv4, hash),
        /* 3 */ ld_abs(H, 6),
        /* 4 */ Ins::Jmp(JSET, R0, 0x3fff, hash),
        /* 5 */ ld_abs(B, 9),
        /* 6 */ Ins::Jmp(JEQ, R0, 6, PORTS),
        /* 7 */ Ins::Jmp(JEQ, R0, 17, PORTS),
        /* 8 */ Ins::Jmp(JNE, R0, 1, hash),
    ];
    /* 9..=12 */
    p.extend(header_len());
    p.extend([
        /* 13 */ ld_ind(B, R7, 0),
        /* 14 */ Ins::Jmp(JNE, R0, 0, hash),
        /* 15 */ ld_ind(H, R7, 4),
        /* 16 */ Ins::Ja(CMP),
    ]);
    debug_assert_eq!(p.len(), PORTS);
    /* 17..=20 */
    p.extend(header_len());
    /* 21 */
    p.push(ld_ind(H, R7, 2));
    debug_assert_eq!(p.len(), CMP);
    for (i, &(w, lo, hi)) in slices.iter().enumerate() {
        let next = CMP + 4 * (i + 1);
        // Below this slice is below every later one too (slices ascend).
        p.push(Ins::Jmp(JLT, R0, i32::from(lo), hash));
        p.push(Ins::Jmp(JGT, R0, i32::from(hi), next));
        p.push(Ins::Op(ALU64 | MOV | K, R0, 0, 0, w as i32));
        p.push(Ins::Op(JMP | EXIT, 0, 0, 0, 0));
    }
    p.push(Ins::Op(LDX | MEM | W, R0, R6, SKB_HASH, 0));
    p.push(Ins::Op(JMP | EXIT, 0, 0, 0, 0));
    let rel = |from: usize, to: usize| i16::try_from(to as isize - (from as isize + 1)).ok();
    p.iter()
        .enumerate()
        .map(|(i, ins)| match *ins {
            Ins::Op(code, dst, src, off, imm) => Some(BpfInsn { code, regs: dst | src << 4, off, imm }),
            Ins::Jmp(op, dst, imm, to) => Some(BpfInsn { code: JMP | op | K, regs: dst, off: rel(i, to)?, imm }),
            Ins::Ja(to) => Some(BpfInsn { code: JMP | JA, regs: 0, off: rel(i, to)?, imm: 0 }),
        })
        .collect()
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
/// Bytes of verifier log kept when a load is refused.
const LOG: usize = 16 * 1024;

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`; the
/// kernel takes the rest as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

fn prog_load(prog: &[BpfInsn], log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    const LICENSE: &[u8] = b"GPL\0";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: u32::try_from(prog.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        insns: prog.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    attr.prog_name[..12].copy_from_slice(b"hp_tap_steer");
    if let Some(log) = log {
        attr.log_level = 1;
        attr.log_size = log.len() as u32;
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    // SAFETY: bpf(BPF_PROG_LOAD) reads `size_of::<ProgLoadAttr>()` bytes
    // of `attr`, the `insn_cnt` instructions at `insns` (`prog`, a live
    // slice of `repr(C)` `struct bpf_insn`s), the NUL-terminated licence
    // (a static), and writes at most `log_size` bytes into `log_buf` (a
    // live exclusive slice); all outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &mut attr as *mut ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a successful BPF_PROG_LOAD returns a new descriptor that
    // nothing else owns (the kernel sets close-on-exec on it).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Loads `prog` as a socket filter program; its descriptor (the kernel
/// keeps the program while a TAP holds it, so it may be closed once set).
///
/// Errors: [`IoError::NotPermitted`] (`EPERM`: no privilege for BPF),
/// [`IoError::Sys`] otherwise; a program the verifier refuses names the
/// verifier's reason (its log's last line before the statistics).
pub fn load(prog: &[BpfInsn]) -> Result<OwnedFd, IoError> {
    match prog_load(prog, None) {
        Ok(fd) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Err(IoError::NotPermitted { op: "bpf(BPF_PROG_LOAD)" }),
        Err(e) if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) => {
            // Most likely the verifier: load again for its log.
            let mut log = vec![0u8; LOG];
            let again = prog_load(prog, Some(&mut log));
            let text = String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned();
            // The verifier ends with a statistics line; its reason is before.
            let last = text.lines().rev().find(|l| !l.trim().is_empty() && !l.starts_with("processed ")).unwrap_or("");
            match again {
                Ok(fd) => Ok(fd),
                Err(e) => Err(IoError::Sys {
                    op: "bpf(BPF_PROG_LOAD)",
                    source: io::Error::new(e.kind(), format!("{e}: {last}")),
                }),
            }
        }
        Err(e) => Err(IoError::sys("bpf(BPF_PROG_LOAD)", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where every jump of `p` lands (absolute), checking it stays inside.
    fn targets(p: &[BpfInsn]) -> Vec<(usize, usize)> {
        p.iter()
            .enumerate()
            .filter(|(_, x)| x.code & 0x07 == JMP && x.code & 0xf0 != EXIT)
            .map(|(i, x)| {
                let to = i as isize + 1 + isize::from(x.off);
                assert!(to > i as isize && (to as usize) < p.len(), "jump {i} → {to} of {}", p.len());
                (i, to as usize)
            })
            .collect()
    }

    #[test]
    fn lengths_and_jumps_up_to_the_most_workers() {
        for n in [1, 2, 7, MAX_WORKERS] {
            let p = program(&Shards::new(1024..=65535, n)).expect("a program");
            assert_eq!(p.len(), 22 + 4 * n + 2, "{n} workers");
            assert_eq!(p.last().map(|x| x.code), Some(JMP | EXIT));
            targets(&p);
        }
        assert!(program(&Shards::new(1024..=65535, MAX_WORKERS + 1)).is_none());
        // A worker of weight 0 owns no slice: no compare for it.
        let p = program(&Shards::weighted(1024..=65535, &[1, 0, 1])).expect("a program");
        assert_eq!(p.len(), 22 + 4 * 2 + 2);
    }

    #[test]
    fn the_encoding_of_two_workers() {
        let s = Shards::new(1024..=65535, 2);
        let p = program(&s).expect("a program");
        let hash = 22 + 8;
        // r6 = r1 first (the legacy loads need the context there).
        assert_eq!(p[0], BpfInsn { code: ALU64 | MOV | X, regs: R6 | R1 << 4, off: 0, imm: 0 });
        let t = targets(&p);
        let to = |i: usize| t.iter().find(|&&(f, _)| f == i).map(|&(_, to)| to);
        // Not IPv4, fragments, other protocols, ICMP but not an echo reply: the hash.
        for i in [2, 4, 8, 14] {
            assert_eq!(to(i), Some(hash), "instruction {i}");
        }
        assert_eq!((to(6), to(7)), (Some(17), Some(17)), "TCP and UDP read the destination port");
        assert_eq!(to(16), Some(22), "the echo identifier goes to the compares");
        // Loads: relative to the network header, indirect ones from r7.
        assert_eq!((p[3].code, p[3].imm), (LD | ABS | H, NET + 6));
        assert_eq!((p[5].code, p[5].imm), (LD | ABS | B, NET + 9));
        assert_eq!((p[15].code, p[15].regs, p[15].imm), (LD | IND | H, R7 << 4, NET + 4));
        assert_eq!((p[21].code, p[21].regs, p[21].imm), (LD | IND | H, R7 << 4, NET + 2));
        // Each slice: below it → hash, above it → the next slice, else its worker.
        for (k, (w, lo, hi)) in s.port_slices().enumerate() {
            let at = 22 + 4 * k;
            assert_eq!((p[at].code, p[at].imm, to(at)), (JMP | JLT | K, i32::from(lo), Some(hash)));
            assert_eq!((p[at + 1].code, p[at + 1].imm, to(at + 1)), (JMP | JGT | K, i32::from(hi), Some(at + 4)));
            assert_eq!((p[at + 2].code, p[at + 2].imm), (ALU64 | MOV | K, w as i32));
            assert_eq!(p[at + 3].code, JMP | EXIT);
        }
        assert_eq!((p[hash].code, p[hash].regs, p[hash].off), (LDX | MEM | W, R6 << 4, SKB_HASH));
    }
}
