//! README's five-minute tour, run as a newcomer types it: every `bash` block of
//! the tour section, in order, each in a fresh shell from the repository root,
//! against a fresh daemon with the shipped config. A block must exit 0 and
//! print no error body; then what the tour promises is checked.
//!
//! An HTML comment before a block says how it runs:
//! - `<!-- tour: setup -->` installs the Python packages: done here instead,
//!   with pinned versions into `target/tmp` (the tests' own packages), given
//!   to the blocks as `PYTHON`;
//! - `<!-- tour: background -->` keeps running while the later blocks do (the
//!   stream watcher, the SMTP server); its output is kept;
//! - `<!-- tour: daemon -->` restarts the daemon: the test stops its daemon and
//!   starts it again on the same data directory, with the environment variables
//!   the block sets.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::python::python_packages;
use common::*;

const WEBSOCKETS: &str = "websockets==15.0.1";
const AIOSMTPD: &str = "aiosmtpd==1.4.6";

#[derive(Debug, PartialEq)]
enum Kind {
    Setup,
    Background,
    Daemon,
    Run,
}

#[derive(Debug)]
struct Block {
    kind: Kind,
    script: String,
}

/// The `bash` blocks of README's tour section, with how each runs.
fn tour_blocks() -> Vec<Block> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let start = readme
        .find("## A five-minute tour")
        .expect("README has the tour");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut blocks = Vec::new();
    let mut marker = None;
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if let Some(kind) = line
            .strip_prefix("<!-- tour: ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        {
            marker = Some(match kind {
                "setup" => Kind::Setup,
                "background" => Kind::Background,
                "daemon" => Kind::Daemon,
                other => panic!("unknown tour marker {other:?}"),
            });
        } else if line == "```bash" {
            let script: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            blocks.push(Block {
                kind: marker.take().unwrap_or(Kind::Run),
                script: script.join("\n"),
            });
        }
    }
    blocks
}

/// `NAME=value` assignments in front of the daemon block's command.
fn daemon_env(script: &str) -> Vec<(String, String)> {
    assert!(
        script.contains("serve --dev"),
        "a daemon block starts the daemon: {script}"
    );
    script
        .split_whitespace()
        .map_while(|word| word.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A free TCP port on loopback (for the tour's SMTP server).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// A shell running a block in its own process group, killed with the group.
struct Background {
    child: tokio::process::Child,
    output: PathBuf,
}

impl Background {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Waits until the output contains `text`.
    async fn printed(&self, text: &str) {
        guard(&format!("{text:?} in {}", self.output.display()), async {
            while !self.output().contains(text) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg("--")
                .arg(format!("-{pid}"))
                .status();
        }
    }
}

/// `bash` in the repository root, with the tour's `URL`, `PARLEYD` (the binary
/// under test) and the Python packages.
fn shell(script: &str, d: &Daemon, python: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("bash");
    command
        .args(["-e", "-o", "pipefail", "-c", script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("URL", d.url(""))
        .env("PARLEYD", env!("CARGO_BIN_EXE_parleyd"))
        .env("PYTHON", "python3")
        .env("PYTHONPATH", python)
        .stdin(Stdio::null());
    command
}

#[tokio::test]
async fn the_readme_tour_runs_as_written() {
    let python = python_packages(&[WEBSOCKETS, AIOSMTPD]);
    let smtp = format!("127.0.0.1:{}", free_port());
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let launch = |env| Launch {
        data_dir: Some(data.clone()),
        automation: true,
        env,
        ..Launch::default()
    };
    let mut d = Daemon::launch(launch(Vec::new())).await;
    let blocks = tour_blocks();
    assert!(blocks.len() >= 8, "the tour has its blocks: {blocks:#?}");
    let mut background = Vec::new();
    let mut printed = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        // The SMTP server listens on a free port rather than the tour's 2525.
        let script = block.script.replace("127.0.0.1:2525", &smtp);
        match block.kind {
            Kind::Setup => {
                assert!(script.contains(WEBSOCKETS.split("==").next().unwrap()));
                assert!(script.contains(AIOSMTPD.split("==").next().unwrap()));
            }
            Kind::Background => {
                let output = scratch.path().join(format!("block-{i}.out"));
                let file = std::fs::File::create(&output).unwrap();
                let child = shell(&script, &d, &python)
                    .process_group(0)
                    .stdout(file.try_clone().unwrap())
                    .stderr(file)
                    .spawn()
                    .expect("run bash");
                background.push(Background { child, output });
            }
            Kind::Daemon => {
                // Bob's stream showed Ann's question and the acknowledgement
                // addressed to her; the watcher ends with this daemon.
                let watcher = &background[0];
                watcher
                    .printed("Hi! Is the 1 December tour still open?")
                    .await;
                watcher.printed("Thanks Ann! Bob has your question").await;
                let env = daemon_env(&script);
                d.stop().await;
                d = Daemon::launch(launch(env)).await;
            }
            Kind::Run => {
                let out = guard(
                    &format!("tour block {i}"),
                    shell(&script, &d, &python).output(),
                )
                .await
                .expect("run bash");
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(
                    out.status.success(),
                    "tour block {i} failed ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(
                    !stdout.contains(r#"{"error":"#),
                    "tour block {i} got an error:\n{script}\n{stdout}"
                );
                printed.push(stdout);
            }
        }
    }
    let printed = printed.join("\n");

    // Ann's event log had Bob's receipt.
    assert!(printed.contains(r#""type":"receipt""#), "{printed}");
    // Bob's answer is waiting to be emailed to Ann.
    assert!(
        printed.contains(r#""channel":"email""#),
        "Ann's notifications include an email: {printed}"
    );
    // The rule files are valid and their tests pass.
    assert!(printed.contains("passed"), "{printed}");
    d.stop().await;
}
