/**
 * The web view in a real browser (Debian's Chromium, driven by playwright-core) against a real
 * server with real runs: from the jobs page to a job, to a run and its console, downloading an
 * artifact (checked by SHA-256), and watching a running job's console grow live. Screenshots of
 * the main pages go to test-output/ to be looked at.
 */
import fs from 'node:fs';
import path from 'node:path';
import { type Browser, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  PLATFORM, ROOT, type ServerHandle, killAll, ok, scheduleScript, sha256, startServer, startWorker, tempDir, waitForState,
} from './harness.js';

const CHROMIUM = '/usr/bin/chromium';
const SHOTS = path.join(ROOT, 'test-output', 'web');
const haveChromium = fs.existsSync(CHROMIUM);
if (!haveChromium && process.env.CI === 'true') throw new Error(`CI=true needs ${CHROMIUM}: apt-get install chromium`);

describe.runIf(haveChromium)('web view in Chromium', () => {
  let dir: string;
  let server: ServerHandle;
  let browser: Browser;
  let built: string;
  let rebuilt: string;
  let payload: Buffer;

  beforeAll(async () => {
    dir = tempDir();
    fs.mkdirSync(SHOTS, { recursive: true });
    server = await startServer(path.join(dir, 'state'), ['--http', '127.0.0.1:0']);
    const script = [
      'echo "building \\033[1mrelease\\033[0m on $(uname -s)"',
      'for step in configure compile link; do echo "\\033[32m==>\\033[0m $step"; done',
      'echo "warning: something to look at" >&2',
      'mkdir -p dist && head -c 150000 /dev/urandom > dist/app.tar.gz && echo 1.0 > dist/VERSION',
      '',
    ].join('\n');
    built = await scheduleScript(server, dir, 'release', script);
    await scheduleScript(server, dir, 'lint', 'echo checking\nexit 1\n');
    const worker = startWorker(server, ['--loop'], PLATFORM, dir);
    await waitForState(server, built, 'finished');
    rebuilt = (await ok(server, ['execute', 'release'])).trim();
    await waitForState(server, rebuilt, 'finished');
    await waitForState(server, (await ok(server, ['execute', 'lint'])).trim(), 'finished');
    await ok(server, ['fetch', built, '-o', path.join(dir, 'fetched')]);
    payload = fs.readFileSync(path.join(dir, 'fetched', 'dist', 'app.tar.gz'));
    expect(worker.exited).toBeNull();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  }, 120_000);
  afterAll(async () => {
    await browser?.close();
    await killAll();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('goes from the jobs page to a job, to a run, reads its console and downloads an artifact', async () => {
    const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
    const tab = await context.newPage();
    await tab.goto(`${server.web}/`);
    await expect(tab.title()).resolves.toBe('Jobs · builder');
    await tab.screenshot({ path: path.join(SHOTS, 'jobs.png'), fullPage: true });
    await tab.click('a[href="/job/release"]');
    await tab.waitForURL(/\/job\/release$/);
    expect(await tab.locator('table.list tbody tr').count()).toBe(2);
    await tab.screenshot({ path: path.join(SHOTS, 'job.png'), fullPage: true });
    await tab.click(`a[href="/run/${built}"]`);
    await tab.waitForURL(new RegExp(`/run/${built}$`));
    expect(await tab.locator('#console .line .text').allTextContents()).toEqual([
      'building release on Linux', '==> configure', '==> compile', '==> link', 'warning: something to look at',
    ]);
    // Colours are rendered, not printed as escape codes.
    expect(await tab.locator('#console .ansi-green-fg').count()).toBe(3);
    await tab.screenshot({ path: path.join(SHOTS, 'run.png'), fullPage: true });
    const [download] = await Promise.all([tab.waitForEvent('download'), tab.click('a:text("dist/app.tar.gz")')]);
    const saved = path.join(dir, 'downloaded.tar.gz');
    await download.saveAs(saved);
    expect(sha256(fs.readFileSync(saved))).toBe(sha256(payload));
    await tab.goto(`${server.web}/run/${rebuilt}`);
    await tab.click('a:text("with the previous run")');
    await tab.waitForURL(new RegExp(`/compare/${built}/${rebuilt}$`));
    expect(await tab.locator('span.state').allTextContents()).toEqual(['same', 'differs']);
    await tab.screenshot({ path: path.join(SHOTS, 'compare.png'), fullPage: true });
    await tab.goto(`${server.web}/workers`);
    await tab.screenshot({ path: path.join(SHOTS, 'workers.png'), fullPage: true });
    await context.close();
  });

  it('shows a running job\'s console growing live, then its outcome', async () => {
    fs.writeFileSync(path.join(dir, 'secret.txt'), 'not-for-browsers\n');
    const live = await scheduleScript(server, dir, 'slow-build',
      'for i in 1 2 3 4; do echo "step $i"; builder-progress $((i * 25)) "step $i of 4"; sleep 1; done\necho done > result.txt\n',
      ['--env', 'STAGE=test', '--secret-env', `TOKEN=@${path.join(dir, 'secret.txt')}`]);
    await waitForState(server, live, 'running');
    const tab = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await tab.goto(`${server.web}/run/${live}`);
    const lines = tab.locator('#console .line .text');
    const seenFirst = await lines.count();
    await expect.poll(() => lines.count(), { timeout: 20_000 }).toBeGreaterThan(seenFirst);
    // The progress follows live (server-sent events), with its bar; the secret shows as ***.
    const shownFirst = await tab.locator('#progress .text').textContent();
    await expect.poll(() => tab.locator('#progress .text').textContent(), { timeout: 20_000 }).not.toBe(shownFirst);
    expect(await tab.locator('#progress .text').textContent()).toMatch(/^(50|75|100)% step [234] of 4$/);
    expect(Number(await tab.locator('#progress progress').getAttribute('value'))).toBeGreaterThanOrEqual(50);
    expect(await tab.locator('ul.env').textContent()).toBe('STAGE=testTOKEN=***');
    await tab.screenshot({ path: path.join(SHOTS, 'run-live.png'), fullPage: true });
    // When the run ends the page reloads with its outcome and artifacts.
    await expect.poll(async () => tab.locator('#status').textContent(), { timeout: 20_000 }).toBe('success');
    await tab.waitForSelector('a:text("result.txt")', { timeout: 20_000 });
    expect(await lines.allTextContents()).toEqual(['step 1', 'step 2', 'step 3', 'step 4']);
    await tab.goto(`${server.web}/queue`);
    await tab.screenshot({ path: path.join(SHOTS, 'queue.png'), fullPage: true });
    await tab.close();
  });
});
