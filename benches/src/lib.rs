//! Benchmarks of Rill against librdkafka live in `benches/`; run them with
//! `cargo bench -p rill-benches`. This library target exists because cargo
//! requires one; it holds no code.
