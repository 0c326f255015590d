//! The TCP session state machine of RFC 7857 §2 (adapted from RFC 6146
//! §3.5.2).
//!
//! "Out" is a segment from an execution environment (the RFC's V6 side),
//! "In" a segment from the VPC (the V4 side). The machine only decides which
//! idle timeout applies; it never drops a segment itself (sequence numbers are
//! not tracked, as in RFC 6146).
//!
//! | state | RFC 6146 name | idle timeout |
//! |---|---|---|
//! | `SynOut` | V6 INIT | transitory (240 s) |
//! | `SynIn` | V4 INIT | incoming SYN (6 s) |
//! | `Established` | ESTABLISHED | established (7440 s) |
//! | `FinOut` | V6 FIN RCV | established |
//! | `FinIn` | V4 FIN RCV | established |
//! | `FinBoth` | V6 FIN + V4 FIN RCV | transitory |
//! | `Reset` | TRANS (after an RST) | transitory (kept ~4 min, RFC 7857 §2.2) |

use crate::config::Timeouts;
use std::time::Duration;

/// Which way a segment travels through the NAT.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Dir {
    /// From an execution environment towards the VPC.
    Out,
    /// From the VPC towards an execution environment.
    In,
}

/// The TCP flags the machine looks at.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// SYN.
    pub syn: bool,
    /// ACK.
    pub ack: bool,
    /// FIN.
    pub fin: bool,
    /// RST.
    pub rst: bool,
}

impl Flags {
    /// Reads the flags byte (offset 13 of a TCP header).
    pub const fn from_byte(b: u8) -> Flags {
        Flags { fin: b & 0x01 != 0, syn: b & 0x02 != 0, rst: b & 0x04 != 0, ack: b & 0x10 != 0 }
    }

    /// Whether this segment may open a session from inside: a SYN without
    /// ACK or RST.
    pub const fn opens(self) -> bool {
        self.syn && !self.ack && !self.rst
    }
}

/// A TCP session's state.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// The environment sent a SYN.
    SynOut,
    /// A SYN arrived from the VPC on an existing mapping (filtering allowed it).
    SynIn,
    /// Both sides have sent a SYN.
    Established,
    /// The environment sent a FIN.
    FinOut,
    /// The VPC side sent a FIN.
    FinIn,
    /// Both sides sent a FIN.
    FinBoth,
    /// An RST was seen.
    Reset,
}

impl State {
    /// The state a session starts in when its first segment travels `dir`.
    pub const fn initial(dir: Dir) -> State {
        match dir {
            Dir::Out => State::SynOut,
            Dir::In => State::SynIn,
        }
    }

    /// The state after a segment with `flags` travels `dir`.
    pub fn next(self, dir: Dir, flags: Flags) -> State {
        use State::*;
        if flags.rst {
            return Reset;
        }
        match (self, dir) {
            (SynOut, Dir::In) | (SynIn, Dir::Out) if flags.syn => Established,
            (Established, Dir::Out) if flags.fin => FinOut,
            (Established, Dir::In) if flags.fin => FinIn,
            (FinOut, Dir::In) | (FinIn, Dir::Out) if flags.fin => FinBoth,
            // RFC 6146: a non-RST segment in TRANS returns to ESTABLISHED.
            (Reset, _) => Established,
            (s, _) => s,
        }
    }

    /// Whether the connection has ended (both FINs, or an RST): the session
    /// only waits out its closing timer, and a new flow may recycle it.
    pub const fn closing(self) -> bool {
        matches!(self, State::FinBoth | State::Reset)
    }

    /// The idle timeout in this state.
    pub fn timeout(self, t: &Timeouts) -> Duration {
        match self {
            State::SynIn => t.tcp_incoming_syn,
            State::Established | State::FinOut | State::FinIn => t.tcp_established,
            State::SynOut | State::FinBoth => t.tcp_transitory,
            State::Reset => t.tcp_reset,
        }
    }

    /// A short name in the style of `conntrack -L`.
    pub const fn name(self) -> &'static str {
        match self {
            State::SynOut => "SYN_SENT",
            State::SynIn => "SYN_RECV",
            State::Established => "ESTABLISHED",
            State::FinOut => "FIN_WAIT",
            State::FinIn => "CLOSE_WAIT",
            State::FinBoth => "TIME_WAIT",
            State::Reset => "CLOSE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: Flags = Flags { syn: true, ack: false, fin: false, rst: false };
    const SYNACK: Flags = Flags { syn: true, ack: true, fin: false, rst: false };
    const ACK: Flags = Flags { syn: false, ack: true, fin: false, rst: false };
    const FIN: Flags = Flags { syn: false, ack: true, fin: true, rst: false };
    const RST: Flags = Flags { syn: false, ack: false, fin: false, rst: true };

    fn run(steps: &[(Dir, Flags)]) -> Vec<State> {
        let mut s = State::initial(steps[0].0);
        let mut out = vec![s];
        for &(d, f) in &steps[1..] {
            s = s.next(d, f);
            out.push(s);
        }
        out
    }

    #[test]
    fn handshake_and_orderly_close() {
        use State::*;
        let trace = run(&[
            (Dir::Out, SYN),
            (Dir::In, SYNACK),
            (Dir::Out, ACK),
            (Dir::Out, FIN),
            (Dir::In, FIN),
            (Dir::Out, ACK),
        ]);
        assert_eq!(trace, [SynOut, Established, Established, FinOut, FinBoth, FinBoth]);
    }

    #[test]
    fn remote_closes_first_and_half_close_keeps_established_timer() {
        use State::*;
        let t = Timeouts::default();
        let trace = run(&[(Dir::Out, SYN), (Dir::In, SYNACK), (Dir::In, FIN), (Dir::Out, ACK)]);
        assert_eq!(trace[3], FinIn);
        assert_eq!(FinIn.timeout(&t), t.tcp_established);
        assert_eq!(FinIn.next(Dir::Out, FIN), FinBoth);
        assert_eq!(FinBoth.timeout(&t), t.tcp_transitory);
    }

    #[test]
    fn simultaneous_open_and_retransmitted_syn() {
        use State::*;
        // Retransmitted SYN stays in SynOut; the remote's bare SYN establishes.
        assert_eq!(run(&[(Dir::Out, SYN), (Dir::Out, SYN), (Dir::In, SYN)]), [SynOut, SynOut, Established]);
        assert_eq!(run(&[(Dir::In, SYN), (Dir::Out, SYN)]), [SynIn, Established]);
    }

    #[test]
    fn rst_then_data_returns_to_established() {
        use State::*;
        let t = Timeouts::default();
        assert_eq!(Established.next(Dir::In, RST), Reset);
        assert_eq!(Reset.timeout(&t), Duration::from_secs(240));
        assert_eq!(Reset.next(Dir::Out, ACK), Established);
        assert_eq!(SynOut.next(Dir::Out, RST), Reset);
    }

    #[test]
    fn default_timers_follow_rfc() {
        let t = Timeouts::default();
        assert_eq!(State::Established.timeout(&t), Duration::from_secs(7440));
        assert_eq!(State::SynOut.timeout(&t), Duration::from_secs(240));
        assert_eq!(State::SynIn.timeout(&t), Duration::from_secs(6));
    }

    #[test]
    fn flags_byte() {
        assert_eq!(Flags::from_byte(0x12), SYNACK);
        assert!(Flags::from_byte(0x02).opens());
        assert!(!Flags::from_byte(0x12).opens());
        assert!(!Flags::from_byte(0x06).opens());
    }
}
