#!/usr/bin/env python3
"""CPU per tools/call of each proxy thread (from /proc/PID/task/*/schedstat), against the byte
relay, call by call from one client; several proxy builds alternate round by round.

    cargo build --release --examples && cargo build --release
    N=10000 R=8 BINS=old/mcp-otel,target/release/mcp-otel python3 scripts/bench/proxy_threads.py

VARIANTS (instead of BINS) runs one build with different flags and environment:
    VARIANTS="full=|;noexp=|OTEL_TRACES_EXPORTER=none;nolog=--log none|" ... proxy_threads.py BIN
"""
# Per-thread CPU of the proxy over N sequential tools/call (echo), against the byte relay.
import subprocess, sys, os, time, re, json
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ex = os.path.join(ROOT, "target/release/examples") + "/"
bin = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/mcp-otel")
N = int(os.environ.get("N", "20000"))
col = subprocess.Popen([bin, "collect", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                        "--metrics-listen", "127.0.0.1:0", "--audit", "none"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
line = col.stderr.readline()
grpc = re.search(r"OTLP/gRPC on ([^,]+),", line).group(1).strip()
hz = os.sysconf("SC_CLK_TCK")
def sched(pid):
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        s = open(f"/proc/{pid}/task/{t}/schedstat").read().split()
        name = open(f"/proc/{pid}/task/{t}/comm").read().strip()
        out[t] = (name, int(s[0]) / 1e3)
    return out
def run(cmd, env):
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **env})
    def call(i):
        p.stdin.write(b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"}}}\n' % i)
        p.stdin.flush()
        p.stdout.readline()
    for i in range(2000): call(i)
    b = sched(p.pid)
    for i in range(2000, 2000 + N): call(i)
    a = sched(p.pid)
    if env and os.environ.get("SS"):
        time.sleep(6)  # the last partial batch (OTEL_BSP_SCHEDULE_DELAY 5 s)
        out = subprocess.run(["ss", "-tinH", "dst", grpc], capture_output=True, text=True).stdout
        m = re.findall(r"bytes_acked:(\d+)", out)
        print("  bytes to the collector over the run:", m, flush=True)
    p.stdin.close(); p.wait()
    per = {}
    for t, (name, v) in a.items():
        per[name + ":" + t] = (v - b.get(t, (name, 0))[1]) / N
    return per
envp = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + grpc, "OTEL_SERVICE_NAME": "pt"}
# VARIANTS: name=args|ENV=v,ENV=v;...   e.g. "full=|;noexp=|OTEL_TRACES_EXPORTER=none;nolog=--log none|"
variants = os.environ.get("VARIANTS", "full=|")
R = int(os.environ.get("R", "1"))
def summ(per):
    groups = {}
    for k, v in per.items():
        n = k.split(":")[0]
        if not n.startswith("mcp-otel-") and n != "byte_relay": n = "other"
        groups[n] = groups.get(n, 0) + v
    return "total %.2f  " % sum(per.values()) + " ".join("%s=%.2f" % kv for kv in sorted(groups.items()) if kv[1] > 0.02)
# Each run: (label, build, extra flags, extra environment).
runs = []
if "VARIANTS" in os.environ:
    for v in variants.split(";"):
        name, rest = v.split("=", 1)
        args, envs = rest.split("|")
        runs.append((name, bin, args.split(), dict(kv.split("=", 1) for kv in filter(None, envs.split(",")))))
else:
    runs = [(b, b, [], {}) for b in os.environ.get("BINS", bin).split(",")]
for r in range(R):
    relay = run([ex + "byte_relay", ex + "echo_server"], {})
    print("relay", summ(relay), flush=True)
    for name, b, args, extra in (runs if r % 2 == 0 else runs[::-1]):
        base = [] if "--log" in args else ["--log", "/dev/null"]
        proxy = run([b, "proxy"] + base + args + ["--", ex + "echo_server"], {**envp, **extra})
        print(name, summ(proxy), flush=True)
col.kill()
