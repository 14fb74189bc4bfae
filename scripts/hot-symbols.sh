#!/usr/bin/env bash
# Record the functions `collect` runs (start-up, then MCP-shaped OTLP exports, plain and gzip)
# into linker/hot-symbols.txt, hottest first; build.rs hands that file to the linker so that a
# release binary keeps this code together (see build.rs, `hot_code_together`).
#
# How: the decode-floor harness (benches/ingest_floor.rs) runs `collect` under valgrind's
# callgrind for one short run of each case; callgrind counts the instructions each function of
# the binary executed. Run it again after a change that moves collect's hot path (a function
# renamed or added there stays outside the hot block until then; nothing breaks).
#
# `cargo build --release` and `cargo bench` build the binary with different features of some
# dependencies (the benches' dev-dependencies join in), so about half of the symbol names differ
# between the two: both builds are recorded, and each finds its own names in the file.
#
# Usage: bash scripts/hot-symbols.sh        (needs valgrind: apt-get install valgrind)
set -Eeuo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "hot-symbols: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }

out=$(mktemp -d)
trap 'pkill -9 -f "callgrind-out-file=$out" 2>/dev/null || true; rm -rf "$out"' EXIT

mkdir -p "$out/release" "$out/bench"
cargo build --release --bin mcp-otel 2>&1 | tail -1
cp target/release/mcp-otel "$out/release/mcp-otel"
cargo bench --bench ingest_floor --no-run 2>&1 | tail -1
cp target/release/mcp-otel "$out/bench/mcp-otel"
harness=$(find target/release/deps -maxdepth 1 -type f -executable -name 'ingest_floor-*' -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2)

for build in release bench; do
    # The harness kills its receiver when a run ends, so callgrind runs in the background of a
    # wrapper and its counts are dumped (callgrind_control -d) before it is killed here.
    wrapper=$out/$build/collect.sh
    {
        echo '#!/bin/sh'
        echo "valgrind --tool=callgrind --demangle=no --callgrind-out-file=$out/cg.$build.%p $out/$build/mcp-otel \"\$@\" &"
        echo 'wait'
    } > "$wrapper"
    chmod +x "$wrapper"
    FLOOR_COLLECT="$wrapper" FLOOR_QUICK=1 FLOOR_CASES=mcp/4,gzip/4 "$harness" --bench >/dev/null
    for pid in $(pgrep -f "callgrind-out-file=$out"); do
        callgrind_control -d "$pid" >/dev/null 2>&1
    done
    sleep 2
    pkill -9 -f "callgrind-out-file=$out" 2>/dev/null || true
done

python3 - "$out" linker/hot-symbols.txt <<'EOF'
import collections, glob, re, sys

out, target = sys.argv[1:]
binaries = {f"{out}/release/mcp-otel", f"{out}/bench/mcp-otel"}
cost = collections.Counter()
for path in glob.glob(f"{out}/cg.*"):
    objects, functions, obj, fn, skip = {}, {}, None, None, False
    for line in open(path):
        m = re.match(r"(c?)(ob|fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            table = objects if m[2] == "ob" else functions
            if m[4]:
                table[m[3]] = m[4]
            if not m[1]:
                if m[2] == "ob":
                    obj = table[m[3]]
                else:
                    fn = table[m[3]] if obj in binaries else None
        elif line.startswith("calls="):
            skip = True  # the next cost line is the callee's, not this function's own
        elif line[:1].isdigit() or line[:1] in "+-*":
            if skip:
                skip = False
            elif fn is not None and not fn.startswith("0x"):  # 0x...: code without a symbol
                cost[re.sub(r"'\d+$", "", fn)] += int(line.split()[1])
if len(cost) < 400:
    sys.exit(f"hot-symbols: only {len(cost)} functions recorded; did collect run twice?")
with open(target, "w") as f:
    for name, _ in cost.most_common():
        f.write(name + "\n")
print(f"hot-symbols: {len(cost)} functions written to {target}")
EOF
