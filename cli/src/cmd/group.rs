//! `rill group list|describe|delete|seek`.

use std::collections::{BTreeMap, BTreeSet};

use rill_client::kafka_protocol::messages::ApiKey;
use rill_client::{Admin, Client, Error, GroupDescription, OffsetSpec, TopicPartition};
use serde_json::{Value, json};

use super::CliError;
use super::args::{Common, GroupCommand, SeekTarget};
use super::table::{or_dash, render};

pub(crate) async fn run(common: &Common, command: &GroupCommand) -> Result<(), CliError> {
    let client = Client::new(common.client_config()?)?;
    let admin = client.admin();
    match command {
        GroupCommand::List { json } => list(&admin, *json).await,
        GroupCommand::Describe { group, json } => describe(&admin, group, *json).await,
        GroupCommand::Delete { group } => {
            admin.delete_groups(&[group.as_str()]).await?;
            println!("deleted group {group}");
            Ok(())
        }
        GroupCommand::Seek { group, to, topics, dry_run, json } => {
            seek(&admin, group, *to, topics, *dry_run, *json).await
        }
    }
}

async fn list(admin: &Admin, json: bool) -> Result<(), CliError> {
    let groups = admin.list_groups().await?;
    if json {
        let out: Vec<Value> = groups
            .iter()
            .map(|g| {
                json!({
                    "group": g.group,
                    "state": g.state.as_ref().map(|s| s.as_str()),
                    "protocol_type": g.protocol_type,
                })
            })
            .collect();
        println!("{}", Value::Array(out));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            vec![
                g.group.clone(),
                or_dash(g.state.as_ref()),
                if g.protocol_type.is_empty() { "-".to_owned() } else { g.protocol_type.clone() },
                or_dash(g.group_type.as_deref()),
            ]
        })
        .collect();
    print!("{}", render(&["GROUP", "STATE", "PROTOCOL-TYPE", "TYPE"], &rows));
    Ok(())
}

/// One partition of a described group.
struct Row {
    tp: TopicPartition,
    committed: Option<i64>,
    log_end: i64,
    member: Option<usize>,
}

impl Row {
    fn lag(&self) -> Option<i64> {
        self.committed.map(|c| (self.log_end - c).max(0))
    }
}

async fn describe(admin: &Admin, group: &str, json: bool) -> Result<(), CliError> {
    // The members come from DescribeGroups; a broker without it (the mock)
    // still has the offsets, and the output says the members are unknown.
    let description = match admin.describe_group(group).await {
        Ok(description) => Some(description),
        Err(Error::UnsupportedApi { api: ApiKey::DescribeGroups, broker, .. }) => {
            eprintln!("rill: broker {broker} does not support DescribeGroups: members and state unknown");
            None
        }
        Err(error) => return Err(error.into()),
    };
    let committed = admin.list_group_offsets(group).await?;
    let mut owner: BTreeMap<TopicPartition, usize> = BTreeMap::new();
    for (index, member) in description.iter().flat_map(|d| d.members.iter().enumerate()) {
        for tp in member.assignment.iter().flatten() {
            owner.insert(tp.clone(), index);
        }
    }
    let partitions: BTreeSet<TopicPartition> = committed.keys().chain(owner.keys()).cloned().collect();
    let requests: Vec<(TopicPartition, OffsetSpec)> =
        partitions.iter().map(|tp| (tp.clone(), OffsetSpec::Latest)).collect();
    let log_ends = if requests.is_empty() { BTreeMap::new() } else { admin.list_offsets(&requests).await? };
    let rows: Vec<Row> = partitions
        .into_iter()
        .map(|tp| Row {
            committed: committed.get(&tp).map(|c| c.offset),
            log_end: log_ends.get(&tp).map_or(0, |l| l.offset),
            member: owner.get(&tp).copied(),
            tp,
        })
        .collect();
    let total_lag: i64 = rows.iter().filter_map(Row::lag).sum();
    if json {
        println!("{}", describe_json(group, description.as_ref(), &rows, total_lag));
    } else {
        print!("{}", describe_text(group, description.as_ref(), &rows, total_lag));
    }
    Ok(())
}

fn describe_json(group: &str, description: Option<&GroupDescription>, rows: &[Row], total_lag: i64) -> Value {
    let members = description.map(|d| {
        d.members
            .iter()
            .map(|m| {
                let assignments: Vec<Value> = m
                    .assignment
                    .iter()
                    .flatten()
                    .map(|tp| json!({"topic": tp.topic, "partition": tp.partition}))
                    .collect();
                json!({
                    "member_id": m.member_id,
                    "client_id": m.client_id,
                    "host": m.host,
                    "instance_id": m.instance_id,
                    "assignments": assignments,
                })
            })
            .collect::<Vec<Value>>()
    });
    let offsets: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "topic": r.tp.topic,
                "partition": r.tp.partition,
                "committed": r.committed,
                "log_end": r.log_end,
                "lag": r.lag(),
            })
        })
        .collect();
    json!({
        "group": group,
        "state": description.map(|d| d.state.as_str().to_owned()),
        "protocol": description.map(|d| d.protocol.clone()),
        "members": members,
        "offsets": offsets,
        "total_lag": total_lag,
    })
}

fn describe_text(group: &str, description: Option<&GroupDescription>, rows: &[Row], total_lag: i64) -> String {
    let mut out = String::new();
    let unknown = "unknown".to_owned();
    let protocol = description.map_or(unknown.clone(), |d| {
        let protocol = if d.protocol.is_empty() { "-" } else { d.protocol.as_str() };
        format!("{}/{protocol}", if d.protocol_type.is_empty() { "-" } else { d.protocol_type.as_str() })
    });
    let fields = [
        ("GROUP", group.to_owned()),
        ("COORDINATOR", description.map_or(unknown.clone(), |d| d.coordinator.to_string())),
        ("STATE", description.map_or(unknown.clone(), |d| d.state.to_string())),
        ("PROTOCOL", protocol),
        ("MEMBERS", description.map_or(unknown, |d| d.members.len().to_string())),
        ("TOTAL-LAG", total_lag.to_string()),
    ];
    for (name, value) in fields {
        out.push_str(&format!("{name:<12}{value}\n"));
    }
    if let Some(d) = description.filter(|d| !d.members.is_empty()) {
        out.push('\n');
        let members: Vec<Vec<String>> = d
            .members
            .iter()
            .map(|m| {
                vec![
                    m.member_id.clone(),
                    non_empty(&m.client_id),
                    non_empty(&m.host),
                    or_dash(m.instance_id.as_deref()),
                    m.assignment.as_ref().map_or("-".to_owned(), |a| a.len().to_string()),
                ]
            })
            .collect();
        out.push_str(&render(&["MEMBER-ID", "CLIENT-ID", "HOST", "INSTANCE-ID", "PARTITIONS"], &members));
    }
    out.push('\n');
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let member = r.member.and_then(|i| description.map(|d| &d.members[i]));
            vec![
                r.tp.topic.clone(),
                r.tp.partition.to_string(),
                or_dash(r.committed),
                r.log_end.to_string(),
                or_dash(r.lag()),
                member.map_or("-".to_owned(), |m| m.member_id.clone()),
                member.map_or("-".to_owned(), |m| non_empty(&m.client_id)),
            ]
        })
        .collect();
    out.push_str(&render(
        &["TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "MEMBER-ID", "CLIENT-ID"],
        &table,
    ));
    out
}

fn non_empty(text: &str) -> String {
    if text.is_empty() { "-".to_owned() } else { text.to_owned() }
}

async fn seek(
    admin: &Admin,
    group: &str,
    to: SeekTarget,
    topics: &[(String, Option<Vec<i32>>)],
    dry_run: bool,
    json: bool,
) -> Result<(), CliError> {
    let committed = admin.list_group_offsets(group).await?;
    let partitions: Vec<TopicPartition> = if topics.is_empty() {
        committed.keys().cloned().collect()
    } else {
        let mut partitions = Vec::new();
        for (topic, chosen) in topics {
            let info = admin.describe_topics(&[topic.as_str()]).await?.remove(0);
            let all: Vec<i32> = info.partitions.iter().map(|p| p.partition).collect();
            for p in chosen.as_ref().unwrap_or(&all) {
                if !all.contains(p) {
                    return Err(format!("topic {topic} has no partition {p} (it has {})", all.len()).into());
                }
                partitions.push(TopicPartition::new(topic, *p));
            }
        }
        partitions
    };
    if partitions.is_empty() {
        return Err(format!("group {group} has no committed offsets; name the topics with --topic").into());
    }
    let targets = targets(admin, &partitions, to).await?;
    if json {
        let out: Vec<Value> = targets
            .iter()
            .map(|(tp, new)| {
                json!({
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "committed": committed.get(tp).map(|c| c.offset),
                    "new": new,
                })
            })
            .collect();
        println!("{}", Value::Array(out));
    } else {
        let rows: Vec<Vec<String>> = targets
            .iter()
            .map(|(tp, new)| {
                vec![
                    tp.topic.clone(),
                    tp.partition.to_string(),
                    or_dash(committed.get(tp).map(|c| c.offset)),
                    new.to_string(),
                ]
            })
            .collect();
        print!("{}", render(&["TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET"], &rows));
    }
    if dry_run {
        eprintln!("rill: dry run, nothing committed");
    } else {
        admin.alter_group_offsets(group, &targets).await?;
        eprintln!("rill: group {group} moved on {}", super::count(targets.len() as u64, "partition"));
    }
    Ok(())
}

/// The offset each partition moves to, within its log (an offset outside
/// it is clamped to the nearest end).
async fn targets(
    admin: &Admin,
    partitions: &[TopicPartition],
    to: SeekTarget,
) -> Result<BTreeMap<TopicPartition, i64>, CliError> {
    let ask = |spec: OffsetSpec| partitions.iter().map(move |tp| (tp.clone(), spec)).collect::<Vec<_>>();
    let earliest = admin.list_offsets(&ask(OffsetSpec::Earliest)).await?;
    let latest = admin.list_offsets(&ask(OffsetSpec::Latest)).await?;
    let by_time = match to {
        SeekTarget::Timestamp(ms) => Some(admin.list_offsets(&ask(OffsetSpec::Timestamp(ms))).await?),
        _ => None,
    };
    let mut out = BTreeMap::new();
    for tp in partitions {
        let (low, high) = (earliest[tp].offset, latest[tp].offset);
        let target = match to {
            SeekTarget::Earliest => low,
            SeekTarget::Latest => high,
            SeekTarget::Offset(offset) => offset,
            // No record at or after the time: the log end.
            SeekTarget::Timestamp(_) => {
                by_time.as_ref().and_then(|t| t.get(tp)).map(|l| l.offset).filter(|o| *o >= 0).unwrap_or(high)
            }
            SeekTarget::BeforeEnd(n) => high.saturating_sub(n),
        };
        out.insert(tp.clone(), target.clamp(low, high.max(low)));
    }
    Ok(out)
}
