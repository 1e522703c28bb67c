// Drives examples/web in headless Chromium (Debian's, through playwright-core, which downloads
// nothing): books a session into a project, unlinks it, books an invalid one, and prints what
// the page showed as one JSON object. tests/test_web_page.py starts the server, serves the
// page from another origin, runs this and asserts on its output.
//   CHROMIUM=/usr/bin/chromium PAGE_URL=... SCREENSHOT=... node test/web/drive.mjs
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const timeout = 20_000;
const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  headless: true,
  // No background traffic: this machine has no network but loopback.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const seen = { calls: [], pageErrors: [], console: [] };
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 640 } });
  page.setDefaultTimeout(timeout);
  page.on("pageerror", (error) => seen.pageErrors.push(String(error)));
  page.on("console", (message) => seen.console.push(`${message.type()}: ${message.text()}`));
  page.on("response", (response) => {
    const url = new URL(response.url());
    if (url.pathname.startsWith("/studio.v1.")) {
      seen.calls.push({ method: response.request().method(), path: url.pathname, status: response.status() });
    }
  });
  await page.goto(env("PAGE_URL"));
  const text = async (selector) => (await page.locator(selector).textContent())?.trim();
  const waitText = (selector, part) => page.waitForFunction(
    ([s, p]) => document.querySelector(s)?.textContent?.includes(p), [selector, part], { timeout });

  await page.click("#book");
  await page.waitForSelector("#booked");
  await waitText("#project-sessions", "1 session");
  seen.booked = await text("#booked");
  seen.projectSessionsAfterBooking = await text("#project-sessions");

  await page.click("#unlink");
  await page.waitForSelector("#unlinked");
  await waitText("#project-sessions", "0 session");
  seen.unlinked = await text("#unlinked");
  seen.projectSessionsAfterUnlinking = await text("#project-sessions");

  await page.click("#invalid");
  await page.waitForSelector("#invalid-violations li");
  const error = page.locator("#invalid-error");
  seen.error = {
    text: (await error.textContent())?.trim(),
    code: await error.getAttribute("data-code"),
    reason: await error.getAttribute("data-reason"),
  };
  seen.violations = await page.locator("#invalid-violations li").evaluateAll(
    (items) => items.map((li) => ({ field: li.dataset.field, reason: li.dataset.reason, text: li.textContent })));
  seen.failureShown = (await page.locator("#failure-error").count()) > 0;
  await page.screenshot({ path: env("SCREENSHOT"), fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
