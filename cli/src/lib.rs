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
