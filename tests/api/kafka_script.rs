//! `scripts/kafka` itself, where it fails: what the tests and benchmarks stand
//! on must say why it cannot start a cluster, and leave nothing running.

use crate::common;

use std::process::Command;

#[test]
fn a_node_that_does_not_start_in_time_fails_with_its_log_and_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster");
    let output = Command::new(common::repo_path("scripts/kafka"))
        .args(["start", cluster.to_str().unwrap()])
        .env("KAFKA_START_TIMEOUT", "1")
        .output()
        .expect("scripts/kafka runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("node 1 of") && stderr.contains("did not start within 1 s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("its log:"),
        "names the log to read: {stderr}"
    );
    let pid = std::fs::read_to_string(cluster.join("1/pid")).expect("the node's pid");
    let alive = Command::new("kill")
        .args(["-0", pid.trim()])
        .status()
        .unwrap()
        .success();
    assert!(!alive, "the node that did not start is not left running");
}

#[test]
fn an_unknown_command_is_refused_with_the_way_to_the_list() {
    let output = Command::new(common::repo_path("scripts/kafka"))
        .arg("launch")
        .output()
        .expect("scripts/kafka runs");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("unknown command launch"),
        "{output:?}"
    );
}

#[test]
fn maven_unable_to_fetch_stops_naming_the_artifact_and_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    // A Maven that cannot reach its repository, first on the PATH.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let mvn = bin.join("mvn");
    std::fs::write(
        &mvn,
        "#!/bin/sh\necho '[ERROR] network unreachable'\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&mvn, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let output = Command::new(common::repo_path("scripts/kafka"))
        .arg("fetch")
        .env("PATH", path)
        .env("KAFKA_CACHE", dir.path().join("cache"))
        .env_remove("KAFKA_LIBS")
        .output()
        .expect("scripts/kafka runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("network unreachable"),
        "Maven's own words: {stderr}"
    );
    assert!(
        stderr.contains("org.apache.kafka:kafka_2.13") && stderr.contains("KAFKA_LIBS"),
        "names the artifact and the way out: {stderr}"
    );
}
