//! `rill topic create|list|delete|describe|alter-config|add-partitions`.

use rill_client::kafka_protocol::messages::ApiKey;
use rill_client::{Admin, AlterConfig, Client, ConfigResource, Error, NewTopic};
use serde_json::{Value, json};

use super::CliError;
use super::args::{Common, TopicCommand};
use super::table::render;

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
        TopicCommand::Describe { name, json } => describe(&admin, name, *json).await?,
        TopicCommand::AlterConfig { name, set, delete } => {
            if set.is_empty() && delete.is_empty() {
                return Err("nothing to change: give --set key=value or --delete key".into());
            }
            let changes: Vec<AlterConfig> = set
                .iter()
                .map(|(k, v)| AlterConfig::Set(k.clone(), v.clone()))
                .chain(delete.iter().map(|k| AlterConfig::Delete(k.clone())))
                .collect();
            admin.alter_configs(&ConfigResource::Topic(name.clone()), &changes).await?;
            println!("altered {} of topic {name}", super::count(changes.len() as u64, "config"));
        }
        TopicCommand::AddPartitions { name, num } => {
            let info = admin.describe_topics(&[name.as_str()]).await?.remove(0);
            let total = info.partitions.len() as i32 + num;
            admin.create_partitions(name, total).await?;
            println!("topic {name} now has {}", super::count(total as u64, "partition"));
        }
    }
    Ok(())
}

async fn describe(admin: &Admin, name: &str, json: bool) -> Result<(), CliError> {
    let info = admin.describe_topics(&[name]).await?.remove(0);
    // Configs need DescribeConfigs; a broker without it (the mock) still
    // describes the partitions.
    let configs = match admin.describe_configs(&[ConfigResource::Topic(name.to_owned())]).await {
        Ok(mut found) => Some(found.remove(0).1),
        Err(Error::UnsupportedApi { api: ApiKey::DescribeConfigs, broker, .. }) => {
            eprintln!("rill: broker {broker} does not support DescribeConfigs: configs unknown");
            None
        }
        Err(error) => return Err(error.into()),
    };
    if json {
        let partitions: Vec<Value> = info
            .partitions
            .iter()
            .map(|p| {
                json!({"partition": p.partition, "leader": p.leader, "leader_epoch": p.leader_epoch,
                       "replicas": p.replicas, "isr": p.isr, "offline_replicas": p.offline_replicas})
            })
            .collect();
        let configs = configs.as_ref().map(|configs| {
            configs
                .iter()
                .map(|c| {
                    json!({"name": c.name, "value": c.value, "source": c.source.as_str(),
                           "read_only": c.read_only, "sensitive": c.sensitive})
                })
                .collect::<Vec<Value>>()
        });
        let out = json!({"topic": info.name, "id": info.id.to_string(), "internal": info.internal,
                         "partitions": partitions, "configs": configs});
        println!("{out}");
        return Ok(());
    }
    println!("TOPIC       {}", info.name);
    println!("ID          {}", info.id);
    println!("PARTITIONS  {}", info.partitions.len());
    println!();
    let list = |ids: &[i32]| ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    let rows: Vec<Vec<String>> = info
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                p.leader.map_or("-".to_owned(), |l| l.to_string()),
                p.leader_epoch.to_string(),
                list(&p.replicas),
                list(&p.isr),
            ]
        })
        .collect();
    print!("{}", render(&["PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR"], &rows));
    if let Some(configs) = configs {
        println!();
        let rows: Vec<Vec<String>> = configs
            .iter()
            .map(|c| {
                let value = if c.sensitive { "(sensitive)".to_owned() } else { c.value.clone().unwrap_or_default() };
                vec![c.name.clone(), value, c.source.as_str().to_owned()]
            })
            .collect();
        print!("{}", render(&["CONFIG", "VALUE", "SOURCE"], &rows));
    }
    Ok(())
}
