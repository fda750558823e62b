//! Outputs in flight, awaited one future per producer batch.
//!
//! The records of one batch complete together. Awaiting a future per
//! record (thousands in flight) costs a task, a waker and a poll each; here
//! consecutive outputs appended to the same batch share one entry, and when
//! it completes each of their inputs gets its record's outcome (usually the
//! batch's; a batch the broker refused as too large was split, and one part
//! may fail while another is written).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rill_client::consumer::ConsumerRecord;
use rill_client::producer::DeliveryFuture;

/// The input an output belongs to.
#[derive(Debug)]
pub(super) struct Origin {
    pub(super) partition: i32,
    pub(super) generation: u64,
    pub(super) offset: i64,
    /// The input's timestamp, for the end-to-end latency.
    pub(super) timestamp: i64,
    /// A dead letter: the topic it was sent to.
    pub(super) dead_letter: Option<Arc<str>>,
    /// The input record, kept while its output is in flight when a failed
    /// output is to be dead-lettered.
    pub(super) input: Option<Box<ConsumerRecord>>,
    /// The output's bytes, counted against the buffer budget until its
    /// outcome is known.
    pub(super) bytes: usize,
}

/// One output's outcome.
pub(super) struct Outcome {
    pub(super) origin: Origin,
    pub(super) result: Result<(), rill_client::Error>,
    /// When its batch's outcome was taken (one clock read per batch).
    pub(super) at: SystemTime,
}

/// The batch outputs of one kind (output or dead letter) and partition are
/// appended to now.
struct Open {
    id: u64,
    /// Each output's input, with the output's own future (read, not
    /// awaited, once the batch completed).
    origins: Vec<(Origin, DeliveryFuture)>,
}

/// Resolves when a batch completes.
struct Batch {
    id: u64,
    key: (usize, usize),
    delivery: DeliveryFuture,
}

impl Future for Batch {
    type Output = (u64, (usize, usize), Result<(), rill_client::Error>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = ready!(Pin::new(&mut this.delivery).poll(cx));
        Poll::Ready((this.id, this.key, result.map(|_| ())))
    }
}

#[derive(Default)]
pub(super) struct Deliveries {
    batches: FuturesUnordered<Batch>,
    /// By (dead letter?, partition): the batch being filled.
    open: [Vec<Option<Open>>; 2],
    /// Origins of batches that are no longer being filled.
    closed: HashMap<u64, Vec<(Origin, DeliveryFuture)>>,
    next_id: u64,
    /// Outcomes of a completed batch not yet handed out.
    ready: VecDeque<Outcome>,
    len: usize,
}

impl Deliveries {
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn push(&mut self, delivery: DeliveryFuture, origin: Origin) {
        self.len += 1;
        let kind = usize::from(origin.dead_letter.is_some());
        let partition = usize::try_from(delivery.partition()).unwrap_or(0);
        let slots = &mut self.open[kind];
        if slots.len() <= partition {
            slots.resize_with(partition + 1, || None);
        }
        if let Some(open) = &mut slots[partition]
            && open.origins.last().is_some_and(|(_, last)| last.shares_batch_with(&delivery))
        {
            open.origins.push((origin, delivery));
            return;
        }
        // A new batch: the one before on this partition is full or sent.
        if let Some(old) = slots[partition].take() {
            self.closed.insert(old.id, old.origins);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.batches.push(Batch { id, key: (kind, partition), delivery: delivery.clone() });
        slots[partition] = Some(Open { id, origins: vec![(origin, delivery)] });
    }

    /// The next outcome; `None` when nothing is in flight. Cancel-safe:
    /// nothing is awaited once a batch's outcome is taken.
    pub(super) async fn next(&mut self) -> Option<Outcome> {
        if self.ready.is_empty() {
            let (id, (kind, partition), result) = self.batches.next().await?;
            let origins = match &self.open[kind][partition] {
                Some(open) if open.id == id => self.open[kind][partition].take().map(|o| o.origins),
                _ => self.closed.remove(&id),
            };
            let at = SystemTime::now();
            self.ready.extend(origins.unwrap_or_default().into_iter().map(|(origin, delivery)| {
                // The batch completed, so every record's outcome is known.
                let result = match delivery.try_result() {
                    Some(own) => own.map(|_| ()),
                    None => result.clone(),
                };
                Outcome { origin, result, at }
            }));
        }
        let outcome = self.ready.pop_front()?;
        self.len -= 1;
        Some(outcome)
    }
}
