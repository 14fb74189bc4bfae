// mcp-otel console: draws the page the path names from the JSON APIs under /api/console/.
// Data only ever enters the document as text (textContent, attribute values), never as markup;
// control characters are shown as \u{…} like the CLI does. Charts are plain SVG.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

// ---------------------------------------------------------------- helpers

/** `s` with every character that could act on a terminal or reorder text written as \u{hex}. */
function visible(s) {
  if (s === null || s === undefined) return "";
  return String(s).replace(
    /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g,
    (c) => "\\u{" + c.codePointAt(0).toString(16) + "}",
  );
}

/** Preformatted text: line breaks kept, every other acting character made visible. */
function pre(text) {
  const e = document.createElement("pre");
  e.textContent = String(text).split("\n").map(visible).join("\n");
  return e;
}

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") e.textContent = visible(v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(typeof c === "string" || typeof c === "number" ? document.createTextNode(visible(c)) : c);
  }
  return e;
}

/** An SVG element. */
function sv(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(typeof c === "string" || typeof c === "number" ? document.createTextNode(visible(c)) : c);
  }
  return e;
}

/** A hover title for an SVG shape. */
function titled(shape, text) {
  shape.append(sv("title", {}, text));
  return shape;
}

const fmt = {
  int: (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US")),
  ms: (n) => (n === null || n === undefined ? "–" : Number(n).toFixed(1) + " ms"),
  pct: (r) => (r === null || r === undefined ? "–" : (r * 100).toFixed(1) + " %"),
  time: (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "Z") : ""),
};

class ApiError extends Error {}

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (r.status === 401) {
    // The session ended: the page itself now shows the token prompt.
    location.reload();
    throw new ApiError("not signed in");
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new ApiError(body.error || r.status + " " + r.statusText);
  return body;
}

function note(text, cls) {
  return el("p", { class: "note " + (cls || ""), role: cls === "error" ? "alert" : undefined }, text);
}

function table(id, caption, head, rows) {
  return el(
    "div",
    { class: "table-wrap" },
    el(
      "table",
      { id },
      el("caption", {}, caption),
      el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
      el(
        "tbody",
        {},
        rows.map((r) => el("tr", {}, r.map((c, i) => el(i === 0 ? "th" : "td", i === 0 ? { scope: "row" } : {}, c)))),
      ),
    ),
  );
}

// ---------------------------------------------------------------- charts

/** 1, 2 or 5 times a power of ten, at least `v`. */
function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** The top of an axis with four equal, round steps that reaches `v` (whole steps for counts). */
function niceMax(v, whole) {
  const step = niceCeil((v > 0 ? v : 1) / 4);
  return 4 * (whole ? Math.max(1, Math.ceil(step)) : step);
}

// The width follows the page (set before each overview is drawn) so text stays readable.
let W = 640;
const H = 230, PAD = { l: 56, r: 12, t: 12, b: 40 };

/** Axes and grid of a chart over `n` slots with y from 0 to `max`; returns the frame. */
function frame(labels, max, unit, yLabel) {
  const g = sv("g", { class: "axes" });
  const ih = H - PAD.t - PAD.b;
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    const y = PAD.t + ih - (ih * i) / 4;
    g.append(sv("line", { x1: PAD.l, x2: W - PAD.r, y1: y, y2: y, class: i === 0 ? "axis" : "grid" }));
    const text = unit === "%" ? (v * 100).toFixed(v * 100 < 10 && v > 0 ? 1 : 0) : Number.isInteger(v) ? String(v) : v.toFixed(1);
    g.append(sv("text", { x: PAD.l - 6, y: y + 4, class: "tick", "text-anchor": "end" }, text));
  }
  g.append(sv("text", { x: 12, y: PAD.t + ih / 2, class: "unit", transform: `rotate(-90 12 ${PAD.t + ih / 2})`, "text-anchor": "middle" }, yLabel));
  const iw = W - PAD.l - PAD.r;
  const step = Math.max(1, Math.ceil(labels.length / 8));
  labels.forEach((lab, i) => {
    if (i % step !== 0) return;
    const x = PAD.l + (iw * (i + 0.5)) / labels.length;
    g.append(sv("text", { x, y: H - PAD.b + 16, class: "tick", "text-anchor": "middle" }, lab));
  });
  return g;
}

function legend(series) {
  return el(
    "ul",
    { class: "legend" },
    series.map((s, i) => el("li", {}, el("span", { class: "swatch s" + (s.color ?? i) }), s.name)),
  );
}

/** Stacked bars: `series` = [{name, values}], one value per label. */
function barChart({ title, labels, full, series, unit, yLabel, id }) {
  const totals = labels.map((_, i) => series.reduce((a, s) => a + (s.values[i] || 0), 0));
  const max = niceMax(Math.max(0, ...totals), true);
  const svg = sv("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title, class: "chart" });
  svg.append(frame(labels, max, unit, yLabel));
  const iw = W - PAD.l - PAD.r, ih = H - PAD.t - PAD.b;
  const bw = iw / Math.max(1, labels.length);
  labels.forEach((_, i) => {
    let base = 0;
    series.forEach((s, k) => {
      const v = s.values[i] || 0;
      if (v <= 0) return;
      const h = (ih * v) / max;
      const y = PAD.t + ih - (ih * (base + v)) / max;
      const rect = sv("rect", {
        x: PAD.l + i * bw + (bw - Math.min(48, bw * 0.76)) / 2, y, width: Math.max(1, Math.min(48, bw * 0.76)), height: Math.max(0.5, h),
        class: "bar s" + (s.color ?? k),
      });
      svg.append(titled(rect, `${full[i]}: ${s.name} ${fmt.int(v)}${unit && unit !== "%" ? " " + unit : ""}`));
      base += v;
    });
  });
  return el("figure", { class: "card chart-card", id }, el("figcaption", {}, title), svg, legend(series));
}

/** Lines: `series` = [{name, values}] with null for no value. */
function lineChart({ title, labels, full, series, unit, yLabel, id, format }) {
  const all = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
  const max = unit === "%" ? Math.min(1, niceMax(Math.max(0.01, ...all) * 100, false) / 100) : niceMax(Math.max(0, ...all), false);
  const svg = sv("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title, class: "chart" });
  svg.append(frame(labels, max, unit, yLabel));
  const iw = W - PAD.l - PAD.r, ih = H - PAD.t - PAD.b;
  const x = (i) => PAD.l + (iw * (i + 0.5)) / labels.length;
  const y = (v) => PAD.t + ih - (ih * Math.min(v, max)) / max;
  series.forEach((s, k) => {
    let d = "";
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      d += (pen ? " L" : " M") + x(i).toFixed(1) + " " + y(v).toFixed(1);
      pen = true;
    });
    if (d) svg.append(sv("path", { d: d.trim(), class: "line s" + (s.color ?? k) }));
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      const dot = sv("circle", { cx: x(i), cy: y(v), r: 3.5, class: "dot s" + (s.color ?? k) });
      svg.append(titled(dot, `${full[i]}: ${s.name} ${format(v)}`));
    });
  });
  return el("figure", { class: "card chart-card", id }, el("figcaption", {}, title), svg, legend(series));
}

/** Horizontal bars, one per row: [{name, value}]. */
function hbarChart({ title, rows, unit, id }) {
  const rowH = 22;
  const h = Math.max(1, rows.length) * rowH + 28;
  const labelW = Math.min(150, Math.round(W * 0.3));
  const max = niceMax(Math.max(0, ...rows.map((r) => r.value)), true);
  const svg = sv("svg", { viewBox: `0 0 ${W} ${h}`, role: "img", "aria-label": title, class: "chart" });
  const iw = W - labelW - 60;
  rows.forEach((r, i) => {
    const y = 4 + i * rowH;
    const name = visible(r.name);
    svg.append(sv("text", { x: labelW - 6, y: y + 14, class: "tick", "text-anchor": "end" }, name.length > 22 ? name.slice(0, 21) + "…" : name));
    const bar = sv("rect", { x: labelW, y: y + 3, width: Math.max(1, (iw * r.value) / max), height: rowH - 8, class: "bar s" + (r.color ?? 0) });
    svg.append(titled(bar, `${name}: ${fmt.int(r.value)} ${unit}`));
    svg.append(sv("text", { x: labelW + (iw * r.value) / max + 6, y: y + 14, class: "tick" }, fmt.int(r.value)));
  });
  svg.append(sv("line", { x1: labelW, x2: labelW, y1: 0, y2: h - 24, class: "axis" }));
  svg.append(sv("text", { x: labelW + iw / 2, y: h - 6, class: "unit", "text-anchor": "middle" }, unit));
  return el("figure", { class: "card chart-card", id }, el("figcaption", {}, title), svg);
}

// ---------------------------------------------------------------- overview

const RANGES = [["1h", "Last hour"], ["24h", "Last day"], ["7d", "Last 7 days"]];
const TOOL_COLORS = 8;

function bucketLabels(o) {
  return o.buckets.map((b) => (o.bucket_seconds >= 86400 ? b.slice(5, 10) : b.slice(11, 16)));
}

function stat(metric, label, value, hint) {
  return el("div", { class: "stat card", "data-metric": metric, title: hint }, el("div", { class: "label" }, label), el("div", { class: "value" }, value));
}

function rangeForm(current, onPick) {
  const from = el("input", { type: "datetime-local", name: "from", "aria-label": "From (UTC)" });
  const to = el("input", { type: "datetime-local", name: "to", "aria-label": "To (UTC)" });
  if (current.from) from.value = current.from.slice(0, 16);
  if (current.to) to.value = current.to.slice(0, 16);
  const buttons = RANGES.map(([r, label]) =>
    el("button", { type: "button", class: current.range === r ? "on" : "", "aria-pressed": String(current.range === r), onclick: () => onPick({ range: r }) }, label));
  const custom = el(
    "form",
    { class: "custom", onsubmit: (e) => {
      e.preventDefault();
      if (from.value && to.value) onPick({ from: from.value + ":00Z", to: to.value + ":00Z" });
    } },
    el("span", {}, "From"), from, el("span", {}, "to"), to, el("span", {}, "UTC"),
    el("button", { type: "submit" }, "Show"),
  );
  return el("div", { class: "range" }, buttons, custom);
}

function currentRange() {
  const q = new URLSearchParams(location.search);
  if (q.get("from")) return { from: q.get("from"), to: q.get("to") || "" };
  return { range: q.get("range") || "24h" };
}

async function overviewPage(main) {
  const range = currentRange();
  const pick = (r) => {
    const q = new URLSearchParams(r);
    history.pushState(null, "", "/?" + q.toString());
    draw();
  };
  main.replaceChildren(el("h1", {}, "Overview"), rangeForm(range, pick), note("Loading…"));
  const q = new URLSearchParams(range).toString();
  let o;
  try {
    o = await api("/api/console/overview?" + q);
  } catch (e) {
    main.replaceChildren(el("h1", {}, "Overview"), rangeForm(range, pick), note(e.message, "error"));
    return;
  }
  W = Math.round(Math.min(640, Math.max(300, main.clientWidth - 40)));
  const t = o.totals;
  const labels = bucketLabels(o);
  const full = o.buckets.map(fmt.time);
  const unitName = o.bucket_seconds >= 86400 ? "day" : o.bucket_seconds >= 3600 ? "hour" : o.bucket_seconds / 60 + " minutes";
  const top = o.tools.slice(0, TOOL_COLORS - 1).map((tf, i) => ({ name: tf.tool, values: tf.per_bucket, color: i }));
  const rest = o.tools.slice(TOOL_COLORS - 1);
  if (rest.length) {
    top.push({ name: `${rest.length} other tools`, values: labels.map((_, i) => rest.reduce((a, tf) => a + tf.per_bucket[i], 0)), color: TOOL_COLORS - 1 });
  }
  const source = o.source === "audit"
    ? note(`From the audit trail: ${fmt.time(o.from)} to ${fmt.time(o.to)}, per ${unitName} (UTC).` +
      (o.p95_estimated ? " p95s are estimates from latency histograms (at most 4.4 % above the exact value) for ranges this large." : ""))
    : note(o.note, "warn");
  const stats = el(
    "section",
    { class: "stats", "aria-label": "Totals" },
    stat("calls", "Tool calls", fmt.int(t.calls)),
    stat("error_rate", "Error rate", fmt.pct(t.error_rate), `${fmt.int(t.errors)} errors or timeouts`),
    stat("errors", "Errors + timeouts", fmt.int(t.errors)),
    stat("avg_ms", "Avg latency", fmt.ms(t.avg_ms)),
    stat("p95_ms", o.p95_estimated ? "p95 latency (≈)" : "p95 latency", fmt.ms(t.p95_ms)),
    stat("writes", "Writes", fmt.int(o.writes_total)),
    stat("rate_limited", "Rate limited (429)", fmt.int(t.rate_limited)),
    stat("auth_failures", "Auth failures (401/403)", fmt.int(t.auth_failures)),
  );
  const charts = el(
    "section",
    { class: "charts" },
    barChart({ id: "chart-calls", title: `Tool calls per ${unitName}, by tool`, labels, full, series: top, unit: "calls", yLabel: "calls" }),
    lineChart({ id: "chart-errors", title: `Error rate per ${unitName}`, labels, full, unit: "%", yLabel: "% of calls", format: fmt.pct,
      series: [{ name: "errors + timeouts", values: o.series.map((s) => s.error_rate), color: 3 }] }),
    lineChart({ id: "chart-latency", title: `Latency per ${unitName}`, labels, full, unit: "ms", yLabel: "ms", format: fmt.ms,
      series: [{ name: "average", values: o.series.map((s) => s.avg_ms), color: 0 }, { name: "p95", values: o.series.map((s) => s.p95_ms), color: 1 }] }),
    barChart({ id: "chart-writes", title: "Write operations per day, by type", labels: o.writes.map((d) => d.day.slice(5)), full: o.writes.map((d) => d.day), unit: "writes", yLabel: "writes",
      series: ["create", "update", "delete", "write"].map((k, i) => ({ name: k, values: o.writes.map((d) => d[k]), color: [2, 0, 3, 4][i] })) }),
    hbarChart({ id: "chart-users", title: "Tool calls per user", unit: "calls", rows: o.users.slice(0, 15).map((u) => ({ name: u.user, value: u.calls })) }),
    barChart({ id: "chart-failures", title: `Rate-limit hits and auth failures per ${unitName}`, labels, full, unit: "calls", yLabel: "calls",
      series: [{ name: "429 rate limited", values: o.series.map((s) => s.rate_limited), color: 4 }, { name: "401/403 auth failures", values: o.series.map((s) => s.auth_failures), color: 3 }] }),
  );
  const tables = el(
    "section",
    { class: "tables" },
    table("tools-table", "Per tool", ["Tool", "Calls", "Errors", "Error rate", "Avg", "p95", "429", "401/403"],
      o.tools.map((tf) => [tf.tool, fmt.int(tf.calls), fmt.int(tf.errors), fmt.pct(tf.error_rate), fmt.ms(tf.avg_ms), fmt.ms(tf.p95_ms), fmt.int(tf.rate_limited), fmt.int(tf.auth_failures)])),
    table("users-table", "Per user" + (o.users_other ? ` (top ${o.users.length}; ${fmt.int(o.users_other)} calls by others)` : ""), ["User", "Calls", "Errors"],
      o.users.map((u) => [u.user, fmt.int(u.calls), fmt.int(u.errors)])),
    table("writes-table", "Writes per day (UTC)", ["Day", "Create", "Update", "Delete", "Write"],
      o.writes.map((d) => [d.day, fmt.int(d.create), fmt.int(d.update), fmt.int(d.delete), fmt.int(d.write)])),
    el("details", {}, el("summary", {}, `Per ${unitName}`),
      table("series-table", `Per ${unitName} (start, UTC)`, ["Start", "Calls", "Errors", "Error rate", "Avg", "p95", "429", "401/403"],
        o.series.map((s, i) => [full[i], fmt.int(s.calls), fmt.int(s.errors), fmt.pct(s.error_rate), fmt.ms(s.avg_ms), fmt.ms(s.p95_ms), fmt.int(s.rate_limited), fmt.int(s.auth_failures)]))),
  );
  main.replaceChildren(el("h1", {}, "Overview"), rangeForm(range, pick), source, stats, charts, tables);
}

// ---------------------------------------------------------------- live

const LIVE_ROWS = 500;
const PAUSED_MAX = 5000;

function livePage(main) {
  const fields = [
    ["user", "User", "input"], ["tool", "Tool", "input"],
    ["status", "Status", ["", "success", "error", "timeout"]],
    ["error_code", "Error code", "input"],
    ["operation", "Operation", ["", "create", "update", "delete", "write"]],
  ];
  const q = new URLSearchParams(location.search);
  const inputs = {};
  const filter = el("form", { class: "filters", "aria-label": "Filter" });
  for (const [name, label, kind] of fields) {
    let input;
    if (kind === "input") input = el("input", { name, id: "f-" + name, autocomplete: "off", placeholder: name === "error_code" ? "exact" : "part of the name" });
    else input = el("select", { name, id: "f-" + name }, kind.map((v) => el("option", { value: v }, v || "any")));
    input.value = q.get(name) || "";
    inputs[name] = input;
    filter.append(el("label", { for: "f-" + name }, label), input);
  }
  filter.append(el("button", { type: "submit" }, "Apply"));
  const pauseBtn = el("button", { type: "button", id: "pause", "aria-pressed": "false" }, "Pause");
  const state = el("span", { id: "live-state", class: "state" }, "connecting…");
  const body = el("tbody", { id: "live-rows" });
  const empty = note("No calls since this page opened: new calls appear here as they are exported.");
  empty.id = "live-empty";
  const head = ["Time (UTC)", "User", "Tool", "Status", "Error", "Duration", "Operation", "Resource", "Confirmed"];
  main.replaceChildren(
    el("h1", {}, "Live calls"),
    filter,
    el("div", { class: "live-bar" }, pauseBtn, state),
    el("div", { class: "table-wrap" }, el("table", { id: "live-table" }, el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))), body)),
    empty,
  );
  let source = null, paused = false, waiting = [], shown = 0, skipped = 0, lostBatches = 0;
  // Calls link to their detail when there is an audit trail to read it from.
  let audited = false;
  api("/api/console/status").then((s) => { audited = s.audit; }).catch(() => {});
  const render = () => {
    const s = paused ? `paused · ${fmt.int(waiting.length)} new calls waiting` : `live · ${fmt.int(shown)} calls shown`;
    state.textContent = s + (skipped || lostBatches ? ` · ${fmt.int(skipped)} calls and ${fmt.int(lostBatches)} batches skipped (too many to show)` : "");
  };
  const row = (c) => el("tr", { "data-span-id": c.span_id, class: c.status !== "success" ? "failed" : c.operation_type === "delete" ? "delete" : "" },
    el("td", {}, audited
      ? el("a", { href: "/call?" + new URLSearchParams({ timestamp: c.timestamp, trace_id: c.trace_id, span_id: c.span_id }) }, fmt.time(c.timestamp))
      : fmt.time(c.timestamp)),
    el("td", {}, c.user), el("td", {}, c.tool_name),
    el("td", {}, c.status), el("td", {}, c.error_code || ""), el("td", { class: "num" }, fmt.ms(c.duration_ms)),
    el("td", {}, c.operation_type || ""), el("td", {}, c.resource_id || ""),
    el("td", {}, c.user_confirmation === null || c.user_confirmation === undefined ? (c.operation_type ? "unknown" : "") : c.user_confirmation ? "yes" : "NO"));
  const show = (calls) => {
    // Newest first: the batch is in arrival order.
    const frag = document.createDocumentFragment();
    for (let i = calls.length - 1; i >= 0; i--) frag.append(row(calls[i]));
    body.prepend(frag);
    while (body.childElementCount > LIVE_ROWS) body.lastElementChild.remove();
    shown += calls.length;
    empty.hidden = body.childElementCount > 0;
  };
  const connect = () => {
    if (source) source.close();
    const params = new URLSearchParams();
    for (const [name, input] of Object.entries(inputs)) if (input.value) params.set(name, input.value);
    source = new EventSource("/api/console/live?" + params.toString());
    source.addEventListener("open", () => { state.dataset.live = "1"; render(); });
    source.addEventListener("calls", (ev) => {
      const m = JSON.parse(ev.data);
      skipped += m.skipped || 0;
      lostBatches += m.skipped_batches || 0;
      if (paused) {
        waiting.push(...m.calls);
        if (waiting.length > PAUSED_MAX) { skipped += waiting.length - PAUSED_MAX; waiting = waiting.slice(-PAUSED_MAX); }
      } else show(m.calls);
      render();
    });
    source.addEventListener("error", () => { state.dataset.live = "0"; state.textContent = "disconnected, retrying…"; });
  };
  filter.addEventListener("submit", (e) => {
    e.preventDefault();
    const params = new URLSearchParams();
    for (const [name, input] of Object.entries(inputs)) if (input.value) params.set(name, input.value);
    history.replaceState(null, "", "/live" + (params.toString() ? "?" + params : ""));
    body.replaceChildren();
    empty.hidden = false;
    shown = 0; waiting = [];
    connect();
  });
  pauseBtn.addEventListener("click", () => {
    paused = !paused;
    pauseBtn.textContent = paused ? "Resume" : "Pause";
    pauseBtn.setAttribute("aria-pressed", String(paused));
    if (!paused && waiting.length) { show(waiting); waiting = []; }
    render();
  });
  connect();
  return () => source && source.close();
}

// ---------------------------------------------------------------- alerts

function labelText(labels) {
  return Object.entries(labels || {})
    .filter(([k]) => k !== "alertname" && k !== "severity")
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");
}

async function alertsPage(main) {
  const draw = async () => {
    let a;
    try {
      a = await api("/api/console/alerts");
    } catch (e) {
      main.replaceChildren(el("h1", {}, "Alerts"), note(e.message, "error"));
      return;
    }
    const firing = a.firing.length
      ? table("firing-table", `Firing now (${a.firing.length})`, ["Alert", "Severity", "Labels", "Value", "Since (UTC)", "Summary"],
        a.firing.map((x) => [x.labels.alertname, x.labels.severity || "", labelText(x.labels), String(Math.round(x.value * 1000) / 1000), fmt.time(x.starts_at), x.summary]))
      : note("Nothing is firing.", "ok");
    const history = a.history.length
      ? table("history-table", `Fired recently (newest first, the last ${a.history_limit} kept)`, ["Alert", "Labels", "Value", "Fired (UTC)", "Resolved (UTC)", "Summary when it fired"],
        a.history.map((x) => [x.labels.alertname, labelText(x.labels), String(Math.round(x.value * 1000) / 1000), fmt.time(x.starts_at), x.resolved_at ? fmt.time(x.resolved_at) : "still firing", x.fired_summary]))
      : note("No alert has fired since this collector started.");
    main.replaceChildren(el("h1", {}, "Alerts"),
      note("The collector's built-in evaluator of the five seed rules (exact sliding windows, per replica); refreshed every 5 s."),
      el("h2", {}, "Firing now"), firing, el("h2", {}, "Recently fired"), history);
  };
  await draw();
  const timer = setInterval(draw, 5000);
  return () => clearInterval(timer);
}


// ---------------------------------------------------------------- write review

function utcDay(d) {
  return d.toISOString().slice(0, 10);
}

function confirmationText(w) {
  const answer = w.user_confirmation === true ? "yes" : w.user_confirmation === false ? "NO" : "unknown";
  const how = [w.confirmation_outcome, w.confirmation_source].filter(Boolean).join(", ");
  return how ? `${answer} (${how})` : answer;
}

async function reviewPage(main) {
  const q = new URLSearchParams(location.search);
  const day = q.get("day") || "";
  const go = (d) => {
    history.pushState(null, "", "/review" + (d ? "?day=" + d : ""));
    draw();
  };
  const shift = (n) => {
    const base = day ? new Date(day + "T00:00:00Z") : new Date();
    base.setUTCDate(base.getUTCDate() + n);
    go(utcDay(base));
  };
  const picker = el("input", { type: "date", id: "review-day", "aria-label": "Day (UTC)", value: day || utcDay(new Date()) });
  picker.addEventListener("change", () => picker.value && go(picker.value));
  const controls = el(
    "div",
    { class: "range" },
    el("button", { type: "button", onclick: () => shift(-1) }, "◀ Previous day"),
    picker,
    el("button", { type: "button", onclick: () => shift(1) }, "Next day ▶"),
    el("button", { type: "button", class: day ? "" : "on", "aria-pressed": String(!day), onclick: () => go("") }, "Last 24 hours"),
  );
  main.replaceChildren(el("h1", {}, "Write review"), controls, note("Loading…"));
  let r;
  try {
    r = await api("/api/console/review" + (day ? "?day=" + day : ""));
  } catch (e) {
    main.replaceChildren(el("h1", {}, "Write review"), controls, note(e.message, "warn"));
    return;
  }
  const t = r.totals;
  const query = day ? "?day=" + day : "";
  const summary = el(
    "p",
    { id: "review-summary", class: "summary" },
    `Writes from ${fmt.time(r.since)} to ${fmt.time(r.until)} (newest first): ${fmt.int(t.writes)} writes, ${fmt.int(t.deletes)} deletes, ${fmt.int(t.unconfirmed)} without user confirmation, ${fmt.int(t.failed)} failed, ${fmt.int(t.refused)} refused at confirmation.`,
  );
  const exports = el(
    "p",
    { class: "exports" },
    "Export the review: ",
    el("a", { href: "/api/console/review.csv" + query, download: "", id: "export-csv" }, "CSV"),
    " · ",
    el("a", { href: "/api/console/review.json" + query, download: "", id: "export-json" }, "JSON"),
    " (the same document as mcp-otel audit review --json).",
  );
  const cut = r.listed_at_most
    ? note(`Listing the newest ${fmt.int(r.writes.length)} of ${fmt.int(t.writes)} writes (at most ${fmt.int(r.listed_at_most)} per list); the counts above and per user cover all of them, and the CSV and JSON exports hold every write. Narrow by user or tool for the rest.`, "warn")
    : null;
  const head = ["", "Time (UTC)", "User", "Tool", "Operation", "Resource", "Status", "Confirmed", "Flags"];
  const body = el("tbody", {}, r.writes.map((w) => {
    const flags = (w.flags || []).join(", ");
    const cls = [w.operation_type === "delete" ? "delete" : "", w.status !== "success" ? "failed" : "", w.user_confirmation !== true ? "unconfirmed" : ""].filter(Boolean).join(" ");
    return el("tr", { class: cls, "data-id": w.id, "data-flags": flags },
      el("td", { class: "mark", title: w.operation_type === "delete" ? "delete" : undefined }, w.operation_type === "delete" ? "!" : ""),
      el("td", {}, el("a", { href: callHref(w) }, fmt.time(w.timestamp))), el("td", {}, w.user), el("td", {}, w.tool_name),
      el("td", {}, w.operation_type === "delete" ? "DELETE" : w.operation_type), el("td", {}, w.resource_id || ""),
      el("td", {}, w.status + (w.error_code && w.error_code !== w.status ? " " + w.error_code : "")),
      el("td", { class: w.user_confirmation === true ? "" : "flag" }, confirmationText(w)),
      el("td", { class: flags ? "flag" : "" }, flags));
  }));
  const writes = r.writes.length
    ? el("div", { class: "table-wrap" }, el("table", { id: "review-table" },
      el("caption", {}, "Writes"),
      el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))), body))
    : note("No writes in this window.", "ok");
  const users = table("review-users", "Per user", ["User", "Writes", "Creates", "Updates", "Deletes", "Unconfirmed", "Failed"],
    r.per_user.map((u) => [u.user, fmt.int(u.writes), fmt.int(u.creates), fmt.int(u.updates), fmt.int(u.deletes), fmt.int(u.unconfirmed), fmt.int(u.failed)]));
  main.replaceChildren(el("h1", {}, "Write review"), controls, summary, exports, ...(cut ? [cut] : []), writes, users);
}


// ---------------------------------------------------------------- call detail

/** `v` flattened to [path, JSON text] pairs (objects by key, arrays by index). */
function flatten(v, prefix, out) {
  if (v !== null && typeof v === "object" && Object.keys(v).length) {
    for (const [k, x] of Object.entries(v)) flatten(x, prefix ? (Array.isArray(v) ? `${prefix}[${k}]` : `${prefix}.${k}`) : k, out);
  } else if (prefix || v !== undefined) {
    out.set(prefix || "(value)", JSON.stringify(v));
  }
  return out;
}

/** The before/after states as rows of [path, before, after, change]. */
function stateDiff(before, after) {
  const b = before === null || before === undefined ? new Map() : flatten(before, "", new Map());
  const a = after === null || after === undefined ? new Map() : flatten(after, "", new Map());
  const keys = [...new Set([...b.keys(), ...a.keys()])].sort();
  return keys.map((k) => {
    const x = b.get(k), y = a.get(k);
    const change = x === undefined ? "added" : y === undefined ? "removed" : x === y ? "same" : "changed";
    return [k, x ?? "", y ?? "", change];
  });
}

// The call detail page of a stored row: by chain and id on PostgreSQL (ids are per chain), by
// id (and start time, which tells the chains apart) otherwise.
function callHref(c) {
  const q = c.chain_id ? { chain: c.chain_id, id: c.id } : { id: c.id, timestamp: c.timestamp };
  return "/call?" + new URLSearchParams(q).toString();
}

function waterfall(trace, current) {
  const isCurrent = (c) => c.id === current.id && (c.chain_id || "") === (current.chain_id || "");
  const t0 = Math.min(...trace.map((c) => Date.parse(c.timestamp)));
  const end = Math.max(...trace.map((c) => Date.parse(c.timestamp) + c.duration_ms));
  const span = Math.max(1, end - t0);
  const rowH = 24, labelW = Math.min(190, Math.round(W * 0.35));
  const h = trace.length * rowH + 26;
  const svg = sv("svg", { viewBox: `0 0 ${W} ${h}`, role: "img", "aria-label": "Calls of this trace in time order", class: "chart", id: "waterfall" });
  const iw = W - labelW - 70;
  trace.forEach((c, i) => {
    const y = 4 + i * rowH;
    const x = labelW + (iw * (Date.parse(c.timestamp) - t0)) / span;
    const w = Math.max(2, (iw * c.duration_ms) / span);
    const name = visible(c.tool_name);
    const link = sv("a", { href: callHref(c) });
    link.append(sv("text", { x: labelW - 6, y: y + 15, class: "tick" + (isCurrent(c) ? " current" : ""), "text-anchor": "end" }, name.length > 26 ? name.slice(0, 25) + "…" : name));
    const bar = sv("rect", { x, y: y + 4, width: w, height: rowH - 9, class: "bar " + (c.status === "success" ? "s0" : "s3") + (isCurrent(c) ? " current" : "") });
    link.append(titled(bar, `${name} by ${visible(c.user)}: ${c.status}${c.error_code ? " " + visible(c.error_code) : ""}, starts +${(Date.parse(c.timestamp) - t0).toFixed(0)} ms, ${fmt.ms(c.duration_ms)}`));
    svg.append(link);
    svg.append(sv("text", { x: x + w + 4, y: y + 15, class: "tick" }, fmt.ms(c.duration_ms)));
  });
  svg.append(sv("text", { x: labelW + iw / 2, y: h - 6, class: "unit", "text-anchor": "middle" }, `ms from the first call's start (${fmt.ms(span)} in all)`));
  return svg;
}

async function callPage(main) {
  W = Math.round(Math.min(640, Math.max(300, main.clientWidth - 40)));
  const q = new URLSearchParams(location.search);
  main.replaceChildren(el("h1", {}, "Call"), note("Loading…"));
  let d;
  try {
    d = await api("/api/console/call?" + q.toString());
  } catch (e) {
    main.replaceChildren(el("h1", {}, "Call"), note(e.message, "warn"));
    return;
  }
  const c = d.call;
  const shown = (v) => (v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v, null, 2) : String(v));
  const fields = el("dl", { class: "fields", id: "call-fields" }, Object.entries(c).flatMap(([k, v]) => [
    el("dt", {}, k),
    el("dd", {}, typeof v === "object" && v !== null ? pre(shown(v)) : shown(v)),
  ]));
  const diff = c.before_state === null && c.after_state === null
    ? note("No before or after state was recorded for this call.")
    : table("state-diff", "Before → after", ["Field", "Before", "After", "Change"], stateDiff(c.before_state, c.after_state));
  const answer = c.user_confirmation === true ? "yes" : c.user_confirmation === false ? "NO" : "unknown";
  const confirmation = el("dl", { class: "fields", id: "call-confirmation" },
    el("dt", {}, "user confirmation"), el("dd", {}, answer),
    el("dt", {}, "outcome"), el("dd", {}, c.confirmation_outcome || "—"),
    el("dt", {}, "source"), el("dd", {}, c.confirmation_source || "—"),
    el("dt", {}, "arguments digest"), el("dd", {}, c.confirmation_arguments_digest || "—"),
    el("dt", {}, "wait"), el("dd", {}, c.confirmation_wait_ms === null || c.confirmation_wait_ms === undefined ? "—" : fmt.ms(c.confirmation_wait_ms)));
  const trace = d.trace.length
    ? el("figure", { class: "card chart-card" }, el("figcaption", {}, `The trace's calls in time order (${d.trace.length}; within ${d.trace_reach_seconds / 3600} h of this call, at most ${d.trace_limit})`), waterfall(d.trace, c))
    : note("No other call of this trace is stored.");
  main.replaceChildren(
    el("h1", {}, `${c.tool_name} by ${c.user}`),
    el("p", { class: "summary", id: "call-summary" }, `${fmt.time(c.timestamp)} · ${c.status}${c.error_code ? " " + c.error_code : ""} · ${fmt.ms(c.duration_ms)}${c.operation_type ? " · " + c.operation_type + (c.resource_id ? " " + c.resource_id : "") : ""}`),
    el("h2", {}, "State"), diff,
    el("h2", {}, "Confirmation"), confirmation,
    el("h2", {}, "Trace"), trace,
    d.jaeger_url
      ? el("p", {}, el("a", { id: "jaeger-link", href: d.jaeger_url, target: "_blank", rel: "noopener noreferrer" }, "Open this trace in Jaeger"))
      : note("Set --jaeger-url (or jaeger_url, MCP_OTEL_JAEGER_URL) to link this trace to the Jaeger UI."),
    el("h2", {}, "Every recorded field"), fields,
  );
}

// ---------------------------------------------------------------- audit

async function auditPage(main) {
  const q = new URLSearchParams(location.search);
  const text = q.get("text") || "";
  const box = el("input", { type: "search", id: "search-text", name: "text", value: text, placeholder: "words in context or before/after state", "aria-label": "Search text" });
  const form = el("form", { class: "range", id: "search-form" }, box, el("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    history.pushState(null, "", "/audit" + (box.value.trim() ? "?text=" + encodeURIComponent(box.value.trim()) : ""));
    draw();
  });
  const verifyBox = el("section", { id: "verify", "aria-label": "Verify" }, note("Loading…"));
  const results = el("section", { id: "search-results", "aria-label": "Search results" });
  main.replaceChildren(el("h1", {}, "Audit"), el("h2", {}, "Integrity (audit verify)"), verifyBox, el("h2", {}, "Full-text search"), form, results);
  let timer = null;
  let gone = false;
  const showVerify = async (fresh) => {
    let s;
    try {
      s = await api("/api/console/audit" + (fresh ? "?fresh=true" : ""));
    } catch (e) {
      verifyBox.replaceChildren(note(e.message, "warn"));
      return;
    }
    if (gone) return;
    const v = s.last;
    const again = el("button", { type: "button", id: "verify-again", disabled: s.running ? "" : undefined, onclick: () => showVerify(true) }, s.running ? "Verifying…" : "Verify again");
    if (!v) {
      verifyBox.replaceChildren(note("Verifying the whole trail (every row's hash, every signature)…"), again);
    } else if (v.error) {
      verifyBox.replaceChildren(note(`Verify could not run (${fmt.time(v.checked_at)}): ${v.error}`, "error"), again);
    } else {
      // One report per chain on PostgreSQL (every replica's own chain), one on SQLite.
      const reports = v.chains ? v.chains : [v];
      const problems = (list, id) => list.length
        ? [table(id, "Problems", ["Kind", "Row", "Detail"], list.map((p) => [p.kind, p.row === null ? "" : String(p.row), p.detail]))]
        : [];
      const chainBox = (r) => el("section", { class: "chain", "data-chain": r.chain_id || "" },
        ...(r.chain_id ? [el("h3", {}, "Chain " + r.chain_id)] : []),
        el("section", { class: "stats" },
          stat("intact", "Result", r.intact ? "intact" : "NOT intact"),
          stat("rows", "Rows", fmt.int(r.rows)),
          stat("head", "Head", r.head.id ? "row " + fmt.int(r.head.id) : "empty"),
          stat("signed_through", "Signed through", r.signed_through === null ? "none" : "row " + fmt.int(r.signed_through)),
          stat("checkpoints", "Checkpoints verified", fmt.int(r.checkpoints_verified)),
          stat("unsigned", "Rows not yet signed", fmt.int(r.unsigned_rows)),
        ),
        el("dl", { class: "fields", id: r.chain_id ? undefined : "verify-fields" },
          el("dt", {}, "Head hash"), el("dd", { class: "mono", "data-field": "head_hash" }, r.head.hash),
          el("dt", {}, "Key fingerprint (SHA-256)"), el("dd", { class: "mono", "data-field": "key_fingerprint" }, r.key_fingerprint || "no key recorded"),
          el("dt", {}, "Checked"), el("dd", {}, `${fmt.time(v.checked_at)}, in ${fmt.int(v.took_ms)} ms`),
        ),
        ...(r.chain_id ? [note(r.summary, r.intact ? "" : "error")] : []),
        ...problems(r.problems, r.chain_id ? undefined : "verify-problems"),
      );
      verifyBox.replaceChildren(
        ...reports.map(chainBox),
        note(v.summary, v.intact ? "" : "error"),
        ...(v.chains ? problems(v.problems, "verify-problems") : []),
        again,
      );
      verifyBox.dataset.intact = String(v.intact);
    }
    if (s.running && !gone) timer = setTimeout(() => showVerify(false), 1000);
  };
  showVerify(false);
  if (text) {
    results.replaceChildren(note("Searching…"));
    try {
      const r = await api("/api/console/search?text=" + encodeURIComponent(text));
      const rows = r.results.map((c) => [
        el("a", { href: callHref(c) }, fmt.time(c.timestamp)), c.user, c.tool_name, c.operation_type || "", c.resource_id || "", c.status,
      ]);
      results.replaceChildren(
        note(r.results.length ? `${fmt.int(r.results.length)} call(s)${r.more ? ` (the newest ${r.limit}; narrow the words for more)` : ""} hold every word of “${r.text}”, newest first.` : `No call holds every word of “${r.text}”.`),
        ...(r.results.length ? [table("search-table", "Matching calls", ["Time (UTC)", "User", "Tool", "Operation", "Resource", "Status"], rows)] : []),
      );
    } catch (e) {
      results.replaceChildren(note(e.message, "warn"));
    }
  }
  return () => {
    gone = true;
    clearTimeout(timer);
  };
}

// ---------------------------------------------------------------- router

const PAGES = {
  "/": ["overview", overviewPage],
  "/live": ["live", livePage],
  "/alerts": ["alerts", alertsPage],
  "/review": ["review", reviewPage],
  "/call": ["call", callPage],
  "/audit": ["audit", auditPage],
};
let leave = null;

async function draw() {
  if (typeof leave === "function") leave();
  leave = null;
  const [name, fn] = PAGES[location.pathname] || PAGES["/"];
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.body.dataset.page = name;
  const main = document.getElementById("page");
  delete main.dataset.ready;
  leave = await fn(main);
  main.dataset.ready = "1";
}

window.addEventListener("popstate", draw);
document.addEventListener("DOMContentLoaded", async () => {
  api("/api/console/status").then((s) => {
    if (s.token_required) document.querySelector("form.logout").hidden = false;
  }).catch(() => {});
  await draw();
});
