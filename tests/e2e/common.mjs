// What the end-to-end scripts share: where things are, `ember web` on a free port, Debian's
// Chromium with the flags this machine needs, and small page helpers.
import { chromium } from "playwright-core";
import { spawn, execFileSync } from "node:child_process";
import path from "node:path";

export const root = path.resolve(import.meta.dirname, "../..");
export const targetDir = process.env.CARGO_TARGET_DIR ??
  JSON.parse(execFileSync("cargo", ["metadata", "--format-version", "1", "--no-deps"], { cwd: root })).target_directory;
export const ember = process.env.EMBER_BIN ?? path.join(targetDir, "release", "ember");
export const dist = process.env.EMBER_WEB_DIST ?? path.join(root, "web", "dist");
export const MINUTE = 60_000;

export function log(message) {
  console.log(`[e2e] ${message}`);
}

/** Starts `ember web` on a free port; resolves to its URL. */
export function serve() {
  const server = spawn(ember, ["web", "--port", "0", "--dir", dist], { stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((resolve, reject) => {
    server.on("exit", (code) => reject(new Error(`ember web exited with ${code}`)));
    server.stdout.on("data", (chunk) => {
      const url = /http:\/\/[\d.:]+\//.exec(chunk.toString());
      if (url) resolve({ server, url: url[0] });
    });
  });
}

const chromiumOptions = {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--enable-unsafe-webgpu"],
};

/** Debian's Chromium, headless (no browser download), with WebGPU allowed. */
export function launch() {
  return chromium.launch(chromiumOptions);
}

/** The same with a profile on disk: a browser's real storage quota (an ephemeral context's is small). */
export function launchWithProfile(dir) {
  return chromium.launchPersistentContext(dir, { ...chromiumOptions, headless: true });
}

export async function text(page, selector) {
  return (await page.locator(selector).textContent()) ?? "";
}

/** Waits until the page has a backend and says which one runs the tests. */
export async function started(page) {
  await page.waitForFunction(() => (document.querySelector("#backend")?.textContent ?? "starting…") !== "starting…", null, { timeout: 2 * MINUTE });
  const backend = await text(page, "#backend");
  log(`backend: ${backend}`);
  if (backend.startsWith("CPU")) log("headless Chromium offers no WebGPU adapter here: this run tests the CPU (WebAssembly) fallback");
  return backend;
}
