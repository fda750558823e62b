//! Rill's stream processor: a function between an input and an output
//! topic, at least once, on `rill-client`.
//!
//! ```no_run
//! use rill::{ErrorTolerance, Output, Processor};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let processor = Processor::<(), String, String, String>::builder()
//!     .name("weblog-processor")
//!     .bootstrap_servers("localhost:9092")
//!     .input_topic("weblog")
//!     .output_topic("weblog-by-country")
//!     .consume_error_tolerance(ErrorTolerance::All)
//!     .function(|input| {
//!         let (ip, rest) = input.value.split_once(' ')?;
//!         Some(Output::new(ip.to_owned(), rest.to_owned()))
//!     })
//!     .build()?;
//! processor.run("instance-1", async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```
//!
//! - `processor`: the [`Processor`], its builder and the run loop.
//! - `tracker` (pure): the [`OffsetTracker`], which input offsets are done.
//! - `serde`: keys and values to and from bytes.

pub mod processor;
pub mod serde;
pub mod tracker;

pub use processor::{
    BoxError, ErrorTolerance, Input, IntoOutputs, Latency, LatencySnapshot, Metrics, MetricsSnapshot, Output,
    PartitionMetrics, Processor, ProcessorBuilder, ProcessorError, RunningProcessor,
};
pub use serde::{DefaultSerde, Ignore, Serde, SerdeError};
pub use tracker::OffsetTracker;
