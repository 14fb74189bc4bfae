//! The console of `collect --audit postgres://…` against a real PostgreSQL server
//! (tests/support/pg.rs): two replicas write two chains into one database, and the console of
//! either answers for both, with what the CLI answers on the same database: the overview's
//! counts, a call's detail (with the chain that stored it, and a trace whose calls went to
//! both replicas), the write review and its CSV, the full-text search and verify per chain.

mod support;

use mcp_otel::record::{Status, ToolCall, TraceIds};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use support::CollectProcess;
use support::pg::{PgServer, db_name, shared};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-otel");

/// What a chain's verify report says that the console and the CLI must agree on.
const CHAIN_FIELDS: &str = "rows head public_key first_id last_id intact signed_through";

/// A replica writing chain `chain` into `url`, its key in `dir`.
fn replica(url: &str, dir: &Path, chain: &str) -> CollectProcess {
    let key = dir.join(format!("{chain}.key"));
    let key = key.to_str().unwrap();
    CollectProcess::start(
        BIN,
        &["--audit", url, "--chain-id", chain, "--audit-key", key],
    )
}

/// The lines `mcp-otel audit <args> --db <url> --json` prints, as JSON.
fn cli_json(url: &str, args: &[&str]) -> Vec<Value> {
    let (code, out) = support::audit::cli(&[args, &["--db", url, "--json"]].concat());
    assert_eq!(code, 0, "{out}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One number from `psql`.
fn psql_number(server: &PgServer, url: &str, sql: &str) -> f64 {
    let out = server.psql(db_name(url), sql);
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{sql}: {out:?}: {e}"))
}

/// `GET http://addr/path` (the console runs without a token here), its status and JSON.
async fn api(addr: SocketAddr, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// The sum of field `key` over the objects of the array `list`.
fn sum_of(list: &Value, key: &str) -> u64 {
    let items = list.as_array().expect("an array");
    items.iter().map(|v| v[key].as_u64().unwrap()).sum()
}

/// Exports `calls` to the replica at `grpc` and waits for the acknowledgement (the commit).
async fn export(grpc: SocketAddr, calls: &[ToolCall]) {
    let emitter = support::otlp_emitter(grpc, Duration::from_secs(600));
    calls.iter().for_each(|c| emitter.emit(c.clone()));
    assert!(emitter.flush(Duration::from_secs(20)).await, "no ack");
    assert_eq!(emitter.stats().exported, calls.len() as u64);
}

/// The session: calls `from..to` of the audit fixtures' session, two minutes ago, `tag`ged.
fn session(from: usize, to: usize, tag: &str) -> Vec<ToolCall> {
    let at = chrono::Utc::now() - chrono::TimeDelta::minutes(2);
    (from..to)
        .map(|i| {
            let mut c = support::audit::call(i, at);
            c.context = Some(serde_json::json!({ "replica": tag, "n": i }));
            if i % 9 == 4 {
                c.status = Status::Error;
                c.error_code = Some("429".into());
            }
            c
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_answers_for_every_replica_s_chain_as_the_cli_does() {
    let server = shared();
    let dir = support::tempdir();
    let url = server.fresh_db();
    let (r1, r2) = (
        replica(&url, dir.path(), "r1"),
        replica(&url, dir.path(), "r2"),
    );
    let first = session(0, 20, "one");
    let mut second = session(20, 35, "two");
    // One trace across both replicas: the root went to r1, a child of it to r2.
    second[3].ids = TraceIds::child_of(first[0].ids.trace_id, first[0].ids.span_id);
    export(r1.grpc, &first).await;
    export(r2.grpc, &second).await;
    let console = r2.metrics;

    let (_, status) = api(console, "/api/console/status").await;
    assert_eq!(
        (status["audit"].as_bool(), status["store"].as_str()),
        (Some(true), Some("postgres"))
    );

    // The overview counts both chains' rows, as SQL of our own over the table does.
    let (code, o) = api(console, "/api/console/overview?range=1h").await;
    assert_eq!(code, 200, "{o}");
    assert_eq!(o["source"], "audit");
    let sql = |expr: &str| psql_number(server, &url, &format!("SELECT {expr} FROM mcp_logs"));
    let t = &o["totals"];
    assert_eq!(t["calls"], 35);
    assert_eq!(t["calls"].as_f64(), Some(sql("count(*)")));
    for chain in ["r1", "r2"] {
        let n = sql(&format!("count(*) FILTER (WHERE chain_id = '{chain}')"));
        assert_eq!(n, if chain == "r1" { 20.0 } else { 15.0 });
    }
    let errors = sql("count(*) FILTER (WHERE status <> 'success')");
    assert!(errors >= 4.0, "{errors}");
    assert_eq!(t["errors"].as_f64(), Some(errors));
    assert_eq!(t["avg_ms"].as_f64(), Some(sql("avg(duration_ms)")));
    // Durations 1.5 + i ms, i in 0..35: the nearest rank 34 of 35 is 34.5 ms.
    assert_eq!(t["p95_ms"].as_f64(), Some(34.5));
    assert_eq!(
        t["rate_limited"].as_f64(),
        Some(sql("count(*) FILTER (WHERE error_code = '429')"))
    );
    assert_eq!(
        o["writes_total"].as_f64(),
        Some(sql("count(operation_type)"))
    );
    assert_eq!(
        sum_of(&o["writes"], "delete") as f64,
        sql("count(*) FILTER (WHERE operation_type = 'delete')")
    );
    for u in o["users"].as_array().unwrap() {
        let n = sql(&format!(
            "count(*) FILTER (WHERE \"user\" = '{}')",
            u["user"].as_str().unwrap()
        ));
        assert_eq!(u["calls"].as_f64(), Some(n), "{u}");
    }
    assert_eq!(o["users"].as_array().unwrap().len(), 2);
    assert_eq!(sum_of(&o["series"], "calls"), 35);

    // The write review: the CLI's document for the same day, over both chains.
    let day = first[0].timestamp.date_naive();
    let (code, review) = api(console, &format!("/api/console/review.json?day={day}")).await;
    assert_eq!(code, 200, "{review}");
    let next = day + chrono::TimeDelta::days(1);
    let cli = cli_json(
        &url,
        &[
            "review",
            "--since",
            &format!("{day}T00:00:00Z"),
            "--until",
            &format!("{next}T00:00:00Z"),
        ],
    );
    assert_eq!(review, cli[0]);
    let writes = review["writes"].as_array().unwrap();
    assert_eq!(writes.len() as f64, sql("count(operation_type)"));
    let r = reqwest::get(format!("http://{console}/api/console/review.csv?day={day}"))
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap().lines().count(), writes.len() + 1);

    // Search: what `audit query --text` finds on the same database, from both chains.
    for (text, chains) in [("replica one", 1), ("replica", 2), ("new 23", 1)] {
        let q = text.replace(' ', "+");
        let (code, found) = api(console, &format!("/api/console/search?text={q}")).await;
        assert_eq!(code, 200, "{found}");
        let ours: Vec<(Value, Value)> = found["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["chain_id"].clone(), c["id"].clone()))
            .collect();
        let theirs: Vec<(Value, Value)> = cli_json(&url, &["query", "--text", text])
            .iter()
            .map(|c| (c["chain_id"].clone(), c["id"].clone()))
            .collect();
        assert!(!ours.is_empty(), "{text}");
        assert_eq!(ours, theirs, "{text}");
        let mut seen: Vec<&Value> = ours.iter().map(|c| &c.0).collect();
        seen.dedup();
        assert_eq!(seen.len(), chains, "{text}: {ours:?}");
    }

    // Call detail by chain and id: every column `audit query` shows, and the chain.
    let row = cli_json(&url, &["query", "--text", "new 23"]).remove(0);
    let (code, d) = api(
        console,
        &format!("/api/console/call?chain=r2&id={}", row["id"]),
    )
    .await;
    assert_eq!(code, 200, "{d}");
    for (k, v) in row.as_object().unwrap() {
        assert_eq!(&d["call"][k], v, "{k}");
    }
    assert_eq!(d["call"]["chain_id"], "r2");
    let hash = server.psql(
        db_name(&url),
        &format!(
            "SELECT hash FROM mcp_logs WHERE chain_id = 'r2' AND id = {}",
            row["id"]
        ),
    );
    assert_eq!(d["call"]["hash"], hash.trim());
    // Row ids are per chain: id 1 alone is ambiguous, with its start time it is not.
    let (code, e) = api(console, "/api/console/call?id=1").await;
    assert_eq!(code, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains("r1, r2"), "{e}");
    let at = server.psql(
        db_name(&url),
        "SELECT to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
         FROM mcp_logs WHERE chain_id = 'r2' AND id = 1",
    );
    let at = at.trim();
    let (code, d) = api(console, &format!("/api/console/call?id=1&timestamp={at}")).await;
    assert_eq!((code, d["call"]["chain_id"].as_str()), (200, Some("r2")));
    // By the exporter's key, as the live view names a call: the root, and its trace from both
    // replicas in time order.
    let root = &first[0];
    let (code, d) = api(
        console,
        &format!(
            "/api/console/call?timestamp={}&trace_id={}&span_id={}",
            root.timestamp_rfc3339(),
            root.ids.trace_id_hex(),
            root.ids.span_id_hex()
        ),
    )
    .await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["call"]["chain_id"], "r1");
    let trace: Vec<(&str, &str)> = d["trace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["chain_id"].as_str().unwrap(),
                c["span_id"].as_str().unwrap(),
            )
        })
        .collect();
    let child = second[3].ids.span_id_hex();
    assert_eq!(
        trace,
        [
            ("r1", root.ids.span_id_hex().as_str()),
            ("r2", child.as_str())
        ]
    );
    let (code, _) = api(console, "/api/console/call?chain=r1&id=999").await;
    assert_eq!(code, 404);

    // Verify, per chain, as `audit verify --json` reports each.
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let (_, a) = api(console, "/api/console/audit").await;
        if !a["last"].is_null() && a["running"] == false {
            break a["last"].clone();
        }
        assert!(Instant::now() < deadline, "no verify result: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(v["intact"], true, "{v}");
    let cli = cli_json(&url, &["verify"]);
    let chains = v["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2, "{v}");
    for c in chains {
        let theirs = cli.iter().find(|l| l["chain_id"] == c["chain_id"]).unwrap();
        for k in CHAIN_FIELDS.split_whitespace() {
            assert_eq!(c[k], theirs[k], "{}: {k}", c["chain_id"]);
        }
        assert!(c["key_fingerprint"].is_string(), "{c}");
    }
    let rows: Vec<u64> = chains.iter().map(|c| c["rows"].as_u64().unwrap()).collect();
    assert_eq!(rows, [20, 15]);

    // A row changed behind the writers' backs (past the triggers, as a superuser can) is
    // named in its own chain, the other chain still intact.
    server.psql(
        db_name(&url),
        "SET session_replication_role = replica; \
         UPDATE mcp_logs SET tool_name = 'forged' WHERE chain_id = 'r1' AND id = 5",
    );
    let _ = api(console, "/api/console/audit?fresh=true").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let (_, a) = api(console, "/api/console/audit").await;
        if a["running"] == false && a["last"]["intact"] == false {
            break a["last"].clone();
        }
        assert!(Instant::now() < deadline, "the change was not found: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let chain = |id: &str| {
        v["chains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["chain_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(chain("r2")["intact"], true, "{v}");
    assert_eq!(chain("r1")["intact"], false, "{v}");
    assert_eq!(chain("r1")["problems"][0]["row"], 5, "{v}");
    drop((r1, r2));
}

/// Rows for the overview's figures only (their hashes are not a chain's): `n` calls of chain
/// `chain` over the last `hours` hours, durations spread over 0–200 ms.
fn filler(chain: &str, n: u64, hours: u64) -> String {
    format!(
        "SELECT mcp_otel_add_partitions(current_date - 1, 3); \
         INSERT INTO mcp_logs (chain_id, id, \"timestamp\", tool_name, \"user\", status, \
         duration_ms, error_code, trace_id, span_id, recorded_at, prev_hash, hash) \
         SELECT '{chain}', i, now() - interval '1 minute' - i * interval '{ms} milliseconds', \
         'tool_' || (i % 3), 'user_' || (i % 7), CASE WHEN i % 13 = 0 THEN 'error' ELSE 'success' END, \
         (i * 7919 % 20000) / 100.0, CASE WHEN i % 13 = 0 THEN '500' END, md5('{chain}' || i), \
         left(md5('s' || i), 16), now(), '', '' FROM generate_series(1, {n}) AS i",
        ms = hours * 3_600_000 / n
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_twenty_thousand_calls_the_p95s_are_the_histograms_close_estimates() {
    let (server, url) = (shared(), shared().fresh_db());
    let keys = support::tempdir();
    let r = replica(&url, keys.path(), "r1");
    server.psql(db_name(&url), &filler("a", 15_000, 20));
    server.psql(db_name(&url), &filler("b", 12_000, 20));
    let (code, o) = api(r.metrics, "/api/console/overview?range=24h").await;
    assert_eq!(code, 200, "{o}");
    assert_eq!(o["totals"]["calls"], 27_000);
    assert_eq!(o["p95_estimated"], true);
    let exact = |filter: &str| {
        psql_number(
            server,
            &url,
            &format!(
                "SELECT percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms) FROM mcp_logs \
                 WHERE {filter}"
            ),
        )
    };
    // Never below the nearest rank, at most one bucket (2^(1/16), 4.4 %) above it.
    let close = |estimate: &Value, exact: f64| {
        let e = estimate.as_f64().unwrap();
        assert!(e >= exact && e <= exact * 1.0444, "{e} vs {exact}");
    };
    close(&o["totals"]["p95_ms"], exact("true"));
    for t in o["tools"].as_array().unwrap() {
        close(
            &t["p95_ms"],
            exact(&format!("tool_name = '{}'", t["tool"].as_str().unwrap())),
        );
    }
    let errors = psql_number(
        server,
        &url,
        "SELECT count(*) FROM mcp_logs WHERE status = 'error'",
    );
    assert_eq!(o["totals"]["errors"].as_f64(), Some(errors));
    assert_eq!(sum_of(&o["series"], "calls"), 27_000);
    assert_eq!(sum_of(&o["users"], "calls"), 27_000);
}
