//! Delivery results.
//!
//! A batch's records share one `BatchDelivery`: the batch's outcome is set
//! once, and each record's [`DeliveryFuture`] is that shared state plus the
//! record's index in the batch. A record costs an `Arc` clone, not a channel
//! and an allocation of its own; a future dropped unawaited costs nothing
//! more. Waiters register a waker only when they poll before the outcome.
//!
//! A batch the broker refuses as too large is split; its parts complete
//! separately (one may fail, another be written), each for its range of
//! records, and the outcome is set once every record has one.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use crate::error::Error;

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The partition.
    pub partition: i32,
    /// The record's offset. `None` when the broker acknowledged a retry as
    /// a duplicate of a batch it already had (DUPLICATE_SEQUENCE_NUMBER):
    /// the record is written exactly once, at an offset this answer does not
    /// carry.
    pub offset: Option<i64>,
    /// The record's timestamp: its CreateTime, or the broker's
    /// LogAppendTime when the topic uses that.
    pub timestamp: i64,
}

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Acked {
    pub(crate) base_offset: Option<i64>,
    pub(crate) log_append_time: Option<i64>,
}

/// The outcome of a range of a batch's records: from `first` on, up to
/// the next segment.
type Segment = (u32, Result<Acked, Error>);

/// The outcome shared by the records of one batch.
#[derive(Debug)]
pub(crate) struct BatchDelivery {
    partition: i32,
    /// One segment, or several (in index order) for a batch that was split.
    outcome: OnceLock<Vec<Segment>>,
    /// Parts of a split batch that completed, with their record counts,
    /// until every record has an outcome.
    parts: Mutex<Vec<(Segment, u32)>>,
    waiters: Mutex<Vec<Waker>>,
}

impl BatchDelivery {
    pub(crate) fn new(partition: i32) -> Arc<Self> {
        Arc::new(BatchDelivery {
            partition,
            outcome: OnceLock::new(),
            parts: Mutex::new(Vec::new()),
            waiters: Mutex::new(Vec::new()),
        })
    }

    /// Sets the outcome (once; later calls are ignored) and wakes waiters.
    fn set(&self, outcome: Vec<Segment>) {
        if self.outcome.set(outcome).is_err() {
            debug_assert!(false, "a batch completed twice");
            return;
        }
        let waiters = std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|p| p.into_inner()));
        for waker in waiters {
            waker.wake();
        }
    }

    /// The outcome of `count` records from `first` on, out of `total`.
    fn complete(&self, first: u32, count: u32, total: u32, outcome: Result<Acked, Error>) {
        if first == 0 && count == total {
            return self.set(vec![(0, outcome)]);
        }
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        parts.push(((first, outcome), count));
        if parts.iter().map(|(_, count)| count).sum::<u32>() < total {
            return;
        }
        let mut segments: Vec<Segment> = std::mem::take(&mut *parts).into_iter().map(|(segment, _)| segment).collect();
        drop(parts);
        segments.sort_by_key(|(first, _)| *first);
        self.set(segments);
    }

    /// The outcome of record `index`, with the first index of its segment.
    fn outcome_of(&self, index: u32) -> Option<(u32, &Result<Acked, Error>)> {
        let segments = self.outcome.get()?;
        let at = segments.partition_point(|(first, _)| *first <= index).saturating_sub(1);
        segments.get(at).map(|(first, outcome)| (*first, outcome))
    }
}

/// Owns the outcome of a batch's records until it is set: whoever holds
/// the batch holds the guard, and a batch dropped without an outcome (the
/// producer task ended, the runtime shut down) fails its records instead
/// of leaving their futures pending forever. The part of a split batch
/// owns its range of the records.
#[derive(Debug)]
pub(crate) struct DeliveryGuard {
    shared: Arc<BatchDelivery>,
    first: u32,
    count: u32,
    /// Records of the whole batch (before any split).
    total: u32,
    done: bool,
}

impl DeliveryGuard {
    pub(crate) fn new(partition: i32) -> Self {
        DeliveryGuard { shared: BatchDelivery::new(partition), first: 0, count: 0, total: 0, done: false }
    }

    pub(crate) fn shared(&self) -> &Arc<BatchDelivery> {
        &self.shared
    }

    /// The batch is closed with `records` records.
    pub(crate) fn closed(&mut self, records: u32) {
        (self.count, self.total) = (records, records);
    }

    /// Splits the guard of `count` records into the first `at` and the rest.
    pub(crate) fn split(mut self, at: u32) -> (DeliveryGuard, DeliveryGuard) {
        debug_assert!(at > 0 && at < self.count);
        self.done = true;
        let part =
            |first, count| DeliveryGuard { shared: self.shared.clone(), first, count, total: self.total, done: false };
        (part(self.first, at), part(self.first + at, self.count - at))
    }

    /// Sets the outcome of the guarded records.
    pub(crate) fn complete(mut self, outcome: Result<Acked, Error>) {
        self.done = true;
        self.shared.complete(self.first, self.count, self.total, outcome);
    }
}

impl Drop for DeliveryGuard {
    fn drop(&mut self) {
        if !self.done {
            self.shared.complete(
                self.first,
                self.count,
                self.total,
                Err(Error::MaybeWritten {
                    reason: "the producer stopped before the record's outcome was known".into(),
                    last_error: None,
                }),
            );
        }
    }
}

/// Resolves to where a record landed, or why it did not.
///
/// Dropping it does not cancel the record; it is delivered all the same.
#[derive(Debug)]
#[must_use = "the record is sent either way; await this to learn its outcome"]
pub struct DeliveryFuture {
    batch: Arc<BatchDelivery>,
    index: u32,
    timestamp: i64,
    /// Where this future's waker sits in the batch's waiters, once polled:
    /// a poll again replaces it there instead of searching the list (a
    /// batch may have thousands of waiters, each with its own waker when
    /// the futures sit in a `FuturesUnordered`).
    waiting: Option<usize>,
}

/// Another handle to the same record's outcome.
impl Clone for DeliveryFuture {
    fn clone(&self) -> Self {
        DeliveryFuture { batch: self.batch.clone(), index: self.index, timestamp: self.timestamp, waiting: None }
    }
}

impl DeliveryFuture {
    pub(crate) fn new(batch: Arc<BatchDelivery>, index: u32, timestamp: i64) -> Self {
        DeliveryFuture { batch, index, timestamp, waiting: None }
    }

    /// The partition the record was appended to.
    pub fn partition(&self) -> i32 {
        self.batch.partition
    }

    /// Whether `other`'s record is in the same batch as this one. Records of
    /// one batch complete together with one outcome, so a caller with
    /// thousands of records in flight may await one future per batch.
    pub fn shares_batch_with(&self, other: &DeliveryFuture) -> bool {
        Arc::ptr_eq(&self.batch, &other.batch)
    }

    /// The outcome if known, without waiting.
    pub fn try_result(&self) -> Option<Result<RecordMetadata, Error>> {
        self.batch.outcome_of(self.index).map(|(first, outcome)| self.metadata(first, outcome))
    }

    fn metadata(&self, first: u32, outcome: &Result<Acked, Error>) -> Result<RecordMetadata, Error> {
        match outcome {
            Ok(acked) => Ok(RecordMetadata {
                partition: self.batch.partition,
                offset: acked.base_offset.map(|base| base + i64::from(self.index - first)),
                timestamp: acked.log_append_time.unwrap_or(self.timestamp),
            }),
            Err(error) => Err(error.clone()),
        }
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(result) = this.try_result() {
            return Poll::Ready(result);
        }
        let mut waiters = this.batch.waiters.lock().unwrap_or_else(|p| p.into_inner());
        // Completion may have happened between the check and the lock.
        if let Some(result) = this.try_result() {
            return Poll::Ready(result);
        }
        // The waiters are only taken on completion, so a slot stays ours.
        match this.waiting {
            Some(slot) if slot < waiters.len() => {
                if !waiters[slot].will_wake(cx.waker()) {
                    waiters[slot] = cx.waker().clone();
                }
            }
            _ => {
                this.waiting = Some(waiters.len());
                waiters.push(cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_record_of_a_batch_sees_its_own_offset() {
        let batch = DeliveryGuard::new(3);
        let batch_shared = batch.shared().clone();
        let futures: Vec<_> =
            (0..4).map(|i| DeliveryFuture::new(batch.shared().clone(), i, 100 + i64::from(i))).collect();
        assert!(futures[0].try_result().is_none());
        let waiter = tokio::spawn(async move {
            let mut out = Vec::new();
            for f in futures {
                out.push(f.await.unwrap());
            }
            out
        });
        tokio::task::yield_now().await;
        batch.complete(Ok(Acked { base_offset: Some(40), log_append_time: None }));
        let results = waiter.await.unwrap();
        let (a, b) = (DeliveryFuture::new(batch_shared.clone(), 0, 0), DeliveryFuture::new(batch_shared, 1, 0));
        let other = DeliveryFuture::new(BatchDelivery::new(3), 0, 0);
        assert!(a.shares_batch_with(&b) && !a.shares_batch_with(&other));
        assert_eq!((a.partition(), other.partition()), (3, 3));
        let offsets: Vec<_> = results.iter().map(|m| (m.partition, m.offset, m.timestamp)).collect();
        assert_eq!(offsets, [(3, Some(40), 100), (3, Some(41), 101), (3, Some(42), 102), (3, Some(43), 103)]);
    }

    #[tokio::test]
    async fn log_append_time_and_failures_reach_every_record() {
        let batch = DeliveryGuard::new(0);
        let f = DeliveryFuture::new(batch.shared().clone(), 1, 5);
        batch.complete(Ok(Acked { base_offset: None, log_append_time: Some(999) }));
        assert_eq!(f.await.unwrap(), RecordMetadata { partition: 0, offset: None, timestamp: 999 });

        let batch = DeliveryGuard::new(0);
        let f = DeliveryFuture::new(batch.shared().clone(), 0, 5);
        batch.complete(Err(Error::Closed));
        assert!(matches!(f.await, Err(Error::Closed)));
    }

    #[test]
    fn a_future_polled_again_keeps_one_waker_slot() {
        use std::sync::atomic::{AtomicBool, Ordering};
        struct Flag(AtomicBool);
        impl futures_util::task::ArcWake for Flag {
            fn wake_by_ref(arc_self: &Arc<Self>) {
                arc_self.0.store(true, Ordering::SeqCst);
            }
        }
        let batch = DeliveryGuard::new(0);
        let mut futures: Vec<(DeliveryFuture, Arc<Flag>)> = (0..1000)
            .map(|i| (DeliveryFuture::new(batch.shared().clone(), i, 0), Arc::new(Flag(AtomicBool::new(false)))))
            .collect();
        // Each future has a waker of its own, as in a `FuturesUnordered`,
        // and is polled three times before the outcome.
        for _ in 0..3 {
            for (future, flag) in &mut futures {
                let waker = futures_util::task::waker(flag.clone());
                assert!(Pin::new(future).poll(&mut Context::from_waker(&waker)).is_pending());
            }
        }
        assert_eq!(batch.shared().waiters.lock().unwrap().len(), 1000);
        batch.complete(Ok(Acked { base_offset: Some(0), log_append_time: None }));
        for (i, (future, flag)) in futures.iter_mut().enumerate() {
            assert!(flag.0.load(Ordering::SeqCst), "future {i} was woken");
            let waker = futures_util::task::noop_waker();
            let Poll::Ready(Ok(metadata)) = Pin::new(future).poll(&mut Context::from_waker(&waker)) else {
                panic!("future {i} is ready");
            };
            assert_eq!(metadata.offset, Some(i as i64));
        }
    }

    #[tokio::test]
    async fn a_dropped_batch_fails_its_records() {
        let batch = DeliveryGuard::new(0);
        let f = DeliveryFuture::new(batch.shared().clone(), 0, 5);
        drop(batch);
        let error = f.await.unwrap_err();
        assert!(matches!(error, Error::MaybeWritten { .. }) && error.maybe_written(), "{error:?}");
    }
}
