//! `rill metadata`: brokers, topics, partitions, leaders and the API
//! versions negotiated with each broker.

use std::fmt::Write as _;

use rill_client::{Client, Metadata, TopicScope};

use super::CliError;
use super::args::Common;

pub(crate) async fn run(common: &Common) -> Result<(), CliError> {
    let client = Client::new(common.client_config()?)?;
    let metadata = client.refresh_metadata(TopicScope::All).await?;
    print!("{}", describe(&client, &metadata, true).await);
    Ok(())
}

/// A text report of `metadata`, with (when `api_versions`) the API
/// versions negotiated with each broker (brokers that cannot be reached
/// say so).
pub(crate) async fn describe(client: &Client, metadata: &Metadata, api_versions: bool) -> String {
    let mut out = String::new();
    let cluster = metadata.cluster_id.as_deref().unwrap_or("-");
    let controller = metadata.controller.map_or("-".to_owned(), |c| c.to_string());
    let _ = writeln!(out, "cluster {cluster}, controller {controller}");
    let _ = writeln!(out, "{}:", super::count(metadata.brokers.len() as u64, "broker"));
    for broker in metadata.brokers.values() {
        let rack = broker.rack.as_deref().map(|r| format!(" rack {r}")).unwrap_or_default();
        let _ = writeln!(out, "  broker {} at {}{rack}", broker.id, broker.address);
    }
    let _ = writeln!(out, "{}:", super::count(metadata.topics.len() as u64, "topic"));
    for topic in metadata.topics.values() {
        let internal = if topic.internal { " (internal)" } else { "" };
        let partitions = super::count(topic.partitions.len() as u64, "partition");
        let _ = writeln!(out, "  topic {} with {partitions}{internal}", topic.name);
        for p in &topic.partitions {
            let leader = p.leader.map_or("none".to_owned(), |l| l.to_string());
            let error = p.error.map(|e| format!(" error {e}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "    partition {} leader {leader} epoch {} replicas {:?} isr {:?}{error}",
                p.partition, p.leader_epoch, p.replicas, p.isr
            );
        }
    }
    for broker in metadata.brokers.values().filter(|_| api_versions) {
        let _ = writeln!(out, "api versions negotiated with broker {} ({}):", broker.id, broker.address);
        match client.broker_connection(broker.id).await {
            Ok(connection) => {
                for api in connection.api_versions().client_apis() {
                    let chosen = api.chosen.map_or("unsupported".to_owned(), |v| format!("v{v}"));
                    let _ = writeln!(
                        out,
                        "  {:<14} rill {}..{}  broker {:<6} -> {chosen}",
                        format!("{:?}", api.api),
                        api.ours.0,
                        api.ours.1,
                        api.theirs_display()
                    );
                }
            }
            Err(error) => {
                let _ = writeln!(out, "  unreachable: {}", super::one_line(&error));
            }
        }
    }
    out
}
