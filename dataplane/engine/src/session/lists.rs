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
        let m = self.links[id as usize].mapping;
        if let Some(l) = list {
            let l = l.min(LISTS as u16 - 1);
            let (head, tail, len) = self.lists[l as usize];
            self.sessions[id as usize].list = l;
            let k = &mut self.links[id as usize];
            k.list_prev = tail;
            k.list_next = NIL;
            if tail != NIL {
                self.links[tail as usize].list_next = id;
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
        let list = self.sessions[id as usize].list;
        if list == NIL16 {
            return;
        }
        let l = self.links[id as usize];
        let (mut head, mut tail, len) = self.lists[list as usize];
        if l.list_prev != NIL {
            self.links[l.list_prev as usize].list_next = l.list_next;
        } else {
            head = l.list_next;
        }
        if l.list_next != NIL {
            self.links[l.list_next as usize].list_prev = l.list_prev;
        } else {
            tail = l.list_prev;
        }
        self.lists[list as usize] = (head, tail, len - 1);
        self.sessions[id as usize].list = NIL16;
        let l = &mut self.links[id as usize];
        l.list_prev = NIL;
        l.list_next = NIL;
    }

    /// The session that has been on recyclable list `list` longest.
    pub fn list_head(&self, list: u16) -> Option<u32> {
        let h = self.lists.get(usize::from(list))?.0;
        (h != NIL).then_some(h)
    }

    /// The session after `id` on its recyclable list.
    pub fn list_next(&self, id: u32) -> Option<u32> {
        let n = self.links[id as usize].list_next;
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
