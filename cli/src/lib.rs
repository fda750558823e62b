#![warn(missing_docs)]
#![doc = include_str!("../README.md")]
//!
//! # The library
//!
//! The library half of the `rill` command-line tool: what its subcommands
//! share with Rill's benchmarks and tests.
//!
//! - [`local`]: a broker on this machine (Tansu) for `rill demo` and
//!   `rill broker`.
//! - [`perf`]: the measured runs of `rill perf` and their JSON reports.
//! - [`weblog`]: the web-log example's function (`rill weblog`, the demo).
//!
//! The command line itself is the `rill` binary of this package.

pub mod local;
#[cfg(feature = "prometheus")]
pub mod metrics_http;
pub mod perf;
pub mod weblog;

/// Hands settings to a processor's builder by the client that takes them:
/// consumer, producer, and the processor's own (`processor.*`).
pub fn with_properties<K, V, OK, OV>(
    mut builder: rill::ProcessorBuilder<K, V, OK, OV>,
    consumer: &[(String, String)],
    producer: &[(String, String)],
    processor: &[(String, String)],
) -> rill::ProcessorBuilder<K, V, OK, OV>
where
    K: Send + 'static,
    V: Send + 'static,
    OK: Send + 'static,
    OV: Send + 'static,
{
    for (key, value) in consumer {
        builder = builder.consumer_property(key, value);
    }
    for (key, value) in producer {
        builder = builder.producer_property(key, value);
    }
    for (key, value) in processor {
        builder = builder.property(key, value);
    }
    builder
}
