//! The recyclable lists: FIFO lists of sessions whose connection ended (or
//! that the VPC opened and nobody answered), linked through the sessions
//! themselves; a session is on at most one list (see the module doc of
//! [`super`]).

use super::*;

impl SessionTable {
    /// Puts session `id` at the tail of recyclable list `list`, or takes it
    /// off its list (`None`), keeping its mapping's count of live sessions.
    /// `list` is below [`LISTS`]; a larger one is taken as `LISTS - 1`.
    /// Returns whether the port it uses changed between held by a live
    /// session and not (see [`Removed::port_left_live`]).
    pub fn set_recyclable(&mut self, id: u32, list: Option<u16>) -> bool {
        let was = self.sessions[id as usize].recyclable();
        self.list_remove(id);
        let m = self.sessions[id as usize].mapping;
        if let Some(l) = list {
            let l = l.min(LISTS as u16 - 1);
            let (head, tail, len) = self.lists[l as usize];
            let s = &mut self.sessions[id as usize];
            s.list = l;
            s.list_prev = tail;
            s.list_next = NIL;
            if tail != NIL {
                self.sessions[tail as usize].list_next = id;
            }
            self.lists[l as usize] = (if head == NIL { id } else { head }, id, len + 1);
        }
        if was == list.is_some() {
            return false;
        }
        if m == NIL {
            return true;
        }
        let mp = &mut self.mappings[m as usize];
        if was {
            mp.live += 1;
            mp.live == 1
        } else {
            mp.live -= 1;
            mp.live == 0
        }
    }

    pub(super) fn list_remove(&mut self, id: u32) {
        let s = self.sessions[id as usize];
        if s.list == NIL16 {
            return;
        }
        let (mut head, mut tail, len) = self.lists[s.list as usize];
        if s.list_prev != NIL {
            self.sessions[s.list_prev as usize].list_next = s.list_next;
        } else {
            head = s.list_next;
        }
        if s.list_next != NIL {
            self.sessions[s.list_next as usize].list_prev = s.list_prev;
        } else {
            tail = s.list_prev;
        }
        self.lists[s.list as usize] = (head, tail, len - 1);
        let s = &mut self.sessions[id as usize];
        s.list = NIL16;
        s.list_prev = NIL;
        s.list_next = NIL;
    }

    /// The session that has been on recyclable list `list` longest.
    pub fn list_head(&self, list: u16) -> Option<u32> {
        let h = self.lists.get(usize::from(list))?.0;
        (h != NIL).then_some(h)
    }

    /// The session after `id` on its recyclable list.
    pub fn list_next(&self, id: u32) -> Option<u32> {
        let n = self.sessions[id as usize].list_next;
        (n != NIL).then_some(n)
    }

    /// Sessions on recyclable list `list`.
    pub fn list_len(&self, list: u16) -> u32 {
        self.lists.get(usize::from(list)).map_or(0, |l| l.2)
    }

    /// Recyclable sessions on every list.
    pub fn recyclable_len(&self) -> usize {
        self.lists.iter().map(|l| l.2 as usize).sum()
    }
}
