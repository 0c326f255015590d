//! The virtio-net header that precedes every frame on a TAP opened with
//! `IFF_VNET_HDR`, and completion of partial checksums.
//!
//! Wire format ([`VNET_HDR_LEN`] = 12 bytes, `struct virtio_net_hdr_v1`; the
//! 16-bit fields are little-endian, which [`super::tap::Tap`] enforces with
//! `TUNSETVNETLE`):
//!
//! | offset | size | field         |
//! |--------|------|---------------|
//! | 0      | 1    | `flags`       |
//! | 1      | 1    | `gso_type`    |
//! | 2      | 2    | `hdr_len`     |
//! | 4      | 2    | `gso_size`    |
//! | 6      | 2    | `csum_start`  |
//! | 8      | 2    | `csum_offset` |
//! | 10     | 2    | `num_buffers` (written 0, ignored on parse) |
//!
//! Units: all lengths and offsets are bytes. `csum_start` counts from the
//! first byte of the Ethernet frame (the byte after the header);
//! `csum_offset` counts from `csum_start`; `gso_size` is the payload size of
//! each segment (the MSS) a super-frame is to be cut into; `hdr_len` is the
//! length of the Ethernet + IP + transport headers of a super-frame (a hint).

use super::tap::VNET_HDR_LEN;
use dataplane::checksum;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the transport checksum is partial; finish
/// it with [`complete_checksum`].
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already verified.
pub const F_DATA_VALID: u8 = 2;
/// Not a super-frame.
pub const GSO_NONE: u8 = 0;
/// An IPv4 TCP super-frame.
pub const GSO_TCPV4: u8 = 1;
/// A UDP super-frame (UFO; obsolete).
pub const GSO_UDP: u8 = 3;
/// An IPv6 TCP super-frame.
pub const GSO_TCPV6: u8 = 4;
/// Flag on `gso_type`: the TCP super-frame has ECN (CWR) set.
pub const GSO_ECN: u8 = 0x80;

/// A decoded virtio-net header. See the module docs for the wire format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_*` bits.
    pub flags: u8,
    /// `GSO_*` value, possibly with [`GSO_ECN`].
    pub gso_type: u8,
    /// Length of the headers of a super-frame, in bytes.
    pub hdr_len: u16,
    /// Segment payload size (MSS) of a super-frame, in bytes.
    pub gso_size: u16,
    /// Where checksumming starts, in bytes from the start of the frame.
    pub csum_start: u16,
    /// Where the checksum field is, in bytes from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Decodes the header at the start of `buf`; `None` if `buf` is shorter
    /// than [`VNET_HDR_LEN`]. The field values are not validated.
    pub fn parse(buf: &[u8]) -> Option<VnetHdr> {
        let b = buf.get(..VNET_HDR_LEN)?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// The header's [`VNET_HDR_LEN`] bytes (`num_buffers` = 0).
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// Writes the header's [`VNET_HDR_LEN`] bytes at the start of `out`.
    /// Returns false, writing nothing, if `out` is shorter than that.
    #[must_use]
    pub fn write(&self, out: &mut [u8]) -> bool {
        match out.get_mut(..VNET_HDR_LEN) {
            Some(dst) => {
                dst.copy_from_slice(&self.to_bytes());
                true
            }
            None => false,
        }
    }

    /// Whether the frame's transport checksum is partial ([`F_NEEDS_CSUM`]).
    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    /// Whether the frame is a super-frame to be segmented.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }
}

/// Finishes a partial (`CHECKSUM_PARTIAL`) transport checksum in `frame`.
///
/// `frame` is the Ethernet frame without the virtio-net header, ending where
/// the transport payload ends (as a TAP delivers it: no trailing padding).
/// `csum_start` counts from the frame's first byte and `csum_offset` from
/// `csum_start`, as in [`VnetHdr`]. The checksum field is expected to hold
/// the folded pseudo-header sum (not complemented), as Linux leaves it.
///
/// Computes the ones'-complement sum of `frame[csum_start..]` (which includes
/// that seed) and stores its complement, big-endian, at
/// `csum_start + csum_offset`; a result of 0 is stored as `0xffff`, like the
/// kernel's `skb_checksum_help` (required for UDP, equivalent for TCP).
///
/// Returns false and leaves `frame` untouched if the field does not lie
/// within `frame[csum_start..]`.
pub fn complete_checksum(frame: &mut [u8], csum_start: usize, csum_offset: usize) -> bool {
    let Some(field) = csum_start.checked_add(csum_offset) else {
        return false;
    };
    match field.checked_add(2) {
        Some(end) if end <= frame.len() => {}
        _ => return false,
    }
    let c = match !checksum::fold(checksum::sum(0, &frame[csum_start..])) {
        0 => 0xffff,
        c => c,
    };
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;
    use dataplane::flow::{TCP, UDP};
    use dataplane::testkit::{self, flags, IpOpts};
    use dataplane::wire::ETH_LEN;

    const SRC: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

    fn frame(proto: u8, segment: &[u8]) -> Vec<u8> {
        testkit::ipv4_frame([2; 6], [4; 6], SRC, DST, proto, IpOpts::default(), segment)
    }

    /// Replaces the checksum at `field` by the folded, non-complemented
    /// pseudo-header sum, as Linux does for `CHECKSUM_PARTIAL`.
    fn make_partial(f: &mut [u8], proto: u8, field: usize) -> u16 {
        let original = u16::from_be_bytes([f[field], f[field + 1]]);
        let len = (f.len() - ETH_LEN - 20) as u16;
        let seed = checksum::fold(checksum::pseudo_header(SRC, DST, proto, len));
        f[field..field + 2].copy_from_slice(&seed.to_be_bytes());
        original
    }

    #[test]
    fn header_round_trip() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut buf = [0xaau8; VNET_HDR_LEN + 3];
        assert!(h.write(&mut buf));
        assert_eq!(&buf[10..12], &[0, 0], "num_buffers is written as 0");
        assert_eq!(buf[VNET_HDR_LEN], 0xaa, "nothing past the header is written");
        assert_eq!(&buf[2..4], &66u16.to_le_bytes());
        assert_eq!(VnetHdr::parse(&buf), Some(h));
        assert!(h.needs_csum() && h.is_gso());
        assert!(!VnetHdr::default().is_gso());
        // num_buffers is ignored on parse.
        buf[10] = 7;
        assert_eq!(VnetHdr::parse(&buf), Some(h));
    }

    #[test]
    fn short_buffers() {
        assert_eq!(VnetHdr::parse(&[0; VNET_HDR_LEN - 1]), None);
        assert_eq!(VnetHdr::parse(&[]), None);
        let mut short = [0x55u8; VNET_HDR_LEN - 1];
        assert!(!VnetHdr { flags: 1, ..VnetHdr::default() }.write(&mut short));
        assert_eq!(short, [0x55; VNET_HDR_LEN - 1]);
    }

    #[test]
    fn completes_udp() {
        let seg = testkit::udp_segment(SRC, 5000, DST, 53, b"hello, partial checksum!!");
        let mut f = frame(UDP, &seg);
        let start = ETH_LEN + 20;
        let original = make_partial(&mut f, UDP, start + 6);
        assert!(!testkit::checksums_ok(&f));
        assert!(complete_checksum(&mut f, start, 6));
        assert!(testkit::checksums_ok(&f));
        assert_eq!(u16::from_be_bytes([f[start + 6], f[start + 7]]), original);
    }

    #[test]
    fn completes_tcp_even_and_odd_length() {
        let seg = testkit::tcp_segment(SRC, 40000, DST, 443, flags::ACK, b"even length payload!");
        let mut f = frame(TCP, &seg);
        let start = ETH_LEN + 20;
        let seg = testkit::tcp_segment(SRC, 40000, DST, 443, flags::ACK | flags::FIN, b"odd length payload!");
        let mut g = frame(TCP, &seg);
        for f in [&mut f, &mut g] {
            let original = make_partial(f, TCP, start + 16);
            assert!(!testkit::checksums_ok(f));
            assert!(complete_checksum(f, start, 16));
            assert!(testkit::checksums_ok(f));
            assert_eq!(u16::from_be_bytes([f[start + 16], f[start + 17]]), original);
        }
    }

    #[test]
    fn out_of_range_offsets() {
        let seg = testkit::udp_segment(SRC, 1, DST, 2, b"x");
        let f = frame(UDP, &seg);
        let n = f.len();
        for (start, off) in [(n, 0), (n - 1, 0), (n - 2, 1), (0, n - 1), (usize::MAX, 0), (1, usize::MAX), (n + 5, 0)] {
            let mut g = f.clone();
            assert!(!complete_checksum(&mut g, start, off), "{start} {off}");
            assert_eq!(g, f);
        }
        // The last two bytes are a valid place for the field.
        let mut g = f.clone();
        assert!(complete_checksum(&mut g, n - 2, 0));
        assert!(!complete_checksum(&mut [], 0, 0));
    }
}
