#!/usr/bin/env bash
# Runs every test on a fresh machine: installs the test peers (Python venv with the official MCP
# and OpenTelemetry SDKs, the npm MCP servers, Prometheus' promtool), checks formatting and lints,
# validates collector-config/, then runs the Rust test suite (unit, integration, doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== test peers"
bash scripts/setup-peers.sh

echo "== collector-config"
bash scripts/check-collector-config.sh

echo "== crates"
# Every crate up front, so the steps below fail on code, never on a download.
cargo fetch --locked

echo "== fmt + clippy"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --all-targets --locked --features tls -- -D warnings

echo "== cargo test"
# Tests that need a peer find it through these; a missing peer fails the test, never skips it.
export MCP_OTEL_PYTHON="$PWD/.venv/bin/python"
export MCP_OTEL_PEERS="$PWD/tests/peers"
# The second venv (OpenLLMetry on the MCP Python SDK 1.x), see scripts/setup-peers.sh.
export MCP_OTEL_PYTHON_OPENLLMETRY="$PWD/.venv-openllmetry/bin/python"
cargo test --all-targets --locked
cargo test --doc --locked
# TLS on collect's listeners is behind a feature: its own test run.
cargo test --locked --features tls --test collect_tls
