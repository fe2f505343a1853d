//! Slow clients cannot hold the bridge: a request head or body that does not
//! arrive in time ends the request, and a slow body does not hold all the room
//! for bodies; nor can a request head too long for a connection's read buffer
//! (16 KiB).

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::TestApp;

/// The bridge pointed at a closed port: these requests never reach Kafka.
async fn app(flags: &[&str]) -> TestApp {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    TestApp::spawn(&format!("127.0.0.1:{port}"), "css.push-errors", flags).await
}

/// Sends `bytes`, then reads whatever comes back until the server closes the
/// connection (or 10 s pass). Blocking, so it runs off the async runtime.
async fn send_and_read(addr: std::net::SocketAddr, bytes: &'static [u8]) -> (String, Duration) {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(bytes).unwrap();
        let started = Instant::now();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        (
            String::from_utf8_lossy(&response).into_owned(),
            started.elapsed(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_request_head_that_never_completes_is_cut_off() {
    let app = app(&["--header-read-timeout-secs", "1"]).await;
    let (_, took) =
        send_and_read(app.addr, b"POST /css/callback HTTP/1.1\r\nHost: bridge\r\n").await;
    assert!(
        took < Duration::from_secs(5),
        "connection still open after {took:?}"
    );
}

#[tokio::test]
async fn a_body_that_never_completes_gets_408() {
    let app = app(&["--body-read-timeout-secs", "1"]).await;
    let head_and_part_of_body =
        b"POST /css/callback HTTP/1.1\r\nHost: bridge\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{\"event_type\":";
    let (response, took) = send_and_read(app.addr, head_and_part_of_body).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("body_timeout"), "{response}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
}

#[tokio::test]
async fn a_request_head_longer_than_the_read_buffer_gets_431() {
    let app = app(&[]).await;
    let head = format!(
        "POST /css/callback HTTP/1.1\r\nHost: bridge\r\nX-Padding: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
        "a".repeat(20 * 1024)
    );
    let (response, _) = send_and_read(app.addr, head.into_bytes().leak()).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
}

#[tokio::test]
async fn a_slow_sender_of_the_largest_body_does_not_hold_up_other_callbacks() {
    let app = app(&[]).await;
    // Declares the largest body accepted (1 MiB by default), then sends
    // nothing: its room is held until the body-read timeout (10 s).
    let mut slow = TcpStream::connect(app.addr).unwrap();
    slow.write_all(
        b"POST /css/callback HTTP/1.1\r\nHost: bridge\r\nContent-Length: 1048576\r\n\r\n{",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let reply = app.post_callback("{}".to_owned()).await;

    // Without room it would wait the callback's deadline and get 503.
    assert_eq!(reply.status, 400, "admitted and read: {:?}", reply.body);
    drop(slow);
}
