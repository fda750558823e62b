//! Helpers shared by integration test files.

#![allow(dead_code, unreachable_pub, reason = "each test file uses a different part")]

pub mod fake_broker;
pub mod read_back;
