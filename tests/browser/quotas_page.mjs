// Drives Debian's chromium (headless, through playwright-core) on the
// quota page for tests/quotas_page.rs, one step per line of stdin:
//
//   node quotas_page.mjs URL
//   stdin:  {"until": [{"quota": Q, "key": K, "kind": KIND, "field": F, "value": V}, ...],
//            "screenshot": PATH?}
//   stdout: {"ok": true|false, "page": {quota: {key: [{kind, period, used, ...}]}},
//            "refreshes": N, "requests": [url...], "errors": [...], "markup": [...]}
//
// Each step waits (15 s at most) until every condition holds on the page
// as it redraws itself, then answers with what the page shows. `requests`
// lists every URL the page asked for (it must never leave its origin);
// `markup` lists elements found inside key names (there must be none: a
// tenant's value is text).
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const url = process.argv[2];
const executablePath = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
// The profile directory is removed when stdin closes (the test's end).
const profile = mkdtempSync(join(tmpdir(), "tollgate-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"],
  viewport: { width: 1280, height: 900 },
});
const page = browser.pages()[0] || (await browser.newPage());
const requests = [];
const errors = [];
page.on("request", (r) => requests.push(r.url()));
page.on("pageerror", (e) => errors.push(String(e)));
page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
await page.goto(url);
await page.waitForFunction(() => Number(document.getElementById("status").dataset.refreshes) >= 1, null, { timeout: 15000 });

// What the page shows, read from the DOM the way a person sees it grouped.
function shown() {
  const out = {};
  for (const s of document.querySelectorAll("section[data-quota]")) {
    const keys = {};
    for (const row of s.querySelectorAll(".key")) {
      keys[row.dataset.key] = [...row.querySelectorAll(".counter")].map((c) => ({
        kind: c.dataset.kind, period: c.dataset.period,
        used: c.dataset.used, reserved: c.dataset.reserved, spent: c.dataset.spent,
        limit: c.dataset.limit, remaining: c.dataset.remaining,
        text: c.textContent,
        bars: [...c.querySelectorAll(".bar span")].map((b) => [b.className, b.style.width]),
      }));
    }
    out[s.dataset.quota] = keys;
  }
  return out;
}

function holds(conds) {
  return conds.every((c) => {
    const s = [...document.querySelectorAll("section[data-quota]")].find((e) => e.dataset.quota === c.quota);
    if (!s) return false;
    const row = [...s.querySelectorAll(".key")].find((e) => e.dataset.key === c.key);
    if (!row) return c.value === null;
    const counter = [...row.querySelectorAll(".counter")].find((e) => e.dataset.kind === c.kind);
    return counter && counter.dataset[c.field] === String(c.value);
  });
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const step = JSON.parse(line);
  let ok = true;
  try {
    await page.waitForFunction(holds, step.until || [], { timeout: 15000, polling: 100 });
  } catch {
    ok = false;
  }
  if (step.screenshot) await page.screenshot({ path: step.screenshot, fullPage: true });
  const markup = await page.evaluate(() => [...document.querySelectorAll(".key .name *")].map((e) => e.outerHTML));
  const refreshes = await page.evaluate(() => Number(document.getElementById("status").dataset.refreshes));
  console.log(JSON.stringify({ ok, page: await page.evaluate(shown), refreshes, requests, errors, markup }));
}
await browser.close();
rmSync(profile, { recursive: true, force: true });
