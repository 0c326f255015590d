//! A classic BPF program for a `PACKET_FANOUT_CBPF` group that sends each
//! frame from the VPC to the worker owning its ENI port, so the kernel
//! does the steering [`crate::steer`] would otherwise do by hand-over.
//!
//! The program sees the frame from its IPv4 header (offsets are taken
//! relative to the network header, `SKF_NET_OFF`, so it does not depend on
//! where the kernel's data pointer is). It returns the owning worker's index
//! in the group (members joined in worker order) for:
//! - unfragmented TCP and UDP: by destination port;
//! - ICMP echo replies: by identifier;
//!
//! and the kernel's flow hash for everything else (ARP, fragments, ICMP
//! errors, ports outside every slice), which the kernel takes modulo the
//! group size: those frames are steered by the workers as before. A wrong
//! answer therefore costs a hand-over, never a misdelivery.

use crate::steer::Shards;

/// Most workers a program is built for: every jump offset must fit in
/// 8 bits (three instructions per worker).
pub const MAX_WORKERS: usize = 80;

const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_IND: u16 = 0x40;
const BPF_MSH: u16 = 0xa0;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JGT: u16 = 0x20;
const BPF_JGE: u16 = 0x30;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;
const BPF_A: u16 = 0x10;

const NET: u32 = libc::SKF_NET_OFF as u32;
const AD: u32 = libc::SKF_AD_OFF as u32;

/// One instruction with symbolic jump targets (instruction indexes).
#[derive(Clone, Copy)]
enum Ins {
    /// A plain instruction.
    Op(u16, u32),
    /// A conditional jump to `t` (true) or `f` (false), absolute indexes.
    Jmp(u16, u32, usize, usize),
    /// An unconditional jump to an absolute index.
    Ja(usize),
}

/// The program for `shards` (one member per worker, in order); `None` with
/// more than [`MAX_WORKERS`] workers.
pub fn program(shards: &Shards) -> Option<Vec<libc::sock_filter>> {
    let n = shards.len();
    if n > MAX_WORKERS {
        return None;
    }
    let slices: Vec<(usize, u16, u16)> = shards.port_slices().collect();
    // Fixed part: 15 instructions, then three per slice, then the hash.
    const PORTS: usize = 13;
    const CMP: usize = 15;
    let hash = CMP + 3 * slices.len();
    let mut p = vec![
        /* 0 */ Ins::Op(BPF_LD | BPF_W | BPF_ABS, AD.wrapping_add(libc::SKF_AD_PROTOCOL as u32)),
        /* 1 */ Ins::Jmp(BPF_JMP | BPF_JEQ | BPF_K, 0x0800, 2, hash),
        /* 2 */ Ins::Op(BPF_LD | BPF_H | BPF_ABS, NET.wrapping_add(6)),
        /* 3 */ Ins::Jmp(BPF_JMP | BPF_JSET | BPF_K, 0x3fff, hash, 4),
        /* 4 */ Ins::Op(BPF_LD | BPF_B | BPF_ABS, NET.wrapping_add(9)),
        /* 5 */ Ins::Jmp(BPF_JMP | BPF_JEQ | BPF_K, 6, PORTS, 6),
        /* 6 */ Ins::Jmp(BPF_JMP | BPF_JEQ | BPF_K, 17, PORTS, 7),
        /* 7 */ Ins::Jmp(BPF_JMP | BPF_JEQ | BPF_K, 1, 8, hash),
        /* 8 */ Ins::Op(BPF_LDX | BPF_B | BPF_MSH, NET),
        /* 9 */ Ins::Op(BPF_LD | BPF_B | BPF_IND, NET),
        /* 10 */ Ins::Jmp(BPF_JMP | BPF_JEQ | BPF_K, 0, 11, hash),
        /* 11 */ Ins::Op(BPF_LD | BPF_H | BPF_IND, NET.wrapping_add(4)),
        /* 12 */ Ins::Ja(CMP),
        /* 13 */ Ins::Op(BPF_LDX | BPF_B | BPF_MSH, NET),
        /* 14 */ Ins::Op(BPF_LD | BPF_H | BPF_IND, NET.wrapping_add(2)),
    ];
    debug_assert_eq!(p.len(), CMP);
    for (i, &(w, lo, hi)) in slices.iter().enumerate() {
        let at = CMP + 3 * i;
        // Below this slice is below every later one too (slices ascend).
        p.push(Ins::Jmp(BPF_JMP | BPF_JGE | BPF_K, u32::from(lo), at + 1, hash));
        p.push(Ins::Jmp(BPF_JMP | BPF_JGT | BPF_K, u32::from(hi), at + 3, at + 2));
        p.push(Ins::Op(BPF_RET | BPF_K, w as u32));
    }
    p.push(Ins::Op(BPF_LD | BPF_W | BPF_ABS, AD.wrapping_add(libc::SKF_AD_RXHASH as u32)));
    p.push(Ins::Op(BPF_RET | BPF_A, 0));
    let rel = |from: usize, to: usize| u8::try_from(to.checked_sub(from + 1)?).ok();
    p.iter()
        .enumerate()
        .map(|(i, ins)| match *ins {
            Ins::Op(code, k) => Some(libc::sock_filter { code, jt: 0, jf: 0, k }),
            Ins::Jmp(code, k, t, f) => Some(libc::sock_filter { code, jt: rel(i, t)?, jf: rel(i, f)?, k }),
            Ins::Ja(to) => Some(libc::sock_filter { code: BPF_JMP | BPF_JA, jt: 0, jf: 0, k: u32::from(rel(i, to)?) }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_fits_up_to_the_most_workers() {
        for n in [1, 2, 7, MAX_WORKERS] {
            let p = program(&Shards::new(1024..=65535, n)).expect("a program");
            assert_eq!(p.len(), 15 + 3 * n + 2);
        }
        assert!(program(&Shards::new(1024..=65535, MAX_WORKERS + 1)).is_none());
    }
}
