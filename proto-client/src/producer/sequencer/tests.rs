use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;
use crate::records::batch::BatchBuilder;

fn config(max_in_flight: usize) -> SequencerConfig {
    SequencerConfig {
        idempotent: true,
        max_in_flight,
        delivery_timeout: Duration::from_secs(60),
        retry_backoff: Duration::from_millis(100),
        retry_backoff_max: Duration::from_secs(1),
    }
}

fn ready(max_in_flight: usize) -> Sequencer {
    let mut sequencer = Sequencer::new(config(max_in_flight));
    assert!(sequencer.wants_producer_id());
    assert_eq!(sequencer.set_producer_id(1000, 0), 0);
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
    let mut sequencer = ready(5);
    let t = topic();
    let mut batches = vec![batch(0, 0, 5, now), batch(0, 1, 3, now), batch(0, 2, 2, now)];
    let mut sequences = Vec::new();
    for b in &mut batches {
        assert!(sequencer.can_send_new(&t, 0));
        sequences.push(sequencer.assign(b));
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
    let mut sequencer = ready(2);
    let t = topic();
    let mut a = batch(0, 0, 1, now);
    let mut b = batch(0, 1, 1, now);
    sequencer.assign(&mut a);
    sequencer.assign(&mut b);
    assert!(!sequencer.can_send_new(&t, 0));
    assert!(sequencer.can_send_new(&t, 1), "other partitions are not limited");
    sequencer.on_result(a, written(0), now, 0.5);
    assert!(sequencer.can_send_new(&t, 0));
    assert_eq!(sequencer.in_flight(), 1);
}

#[test]
fn retries_keep_their_sequence_and_wait_for_earlier_answers() {
    let now = Instant::now();
    let mut sequencer = ready(5);
    let t = topic();
    let mut batches: Vec<ProducerBatch> = (0..3).map(|n| batch(0, n, 2, now)).collect();
    for b in &mut batches {
        sequencer.assign(b);
    }
    let mut batches = VecDeque::from(batches);
    // The first fails (leader moved); the broker then rejects the later two
    // as out of order, because the first is missing.
    let (done, followup) =
        sequencer.on_result(batches.pop_front().unwrap(), rejected(ResponseError::NotLeaderOrFollower), now, 0.5);
    assert!(done.is_empty());
    assert!(followup.refresh_metadata);
    assert!(!sequencer.can_send_new(&t, 0), "no new batch while retries wait");
    assert!(sequencer.next_retry(&t, 0, now + Duration::from_secs(5)).is_none(), "two still in flight");
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
    assert!(sequencer.next_retry(&t, 0, now).is_none());
    assert!(sequencer.next_retry_at().unwrap() > now);
    let later = now + Duration::from_secs(5);
    let mut resent = Vec::new();
    while let Some(mut b) = sequencer.next_retry(&t, 0, later) {
        let (_, _, sequence) = sequencer.assign(&mut b);
        resent.push((b.number, sequence));
        batches.push_back(b);
    }
    assert_eq!(resent, [(0, 0), (1, 2), (2, 4)], "same order, same sequences");
    let mut all = Vec::new();
    for (i, b) in batches.into_iter().enumerate() {
        all.extend(sequencer.on_result(b, written(10 + 2 * i as i64), later, 0.5).0);
    }
    assert_eq!(outcomes(&all), [Ok(Some(10)), Ok(Some(12)), Ok(Some(14))]);
    assert!(sequencer.can_send_new(&t, 0));
}

#[test]
fn duplicate_sequence_is_success_without_an_offset() {
    let now = Instant::now();
    let mut sequencer = ready(5);
    let mut b = batch(0, 0, 1, now);
    sequencer.assign(&mut b);
    let (done, _) = sequencer.on_result(b, lost(), now, 0.5);
    assert!(done.is_empty());
    let mut b = sequencer.next_retry(&topic(), 0, now + Duration::from_secs(1)).unwrap();
    assert!(b.maybe_written);
    sequencer.assign(&mut b);
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
    sequencer.assign(&mut first);
    sequencer.assign(&mut other);
    sequencer.on_result(first, rejected(ResponseError::OutOfOrderSequenceNumber), now, 0.5);
    // Partition 1 still has a batch in flight: the bump waits for it.
    assert!(!sequencer.wants_producer_id());
    assert!(!sequencer.can_send_new(&t, 1), "nothing new is sent while a bump is wanted");
    sequencer.on_result(other, written(0), now, 0.5);
    assert!(sequencer.wants_producer_id());
    assert_eq!(sequencer.bumping_from(), Some((1000, 0)));
    assert_eq!(sequencer.set_producer_id(1000, 1), 0, "nothing unsafe to resend");
    let mut again = sequencer.next_retry(&t, 0, now).unwrap();
    assert_eq!(sequencer.assign(&mut again), (1000, 1, 0), "restarts at 0 under the new epoch");
    let mut fresh = batch(1, 1, 1, now);
    assert!(sequencer.can_send_new(&t, 1));
    assert_eq!(sequencer.assign(&mut fresh), (1000, 1, 0));
}

#[test]
fn a_bump_with_a_maybe_written_batch_is_reported_unsafe() {
    let now = Instant::now();
    let mut sequencer = ready(5);
    let t = topic();
    let mut b = batch(0, 0, 4, now);
    sequencer.assign(&mut b);
    sequencer.on_result(b, lost(), now, 0.5);
    let mut b = sequencer.next_retry(&t, 0, now + Duration::from_secs(1)).unwrap();
    sequencer.assign(&mut b);
    // The broker forgot the producer: we cannot know whether the first
    // attempt was written.
    sequencer.on_result(b, rejected(ResponseError::UnknownProducerId), now, 0.5);
    assert!(sequencer.wants_producer_id());
    assert_eq!(sequencer.set_producer_id(1000, 1), 4, "four records could be written twice");
}

#[test]
fn fencing_fails_everything_pending() {
    let now = Instant::now();
    let mut sequencer = ready(5);
    let t = topic();
    let mut a = batch(0, 0, 1, now);
    let mut b = batch(0, 1, 1, now);
    let mut c = batch(1, 0, 1, now);
    for x in [&mut a, &mut b, &mut c] {
        sequencer.assign(x);
    }
    sequencer.on_result(a, rejected(ResponseError::NotLeaderOrFollower), now, 0.5);
    let (done, _) = sequencer.on_result(c, rejected(ResponseError::ProducerFenced), now, 0.5);
    // c, and a (waiting for a retry) fail with the fencing error.
    let failed = outcomes(&done);
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|o| o.as_ref().unwrap_err().contains("ProducerFenced")), "{failed:?}");
    assert!(sequencer.fatal().is_some());
    assert!(!sequencer.can_send_new(&t, 0));
    assert!(sequencer.next_retry(&t, 0, now + Duration::from_secs(9)).is_none());
    // b was written after all: that stays a success.
    let (done, _) = sequencer.on_result(b, written(7), now, 0.5);
    assert_eq!(outcomes(&done), [Ok(Some(7))]);
}

#[test]
fn a_batch_failing_for_good_resets_the_partition() {
    let now = Instant::now();
    let mut sequencer = ready(5);
    let mut b = batch(0, 0, 1, now);
    sequencer.assign(&mut b);
    let (done, _) = sequencer.on_result(b, rejected(ResponseError::MessageTooLarge), now, 0.5);
    assert!(outcomes(&done)[0].as_ref().unwrap_err().contains("MessageTooLarge"));
    assert!(sequencer.wants_producer_id(), "its sequence is lost: restart the partition's sequences");
}

#[test]
fn retries_past_the_delivery_timeout_expire_saying_whether_they_may_be_written() {
    let now = Instant::now();
    let mut sequencer = ready(5);
    let mut b = batch(0, 0, 1, now);
    sequencer.assign(&mut b);
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
    assert!(sequencer.can_send_new(&topic(), 0));
    assert_eq!(sequencer.assign(&mut b), (-1, -1, -1));
    let (done, _) = sequencer.on_result(b, written(3), now, 0.5);
    assert_eq!(outcomes(&done), [Ok(Some(3))]);
}

/// A broker that enforces sequences as Tansu does: the next expected
/// sequence per partition and epoch; lower is a duplicate, higher out of
/// order, a new epoch must start at 0.
#[derive(Debug, Default)]
struct StrictBroker {
    expected: HashMap<i32, (i16, i32)>,
    log: HashMap<i32, Vec<(u64, i32)>>,
}

impl StrictBroker {
    fn apply(&mut self, partition: i32, epoch: i16, sequence: i32, id: u64, records: i32) -> BatchResult {
        let (known_epoch, expected) = self.expected.get(&partition).copied().unwrap_or((epoch, 0));
        let expected = if epoch > known_epoch { 0 } else { expected };
        if epoch < known_epoch {
            return rejected(ResponseError::InvalidProducerEpoch);
        }
        if sequence < expected {
            return rejected(ResponseError::DuplicateSequenceNumber);
        }
        if sequence > expected {
            return rejected(ResponseError::OutOfOrderSequenceNumber);
        }
        self.expected.insert(partition, (epoch, sequence + records));
        let log = self.log.entry(partition).or_default();
        let offset = log.len() as i64;
        log.extend((0..records).map(|i| (id, i)));
        written(offset)
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Create {
        partition: i32,
        records: i32,
    },
    Send {
        partition: i32,
    },
    /// The broker handles the oldest request: 0 answers normally, 1 writes
    /// but the answer is lost, 2 loses the request, 3 answers NOT_LEADER.
    Answer {
        fault: u8,
    },
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2i32, 1..4i32).prop_map(|(partition, records)| Op::Create { partition, records }),
        4 => (0..2i32).prop_map(|partition| Op::Send { partition }),
        4 => prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)].prop_map(|fault| Op::Answer { fault }),
        1 => Just(Op::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Against a sequence-enforcing broker, under lost requests, lost
    /// answers and leader errors: every record ends exactly once, written
    /// exactly once and in creation order per partition, and results
    /// complete in creation order.
    #[test]
    fn exactly_once_and_in_order_under_faults(ops in proptest::collection::vec(op(), 1..300)) {
        let start = Instant::now();
        let mut now = start;
        let mut sequencer = ready(5);
        let t = topic();
        let mut broker = StrictBroker::default();
        let mut created: [VecDeque<ProducerBatch>; 2] = [VecDeque::new(), VecDeque::new()];
        let mut next_number = [0u64; 2];
        // Requests on the one connection, answered in order.
        let mut wire: VecDeque<(ProducerBatch, (i64, i16, i32))> = VecDeque::new();
        let mut finished: Vec<(i32, u64, Result<Acked, Error>)> = Vec::new();
        let mut epoch = 0i16;
        let collect = |done: Vec<Finished>, finished: &mut Vec<(i32, u64, Result<Acked, Error>)>,
                       numbers: &HashMap<usize, (i32, u64)>| {
            for f in done {
                let key = Arc::as_ptr(f.delivery.shared()) as usize;
                let (p, n) = numbers[&key];
                finished.push((p, n, f.outcome));
            }
        };
        let mut numbers: HashMap<usize, (i32, u64)> = HashMap::new();
        let drain_all = ops.iter().copied().chain(std::iter::repeat_n(Op::Tick, 0));
        let settle = (0..400).map(|i| match i % 4 {
            0 => Op::Send { partition: 0 },
            1 => Op::Send { partition: 1 },
            2 => Op::Answer { fault: 0 },
            _ => Op::Tick,
        });
        for op in drain_all.chain(settle) {
            if sequencer.wants_producer_id() {
                epoch += 1;
                let unsafe_records = sequencer.set_producer_id(1000, epoch);
                prop_assert_eq!(unsafe_records, 0, "a bump with maybe-written batches: the model never loses state");
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
                    let next = match sequencer.next_retry(&t, partition, now) {
                        Some(b) => Some(b),
                        None if sequencer.can_send_new(&t, partition) => created[partition as usize].pop_front(),
                        None => None,
                    };
                    if let Some(mut b) = next {
                        let stamp = sequencer.assign(&mut b);
                        wire.push_back((b, stamp));
                    }
                }
                Op::Answer { fault } => {
                    if let Some((b, (_, e, sequence))) = wire.pop_front() {
                        let result = match fault {
                            0 => broker.apply(b.partition, e, sequence, b.number, b.records),
                            1 => {
                                let _ = broker.apply(b.partition, e, sequence, b.number, b.records);
                                lost()
                            }
                            2 => lost(),
                            _ => rejected(ResponseError::NotLeaderOrFollower),
                        };
                        let (done, _) = sequencer.on_result(b, result, now, 0.5);
                        collect(done, &mut finished, &numbers);
                    }
                }
                Op::Tick => now += Duration::from_millis(400),
            }
        }
        prop_assert!(wire.is_empty() && created.iter().all(VecDeque::is_empty), "settling sends everything");
        prop_assert_eq!(sequencer.in_flight(), 0);
        for partition in 0..2 {
            let results: Vec<&(i32, u64, Result<Acked, Error>)> =
                finished.iter().filter(|f| f.0 == partition).collect();
            // Every batch finished once, in creation order.
            let order: Vec<u64> = results.iter().map(|f| f.1).collect();
            prop_assert_eq!(order, (0..next_number[partition as usize]).collect::<Vec<_>>());
            prop_assert!(results.iter().all(|f| f.2.is_ok()), "{:?}", results);
            // The log holds each record exactly once, in creation order.
            let log = broker.log.get(&partition).cloned().unwrap_or_default();
            let mut expected_log = Vec::new();
            for f in &results {
                let records = log.iter().filter(|(id, _)| *id == f.1).count();
                prop_assert!(records > 0, "batch {} finished but is not in the log", f.1);
                expected_log.extend((0..records as i32).map(|i| (f.1, i)));
            }
            prop_assert_eq!(log, expected_log);
        }
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
        let t = topic();
        let mut log: HashMap<i32, Vec<(u64, i32)>> = HashMap::new();
        let mut created: [VecDeque<ProducerBatch>; 2] = [VecDeque::new(), VecDeque::new()];
        let mut next_number = [0u64; 2];
        let mut wire: VecDeque<ProducerBatch> = VecDeque::new();
        let settle = (0..400).map(|i| match i % 4 {
            0 => Op::Send { partition: 0 },
            1 => Op::Send { partition: 1 },
            2 => Op::Answer { fault: 0 },
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
                    let next = match sequencer.next_retry(&t, partition, now) {
                        Some(b) => Some(b),
                        None if sequencer.can_send_new(&t, partition) => created[partition as usize].pop_front(),
                        None => None,
                    };
                    if let Some(mut b) = next {
                        sequencer.assign(&mut b);
                        wire.push_back(b);
                    }
                }
                Op::Answer { fault } => {
                    if let Some(b) = wire.pop_front() {
                        let mut append = |b: &ProducerBatch| {
                            let entry = log.entry(b.partition).or_default();
                            let offset = entry.len() as i64;
                            entry.extend((0..b.records).map(|i| (b.number, i)));
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
