//! A private PostgreSQL server for the tests of the PostgreSQL audit store: Debian's
//! `postgresql` (installed by `scripts/setup-peers.sh`), run as the `postgres` OS user (the
//! server refuses root) on a data directory in a fresh temporary folder, listening on
//! 127.0.0.1 on a free port and on a unix socket in that folder, `fsync = on`. No system
//! service is assumed or touched.
//!
//! [`shared`] starts one server per test binary on first use; each test takes a fresh database
//! from it ([`PgServer::fresh_db`]). [`PgServer::private`] starts one that a test owns (to stop
//! and restart it under a running collector), stopped when dropped. Nothing outlives the test
//! binary: the shared server is stopped at process exit, and every server has a watchdog
//! process that stops it and removes its folder once the test binary is gone, even when it was
//! killed.
//!
//! A test that needs PostgreSQL and cannot start it fails, naming what is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SETUP_HINT: &str = "install PostgreSQL (`apt-get install postgresql`, which \
    `bash scripts/setup-peers.sh` does) or set MCP_OTEL_PG_BIN to its bin directory";

/// A running private server.
pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    owned: bool,
}

static SHARED: OnceLock<PgServer> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// The test binary's server, started on first use and stopped when the binary exits.
pub fn shared() -> &'static PgServer {
    SHARED.get_or_init(|| {
        let mut server = PgServer::start();
        server.owned = false;
        // SAFETY: registering a plain `extern "C"` function with no arguments.
        unsafe { libc::atexit(stop_shared) };
        server
    })
}

extern "C" fn stop_shared() {
    if let Some(s) = SHARED.get() {
        s.stop();
        let _ = std::fs::remove_dir_all(&s.dir);
    }
}

/// The directory of `initdb`, `pg_ctl` and `psql`: `MCP_OTEL_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MCP_OTEL_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|e| panic!("no /usr/lib/postgresql ({e}): {SETUP_HINT}"))
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .unwrap_or_else(|| panic!("no /usr/lib/postgresql/*/bin/initdb: {SETUP_HINT}"))
        .1
}

/// Runs `cmd` to completion; panics with its output when it fails.
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e} ({SETUP_HINT})"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {text}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cmd` run as the `postgres` OS user when we are root (the server refuses root).
fn as_postgres(program: &Path) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgServer {
    /// A server the caller owns: stopped (and its folder removed) when dropped.
    pub fn private() -> PgServer {
        Self::start()
    }

    fn start() -> PgServer {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("mcp-otel-pg-")
            .tempdir()
            .expect("a temporary folder")
            .keep();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            run(
                Command::new("chown").args(["-R", "postgres:"]).arg(&dir),
                "chown the server's folder to postgres",
            );
        }
        run(
            as_postgres(&bin.join("initdb"))
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "-D",
                ])
                .arg(dir.join("data")),
            "initdb",
        );
        let server = PgServer {
            bin,
            dir,
            port: free_port(),
            owned: true,
        };
        server.watchdog();
        server.start_again();
        server
    }

    /// Starts the (stopped) server again on its port, waiting until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200",
            self.dir.display(),
            self.port
        );
        run(
            as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .stdout(Stdio::null()),
            "pg_ctl start",
        );
    }

    /// Stops the server (fast: open sessions are disconnected), waiting until it is down.
    pub fn stop(&self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-t", "60", "-m", "fast", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// A process that outlives nothing: once this test binary is gone it stops the server and
    /// removes its folder.
    fn watchdog(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {ctl} -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            ctl = as_postgres_shell(&self.bin.join("pg_ctl")),
            data = self.dir.join("data").display(),
            dir = self.dir.display(),
        );
        // Never waited for: it must outlive this process (and ends after it).
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the PostgreSQL watchdog");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` (the superuser, over TCP, no TLS).
    pub fn url(&self, db: &str) -> String {
        self.url_as("postgres", db)
    }

    /// The URL of database `db` for the role `role` (every role is trusted on loopback).
    pub fn url_as(&self, role: &str, db: &str) -> String {
        format!(
            "postgres://{role}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// A new, empty database; its URL.
    pub fn fresh_db(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs `sql` in database `db` of `url`'s server as the superuser; the unaligned output.
    /// Panics when a statement fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        run(&mut self.psql_cmd(db, sql), &format!("psql {sql:?}"))
    }

    /// [`PgServer::psql`] that returns the error text instead of panicking.
    pub fn psql_err(&self, db: &str, sql: &str) -> Result<String, String> {
        self.psql_as("postgres", db, sql)
    }

    /// [`PgServer::psql_err`] as the role `role`.
    pub fn psql_as(&self, role: &str, db: &str, sql: &str) -> Result<String, String> {
        let out = self.psql_cmd_as(role, db, sql).output().unwrap();
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    fn psql_cmd(&self, db: &str, sql: &str) -> Command {
        self.psql_cmd_as("postgres", db, sql)
    }

    fn psql_cmd_as(&self, role: &str, db: &str, sql: &str) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", role])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-d",
                db,
                "-c",
                sql,
            ])
            .stdin(Stdio::null());
        c
    }

    /// Waits until the server accepts connections (after [`PgServer::start_again`] from
    /// another thread), up to `within`.
    pub fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.psql_err("postgres", "SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL not ready in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `mcp-otel audit verify --db url --require-signed`: asserts that it passes and reports each
/// of `chains` (chain id, rows) intact with that many rows; its output.
pub fn verified(url: &str, chains: &[(&str, u64)]) -> String {
    let (code, out) = super::audit::cli(&["verify", "--db", url, "--require-signed"]);
    assert_eq!(code, 0, "{out}");
    for (chain, rows) in chains {
        assert!(
            out.contains(&format!("chain {chain}: audit trail intact: {rows} rows")),
            "chain {chain}, {rows} rows: {out}"
        );
    }
    out
}

/// The README's role set-up in database `db` (whose schema the owner created): `collect`'s role
/// `{db}_collect` may only INSERT (and SELECT what the chain head and the duplicate check
/// need), and hold calls in `collect_held_calls` (INSERT, SELECT, DELETE); reviewers
/// (`{db}_review`) only SELECT.
pub fn roles_sql(db: &str) -> String {
    format!(
        "CREATE ROLE {db}_collect LOGIN; CREATE ROLE {db}_review LOGIN; \
         GRANT SELECT, INSERT ON mcp_logs, audit_checkpoints, audit_chains TO {db}_collect; \
         GRANT SELECT, INSERT, DELETE ON collect_held_calls TO {db}_collect; \
         GRANT SELECT ON mcp_logs, audit_checkpoints, audit_chains TO {db}_review;"
    )
}

/// The database name of a URL from [`PgServer::url`].
pub fn db_name(url: &str) -> &str {
    url.rsplit('/')
        .next()
        .and_then(|tail| tail.split('?').next())
        .unwrap_or("")
}

fn as_postgres_shell(program: &Path) -> String {
    // SAFETY: geteuid has no preconditions.
    match unsafe { libc::geteuid() } == 0 {
        true => format!("runuser -u postgres -- '{}'", program.display()),
        false => format!("'{}'", program.display()),
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.owned {
            self.stop();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
