//! Python tools the end-to-end tests drive (an SMTP server, the OpenAPI
//! checkers), installed with pip into `target/tmp/python` on first use: the
//! tests need `python3` with pip, and PyPI the first time.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A directory holding `requirements` (pinned `name==version` specs), for
/// `PYTHONPATH`. Each set of requirements has its own directory, installed with
/// `python3 -m pip install --target` the first time and moved into place only
/// once complete, so an interrupted install is redone rather than half-used.
pub fn python_packages(requirements: &[&str]) -> PathBuf {
    // Tests of one binary run in parallel: one installs, the others wait for it.
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python");
    let name = requirements.join("+");
    let dir = root.join(&name);
    if dir.exists() {
        return dir;
    }
    let partial = root.join(format!("{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let status = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--no-warn-conflicts")
        // The target directory is the tests' own: installing as root there is fine.
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .arg("--target")
        .arg(&partial)
        .args(requirements)
        .status()
        .expect("python3 (with pip) is needed for this test");
    assert!(status.success(), "pip install {requirements:?} failed");
    if let Err(e) = std::fs::rename(&partial, &dir) {
        // Another process may have finished the same install first.
        assert!(dir.exists(), "cannot move {partial:?} into place: {e}");
        let _ = std::fs::remove_dir_all(&partial);
    }
    dir
}

/// `python3` with the packages of `python_packages` importable.
pub fn python3(packages: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("python3");
    command.env("PYTHONPATH", packages).kill_on_drop(true);
    command
}
