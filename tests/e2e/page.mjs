// End-to-end test of the browser page: `ember web` serves web/dist, Debian's Chromium (driven by
// playwright-core, no browser download) loads the demo model, shows messages for bad files,
// generates, fine-tunes 5 steps while the loss chart updates, downloads the adapter, and
// `ember generate --adapter` loads that download and gives the page's greedy answer; the same with
// the "4-bit base" option and `ember generate --load-in-4bit` (QLoRA); a link with URL parameters
// runs the page and gives ember's texts. Then a reload
// keeps the examples and the adapter, and "Use CPU" gives the same answer on the CPU fallback.
// Runs on WebGPU when Chromium offers an adapter (and says so), on the CPU otherwise. Screenshots of each step go to $EMBER_E2E_SCREENSHOTS (default tests/e2e/screenshots);
// `node page.mjs --update-docs` also copies them to docs/screenshots.
//
// Environment: EMBER_BIN (the ember binary), EMBER_WEB_DIST (the built page, default web/dist).
import { execFileSync } from "node:child_process";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { root, ember, dist, MINUTE, log, serve, text, started, launch } from "./common.mjs";

const shots = process.env.EMBER_E2E_SCREENSHOTS ?? path.join(import.meta.dirname, "screenshots");
const work = fs.mkdtempSync(path.join(os.tmpdir(), "ember-e2e-"));
fs.rmSync(shots, { recursive: true, force: true });

async function shot(page, name) {
  fs.mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

async function loadDemo(page) {
  await page.click("#load-demo");
  await page.waitForFunction(() => document.querySelector("#model-status")?.textContent.startsWith("Model loaded"), null, { timeout: 2 * MINUTE });
}

/** Greedy generation in the page; returns the adapter's text. */
async function generateGreedy(page, maxNewTokens) {
  await page.click("#tab-generate");
  await page.uncheck("#sample");
  await page.fill("#max-new-tokens", String(maxNewTokens));
  await page.click("#generate");
  await page.waitForFunction(() => document.querySelector("#stats-adapter")?.textContent !== "", null, { timeout: 5 * MINUTE });
  return text(page, "#output-adapter");
}

async function download(page, selector, dir) {
  const [file] = await Promise.all([page.waitForEvent("download"), page.click(selector)]);
  const saved = path.join(dir, file.suggestedFilename());
  await file.saveAs(saved);
  return saved;
}

async function expectError(page, pattern, what) {
  const shown = (source) => new RegExp(source).test(document.querySelector("#error")?.textContent ?? "");
  await page.waitForFunction(shown, pattern.source, { timeout: 2 * MINUTE }).catch(async (e) => {
    const error = await page.locator("#error").textContent({ timeout: 1000 }).catch(() => "(no message)");
    throw new Error(`${what}: expected a message matching ${pattern}, the page shows: ${error}; adapter status: ${await text(page, "#adapter-status")}`, { cause: e });
  });
  log(`${what}: "${await text(page, "#error span")}"`);
  await page.click("#error .close");
}

const { server, url } = await serve();
let cli; // what `ember generate --adapter` answers with the page's adapter
const browser = await launch();
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));
  const panics = [];
  page.on("console", (m) => {
    if (m.text().includes("panicked")) panics.push(m.text().split("\n")[0]);
    if (m.type() === "error" || process.env.EMBER_E2E_VERBOSE) log(`console: ${m.text()}`);
  });

  // 1. Load the demo model.
  await page.goto(url);
  const backend = await started(page);
  await loadDemo(page);
  log(await text(page, "#model-status"));
  await shot(page, "1-load");

  // 2. Bad files give a message, and the page keeps working.
  const demo = (name) => ({ name, mimeType: "application/octet-stream", buffer: fs.readFileSync(path.join(root, "demo", "model", name)) });
  const fixture = (dir, name) => ({ name, mimeType: "application/octet-stream", buffer: fs.readFileSync(path.join(root, "tests", "fixtures", dir, name)) });
  await page.setInputFiles("#model-files", [{ name: "config.json", mimeType: "application/json", buffer: Buffer.from("{not json") }, demo("tokenizer.json"), demo("model.safetensors")]);
  await expectError(page, /config\.json: not valid JSON/, "wrong JSON");
  await page.setInputFiles("#model-files", [demo("config.json"), demo("tokenizer.json")]);
  await expectError(page, /model\.safetensors: missing/, "incomplete files");
  await page.setInputFiles("#model-files", [demo("config.json"), demo("tokenizer.json"), fixture("models/a", "model.safetensors")]);
  await expectError(page, /model\.safetensors/, "another model's weights");
  const huge = { model_type: "bloom", hidden_size: 16384, n_layer: 70, n_head: 128, vocab_size: 250880 };
  await page.setInputFiles("#model-files", [{ name: "config.json", mimeType: "application/json", buffer: Buffer.from(JSON.stringify(huge)) }, demo("tokenizer.json"), demo("model.safetensors")]);
  await expectError(page, /a page has 4.00 GiB at most|storage-buffer limit/, "a model too large for the browser");
  await loadDemo(page);
  await page.setInputFiles("#adapter-files", [fixture("adapters/bias-all", "adapter_config.json"), fixture("adapters/bias-all", "adapter_model.safetensors")]);
  await expectError(page, /does not fit|different base/, "an adapter for another base");
  await shot(page, "2-errors");
  await loadDemo(page);
  // 3. Generate (sampled, the page's default) with the base model.
  await page.click("#generate");
  await page.waitForFunction(() => document.querySelector("#stats-base")?.textContent !== "", null, { timeout: 5 * MINUTE });
  const stats = await text(page, "#stats-base");
  assert.ok((await text(page, "#output-base")).length > 0, "the base model generated no text");
  log(`generate: ${stats} (${backend})`);
  await shot(page, "3-generate");
  // Stop ends a long greedy generation early.
  await page.uncheck("#sample");
  await page.fill("#max-new-tokens", "500");
  await page.click("#generate");
  await page.waitForFunction(() => document.querySelector("#output-base")?.textContent.length > 0, null, { timeout: 5 * MINUTE });
  await page.click("#stop-generate");
  await page.waitForFunction(() => document.querySelector("#stats-base")?.textContent !== "", null, { timeout: 5 * MINUTE });
  const stopped = Number((await text(page, "#stats-base")).split(" ")[0]);
  log(`stopped after ${stopped} of 500 tokens`);
  assert.ok(stopped < 500, "Stop did not end the generation");
  await page.check("#sample");
  await page.fill("#max-new-tokens", "64");

  // 4. Fine-tune 5 steps on the demo examples; the chart must update while training runs.
  await page.click("#tab-finetune");
  await page.click("#demo-examples");
  assert.match(await text(page, "#examples-status"), /^\d+ examples$/);
  await page.fill("#steps", "5");
  await page.evaluate(() => {
    window.chartSizes = [];
    const chart = document.querySelector("#loss-chart");
    new MutationObserver(() => window.chartSizes.push(Number(chart.dataset.points))).observe(chart, { attributes: true, attributeFilter: ["data-points"] });
  });
  await page.click("#train");
  await page.waitForFunction(() => /^(done|stopped) after/.test(document.querySelector("#train-status")?.textContent ?? ""), null, { timeout: 10 * MINUTE });
  const sizes = await page.evaluate(() => window.chartSizes);
  log(`training: ${await text(page, "#train-status")}; chart sizes seen: ${sizes.join(", ")}`);
  assert.equal(await page.getAttribute("#loss-chart", "data-points"), "5");
  assert.ok(sizes.filter((n) => n > 0 && n < 5).length >= 2, `the chart did not update during training (sizes seen: ${sizes})`);
  const points = (await page.getAttribute("#loss-chart polyline", "points")).trim().split(/\s+/);
  assert.equal(points.length, 5);
  await page.waitForFunction(() => document.querySelector("#adapter-status")?.textContent.startsWith("Adapter in use"), null, { timeout: MINUTE });
  await shot(page, "4-finetune");

  // 5. Download the adapter (one zip, and the two files), and load the files with ember.
  const adapterDir = path.join(work, "adapter");
  fs.mkdirSync(adapterDir);
  const weights = await download(page, "#download-weights", adapterDir);
  const config = await download(page, "#download-config", adapterDir);
  const zip = await download(page, "#download-zip", work);
  assert.equal(path.basename(weights), "adapter_model.safetensors");
  assert.equal(JSON.parse(fs.readFileSync(config, "utf8")).peft_type, "LORA");
  assert.equal(fs.readFileSync(zip).subarray(0, 2).toString(), "PK");
  assert.ok(fs.statSync(zip).size > fs.statSync(weights).size);
  const pageText = await generateGreedy(page, 12);
  cli = JSON.parse(execFileSync(ember, [
    "generate", "--model", path.join(root, "demo", "model"), "--adapter", adapterDir, "--device", "cpu",
    "--prompt", await page.inputValue("#prompt"), "--greedy", "--max-new-tokens", "12", "--json",
  ], { encoding: "utf8" }));
  log(`greedy with the adapter — page: ${JSON.stringify(pageText)}, ember generate --adapter: ${JSON.stringify(cli.text)}`);
  assert.equal(pageText, cli.text, "ember, loading the downloaded adapter, generates other text than the page");
  await shot(page, "5-download");

  // 6. A reload keeps the examples and the adapter.
  await page.reload();
  await started(page);
  await page.click("#tab-finetune");
  assert.match(await text(page, "#examples-status"), /^\d+ examples$/, "the examples were not restored");
  assert.match(await text(page, "#adapter-status"), /kept from the last session/);
  await loadDemo(page);
  await page.waitForFunction(() => document.querySelector("#adapter-status")?.textContent.startsWith("Adapter in use"), null, { timeout: MINUTE });
  await shot(page, "6-reload");

  // 7. "Use CPU" runs the same work on the CPU (WebAssembly), with the same greedy answer.
  await page.check("#force-cpu");
  await page.waitForFunction(() => document.querySelector("#backend")?.textContent.startsWith("CPU"), null, { timeout: 2 * MINUTE });
  await loadDemo(page);
  await page.waitForFunction(() => document.querySelector("#adapter-status")?.textContent.startsWith("Adapter in use"), null, { timeout: MINUTE });
  const cpuText = await generateGreedy(page, 12);
  log(`CPU (WebAssembly): ${await text(page, "#stats-base")}; greedy with the adapter: ${JSON.stringify(cpuText)}`);
  assert.equal(cpuText, cli.text, "the CPU fallback generates other text than ember");
  await page.click("#tab-finetune");
  await page.click("#demo-examples");
  await page.fill("#steps", "5");
  await page.click("#train");
  await page.waitForFunction(() => /^(done|stopped) after/.test(document.querySelector("#train-status")?.textContent ?? ""), null, { timeout: 10 * MINUTE });
  log(`CPU (WebAssembly) training: ${await text(page, "#train-status")}`);
  assert.equal(await page.getAttribute("#loss-chart", "data-points"), "5");

  // 8. QLoRA, back on the first backend: the demo model loaded 4-bit, fine-tuned 2 steps (each
  // about 20 s on SwiftShader; the first already moves lora_B off zero);
  // `ember generate --load-in-4bit` with the downloaded adapter gives the page's greedy answer.
  await page.uncheck("#force-cpu");
  await page.waitForFunction((b) => document.querySelector("#backend")?.textContent === b, backend, { timeout: 2 * MINUTE });
  await page.check("#four-bit");
  await loadDemo(page);
  const status4 = await text(page, "#model-status");
  log(`4-bit: ${status4}`);
  assert.match(status4, /4-bit nf4, double quant/);
  await page.click("#tab-finetune");
  await page.fill("#steps", "2");
  await page.click("#train");
  await page.waitForFunction(() => /^(done|stopped) after/.test(document.querySelector("#train-status")?.textContent ?? ""), null, { timeout: 10 * MINUTE });
  assert.equal(await page.getAttribute("#loss-chart", "data-points"), "2");
  await page.waitForFunction(() => document.querySelector("#adapter-status")?.textContent.startsWith("Adapter in use"), null, { timeout: MINUTE });
  const adapter4 = path.join(work, "adapter-4bit");
  fs.mkdirSync(adapter4);
  await download(page, "#download-weights", adapter4);
  await download(page, "#download-config", adapter4);
  const pageText4 = await generateGreedy(page, 12);
  const cli4 = JSON.parse(execFileSync(ember, [
    "generate", "--model", path.join(root, "demo", "model"), "--adapter", adapter4, "--device", "cpu",
    "--load-in-4bit", "--bnb-4bit-quant-type", "nf4", "--bnb-4bit-use-double-quant",
    "--prompt", await page.inputValue("#prompt"), "--greedy", "--max-new-tokens", "12", "--json",
  ], { encoding: "utf8" }));
  log(`4-bit greedy with the adapter — page: ${JSON.stringify(pageText4)}, ember generate --load-in-4bit --adapter: ${JSON.stringify(cli4.text)}`);
  assert.equal(pageText4, cli4.text, "ember --load-in-4bit, loading the downloaded adapter, generates other text than the page");
  await shot(page, "8-qlora");

  // 9. A link runs the page: ?model=...&adapter=...&prompt=...&greedy=1&run=1 loads both from
  // their URLs and generates; the texts equal `ember generate` with and without the adapter.
  const served = path.join(dist, "e2e-link-adapter");
  fs.mkdirSync(served, { recursive: true });
  for (const name of ["adapter_config.json", "adapter_model.safetensors"]) fs.copyFileSync(path.join(adapterDir, name), path.join(served, name));
  try {
    const prompt = "Human: what does Ember do?";
    const params = new URLSearchParams({ model: `${url}demo/model/`, adapter: `${url}e2e-link-adapter/`, prompt, template: "none", greedy: "1", max_new_tokens: "10", run: "1" });
    const linked = await context.newPage();
    linked.on("pageerror", (e) => pageErrors.push(e.message));
    await linked.goto(`${url}?${params}`);
    await linked.waitForFunction(() => /^(done|failed)/.test(document.querySelector("#status")?.textContent ?? ""), null, { timeout: 5 * MINUTE });
    assert.equal(await text(linked, "#status"), "done");
    const native = (extra) => JSON.parse(execFileSync(ember, [
      "generate", "--model", path.join(root, "demo", "model"), "--device", "cpu", "--template", "none",
      "--prompt", prompt, "--greedy", "--max-new-tokens", "10", "--json", ...extra,
    ], { encoding: "utf8" })).text;
    const [linkBase, linkAdapter] = [await text(linked, "#output-base"), await text(linked, "#output-adapter")];
    log(`link — base: ${JSON.stringify(linkBase)}, adapter: ${JSON.stringify(linkAdapter)}`);
    assert.equal(linkBase, native([]), "the link's base text differs from ember generate");
    assert.equal(linkAdapter, native(["--adapter", adapterDir]), "the link's adapter text differs from ember generate --adapter");
    await shot(linked, "9-link");
    await linked.close();

    // 10. Sharded checkpoints (safetensors and .bin, an index and its shards) load from a URL
    // and generate what ember generates from the same folder.
    for (const name of ["a-sharded", "a-sharded-bin"]) {
      const folder = path.join(dist, `e2e-${name}`);
      fs.cpSync(path.join(root, "tests", "fixtures", "models", name), folder, { recursive: true });
      const shardedPage = await context.newPage();
      shardedPage.on("pageerror", (e) => pageErrors.push(e.message));
      const query = new URLSearchParams({ model: `${url}e2e-${name}/`, prompt, template: "none", greedy: "1", max_new_tokens: "6", run: "1" });
      await shardedPage.goto(`${url}?${query}`);
      await shardedPage.waitForFunction(() => /^(done|failed)/.test(document.querySelector("#status")?.textContent ?? ""), null, { timeout: 5 * MINUTE });
      assert.equal(await text(shardedPage, "#status"), "done", `${name}: ${await text(shardedPage, "#status")}`);
      const want = JSON.parse(execFileSync(ember, [
        "generate", "--model", path.join(root, "tests", "fixtures", "models", name), "--device", "cpu", "--template", "none",
        "--prompt", prompt, "--greedy", "--max-new-tokens", "6", "--json",
      ], { encoding: "utf8" })).text.replace(/\uFFFD+$/, ""); // the page's stream holds back a partial last character
      log(`${name} from a URL: ${JSON.stringify(await text(shardedPage, "#output-base"))}`);
      assert.equal(await text(shardedPage, "#output-base"), want, `${name}: the page generates other text than ember`);
      await shardedPage.close();
      fs.rmSync(folder, { recursive: true, force: true });
    }
  } finally {
    fs.rmSync(served, { recursive: true, force: true });
  }

  assert.deepEqual(pageErrors, [], "uncaught errors in the page");
  assert.deepEqual(panics, [], "the worker panicked");
  log(`passed; screenshots in ${shots}`);
} finally {
  await browser.close();
  server.kill();
}

if (process.argv.includes("--update-docs")) {
  const docs = path.join(root, "docs", "screenshots");
  fs.mkdirSync(docs, { recursive: true });
  for (const name of fs.readdirSync(shots)) fs.copyFileSync(path.join(shots, name), path.join(docs, name));
  log(`copied the screenshots to ${docs}`);
}
