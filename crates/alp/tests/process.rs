//! The `alp` binary as an operator runs it: `alp migrate`, then `alp serve <service>` with its
//! flags, the Prometheus endpoint, request size limits, and a clean drain on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use alp_proto::content::v1::content_service_client::ContentServiceClient;
use alp_proto::content::v1::{Course, CreateCourseRequest, GetCourseRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tonic::Code;

const ALP: &str = env!("CARGO_BIN_EXE_alp");

/// A port nothing listens on right now.
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn scrape(address: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: alp\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

fn course(id: &str, description: String) -> CreateCourseRequest {
    CreateCourseRequest {
        course: Some(Course { course_id: id.into(), title: "T".into(), description, create_time: None }),
    }
}

#[tokio::test]
async fn serve_refuses_an_unmigrated_database_and_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let url = alp_runtime::db::sqlite_url(dir.path(), "content.db");
    let output = Command::new(ALP)
        .args(["serve", "content", "--database-url", &url, "--listen"])
        .arg(free_port().to_string())
        .args(["--metrics-listen", &free_port().to_string()])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("run `alp migrate content`"), "{stderr}");
}

#[tokio::test]
async fn serve_counts_requests_rejects_oversized_ones_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let url = alp_runtime::db::sqlite_url(dir.path(), "content.db");
    let migrated = Command::new(ALP).args(["migrate", "content", "--database-url", &url]).output().await.unwrap();
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));

    let (grpc, metrics) = (free_port(), free_port());
    let mut child = Command::new(ALP)
        .args(["serve", "content", "--database-url", &url, "--drain-delay", "100ms", "--max-message-bytes", "65536"])
        .args(["--listen", &grpc.to_string(), "--metrics-listen", &metrics.to_string(), "--log-format", "json"])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::wait_serving(grpc, alp_content::SERVICE_NAME).await;

    let mut content = ContentServiceClient::new(common::channel(grpc));
    content.create_course(course("c1", String::new())).await.unwrap();
    let again = content.create_course(course("c1", String::new())).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    let invalid = content.create_course(course("bad id!", String::new())).await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);

    // Past --max-message-bytes: refused before decoding, nothing written.
    let oversized = content.create_course(course("big", "x".repeat(100_000))).await.unwrap_err();
    assert_eq!(oversized.code(), Code::OutOfRange, "{oversized:?}");
    assert!(oversized.message().contains("too large"), "{oversized:?}");
    let missing = content.get_course(GetCourseRequest { course_id: "big".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let text = scrape(metrics).await;
    let series = |method: &str, code: &str| {
        format!(
            "alp_grpc_server_handled_total{{service=\"alp.content.v1.ContentService\",method=\"{method}\",code=\"{code}\"}} 1"
        )
    };
    for (method, code) in [
        ("CreateCourse", "OK"),
        ("CreateCourse", "ALREADY_EXISTS"),
        ("CreateCourse", "INVALID_ARGUMENT"),
        ("CreateCourse", "OUT_OF_RANGE"),
        ("GetCourse", "NOT_FOUND"),
    ] {
        assert!(text.contains(&series(method, code)), "no {method} {code} in\n{text}");
    }
    assert!(
        text.contains(
            "alp_grpc_server_handling_seconds_bucket{service=\"alp.content.v1.ContentService\",method=\"CreateCourse\",le=\"0.005\"}"
        ),
        "no latency histogram in\n{text}"
    );
    assert!(text.contains(
        "alp_grpc_server_handling_seconds_count{service=\"alp.content.v1.ContentService\",method=\"CreateCourse\"} 4"
    ));

    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    let status =
        tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("exits after SIGTERM").unwrap();
    assert!(status.success(), "{status:?}");

    let mut logs = String::new();
    child.stderr.take().unwrap().read_to_string(&mut logs).await.unwrap();
    let position = |needle: &str| logs.find(needle).unwrap_or_else(|| panic!("no {needle:?} in\n{logs}"));
    assert!(position("\"draining\"") < position("\"stopped\""), "drains, then stops");
    assert!(logs.lines().all(|line| line.starts_with('{')), "every log line is JSON:\n{logs}");
}
