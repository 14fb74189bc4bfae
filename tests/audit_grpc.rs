//! Remote review: `mcp-otel audit --remote URL …` against the `AuditService` served in-process
//! on 127.0.0.1:0 behind a bearer-token check, as `collect` mounts it. Remote answers must be
//! the local ones.

mod support;

use mcp_otel::audit::grpc;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use support::audit::{raw, store_with};
use tonic::{Request, Status};

const TOKEN: &str = "s3cret";

async fn serve(db: PathBuf) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = futures::stream::unfold(listener, |l| async move {
        Some((l.accept().await.map(|(s, _)| s), l))
    });
    let check = |req: Request<()>| -> Result<Request<()>, Status> {
        match req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
        {
            Some(v) if v == format!("Bearer {TOKEN}") => Ok(req),
            _ => Err(Status::unauthenticated("missing or wrong bearer token")),
        }
    };
    let service = tonic::service::interceptor::InterceptedService::new(grpc::service(db), check);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    addr
}

async fn audit(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mcp-otel"))
            .arg("audit")
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn local(db: &Path, args: &[&str]) -> Vec<String> {
    let mut v = vec!["--db".to_owned(), db.display().to_string()];
    v.extend(args.iter().map(|s| (*s).to_owned()));
    v
}

fn remote(addr: SocketAddr, token: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--remote".to_owned(),
        format!("http://{addr}"),
        "--token".to_owned(),
        token.to_owned(),
    ];
    v.extend(args.iter().map(|s| (*s).to_owned()));
    v
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_review_query_and_verify_answer_as_local_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = store_with(dir.path(), 30, 10);
    let addr = serve(db.clone()).await;
    let window = [
        "--since",
        "2000-01-01T00:00:00Z",
        "--until",
        "2100-01-01T00:00:00Z",
    ];

    let mut args = vec!["review"];
    args.extend(window);
    args.push("--json");
    let here = audit(local(&db, &args)).await;
    let there = audit(remote(addr, TOKEN, &args)).await;
    assert_eq!(
        there.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&there.stderr)
    );
    assert_eq!(text(&there), text(&here));
    assert!(text(&there).contains("\"deletes\":6"), "{}", text(&there));

    let args = ["query", "--text", "old", "--limit", "7", "--json"];
    let here = audit(local(&db, &args)).await;
    let there = audit(remote(addr, TOKEN, &args)).await;
    let parse = |o: &Output| -> Vec<serde_json::Value> {
        text(o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(parse(&there).len(), 7);
    assert_eq!(parse(&there), parse(&here));

    let there = audit(remote(addr, TOKEN, &["verify"])).await;
    assert_eq!(there.status.code(), Some(0));
    assert!(text(&there).contains("intact: 30 rows"), "{}", text(&there));
    // One shape whether local or remote: the same JSON, field for field.
    let here = audit(local(&db, &["verify", "--json"])).await;
    let there = audit(remote(addr, TOKEN, &["verify", "--json"])).await;
    let here: serde_json::Value = serde_json::from_str(&text(&here)).unwrap();
    let there: serde_json::Value = serde_json::from_str(&text(&there)).unwrap();
    assert_eq!(there, here);
    assert_eq!(there["first_id"], 1);
    assert_eq!(there["last_id"], 30);
    assert!(there["public_key"].is_string(), "{there}");

    raw(&db)
        .execute_batch("DROP TRIGGER mcp_logs_no_delete; DELETE FROM mcp_logs WHERE id = 17;")
        .unwrap();
    let there = audit(remote(addr, TOKEN, &["verify"])).await;
    assert_eq!(there.status.code(), Some(1));
    assert!(text(&there).contains("row 17: missing"), "{}", text(&there));
    let here = audit(local(&db, &["verify", "--json"])).await;
    let there = audit(remote(addr, TOKEN, &["verify", "--json"])).await;
    assert_eq!(there.status.code(), Some(1));
    assert_eq!(
        text(&there),
        text(&here),
        "a broken chain reads the same too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_and_local_only_commands_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = store_with(dir.path(), 3, 10);
    let addr = serve(db).await;
    let out = audit(remote(addr, "wrong", &["review"])).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Unauthenticated"), "{err}");
    let out = audit(remote(addr, TOKEN, &["sql", "SELECT 1"])).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("local database only"));
}
