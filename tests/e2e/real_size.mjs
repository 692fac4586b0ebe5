// The page at real size: a bloom-560m-shaped model (vocabulary 250,880, hidden 1024, 16 heads,
// EMBER_E2E_LAYERS layers, default 24; a 250,880-token tokenizer), random weights (EMBER_E2E_DTYPE,
// default f16) written now
// by the tests' `random_model` helper (nothing committed), served by `ember web` and run on the
// CPU (WebAssembly) path through a link: 4 greedy tokens equal `ember generate --dtype f16` on the
// same files, then one LoRA step (r=8 on query_key_value, batch 1 x 64); before that, a download of
// it shows rate and time left and is cancelled, and after it a second load reads the weights from
// Cache Storage (a browser profile on disk: an ephemeral context's quota is too small). Prints load time, time to
// first token, decode tokens/s, seconds per step and the worker's peak memory (docs/PERFORMANCE.md).
import { execFileSync } from "node:child_process";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import os from "node:os";
import { targetDir, ember, dist, MINUTE, log, serve, text, launchWithProfile } from "./common.mjs";

const layers = process.env.EMBER_E2E_LAYERS ?? "24";
const dtype = process.env.EMBER_E2E_DTYPE ?? "f16"; // f32 fits the 4 GiB heap only with few layers
const folder = path.join(dist, "e2e-real-size");
const prompt = "Human : what does Ember do ?";
const tokens = 4;

let started = Date.now();
execFileSync(path.join(targetDir, "release", "random_model"), ["--shape", "bloom-560m", "--layers", layers, "--dtype", dtype, "--out", folder]);
const bytes = fs.statSync(path.join(folder, "model.safetensors")).size;
log(`bloom-560m shape, ${layers} layers: ${(bytes / 2 ** 20).toFixed(0)} MiB of ${dtype} weights written in ${((Date.now() - started) / 1000).toFixed(1)} s`);

started = Date.now();
const native = JSON.parse(execFileSync(ember, [
  "generate", "--model", folder, "--device", "cpu", "--dtype", dtype, "--template", "none",
  "--prompt", prompt, "--greedy", "--max-new-tokens", String(tokens), "--json",
], { encoding: "utf8", maxBuffer: 1 << 26 }));
log(`native ember generate (load + ${tokens} tokens): ${((Date.now() - started) / 1000).toFixed(1)} s: ${JSON.stringify(native.text)}`);

const { server, url } = await serve();
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "ember-profile-"));
const browser = await launchWithProfile(profile);
try {
  const page = await browser.newPage();
  page.on("console", (m) => {
    if (m.type() === "error" || process.env.EMBER_E2E_VERBOSE) log(`console: ${m.text()}`);
  });
  // A large download shows its rate and time left, and Cancel ends it with a message.
  await page.goto(url);
  await page.waitForFunction(() => !(document.querySelector("#backend")?.textContent ?? "starting…").startsWith("starting"), null, { timeout: 2 * MINUTE });
  await page.fill("#model-url", `${url}e2e-real-size/`);
  await page.click("#load-url");
  await page.waitForFunction(() => /MB\/s · .* left/.test(document.querySelector("#progress")?.textContent ?? ""), null, { timeout: 2 * MINUTE });
  log(`progress: ${await text(page, "#progress span")}`);
  await page.click("#cancel");
  await page.waitForFunction(() => /loading cancelled/.test(document.querySelector("#error")?.textContent ?? ""), null, { timeout: MINUTE });
  assert.equal(await text(page, "#model-status"), "No model loaded.");
  log(`cancelled: "${await text(page, "#error span")}"`);

  const query = new URLSearchParams({ model: `${url}e2e-real-size/`, prompt, template: "none", greedy: "1", max_new_tokens: String(tokens), device: "cpu", run: "1" });
  started = Date.now();
  await page.goto(`${url}?${query}`);
  await page.waitForFunction(() => document.querySelector("#model-status")?.textContent.startsWith("Model loaded") || /^failed/.test(document.querySelector("#status")?.textContent ?? ""), null, { timeout: 20 * MINUTE });
  const loadSeconds = (Date.now() - started) / 1000;
  log(`page: ${await text(page, "#backend")}; ${await text(page, "#model-status")}; loaded in ${loadSeconds.toFixed(1)} s`);
  await page.waitForFunction(() => /^(done|failed)/.test(document.querySelector("#status")?.textContent ?? ""), null, { timeout: 20 * MINUTE });
  assert.equal(await text(page, "#status"), "done");
  const pageText = await text(page, "#output-base");
  log(`page greedy: ${JSON.stringify(pageText)} (${await text(page, "#stats-base")}); ${await text(page, "#memory")}`);
  assert.equal(pageText, native.text, `the page's greedy tokens differ from ember generate --dtype ${dtype}`);

  await page.click("#tab-finetune");
  await page.click("#demo-examples");
  await page.fill("#lora-r", "8");
  await page.fill("#target-modules", "query_key_value");
  await page.fill("#modules-to-save", "");
  await page.fill("#steps", "1");
  await page.fill("#batch-size", "1");
  await page.fill("#max-length", "64");
  started = Date.now();
  await page.click("#train");
  await page.waitForFunction(() => /^(done|stopped) after/.test(document.querySelector("#train-status")?.textContent ?? "") || document.querySelector("#error"), null, { timeout: 20 * MINUTE });
  const error = await page.locator("#error").textContent({ timeout: 100 }).catch(() => null);
  assert.equal(error, null, `training failed: ${error}`);
  await page.waitForFunction(() => document.querySelector("#memory")?.textContent.startsWith("worker memory"), null, { timeout: MINUTE });
  log(`page training: ${await text(page, "#train-status")} in ${((Date.now() - started) / 1000).toFixed(1)} s; ${await text(page, "#memory")}`);
  assert.match(await text(page, "#train-status"), /^done after 1 steps/);

  // Loaded again, the weights come from Cache Storage, not the network.
  await page.goto(`${url}?device=cpu`);
  await page.waitForFunction(() => !(document.querySelector("#backend")?.textContent ?? "starting…").startsWith("starting"), null, { timeout: 2 * MINUTE });
  await page.fill("#model-url", `${url}e2e-real-size/`);
  started = Date.now();
  await page.click("#load-url");
  await page.waitForFunction(() => /from the browser cache model\.safetensors/.test(document.querySelector("#progress")?.textContent ?? ""), null, { timeout: 5 * MINUTE });
  await page.waitForFunction(() => document.querySelector("#model-status")?.textContent.startsWith("Model loaded"), null, { timeout: 10 * MINUTE });
  log(`loaded again from Cache Storage in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  log("passed");
} finally {
  await browser.close();
  server.kill();
  fs.rmSync(folder, { recursive: true, force: true });
  fs.rmSync(profile, { recursive: true, force: true });
}
