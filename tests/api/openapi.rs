//! The HTTP API against its description, `openapi.yaml`.
//!
//! The document is checked on its own first (valid OpenAPI, examples valid and in
//! step with the seed sample: `tests/python/api_conformance.py`). Then the real
//! binary runs with its embedded Kafka cluster on a free loopback port, and
//! [schemathesis](https://schemathesis.readthedocs.io) sends it requests generated
//! from the document, valid and invalid, and checks every answer against it:
//! documented status, content type, headers (`x-request-id`, `Retry-After`) and
//! body schema, and no server error.
//!
//! Each run configures the bridge so that the answers it is about can be
//! reached, and afterwards the bridge's own request counters must show that the
//! callback route gave them: a run that never got an answer proves nothing about
//! it.
//!
//! - a small `--max-body-bytes`, so that the longest texts the document allows
//!   make bodies over the limit: `200`, `400` and `413`. Before the generated
//!   requests, the document's own examples are sent as they are and must get a
//!   `2xx` (`positive_data_acceptance`): the callback examples use every field
//!   the bridge reads, so a field the document and the bridge read differently
//!   fails there. That check is not applied to generated requests, because the
//!   generator also spells integers as whole floats (`5000.0`), which JSON
//!   Schema calls integers and the bridge refuses;
//! - a callback key, which no generated request is signed with: `401`;
//! - `--max-in-flight 0`, so that every callback is refused at once: `503` with
//!   `Retry-After`. The only run without `not_a_server_error`.
//!
//! Needs the Python packages of `tests/python/requirements.txt` (`scripts/test`
//! installs them into `.venv`). `BRIDGE_SCHEMATHESIS_SEED` replays a run with the
//! seed it printed; `BRIDGE_SCHEMATHESIS_EXAMPLES` sets how many requests are
//! generated per operation and phase.

use crate::common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use common::repo_path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The checks schemathesis applies to every response (its `--checks` names).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

/// [`CHECKS`] less `not_a_server_error`, for the run whose point is a 503.
const CHECKS_ALLOWING_503: &str = "status_code_conformance,content_type_conformance,\
                                   response_headers_conformance,response_schema_conformance";

/// Body limit of the bridge in the main run: above the seed sample (about
/// 1.4 KiB), below the longest text the document allows (4096 bytes).
const MAX_BODY_BYTES: &str = "4096";

/// Longest a schemathesis run may take before it is stopped and the test fails,
/// within nextest's own limit for a test (`.config/nextest.toml`).
const SCHEMATHESIS_DEADLINE: Duration = Duration::from_secs(90);

#[test]
fn openapi_document_is_valid_and_in_step_with_the_seed_sample() {
    let output = Command::new(common::python())
        .arg(repo_path("tests/python/api_conformance.py"))
        .arg(repo_path("openapi.yaml"))
        .arg(repo_path("tests/fixtures/seed-sample.json"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", common::python()));
    assert!(
        output.status.success(),
        "openapi.yaml fails its static checks (run scripts/test to set up .venv):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_route_conforms_to_the_openapi_document() {
    let work = tempfile::tempdir().expect("temp dir");
    let bridge = Bridge::start(work.path(), &["--max-body-bytes", MAX_BODY_BYTES]);
    // The documented examples, sent as they are, must be accepted: so a request
    // field the document and the bridge read differently fails the test.
    let examples_accepted = format!("{CHECKS},positive_data_acceptance");
    let examples_only = ["--phases", "examples"];
    schemathesis(
        &bridge,
        work.path(),
        &examples_accepted,
        &examples_only,
        "1",
    );
    schemathesis(&bridge, work.path(), CHECKS, &[], "100");
    bridge.assert_callbacks_answered(&[200, 400, 413]);
    let status = bridge.stop();
    assert!(
        status.success(),
        "the bridge did not stop cleanly on SIGTERM: {status}"
    );
}

#[test]
fn unauthenticated_callbacks_get_the_documented_401() {
    let work = tempfile::tempdir().expect("temp dir");
    let bridge = Bridge::start(work.path(), &["--callback-keys", "openapi-test-key"]);
    let only_callbacks = ["--include-path", "/css/callback"];
    schemathesis(&bridge, work.path(), CHECKS, &only_callbacks, "25");
    bridge.assert_callbacks_answered(&[401]);
}

#[test]
fn overloaded_callbacks_get_the_documented_503_with_retry_after() {
    let work = tempfile::tempdir().expect("temp dir");
    let bridge = Bridge::start(work.path(), &["--max-in-flight", "0"]);
    let only_callbacks = ["--include-path", "/css/callback"];
    schemathesis(
        &bridge,
        work.path(),
        CHECKS_ALLOWING_503,
        &only_callbacks,
        "25",
    );
    bridge.assert_callbacks_answered(&[503]);
}

/// Runs schemathesis against `bridge` with `checks`, `examples` requests per
/// operation and phase (unless `BRIDGE_SCHEMATHESIS_EXAMPLES` says otherwise),
/// and fails with its report and the bridge's log when it finds a disagreement.
fn schemathesis(bridge: &Bridge, work: &Path, checks: &str, args: &[&str], examples: &str) {
    let stdout_path = work.join("schemathesis.out");
    let stderr_path = work.join("schemathesis.err");
    let examples = std::env::var("BRIDGE_SCHEMATHESIS_EXAMPLES").unwrap_or(examples.to_owned());
    let mut command = Command::new(common::python());
    command
        .args(["-m", "schemathesis.cli", "run"])
        .arg(repo_path("openapi.yaml"))
        .args(["--url", &format!("http://{}", bridge.addr)])
        .args(["--checks", checks])
        .args(["--max-examples", &examples])
        .args(["--workers", "1"])
        .args(["--request-timeout", "15"])
        .args(["--generation-database", "none"])
        .arg("--no-color")
        .args(args);
    if let Ok(seed) = std::env::var("BRIDGE_SCHEMATHESIS_SEED") {
        command.args(["--seed", &seed]);
    }
    // Its own directory, so that no configuration file of the checkout is read
    // and its caches land outside the checkout.
    command
        .current_dir(work)
        .env("COLUMNS", "120")
        .env("PYTHONFAULTHANDLER", "1")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("schemathesis stdout file"))
        .stderr(File::create(&stderr_path).expect("schemathesis stderr file"));
    let status = run_with_deadline(&mut command, SCHEMATHESIS_DEADLINE);
    let report = format!("{}{}", read_lossy(&stdout_path), read_lossy(&stderr_path));
    match status {
        Some(status) if status.success() => println!("{report}"),
        Some(_) if report.contains("No module named 'schemathesis'") => panic!(
            "schemathesis is not installed for {} (run scripts/test to set up .venv, or \
             point BRIDGE_TEST_PYTHON at a Python with tests/python/requirements.txt):\n\
             {report}",
            common::python()
        ),
        Some(status) => panic!(
            "schemathesis found the bridge and openapi.yaml in disagreement ({status}):\n\n\
             {report}\n\nthe bridge's log, last lines:\n{}",
            bridge.log_tail()
        ),
        None => panic!(
            "schemathesis did not finish within {SCHEMATHESIS_DEADLINE:?}:\n\n{report}\n\n\
             the bridge's log, last lines:\n{}",
            bridge.log_tail()
        ),
    }
}

/// The bridge binary, serving on a loopback port with its embedded Kafka cluster.
/// Stopped with SIGTERM when dropped.
struct Bridge {
    process: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
}

impl Bridge {
    /// Starts the bridge with `flags` besides the listen address, and waits
    /// until `/readyz` answers 200. A port taken between choosing and binding it
    /// is retried with another one.
    fn start(dir: &Path, flags: &[&str]) -> Bridge {
        for attempt in 1..=3 {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            let log = dir.join(format!("bridge-{attempt}.log"));
            let output = File::create(&log).expect("bridge log file");
            let mut command = Command::new(env!("CARGO_BIN_EXE_css-kafka-bridge"));
            command
                .args(["serve", "--listen", &addr.to_string()])
                .args(["--shutdown-delay-secs", "0"])
                .args(["--drain-timeout-secs", "5"])
                .args(flags)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(output.try_clone().expect("bridge log file"))
                .stderr(output);
            // Only the flags above configure it: no Kafka brokers, keys or
            // registry from the environment the tests run in.
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("BRIDGE_") {
                    command.env_remove(name);
                }
            }
            let process = command.spawn().expect("start the bridge binary");
            let mut bridge = Bridge {
                process: Some(process),
                addr,
                log,
            };
            match bridge.wait_until_ready(Duration::from_secs(30)) {
                Ok(()) => return bridge,
                Err(exited) if bridge.log_tail().contains("cannot listen") => {
                    eprintln!("port {} was taken ({exited}); trying another", addr.port());
                }
                Err(error) => panic!("{error}; the bridge's log:\n{}", bridge.log_tail()),
            }
        }
        panic!("no free loopback port found for the bridge in 3 attempts");
    }

    fn wait_until_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let process = self.process.as_mut().expect("running");
            if let Some(status) = process.try_wait().expect("bridge status") {
                self.process = None;
                return Err(format!("the bridge exited before it was ready: {status}"));
            }
            if let Some((200, _)) = http_get(self.addr, "/readyz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("/readyz did not answer 200 within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then waits for the process to exit: the way Kubernetes stops it.
    fn stop(mut self) -> ExitStatus {
        let mut process = self.process.take().expect("running");
        common::terminate(&mut process, Duration::from_secs(15))
    }

    /// Fails unless `POST /css/callback` answered each of `statuses` at least
    /// once, by the bridge's `css_bridge_http_requests_total` counter.
    fn assert_callbacks_answered(&self, statuses: &[u16]) {
        let (status, metrics) = http_get(self.addr, "/metrics").expect("the bridge answers");
        assert_eq!(status, 200, "{metrics}");
        for answered in statuses {
            let series = format!(
                r#"css_bridge_http_requests_total{{route="/css/callback",status="{answered}"}}"#
            );
            let count = metrics
                .lines()
                .find_map(|line| line.strip_prefix(&series))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            assert!(
                count > 0.0,
                "no request of the run got {answered} from POST /css/callback, so the run did \
                 not test that answer:\n{metrics}"
            );
        }
    }

    fn log_tail(&self) -> String {
        let log = read_lossy(&self.log);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            common::terminate(&mut process, Duration::from_secs(15));
        }
    }
}

/// Runs `command` to completion; `None` (and the process killed) when it takes
/// longer than `deadline`.
fn run_with_deadline(command: &mut Command, deadline: Duration) -> Option<ExitStatus> {
    let mut process = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let status = common::exit_within(&mut process, deadline);
    if status.is_none() {
        // With PYTHONFAULTHANDLER set, SIGABRT makes Python print every
        // thread's stack to stderr first: where it hung goes into the report.
        let _ = Command::new("kill")
            .args(["-ABRT", &process.id().to_string()])
            .status();
        if common::exit_within(&mut process, Duration::from_secs(5)).is_none() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
    status
}

/// A plain HTTP/1.1 GET: the status and the body, or `None` when nothing answers.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Some((status, body.to_owned()))
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}
