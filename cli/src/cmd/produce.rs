//! `rill produce`: one record per line of standard input.

use std::collections::VecDeque;
use std::time::Instant;

use rill_client::TopicScope;
use rill_client::producer::{DeliveryFuture, Header, Producer, Record};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::CliError;
use super::args::{Common, ProduceArgs};

/// Outcomes awaited at most this far behind the newest record, so memory
/// stays flat however long the input.
const IN_FLIGHT: usize = 100_000;

#[derive(Debug, Default)]
struct Tally {
    delivered: u64,
    failed: u64,
    /// Of the failed, those that may be in the topic all the same.
    maybe_written: u64,
    first_error: Option<String>,
}

impl Tally {
    async fn settle(&mut self, delivery: DeliveryFuture) {
        match delivery.await {
            Ok(_) => self.delivered += 1,
            Err(error) => {
                self.failed += 1;
                self.maybe_written += u64::from(error.maybe_written());
                self.first_error.get_or_insert_with(|| super::one_line(&error));
            }
        }
    }
}

/// Reads lines until the input ends; on SIGINT or SIGTERM stops reading,
/// delivers what was read (within the delivery timeout), reports what was
/// not, and exits 0 only if every line read was delivered.
pub(crate) async fn run(common: &Common, args: &ProduceArgs) -> Result<(), CliError> {
    let mut stop = std::pin::pin!(super::stop_signal()?);
    let producer = Producer::new(common.producer_config(&args.producer)?)?;
    // Fail at once when no broker answers, as every other command does,
    // instead of after the delivery timeout of the first line.
    producer.client().refresh_metadata(TopicScope::Named(vec![args.topic.clone()])).await?;
    let headers: Vec<Header<'_>> = args.headers.iter().map(|(k, v)| Header::new(k, Some(v.as_bytes()))).collect();
    let started = Instant::now();
    let mut input = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    let mut tally = Tally::default();
    loop {
        line.clear();
        let read = tokio::select! {
            read = input.read_until(b'\n', &mut line) => read?,
            () = &mut stop => break,
        };
        if read == 0 {
            break;
        }
        let mut text = &line[..];
        if let Some(stripped) = text.strip_suffix(b"\n") {
            text = stripped.strip_suffix(b"\r").unwrap_or(stripped);
        }
        let (key, value) = match &args.key_delimiter {
            Some(delimiter) => match find(text, delimiter.as_bytes()) {
                Some(at) => (Some(&text[..at]), &text[at + delimiter.len()..]),
                None => (None, text),
            },
            None => (None, text),
        };
        let mut record = Record::to(&args.topic).value(value).headers(&headers);
        record.key = key;
        record.partition = args.partition;
        match producer.send(record).await {
            Ok(delivery) => pending.push_back(delivery),
            Err(error) => {
                tally.failed += 1;
                tally.first_error.get_or_insert_with(|| super::one_line(&error));
                break;
            }
        }
        while pending.front().is_some_and(|d| d.try_result().is_some()) || pending.len() > IN_FLIGHT {
            tally.settle(pending.pop_front().expect("checked")).await;
        }
    }
    producer.flush().await?;
    for delivery in pending {
        tally.settle(delivery).await;
    }
    let failed = match (tally.failed, tally.maybe_written) {
        (0, _) => String::new(),
        (failed, 0) => format!(", {failed} failed (not written)"),
        (failed, maybe) => format!(", {failed} failed ({maybe} of them may have been written)"),
    };
    eprintln!(
        "rill: produced {} to {} in {:.2} s{failed}",
        super::count(tally.delivered, "record"),
        args.topic,
        started.elapsed().as_secs_f64(),
    );
    match tally.first_error {
        Some(error) => Err(format!("not every record was delivered: {error}").into()),
        None => Ok(()),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}
