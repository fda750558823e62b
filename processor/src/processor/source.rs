//! Source mode: no input topic; the function is called again and again
//! and its outputs are produced. There are no input offsets: a delivery
//! error stops the loop, a shutdown flushes and waits for what was sent.
//! Calls are numbered from 0 and tracked as offsets are: the contiguous
//! prefix of calls whose outputs were all delivered is acknowledged to the
//! source, if it asked ([`ProcessorBuilder::acknowledge`](super::ProcessorBuilder::acknowledge)).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use rill_client::producer::{Header, Producer, Record};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{ErrorTolerance, Processor, ProcessorError, SourceFn, run};
use crate::tracker::OffsetTracker;

/// Which calls are delivered, and the acknowledgement of the prefix.
struct Acks<'a> {
    tracker: OffsetTracker,
    acknowledge: Option<&'a (dyn Fn(u64) + Send + Sync)>,
}

impl Acks<'_> {
    fn moved(&self, watermark: Option<i64>) {
        if let (Some(acknowledge), Some(calls)) = (self.acknowledge, watermark) {
            acknowledge(calls as u64);
        }
    }

    /// Call `call` sent `outputs` outputs.
    fn called(&mut self, call: i64, outputs: u32) {
        let moved = self.tracker.start(call, outputs).unwrap_or_else(|error| unreachable!("calls in order: {error}"));
        self.moved(moved);
    }

    fn delivered(&mut self, call: i64) {
        match self.tracker.delivered(call) {
            Ok(moved) => self.moved(moved),
            Err(error) => warn!(target: "rill::processor", %error, "source call tracking"),
        }
    }
}

/// After a call that returned nothing, the next one waits this long.
const SOURCE_IDLE: Duration = Duration::from_millis(10);

pub(super) async fn run<InK, InV, OutK, OutV>(
    processor: &Processor<InK, InV, OutK, OutV>,
    source: Arc<SourceFn<OutK, OutV>>,
    producer: Producer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProcessorError> {
    let metrics = &processor.metrics;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut pending = FuturesUnordered::new();
    let next_call = |idle: bool| {
        let source = source.clone();
        async move {
            if idle {
                tokio::time::sleep(SOURCE_IDLE).await;
            }
            source().await
        }
        .boxed()
    };
    let mut call = next_call(false);
    let mut number: i64 = 0;
    let mut acks = Acks { tracker: OffsetTracker::new(), acknowledge: processor.acknowledge.as_deref() };
    let result: Result<(), ProcessorError> = async {
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    info!(target: "rill::processor", "shutdown requested");
                    return Ok(());
                }
                Some(result) = pending.next(), if !pending.is_empty() => {
                    metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                    let (result, dead_letter, of): (Result<_, rill_client::Error>, bool, i64) = result;
                    result.map_err(ProcessorError::SourceDelivery)?;
                    let counter = if dead_letter { &metrics.dead_lettered } else { &metrics.produced };
                    counter.fetch_add(1, Ordering::Relaxed);
                    acks.delivered(of);
                }
                result = &mut call => {
                    let this = number;
                    number += 1;
                    let outputs = match result {
                        Ok(outputs) => outputs,
                        Err(error) => match &processor.function_tolerance {
                            ErrorTolerance::Stop => return Err(ProcessorError::Source(error)),
                            ErrorTolerance::Skip => {
                                warn!(target: "rill::processor", %error, "source error skipped");
                                metrics.skipped.fetch_add(1, Ordering::Relaxed);
                                Vec::new()
                            }
                            ErrorTolerance::DeadLetter(topic) => {
                                let message = error.to_string();
                                let headers = [
                                    Header::new("rill.error.kind", Some(b"source")),
                                    Header::new("rill.error.message", Some(message.as_bytes())),
                                ];
                                let delivery = producer.send(Record::to(topic).headers(&headers)).await?;
                                metrics.in_flight.fetch_add(1, Ordering::Relaxed);
                                acks.called(this, 1);
                                pending.push(delivery.map(move |r| (r, true, this)).boxed());
                                call = next_call(false);
                                continue;
                            }
                        },
                    };
                    if outputs.is_empty() {
                        metrics.filtered.fetch_add(1, Ordering::Relaxed);
                    }
                    run::prepare_outputs(processor, &outputs).await.map_err(ProcessorError::SourceOutput)?;
                    let serialized = run::serialize(processor, &outputs).map_err(ProcessorError::SourceOutput)?;
                    // Tracked before the sends: an output may be delivered
                    // before the last one is even queued.
                    acks.called(this, serialized.len() as u32);
                    for ((key, value), output) in serialized.iter().zip(&outputs) {
                        let headers = run::header_views(output);
                        let record = run::output_record(&processor.output, key, value, output, &headers);
                        let delivery = producer.send(record).await?;
                        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
                        pending.push(delivery.map(move |r| (r, false, this)).boxed());
                    }
                    call = next_call(outputs.is_empty());
                }
            }
        }
    }
    .await;
    // Whatever happened, wait (bounded) for what was sent: a clean stop
    // reports every delivery; after an error only what already finished.
    let deadline = Instant::now() + processor.shutdown_timeout;
    if result.is_ok() {
        let _ = tokio::time::timeout_at(deadline, producer.flush()).await;
        while let Ok(Some((outcome, dead_letter, of))) = tokio::time::timeout_at(deadline, pending.next()).await {
            metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
            match outcome {
                Ok(_) if dead_letter => metrics.dead_lettered.fetch_add(1, Ordering::Relaxed),
                Ok(_) => metrics.produced.fetch_add(1, Ordering::Relaxed),
                Err(error) => {
                    let _ = producer.close(Duration::from_millis(100)).await;
                    return Err(ProcessorError::SourceDelivery(error));
                }
            };
            acks.delivered(of);
        }
    }
    let closed =
        producer.close(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100))).await;
    info!(target: "rill::processor", name = %processor.name, "source stopped");
    result?;
    closed?;
    Ok(())
}
