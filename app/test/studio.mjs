// Drives the image studio in headless Debian Chromium through the test host
// (host.js, AppBridge) and the gateway behind Envoy. Usage:
//   node app/test/studio.mjs MCP_URL TOKEN OUT_DIR
// Prints one JSON report (last line) for the Rust test to check pixels
// against; fails on anything a person would see go wrong.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { chromium } from "playwright-core";

const [mcpUrl, token, outDir] = process.argv.slice(2);
const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const fail = (message) => {
  throw new Error(message);
};
const check = (ok, message) => ok || fail(message);

const hostJs = (
  await build({
    entryPoints: [here("host.js")],
    bundle: true,
    format: "iife",
    platform: "browser",
    write: false,
  })
).outputFiles[0].text;

// The host page's origin; also the "other origin" the app's CSP must block.
let probes = 0;
const server = createServer(async (req, res) => {
  if (req.url === "/host.js") return res.writeHead(200, { "content-type": "text/javascript" }).end(hostJs);
  if (req.url.startsWith("/probe")) probes += 1;
  res.writeHead(200, { "content-type": "text/html" }).end(await readFile(here("host.html")));
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const hostOrigin = `http://127.0.0.1:${server.address().port}`;

// Playwright gives the browser a fresh temporary profile of its own.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  timeout: 30_000,
});
const report = {};
try {
  const page = await browser.newPage({ viewport: { width: 960, height: 1100 } });
  page.setDefaultTimeout(30_000);
  const consoleErrors = [];
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push({ text: message.text(), url: message.location().url });
  });
  await page.goto(`${hostOrigin}/host.html`);
  const args = { prompt: "a lighthouse at dusk", size: "1024x1024" };
  report.host = await page.evaluate((options) => window.startHost(options), { mcpUrl, token, args, theme: "light" });

  const frame = page.frames().find((f) => f !== page.mainFrame());
  const app = page.frameLocator("#app");
  const gallery = app.getByRole("list", { name: "Images" }).getByRole("button");
  const status = app.getByRole("status");
  const loaded = () => frame.waitForFunction(() => document.getElementById("picture").complete && document.getElementById("picture").naturalWidth > 0);
  const urls = () => frame.evaluate(() => [...document.querySelectorAll("#gallery img")].map((img) => img.src));
  const waitForImages = (count) => frame.waitForFunction((n) => document.querySelectorAll("#gallery img").length === n, count, { timeout: 60_000 });

  await waitForImages(1);
  await loaded();
  check((await gallery.first().getAttribute("aria-label")) === "Image 1: a lighthouse at dusk", "the gallery names the image by its prompt");

  // The selected image's Content Credentials, as a person reads them: term → text.
  const credentials = app.getByRole("region", { name: "Content Credentials" });
  const credentialsShown = async () => {
    check(await credentials.isVisible(), "the Content Credentials are shown");
    const terms = await credentials.locator("dt").allTextContents();
    const texts = await credentials.locator("dd").allTextContents();
    return Object.fromEntries(terms.map((term, i) => [term, texts[i]]));
  };
  report.credentials = { generated: await credentialsShown() };

  // Geometry of the shown image: display pixels to image pixels.
  const overlay = app.locator("#overlay");
  const natural = await frame.evaluate(() => ({ width: picture.naturalWidth, height: picture.naturalHeight }));
  let box, scale;
  const measure = async () => {
    box = await overlay.boundingBox();
    scale = natural.width / box.width;
  };
  const toImage = (x, y) => ({ x: Math.round((x - box.x) * scale), y: Math.round((y - box.y) * scale) });
  await measure();

  // 1. A rectangle drawn with the mouse, then edit_image with mask_region.
  await page.mouse.move(box.x + box.width * 0.2, box.y + box.height * 0.25);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.45, box.y + box.height * 0.4, { steps: 5 });
  await page.mouse.move(box.x + box.width * 0.55, box.y + box.height * 0.6, { steps: 5 });
  await page.mouse.up();
  const region = Object.fromEntries(
    await Promise.all(["x", "y", "width", "height"].map(async (k) => [k, Number(await app.locator(`#region-${k}`).inputValue())])),
  );
  check(region.width > 100 && region.height > 100, `the drawn rectangle shows in the region fields: ${JSON.stringify(region)}`);
  await app.getByLabel("What to change").fill("paint the lantern room red");
  await app.getByRole("button", { name: "Edit image" }).click();
  await waitForImages(2);
  await loaded();
  let all = await urls();
  report.rect = { original: all[0], edited: all[1], region };
  check((await gallery.nth(1).getAttribute("aria-label")) === "Image 2: paint the lantern room red", "the edit joins the gallery with its prompt");
  report.credentials.edited = await credentialsShown();

  // 2. A brush stroke (after trying undo and clear), then edit_image with an uploaded mask.
  await gallery.first().click();
  await loaded();
  await app.getByRole("radio", { name: "Brush" }).check();
  await app.getByRole("slider", { name: "Brush size" }).fill("24");
  const stroke = async (points) => {
    await page.mouse.move(points[0][0], points[0][1]);
    await page.mouse.down();
    for (const [x, y] of points.slice(1)) await page.mouse.move(x, y, { steps: 4 });
    await page.mouse.up();
  };
  await measure();
  const at = (fx, fy) => [box.x + box.width * fx, box.y + box.height * fy];
  await stroke([at(0.1, 0.1), at(0.9, 0.9)]);
  await app.getByRole("button", { name: "Clear" }).click();
  check((await status.textContent()).startsWith("No region marked"), "clear removes every mark");
  const path = [at(0.6, 0.7), at(0.7, 0.75), at(0.8, 0.72)];
  await stroke(path);
  await stroke([at(0.1, 0.1), at(0.2, 0.2)]);
  await app.getByRole("button", { name: "Undo" }).click();
  check((await status.textContent()) === "1 mark drawn", `undo removes the last stroke: ${await status.textContent()}`);
  await app.getByLabel("What to change").fill("add a rowing boat");
  await app.getByRole("button", { name: "Edit image" }).click();
  await waitForImages(3);
  await loaded();
  all = await urls();
  report.brush = {
    original: all[0],
    edited: all[2],
    points: path.map(([x, y]) => toImage(x, y)),
    width: Math.round(24 * scale),
  };

  // 3. The main path by keyboard alone: pick image 1, type a region, a prompt, run.
  await page.mouse.click(2, 2); // focus back on the host page, outside the app
  const focused = () => frame.evaluate(() => document.activeElement?.id || document.activeElement?.getAttribute("aria-label") || "");
  const tabTo = async (target) => {
    for (let i = 0; i < 40; i += 1) {
      await page.keyboard.press("Tab");
      if ((await focused()) === target) return;
    }
    fail(`Tab never reaches ${target}`);
  };
  await tabTo("Image 1: a lighthouse at dusk");
  await page.keyboard.press("Enter");
  await loaded();
  const typed = { x: 100, y: 600, width: 200, height: 150 };
  for (const [k, v] of Object.entries(typed)) {
    await tabTo(`region-${k}`);
    await page.keyboard.press("Control+A");
    await page.keyboard.type(String(v));
  }
  await tabTo("region-apply");
  await page.keyboard.press("Enter");
  check((await status.textContent()) === "Region 200×150 at 100,600 marked", `typed region set: ${await status.textContent()}`);
  await tabTo("prompt");
  await page.keyboard.press("Control+A");
  await page.keyboard.type("a flock of gulls");
  await tabTo("run-edit");
  await page.keyboard.press("Enter");
  await waitForImages(4);
  all = await urls();
  report.keyboard = { original: all[0], edited: all[3], region: typed };

  // 4. Variations, open and download go through the host.
  await app.getByRole("button", { name: "Variations" }).click();
  await waitForImages(5);
  await app.getByRole("button", { name: "Open image" }).click();
  await app.getByRole("button", { name: "Download" }).click();
  await page.waitForFunction(() => window.host.opened.length === 1 && window.host.downloads.length === 1);
  report.opened = await page.evaluate(() => window.host.opened);
  report.downloads = await page.evaluate(() => window.host.downloads);
  report.selected = await frame.evaluate(() => picture.src);
  report.variation_label = await gallery.nth(4).getAttribute("aria-label");

  // 5. Theme and size follow the host.
  await page.evaluate(() => window.setTheme("dark"));
  await frame.waitForFunction(() => document.documentElement.getAttribute("data-theme") === "dark");
  report.dark_background = await frame.evaluate(() => getComputedStyle(document.body).backgroundColor);
  report.sizes = (await page.evaluate(() => window.host.sizes)).length;

  // 6. Every control has an accessible name.
  report.aria = await app.locator("main").ariaSnapshot();
  const unnamed = report.aria.split("\n").filter((line) => /- (button|textbox|combobox|slider|radio|spinbutton)(:|$| \[)/.test(line.trim()));
  check(unnamed.length === 0, `controls without a name: ${unnamed.join(", ")}`);

  // 7. The CSP: our images load; nothing reaches another origin.
  report.csp_probe = await frame.evaluate(async ({ other, image }) => {
    const violations = [];
    document.addEventListener("securitypolicyviolation", (e) => violations.push({ directive: e.effectiveDirective, blocked: e.blockedURI }));
    const fetchOther = await fetch(`${other}/probe-fetch`).then(() => "loaded", () => "blocked");
    const imgOther = await new Promise((resolve) => {
      const img = new Image();
      img.onload = () => resolve("loaded");
      img.onerror = () => resolve("blocked");
      img.src = `${other}/probe-img`;
    });
    const fetchOurs = await fetch(image).then((r) => r.status, (e) => `failed: ${e}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
    return { fetchOther, imgOther, fetchOurs, violations };
  }, { other: hostOrigin, image: all[0] });
  report.probes_received = probes;

  await page.evaluate(() => window.setTheme("light"));
  await gallery.nth(1).click();
  await loaded();
  await app.getByRole("radio", { name: "Rectangle" }).check();
  await measure();
  await page.mouse.move(box.x + box.width * 0.55, box.y + box.height * 0.55);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.85, box.y + box.height * 0.8, { steps: 4 });
  await page.mouse.up();
  await app.getByLabel("What to change").fill("a red rowing boat on the water");
  if (outDir) await page.screenshot({ path: join(outDir, "image-studio.png"), fullPage: true });
  report.console_errors = consoleErrors;
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify(report));
