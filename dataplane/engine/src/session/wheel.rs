//! The timer wheel: [`WHEEL_SLOTS`] one-second slots, a session in the slot
//! of its deadline; a session is never expired before its deadline (see the
//! module doc of [`super`]).

use super::*;

impl SessionTable {
    /// Re-slots a session after a state change that may have shortened its
    /// timeout.
    pub fn reschedule(&mut self, id: u32) {
        self.wheel_remove(id);
        let deadline = self.sessions[id as usize].deadline(&self.timeouts);
        self.wheel_insert(id, deadline);
    }

    /// The wheel slot of `deadline`: rounded up to the next whole second,
    /// and kept within the wheel.
    #[inline]
    pub(super) fn wheel_slot(&self, deadline: Instant) -> usize {
        let due = deadline.millis().div_ceil(1000);
        let due = due.clamp(self.wheel_now + 1, self.wheel_now + WHEEL_SLOTS as u64 - 1);
        (due as usize) & (WHEEL_SLOTS - 1)
    }

    pub(super) fn wheel_insert(&mut self, id: u32, deadline: Instant) {
        let slot = self.wheel_slot(deadline);
        let head = self.wheel[slot];
        let l = &mut self.links[id as usize];
        l.wheel_slot = slot as u16;
        l.wheel_prev = NIL;
        l.wheel_next = head;
        if head != NIL {
            self.links[head as usize].wheel_prev = id;
        }
        self.wheel[slot] = id;
    }

    pub(super) fn wheel_remove(&mut self, id: u32) {
        let l = self.links[id as usize];
        if l.wheel_slot == NIL16 {
            return;
        }
        if l.wheel_prev != NIL {
            self.links[l.wheel_prev as usize].wheel_next = l.wheel_next;
        } else {
            self.wheel[l.wheel_slot as usize] = l.wheel_next;
        }
        if l.wheel_next != NIL {
            self.links[l.wheel_next as usize].wheel_prev = l.wheel_prev;
        }
        self.links[id as usize].wheel_slot = NIL16;
    }

    /// When [`SessionTable::expire`] next has work: the next second boundary
    /// while any session lives.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_empty() {
            None
        } else {
            Some(Instant::from_secs(self.wheel_now + 1))
        }
    }

    /// Expires every session whose deadline is at or before `now`, calling
    /// `gone(session, removed)` for each after it left the table (the
    /// session as it was, still showing whether it was recyclable).
    /// Returns how many expired.
    pub fn expire(&mut self, now: Instant, mut gone: impl FnMut(&Session, Removed)) -> usize {
        let target = now.secs();
        if target <= self.wheel_now {
            return 0;
        }
        let from = if target - self.wheel_now > WHEEL_SLOTS as u64 {
            target - WHEEL_SLOTS as u64 + 1
        } else {
            self.wheel_now + 1
        };
        self.wheel_now = target;
        let mut expired = 0;
        for t in from..=target {
            let slot = (t as usize) & (WHEEL_SLOTS - 1);
            let mut id = std::mem::replace(&mut self.wheel[slot], NIL);
            while id != NIL {
                let s = self.sessions[id as usize];
                let next = self.links[id as usize].wheel_next;
                self.links[id as usize].wheel_slot = NIL16;
                let deadline = s.deadline(&self.timeouts);
                if deadline <= now {
                    let m = self.remove(id);
                    gone(&s, m);
                    expired += 1;
                } else {
                    self.wheel_insert(id, deadline);
                }
                id = next;
            }
        }
        expired
    }
}
