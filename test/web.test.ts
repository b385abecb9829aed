/**
 * The web view over HTTP: every page as HTML and as JSON, artifact downloads (type, length, ranges,
 * ETag), stable links, comparisons, search by hash, workers, queue, badge, live console by
 * server-sent events, escaping, and clear 404s — against a real server with real runs.
 */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  PLATFORM, type Proc, type ServerHandle, killAll, ok, scheduleScript, sha256, startProcess, startServer, startWorker, tempDir, waitFor, waitForState,
} from './harness.js';

interface Reply { status: number; headers: http.IncomingHttpHeaders; body: Buffer; text: string }

function get(base: string, url: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${base}${url}`, { method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString('utf8') });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

const JSON_ACCEPT = { Accept: 'application/json' };

describe('web view', () => {
  let dir: string;
  let server: ServerHandle;
  let base: string;
  let worker: Proc;
  let first: string;
  let second: string;
  let failed: string;
  let randomA: Buffer;

  const page = (url: string): Promise<Reply> => get(base, url);
  const api = async <T>(url: string): Promise<T> => {
    const reply = await get(base, url, JSON_ACCEPT);
    expect(reply.headers['content-type']).toBe('application/json');
    return JSON.parse(reply.text) as T;
  };

  beforeAll(async () => {
    dir = tempDir();
    server = await startServer(path.join(dir, 'state'), ['--http', '127.0.0.1:0']);
    base = server.web ?? '';
    // Two runs of alpha: one stable artifact, one random (not reproducible); a console line that
    // tries to be markup; ANSI colour; a file name with markup characters and a space.
    const alpha = [
      "printf '\\033[1;32mgreen\\033[0m <script>alert(1)</script>\\n'",
      'echo "stderr line" >&2',
      'mkdir -p out "dir with space"',
      'echo stable > out/stable.txt',
      'head -c 300000 /dev/urandom > out/random.bin',
      "echo 'x' > 'dir with space/x<b>.txt'",
      'od -An -tx1 -N4 out/random.bin',
      '',
    ].join('\n');
    first = await scheduleScript(server, dir, 'alpha', alpha);
    failed = await scheduleScript(server, dir, 'beta', 'echo about to fail\nexit 2\n');
    worker = startWorker(server, ['--loop'], PLATFORM, dir);
    await waitForState(server, first, 'finished');
    await waitForState(server, failed, 'finished');
    const fetched = path.join(dir, 'first');
    await ok(server, ['fetch', first, '-o', fetched]);
    randomA = fs.readFileSync(path.join(fetched, 'out/random.bin'));
    second = (await ok(server, ['execute', 'alpha'])).trim();
    await waitForState(server, second, 'finished');
  });
  afterAll(async () => {
    await killAll();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('lists the jobs with platform, schedule, next due time, last run and last success', async () => {
    const html = await page('/');
    expect(html.status).toBe(200);
    expect(html.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(html.text).toContain('<a href="/job/alpha">alpha</a>');
    expect(html.text).toContain(`<a class="pill failed" href="/run/${failed}" title="exited 2">failed</a>`);
    expect(html.text).toContain(`<a class="pill success" href="/run/${second}" title="exited 0">success</a>`);
    const json = await api<{ jobs: { name: string; platform: string; schedule: string; nextDue: string; lastRun: { uuid: string; status: string }; lastSuccess: { uuid: string } | null }[] }>('/');
    expect(json.jobs.map((job) => [job.name, job.platform, job.schedule, job.lastRun.uuid, job.lastRun.status, job.lastSuccess?.uuid ?? null])).toEqual([
      ['alpha', PLATFORM, 'every 1d', second, 'success', second],
      ['beta', PLATFORM, 'every 1d', failed, 'failed', null],
    ]);
    expect(Date.parse(json.jobs[0]?.nextDue ?? '')).toBeGreaterThan(Date.now());
  });

  it('shows a job with its runs newest first, paging, a failed-runs filter and a duration chart', async () => {
    const json = await api<{ job: { name: string }; runs: { uuid: string; status: string }[]; total: number; pages: number }>('/job/alpha');
    expect(json.runs.map((run) => run.uuid)).toEqual([second, first]);
    expect(json.total).toBe(2);
    const paged = await api<{ runs: { uuid: string }[]; page: number; pages: number }>('/job/alpha?per=1&page=2');
    expect([paged.runs.map((run) => run.uuid), paged.page, paged.pages]).toEqual([[first], 2, 2]);
    const html = await page('/job/alpha?per=1');
    expect(html.text).toContain('<a href="?page&#x3D;2&amp;per&#x3D;1">older →</a>');
    expect(html.text.match(/<rect class="success"/g)?.length).toBe(2);
    expect((await api<{ runs: unknown[] }>('/job/alpha?failed=1')).runs).toEqual([]);
    expect((await api<{ runs: { uuid: string }[] }>('/job/beta?failed=1')).runs.map((run) => run.uuid)).toEqual([failed]);
  });

  it('shows a run: outcome, times, worker, the exact script, the console escaped and in colour, the artifacts', async () => {
    const html = await page(`/run/${first}`);
    expect(html.status).toBe(200);
    expect(html.text).toContain('<span style="font-weight:bold" class="ansi-green-fg">green</span> &lt;script&gt;alert(1)&lt;/script&gt;');
    expect(html.text).not.toContain('<script>alert(1)');
    expect(html.text).toContain('<div class="line err" id="L2"><a class="at" href="#L2">');
    expect(html.text).toContain(`<a href="/run/${first}/artifact/dir%20with%20space/x%3Cb%3E.txt" download>dir with space/x&lt;b&gt;.txt</a>`);
    expect(html.text).toContain('echo stable &gt; out/stable.txt');
    const json = await api<{ uuid: string; script: string; worker: string; artifacts: { path: string; size: number; sha256: string }[]; status: string }>(`/run/${first}`);
    expect(json.status).toBe('success');
    expect(json.worker).toMatch(/^.+\/[0-9a-f]{4}$/);
    expect(json.artifacts).toEqual([
      { path: 'dir with space/x<b>.txt', size: 2, sha256: sha256('x\n') },
      { path: 'out/random.bin', size: 300_000, sha256: sha256(randomA) },
      { path: 'out/stable.txt', size: 7, sha256: sha256('stable\n') },
    ]);
    const text = await page(`/run/${first}/console`);
    expect(text.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(text.text.split('\n')[1]).toMatch(/^\d+\.\d{3} ! stderr line$/);
  });

  it('serves artifacts byte for byte with type, length, ETag and ranges', async () => {
    const url = `/run/${first}/artifact/out/random.bin`;
    const whole = await page(url);
    expect(whole.status).toBe(200);
    expect(sha256(whole.body)).toBe(sha256(randomA));
    expect(whole.headers['content-length']).toBe('300000');
    expect(whole.headers['content-type']).toBe('application/octet-stream');
    expect(whole.headers.etag).toBe(`"${sha256(randomA)}"`);
    expect(whole.headers['accept-ranges']).toBe('bytes');
    const text = await page(`/run/${first}/artifact/out/stable.txt`);
    expect([text.headers['content-type'], text.text]).toEqual(['text/plain; charset=utf-8', 'stable\n']);

    const part = await get(base, url, { Range: 'bytes=1000-1999' });
    expect(part.status).toBe(206);
    expect(part.headers['content-range']).toBe('bytes 1000-1999/300000');
    expect(part.body.equals(randomA.subarray(1000, 2000))).toBe(true);
    const tail = await get(base, url, { Range: 'bytes=-10' });
    expect([tail.status, tail.headers['content-range']]).toEqual([206, 'bytes 299990-299999/300000']);
    expect(tail.body.equals(randomA.subarray(299_990))).toBe(true);
    const beyond = await get(base, url, { Range: 'bytes=400000-' });
    expect([beyond.status, beyond.headers['content-range']]).toEqual([416, 'bytes */300000']);
    const cached = await get(base, url, { 'If-None-Match': `"${sha256(randomA)}"` });
    expect([cached.status, cached.body.length]).toEqual([304, 0]);
    const head = await get(base, url, {}, 'HEAD');
    expect([head.status, head.headers['content-length'], head.body.length]).toEqual([200, '300000', 0]);
  });

  it('links to the latest successful run and its artifacts under stable addresses', async () => {
    const latest = await page('/job/alpha/latest');
    expect([latest.status, latest.headers.location]).toEqual([302, `/run/${second}`]);
    const onPlatform = await page(`/job/alpha/latest?platform=${PLATFORM}`);
    expect(onPlatform.headers.location).toBe(`/run/${second}`);
    const stable = await page('/job/alpha/latest/artifact/out/stable.txt');
    expect([stable.status, stable.text]).toEqual([200, 'stable\n']);
    const none = await page('/job/beta/latest');
    expect(none.status).toBe(404);
    expect(none.text).toContain('job beta has no successful run');
    expect((await page('/job/alpha/latest?platform=other-platform')).status).toBe(404);
  });

  it('compares two runs: which artifacts differ by hash, and the console diff', async () => {
    const json = await api<{ reproducible: boolean; artifacts: { path: string; state: string }[]; script: unknown[]; console: { kind: string; text: string }[] }>(`/compare/${first}/${second}`);
    expect(json.reproducible).toBe(false);
    expect(json.artifacts.map((artifact) => [artifact.path, artifact.state])).toEqual([
      ['dir with space/x<b>.txt', 'same'], ['out/random.bin', 'different'], ['out/stable.txt', 'same'],
    ]);
    expect(json.script).toEqual([]);
    // The only console difference is the line printing the random bytes.
    // (jsdiff may list a replaced line's two sides in either order.)
    expect(json.console.map((line) => line.kind).sort()).toEqual(['added', 'removed']);
    expect(json.console.every((line) => /^\| [0-9a-f ]+$/.test(line.text))).toBe(true);
    const html = await page(`/compare/${first}/${second}`);
    expect(html.text).toContain('<span class="state different">differs</span>');
    expect(html.text).toContain('<h2>Script</h2>\n<p class="muted">Identical.</p>');
  });

  it('finds every run that produced a file with a given SHA-256', async () => {
    const hash = sha256('stable\n');
    const json = await api<{ artifacts: { run: { uuid: string }; path: string; size: number }[] }>(`/hash/${hash}`);
    expect(json.artifacts.map((entry) => [entry.run.uuid, entry.path, entry.size]).sort()).toEqual([[first, 'out/stable.txt', 7], [second, 'out/stable.txt', 7]].sort());
    expect((await page(`/hash/${sha256('nothing made this')}`)).text).toContain('No run produced a file with this hash.');
    expect((await page('/hash/xyz')).status).toBe(400);
    const search = await page(`/hash?sha256=${hash.toUpperCase()}`);
    expect([search.status, search.headers.location]).toEqual([302, `/hash/${hash.toUpperCase()}`]);
    expect((await api<{ sha256: string }>(`/hash/${hash.toUpperCase()}`)).sha256).toBe(hash);
  });

  it('shows the queue per platform and what runs now', async () => {
    const waiting = await scheduleScript(server, dir, 'waits', 'echo hi\n');
    await ok(server, ['reschedule', 'waits', '+1h']);
    const moved = await ok(server, ['schedule', 'elsewhere', 'no-worker-platform', path.join(dir, 'waits.sh')]);
    const json = await api<{ queues: Record<string, { uuid: string; job: string }[]>; running: unknown[] }>('/queue');
    expect(json.queues['no-worker-platform']?.map((entry) => entry.uuid)).toEqual([moved.trim()]);
    const html = await page('/queue');
    expect(html.text).toContain('<h2>no-worker-platform</h2>');
    await waitForState(server, waiting, 'finished');
  });

  it('shows workers as active, then gone after they leave', async () => {
    const active = await api<{ workers: { platform: string; status: string; run: string | null }[] }>('/workers');
    expect(active.workers.map((w) => [w.platform, w.status])).toEqual([[PLATFORM, 'active']]);
    const extra = startProcess('builder-worker.js', ['short-lived', '--remote', server.address, '--labels', 'big-disk,gpu']);
    await waitFor('the second worker', async () => (await api<{ workers: unknown[] }>('/workers')).workers.length === 2 || null);
    expect((await page('/workers')).text).toContain('<span class="label">big-disk</span> <span class="label">gpu</span>');
    extra.kill('SIGKILL');
    const gone = await waitFor('the worker to be gone', async () => {
      const workers = (await api<{ workers: { platform: string; status: string }[] }>('/workers')).workers;
      return workers.find((w) => w.platform === 'short-lived' && w.status === 'gone');
    });
    expect(gone.status).toBe('gone');
  });

  it('draws a status badge', async () => {
    const good = await page('/job/alpha/badge.svg');
    expect(good.headers['content-type']).toBe('image/svg+xml');
    expect(good.text).toContain('<title>alpha: success</title>');
    expect((await page('/job/beta/badge.svg')).text).toContain('<title>beta: failed</title>');
    expect((await page('/job/nope/badge.svg')).status).toBe(404);
  });

  it('follows a running run\'s console live with server-sent events', async () => {
    const uuid = await scheduleScript(server, dir, 'live', 'echo first\nsleep 1\necho second\nsleep 1\necho third\n');
    await waitForState(server, uuid, 'running');
    const events = await new Promise<string>((resolve, reject) => {
      http.get(`${base}/run/${uuid}/console`, { headers: { Accept: 'text/event-stream' } }, (res) => {
        expect(res.headers['content-type']).toBe('text/event-stream');
        let text = '';
        res.setEncoding('utf8').on('data', (chunk: string) => { text += chunk; }).on('end', () => resolve(text)).on('error', reject);
      }).on('error', reject);
    });
    const lines = [...events.matchAll(/event: lines\ndata: (.+)\n\n/g)].map((match) => (JSON.parse(match[1] ?? '') as { html: string }).html).join('');
    expect([...lines.matchAll(/<span class="text">([^<]*)<\/span>/g)].map((match) => match[1])).toEqual(['first', 'second', 'third']);
    expect(lines).toContain('id="L3"');
    expect(events).toMatch(/event: end\ndata: \{[^\n]*"status":"success"/);
  });

  it('answers a clear 404 (or 400, 405) as a page or as JSON, for anything missing', async () => {
    const cases: [string, number, string][] = [
      ['/job/nope', 404, 'no job named nope'],
      ['/run/00000000-0000-4000-8000-000000000000', 404, 'no run 00000000-0000-4000-8000-000000000000 (it may have been removed by retention)'],
      [`/run/${first}/artifact/out/nope.txt`, 404, `run ${first} of alpha has no artifact out/nope.txt`],
      [`/run/${first}/artifact/..%2F..%2Fetc%2Fpasswd`, 404, `run ${first} of alpha has no artifact ../../etc/passwd`],
      [`/run/${first}/artifact/../../../etc/passwd`, 404, 'no page at /etc/passwd'],
      ['/run/not-a-uuid', 400, "'not-a-uuid' is not a run UUID"],
      ['/nowhere', 404, 'no page at /nowhere'],
      ['/%E0%A4%A', 400, 'the address is not valid percent-encoding'],
    ];
    for (const [url, status, message] of cases) {
      const json = await get(base, url, JSON_ACCEPT);
      expect([url, json.status, JSON.parse(json.text)]).toEqual([url, status, { error: message }]);
      const html = await page(url);
      expect([url, html.status]).toEqual([url, status]);
      expect(html.text).toContain(`<p class="error">${message.replaceAll("'", '&#x27;')}</p>`);
    }
    const post = await get(base, '/', {}, 'POST');
    expect([post.status, post.headers.allow]).toEqual([405, 'GET, HEAD']);
    expect(worker.exited).toBeNull();
  });
});
