//! `rill demo`: on a fresh machine, with no arguments, starts a local Tansu
//! broker (testkit's launcher; the first run installs it with pip), creates
//! a topic, prints brokers, partitions, leaders and negotiated API versions,
//! and stops the broker. With `--brokers` it uses that cluster instead.

use std::time::{SystemTime, UNIX_EPOCH};

use rill_client::{Client, ClientConfig, NewTopic, TopicScope};
use rill_testkit::Tansu;

use super::CliError;
use super::args::{Common, DemoArgs};

pub(crate) async fn run(common: &Common, args: &DemoArgs) -> Result<(), CliError> {
    // Keep the broker alive (it stops on drop) until the demo is done.
    let (config, _broker) = match common.brokers {
        Some(_) => (common.client_config()?, None),
        None => {
            eprintln!("starting a local Tansu broker (the first run installs it with pip)...");
            let tansu = Tansu::start().await?;
            eprintln!("tansu is up at {} (pid {})", tansu.bootstrap(), tansu.pid());
            let mut properties = common.properties.clone();
            properties.push(("bootstrap.servers".into(), tansu.bootstrap()));
            (ClientConfig::from_properties(properties)?, Some(tansu))
        }
    };
    let client = Client::new(config.client_id("rill-demo"))?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let topic = format!("rill-demo-{stamp}");
    client.admin().create_topics(&[NewTopic::new(&topic, args.partitions)]).await?;
    println!("created topic {topic} with {} partitions", args.partitions);
    let metadata = client.refresh_metadata(TopicScope::Named(vec![topic.clone()])).await?;
    print!("{}", super::metadata::describe(&client, &metadata).await);
    if common.brokers.is_some() {
        client.admin().delete_topics(&[topic.as_str()]).await?;
        println!("deleted topic {topic}");
    } else {
        eprintln!("stopping the local broker");
    }
    Ok(())
}
