// Drives the console of a running `mcp-otel collect` in headless Debian Chromium through
// playwright-core (tests/console.rs starts it; a missing peer fails that test).
//
// Env: CONSOLE_URL (http://127.0.0.1:PORT), CONSOLE_TOKEN, CONSOLE_MODULES (the node_modules
// holding playwright-core), CONSOLE_SHOTS (folder for the screenshots), CONSOLE_EXPECT (the
// overview API's answer for range=1h, JSON).
// Protocol on stdout: LIVE_READY / LIVE_PAUSED (the test then exports one call and writes its
// span id on stdin), then DONE; FAIL <reason> on the first failed check.
import { createRequire } from "node:module";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";

const require = createRequire(path.join(process.env.CONSOLE_MODULES, "noop.js"));
const { chromium } = require("playwright-core");

const URL_ = process.env.CONSOLE_URL;
const TOKEN = process.env.CONSOLE_TOKEN;
const SHOTS = process.env.CONSOLE_SHOTS;
const EXPECT = JSON.parse(process.env.CONSOLE_EXPECT);

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function nextLine() {
  const { value, done } = await lines.next();
  if (done) throw new Error("stdin closed");
  return value.trim();
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

const errors = [];
const dirs = [];

async function open(width, height) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mcp-otel-chromium-"));
  dirs.push(dir);
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    viewport: { width, height },
  });
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`${width}px ${page.url()}: console error: ${m.text()}`);
  });
  page.on("pageerror", (e) => errors.push(`${width}px ${page.url()}: ${e.message}`));
  return { ctx, page };
}

async function signIn(page) {
  await page.goto(URL_ + "/");
  await page.fill("#token", TOKEN);
  await Promise.all([page.waitForURL(URL_ + "/"), page.click("button[type=submit]")]);
  await page.waitForSelector("main[data-ready]");
}

async function fitsWidth(page, width, what) {
  const w = await page.evaluate(() => document.documentElement.scrollWidth);
  check(w <= width + 1, `${what} at ${width}px is ${w}px wide: it scrolls sideways`);
  const nav = await page.isVisible("nav a[href='/live']");
  check(nav, `${what} at ${width}px: the navigation is not visible`);
}

const fmtInt = (n) => Number(n).toLocaleString("en-US");
const fmtMs = (n) => (n === null ? "–" : Number(n).toFixed(1) + " ms");
const fmtPct = (r) => (r === null ? "–" : (r * 100).toFixed(1) + " %");

async function main() {
  // 1. Unauthenticated: the token prompt, and no way to the data.
  {
    const { ctx, page } = await open(1280, 800);
    await page.goto(URL_ + "/");
    check(await page.isVisible("form#login"), "no token prompt for a browser without a session");
    check(!(await page.isVisible("nav")), "the console's navigation shows before the token");
    const api = await page.evaluate(async () => (await fetch("/api/console/overview?range=1h")).status);
    check(api === 401, `the overview API answered ${api} without a session`);
    await page.fill("#token", "not-the-token");
    await page.click("button[type=submit]");
    await page.waitForSelector(".error");
    check(await page.isVisible("form#login"), "a wrong token left the prompt");
    check(!page.url().includes("not-the-token"), "the token went into the URL");
    const cookies = await ctx.cookies();
    check(cookies.length === 0, "a wrong token got a cookie");
    for (const p of ["/live", "/alerts"]) {
      await page.goto(URL_ + p);
      check(await page.isVisible("form#login"), `${p} shows without the token`);
    }
    await page.goto(URL_ + "/");
    await page.screenshot({ path: path.join(SHOTS, "login.png") });
    await ctx.close();
    // The failed login answers 401, which Chromium reports as a console error: expected here.
    errors.length = 0;
  }

  // 2. Desktop.
  const { ctx, page } = await open(1280, 900);
  await signIn(page);
  check(!page.url().includes(TOKEN), "the token went into the URL");
  const cookie = (await ctx.cookies()).find((c) => c.name === "mcp_otel_console");
  check(cookie && cookie.httpOnly && cookie.sameSite === "Strict", "the session cookie is not HttpOnly + SameSite=Strict");
  await page.click("button:has-text('Last hour')");
  await page.waitForURL(/range=1h/);
  await page.waitForSelector("main[data-ready] [data-metric=calls]");
  const t = EXPECT.totals;
  const tile = async (m) => (await page.textContent(`[data-metric=${m}] .value`)).trim();
  const want = {
    calls: fmtInt(t.calls), errors: fmtInt(t.errors), error_rate: fmtPct(t.error_rate),
    avg_ms: fmtMs(t.avg_ms), p95_ms: fmtMs(t.p95_ms), writes: fmtInt(EXPECT.writes_total),
    rate_limited: fmtInt(t.rate_limited), auth_failures: fmtInt(t.auth_failures),
  };
  for (const [m, v] of Object.entries(want)) {
    const got = await tile(m);
    check(got === v, `overview tile ${m} shows ${got}, the API says ${v}`);
  }
  const toolRows = await page.$$eval("#tools-table tbody tr", (rows) => rows.map((r) => [...r.children].map((c) => c.textContent)));
  check(toolRows.length === EXPECT.tools.length, `the tools table has ${toolRows.length} rows, the API ${EXPECT.tools.length}`);
  EXPECT.tools.forEach((tf, i) => {
    check(toolRows[i][0] === tf.tool && toolRows[i][1] === fmtInt(tf.calls) && toolRows[i][5] === fmtMs(tf.p95_ms),
      `tools table row ${i} is ${toolRows[i]}, the API says ${tf.tool} ${tf.calls} ${tf.p95_ms}`);
  });
  const userRows = await page.$$eval("#users-table tbody tr", (rows) => rows.map((r) => [...r.children].map((c) => c.textContent)));
  EXPECT.users.forEach((u, i) => check(userRows[i][0] === u.user && userRows[i][1] === fmtInt(u.calls), `users table row ${i}: ${userRows[i]}`));
  // Every chart is drawn, with hover titles that carry the numbers.
  for (const id of ["chart-calls", "chart-errors", "chart-latency", "chart-writes", "chart-users", "chart-failures"]) {
    check(await page.isVisible(`#${id} svg`), `chart ${id} is not drawn`);
  }
  const barTitles = await page.$$eval("#chart-calls rect title", (ts) => ts.map((t) => t.textContent));
  const sumBars = barTitles.reduce((a, s) => a + Number((s.match(/ ([\d,]+) calls$/) || [0, "NaN"])[1].replace(/,/g, "")), 0);
  check(sumBars === t.calls, `the call bars add up to ${sumBars}, the API says ${t.calls}`);
  await page.screenshot({ path: path.join(SHOTS, "overview.png"), fullPage: true });

  // 3. Live: a call exported now appears; pausing keeps the place.
  await page.click("nav a[href='/live']");
  await page.waitForSelector("#live-state[data-live='1']");
  console.log("LIVE_READY");
  const span = await nextLine();
  const t0 = Date.now();
  await page.waitForSelector(`tr[data-span-id='${span}']`, { timeout: 5000 });
  const row = await page.$$eval(`tr[data-span-id='${span}'] td`, (tds) => tds.map((td) => td.textContent));
  check(row[1] === "dave" && row[2] === "get_task" && row[5] === "2.5 ms", `the live row reads ${row}`);
  const users = await page.$$eval("#live-rows tr td:nth-child(2)", (tds) => tds.map((td) => td.textContent));
  check(users.includes("mallory\\u{1b}[2K\\u{202e}"), `control characters are not shown as \\u{…}: ${JSON.stringify(users)}`);
  process.stderr.write(`console_browser: live row after ${Date.now() - t0} ms from the export's start\n`);
  await page.click("#pause");
  console.log("LIVE_PAUSED");
  const span2 = await nextLine();
  await page.waitForFunction(() => /1 new calls waiting/.test(document.getElementById("live-state").textContent), null, { timeout: 5000 });
  check(!(await page.$(`tr[data-span-id='${span2}']`)), "a call showed while paused");
  await page.click("#pause");
  await page.waitForSelector(`tr[data-span-id='${span2}']`, { timeout: 2000 });
  const first = await page.$eval("#live-rows tr", (r) => r.dataset.spanId);
  check(first === span2, "after resuming, the waiting call is not at the top");
  await page.screenshot({ path: path.join(SHOTS, "live.png") });
  // The filter: only carol's calls (none are new, so the table empties).
  await page.fill("#f-user", "carol");
  await page.click(".filters button[type=submit]");
  await page.waitForURL(/user=carol/);
  check((await page.$$("#live-rows tr")).length === 0, "the filter kept other users' rows");
  check(await page.isVisible("#live-empty"), "an empty live view does not say it waits for calls");

  // 4. Alerts: the 429 of the script fired McpRateLimited.
  await page.click("nav a[href='/alerts']");
  await page.waitForSelector("#firing-table");
  const firing = await page.$$eval("#firing-table tbody tr th", (ths) => ths.map((th) => th.textContent));
  check(firing.includes("McpRateLimited"), `firing now shows ${firing}`);
  const fired = await page.$$eval("#history-table tbody tr th", (ths) => ths.map((th) => th.textContent));
  check(fired.includes("McpRateLimited"), `recently fired shows ${fired}`);
  await fitsWidth(page, 1280, "alerts");
  await page.screenshot({ path: path.join(SHOTS, "alerts.png"), fullPage: true });

  // 5. The write review: today's writes, deletes marked, unconfirmed flagged, exports.
  await page.click("nav a[href='/review']");
  await page.waitForSelector("main[data-ready] #review-table");
  const summary = await page.textContent("#review-summary");
  check(summary.includes(`${EXPECT.writes_total} writes`) && summary.includes("2 deletes"), `the review says: ${summary}`);
  const reviewRows = await page.$$eval("#review-table tbody tr", (rows) => rows.map((r) => ({
    mark: r.children[0].textContent, op: r.children[4].textContent, flags: r.dataset.flags, cls: r.className })));
  check(reviewRows.length === EXPECT.writes_total, `the review lists ${reviewRows.length} writes`);
  const deletes = reviewRows.filter((r) => r.op === "DELETE");
  check(deletes.length === 2 && deletes.every((r) => r.mark === "!" && r.cls.includes("delete")), "deletes are not marked");
  check(reviewRows.some((r) => r.flags.includes("not confirmed") && r.cls.includes("unconfirmed")), "the unconfirmed delete is not flagged");
  const csvHref = await page.getAttribute("#export-csv", "href");
  const csv = await page.evaluate(async (h) => { const r = await fetch(h); return [r.status, await r.text()]; }, csvHref);
  check(csv[0] === 200 && csv[1].trim().split("\n").length === EXPECT.writes_total + 1, `the CSV export: ${csv[0]} ${csv[1].slice(0, 200)}`);
  await page.click("button:has-text('Previous day')");
  await page.waitForURL(/day=/);
  await page.waitForSelector("main[data-ready]");
  check((await page.textContent("main")).includes("No writes in this window."), "yesterday shows writes that are today's");
  await page.click("button:has-text('Next day')");
  await page.waitForSelector("main[data-ready] #review-table");
  await page.screenshot({ path: path.join(SHOTS, "review.png"), fullPage: true });

  // 6. Call detail, from the review: the state diff, the confirmation, the trace.
  const link = await page.$("#review-table tbody tr:has(td:text-is('task-12')) a");
  check(link, "the review's task-12 row links to nothing");
  await link.click();
  await page.waitForURL(/\/call\?id=/);
  await page.waitForSelector("main[data-ready] #state-diff");
  const diff = await page.$$eval("#state-diff tbody tr", (rows) => rows.map((r) => [...r.children].map((c) => c.textContent)));
  const title = diff.find((r) => r[0] === "title");
  check(title && title[1] === '"old 12"' && title[2] === '"new 12"' && title[3] === "changed", `the diff reads ${JSON.stringify(diff)}`);
  check(diff.some((r) => r[0] === "done" && r[3] === "same"), "the diff drops unchanged fields");
  const bars = await page.$$("#waterfall rect");
  check(bars.length === 3, `the waterfall shows ${bars.length} calls, the trace has 3`);
  check((await page.textContent("#call-fields")).includes("prev_hash"), "the call's chain links are not shown");
  const jaeger = await page.getAttribute("#jaeger-link", "href");
  const traceId = await page.$eval("#call-fields", (dl) => [...dl.children].find((c, i, a) => a[i - 1] && a[i - 1].textContent === "trace_id").textContent);
  check(jaeger === "http://jaeger.invalid:16686/trace/" + traceId, `the Jaeger link is ${jaeger}`);
  await page.screenshot({ path: path.join(SHOTS, "call.png"), fullPage: true });

  // 6b. Audit: verify's result for every stored call, and a search that leads to its call.
  await page.click("nav a[href='/audit']");
  await page.waitForSelector("#verify[data-intact='true']", { timeout: 20000 });
  const rowsShown = (await page.textContent("#verify [data-metric=rows] .value")).trim();
  check(rowsShown === fmtInt(t.calls + 3), `verify shows ${rowsShown} rows, the store holds ${t.calls} + 3`);
  const fp = (await page.textContent("[data-field=key_fingerprint]")).trim();
  check(/^([0-9a-f]{2}:){15}[0-9a-f]{2}$/.test(fp), `the key fingerprint reads ${fp}`);
  const headHash = (await page.textContent("[data-field=head_hash]")).trim();
  check(/^[0-9a-f]{64}$/.test(headHash), `the head hash reads ${headHash}`);
  await page.fill("#search-text", "new 12");
  await page.click("#search-form button[type=submit]");
  await page.waitForURL(/text=new/);
  await page.waitForSelector("main[data-ready] #search-table");
  const hits = await page.$$("#search-table tbody tr");
  check(hits.length === 1, `the search for "new 12" lists ${hits.length} calls, one holds it`);
  await page.screenshot({ path: path.join(SHOTS, "audit.png"), fullPage: true });
  await page.click("#search-table tbody tr a");
  await page.waitForURL(/\/call\?id=/);
  await page.waitForSelector("main[data-ready] #state-diff");
  check((await page.textContent("#state-diff")).includes('"new 12"'), "the search result leads to another call");
  await ctx.close();

  // 7. Phone width: every page usable at 390 px.
  {
    const { ctx, page } = await open(390, 844);
    await signIn(page);
    await page.goto(URL_ + "/?range=1h");
    await page.waitForSelector("main[data-ready] [data-metric=calls]");
    const calls = (await page.textContent("[data-metric=calls] .value")).trim();
    // The script's calls and the three exported during the live check.
    check(calls === fmtInt(t.calls + 3), `the phone overview shows ${calls} calls, expected ${t.calls} + 3`);
    await fitsWidth(page, 390, "overview");
    await page.screenshot({ path: path.join(SHOTS, "overview-phone.png"), fullPage: true });
    await page.goto(URL_ + "/live");
    await page.waitForSelector("#live-state[data-live='1']");
    await fitsWidth(page, 390, "live");
    await page.screenshot({ path: path.join(SHOTS, "live-phone.png") });
    await page.goto(URL_ + "/alerts");
    await page.waitForSelector("main[data-ready]");
    await fitsWidth(page, 390, "alerts");
    await page.goto(URL_ + "/review");
    await page.waitForSelector("main[data-ready] #review-table");
    await fitsWidth(page, 390, "review");
    await page.goto(URL_ + "/audit?text=old");
    await page.waitForSelector("main[data-ready] #search-table");
    await page.waitForSelector("#verify[data-intact]");
    await fitsWidth(page, 390, "audit");
    await page.screenshot({ path: path.join(SHOTS, "audit-phone.png"), fullPage: true });
    await ctx.close();
  }
  check(errors.length === 0, "errors in the browser:\n" + errors.join("\n"));
}

try {
  await main();
  console.log("DONE");
  process.exitCode = 0;
} catch (e) {
  console.log("FAIL " + String(e && e.stack ? e.stack : e).replace(/\n/g, " | "));
  process.exitCode = 1;
} finally {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  process.exit(process.exitCode);
}
