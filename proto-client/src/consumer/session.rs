//! Fetch sessions (KIP-227), per broker. Pure.
//!
//! Without a session every fetch lists every partition (a full fetch). With
//! one, the broker remembers the partitions and their positions, and a
//! request lists only what changed (incremental): partitions whose offset
//! or limits moved, and `forgotten` ones to drop. The broker answers only
//! for partitions with data or errors.
//!
//! ```text
//!  no session ──full fetch, epoch 0──▶ broker gives id ≠ 0 ──▶ session (epoch 1, 2, …)
//!      ▲          broker gives id 0: it has no sessions; stay full │
//!      └────── FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH, ────┘
//!              any error, or a request that never got its answer
//! ```
//!
//! A partition that cannot be fetched right now (paused, data waiting for
//! the application) is forgotten, not left in the session: the broker would
//! keep answering for it at its old position.

use std::collections::BTreeMap;

use crate::TopicPartition;

/// What a partition is fetched at. A change in any field puts the
/// partition into the next incremental request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FetchState {
    pub(crate) offset: i64,
    pub(crate) max_bytes: i32,
    /// The leader epoch from the metadata (-1: unknown).
    pub(crate) current_leader_epoch: i32,
    /// The leader epoch of the record before `offset` (-1: unknown), for
    /// the broker to check the logs agree (KIP-320).
    pub(crate) last_fetched_epoch: i32,
}

/// The session fields and partitions of one fetch request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionRequest {
    pub(crate) session_id: i32,
    pub(crate) session_epoch: i32,
    pub(crate) partitions: Vec<(TopicPartition, FetchState)>,
    pub(crate) forgotten: Vec<TopicPartition>,
}

/// One broker's fetch session, as the client sees it.
#[derive(Debug, Default)]
pub(crate) struct FetchSession {
    id: i32,
    epoch: i32,
    /// What the broker's session holds.
    sent: BTreeMap<TopicPartition, FetchState>,
    /// The last request, until its answer comes back.
    pending: Option<SessionRequest>,
}

impl FetchSession {
    /// The request for `wanted`: every partition to fetch now.
    pub(crate) fn plan(&mut self, wanted: &BTreeMap<TopicPartition, FetchState>) -> SessionRequest {
        if self.pending.is_some() {
            // The previous request never got an answer: its effect on the
            // session is unknown. Start over.
            self.reset();
        }
        let request = if self.id == 0 {
            // Full fetch; epoch 0 asks the broker to open a session.
            SessionRequest {
                session_id: 0,
                session_epoch: 0,
                partitions: wanted.iter().map(|(tp, state)| (tp.clone(), *state)).collect(),
                forgotten: Vec::new(),
            }
        } else {
            SessionRequest {
                session_id: self.id,
                session_epoch: self.epoch,
                partitions: wanted
                    .iter()
                    .filter(|(tp, state)| self.sent.get(*tp) != Some(*state))
                    .map(|(tp, state)| (tp.clone(), *state))
                    .collect(),
                forgotten: self.sent.keys().filter(|tp| !wanted.contains_key(*tp)).cloned().collect(),
            }
        };
        self.pending = Some(request.clone());
        request
    }

    /// Applies the answer to the last request: its session id and top-level
    /// error code (0 for none).
    pub(crate) fn on_response(&mut self, session_id: i32, error_code: i16) {
        let Some(request) = self.pending.take() else { return };
        if error_code != 0 {
            // FETCH_SESSION_ID_NOT_FOUND (70), INVALID_FETCH_SESSION_EPOCH
            // (71), or anything else: the next fetch is a full one.
            self.reset();
            return;
        }
        if request.session_epoch == 0 {
            self.id = session_id;
            self.epoch = 1;
            self.sent = request.partitions.into_iter().collect();
            if self.id == 0 {
                // The broker keeps no sessions (Tansu, librdkafka's mock).
                self.sent.clear();
            }
            return;
        }
        for tp in &request.forgotten {
            self.sent.remove(tp);
        }
        self.sent.extend(request.partitions);
        // Epochs go 1..=i32::MAX and wrap to 1; 0 and -1 mean something else.
        self.epoch = if self.epoch == i32::MAX { 1 } else { self.epoch + 1 };
    }

    /// The request failed without an answer.
    pub(crate) fn on_failure(&mut self) {
        self.reset();
    }

    fn reset(&mut self) {
        *self = FetchSession::default();
    }

    /// Whether the broker holds a session for us.
    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        self.id != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    fn wanted(entries: &[(i32, i64)]) -> BTreeMap<TopicPartition, FetchState> {
        entries.iter().map(|(p, offset)| (tp(*p), state(*offset))).collect()
    }

    fn state(offset: i64) -> FetchState {
        FetchState { offset, max_bytes: 1024, current_leader_epoch: -1, last_fetched_epoch: -1 }
    }

    #[test]
    fn a_broker_without_sessions_gets_full_fetches() {
        let mut session = FetchSession::default();
        for round in 0..3 {
            let request = session.plan(&wanted(&[(0, round), (1, 5)]));
            assert_eq!((request.session_id, request.session_epoch), (0, 0));
            assert_eq!(request.partitions.len(), 2, "every partition, every time");
            session.on_response(0, 0);
            assert!(!session.is_open());
        }
    }

    #[test]
    fn incremental_requests_carry_only_changes_and_forget_the_rest() {
        let mut session = FetchSession::default();
        let first = session.plan(&wanted(&[(0, 0), (1, 0), (2, 0)]));
        assert_eq!(first.session_epoch, 0);
        session.on_response(77, 0);
        assert!(session.is_open());

        // Partition 0 advanced, 2 is paused (not wanted), 1 unchanged.
        let second = session.plan(&wanted(&[(0, 10), (1, 0)]));
        assert_eq!((second.session_id, second.session_epoch), (77, 1));
        assert_eq!(second.partitions, [(tp(0), state(10))]);
        assert_eq!(second.forgotten, [tp(2)]);
        session.on_response(77, 0);

        // Partition 2 comes back, nothing else changed.
        let third = session.plan(&wanted(&[(0, 10), (1, 0), (2, 4)]));
        assert_eq!(third.session_epoch, 2);
        assert_eq!(third.partitions, [(tp(2), state(4))]);
        assert!(third.forgotten.is_empty());
    }

    #[test]
    fn errors_and_lost_answers_fall_back_to_a_full_fetch() {
        let mut session = FetchSession::default();
        session.plan(&wanted(&[(0, 0)]));
        session.on_response(5, 0);
        session.plan(&wanted(&[(0, 3)]));
        session.on_response(5, 71); // INVALID_FETCH_SESSION_EPOCH
        let request = session.plan(&wanted(&[(0, 3)]));
        assert_eq!((request.session_id, request.session_epoch), (0, 0));

        session.on_response(6, 0);
        session.plan(&wanted(&[(0, 4)]));
        session.on_failure();
        assert_eq!(session.plan(&wanted(&[(0, 4)])).session_epoch, 0);
        // An unanswered request also resets when the next one is planned.
        let mut session = FetchSession::default();
        session.plan(&wanted(&[(0, 0)]));
        session.on_response(9, 0);
        session.plan(&wanted(&[(0, 1)]));
        assert_eq!(session.plan(&wanted(&[(0, 1)])).session_epoch, 0);
    }

    #[test]
    fn a_new_last_fetched_epoch_is_a_change() {
        let mut session = FetchSession::default();
        session.plan(&wanted(&[(0, 10)]));
        session.on_response(8, 0);
        let mut moved = wanted(&[(0, 10)]);
        moved.get_mut(&tp(0)).unwrap().last_fetched_epoch = 3;
        assert_eq!(session.plan(&moved).partitions.len(), 1);
    }

    #[test]
    fn the_epoch_wraps_to_one() {
        let mut session = FetchSession { id: 3, epoch: i32::MAX, ..FetchSession::default() };
        session.plan(&wanted(&[(0, 0)]));
        session.on_response(3, 0);
        assert_eq!(session.epoch, 1);
    }
}
