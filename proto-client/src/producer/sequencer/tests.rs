use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;
use crate::records::batch::BatchBuilder;

/// The broker the tests' batches go to.
const LEADER: i32 = 1;

fn config(max_in_flight: usize) -> SequencerConfig {
    SequencerConfig {
        transactional: false,
        idempotent: true,
        acks_all: true,
        max_in_flight,
        delivery_timeout: Duration::from_secs(60),
        retry_backoff: Duration::from_millis(100),
        retry_backoff_max: Duration::from_secs(1),
    }
}

fn ready(max_in_flight: usize) -> Sequencer {
    let mut sequencer = Sequencer::new(config(max_in_flight));
    assert!(sequencer.wants_producer_id());
    assert!(sequencer.set_producer_id(1000, 0).is_empty());
    sequencer
}

/// Ready, and the broker has acknowledged a batch of partitions 0 and 1
/// under the producer id: up to `max_in_flight` batches each.
fn confirmed(max_in_flight: usize) -> Sequencer {
    let mut sequencer = ready(max_in_flight);
    for partition in 0..2 {
        sequencer.state(&topic(), partition).confirmed = true;
    }
    sequencer
}

fn topic() -> Arc<str> {
    Arc::from("t")
}

fn batch(partition: i32, number: u64, records: i32, created: Instant) -> ProducerBatch {
    let mut builder = BatchBuilder::new(0);
    for i in 0..records {
        builder.append(i64::from(i), None, Some(b"v"), &[]);
    }
    ProducerBatch::closed(topic(), partition, number, builder, DeliveryGuard::new(partition), created, 10)
}

fn written(offset: i64) -> BatchResult {
    BatchResult::Written { base_offset: Some(offset), log_append_time: None }
}

fn rejected(code: ResponseError) -> BatchResult {
    BatchResult::Rejected { code, message: None }
}

fn lost() -> BatchResult {
    BatchResult::Lost(Error::Closed)
}

/// Numbers of finished batches are read back through their deliveries'
/// partition field; here we only need counts and outcomes.
fn outcomes(finished: &[Finished]) -> Vec<Result<Option<i64>, String>> {
    finished.iter().map(|f| f.outcome.as_ref().map(|a| a.base_offset).map_err(|e| e.to_string())).collect()
}

#[test]
fn sequences_are_contiguous_and_results_complete_in_creation_order() {
    let now = Instant::now();
    let mut sequencer = confirmed(5);
    let t = topic();
    let mut batches = vec![batch(0, 0, 5, now), batch(0, 1, 3, now), batch(0, 2, 2, now)];
    let mut sequences = Vec::new();
    for b in &mut batches {
        assert!(sequencer.can_send_new(&t, 0, LEADER));
        sequences.push(sequencer.assign(b, LEADER));
    }
    assert_eq!(sequences, [(1000, 0, 0), (1000, 0, 5), (1000, 0, 8)]);
    let third = batches.pop().unwrap();
    let second = batches.pop().unwrap();
    let first = batches.pop().unwrap();
    // Answers out of order: nothing completes before the first one.
    let (done, _) = sequencer.on_result(second, written(105), now, 0.5);
    assert!(done.is_empty());
    let (done, _) = sequencer.on_result(third, written(108), now, 0.5);
    assert!(done.is_empty());
    let (done, _) = sequencer.on_result(first, written(100), now, 0.5);
    assert_eq!(outcomes(&done), [Ok(Some(100)), Ok(Some(105)), Ok(Some(108))]);
}

#[test]
fn in_flight_limit_per_partition() {
    let now = Instant::now();
    let mut sequencer = confirmed(2);
    let t = topic();
    let mut a = batch(0, 0, 1, now);
    let mut b = batch(0, 1, 1, now);
    sequencer.assign(&mut a, LEADER);
    sequencer.assign(&mut b, LEADER);
    assert!(!sequencer.can_send_new(&t, 0, LEADER));
    assert!(sequencer.can_send_new(&t, 1, LEADER), "other partitions are not limited");
    sequencer.on_result(a, written(0), now, 0.5);
    assert!(sequencer.can_send_new(&t, 0, LEADER));
    assert_eq!(sequencer.in_flight(), 1);
}

#[test]
fn retries_keep_their_sequence_and_wait_for_earlier_answers() {
    let now = Instant::now();
    let mut sequencer = confirmed(5);
    let t = topic();
    let mut batches: Vec<ProducerBatch> = (0..3).map(|n| batch(0, n, 2, now)).collect();
    for b in &mut batches {
        sequencer.assign(b, LEADER);
    }
    let mut batches = VecDeque::from(batches);
    // The first fails (leader moved); the broker then rejects the later two
    // as out of order, because the first is missing.
    let (done, followup) =
        sequencer.on_result(batches.pop_front().unwrap(), rejected(ResponseError::NotLeaderOrFollower), now, 0.5);
    assert!(done.is_empty());
    assert!(followup.refresh_metadata);
    assert!(!sequencer.can_send_new(&t, 0, LEADER), "no new batch while retries wait");
    assert!(sequencer.next_retry(&t, 0, LEADER, now + Duration::from_secs(5)).is_none(), "two still in flight");
    for _ in 0..2 {
        let (done, _) = sequencer.on_result(
            batches.pop_front().unwrap(),
            rejected(ResponseError::OutOfOrderSequenceNumber),
            now,
            0.5,
        );
        assert!(done.is_empty());
    }
    assert!(!sequencer.wants_producer_id(), "out of order behind a failure needs no bump");
    // Backoff first.
    assert!(sequencer.next_retry(&t, 0, LEADER, now).is_none());
    assert!(sequencer.next_retry_at().unwrap() > now);
    let later = now + Duration::from_secs(5);
    let mut resent = Vec::new();
    while let Some(mut b) = sequencer.next_retry(&t, 0, LEADER, later) {
        let (_, _, sequence) = sequencer.assign(&mut b, LEADER);
        resent.push((b.index(), sequence));
        batches.push_back(b);
    }
    assert_eq!(resent, [(0, 0), (1, 2), (2, 4)], "same order, same sequences");
    let mut all = Vec::new();
    for (i, b) in batches.into_iter().enumerate() {
        all.extend(sequencer.on_result(b, written(10 + 2 * i as i64), later, 0.5).0);
    }
    assert_eq!(outcomes(&all), [Ok(Some(10)), Ok(Some(12)), Ok(Some(14))]);
    assert!(sequencer.can_send_new(&t, 0, LEADER));
}

#[test]
fn duplicate_sequence_is_success_without_an_offset() {
    let now = Instant::now();
    let mut sequencer = ready(5);
    let mut b = batch(0, 0, 1, now);
    sequencer.assign(&mut b, LEADER);
    let (done, _) = sequencer.on_result(b, lost(), now, 0.5);
    assert!(done.is_empty());
    let mut b = sequencer.next_retry(&topic(), 0, LEADER, now + Duration::from_secs(1)).unwrap();
    assert!(b.maybe_written);
    sequencer.assign(&mut b, LEADER);
    let (done, _) = sequencer.on_result(b, rejected(ResponseError::DuplicateSequenceNumber), now, 0.5);
    assert_eq!(outcomes(&done), [Ok(None)]);
}

#[test]
fn out_of_order_on_the_first_unresolved_batch_bumps_the_epoch() {
    let now = Instant::now();
    let mut sequencer = ready(5);
    let t = topic();
    let mut first = batch(0, 0, 3, now);
    let mut other = batch(1, 0, 1, now);
    sequencer.assign(&mut first, LEADER);
    sequencer.assign(&mut other, LEADER);
    sequencer.on_result(first, rejected(ResponseError::OutOfOrderSequenceNumber), now, 0.5);
    // Partition 1 still has a batch in flight: the bump waits for it.
    assert!(!sequencer.wants_producer_id());
    assert!(!sequencer.can_send_new(&t, 1, LEADER), "nothing new is sent while a bump is wanted");
    sequencer.on_result(other, written(0), now, 0.5);
    assert!(sequencer.wants_producer_id());
    assert_eq!(sequencer.bumping_from(), Some((1000, 0)));
    assert!(sequencer.set_producer_id(1000, 1).is_empty(), "nothing unsafe to resend");
    let mut again = sequencer.next_retry(&t, 0, LEADER, now).unwrap();
    assert_eq!(sequencer.assign(&mut again, LEADER), (1000, 1, 0), "restarts at 0 under the new epoch");
    let mut fresh = batch(1, 1, 1, now);
    assert!(sequencer.can_send_new(&t, 1, LEADER));
    assert_eq!(sequencer.assign(&mut fresh, LEADER), (1000, 1, 0));
}

#[test]
fn a_maybe_written_batch_that_cannot_keep_its_sequence_fails_alone() {
    let now = Instant::now();
    let mut sequencer = confirmed(5);
    let t = topic();
    let mut b = batch(0, 0, 4, now);
    let mut after = batch(0, 1, 2, now);
    let mut elsewhere = batch(1, 0, 1, now);
    sequencer.assign(&mut b, LEADER);
    sequencer.assign(&mut after, LEADER);
    sequencer.assign(&mut elsewhere, LEADER);
    sequencer.on_result(b, lost(), now, 0.5);
    sequencer.on_result(after, rejected(ResponseError::OutOfOrderSequenceNumber), now, 0.5);
    let later = now + Duration::from_secs(1);
    let mut b = sequencer.next_retry(&t, 0, LEADER, later).unwrap();
    sequencer.assign(&mut b, LEADER);
    // The broker forgot the producer: we cannot know whether the first
    // attempt was written.
    sequencer.on_result(b, rejected(ResponseError::UnknownProducerId), later, 0.5);
    assert!(!sequencer.wants_producer_id(), "partition 1 still has a batch in flight");
    let (done, _) = sequencer.on_result(elsewhere, written(0), later, 0.5);
    assert_eq!(outcomes(&done), [Ok(Some(0))]);
    assert!(sequencer.wants_producer_id());
    let done = sequencer.set_producer_id(1001, 0);
    let error = done[0].outcome.as_ref().unwrap_err();
    assert!(matches!(error, Error::MaybeWritten { last_error: Some(_), .. }) && error.maybe_written(), "{error:?}");
    assert_eq!(done.len(), 1, "only the batch that may be written fails");
    assert!(sequencer.fatal().is_none(), "the producer goes on");
    // The batch behind it was certainly not written: it goes again, first
    // under the new producer id.
    let mut after = sequencer.next_retry(&t, 0, LEADER, later).unwrap();
    assert_eq!(sequencer.assign(&mut after, LEADER), (1001, 0, 0));
    let (done, _) = sequencer.on_result(after, written(9), later, 0.5);
    assert_eq!(outcomes(&done), [Ok(Some(9))]);
    assert!(sequencer.can_send_new(&t, 1, LEADER), "every partition goes on");
}

#[test]
fn a_batch_too_large_for_the_broker_is_split_in_order_down_to_one_record() {
    use crate::producer::delivery::DeliveryFuture;
    use crate::records::Compression;
    let now = Instant::now();
    let mut sequencer = confirmed(5);
    let t = topic();
    let mut big = batch(0, 0, 4, now);
    let futures: Vec<DeliveryFuture> =
        (0..4).map(|i| DeliveryFuture::new(big.delivery.shared().clone(), i, 1000 + i64::from(i))).collect();
    let mut later = batch(0, 1, 1, now);
    assert_eq!(sequencer.assign(&mut big, LEADER), (1000, 0, 0));
    big.seal(Compression::None, None);
    assert_eq!(sequencer.assign(&mut later, LEADER), (1000, 0, 4));
    // Refused as too large: two halves, at once, with the batch's sequences.
    let (done, _) = sequencer.on_result(big, rejected(ResponseError::MessageTooLarge), now, 0.5);
    assert!(done.is_empty());
    // The later batch was refused as out of order behind it: a retry.
    sequencer.on_result(later, rejected(ResponseError::OutOfOrderSequenceNumber), now, 0.5);
    assert!(!sequencer.wants_producer_id(), "nothing lost: no reset");
    let mut sent = Vec::new();
    // (The later batch waits out its retry backoff; the halves do not.)
    let later = now + Duration::from_secs(5);
    assert_eq!(sequencer.next_retry_at(), None, "the halves go at once");
    while let Some(mut b) = sequencer.next_retry(&t, 0, LEADER, later) {
        let (_, _, sequence) = sequencer.assign(&mut b, LEADER);
        sent.push((b.records, sequence));
        b.seal(Compression::None, None);
        let (done, _) = sequencer.on_result(b, written(100 * sent.len() as i64), now, 0.5);
        for f in done {
            f.delivery.complete(f.outcome);
        }
        if sent.len() == 1 {
            assert!(futures[0].try_result().is_none(), "a record's outcome waits for the whole batch");
        }
    }
    assert_eq!(sent, [(2, 0), (2, 2), (1, 4)], "the halves in order, then the later batch");
    let offsets: Vec<Option<i64>> = futures.iter().map(|f| f.try_result().unwrap().unwrap().offset).collect();
    assert_eq!(offsets, [Some(100), Some(101), Some(200), Some(201)], "each record's own half");

    // One record too large fails alone, not written; the partition restarts
    // its sequences and goes on.
    let mut single = batch(0, 2, 1, now);
    sequencer.assign(&mut single, LEADER);
    single.seal(Compression::None, None);
    let (done, _) = sequencer.on_result(single, rejected(ResponseError::MessageTooLarge), now, 0.5);
    let error = done[0].outcome.as_ref().unwrap_err();
    assert!(error.to_string().contains("MessageTooLarge") && !error.maybe_written(), "{error}");
    assert!(sequencer.fatal().is_none());
}

#[test]
fn one_batch_in_flight_until_the_broker_acknowledges_the_producer_id() {
    let now = Instant::now();
    let mut sequencer = ready(5);
    let t = topic();
    let mut first = batch(0, 0, 3, now);
    assert!(sequencer.can_send_new(&t, 0, LEADER));
    sequencer.assign(&mut first, LEADER);
    // Kafka would take a second batch of this unknown producer id at any
    // sequence, and write it before the first if the first fails.
    assert!(!sequencer.can_send_new(&t, 0, LEADER));
    let (done, _) = sequencer.on_result(first, rejected(ResponseError::NotLeaderOrFollower), now, 0.5);
    assert!(done.is_empty());
    let later = now + Duration::from_secs(1);
    let mut first = sequencer.next_retry(&t, 0, LEADER, later).unwrap();
    sequencer.assign(&mut first, LEADER);
    assert!(!sequencer.can_send_new(&t, 0, LEADER), "still unacknowledged");
    sequencer.on_result(first, written(0), later, 0.5);
    let mut batches: Vec<ProducerBatch> = (1..6).map(|n| batch(0, n, 1, now)).collect();
    for b in &mut batches {
        assert!(sequencer.can_send_new(&t, 0, LEADER), "acknowledged: up to five in flight");
        sequencer.assign(b, LEADER);
    }
    assert!(!sequencer.can_send_new(&t, 0, LEADER));
    for (i, b) in batches.into_iter().enumerate() {
        sequencer.on_result(b, written(3 + i as i64), later, 0.5);
    }
    // A new epoch is a new producer state: one at a time again.
    let mut fails = batch(0, 6, 1, now);
    sequencer.assign(&mut fails, LEADER);
    sequencer.on_result(fails, rejected(ResponseError::OutOfOrderSequenceNumber), later, 0.5);
    assert!(sequencer.wants_producer_id());
    assert!(sequencer.set_producer_id(1000, 1).is_empty());
    let mut again = sequencer.next_retry(&t, 0, LEADER, later + Duration::from_secs(1)).unwrap();
    sequencer.assign(&mut again, LEADER);
    assert!(!sequencer.can_send_new(&t, 0, LEADER));
}

#[test]
fn a_partitions_batches_are_never_in_flight_at_two_brokers() {
    let now = Instant::now();
    let mut sequencer = confirmed(5);
    let t = topic();
    let mut old = batch(0, 0, 1, now);
    sequencer.assign(&mut old, 1);
    assert!(sequencer.can_send_new(&t, 0, 1));
    assert!(!sequencer.can_send_new(&t, 0, 2), "the leader moved: wait for the old leader's answer");
    assert!(sequencer.can_send_new(&t, 1, 2), "other partitions are not held");
    let (_, followup) = sequencer.on_result(old, rejected(ResponseError::NotLeaderOrFollower), now, 0.5);
    assert!(followup.refresh_metadata);
    let later = now + Duration::from_secs(1);
    let mut old = sequencer.next_retry(&t, 0, 2, later).expect("answered: the retry goes to the new leader");
    assert!(old.maybe_written, "acks=all: the old leader may have appended before it lost leadership");
    sequencer.assign(&mut old, 2);
    assert!(!sequencer.can_send_new(&t, 0, 1));
    sequencer.on_result(old, written(0), later, 0.5);
    assert!(sequencer.can_send_new(&t, 0, 1));
}

#[test]
fn not_leader_with_acks_all_expires_as_maybe_written() {
    let now = Instant::now();
    let mut sequencer = ready(5);
    let mut b = batch(0, 0, 1, now);
    sequencer.assign(&mut b, LEADER);
    sequencer.on_result(b, rejected(ResponseError::NotLeaderOrFollower), now, 0.5);
    let done = sequencer.expire(now + Duration::from_secs(60));
    let error = done[0].outcome.as_ref().unwrap_err();
    assert!(matches!(error, Error::DeliveryTimeout { maybe_written: true, .. }), "{error:?}");
    assert!(sequencer.fatal().is_none());

    let mut sequencer = Sequencer::new(SequencerConfig { acks_all: false, ..config(5) });
    sequencer.set_producer_id(1000, 0);
    let mut b = batch(0, 0, 1, now);
    sequencer.assign(&mut b, LEADER);
    sequencer.on_result(b, rejected(ResponseError::NotLeaderOrFollower), now, 0.5);
    let done = sequencer.expire(now + Duration::from_secs(60));
    let error = done[0].outcome.as_ref().unwrap_err();
    assert!(matches!(error, Error::DeliveryTimeout { maybe_written: false, .. }), "acks=1 checks leadership first");
}

#[test]
fn fencing_fails_everything_pending() {
    let now = Instant::now();
    let mut sequencer = confirmed(5);
    let t = topic();
    let mut a = batch(0, 0, 1, now);
    let mut b = batch(0, 1, 1, now);
    let mut c = batch(1, 0, 1, now);
    for x in [&mut a, &mut b, &mut c] {
        sequencer.assign(x, LEADER);
    }
    sequencer.on_result(a, rejected(ResponseError::NotLeaderOrFollower), now, 0.5);
    let (done, _) = sequencer.on_result(c, rejected(ResponseError::ProducerFenced), now, 0.5);
    // c, and a (waiting for a retry) fail with the fencing error.
    let failed = outcomes(&done);
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|o| o.as_ref().unwrap_err().contains("ProducerFenced")), "{failed:?}");
    assert!(sequencer.fatal().is_some());
    assert!(!sequencer.can_send_new(&t, 0, LEADER));
    assert!(sequencer.next_retry(&t, 0, LEADER, now + Duration::from_secs(9)).is_none());
    // b was written after all: that stays a success.
    let (done, _) = sequencer.on_result(b, written(7), now, 0.5);
    assert_eq!(outcomes(&done), [Ok(Some(7))]);
}

#[test]
fn a_batch_failing_for_good_resets_the_partition() {
    let now = Instant::now();
    let mut sequencer = ready(5);
    let mut b = batch(0, 0, 1, now);
    sequencer.assign(&mut b, LEADER);
    let (done, _) = sequencer.on_result(b, rejected(ResponseError::MessageTooLarge), now, 0.5);
    assert!(outcomes(&done)[0].as_ref().unwrap_err().contains("MessageTooLarge"));
    assert!(sequencer.wants_producer_id(), "its sequence is lost: restart the partition's sequences");
}

#[test]
fn retries_past_the_delivery_timeout_expire_saying_whether_they_may_be_written() {
    let now = Instant::now();
    let mut sequencer = ready(5);
    let mut b = batch(0, 0, 1, now);
    sequencer.assign(&mut b, LEADER);
    sequencer.on_result(b, lost(), now, 0.5);
    assert!(sequencer.expire(now + Duration::from_secs(59)).is_empty());
    let done = sequencer.expire(now + Duration::from_secs(60));
    let error = done[0].outcome.as_ref().unwrap_err();
    assert!(matches!(error, Error::DeliveryTimeout { maybe_written: true, last_error: Some(_), .. }), "{error:?}");
    assert!(sequencer.wants_producer_id());
}

#[test]
fn without_idempotence_there_are_no_sequences() {
    let now = Instant::now();
    let mut sequencer = Sequencer::new(SequencerConfig { idempotent: false, ..config(5) });
    assert!(!sequencer.wants_producer_id());
    let mut b = batch(0, 0, 3, now);
    assert!(sequencer.can_send_new(&topic(), 0, LEADER));
    assert_eq!(sequencer.assign(&mut b, LEADER), (-1, -1, -1));
    let (done, _) = sequencer.on_result(b, written(3), now, 0.5);
    assert_eq!(outcomes(&done), [Ok(Some(3))]);
}

/// How a model broker checks sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checks {
    /// Kafka's `ProducerStateManager`: state per producer id and partition;
    /// the first batch of a producer id the partition does not know is
    /// taken at any sequence; a new epoch must start at 0; a resent batch
    /// that matches one of the last five is acknowledged with its original
    /// offset; anything else out of line is OUT_OF_ORDER_SEQUENCE_NUMBER.
    Kafka,
    /// Tansu: the next expected sequence per producer id, epoch and
    /// partition, from 0; any lower sequence is DUPLICATE_SEQUENCE_NUMBER.
    Tansu,
}

/// A partition's producer state on the model broker.
#[derive(Debug, Default)]
struct ProducerEntry {
    epoch: i16,
    /// The last five batches: (first sequence, last sequence, base offset).
    recent: VecDeque<(i32, i32, i64)>,
}

/// Two brokers sharing every partition's log, as replicas do; only the
/// leader takes writes.
#[derive(Debug)]
struct ModelBroker {
    checks: Checks,
    producers: HashMap<(i64, i32), ProducerEntry>,
    log: HashMap<i32, Vec<(u64, i32)>>,
}

impl ModelBroker {
    fn new(checks: Checks) -> Self {
        ModelBroker { checks, producers: HashMap::new(), log: HashMap::new() }
    }

    /// Applies one batch; `None` when written, else the rejection.
    fn check(&self, partition: i32, id: i64, epoch: i16, sequence: i32, records: i32) -> Option<BatchResult> {
        let last = sequence + records - 1;
        let entry = self.producers.get(&(id, partition));
        match (self.checks, entry) {
            (Checks::Kafka, None) => None,
            (Checks::Tansu, None) if sequence == 0 => None,
            (Checks::Tansu, None) => Some(rejected(ResponseError::OutOfOrderSequenceNumber)),
            (_, Some(entry)) if epoch < entry.epoch => Some(rejected(ResponseError::InvalidProducerEpoch)),
            (_, Some(entry)) if epoch > entry.epoch => {
                (sequence != 0).then(|| rejected(ResponseError::OutOfOrderSequenceNumber))
            }
            (checks, Some(entry)) => {
                let expected = entry.recent.back().map_or(0, |&(_, last, _)| last + 1);
                if sequence == expected {
                    return None;
                }
                if let Some(&(_, _, offset)) = entry.recent.iter().find(|&&(f, l, _)| f == sequence && l == last)
                    && checks == Checks::Kafka
                {
                    return Some(written(offset));
                }
                if checks == Checks::Tansu && sequence < expected {
                    return Some(rejected(ResponseError::DuplicateSequenceNumber));
                }
                Some(rejected(ResponseError::OutOfOrderSequenceNumber))
            }
        }
    }

    fn apply(&mut self, batch: &ProducerBatch, (id, epoch, sequence): Stamp) -> BatchResult {
        if let Some(rejection) = self.check(batch.partition, id, epoch, sequence, batch.records) {
            return rejection;
        }
        let log = self.log.entry(batch.partition).or_default();
        let offset = log.len() as i64;
        log.extend((0..batch.records).map(|i| (batch.index(), i)));
        let entry = self.producers.entry((id, batch.partition)).or_default();
        if entry.epoch != epoch {
            entry.recent.clear();
            entry.epoch = epoch;
        }
        entry.recent.push_back((sequence, sequence + batch.records - 1, offset));
        if entry.recent.len() > 5 {
            entry.recent.pop_front();
        }
        written(offset)
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Create {
        partition: i32,
        records: i32,
    },
    /// The producer sends the partition's next batch to the broker it
    /// believes leads it.
    Send {
        partition: i32,
    },
    /// A broker handles its oldest request: 0 answers normally, 1 writes
    /// but the answer is lost, 2 loses the request, 3 writes and answers
    /// NOT_LEADER_OR_FOLLOWER (acks=all, leadership lost while waiting for
    /// replicas), 4 answers NOT_LEADER_OR_FOLLOWER without writing, 5
    /// answers NOT_ENOUGH_REPLICAS (refused before the append).
    Answer {
        broker: usize,
        fault: u8,
    },
    /// Leadership moves to the other broker; the producer learns it only on
    /// its next metadata refresh.
    MoveLeader,
    RefreshMetadata,
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2i32, 1..4i32).prop_map(|(partition, records)| Op::Create { partition, records }),
        4 => (0..2i32).prop_map(|partition| Op::Send { partition }),
        4 => (0..2usize, prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8), 1 => Just(4u8), 1 => Just(5u8)])
            .prop_map(|(broker, fault)| Op::Answer { broker, fault }),
        1 => Just(Op::MoveLeader),
        1 => Just(Op::RefreshMetadata),
        1 => Just(Op::Tick),
    ]
}

/// What the sender would send next for a partition to `broker`: its next
/// retry, else its oldest new batch, if the sequencer allows either.
fn next_to_send(
    sequencer: &mut Sequencer,
    created: &mut VecDeque<ProducerBatch>,
    partition: i32,
    broker: i32,
    now: Instant,
) -> Option<ProducerBatch> {
    let t = topic();
    match sequencer.next_retry(&t, partition, broker, now) {
        Some(b) => Some(b),
        None if sequencer.can_send_new(&t, partition, broker) => created.pop_front(),
        None => None,
    }
}

/// Producer id, epoch and base sequence of a batch on the wire.
type Stamp = (i64, i16, i32);

/// A batch's end, as the application sees it.
type Outcome = (i32, u64, Result<Acked, Error>);

/// Runs `ops` against a model broker, then settles (no more faults) until
/// everything is answered; returns the outcomes in completion order, the
/// number of batches created per partition, and the broker.
fn run_model(ops: &[Op], checks: Checks, refuse_bumps: bool) -> (Vec<Outcome>, [u64; 2], ModelBroker) {
    let mut now = Instant::now();
    let mut sequencer = Sequencer::new(SequencerConfig { delivery_timeout: Duration::from_secs(8), ..config(5) });
    let mut broker = ModelBroker::new(checks);
    let (mut leader, mut believed_leader) = (0usize, 0usize);
    let mut created: [VecDeque<ProducerBatch>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut next_number = [0u64; 2];
    // Requests on each broker's connection, answered in order.
    let mut wires: [VecDeque<(ProducerBatch, Stamp)>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut finished: Vec<Outcome> = Vec::new();
    let mut numbers: HashMap<usize, (i32, u64)> = HashMap::new();
    let collect = |done: Vec<Finished>, finished: &mut Vec<Outcome>, numbers: &HashMap<usize, (i32, u64)>| {
        for f in done {
            let (p, n) = numbers[&(Arc::as_ptr(f.delivery.shared()) as usize)];
            finished.push((p, n, f.outcome));
        }
    };
    let (mut id, mut epoch) = (1000i64, 0i16);
    let settle = (0..600).map(|i| match i % 6 {
        0 => Op::Send { partition: 0 },
        1 => Op::Send { partition: 1 },
        2 => Op::Answer { broker: 0, fault: 0 },
        3 => Op::Answer { broker: 1, fault: 0 },
        4 => Op::RefreshMetadata,
        _ => Op::Tick,
    });
    for op in ops.iter().copied().chain(settle) {
        if sequencer.wants_producer_id() {
            match sequencer.bumping_from() {
                Some(_) if refuse_bumps => (id, epoch) = (id + 1, 0),
                Some(_) => epoch += 1,
                None => {}
            }
            let done = sequencer.set_producer_id(id, epoch);
            collect(done, &mut finished, &numbers);
        }
        match op {
            Op::Create { partition, records } => {
                let number = next_number[partition as usize];
                next_number[partition as usize] += 1;
                let b = batch(partition, number, records, now);
                numbers.insert(Arc::as_ptr(b.delivery.shared()) as usize, (partition, number));
                created[partition as usize].push_back(b);
            }
            Op::Send { partition } => {
                let to = believed_leader as i32;
                if let Some(mut b) = next_to_send(&mut sequencer, &mut created[partition as usize], partition, to, now)
                {
                    let stamp = sequencer.assign(&mut b, to);
                    wires[believed_leader].push_back((b, stamp));
                }
            }
            Op::Answer { broker: at, fault } => {
                if let Some((b, stamp)) = wires[at].pop_front() {
                    let not_leader = rejected(ResponseError::NotLeaderOrFollower);
                    let result = match fault {
                        _ if at != leader => not_leader,
                        0 => broker.apply(&b, stamp),
                        1 => {
                            broker.apply(&b, stamp);
                            lost()
                        }
                        2 => lost(),
                        3 => {
                            broker.apply(&b, stamp);
                            not_leader
                        }
                        4 => not_leader,
                        _ => rejected(ResponseError::NotEnoughReplicas),
                    };
                    let (done, _) = sequencer.on_result(b, result, now, 0.5);
                    collect(done, &mut finished, &numbers);
                }
            }
            Op::MoveLeader => leader = 1 - leader,
            Op::RefreshMetadata => believed_leader = leader,
            Op::Tick => {
                now += Duration::from_millis(400);
                collect(sequencer.expire(now), &mut finished, &numbers);
            }
        }
        assert!(sequencer.fatal().is_none(), "only fencing or authorization fails the producer");
    }
    assert!(wires.iter().all(VecDeque::is_empty), "settling answers everything");
    assert!(created.iter().all(VecDeque::is_empty), "settling sends everything");
    assert_eq!(sequencer.in_flight(), 0);
    (finished, next_number, broker)
}

/// Per partition: every batch ends once, in creation order; a delivered
/// batch is in the log exactly once, one that failed as not written is
/// not, one that failed as maybe written is there at most once; and the
/// log holds batches in creation order, each whole. Nothing fails unless
/// some batch ran out of time: faults alone cost no record.
fn check_model(finished: &[Outcome], created: [u64; 2], broker: &ModelBroker) -> Result<(), TestCaseError> {
    if !finished.iter().any(|f| matches!(f.2, Err(Error::DeliveryTimeout { .. }))) {
        let failed: Vec<&Outcome> = finished.iter().filter(|f| f.2.is_err()).collect();
        prop_assert!(failed.is_empty(), "failed with no delivery timeout: {:?}", failed);
    }
    for partition in 0..2 {
        let results: Vec<&Outcome> = finished.iter().filter(|f| f.0 == partition).collect();
        let order: Vec<u64> = results.iter().map(|f| f.1).collect();
        prop_assert_eq!(order, (0..created[partition as usize]).collect::<Vec<_>>());
        let log = broker.log.get(&partition).cloned().unwrap_or_default();
        for (_, number, outcome) in &results {
            let copies = log.iter().filter(|(n, i)| n == number && *i == 0).count();
            match outcome {
                Ok(_) => prop_assert_eq!(copies, 1, "batch {} delivered: once in the log", number),
                Err(error) if error.maybe_written() => {
                    prop_assert!(copies <= 1, "batch {} maybe written: at most once ({:?})", number, error)
                }
                Err(error) => prop_assert_eq!(copies, 0, "batch {} failed as not written: {:?}", number, error),
            }
        }
        let mut expected = Vec::new();
        let mut in_log: Vec<u64> = log.iter().filter(|(_, i)| *i == 0).map(|(n, _)| *n).collect();
        in_log.dedup();
        for number in &in_log {
            let records = log.iter().filter(|(n, _)| n == number).count() as i32;
            expected.extend((0..records).map(|i| (*number, i)));
        }
        prop_assert!(
            in_log.windows(2).all(|w| w[0] < w[1]),
            "partition {} log out of creation order: {:?}",
            partition,
            in_log
        );
        prop_assert_eq!(log, expected, "every batch whole, in order");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Against Kafka's sequence checks, with leader moves the producer
    /// learns late, lost requests, lost answers, NOT_LEADER_OR_FOLLOWER
    /// before and after the append, delivery timeouts, and epoch bumps
    /// the broker grants or refuses (a new producer id, which Kafka takes
    /// at any sequence): nothing is written twice or out of order, nothing
    /// reported delivered is missing, nothing reported not written is
    /// there, and the producer never fails as a whole.
    #[test]
    fn kafka_keeps_order_and_exactly_once_under_faults(
        ops in proptest::collection::vec(op(), 1..300),
        refuse_bumps in any::<bool>(),
    ) {
        let (finished, created, broker) = run_model(&ops, Checks::Kafka, refuse_bumps);
        check_model(&finished, created, &broker)?;
    }

    /// The same against Tansu's stricter checks (no five-batch window).
    #[test]
    fn tansu_keeps_order_and_exactly_once_under_faults(
        ops in proptest::collection::vec(op(), 1..300),
        refuse_bumps in any::<bool>(),
    ) {
        let (finished, created, broker) = run_model(&ops, Checks::Tansu, refuse_bumps);
        check_model(&finished, created, &broker)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Against a broker that checks no sequences (librdkafka's mock), with
    /// one request in flight per partition: no record is lost and the
    /// first copy of each record is in creation order (lost answers may
    /// duplicate, since nothing deduplicates).
    #[test]
    fn no_loss_and_order_without_broker_sequence_checks(ops in proptest::collection::vec(op(), 1..300)) {
        let mut now = Instant::now();
        let mut sequencer = ready(1);
        let mut log: HashMap<i32, Vec<(u64, i32)>> = HashMap::new();
        let mut created: [VecDeque<ProducerBatch>; 2] = [VecDeque::new(), VecDeque::new()];
        let mut next_number = [0u64; 2];
        let mut wire: VecDeque<ProducerBatch> = VecDeque::new();
        let settle = (0..400).map(|i| match i % 4 {
            0 => Op::Send { partition: 0 },
            1 => Op::Send { partition: 1 },
            2 => Op::Answer { broker: 0, fault: 0 },
            _ => Op::Tick,
        });
        let mut ok = 0;
        for op in ops.iter().copied().chain(settle) {
            match op {
                Op::Create { partition, records } => {
                    let number = next_number[partition as usize];
                    next_number[partition as usize] += 1;
                    created[partition as usize].push_back(batch(partition, number, records, now));
                }
                Op::Send { partition } => {
                    let queue = &mut created[partition as usize];
                    if let Some(mut b) = next_to_send(&mut sequencer, queue, partition, LEADER, now) {
                        sequencer.assign(&mut b, LEADER);
                        wire.push_back(b);
                    }
                }
                Op::Answer { fault, .. } => {
                    if let Some(b) = wire.pop_front() {
                        let mut append = |b: &ProducerBatch| {
                            let entry = log.entry(b.partition).or_default();
                            let offset = entry.len() as i64;
                            entry.extend((0..b.records).map(|i| (b.index(), i)));
                            offset
                        };
                        let result = match fault {
                            0 => written(append(&b)),
                            1 => {
                                append(&b);
                                lost()
                            }
                            2 => lost(),
                            _ => rejected(ResponseError::NotLeaderOrFollower),
                        };
                        let (done, _) = sequencer.on_result(b, result, now, 0.5);
                        ok += done.iter().filter(|f| f.outcome.is_ok()).count();
                    }
                }
                Op::Tick => now += Duration::from_millis(400),
                Op::MoveLeader | Op::RefreshMetadata => {}
            }
        }
        prop_assert_eq!(ok as u64, next_number.iter().sum::<u64>(), "every batch delivered");
        for partition in 0..2 {
            let entries = log.get(&partition).cloned().unwrap_or_default();
            let mut first_seen = Vec::new();
            for entry in entries {
                if !first_seen.contains(&entry) {
                    first_seen.push(entry);
                }
            }
            let batches: Vec<u64> = first_seen.iter().filter(|(_, i)| *i == 0).map(|(n, _)| *n).collect();
            prop_assert_eq!(batches, (0..next_number[partition as usize]).collect::<Vec<_>>());
        }
    }
}

#[test]
fn a_transactional_producer_fails_a_batch_whose_sequence_or_epoch_was_lost_instead_of_bumping() {
    let now = Instant::now();
    for code in
        [ResponseError::UnknownProducerId, ResponseError::OutOfOrderSequenceNumber, ResponseError::InvalidProducerEpoch]
    {
        let mut sequencer = Sequencer::new(SequencerConfig { transactional: true, ..config(5) });
        assert!(sequencer.set_producer_id(1000, 0).is_empty());
        let mut b = batch(0, 0, 3, now);
        sequencer.assign(&mut b, LEADER);
        let (done, _) = sequencer.on_result(b, rejected(code), now, 0.5);
        let error = done[0].outcome.as_ref().unwrap_err();
        assert!(matches!(error, Error::Broker { code: c, .. } if *c == code), "{code:?}: {error:?}");
        assert!(sequencer.bumping_from().is_none(), "{code:?}: the transaction manager bumps, after its abort");
        assert!(sequencer.fatal().is_none(), "{code:?}");
    }
}
