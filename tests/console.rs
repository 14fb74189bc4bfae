//! The console of a real `mcp-otel collect` process: its JSON APIs answer with the numbers the
//! audit trail and `/metrics` hold for a scripted set of calls, only to a caller with the token
//! (bearer header, or the session cookie the token prompt sets); live calls arrive over SSE
//! within a second of their export; without an audit trail the overview says it answers from
//! the recent window. `the_console_works_in_a_real_browser` drives headless Chromium through
//! Playwright (`tests/peers/console_browser.mjs`) over the same pages.

mod support;

use mcp_otel::emit::{BatchConfig, EmitConfig, Emitter};
use mcp_otel::record::{OperationType, Status, ToolCall, WriteOp};
use serde_json::Value;
use sha2::Digest;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::CollectProcess;

const TOKEN: &str = "console-test-token";

/// An emitter to collect's OTLP/gRPC port that sends the bearer token; exports on `flush`.
fn emitter(grpc: SocketAddr, token: Option<&str>) -> Emitter {
    use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
    let config = EmitConfig {
        batch: Some(BatchConfig {
            scheduled_delay: Duration::from_secs(600),
            ..BatchConfig::default()
        }),
        ..EmitConfig::default()
    };
    let token = token.map(str::to_owned);
    Emitter::with_exporter(&config, move || {
        let mut md = tonic::metadata::MetadataMap::new();
        if let Some(t) = token {
            md.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{grpc}"))
            .with_metadata(md)
            .build()
            .map_err(|e| e.to_string())
    })
    .unwrap()
}

/// The scripted session: 14 calls by three users over four tools, 1 to 14 ms, with a 429, a
/// 401, two 403s, a timeout and writes of every kind (one delete unconfirmed).
fn script() -> Vec<ToolCall> {
    let now = chrono::Utc::now() - chrono::TimeDelta::minutes(2);
    let mut calls = Vec::new();
    for i in 0..14usize {
        let (tool, user) = match i {
            0..=5 => ("list_tasks", "alice"),
            6..=8 => ("create_task", "bob"),
            9..=10 => ("delete_task", "carol"),
            _ => ("update_task", "alice"),
        };
        let mut c = ToolCall::new(tool, user);
        c.timestamp = now + chrono::TimeDelta::milliseconds(i as i64 * 10);
        c.duration_ms = (i + 1) as f64;
        if let Some(op) = support::audit::task_operation(tool) {
            let mut w = WriteOp::new(op)
                .resource_id(format!("task-{i}"))
                .confirmed(Some(i != 10));
            if op == OperationType::Update {
                w = w
                    .before(serde_json::json!({"title": format!("old {i}"), "done": false}))
                    .after(serde_json::json!({"title": format!("new {i}"), "done": false}));
            }
            c.write = Some(w);
        }
        // The three updates are one trace: 12 and 13 are children of 11.
        if i > 11 {
            let root: &ToolCall = &calls[11];
            c.ids = mcp_otel::record::TraceIds::child_of(root.ids.trace_id, root.ids.span_id);
        }
        let fail = |c: &mut ToolCall, status, code: &str| {
            c.status = status;
            c.error_code = Some(code.to_owned());
        };
        match i {
            2 => fail(&mut c, Status::Error, "429"),
            3 => fail(&mut c, Status::Error, "401"),
            4 | 5 => fail(&mut c, Status::Error, "403"),
            7 => fail(&mut c, Status::Timeout, "timeout"),
            _ => {}
        }
        calls.push(c);
    }
    calls
}

async fn send(e: &Emitter, calls: Vec<ToolCall>) {
    let n = calls.len() as u64;
    let before = e.stats().exported;
    for c in calls {
        e.emit(c);
    }
    assert!(
        e.flush(Duration::from_secs(10)).await,
        "export not acknowledged"
    );
    assert_eq!(e.stats().exported - before, n);
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mcp-otel")
}

/// `mcp-otel audit <command> --db <db> --json <args>`: each line it printed, as JSON.
fn audit_json_lines(db: &Path, command: &str, args: &[&str]) -> Vec<Value> {
    let out = Command::new(bin())
        .args(["audit", command, "--db", db.to_str().unwrap(), "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `audit sql` on the store: the first row as JSON.
fn store_row(db: &Path, sql: &str) -> Value {
    audit_json_lines(db, "sql", &[sql])
        .into_iter()
        .next()
        .expect("one row")
}

async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(format!("http://{addr}{path}"));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    req.send().await.unwrap()
}

async fn overview(addr: SocketAddr, auth: Option<&str>) -> Value {
    let r = get(addr, "/api/console/overview?range=1h", auth).await;
    assert_eq!(r.status(), 200);
    json(r).await
}

async fn json(r: reqwest::Response) -> Value {
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

/// `GET path` with the token.
async fn api_get(addr: SocketAddr, path: &str) -> reqwest::Response {
    get(addr, path, Some(&bearer())).await
}

/// `GET path` with the token, as JSON.
async fn api_json(addr: SocketAddr, path: &str) -> Value {
    json(api_get(addr, path).await).await
}

/// Every line `out` prints, as they come (read on a thread of its own).
fn line_channel(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// The p95 by nearest rank of 1..=n ms.
fn p95_of_1_to(n: usize) -> f64 {
    (n * 95).div_ceil(100) as f64
}

/// The Jaeger UI the scripted collector links to (nothing listens there).
const JAEGER: &str = "http://jaeger.invalid:16686/";

/// A collect process with an audit trail at `dir/audit.db` behind [`TOKEN`] (and linking to
/// [`JAEGER`]), holding the
/// scripted session; its exporter, and the store's path.
async fn scripted_collect(dir: &Path) -> (CollectProcess, Emitter, PathBuf) {
    let db = dir.join("audit.db");
    let collect = CollectProcess::start(
        bin(),
        &[
            "--audit",
            db.to_str().unwrap(),
            "--token",
            TOKEN,
            "--jaeger-url",
            JAEGER,
        ],
    );
    let e = emitter(collect.grpc, Some(TOKEN));
    send(&e, script()).await;
    (collect, e, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_holds_the_store_s_and_the_metrics_numbers_and_needs_the_token() {
    let dir = support::tempdir();
    let (collect, _e, db) = scripted_collect(dir.path()).await;

    // Nothing without the token.
    for path in [
        "/api/console/overview?range=1h",
        "/api/console/alerts",
        "/api/console/live",
        "/api/console/status",
    ] {
        let r = get(collect.metrics, path, None).await;
        assert_eq!(r.status(), 401, "{path}");
        let r = get(collect.metrics, path, Some("Bearer wrong")).await;
        assert_eq!(r.status(), 401, "{path}");
    }
    let page = get(collect.metrics, "/", None).await;
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(html.contains("action=\"/console/login\""), "{html}");
    assert!(
        !html.contains("app.js"),
        "the prompt must not load the console"
    );

    let o = overview(collect.metrics, Some(&bearer())).await;
    assert_eq!(o["source"], "audit");
    let t = &o["totals"];
    // The store, counted by SQL of our own, and /metrics agree with the page's numbers.
    let s = store_row(
        &db,
        "SELECT COUNT(*) AS calls, SUM(status != 'success') AS errors, AVG(duration_ms) AS avg, \
         SUM(error_code = '429') AS rl, SUM(error_code IN ('401','403')) AS auth, \
         SUM(operation_type IS NOT NULL) AS writes FROM mcp_logs",
    );
    assert_eq!(t["calls"], 14);
    assert_eq!(t["calls"], s["calls"]);
    assert_eq!(t["errors"], 5);
    assert_eq!(t["errors"], s["errors"]);
    assert_eq!(t["avg_ms"].as_f64(), s["avg"].as_f64());
    assert_eq!(t["avg_ms"], 7.5);
    assert_eq!(t["p95_ms"].as_f64(), Some(p95_of_1_to(14)));
    assert_eq!(t["rate_limited"], s["rl"]);
    assert_eq!(t["auth_failures"], s["auth"]);
    assert_eq!(
        (t["rate_limited"].as_u64(), t["auth_failures"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(o["writes_total"], s["writes"]);
    assert_eq!(o["writes_total"], 8);
    let metrics = support::scrape_metrics(collect.metrics).await;
    let m = |filters: &[&str]| support::metric_sum(&metrics, "mcp_tool_calls_total", filters);
    assert_eq!(m(&[]), 14.0);
    assert_eq!(m(&["error_code=\"429\""]), 1.0);
    assert_eq!(m(&["error_code=\"401\""]) + m(&["error_code=\"403\""]), 3.0);
    assert_eq!(m(&["status=\"success\""]), 9.0);
    let w = support::metric_sum(
        &metrics,
        "mcp_write_operations_total",
        &["operation_type=\"delete\""],
    );
    let day = &o["writes"][0];
    assert_eq!(day["delete"].as_f64(), Some(w));
    assert_eq!(
        (day["create"].as_u64(), day["update"].as_u64()),
        (Some(3), Some(3))
    );
    // Per tool and per user, and the series adds up to the totals.
    let tools = o["tools"].as_array().unwrap();
    assert_eq!(tools[0]["tool"], "list_tasks");
    assert_eq!(tools[0]["calls"], 6);
    assert_eq!(tools[0]["p95_ms"], 6.0);
    assert_eq!(tools[0]["errors"], 4);
    let users = o["users"].as_array().unwrap();
    assert_eq!(
        (users[0]["user"].as_str(), users[0]["calls"].as_u64()),
        (Some("alice"), Some(9))
    );
    let series_calls: u64 = o["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["calls"].as_u64().unwrap())
        .sum();
    assert_eq!(series_calls, 14);
    let per_bucket: u64 = tools
        .iter()
        .flat_map(|t| t["per_bucket"].as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per_bucket, 14);

    // The token prompt: a wrong token sets no cookie; the right one sets a session cookie that
    // the APIs accept, and the token appears in no URL.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = |token: &'static str| {
        client
            .post(format!("http://{}/console/login", collect.metrics))
            .form(&[("token", token)])
            .send()
    };
    let wrong = login("guess").await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let right = login(TOKEN).await.unwrap();
    assert_eq!(right.status(), 303);
    assert_eq!(right.headers()["location"], "/");
    let cookie = right.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(TOKEN));
    let session = cookie.split(';').next().unwrap().to_owned();
    let r = client
        .get(format!(
            "http://{}/api/console/overview?range=1h",
            collect.metrics
        ))
        .header("Cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let by_cookie = json(r).await;
    assert_eq!(by_cookie["totals"], o["totals"]);
    let r = client
        .get(format!("http://{}/", collect.metrics))
        .header("Cookie", &session)
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("/console/app.js"));

    // Guessing is limited: after five wrong tokens a minute, the prompt takes none, not even
    // the right one, and says for how long; scripts' bearer tokens still work.
    for _ in 1..mcp_otel::collect::console::auth::MAX_FAILED_LOGINS {
        assert_eq!(login("guess").await.unwrap().status(), 401);
    }
    let locked = login(TOKEN).await.unwrap();
    assert_eq!(locked.status(), 429);
    assert!(locked.headers().get("set-cookie").is_none());
    let wait: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(
        locked
            .text()
            .await
            .unwrap()
            .contains("Too many wrong tokens")
    );
    let r = api_get(collect.metrics, "/api/console/status").await;
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["jaeger_url"], "http://jaeger.invalid:16686");

    // The write review: the CLI's own document for the same day, and its CSV.
    let day = (chrono::Utc::now() - chrono::TimeDelta::minutes(2))
        .format("%Y-%m-%d")
        .to_string();
    let r = api_json(collect.metrics, &format!("/api/console/review?day={day}")).await;
    let cli = Command::new(bin())
        .args(["audit", "review", "--db", db.to_str().unwrap(), "--json"])
        .args(["--since", &format!("{day}T00:00:00Z"), "--until"])
        .arg(format!(
            "{}T00:00:00Z",
            (chrono::NaiveDate::parse_from_str(&day, "%Y-%m-%d").unwrap()
                + chrono::TimeDelta::days(1))
        ))
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(r, cli);
    assert_eq!(r["totals"]["writes"], 8);
    assert_eq!(r["totals"]["deletes"], 2);
    let csv = api_get(
        collect.metrics,
        &format!("/api/console/review.csv?day={day}"),
    )
    .await;
    assert!(
        csv.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains(&format!("mcp-write-review-{day}.csv"))
    );
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 9, "{csv}");
    assert!(lines[0].starts_with("timestamp,user,tool_name,operation_type"));
    let unconfirmed_delete = lines.iter().find(|l| l.contains("task-10")).unwrap();
    assert!(
        unconfirmed_delete.contains(",delete,") && unconfirmed_delete.contains("not confirmed"),
        "{csv}"
    );

    // Call detail: every column `audit query` shows, the same; the trace in time order.
    let update = r["writes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["resource_id"] == "task-12")
        .unwrap();
    let id = update["id"].as_i64().unwrap();
    let d = api_json(collect.metrics, &format!("/api/console/call?id={id}")).await;
    assert_eq!(
        d["jaeger_url"],
        format!(
            "http://jaeger.invalid:16686/trace/{}",
            d["call"]["trace_id"].as_str().unwrap()
        )
    );
    let rows = audit_json_lines(&db, "query", &["--tool", "update_task", "--limit", "10"]);
    let row = rows
        .iter()
        .find(|x| x["id"] == id)
        .expect("the call in audit query");
    for (k, v) in row.as_object().unwrap() {
        assert_eq!(&d["call"][k], v, "{k}");
    }
    assert_eq!(d["call"]["after_state"]["title"], "new 12");
    let trace = support::texts_at(&d["trace"], "/span_id");
    assert_eq!(trace.len(), 3, "{d}");
    assert_eq!(trace[1], d["call"]["span_id"].as_str().unwrap());
    let missing = api_get(collect.metrics, "/api/console/call?id=99999").await;
    assert_eq!(missing.status(), 404);

    // The 429 fired McpRateLimited: firing now, and in the history.
    let a = api_json(collect.metrics, "/api/console/alerts").await;
    let names = |v| support::texts_at(v, "/labels/alertname");
    assert!(names(&a["firing"]).contains(&"McpRateLimited"), "{a}");
    assert!(names(&a["history"]).contains(&"McpRateLimited"), "{a}");
    assert!(names(&a["firing"]).contains(&"McpErrorRateHigh"), "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_api_gives_verify_s_result_and_searches_contexts_and_states() {
    let dir = support::tempdir();
    let (collect, _e, db) = scripted_collect(dir.path()).await;
    let r = get(collect.metrics, "/api/console/audit", None).await;
    assert_eq!(r.status(), 401);
    // The first ask starts a verify; the answer comes once it has run.
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let a = api_json(collect.metrics, "/api/console/audit").await;
        if !a["last"].is_null() && a["running"] == false {
            break a["last"].clone();
        }
        assert!(Instant::now() < deadline, "verify never finished: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cli = Command::new(bin())
        .args(["audit", "--db", db.to_str().unwrap(), "verify", "--json"])
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["rows"], 14);
    for k in [
        "rows",
        "head",
        "public_key",
        "first_id",
        "last_id",
        "intact",
    ] {
        assert_eq!(v[k], cli[k], "{k}");
    }
    let head = store_row(
        &db,
        "SELECT id, hash FROM mcp_logs ORDER BY id DESC LIMIT 1",
    );
    assert_eq!(v["head"]["hash"], head["hash"]);
    let key = store_row(&db, "SELECT value FROM audit_meta WHERE key = 'public_key'");
    let digest = sha2::Sha256::digest(
        (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&key["value"].as_str().unwrap()[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>(),
    );
    let fp: Vec<String> = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v["key_fingerprint"], fp.join(":"));
    // A fresh run on request.
    let again = api_json(collect.metrics, "/api/console/audit?fresh=true").await;
    assert_eq!(again["running"], true, "{again}");

    // Search: the same calls `audit query --text` finds, newest first, with their ids.
    let cli_ids = |text: &str| -> Vec<Value> {
        audit_json_lines(&db, "query", &["--text", text])
            .iter()
            .map(|row| row["id"].clone())
            .collect()
    };
    for (text, n) in [("new 12", 1), ("old", 3), ("title", 3), ("nowhere", 0)] {
        let r = api_json(
            collect.metrics,
            &format!("/api/console/search?text={}", text.replace(' ', "+")),
        )
        .await;
        let ids: Vec<Value> = r["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].clone())
            .collect();
        assert_eq!(ids.len(), n, "{text}: {r}");
        assert_eq!(ids, cli_ids(text), "{text}");
    }
    let hit = api_json(collect.metrics, "/api/console/search?text=new+12").await;
    assert_eq!(hit["results"][0]["after_state"]["title"], "new 12");
    let r = api_get(collect.metrics, "/api/console/search?text=").await;
    assert_eq!(r.status(), 400);
}

/// Reads SSE events from `resp` until `pred` holds for a `calls` event, for at most `within`.
async fn wait_for_event(
    resp: &mut reqwest::Response,
    within: Duration,
    mut pred: impl FnMut(&Value) -> bool,
) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = String::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .ok()?
            .ok()??;
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let mut name = "";
            let mut data = String::new();
            for line in event.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = n.trim();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if name == "calls" {
                let v: Value = serde_json::from_str(&data).unwrap();
                if pred(&v) {
                    return Some(v);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_calls_arrive_within_a_second_filtered_and_the_window_stands_in_for_the_store() {
    let collect = CollectProcess::start(bin(), &["--audit", "none"]);
    let e = emitter(collect.grpc, None);
    send(&e, script()).await;

    // Without an audit trail: the same numbers, from the recent window, and it says so.
    let o = overview(collect.metrics, None).await;
    assert_eq!(o["source"], "recent");
    assert!(o["note"].as_str().unwrap().contains("--audit none"), "{o}");
    assert_eq!(o["totals"]["calls"], 14);
    assert_eq!(o["totals"]["errors"], 5);
    assert_eq!(o["totals"]["p95_ms"].as_f64(), Some(p95_of_1_to(14)));
    assert_eq!(o["totals"]["auth_failures"], 3);
    assert_eq!(o["writes_total"], 8);
    // Pages that need the store say so.
    for path in [
        "/api/console/review",
        "/api/console/audit",
        "/api/console/search?text=old",
    ] {
        let r = get(collect.metrics, path, None).await;
        assert_eq!(r.status(), 503, "{path}");
        let r = json(r).await;
        assert_eq!(r["needs_audit"], true, "{path}: {r}");
    }

    // Live: only bob's calls (`Bo` is a part of his name, in another case), and each within a
    // second of its export.
    let mut live = get(collect.metrics, "/api/console/live?user=Bo&tool=", None).await;
    assert_eq!(live.status(), 200);
    assert!(
        live.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // The stream is open once its first event is there.
    let first = tokio::time::timeout(Duration::from_secs(5), live.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: open"));
    let mut alice = ToolCall::new("get_task", "alice");
    alice.duration_ms = 3.0;
    let mut bob = ToolCall::new("get_task", "bob");
    bob.duration_ms = 4.0;
    let bob_span = bob.ids.span_id_hex();
    let sent = Instant::now();
    send(&e, vec![alice, bob]).await;
    let acked = sent.elapsed();
    let got = wait_for_event(&mut live, Duration::from_secs(1), |v| {
        v["calls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["span_id"] == bob_span.as_str())
    })
    .await
    .unwrap_or_else(|| {
        panic!("bob's call not in the live view within 1 s of its export ({acked:?})")
    });
    let calls = got["calls"].as_array().unwrap();
    assert!(calls.iter().all(|c| c["user"] == "bob"), "{got}");
    assert_eq!(got["skipped"], 0);
}

// ---------------------------------------------------------------- browser

/// The Playwright peer: its script, the `node_modules` that holds `playwright-core`, and the
/// system Chromium. A missing piece fails the test with the setup command.
fn browser_peer() -> (PathBuf, PathBuf) {
    let script = support::peer_script("console_browser.mjs");
    let own = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/node_modules");
    let modules = [own, support::peers_dir().join("node_modules")]
        .into_iter()
        .find(|m| m.join("playwright-core/package.json").is_file())
        .unwrap_or_else(|| {
            panic!("npm playwright-core is not installed in tests/peers: run `bash scripts/setup-peers.sh`")
        });
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "Debian chromium is not installed (/usr/bin/chromium): run `bash scripts/setup-peers.sh` (as root) or `apt-get install chromium`"
    );
    (script, modules)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    let (driver, modules) = browser_peer();
    let dir = support::tempdir();
    let (collect, e, _db) = scripted_collect(dir.path()).await;
    let o = overview(collect.metrics, Some(&bearer())).await;
    let shots = std::env::var_os("MCP_OTEL_CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("shots"));
    std::fs::create_dir_all(&shots).unwrap();
    let mut node = Command::new("node")
        .arg(&driver)
        .env("CONSOLE_URL", format!("http://{}", collect.metrics))
        .env("CONSOLE_TOKEN", TOKEN)
        .env("CONSOLE_MODULES", &modules)
        .env("CONSOLE_SHOTS", &shots)
        .env("CONSOLE_EXPECT", o.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node (Node.js >= 20) must be on PATH: run `bash scripts/setup-peers.sh`");
    let mut stdin = node.stdin.take().unwrap();
    let rx = line_channel(node.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut log = Vec::new();
    let mut live_spans = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("the browser script stopped answering: {log:#?}"));
        log.push(line.clone());
        match line.as_str() {
            // The live view is open (or paused): export one call and tell the script its span.
            "LIVE_READY" | "LIVE_PAUSED" => {
                let mut c = ToolCall::new("get_task", "dave");
                c.duration_ms = 2.5;
                live_spans.push(c.ids.span_id_hex());
                writeln!(stdin, "{}", c.ids.span_id_hex()).unwrap();
                let mut batch = vec![c];
                if line == "LIVE_READY" {
                    // A user name that would erase a terminal line and reverse the text after it.
                    batch.push(ToolCall::new("get_task", "mallory\x1b[2K\u{202e}"));
                }
                send(&e, batch).await;
            }
            l if l.starts_with("DONE") => break,
            l if l.starts_with("FAIL") => panic!("{l}\n{log:#?}"),
            _ => {}
        }
    }
    let status = node.wait().unwrap();
    assert!(status.success(), "the browser script failed: {log:#?}");
    assert_eq!(live_spans.len(), 2, "{log:#?}");
    for page in [
        "login",
        "overview",
        "live",
        "alerts",
        "audit",
        "overview-phone",
        "live-phone",
    ] {
        assert!(
            shots.join(format!("{page}.png")).is_file(),
            "no screenshot of {page}"
        );
    }
}

#[test]
fn the_served_demo_keeps_its_collector_and_console_running() {
    let mut demo = Command::new(bin())
        .args(["demo", "--serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = line_channel(demo.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the served demo printed no console URL within 60 s");
        if let Some(rest) = line.strip_prefix("Console: ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (o, a, r) = rt.block_on(async {
        let get = |p: &'static str| {
            let url = url.clone();
            async move {
                json(
                    reqwest::get(format!("{url}{}", p.trim_start_matches('/')))
                        .await
                        .unwrap(),
                )
                .await
            }
        };
        (
            get("/api/console/overview?range=1h").await,
            get("/api/console/alerts").await,
            get("/api/console/review").await,
        )
    });
    // The scripted session, the loop and the burst of writes, and the two gated deletes.
    assert!(
        o["totals"]["calls"].as_u64().unwrap() >= 7 + 120 + 25,
        "{o}"
    );
    assert_eq!(o["source"], "audit");
    let firing = support::texts_at(&a["firing"], "/labels/alertname");
    assert!(
        firing.contains(&"McpToolCallLoop") && firing.contains(&"McpWriteSpike"),
        "{a}"
    );
    assert!(r["totals"]["writes"].as_u64().unwrap() >= 25, "{r}");
    assert!(r["totals"]["deletes"].as_u64().unwrap() >= 1, "{r}");
    // Ctrl-C stops it.
    unsafe {
        libc::kill(demo.id() as i32, libc::SIGINT);
    }
    let stopped = Instant::now() + Duration::from_secs(15);
    while demo.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < stopped,
            "the served demo did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
