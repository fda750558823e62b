//! `rill cluster info`.

use rill_client::Client;
use serde_json::json;

use super::CliError;
use super::args::{ClusterCommand, Common};
use super::table::{or_dash, render};

pub(crate) async fn run(common: &Common, command: &ClusterCommand) -> Result<(), CliError> {
    let client = Client::new(common.client_config()?)?;
    let ClusterCommand::Info { json } = command;
    let cluster = client.admin().describe_cluster().await?;
    if *json {
        let brokers: Vec<_> = cluster
            .brokers
            .iter()
            .map(|b| json!({"id": b.id, "host": b.address.host, "port": b.address.port, "rack": b.rack}))
            .collect();
        let out = json!({"cluster_id": cluster.cluster_id, "controller": cluster.controller, "brokers": brokers});
        println!("{out}");
        return Ok(());
    }
    println!("CLUSTER     {}", or_dash(cluster.cluster_id.as_deref()));
    println!("CONTROLLER  {}", or_dash(cluster.controller));
    println!();
    let rows: Vec<Vec<String>> = cluster
        .brokers
        .iter()
        .map(|b| {
            let controller = if Some(b.id) == cluster.controller { "*" } else { "" };
            vec![
                format!("{}{controller}", b.id),
                b.address.host.clone(),
                b.address.port.to_string(),
                or_dash(b.rack.as_deref()),
            ]
        })
        .collect();
    print!("{}", render(&["ID", "HOST", "PORT", "RACK"], &rows));
    Ok(())
}
