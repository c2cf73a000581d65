// Opens the test page in headless Chromium and prints what it reports as JSON.
//   node run.mjs PAGE_URL CERT_PEM SCREENSHOT_PNG
// The wss listener's certificate comes from a test CA the browser does not know: it is
// trusted by pinning its public key (--ignore-certificate-errors-spki-list).
import { X509Certificate, createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [pageUrl, certPath, screenshot] = process.argv.slice(2);
const spki = new X509Certificate(readFileSync(certPath)).publicKey.export({
  type: "spki",
  format: "der",
});
const pin = createHash("sha256").update(spki).digest("base64");
const userDataDir = mkdtempSync(join(tmpdir(), "nats-edge-chromium-"));

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    // Nothing leaves the machine: any request not to loopback goes to a proxy that is not
    // there (loopback bypasses proxies).
    "--proxy-server=http://127.0.0.1:9",
    `--ignore-certificate-errors-spki-list=${pin}`,
  ],
});
try {
  const page = await context.newPage();
  page.on("console", (m) => console.error(`page console: ${m.text()}`));
  page.on("pageerror", (e) => console.error(`page error: ${e}`));
  await page.goto(pageUrl);
  await page.waitForFunction(() => window.__result !== undefined, null, { timeout: 30000 });
  const result = await page.evaluate(() => window.__result);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify(result));
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
