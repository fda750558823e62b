//! `rill topic create|list|delete`.

use rill_client::{Client, NewTopic};

use super::CliError;
use super::args::{Common, TopicCommand};

pub(crate) async fn run(common: &Common, command: &TopicCommand) -> Result<(), CliError> {
    let client = Client::new(common.client_config()?)?;
    let admin = client.admin();
    match command {
        TopicCommand::Create { partitions, replication_factor, configs, name } => {
            let topic = NewTopic {
                name: name.clone(),
                partitions: *partitions,
                replication_factor: *replication_factor,
                configs: configs.clone(),
            };
            admin.create_topics(&[topic]).await?;
            let described = admin.describe_topics(&[name.as_str()]).await?;
            let partitions = described.first().map_or(0, |t| t.partitions.len());
            println!("created topic {name} with {}", super::count(partitions as u64, "partition"));
        }
        TopicCommand::List => {
            for topic in admin.list_topics().await? {
                let internal = if topic.internal { " (internal)" } else { "" };
                println!("{}\t{}{internal}", topic.name, super::count(topic.partitions.len() as u64, "partition"));
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topics(&[name.as_str()]).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}
