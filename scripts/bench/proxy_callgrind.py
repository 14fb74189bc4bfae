#!/usr/bin/env python3
"""User-space instructions per tools/call of a proxy build, per thread, counted by callgrind
(deterministic: unaffected by the machine's load): (I(N2) - I(N1)) / (N2 - N1) over two runs
of N1 and N2 calls, with full export batches (OTEL_BSP_SCHEDULE_DELAY set long).

    apt-get install valgrind; cargo build --release --examples && cargo build --release
    python3 scripts/bench/proxy_callgrind.py target/release/mcp-otel [proxy flags...]
"""
# Instructions per tools/call of the proxy (user space, all threads), by callgrind:
# (I(N2) - I(N1)) / (N2 - N1). Usage: cg.py BIN [proxy args...]
import subprocess, sys, os, re, glob, tempfile
bin = sys.argv[1]; extra = sys.argv[2:]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ex = os.path.join(ROOT, "target/release/examples") + "/"
col = subprocess.Popen([bin, "collect", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                        "--metrics-listen", "127.0.0.1:0", "--audit", "none"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
grpc = re.search(r"OTLP/gRPC on ([^,]+),", col.stderr.readline()).group(1).strip()
env = {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "600000", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + grpc, "OTEL_SERVICE_NAME": "cg"}
def run(n):
    d = tempfile.mkdtemp(prefix="cg")
    base = [] if "--log" in extra else ["--log", "/dev/null"]
    p = subprocess.Popen(["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={d}/cg.out",
                          bin, "proxy"] + base + extra + ["--", ex + "echo_server"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    p.stdin.write(b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}\n'); p.stdin.flush(); p.stdout.readline()
    p.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    for i in range(1, n + 1):
        p.stdin.write(b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"}}}\n' % i)
        p.stdin.flush(); p.stdout.readline()
    p.stdin.close(); p.wait()
    per = {}
    for f in sorted(glob.glob(d + "/cg.out-*")):
        t = open(f).read()
        m = re.search(r"^(?:summary|totals):\s+(\d+)", t, re.M)
        n = int(m.group(1)) if m else 0
        name = "other"
        for key, label in [("correlate::Observer::handle", "observer"), ("pipeline::Worker", "export"),
                           ("forward_client_lines", "client"), ("server_lines", "server")]:
            if key in t: name = label; break
        per[name] = per.get(name, 0) + n
    print("  kept in", d, flush=True)
    return per
n1, n2 = int(os.environ.get("N1", "1024")), int(os.environ.get("N2", "3584"))
a, b = run(n1), run(n2)
k = n2 - n1
print("instr/call:", {n: round((b.get(n, 0) - a.get(n, 0)) / k) for n in sorted(set(a) | set(b))},
      "total %d" % ((sum(b.values()) - sum(a.values())) / k))
col.kill()
