#![warn(missing_docs)]
#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - `processor`: the [`Processor`], its builder and the run loop.
//! - `tracker` (pure): the [`OffsetTracker`], which input offsets are done.
//! - `serde`: keys and values to and from bytes.

pub mod processor;
pub mod serde;
pub mod tracker;

pub use processor::{
    BoxError, ErrorTolerance, Guarantee, Header, Health, Input, IntoOutputs, Keyless, Latency, LatencySnapshot,
    Metrics, MetricsSnapshot, Order, Output, PartitionMetrics, PassHeaders, Processor, ProcessorBuilder,
    ProcessorError, Retry, RunningProcessor, Stage, Stuck, TimedOut, is_processor_property,
};
pub use serde::{DefaultSerde, Ignore, Json, Preparation, Serde, SerdeError};
pub use tracker::OffsetTracker;
