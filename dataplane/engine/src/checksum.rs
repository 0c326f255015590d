//! The Internet checksum: full computation (RFC 1071) and incremental update
//! (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`).
//!
//! Sums are kept in one's-complement arithmetic on 16-bit big-endian words.
//! The incremental form is what the translation path uses: rewriting an
//! address or a port changes a few words, so the checksum is adjusted by those
//! words alone and the payload is never read.

use core::net::Ipv4Addr;

/// Adds `data` (big-endian 16-bit words, an odd last byte padded with zero)
/// to the running sum `acc`. The result is congruent to the one's-complement
/// sum modulo `0xffff` and at most `0x1fffe`, so a few small terms (a
/// pseudo-header's protocol and length) may be added before [`fold`].
///
/// Four bytes are added at a time into a 64-bit accumulator: a 32-bit
/// big-endian word `hi·2¹⁶ + lo` is congruent to `hi + lo` modulo `0xffff`,
/// so this is the RFC 1071 sum with half the additions and no overflow
/// checks (the accumulator cannot overflow below 2³² words).
#[inline]
pub fn sum(acc: u32, data: &[u8]) -> u32 {
    let mut wide = u64::from(acc);
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        wide += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    match *words.remainder() {
        [a, b, c] => wide += u64::from(u16::from_be_bytes([a, b])) + (u64::from(c) << 8),
        [a, b] => wide += u64::from(u16::from_be_bytes([a, b])),
        [a] => wide += u64::from(a) << 8,
        _ => {}
    }
    let wide = (wide & 0xffff_ffff) + (wide >> 32);
    let narrow = ((wide & 0xffff_ffff) + (wide >> 32)) as u32;
    (narrow & 0xffff) + (narrow >> 16)
}

/// Folds a 32-bit sum to 16 bits (end-around carry): two folds bring any
/// `u32` to at most `0xffff`.
#[inline]
pub fn fold(acc: u32) -> u16 {
    let acc = (acc & 0xffff) + (acc >> 16);
    ((acc & 0xffff) + (acc >> 16)) as u16
}

/// The checksum field value for `data` (the complement of its folded sum).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// The sum of the IPv4 pseudo-header used by TCP and UDP (RFC 793, RFC 768).
#[inline]
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u32 {
    let mut acc = sum(0, &src.octets());
    acc = sum(acc, &dst.octets());
    acc + u32::from(protocol) + u32::from(length)
}

/// The TCP/UDP checksum of `segment` (header with a zeroed checksum field, and
/// payload) between `src` and `dst`.
pub fn transport(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let len = u16::try_from(segment.len()).unwrap_or(u16::MAX);
    !fold(sum(pseudo_header(src, dst, protocol, len), segment))
}

/// RFC 1624 eqn. 3 for one 16-bit word: the new checksum after a covered word
/// changes from `old` to `new`.
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let acc = u32::from(!check) + u32::from(!old) + u32::from(new);
    !fold(acc)
}

/// RFC 1624 eqn. 3 for a 32-bit field (an IPv4 address): two words at once.
#[inline]
pub fn update32(check: u16, old: u32, new: u32) -> u16 {
    let acc =
        u32::from(!check) + u32::from(!(old >> 16) as u16) + u32::from(!(old as u16)) + (new >> 16) + (new & 0xffff);
    !fold(acc)
}

/// An accumulated difference to apply to several checksums at once.
///
/// The translation path changes an address and a port; the IP header checksum
/// covers the address, the TCP/UDP checksum covers both. `Delta` records each
/// change once and applies the right part to each checksum.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta(u32);

impl Delta {
    /// No change.
    pub const ZERO: Delta = Delta(0);

    /// Records a 16-bit word changing from `old` to `new`.
    #[inline]
    pub fn word(self, old: u16, new: u16) -> Delta {
        Delta(self.0 + u32::from(!old) + u32::from(new))
    }

    /// Records a 32-bit field changing from `old` to `new`.
    #[inline]
    pub fn addr(self, old: Ipv4Addr, new: Ipv4Addr) -> Delta {
        let (o, n) = (u32::from(old), u32::from(new));
        self.word((o >> 16) as u16, (n >> 16) as u16).word(o as u16, n as u16)
    }

    /// Combines two deltas.
    #[inline]
    pub fn plus(self, other: Delta) -> Delta {
        Delta(fold(self.0) as u32 + fold(other.0) as u32)
    }

    /// Applies the delta to a checksum field value.
    #[inline]
    pub fn apply(self, check: u16) -> u16 {
        !fold(u32::from(!check) + u32::from(fold(self.0)))
    }

    /// Applies the delta to a *partial* transport checksum (checksum
    /// offload, Linux `CHECKSUM_PARTIAL`): the field holds the folded
    /// pseudo-header sum, not complemented, and the sender of the frame sums
    /// the segment over it later. Only pseudo-header changes (addresses)
    /// belong in the delta; port changes are summed by the completer.
    #[inline]
    pub fn apply_partial(self, partial: u16) -> u16 {
        fold(u32::from(partial) + u32::from(fold(self.0)))
    }

    /// Applies the delta to a UDP checksum, where zero means "no checksum"
    /// (RFC 768): an absent checksum stays absent and a computed zero is sent
    /// as `0xffff`.
    #[inline]
    pub fn apply_udp(self, check: u16) -> u16 {
        if check == 0 {
            return 0;
        }
        match self.apply(check) {
            0 => 0xffff,
            c => c,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 1071 §3 example bytes.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(checksum(&[0x12, 0x34, 0x56]), checksum(&[0x12, 0x34, 0x56, 0x00]));
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut data: Vec<u8> = (0..64u8).map(|b| b.wrapping_mul(37)).collect();
        let check = checksum(&data);
        // Change word 5 and an "address" in words 8..10.
        let old5 = u16::from_be_bytes([data[10], data[11]]);
        let old_addr = u32::from_be_bytes([data[16], data[17], data[18], data[19]]);
        data[10..12].copy_from_slice(&0xbeefu16.to_be_bytes());
        data[16..20].copy_from_slice(&0x0a00_0001u32.to_be_bytes());
        let inc = update32(update16(check, old5, 0xbeef), old_addr, 0x0a00_0001);
        assert_eq!(inc, checksum(&data));
        let delta = Delta::ZERO.word(old5, 0xbeef).addr(Ipv4Addr::from(old_addr), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(delta.apply(check), checksum(&data));
    }

    #[test]
    fn long_input_does_not_overflow() {
        let data = vec![0xffu8; 70_000];
        // 35,000 words of 0xffff sum to 0xffff in one's complement.
        assert_eq!(fold(sum(0, &data)), 0xffff);
    }

    /// The word-at-a-time sum gives what RFC 1071's 16-bit loop gives, for
    /// every length (odd ones too) and starting sum.
    #[test]
    fn sum_matches_the_sixteen_bit_reference() {
        fn reference(acc: u32, data: &[u8]) -> u16 {
            let mut s = u64::from(acc);
            for c in data.chunks(2) {
                s += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16);
            }
            s as u16
        }
        proptest::proptest!(|(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200), acc in 0u32..0x2_0000)| {
            proptest::prop_assert_eq!(fold(sum(acc, &data)), reference(acc, &data));
            proptest::prop_assert!(sum(acc, &data) <= 0x1_fffe);
        });
        assert_eq!(fold(sum(0, &[])), 0);
        assert_eq!(fold(u32::MAX), 0xffff);
    }

    #[test]
    fn udp_zero_checksum_rules() {
        assert_eq!(Delta::ZERO.word(1, 2).apply_udp(0), 0);
        // A delta that makes the checksum compute to zero sends 0xffff instead.
        let d = Delta::ZERO.word(0x0001, 0x0000);
        assert_eq!(d.apply_udp(0xfffe), 0xffff);
    }
}
