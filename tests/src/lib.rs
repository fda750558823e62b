//! Integration tests of Rill against real brokers live in `tests/`, one file
//! per area; run them with `cargo nextest run -p rill-tests` (or `cargo
//! test`). This library target exists because cargo requires one; it holds
//! no code.

/// The README's Rust examples, compiled as doc tests: each is a whole
/// program a user can paste.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;
