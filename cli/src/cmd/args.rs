//! The command line.

use clap::{Args as ClapArgs, Parser, Subcommand};
use rill_client::consumer::ConsumerConfig;
use rill_client::producer::ProducerConfig;
use rill_client::records::Compression;
use rill_client::{ClientConfig, ConfigError};

/// Rill: a pure-Rust Kafka client and stream processor.
#[derive(Debug, Parser)]
#[command(name = "rill", version, about = "Rill: a pure-Rust Kafka client and stream processor")]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, ClapArgs)]
pub(crate) struct Common {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    #[arg(short = 'b', long, env = "RILL_BROKERS", global = true)]
    pub(crate) brokers: Option<String>,
    /// Sets a client property by its librdkafka/Java name, as kcat does
    /// (`-X request.timeout.ms=5000`). Repeatable; overrides -F.
    #[arg(short = 'X', value_name = "KEY=VALUE", global = true, value_parser = parse_key_value)]
    pub(crate) properties: Vec<(String, String)>,
    /// Reads client properties from a file (`client.properties` of Java and
    /// librdkafka, as kcat -F): `key=value` lines, `#` comments. -X and
    /// --brokers override what it sets.
    #[arg(short = 'F', long = "config-file", value_name = "FILE", env = "RILL_CONFIG_FILE", global = true)]
    pub(crate) config_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create, list or delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// List, describe, delete consumer groups and move their offsets.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Describe the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Show brokers, topics, partitions, leaders and negotiated API versions.
    Metadata,
    /// Produce one record per line of standard input.
    Produce(ProduceArgs),
    /// Print records, one per line (kcat-style --format, or --json).
    Consume(ConsumeArgs),
    /// Run the web-log processor (the article's example) until SIGINT or
    /// SIGTERM: IPv4 address → country key, line without the address.
    Weblog(WeblogArgs),
    /// Measure throughput and CPU; ends with one JSON line on stdout.
    #[command(subcommand)]
    Perf(PerfCommand),
    /// Run the demo end to end on a local broker (started here unless
    /// --brokers is given).
    Demo(DemoArgs),
    /// Start a local broker (Tansu, installed on first use) and keep it
    /// running until SIGINT or SIGTERM; its address is the first line on
    /// stdout.
    Broker,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TopicCommand {
    /// Create a topic.
    Create {
        /// Number of partitions, at least 1 (broker default when omitted).
        #[arg(short, long, value_parser = clap::value_parser!(i32).range(1..))]
        partitions: Option<i32>,
        /// Replication factor, at least 1 (broker default when omitted).
        #[arg(short, long, value_parser = clap::value_parser!(i16).range(1..))]
        replication_factor: Option<i16>,
        /// A topic config, `key=value`. Repeatable.
        #[arg(short, long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
        /// Topic name.
        name: String,
    },
    /// List topics.
    List,
    /// Delete a topic.
    Delete {
        /// Topic name.
        name: String,
    },
    /// Partitions (leaders, replicas, in-sync replicas) and configs of a topic.
    Describe {
        /// Topic name.
        name: String,
        /// One JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Change some configs of a topic, leaving the others as they are.
    AlterConfig {
        /// Topic name.
        name: String,
        /// Sets a config, `key=value`. Repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        set: Vec<(String, String)>,
        /// Removes a config's override, back to its default. Repeatable.
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Add partitions to a topic (Kafka cannot remove any).
    AddPartitions {
        /// Topic name.
        name: String,
        /// How many partitions to add, at least 1.
        #[arg(short, long, value_parser = clap::value_parser!(i32).range(1..))]
        num: i32,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// Every group: its state and protocol type.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A group's members and, per partition, its committed offset, the log
    /// end and the lag.
    Describe {
        /// Group id.
        group: String,
        /// One JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Delete a group and its committed offsets (it must have no members).
    Delete {
        /// Group id.
        group: String,
    },
    /// Move a group's committed offsets (it must have no members).
    Seek {
        /// Group id.
        group: String,
        /// Where to: `earliest`, `latest`, an offset (`42`), a time in ms
        /// since the epoch (`@1733300000000`: the first record at or after
        /// it), or `-N` (N records before the log end).
        #[arg(long, value_name = "TARGET", allow_hyphen_values = true, value_parser = parse_seek_target)]
        to: SeekTarget,
        /// Only this topic, or these of its partitions (`T:0,2`).
        /// Repeatable; default: every topic the group committed offsets for.
        #[arg(long = "topic", value_name = "T[:P,...]", value_parser = parse_topic_partitions)]
        topics: Vec<(String, Option<Vec<i32>>)>,
        /// Print what would change, commit nothing.
        #[arg(long)]
        dry_run: bool,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Where `rill group seek` moves offsets to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeekTarget {
    Earliest,
    Latest,
    Offset(i64),
    Timestamp(i64),
    BeforeEnd(i64),
}

fn parse_seek_target(text: &str) -> Result<SeekTarget, String> {
    let number = |t: &str| t.parse::<i64>().ok().filter(|n| *n >= 0);
    match text {
        "earliest" | "start" | "beginning" => Ok(SeekTarget::Earliest),
        "latest" | "end" => Ok(SeekTarget::Latest),
        _ => if let Some(ms) = text.strip_prefix('@') {
            number(ms).map(SeekTarget::Timestamp)
        } else if let Some(n) = text.strip_prefix('-') {
            number(n).map(SeekTarget::BeforeEnd)
        } else {
            number(text).map(SeekTarget::Offset)
        }
        .ok_or_else(|| format!("`{text}`: expected earliest, latest, an offset, @<ms since the epoch> or -<count>")),
    }
}

fn parse_topic_partitions(text: &str) -> Result<(String, Option<Vec<i32>>), String> {
    match text.split_once(':') {
        None if !text.is_empty() => Ok((text.to_owned(), None)),
        Some((topic, list)) if !topic.is_empty() => {
            let partitions = list
                .split(',')
                .map(|p| p.trim().parse::<i32>().ok().filter(|p| *p >= 0))
                .collect::<Option<Vec<i32>>>()
                .ok_or_else(|| format!("`{text}`: partitions are numbers, `topic:0,1,2`"))?;
            Ok((topic.to_owned(), Some(partitions)))
        }
        _ => Err(format!("`{text}`: expected a topic, or `topic:0,1,2`")),
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// The cluster id, the controller and the brokers with their racks.
    Info {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, ClapArgs)]
pub(crate) struct ProduceArgs {
    /// Topic to produce to.
    #[arg(short, long)]
    pub(crate) topic: String,
    /// Split each line at the first occurrence of this delimiter: key before,
    /// value after. Without it, lines are values with no key.
    #[arg(short = 'K', long)]
    pub(crate) key_delimiter: Option<String>,
    /// Send every record to this partition.
    #[arg(short, long)]
    pub(crate) partition: Option<i32>,
    #[command(flatten)]
    pub(crate) producer: ProducerFlags,
    /// A header for every record, `key=value`. Repeatable; keys may repeat.
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) headers: Vec<(String, String)>,
}

/// Producer settings with flags of their own (also settable with -X).
#[derive(Debug, ClapArgs)]
pub(crate) struct ProducerFlags {
    /// linger.ms: how long a batch waits for more records.
    #[arg(long)]
    pub(crate) linger_ms: Option<u64>,
    /// compression.type: none, gzip, snappy, lz4 or zstd.
    #[arg(long)]
    pub(crate) compression: Option<Compression>,
    /// partitioner for keyed records: murmur2 (Java's) or consistent_random
    /// (librdkafka's).
    #[arg(long)]
    pub(crate) partitioner: Option<String>,
}

#[derive(Debug, ClapArgs)]
pub(crate) struct ConsumeArgs {
    /// Topic to read.
    #[arg(short, long)]
    pub(crate) topic: String,
    /// Read as a member of this consumer group (committing offsets);
    /// without --partition the group assigns the partitions.
    #[arg(short = 'G', long)]
    pub(crate) group: Option<String>,
    /// Where to start: beginning, end, stored (the group's committed
    /// offset), an offset, or -N (N records before the end).
    #[arg(short = 'o', long = "from", default_value = "beginning", allow_hyphen_values = true)]
    pub(crate) from: StartFrom,
    /// Only this partition.
    #[arg(short, long)]
    pub(crate) partition: Option<i32>,
    /// Stop after this many records.
    #[arg(short = 'c', long)]
    pub(crate) count: Option<u64>,
    /// Stop once every partition read has reached its end.
    #[arg(short = 'e', long)]
    pub(crate) exit_at_end: bool,
    /// Output format: %t topic, %p partition, %o offset, %k key, %v value,
    /// %T timestamp (ms), %h headers (k=v,...), %K / %S key / value size,
    /// %% a percent sign; \n, \t and \\ escapes.
    #[arg(short = 'f', long, default_value = "%v\\n", conflicts_with = "json")]
    pub(crate) format: String,
    /// One JSON object per record: topic, partition, offset, timestamp,
    /// key, value, headers.
    #[arg(short = 'J', long)]
    pub(crate) json: bool,
}

#[derive(Debug, ClapArgs)]
pub(crate) struct WeblogArgs {
    /// Topic of web-server log lines.
    #[arg(short, long)]
    pub(crate) input: String,
    /// Topic to write country → line-without-address records to.
    #[arg(short, long)]
    pub(crate) output: String,
    /// This instance's id: client id `weblog-ID`, and the group's
    /// `group.instance.id` unless --static-membership off.
    #[arg(long)]
    pub(crate) instance: String,
    /// Processor name (group `NAME-group`).
    #[arg(long, default_value = "weblog")]
    pub(crate) name: String,
    /// What to do with input that is not UTF-8: stop, skip, or
    /// dead-letter:TOPIC (`none` and `all` are Kafka Connect's names for
    /// the first two).
    #[arg(long, default_value = "stop")]
    pub(crate) tolerance: Tolerance,
    /// Where to start without a committed offset: earliest or latest.
    #[arg(long, default_value = "latest")]
    pub(crate) from: String,
    /// Static membership (the instance id as group.instance.id): on or off.
    #[arg(long, default_value = "on")]
    pub(crate) static_membership: OnOff,
    /// Exactly once: outputs and input offsets commit together in a
    /// transaction every 100 ms (`-X processing.guarantee=exactly_once`).
    /// Needs brokers that do transactions.
    #[arg(long)]
    pub(crate) exactly_once: bool,
    /// Serve the client's and the processor's metrics as Prometheus text
    /// at http://ADDR/metrics (port 0 picks one; the address is printed on
    /// stderr).
    #[cfg(feature = "prometheus")]
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
}

/// An error tolerance as the CLI spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tolerance(pub(crate) rill::ErrorTolerance);

impl std::str::FromStr for Tolerance {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(Tolerance(match text {
            // Kafka Connect's errors.tolerance names, too.
            "stop" | "none" => rill::ErrorTolerance::Stop,
            "skip" | "all" => rill::ErrorTolerance::Skip,
            _ => match text.strip_prefix("dead-letter:") {
                Some(topic) if !topic.is_empty() => rill::ErrorTolerance::DeadLetter(topic.to_owned()),
                _ => return Err(format!("`{text}`: expected stop, skip or dead-letter:TOPIC")),
            },
        }))
    }
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OnOff(pub(crate) bool);

impl std::str::FromStr for OnOff {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "on" | "true" => Ok(OnOff(true)),
            "off" | "false" => Ok(OnOff(false)),
            _ => Err(format!("`{text}`: expected on or off")),
        }
    }
}

/// Where `rill consume` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartFrom {
    Beginning,
    End,
    Stored,
    Offset(i64),
    /// This many records before the end.
    FromEnd(i64),
}

impl std::str::FromStr for StartFrom {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "beginning" => StartFrom::Beginning,
            "end" => StartFrom::End,
            "stored" => StartFrom::Stored,
            _ => match text.parse::<i64>() {
                Ok(n) if n < 0 => StartFrom::FromEnd(-n),
                Ok(n) => StartFrom::Offset(n),
                Err(_) => return Err(format!("`{text}`: expected beginning, end, stored, an offset or -N")),
            },
        })
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum PerfCommand {
    /// Produce records as fast as the producer takes them.
    Produce(PerfProduceArgs),
    /// Read records as fast as the consumer returns them.
    Consume(PerfConsumeArgs),
    /// Run the web-log processor over generated lines (fresh topics):
    /// throughput, CPU and end-to-end latency (input CreateTime → output
    /// delivered) as p50/p99/max.
    Process(PerfProcessArgs),
}

#[derive(Debug, ClapArgs)]
pub(crate) struct PerfProcessArgs {
    /// Input lines.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) messages: u64,
    /// Write the lines at this many per second while the processor runs
    /// (latency at a steady load); without it they are loaded first and
    /// processed as fast as possible.
    #[arg(long)]
    pub(crate) rate: Option<u64>,
    /// Partitions of the input and output topics.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..))]
    pub(crate) partitions: i32,
    /// Instead of the web-log processor: keyed records (`key-<k>`,
    /// `<k>:<n>`) through an async call of --call-ms, ordered this way;
    /// each output keeps its input's key and value, and the output topic
    /// is kept (its name is in the report).
    #[arg(long, value_enum)]
    pub(crate) order: Option<OrderArg>,
    /// Calls at once (with --order).
    #[arg(long, default_value_t = 64, requires = "order", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) concurrency: u32,
    /// How long each call takes, in milliseconds (with --order).
    #[arg(long, default_value_t = 5, requires = "order")]
    pub(crate) call_ms: u64,
    /// Distinct keys (with --order).
    #[arg(long, default_value_t = 1000, requires = "order", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) keys: u64,
    /// Pad each value with `.` to this many bytes (with --order).
    #[arg(long, default_value_t = 0, requires = "order")]
    pub(crate) value_bytes: usize,
}

/// `--order` of `rill perf process`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OrderArg {
    /// Calls overlap; each partition's outputs leave in input order.
    Input,
    /// One call at a time per partition.
    Partition,
    /// One call at a time per key; keyless records one at a time per
    /// partition.
    Key,
    /// Calls overlap; outputs leave as calls finish.
    Unordered,
}

impl OrderArg {
    pub(crate) fn order(self) -> rill::Order {
        match self {
            OrderArg::Input => rill::Order::Input,
            OrderArg::Partition => rill::Order::Partition,
            OrderArg::Key => rill::Order::Key(rill::Keyless::Partition),
            OrderArg::Unordered => rill::Order::Unordered,
        }
    }
}

#[derive(Debug, ClapArgs)]
pub(crate) struct PerfConsumeArgs {
    /// Topic to read (must hold at least --messages records). Without it,
    /// fresh topics (--topics, --partitions) are made and filled with
    /// --messages records of --value-bytes first (not measured), and
    /// deleted at the end.
    #[arg(short, long)]
    pub(crate) topic: Option<String>,
    /// Records to read.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) messages: u64,
    /// Read as a member of this group; without one every partition is
    /// assigned and read from the beginning.
    #[arg(short = 'G', long)]
    pub(crate) group: Option<String>,
    #[command(flatten)]
    pub(crate) fresh: FreshTopics,
    /// Bytes per value of the records written first (without --topic).
    #[arg(long, default_value_t = 100, conflicts_with = "topic")]
    pub(crate) value_bytes: usize,
    /// How the records written first are compressed (without --topic).
    #[arg(long, conflicts_with = "topic")]
    pub(crate) compression: Option<Compression>,
}

/// Fresh topics for a perf run without `--topic`.
#[derive(Debug, ClapArgs)]
pub(crate) struct FreshTopics {
    /// How many fresh topics; records go to them in turn.
    #[arg(long, default_value_t = 1, conflicts_with = "topic", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) topics: u32,
    /// Partitions of each fresh topic.
    #[arg(long, default_value_t = 6, conflicts_with = "topic", value_parser = clap::value_parser!(i32).range(1..))]
    pub(crate) partitions: i32,
}

#[derive(Debug, ClapArgs)]
pub(crate) struct PerfProduceArgs {
    /// Topic to produce to (must exist). Without it, fresh topics
    /// (--topics, --partitions) are made for the run and deleted at the end.
    #[arg(short, long)]
    pub(crate) topic: Option<String>,
    /// Records to produce.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) messages: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub(crate) value_bytes: usize,
    /// Distinct keys, used in turn; 0 sends keyless records.
    #[arg(long, default_value_t = 1000)]
    pub(crate) keys: u64,
    #[command(flatten)]
    pub(crate) fresh: FreshTopics,
    #[command(flatten)]
    pub(crate) producer: ProducerFlags,
}

#[derive(Debug, ClapArgs)]
pub(crate) struct DemoArgs {
    /// Partitions of the input and output topics.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..))]
    pub(crate) partitions: i32,
    /// Web-log lines to generate and process.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) lines: u64,
    /// Also print the API versions negotiated with each broker.
    #[arg(short, long)]
    pub(crate) verbose: bool,
}

/// `-X` settings for a processor, by client.
#[derive(Debug, Default)]
pub(crate) struct ProcessorProperties {
    pub(crate) bootstrap: Option<String>,
    pub(crate) consumer: Vec<(String, String)>,
    pub(crate) producer: Vec<(String, String)>,
    /// The processor's own keys ([`rill::is_processor_property`]).
    pub(crate) processor: Vec<(String, String)>,
}

impl ProcessorProperties {
    /// Hands every setting to the client (or processor) that takes it.
    pub(crate) fn apply<K, V, OK, OV>(
        &self,
        builder: rill::ProcessorBuilder<K, V, OK, OV>,
    ) -> rill::ProcessorBuilder<K, V, OK, OV>
    where
        K: Send + 'static,
        V: Send + 'static,
        OK: Send + 'static,
        OV: Send + 'static,
    {
        rill_cli::with_properties(builder, &self.consumer, &self.producer, &self.processor)
    }

    /// The bootstrap servers, which a processor cannot do without.
    pub(crate) fn bootstrap(&self) -> Result<String, ConfigError> {
        self.bootstrap
            .clone()
            .ok_or_else(|| ConfigError::Invalid("no brokers: pass --brokers or set RILL_BROKERS".into()))
    }

    /// Client-level settings (bootstrap, security, timeouts) for the admin
    /// and checking clients that run beside a processor.
    pub(crate) fn client_config(&self) -> Result<ClientConfig, ConfigError> {
        let mut config = ClientConfig::new(&self.bootstrap()?)?;
        for (key, value) in &self.consumer {
            // Consumer-only keys are not the client's; every client key
            // reaches the consumer side too.
            config.set_property(key, value)?;
        }
        config.validate()?;
        Ok(config)
    }
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not key=value")),
    }
}

impl Common {
    /// The properties of the -F file, then `-X` on top, in order.
    fn given_properties(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let mut properties = match &self.config_file {
            Some(path) => rill_client::config::read_properties_file(path)?,
            None => Vec::new(),
        };
        properties.extend(self.properties.iter().cloned());
        Ok(properties)
    }

    /// The -F file's properties, then `-X`, then `--brokers` on top.
    fn properties(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let mut properties = self.given_properties()?;
        if let Some(brokers) = &self.brokers {
            properties.push(("bootstrap.servers".to_owned(), brokers.clone()));
        }
        if !properties.iter().any(|(k, _)| k == "bootstrap.servers" || k == "metadata.broker.list") {
            return Err(ConfigError::Invalid("no brokers: pass --brokers or set RILL_BROKERS".into()));
        }
        Ok(properties)
    }

    /// Client settings.
    pub(crate) fn client_config(&self) -> Result<ClientConfig, ConfigError> {
        ClientConfig::from_properties(self.properties()?)
    }

    /// The `-X` properties split by the client that takes them, for a
    /// processor: bootstrap servers apart (`bootstrap` replaces them when
    /// given), client keys to both sides, a key neither takes refused.
    pub(crate) fn processor_properties(&self, bootstrap: Option<String>) -> Result<ProcessorProperties, ConfigError> {
        let mut properties = self.given_properties()?;
        if let Some(brokers) = bootstrap.or_else(|| self.brokers.clone()) {
            properties.push(("bootstrap.servers".to_owned(), brokers));
        }
        let mut split = ProcessorProperties::default();
        for (key, value) in properties {
            if key == "bootstrap.servers" || key == "metadata.broker.list" {
                split.bootstrap = Some(value);
                continue;
            }
            if rill::is_processor_property(&key) {
                // Checked by the processor's build.
                split.processor.push((key, value));
                continue;
            }
            let consumer = ConsumerConfig::new(ClientConfig::default()).set_property(&key, &value)?;
            let producer = ProducerConfig::new(ClientConfig::default()).set_property(&key, &value)?;
            if !consumer && !producer {
                return Err(ConfigError::UnknownKey { key });
            }
            if consumer {
                split.consumer.push((key.clone(), value.clone()));
            }
            if producer {
                split.producer.push((key, value));
            }
        }
        Ok(split)
    }

    /// Consumer settings from `-X` (consumer and client keys).
    pub(crate) fn consumer_config(&self) -> Result<ConsumerConfig, ConfigError> {
        ConsumerConfig::from_properties(self.properties()?)
    }

    /// Producer settings: `-X` (producer and client keys), then the flags.
    pub(crate) fn producer_config(&self, flags: &ProducerFlags) -> Result<ProducerConfig, ConfigError> {
        let mut properties = self.properties()?;
        if let Some(linger) = flags.linger_ms {
            properties.push(("linger.ms".into(), linger.to_string()));
        }
        if let Some(codec) = flags.compression {
            properties.push(("compression.type".into(), codec.to_string()));
        }
        if let Some(partitioner) = &flags.partitioner {
            properties.push(("partitioner".into(), partitioner.clone()));
        }
        ProducerConfig::from_properties(properties)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_and_brokers_combine() {
        let args = Args::try_parse_from(["rill", "topic", "list", "-X", "client.id=cli", "--brokers", "h:1"]).unwrap();
        assert_eq!(args.common.properties, [("client.id".to_owned(), "cli".to_owned())]);
        assert!(args.common.client_config().is_ok());
    }

    #[test]
    fn the_config_file_comes_first_and_x_overrides_it() {
        let dir = std::env::temp_dir().join(format!("rill-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("client.properties");
        std::fs::write(
            &file,
            "# from the file\nbootstrap.servers=file:1\nclient.id=from-file\nrequest.timeout.ms=7000\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let args = Args::try_parse_from(["rill", "metadata", "-F", path, "-X", "client.id=from-x"]).unwrap();
        let properties = args.common.properties().unwrap();
        let last = |key: &str| properties.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        assert_eq!(last("client.id").as_deref(), Some("from-x"), "-X overrides the file");
        assert_eq!(last("request.timeout.ms").as_deref(), Some("7000"));
        assert_eq!(last("bootstrap.servers").as_deref(), Some("file:1"), "the file can name the brokers");
        let _config = args.common.client_config().unwrap();
        let args = Args::try_parse_from(["rill", "topic", "list", "--config-file", path, "-b", "flag:2"]).unwrap();
        let split = args.common.processor_properties(None).unwrap();
        assert_eq!(split.bootstrap.as_deref(), Some("flag:2"), "--brokers overrides the file");

        std::fs::write(&file, "bootstrap.servers=a:1\nno.such.key=1\n").unwrap();
        let args = Args::try_parse_from(["rill", "metadata", "-F", path]).unwrap();
        assert!(args.common.client_config().unwrap_err().to_string().contains("no.such.key"));
        let missing = dir.join("missing.properties");
        let args = Args::try_parse_from(["rill", "metadata", "-F", missing.to_str().unwrap()]).unwrap();
        let error = args.common.client_config().unwrap_err().to_string();
        assert!(error.contains("cannot read properties file") && error.contains("missing.properties"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_property_is_an_error_naming_it() {
        let args = Args::try_parse_from(["rill", "metadata", "-b", "h:1", "-X", "no.such.key=1"]).unwrap();
        let error = args.common.client_config().unwrap_err();
        assert!(error.to_string().contains("no.such.key"), "{error}");
    }

    #[test]
    fn consume_start_positions() {
        let parse = |from: &str| {
            let args = Args::try_parse_from(["rill", "consume", "-t", "t", "--from", from]).unwrap();
            match args.command {
                Command::Consume(consume) => consume.from,
                _ => unreachable!(),
            }
        };
        assert_eq!(parse("beginning"), StartFrom::Beginning);
        assert_eq!(parse("stored"), StartFrom::Stored);
        assert_eq!(parse("42"), StartFrom::Offset(42));
        assert_eq!(parse("-10"), StartFrom::FromEnd(10));
        assert!(Args::try_parse_from(["rill", "consume", "-t", "t", "--from", "later"]).is_err());
        assert!(Args::try_parse_from(["rill", "consume", "-t", "t", "--json", "--format", "%v"]).is_err());
    }

    #[test]
    fn malformed_property_is_rejected_by_the_parser() {
        assert!(Args::try_parse_from(["rill", "metadata", "-X", "novalue"]).is_err());
    }
}
