//! `rill consume`: records to standard output, kcat-style.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64_STANDARD;
use rill_client::consumer::{Consumer, ConsumerConfig, ConsumerHandle, ConsumerRecord, Event, OffsetReset, Resume};
use rill_client::{OffsetSpec, TopicPartition, TopicScope};
use serde_json::{Value, json};

use super::CliError;
use super::args::{Common, ConsumeArgs, StartFrom};

/// One piece of an output format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Text(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
    Headers,
    KeySize,
    ValueSize,
}

/// Parses a kcat-style format: `%t %p %o %k %v %T %h %K %S %%`, `\n \t \\`.
fn parse_format(format: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut text = Vec::new();
    let mut chars = format.chars();
    let flush = |text: &mut Vec<u8>, tokens: &mut Vec<Token>| {
        if !text.is_empty() {
            tokens.push(Token::Text(std::mem::take(text)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '%' => {
                let token = match chars.next() {
                    Some('t') => Token::Topic,
                    Some('p') => Token::Partition,
                    Some('o') => Token::Offset,
                    Some('k') => Token::Key,
                    Some('v' | 's') => Token::Value,
                    Some('T') => Token::Timestamp,
                    Some('h') => Token::Headers,
                    Some('K') => Token::KeySize,
                    Some('S') => Token::ValueSize,
                    Some('%') => {
                        text.push(b'%');
                        continue;
                    }
                    Some(other) => return Err(format!("unknown format token %{other}")),
                    None => return Err("format ends with a lone %".into()),
                };
                flush(&mut text, &mut tokens);
                tokens.push(token);
            }
            '\\' => match chars.next() {
                Some('n') => text.push(b'\n'),
                Some('t') => text.push(b'\t'),
                Some('\\') => text.push(b'\\'),
                Some(other) => return Err(format!("unknown escape \\{other}")),
                None => text.push(b'\\'),
            },
            other => {
                let mut buf = [0u8; 4];
                text.extend_from_slice(other.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    flush(&mut text, &mut tokens);
    Ok(tokens)
}

fn write_formatted(out: &mut Vec<u8>, tokens: &[Token], record: &ConsumerRecord) {
    for token in tokens {
        match token {
            Token::Text(text) => out.extend_from_slice(text),
            Token::Topic => out.extend_from_slice(record.topic.as_bytes()),
            Token::Partition => out.extend_from_slice(record.partition.to_string().as_bytes()),
            Token::Offset => out.extend_from_slice(record.offset.to_string().as_bytes()),
            Token::Key => out.extend_from_slice(record.key.as_deref().unwrap_or_default()),
            Token::Value => out.extend_from_slice(record.value.as_deref().unwrap_or_default()),
            Token::Timestamp => out.extend_from_slice(record.timestamp.to_string().as_bytes()),
            Token::KeySize => {
                out.extend_from_slice(record.key.as_ref().map_or(-1, |k| k.len() as i64).to_string().as_bytes())
            }
            Token::ValueSize => {
                out.extend_from_slice(record.value.as_ref().map_or(-1, |v| v.len() as i64).to_string().as_bytes())
            }
            Token::Headers => {
                for (i, header) in record.headers.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(header.key.as_bytes());
                    out.push(b'=');
                    out.extend_from_slice(header.value.as_deref().unwrap_or_default());
                }
            }
        }
    }
}

/// Bytes as a JSON value: a string when UTF-8, else `{"base64": "..."}`.
fn json_bytes(bytes: Option<&[u8]>) -> Value {
    match bytes {
        None => Value::Null,
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => Value::from(text),
            Err(_) => json!({ "base64": BASE64_STANDARD.encode(bytes) }),
        },
    }
}

/// One record as one line of JSON (kcat's field order).
fn write_json(out: &mut Vec<u8>, record: &ConsumerRecord) {
    let headers: Vec<Value> =
        record.headers.iter().map(|header| json!([header.key.as_str(), json_bytes(header.value.as_deref())])).collect();
    let line = json!({
        "topic": &*record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": json_bytes(record.key.as_deref()),
        "value": json_bytes(record.value.as_deref()),
        "headers": headers,
    });
    serde_json::to_writer(&mut *out, &line).expect("a JSON value writes to memory");
    out.push(b'\n');
}

/// Records written to the output but not yet flushed: the offsets to store
/// once they are. A group commits only offsets whose records reached the
/// output, however the command stops.
#[derive(Debug, Default)]
struct Unflushed(BTreeMap<TopicPartition, i64>);

impl Unflushed {
    fn written(&mut self, record: &ConsumerRecord) {
        self.0.insert(record.topic_partition(), record.offset + 1);
    }

    /// Flushes the output, then stores what it held for the next commit.
    fn flush(&mut self, out: &mut impl Write, handle: &ConsumerHandle) -> std::io::Result<()> {
        out.flush()?;
        for (tp, offset) in std::mem::take(&mut self.0) {
            // A partition no longer assigned has nothing left to commit.
            let _ = handle.store_offsets(&[(tp, offset)]);
        }
        Ok(())
    }

    /// A lost partition may be someone else's: nothing of it is stored.
    fn forget(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            self.0.remove(tp);
        }
    }
}

/// Whether a write error ends the run quietly: a closed pipe (`| head`).
fn closed_pipe(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::BrokenPipe
}

/// How a failed write of the output ends the run.
fn write_failed(error: std::io::Error) -> Result<(), CliError> {
    if closed_pipe(&error) { Ok(()) } else { Err(error.into()) }
}

/// How long a group consumer waits for its first assignment before it
/// says what it waits for.
const JOIN_NOTICE_AFTER: Duration = Duration::from_secs(2);

pub(crate) async fn run(common: &Common, args: &ConsumeArgs) -> Result<(), CliError> {
    let tokens = parse_format(&args.format)?;
    // The signal is seen between any two records, not only when the loop
    // waits: records already fetched are not all written out after it.
    let (signalled, mut stop) = tokio::sync::watch::channel(());
    let signal = super::stop_signal()?;
    tokio::spawn(async move {
        signal.await;
        signalled.send_replace(());
    });
    let mut config: ConsumerConfig = common.consumer_config()?;
    if let Some(group) = &args.group {
        // Offsets are stored by hand, once the records are written out.
        config = config.group(group).auto_offset_store(false);
    }
    if args.exit_at_end {
        config = config.partition_eof(true);
    }
    config = match args.from {
        StartFrom::Beginning => config.offset_reset(OffsetReset::Earliest),
        StartFrom::End => config.offset_reset(OffsetReset::Latest),
        _ => config,
    };
    if args.from == StartFrom::Stored && args.group.is_none() {
        return Err("--from stored needs --group".into());
    }
    let mut consumer = Consumer::new(config.clone())?;
    let handle = consumer.handle();

    // Partitions to read: the group decides, unless one is named.
    let metadata = rill_client::Client::new(config.client().clone())?
        .refresh_metadata(TopicScope::Named(vec![args.topic.clone()]))
        .await?;
    let count = metadata
        .topics
        .get(&args.topic)
        .map(|t| t.partitions.len() as i32)
        .ok_or_else(|| format!("topic {} does not exist", args.topic))?;
    let subscribed = args.group.is_some() && args.partition.is_none();
    if subscribed {
        consumer.subscribe(&[&args.topic])?;
    } else {
        let partitions: Vec<TopicPartition> = match args.partition {
            Some(p) if p < 0 || p >= count => return Err(format!("{} has no partition {p}", args.topic).into()),
            Some(p) => vec![TopicPartition::new(&args.topic, p)],
            None => (0..count).map(|p| TopicPartition::new(&args.topic, p)).collect(),
        };
        // Start offsets first, so that nothing is fetched from elsewhere.
        let starts = start_offsets(&config, &partitions, args.from, args.group.is_some()).await?;
        consumer.assign(&partitions);
        for (tp, offset) in starts {
            handle.seek(&tp, offset)?;
        }
    }

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut unflushed = Unflushed::default();
    let mut line = Vec::with_capacity(256);
    let mut printed = 0u64;
    let mut at_end: BTreeSet<TopicPartition> = BTreeSet::new();
    // A group join can take long (a coordinator holds it until the other
    // members rejoin): after a while, say what the wait is for.
    let mut waiting_notice = subscribed.then(|| tokio::time::Instant::now() + JOIN_NOTICE_AFTER);
    let mut noticed = false;
    let outcome: Result<(), CliError> = 'consume: loop {
        if args.count.is_some_and(|c| printed >= c) || stop.has_changed().unwrap_or(true) {
            break Ok(());
        }
        // Records already fetched are taken without waiting; before the
        // loop waits, what was written goes out and its offsets are stored.
        let event = match consumer.try_next_record() {
            Some(record) => Ok(Event::Record(record)),
            None => {
                if let Err(error) = unflushed.flush(&mut out, &handle) {
                    break write_failed(error);
                }
                loop {
                    tokio::select! {
                        event = consumer.next_event() => break event,
                        _ = stop.changed() => break 'consume Ok(()),
                        () = tokio::time::sleep_until(waiting_notice.unwrap_or_else(tokio::time::Instant::now)),
                            if waiting_notice.is_some() =>
                        {
                            waiting_notice = None;
                            noticed = true;
                            eprintln!(
                                "rill: waiting for group {} to assign partitions (the coordinator holds a join until \
                                 the group's members have rejoined, up to the rebalance timeout)...",
                                args.group.as_deref().unwrap_or_default()
                            );
                        }
                    }
                }
            }
        };
        match event {
            Ok(Event::Record(record)) => {
                at_end.remove(&record.topic_partition());
                line.clear();
                if args.json {
                    write_json(&mut line, &record);
                } else {
                    write_formatted(&mut line, &tokens, &record);
                }
                if let Err(error) = out.write_all(&line) {
                    break write_failed(error);
                }
                unflushed.written(&record);
                printed += 1;
            }
            Ok(Event::PartitionEof { partition, .. }) => {
                at_end.insert(partition);
                let assigned = handle.assignment();
                if args.exit_at_end && !assigned.is_empty() && assigned.iter().all(|tp| at_end.contains(tp)) {
                    break Ok(());
                }
            }
            Ok(Event::Revoked(revocation)) => {
                // What was written of these partitions is committed as the
                // revocation is dropped: flush and store it first.
                if let Err(error) = unflushed.flush(&mut out, &handle) {
                    break write_failed(error);
                }
                for tp in revocation.partitions() {
                    at_end.remove(tp);
                }
            }
            Ok(Event::Lost(partitions)) => {
                unflushed.forget(&partitions);
                for tp in &partitions {
                    at_end.remove(tp);
                }
            }
            Ok(Event::Assigned(partitions)) => {
                waiting_notice = None;
                if std::mem::take(&mut noticed) {
                    let named: Vec<String> = partitions.iter().map(ToString::to_string).collect();
                    eprintln!(
                        "rill: assigned {}",
                        if named.is_empty() { "nothing".to_owned() } else { named.join(", ") }
                    );
                }
            }
            Ok(Event::Unreadable { partition, offset, skip_to, error }) => {
                // As kcat: say so and go on after it.
                let _ = unflushed.flush(&mut out, &handle);
                eprintln!(
                    "rill: {partition}: offsets {offset} to {} cannot be read, skipped: {}",
                    skip_to - 1,
                    super::one_line(&error)
                );
                if let Err(error) = handle.seek(&partition, skip_to) {
                    break Err(error.into());
                }
            }
            Ok(Event::LogTruncated { partition, error, resume }) => {
                // What was written is stored first; past the divergence
                // the log now holds other records, read from there on.
                let _ = unflushed.flush(&mut out, &handle);
                let next = match resume {
                    Resume::At(offset) => {
                        if let Err(error) = handle.store_offsets(&[(partition.clone(), offset)]) {
                            break Err(error.into());
                        }
                        format!("reading on at offset {offset}")
                    }
                    Resume::Reset(reset) => format!("reading on where auto.offset.reset ({reset:?}) says"),
                    Resume::Stopped => "the partition stopped (auto.offset.reset=error)".to_owned(),
                };
                eprintln!("rill: {}; {next}", super::one_line(&error));
            }
            Ok(Event::Error { partition, error }) => {
                let _ = unflushed.flush(&mut out, &handle);
                match &partition {
                    Some(tp) => eprintln!("rill: {tp}: {}", super::one_line(&error)),
                    None => eprintln!("rill: {}", super::one_line(&error)),
                }
                if !error.is_retriable() && partition.is_none() {
                    break Err(error.into());
                }
            }
            Ok(_) => {}
            Err(error) => break Err(error.into()),
        }
    };
    // Only what reached the output is stored, so only that is committed.
    let flushed = unflushed.flush(&mut out, &handle);
    drop(out);
    let closed = consumer.close(Duration::from_secs(10)).await;
    eprintln!("rill: consumed {} from {}", super::count(printed, "record"), args.topic);
    outcome?;
    if let Err(error) = flushed
        && !closed_pipe(&error)
    {
        return Err(error.into());
    }
    closed?;
    Ok(())
}

/// Where each partition starts per `--from`, when that is an offset to
/// seek: `beginning` / `end` are otherwise left to the reset policy (no
/// group: nothing is committed), `stored` to the group's commits.
async fn start_offsets(
    config: &ConsumerConfig,
    partitions: &[TopicPartition],
    from: StartFrom,
    grouped: bool,
) -> Result<Vec<(TopicPartition, i64)>, CliError> {
    let list = async |spec: OffsetSpec| -> Result<Vec<(TopicPartition, i64)>, CliError> {
        let client = rill_client::Client::new(config.client().clone())?;
        let asked: Vec<(TopicPartition, OffsetSpec)> = partitions.iter().map(|tp| (tp.clone(), spec)).collect();
        let found = client.admin().list_offsets(&asked).await?;
        Ok(partitions.iter().map(|tp| (tp.clone(), found.get(tp).map_or(0, |o| o.offset))).collect())
    };
    Ok(match from {
        StartFrom::Offset(offset) => partitions.iter().map(|tp| (tp.clone(), offset)).collect(),
        StartFrom::FromEnd(back) => {
            let starts = list(OffsetSpec::Earliest).await?;
            let ends = list(OffsetSpec::Latest).await?;
            starts.into_iter().zip(ends).map(|((tp, start), (_, end))| (tp, (end - back).max(start))).collect()
        }
        // With a group, an explicit start beats the commits.
        StartFrom::Beginning if grouped => list(OffsetSpec::Earliest).await?,
        StartFrom::End if grouped => list(OffsetSpec::Latest).await?,
        StartFrom::Beginning | StartFrom::End | StartFrom::Stored => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rill_client::kafka_protocol::protocol::StrBytes;
    use rill_client::records::RecordHeader;
    use std::sync::Arc;

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: Arc::from("t"),
            partition: 2,
            offset: 41,
            timestamp: 1700,
            timestamp_type: rill_client::consumer::TimestampType::CreateTime,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v\"1")),
            headers: vec![
                RecordHeader { key: StrBytes::from_static_str("a"), value: Some(Bytes::from_static(b"1")) },
                RecordHeader { key: StrBytes::from_static_str("a"), value: None },
            ],
            leader_epoch: None,
        }
    }

    #[test]
    fn kcat_format_tokens() {
        let tokens = parse_format("%t/%p@%o %k=%v (%K,%S) %T [%h] 100%%\\t|\\n").unwrap();
        let mut out = Vec::new();
        write_formatted(&mut out, &tokens, &record());
        assert_eq!(String::from_utf8(out).unwrap(), "t/2@41 k=v\"1 (1,3) 1700 [a=1,a=] 100%\t|\n");
        assert!(parse_format("%x").is_err());
        assert!(parse_format("50%").is_err());
    }

    #[test]
    fn json_lines() {
        let mut out = Vec::new();
        write_json(&mut out, &record());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"topic\":\"t\",\"partition\":2,\"offset\":41,\"timestamp\":1700,\"key\":\"k\",\"value\":\"v\\\"1\",\
             \"headers\":[[\"a\",\"1\"],[\"a\",null]]}\n"
        );
        let mut binary = record();
        binary.value = Some(Bytes::from_static(&[0xff, 0x00, 0x10]));
        binary.key = None;
        let mut out = Vec::new();
        write_json(&mut out, &binary);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"key\":null,\"value\":{\"base64\":\"/wAQ\"}"), "{text}");

        // Control characters are escaped, and every line parses back.
        let mut control = record();
        control.value = Some(Bytes::from_static(b"a\x01\x1fb"));
        let mut out = Vec::new();
        write_json(&mut out, &control);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#""value":"a\u0001\u001fb""#), "{text}");
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["value"], "a\u{1}\u{1f}b");
        assert_eq!(parsed["headers"][1][1], Value::Null);
    }
}
