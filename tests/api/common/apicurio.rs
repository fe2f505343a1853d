//! Apicurio Registry for the integration tests, run by `scripts/registry`: a
//! real Schema Registry, spoken to through its Confluent-compatible API as the
//! bridge is in production.
//!
//! The stand-in (`registry.rs`) answers as Confluent's registry does and can
//! inject failures; this one vouches for what a registry the users run really
//! answers. A JVM each (a few seconds to start, in-memory storage), so only the
//! tests about those answers start one. Each lives under
//! `target/tmp/registry/<name>` and is stopped, by its pid, when dropped, or by
//! `scripts/test` when it exits.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{repo_path, unique_suffix};

/// An Apicurio Registry on free loopback ports, empty when started.
pub struct Apicurio {
    dir: PathBuf,
    url: String,
}

impl Apicurio {
    /// Starts one and waits until it answers.
    pub fn start() -> Apicurio {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("registry")
            .join(unique_suffix());
        let output = Command::new(repo_path("scripts/registry"))
            .args(["start", dir.to_str().unwrap()])
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/registry runs");
        assert!(
            output.status.success(),
            "scripts/registry start failed ({}); its messages are above",
            output.status
        );
        let url = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        Apicurio { dir, url }
    }

    /// Starts `n` at once: each takes seconds, mostly waiting for its JVM.
    pub fn start_several(n: usize) -> Vec<Apicurio> {
        std::thread::scope(|scope| {
            let starting: Vec<_> = (0..n).map(|_| scope.spawn(Apicurio::start)).collect();
            starting.into_iter().map(|s| s.join().unwrap()).collect()
        })
    }

    /// The Confluent-compatible API's base URL, what the bridge is given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The HTTP port, for a [`super::TcpProxy`] in front of it.
    pub fn port(&self) -> u16 {
        let authority = self.url.trim_start_matches("http://");
        let host_port = authority.split('/').next().unwrap();
        host_port.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// The API's path under the host (`/apis/ccompat/v7`).
    pub fn path(&self) -> &str {
        let authority = self.url.trim_start_matches("http://");
        &authority[authority.find('/').unwrap()..]
    }
}

impl Drop for Apicurio {
    fn drop(&mut self) {
        let _ = Command::new(repo_path("scripts/registry"))
            .args(["stop", self.dir.to_str().unwrap()])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
