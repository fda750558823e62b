//! Which calls of an async function may run, and which finished ones may
//! be emitted (pure: no IO, no clock).
//!
//! Records are admitted in offset order per input partition. Each belongs
//! to a lane by the [`Order`]: one lane per partition (`Partition`), per
//! key within a partition (`Key`), or none (`Input`, `Unordered`, keyless
//! records with [`Keyless::Unordered`]). A lane runs one call at a time,
//! in admission order; records of different lanes run concurrently, up to
//! the concurrency. A finished call is emitted at once, except under
//! `Input`, where a partition's calls are emitted in offset order (a call
//! that finished waits for the ones before it).
//!
//! The driver admits records while [`Scheduler::has_room`] (a bound on
//! records and on their bytes), then takes
//! [`Scheduler::next_emit`] (outputs to send, in order) before
//! [`Scheduler::next_start`] (calls to start): a lane's next call starts
//! only after the outputs of the one before it were handed to the
//! producer, so a key's outputs leave in input order.
//!
//! A partition given up ([`Scheduler::remove`]) drops what it held; its
//! calls still under way keep their concurrency slot until they finish,
//! and their results are dropped.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

/// How the calls of an async function are ordered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Order {
    /// Calls overlap, up to the concurrency; each partition's outputs
    /// leave in input order (a slow call holds back the outputs of the
    /// calls after it in its partition).
    #[default]
    Input,
    /// One call at a time per input partition, in offset order.
    Partition,
    /// One call at a time per key (within its partition): records with the
    /// same key never run at once and their outputs leave in input order;
    /// different keys run concurrently, across and inside partitions.
    Key(Keyless),
    /// Calls overlap; each record's outputs leave when its call finishes.
    Unordered,
}

/// How records without a key are ordered under [`Order::Key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Keyless {
    /// The keyless records of a partition run one at a time, in order.
    #[default]
    Partition,
    /// Keyless records run concurrently, in no order.
    Unordered,
}

/// A record in the scheduler: its input partition, the generation of that
/// partition's assignment, and the offset it is tracked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Id {
    pub(crate) partition: i32,
    pub(crate) generation: u64,
    pub(crate) offset: i64,
}

/// What is admitted: a call to start, or a record already finished (it
/// could not be read; its failure is emitted in its turn).
pub(crate) enum Admit<C, R> {
    Call(C),
    Done(R),
}

/// The lane a record runs in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Lane {
    Partition,
    Key(Bytes),
}

enum State<C, R> {
    /// Waiting for its lane or for a concurrency slot.
    Waiting(C),
    Running,
    /// Finished, waiting for the records before it (`Input`).
    Finished(R),
    /// Emitted; removed once it reaches the front.
    Emitted,
}

/// What records hold: how many, and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) records: usize,
    pub(crate) bytes: usize,
}

impl Held {
    fn add(&mut self, bytes: usize) {
        self.records += 1;
        self.bytes += bytes;
    }

    fn sub(&mut self, bytes: usize) {
        self.records -= 1;
        self.bytes -= bytes;
    }
}

struct Slot<K, C, R> {
    offset: i64,
    bytes: usize,
    lane: Option<Lane>,
    kept: Option<K>,
    state: State<C, R>,
}

struct Partition<K, C, R> {
    generation: u64,
    /// Admitted records in offset order.
    slots: VecDeque<Slot<K, C, R>>,
    /// Per lane, the offsets admitted and not finished; the front is the
    /// one running (or ready to).
    lanes: HashMap<Lane, VecDeque<i64>>,
    /// Slots not yet emitted.
    held: Held,
}

impl<K, C, R> Partition<K, C, R> {
    fn index(&self, offset: i64) -> Option<usize> {
        self.slots.binary_search_by_key(&offset, |s| s.offset).ok()
    }
}

/// The scheduler. `K` is what the driver keeps with a record until it is
/// emitted (the raw record), `C` what a call starts from (the typed
/// input), `R` a call's result.
pub(crate) struct Scheduler<K, C, R> {
    order: Order,
    concurrency: usize,
    window: Held,
    partitions: HashMap<i32, Partition<K, C, R>>,
    /// Records whose lane is free, waiting for a concurrency slot, in the
    /// order they became ready (stale entries are skipped).
    ready: VecDeque<Id>,
    emits: VecDeque<(Id, K, R)>,
    /// Calls under way, of current partitions or of ones given up.
    running: usize,
    /// Records held (admitted, not emitted) in current partitions.
    held: Held,
}

impl<K, C, R> Scheduler<K, C, R> {
    /// At most `concurrency` calls run at once (at least 1); records are
    /// admitted while fewer than `window.records` (at least the
    /// concurrency) and `window.bytes` are held.
    pub(crate) fn new(order: Order, concurrency: usize, window: Held) -> Self {
        let concurrency = concurrency.max(1);
        Scheduler {
            order,
            concurrency,
            window: Held { records: window.records.max(concurrency), bytes: window.bytes },
            partitions: HashMap::new(),
            ready: VecDeque::new(),
            emits: VecDeque::new(),
            running: 0,
            held: Held::default(),
        }
    }

    /// A new assignment of `partition` (replacing what an older one held).
    pub(crate) fn assign(&mut self, partition: i32, generation: u64) {
        self.remove(partition);
        let fresh = Partition { generation, slots: VecDeque::new(), lanes: HashMap::new(), held: Held::default() };
        self.partitions.insert(partition, fresh);
    }

    /// Forgets a partition given up: what it held is dropped; its calls
    /// under way finish into nothing. Returns what it held.
    pub(crate) fn remove(&mut self, partition: i32) -> Held {
        let Some(gone) = self.partitions.remove(&partition) else { return Held::default() };
        self.held.records -= gone.held.records;
        self.held.bytes -= gone.held.bytes;
        self.emits.retain(|(id, _, _)| id.partition != partition);
        gone.held
    }

    /// Whether another record may be admitted.
    pub(crate) fn has_room(&self) -> bool {
        self.held.records < self.window.records && self.held.bytes < self.window.bytes
    }

    /// What is held (admitted and not emitted), in all partitions.
    pub(crate) fn held(&self) -> Held {
        self.held
    }

    /// What `partition` holds.
    pub(crate) fn held_in(&self, partition: i32) -> Held {
        self.partitions.get(&partition).map_or(Held::default(), |p| p.held)
    }

    /// Calls under way.
    #[cfg(test)]
    pub(crate) fn running(&self) -> usize {
        self.running
    }

    fn lane(&self, key: Option<&Bytes>) -> Option<Lane> {
        match (&self.order, key) {
            (Order::Input | Order::Unordered, _) | (Order::Key(Keyless::Unordered), None) => None,
            (Order::Partition, _) | (Order::Key(Keyless::Partition), None) => Some(Lane::Partition),
            (Order::Key(_), Some(key)) => Some(Lane::Key(key.clone())),
        }
    }

    /// Admits a record of an assigned partition, offsets increasing; `key`
    /// is its raw key, `bytes` its size. Returns `false` (and keeps nothing) when the
    /// partition is not assigned under `id.generation` or the offset does
    /// not follow the last one.
    pub(crate) fn admit(&mut self, id: Id, key: Option<&Bytes>, bytes: usize, kept: K, what: Admit<C, R>) -> bool {
        let lane = match &what {
            Admit::Call(_) => self.lane(key),
            Admit::Done(_) => None,
        };
        let input_order = self.order == Order::Input;
        let Some(part) = self.partitions.get_mut(&id.partition) else { return false };
        if part.generation != id.generation || part.slots.back().is_some_and(|s| s.offset >= id.offset) {
            return false;
        }
        match what {
            Admit::Done(result) => {
                if input_order && !part.slots.is_empty() {
                    part.held.add(bytes);
                    self.held.add(bytes);
                    let state = State::Finished(result);
                    part.slots.push_back(Slot { offset: id.offset, bytes, lane, kept: Some(kept), state });
                } else {
                    self.emits.push_back((id, kept, result));
                }
            }
            Admit::Call(call) => {
                let free = match &lane {
                    None => true,
                    Some(lane) => {
                        let queue = part.lanes.entry(lane.clone()).or_default();
                        queue.push_back(id.offset);
                        queue.len() == 1
                    }
                };
                part.held.add(bytes);
                self.held.add(bytes);
                let state = State::Waiting(call);
                part.slots.push_back(Slot { offset: id.offset, bytes, lane, kept: Some(kept), state });
                if free {
                    self.ready.push_back(id);
                }
            }
        }
        true
    }

    /// The next call to start, if a concurrency slot is free.
    pub(crate) fn next_start(&mut self) -> Option<(Id, C)> {
        while self.running < self.concurrency {
            let id = self.ready.pop_front()?;
            let Some(part) = self.partitions.get_mut(&id.partition) else { continue };
            if part.generation != id.generation {
                continue;
            }
            let Some(index) = part.index(id.offset) else { continue };
            let slot = &mut part.slots[index];
            if !matches!(slot.state, State::Waiting(_)) {
                continue;
            }
            let State::Waiting(call) = std::mem::replace(&mut slot.state, State::Running) else { unreachable!() };
            self.running += 1;
            return Some((id, call));
        }
        None
    }

    /// A call started by [`Self::next_start`] finished. Its lane's next
    /// record becomes ready; what may be emitted now is queued for
    /// [`Self::next_emit`].
    pub(crate) fn finished(&mut self, id: Id, result: R) {
        self.running = self.running.saturating_sub(1);
        let input_order = self.order == Order::Input;
        let Some(part) = self.partitions.get_mut(&id.partition) else { return };
        if part.generation != id.generation {
            return;
        }
        let Some(index) = part.index(id.offset) else { return };
        if !matches!(part.slots[index].state, State::Running) {
            return;
        }
        if let Some(lane) = part.slots[index].lane.clone()
            && let Some(queue) = part.lanes.get_mut(&lane)
        {
            queue.pop_front();
            match queue.front() {
                Some(&next) => self.ready.push_back(Id { offset: next, ..id }),
                None => {
                    part.lanes.remove(&lane);
                }
            }
        }
        if input_order {
            part.slots[index].state = State::Finished(result);
            // The finished prefix leaves in offset order.
            while part.slots.front().is_some_and(|s| matches!(s.state, State::Finished(_))) {
                let Some(slot) = part.slots.pop_front() else { break };
                let State::Finished(result) = slot.state else { unreachable!() };
                part.held.sub(slot.bytes);
                self.held.sub(slot.bytes);
                let kept = slot.kept.expect("kept until emitted");
                self.emits.push_back((Id { offset: slot.offset, ..id }, kept, result));
            }
        } else {
            let slot = &mut part.slots[index];
            slot.state = State::Emitted;
            let kept = slot.kept.take().expect("kept until emitted");
            part.held.sub(slot.bytes);
            self.held.sub(slot.bytes);
            self.emits.push_back((id, kept, result));
            while part.slots.front().is_some_and(|s| matches!(s.state, State::Emitted)) {
                part.slots.pop_front();
            }
        }
    }

    /// The next finished record to emit, in the order they may leave.
    pub(crate) fn next_emit(&mut self) -> Option<(Id, K, R)> {
        self.emits.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type S = Scheduler<&'static str, &'static str, i32>;

    fn window(records: usize) -> Held {
        Held { records, bytes: usize::MAX }
    }

    fn id(partition: i32, offset: i64) -> Id {
        Id { partition, generation: 1, offset }
    }

    fn starts(s: &mut S) -> Vec<i64> {
        std::iter::from_fn(|| s.next_start()).map(|(id, _)| id.offset).collect()
    }

    fn emits(s: &mut S) -> Vec<(i64, i32)> {
        std::iter::from_fn(|| s.next_emit()).map(|(id, _, r)| (id.offset, r)).collect()
    }

    fn admit(s: &mut S, partition: i32, offset: i64, key: Option<&str>) -> bool {
        let key = key.map(|k| Bytes::copy_from_slice(k.as_bytes()));
        s.admit(id(partition, offset), key.as_ref(), 10, "record", Admit::Call("input"))
    }

    #[test]
    fn a_key_runs_one_call_at_a_time_and_other_keys_run_meanwhile() {
        let mut s = S::new(Order::Key(Keyless::Partition), 8, window(32));
        s.assign(0, 1);
        for (offset, key) in [(0, "a"), (1, "b"), (2, "a"), (3, "c"), (4, "a")] {
            assert!(admit(&mut s, 0, offset, Some(key)));
        }
        assert_eq!(starts(&mut s), [0, 1, 3], "the second and third a wait for the first");
        s.finished(id(0, 3), 30);
        assert_eq!(emits(&mut s), [(3, 30)], "c leaves before a and b: another key");
        assert_eq!(starts(&mut s), Vec::<i64>::new());
        s.finished(id(0, 0), 0);
        assert_eq!(emits(&mut s), [(0, 0)]);
        assert_eq!(starts(&mut s), [2], "a's next call starts after its outputs were taken");
        s.finished(id(0, 2), 20);
        s.finished(id(0, 1), 10);
        assert_eq!(emits(&mut s), [(2, 20), (1, 10)]);
        assert_eq!(starts(&mut s), [4]);
        s.finished(id(0, 4), 40);
        assert_eq!(emits(&mut s), [(4, 40)]);
        assert_eq!((s.held(), s.running()), (Held::default(), 0));
    }

    #[test]
    fn the_same_key_in_two_partitions_is_two_lanes() {
        let mut s = S::new(Order::Key(Keyless::Partition), 8, window(32));
        s.assign(0, 1);
        s.assign(1, 1);
        assert!(admit(&mut s, 0, 5, Some("a")));
        assert!(admit(&mut s, 1, 5, Some("a")));
        assert_eq!(starts(&mut s), [5, 5]);
    }

    #[test]
    fn keyless_records_follow_their_choice() {
        let mut s = S::new(Order::Key(Keyless::Partition), 8, window(32));
        s.assign(0, 1);
        for offset in 0..3 {
            assert!(admit(&mut s, 0, offset, None));
        }
        assert_eq!(starts(&mut s), [0], "one keyless call at a time in a partition");
        let mut s = S::new(Order::Key(Keyless::Unordered), 8, window(32));
        s.assign(0, 1);
        for offset in 0..3 {
            assert!(admit(&mut s, 0, offset, None));
        }
        assert_eq!(starts(&mut s), [0, 1, 2]);
    }

    #[test]
    fn partition_order_runs_one_call_per_partition() {
        let mut s = S::new(Order::Partition, 8, window(32));
        s.assign(0, 1);
        s.assign(1, 1);
        for offset in 0..3 {
            assert!(admit(&mut s, 0, offset, Some("a")));
            assert!(admit(&mut s, 1, offset, Some(["x", "y", "z"][offset as usize])));
        }
        assert_eq!(starts(&mut s), [0, 0]);
        s.finished(Id { partition: 1, generation: 1, offset: 0 }, 1);
        assert_eq!(starts(&mut s), [1]);
    }

    #[test]
    fn input_order_emits_a_partitions_calls_in_offset_order() {
        let mut s = S::new(Order::Input, 8, window(8));
        s.assign(0, 1);
        for offset in 0..3 {
            assert!(admit(&mut s, 0, offset, Some("k")));
        }
        assert_eq!(starts(&mut s), [0, 1, 2], "calls overlap, same key or not");
        s.finished(id(0, 2), 2);
        s.finished(id(0, 1), 1);
        assert_eq!(emits(&mut s), Vec::<(i64, i32)>::new(), "0 is not done");
        // A record that could not be read waits its turn too.
        assert!(s.admit(id(0, 3), None, 10, "record", Admit::Done(3)));
        s.finished(id(0, 0), 0);
        assert_eq!(emits(&mut s), [(0, 0), (1, 1), (2, 2), (3, 3)]);
        assert!(s.admit(id(0, 4), None, 10, "record", Admit::Done(4)));
        assert_eq!(emits(&mut s), [(4, 4)], "nothing before it: emitted at once");
    }

    #[test]
    fn unordered_emits_as_calls_finish() {
        let mut s = S::new(Order::Unordered, 8, window(8));
        s.assign(0, 1);
        for offset in 0..3 {
            assert!(admit(&mut s, 0, offset, None));
        }
        assert_eq!(starts(&mut s), [0, 1, 2]);
        s.finished(id(0, 2), 2);
        s.finished(id(0, 0), 0);
        assert_eq!(emits(&mut s), [(2, 2), (0, 0)]);
    }

    #[test]
    fn concurrency_and_window_bound_calls_and_records() {
        let mut s = S::new(Order::Key(Keyless::Partition), 2, window(3));
        s.assign(0, 1);
        for (offset, key) in [(0, "a"), (1, "b"), (2, "c")] {
            assert!(admit(&mut s, 0, offset, Some(key)));
        }
        assert!(!s.has_room(), "three records held");
        assert_eq!(starts(&mut s), [0, 1], "two calls at once");
        s.finished(id(0, 1), 1);
        assert_eq!(starts(&mut s), [2], "c got b's slot");
        assert_eq!(emits(&mut s), [(1, 1)]);
        assert!(s.has_room());
    }

    #[test]
    fn bytes_bound_what_is_held() {
        let mut s = S::new(Order::Key(Keyless::Partition), 8, Held { records: 100, bytes: 25 });
        s.assign(0, 1);
        assert!(admit(&mut s, 0, 0, Some("a")));
        assert!(admit(&mut s, 0, 1, Some("a")));
        assert!(s.has_room(), "20 bytes of 25");
        assert!(admit(&mut s, 0, 2, Some("a")));
        assert!(!s.has_room(), "30 bytes");
        assert_eq!(s.held_in(0), Held { records: 3, bytes: 30 });
        assert_eq!(starts(&mut s), [0]);
        s.finished(id(0, 0), 0);
        assert!(s.has_room());
    }

    #[test]
    fn a_partition_given_up_drops_what_it_held_and_its_calls_finish_into_nothing() {
        let mut s = S::new(Order::Key(Keyless::Partition), 2, window(8));
        s.assign(0, 1);
        s.assign(1, 1);
        assert!(admit(&mut s, 0, 0, Some("a")));
        assert!(admit(&mut s, 0, 1, Some("b")));
        assert!(admit(&mut s, 1, 0, Some("c")));
        assert_eq!(starts(&mut s), [0, 1]);
        assert_eq!(s.remove(0), Held { records: 2, bytes: 20 });
        assert_eq!(s.held(), Held { records: 1, bytes: 10 });
        assert_eq!(starts(&mut s), Vec::<i64>::new(), "partition 0's calls still hold their slots");
        s.finished(id(0, 0), 0);
        assert_eq!(emits(&mut s), Vec::<(i64, i32)>::new(), "a result of a partition given up");
        assert_eq!(starts(&mut s), [0], "partition 1's record got the slot");
        // Reassigned: the new generation starts over; the old one's last
        // call finishing moves nothing.
        s.assign(0, 2);
        assert!(s.admit(Id { partition: 0, generation: 2, offset: 1 }, None, 10, "record", Admit::Call("input")));
        s.finished(id(0, 1), 1);
        assert_eq!(emits(&mut s), Vec::<(i64, i32)>::new());
        assert!(!admit(&mut s, 0, 2, None), "generation 1 is gone");
        assert_eq!(s.running(), 1);
        assert_eq!(starts(&mut s), [1]);
    }

    #[test]
    fn offsets_must_increase() {
        let mut s = S::new(Order::Unordered, 2, window(8));
        s.assign(0, 1);
        assert!(admit(&mut s, 0, 5, None));
        assert!(!admit(&mut s, 0, 5, None));
        assert!(!admit(&mut s, 3, 0, None), "not assigned");
    }

    proptest::proptest! {
        /// Random keys over two partitions, calls finishing in a random
        /// order: a key never runs twice at once, a key's records leave in
        /// offset order, at most `concurrency` run, and every record leaves
        /// exactly once.
        #[test]
        fn keys_never_overlap_and_leave_in_order(
            keys in proptest::collection::vec((0i32..2, proptest::option::of(0u8..5)), 1..80),
            picks in proptest::collection::vec(proptest::prelude::any::<u16>(), 0..400),
            concurrency in 1usize..6,
        ) {
            let mut s: Scheduler<Option<u8>, (), ()> = Scheduler::new(Order::Key(Keyless::Partition), concurrency, window(1000));
            s.assign(0, 1);
            s.assign(1, 1);
            let mut next_offset = [0i64; 2];
            let mut running: Vec<(Id, Option<u8>)> = Vec::new();
            let mut left: HashMap<(i32, Option<u8>), Vec<i64>> = HashMap::new();
            for (partition, key) in &keys {
                let offset = next_offset[*partition as usize];
                next_offset[*partition as usize] += 1;
                let raw = key.map(|k| Bytes::from(vec![k]));
                let id = Id { partition: *partition, generation: 1, offset };
                let admitted = s.admit(id, raw.as_ref(), 1, *key, Admit::Call(()));
                proptest::prop_assert!(admitted);
                left.entry((*partition, *key)).or_default().push(offset);
            }
            let mut picks = picks.into_iter();
            loop {
                while let Some((id, ())) = s.next_start() {
                    let key = keys.iter().filter(|(p, _)| *p == id.partition).nth(id.offset as usize).unwrap().1;
                    proptest::prop_assert!(!running.iter().any(|(r, k)| r.partition == id.partition && *k == key),
                        "key {:?} of partition {} runs twice", key, id.partition);
                    running.push((id, key));
                }
                proptest::prop_assert!(running.len() <= concurrency);
                if running.is_empty() {
                    break;
                }
                let at = picks.next().unwrap_or(0) as usize % running.len();
                let (id, _) = running.swap_remove(at);
                s.finished(id, ());
                while let Some((id, key, ())) = s.next_emit() {
                    let expected = left.get_mut(&(id.partition, key)).unwrap();
                    proptest::prop_assert_eq!(expected.first().copied(), Some(id.offset), "out of order");
                    expected.remove(0);
                }
            }
            proptest::prop_assert!(left.values().all(Vec::is_empty), "every record left");
        }
    }
}
