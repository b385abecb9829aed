/**
 * The web view (`builder-server --http HOST:PORT`): read-only HTML pages, or JSON when the request
 * asks for application/json, over the server's own store, consoles and artifact files. Consoles and
 * artifacts are streamed, never loaded whole; a running run's console follows live through
 * server-sent events, fed by the same observer machinery as `builder-client observe`.
 */
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import type { ServerToClient } from '../protocol/messages.js';
import { formatAddress, parseAddress } from '../protocol/connection.js';
import { chunkLines, prefixLines } from '../protocol/console-chunks.js';
import type { Artifact, RunDetail } from '../protocol/types.js';
import { UUID_PATTERN } from '../protocol/types.js';
import { formatProgress, runStatus, streamMarker, toJson } from './client-commands.js';
import { isLoopback } from './auth.js';
import type { ObserverSink } from './observers.js';
import { describePeriod, formatDuration } from './period.js';
import { queuesWithReasons } from './server-requests.js';
import type { ServerContext } from './server.js';
import {
  Pages, WEB_DIR, badgeSvg, consoleLineHtml, durationChartSvg, formatBytes, lineDiff, runView,
} from './web-render.js';

const RUNS_PER_PAGE = 50;
/** Console lines a comparison reads from each run; beyond that it says the rest was not compared. */
const COMPARE_MAX_LINES = 20_000;
const CONSOLE_MARK = '<!--console-->';
const SHA256_PATTERN = /^[0-9a-f]{64}$/;

/** An answer: a page (HTML) and the same data for JSON, or a status with a message. */
interface Answer { status?: number; page: string; title: string; model: Record<string, unknown>; json: unknown }

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

const notFound = (what: string): HttpError => new HttpError(404, what);

export interface RunningWeb {
  address: string;
  close(): Promise<void>;
}

export async function startWeb(context: ServerContext, listen: string): Promise<RunningWeb> {
  const pages = new Pages();
  const { host } = parseAddress(listen);
  // On loopback the view is as open as the machine; beyond it, once tokens exist, a viewer token
  // (or higher) is asked for: HTTP Basic (any user name, the token as password) or a Bearer header.
  const web = new WebView(context, pages, !isLoopback(host));
  const sockets = new Set<import('node:net').Socket>();
  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    web.handle(req, res).catch((error: Error) => {
      context.log('error', { during: 'web request', url: req.url ?? '', problem: error.stack ?? error.message });
      if (!res.headersSent) web.fail(req, res, 500, `internal error: ${error.message}`);
      else res.destroy();
    });
  };
  const tlsFiles = context.options.tls;
  const server = tlsFiles === null ? http.createServer(onRequest) : https.createServer({ cert: tlsFiles.cert, key: tlsFiles.key }, onRequest);
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  const { port } = parseAddress(listen);
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => reject(new Error(error.code === 'EADDRINUSE'
      ? `cannot serve the web view on ${listen}: the address is already in use (choose another with --http)`
      : `cannot serve the web view on ${listen}: ${error.message}`)));
    server.listen({ host, port }, () => resolve());
  });
  const bound = server.address() as import('node:net').AddressInfo;
  const address = formatAddress(bound.address, bound.port);
  context.log('web', { address: `${tlsFiles === null ? 'http' : 'https'}://${address}/` });
  return {
    address,
    close: () => new Promise<void>((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(() => resolve());
    }),
  };
}

function wantsJson(req: http.IncomingMessage): boolean {
  const accept = req.headers.accept ?? '';
  return accept.includes('application/json') && !accept.includes('text/html');
}

const CONTENT_TYPES: Record<string, string> = {
  '.txt': 'text/plain; charset=utf-8', '.log': 'text/plain; charset=utf-8', '.md': 'text/plain; charset=utf-8',
  '.sh': 'text/plain; charset=utf-8', '.sha256': 'text/plain; charset=utf-8', '.csv': 'text/csv; charset=utf-8',
  '.html': 'text/html; charset=utf-8', '.htm': 'text/html; charset=utf-8', '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8', '.json': 'application/json', '.xml': 'application/xml', '.svg': 'image/svg+xml',
  '.png': 'image/png', '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.gif': 'image/gif', '.webp': 'image/webp',
  '.pdf': 'application/pdf', '.tar': 'application/x-tar', '.gz': 'application/gzip', '.tgz': 'application/gzip',
  '.xz': 'application/x-xz', '.zst': 'application/zstd', '.bz2': 'application/x-bzip2', '.zip': 'application/zip',
  '.deb': 'application/vnd.debian.binary-package', '.rpm': 'application/x-rpm', '.iso': 'application/x-iso9660-image',
  '.wasm': 'application/wasm',
};

export function contentTypeOf(file: string): string {
  return CONTENT_TYPES[path.extname(file).toLowerCase()] ?? 'application/octet-stream';
}

/** The token in an Authorization header: `Bearer TOKEN`, or Basic with the token as password. */
function presentedToken(req: http.IncomingMessage): string | null {
  const header = req.headers.authorization ?? '';
  if (header.startsWith('Bearer ')) return header.slice(7).trim();
  if (header.startsWith('Basic ')) {
    const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
    return decoded.slice(decoded.indexOf(':') + 1);
  }
  return null;
}

class WebView {
  constructor(private readonly context: ServerContext, private readonly pages: Pages, private readonly exposed: boolean) {}

  /** Null when the request may see the view; otherwise why not. */
  private refusal(req: http.IncomingMessage): string | null {
    if (this.context.tokens.count === 0) {
      return this.exposed && !isLoopback(req.socket.remoteAddress ?? '') ? 'this server has no tokens yet, so its web view answers loopback only' : null;
    }
    if (!this.exposed) return null;
    const token = presentedToken(req);
    if (token === null) return 'a viewer token is needed: give it as the password (any user name)';
    const identity = this.context.tokens.check(token);
    if (identity === null || identity.role === 'worker') return 'invalid token';
    return null;
  }

  async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const refused = this.refusal(req);
    if (refused !== null) {
      res.setHeader('WWW-Authenticate', 'Basic realm="builder", charset="UTF-8"');
      this.fail(req, res, 401, refused);
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      this.fail(req, res, 405, `${req.method ?? '?'} is not allowed: the web view is read-only`);
      return;
    }
    const url = new URL(req.url ?? '/', 'http://builder');
    let parts: string[];
    try {
      parts = url.pathname.split('/').slice(1).map((part) => decodeURIComponent(part));
    } catch {
      this.fail(req, res, 400, 'the address is not valid percent-encoding');
      return;
    }
    if (parts.at(-1) === '' && parts.length > 1) parts.pop();
    try {
      await this.route(req, res, parts, url.searchParams);
    } catch (error) {
      if (!(error instanceof HttpError)) throw error;
      this.fail(req, res, error.status, error.message);
    }
  }

  private async route(req: http.IncomingMessage, res: http.ServerResponse, parts: string[], query: URLSearchParams): Promise<void> {
    const [first = '', second, third, fourth] = parts;
    const rest = parts.slice(3).join('/');
    if (first === '' && parts.length === 1) return this.answer(req, res, this.jobs());
    if (first === 'static' && parts.length === 2 && second !== undefined) return this.staticFile(req, res, second);
    if (first === 'job' && second !== undefined) {
      if (parts.length === 2) return this.answer(req, res, this.job(second, query));
      if (parts.length === 3 && third === 'badge.svg') return this.badge(res, second);
      if (third === 'latest') {
        const run = this.context.store.latestFinished(second, true, query.get('platform'));
        if (run === null) throw notFound(`job ${second} has no successful run${query.get('platform') ? ` on ${query.get('platform')}` : ''}`);
        if (parts.length === 3) {
          res.writeHead(302, { Location: `/run/${run.uuid}` }).end();
          return;
        }
        if (fourth === 'artifact' && parts.length > 4) return this.artifact(req, res, run.uuid, parts.slice(4).join('/'));
      }
    }
    if (first === 'run' && second !== undefined) {
      if (!UUID_PATTERN.test(second)) throw new HttpError(400, `'${second}' is not a run UUID`);
      if (parts.length === 2) return this.run(req, res, second);
      if (parts.length === 3 && third === 'console') return this.console(req, res, second, query);
      if (third === 'artifact' && rest !== '') return this.artifact(req, res, second, rest);
    }
    if (first === 'compare' && second !== undefined && third !== undefined && parts.length === 3) return this.answer(req, res, await this.compare(second, third));
    if (first === 'hash' && second !== undefined && parts.length === 2) return this.answer(req, res, this.hash(second));
    if (first === 'hash' && parts.length === 1 && query.has('sha256')) {
      // The search box without JavaScript.
      res.writeHead(302, { Location: `/hash/${encodeURIComponent((query.get('sha256') ?? '').trim())}` }).end();
      return;
    }
    if (first === 'workers' && parts.length === 1) return this.answer(req, res, this.workers());
    if (first === 'queue' && parts.length === 1) return this.answer(req, res, this.queue());
    throw notFound(`no page at /${parts.map(encodeURIComponent).join('/')}`);
  }

  // ---- answers ---------------------------------------------------------------------------------

  private answer(req: http.IncomingMessage, res: http.ServerResponse, answer: Answer): void {
    const status = answer.status ?? 200;
    if (wantsJson(req)) {
      const body = `${toJson(answer.json)}\n`;
      res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    const body = this.pages.render(answer.page, answer.title, answer.model);
    res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8', 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  fail(req: http.IncomingMessage, res: http.ServerResponse, status: number, message: string): void {
    this.answer(req, res, { status, page: 'error', title: `${status}: ${message}`, model: { status, message }, json: { error: message } });
  }

  private staticFile(req: http.IncomingMessage, res: http.ServerResponse, name: string): void {
    if (!/^[a-z-]+\.(css|js)$/.test(name)) throw notFound(`no static file ${name}`);
    const file = path.join(WEB_DIR, name);
    if (!fs.existsSync(file)) throw notFound(`no static file ${name}`);
    const body = fs.readFileSync(file);
    res.writeHead(200, { 'Content-Type': contentTypeOf(file), 'Content-Length': body.length, 'Cache-Control': 'public, max-age=300' });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  private jobs(): Answer {
    const { store } = this.context;
    const jobs = store.listJobs().map((job) => {
      const last = store.latestFinished(job.name, false);
      const success = store.latestFinished(job.name, true);
      const current = store.latestRun(job.name, null);
      return {
        name: job.name, platform: job.platform, schedule: describePeriod(job.period), nextDue: job.nextDue,
        lastRun: last, lastSuccess: success,
        current: current !== null && current.state !== 'finished' ? current : null,
      };
    });
    const model = {
      jobs: jobs.map((job) => ({
        ...job,
        lastRun: job.lastRun === null ? null : runView(job.lastRun),
        lastSuccess: job.lastSuccess === null ? null : runView(job.lastSuccess),
        current: job.current === null ? null : runView(job.current),
      })),
    };
    return { page: 'jobs', title: 'Jobs', model, json: { jobs } };
  }

  private job(name: string, query: URLSearchParams): Answer {
    const { store } = this.context;
    const job = store.getJob(name);
    const pageNumber = Math.max(1, Number.parseInt(query.get('page') ?? '1', 10) || 1);
    const perPage = Math.min(500, Math.max(1, Number.parseInt(query.get('per') ?? String(RUNS_PER_PAGE), 10) || RUNS_PER_PAGE));
    const failedOnly = query.get('failed') === '1';
    const { runs, total } = store.runsOfJobPage(name, perPage, (pageNumber - 1) * perPage, failedOnly);
    if (job === null && total === 0 && !this.jobKnown(name)) throw notFound(`no job named ${name}`);
    const pagesTotal = Math.max(1, Math.ceil(total / perPage));
    const filter = `${failedOnly ? '&failed=1' : ''}${perPage !== RUNS_PER_PAGE ? `&per=${perPage}` : ''}`;
    const info = job === null ? null : {
      name: job.name, platform: job.platform, schedule: describePeriod(job.period), nextDue: job.nextDue, timeoutSeconds: job.timeoutSeconds,
      source: job.source.kind === 'script' ? { kind: 'script' } : job.source,
    };
    const model = {
      name, job: info, runs: runs.map(runView), total, failedOnly, page: pageNumber, pages: pagesTotal,
      newer: pageNumber > 1 ? `?page=${pageNumber - 1}${filter}` : null,
      older: pageNumber < pagesTotal ? `?page=${pageNumber + 1}${filter}` : null,
      chart: durationChartSvg(store.runsOfJob(name, 40)),
      template: job?.source.kind === 'template' ? job.source : null,
      latest: store.latestFinished(name, true),
    };
    return {
      page: 'job', title: `Job ${name}`, model,
      json: { job: info, runs, total, page: pageNumber, pages: pagesTotal },
    };
  }

  private badge(res: http.ServerResponse, name: string): void {
    if (!this.jobKnown(name)) throw notFound(`no job named ${name}`);
    const last = this.context.store.latestFinished(name, false);
    const body = badgeSvg(name, last === null ? 'none' : runStatus(last));
    res.writeHead(200, { 'Content-Type': 'image/svg+xml', 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-cache' });
    res.end(body);
  }

  /** A job that is scheduled, or was and still has runs in the history. */
  private jobKnown(name: string): boolean {
    return this.context.store.getJob(name) !== null || this.context.store.runsOfJob(name, 1).length > 0;
  }

  private detail(uuid: string): RunDetail {
    const run = this.context.store.runDetail(uuid);
    if (run === null) throw notFound(`no run ${uuid} (it may have been removed by retention)`);
    return run;
  }

  /** The run page; its console is streamed into the page between the two halves of the template. */
  private async run(req: http.IncomingMessage, res: http.ServerResponse, uuid: string): Promise<void> {
    const { store, dispatcher, consoles } = this.context;
    const run = this.detail(uuid);
    // Everything written up to now goes into the page; the live stream takes over from this byte.
    const offset = run.state === 'finished' ? null : (dispatcher.consoleOffset(uuid) ?? 0);
    const previous = store.runsOfJob(run.job, 200).find((other) => other.state === 'finished' && other.queuedAt < run.queuedAt && other.uuid !== uuid);
    const answer: Answer = {
      page: 'run', title: `Run ${uuid.slice(0, 8)} of ${run.job}`,
      model: {
        ...runView(run), script: run.script, source: run.source, consoleLines: run.consoleLines, live: run.state !== 'finished',
        offset: offset ?? 0, previous: previous?.uuid ?? null,
        // Secrets by name only: their values never leave the server except to the worker.
        env: [...Object.entries(run.env ?? {}).map(([key, value]) => ({ key, value, secret: false })),
          ...(run.secretKeys ?? []).map((key) => ({ key, value: '***', secret: true }))],
        deliveries: run.deliveries ?? [],
        artifacts: run.artifacts.map((artifact) => ({ ...artifact, sizeText: formatBytes(artifact.size) })),
        console: CONSOLE_MARK,
      },
      json: run,
    };
    if (wantsJson(req) || req.method === 'HEAD') {
      this.answer(req, res, answer);
      return;
    }
    const html = this.pages.render(answer.page, answer.title, answer.model);
    const at = html.indexOf(CONSOLE_MARK);
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    res.write(html.slice(0, at));
    let number = 0;
    for await (const chunks of consoles.replay(uuid, 0, offset)) {
      if (res.destroyed) return;
      const chunk = chunks.flatMap(chunkLines).map((line) => consoleLineHtml(line, ++number)).join('');
      if (!res.write(chunk)) await new Promise((resolve) => res.once('drain', resolve));
    }
    res.end(html.slice(at + CONSOLE_MARK.length));
  }

  /** The console as plain text, or as server-sent events (replay from ?offset=, then live). */
  private async console(req: http.IncomingMessage, res: http.ServerResponse, uuid: string, query: URLSearchParams): Promise<void> {
    const run = this.detail(uuid);
    if (!(req.headers.accept ?? '').includes('text/event-stream')) {
      res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' });
      if (req.method === 'HEAD') {
        res.end();
        return;
      }
      for await (const chunks of this.context.consoles.replay(uuid, 0, null)) {
        if (res.destroyed) return;
        if (!res.write(chunks.map((chunk) => prefixLines(chunk.text, `${(chunk.at / 1000).toFixed(3)} ${streamMarker(chunk.stream)} `)).join(''))) {
          await new Promise((resolve) => res.once('drain', resolve));
        }
      }
      res.end();
      return;
    }
    const offset = Math.max(0, Number.parseInt(query.get('offset') ?? '0', 10) || 0);
    let number = Math.max(0, Number.parseInt(query.get('lines') ?? '0', 10) || 0);
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-store', 'X-Accel-Buffering': 'no' });
    const event = (name: string, data: unknown): boolean => res.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
    const sink: ObserverSink = {
      send: (message: ServerToClient): boolean => {
        switch (message.type) {
          case 'console':
            return event('lines', { html: message.chunks.flatMap(chunkLines).map((line) => consoleLineHtml(line, ++number)).join('') });
          case 'run-update':
            return event('state', runView(message.run));
          case 'run-end':
            event('end', runView(message.run));
            res.end();
            return true;
          case 'failure':
            event('cut', { message: message.message });
            res.end();
            return true;
          default:
            return true;
        }
      },
      drained: () => new Promise((resolve) => {
        if (res.destroyed || res.writableLength === 0) resolve();
        else res.once('drain', () => resolve());
      }),
      get backlog() {
        return res.writableLength;
      },
      get isClosed() {
        return res.destroyed || res.writableEnded;
      },
    };
    req.on('close', () => this.context.hub.forget(sink));
    await this.context.hub.observe(sink, 0, run, (id) => this.context.dispatcher.consoleOffset(id), offset);
  }

  private async artifact(req: http.IncomingMessage, res: http.ServerResponse, uuid: string, artifactPath: string): Promise<void> {
    const run = this.detail(uuid);
    const artifact = this.context.store.artifact(uuid, artifactPath);
    if (artifact === null) throw notFound(`run ${uuid} of ${run.job} has no artifact ${artifactPath}`);
    await this.sendArtifact(req, res, artifact);
  }

  /** One artifact file, with its type, length, hash as ETag, and byte ranges. */
  private async sendArtifact(req: http.IncomingMessage, res: http.ServerResponse, artifact: Artifact): Promise<void> {
    const file = this.context.artifacts.fileOf(artifact.sha256);
    let size: number;
    try {
      size = (await fs.promises.stat(file)).size;
    } catch {
      throw notFound(`the file of artifact ${artifact.path} (SHA-256 ${artifact.sha256}) is missing from the store`);
    }
    const etag = `"${artifact.sha256}"`;
    const headers: http.OutgoingHttpHeaders = {
      'Content-Type': contentTypeOf(artifact.path),
      'Accept-Ranges': 'bytes',
      ETag: etag,
      'Cache-Control': 'public, max-age=31536000, immutable',
      'Content-Disposition': `inline; filename*=UTF-8''${encodeURIComponent(path.basename(artifact.path))}`,
      // An HTML or SVG artifact is the job's content, not the view's: no scripts, no same origin.
      'Content-Security-Policy': 'sandbox',
      'X-Content-Type-Options': 'nosniff',
    };
    if (req.headers['if-none-match'] === etag) {
      res.writeHead(304, headers).end();
      return;
    }
    let start = 0;
    let end = size - 1;
    let status = 200;
    const range = req.headers.range;
    if (range !== undefined) {
      const match = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
      const from = match?.[1] === '' ? null : Number(match?.[1]);
      const to = match?.[2] === '' ? null : Number(match?.[2]);
      if (match === null || (from === null && to === null)) {
        res.writeHead(416, { 'Content-Range': `bytes */${size}` }).end();
        return;
      }
      if (from === null) start = Math.max(0, size - (to ?? 0));
      else {
        start = from;
        end = to === null ? size - 1 : Math.min(to, size - 1);
      }
      if (start > end || start >= size) {
        res.writeHead(416, { 'Content-Range': `bytes */${size}` }).end();
        return;
      }
      status = 206;
      headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
    }
    headers['Content-Length'] = size === 0 ? 0 : end - start + 1;
    res.writeHead(status, headers);
    if (req.method === 'HEAD' || size === 0) {
      res.end();
      return;
    }
    const stream = fs.createReadStream(file, { start, end });
    stream.on('error', () => res.destroy());
    res.on('close', () => stream.destroy());
    stream.pipe(res);
  }

  private async compare(a: string, b: string): Promise<Answer> {
    for (const uuid of [a, b]) if (!UUID_PATTERN.test(uuid)) throw new HttpError(400, `'${uuid}' is not a run UUID`);
    const left = this.detail(a);
    const right = this.detail(b);
    const [leftConsole, rightConsole] = await Promise.all([this.consoleText(a), this.consoleText(b)]);
    const paths = [...new Set([...left.artifacts, ...right.artifacts].map((artifact) => artifact.path))].sort();
    const artifacts = paths.map((p) => {
      const l = left.artifacts.find((artifact) => artifact.path === p) ?? null;
      const r = right.artifacts.find((artifact) => artifact.path === p) ?? null;
      const state = l === null ? 'only-b' : r === null ? 'only-a' : l.sha256 === r.sha256 ? 'same' : 'different';
      return { path: p, a: l, b: r, state };
    });
    const script = lineDiff(left.script ?? '', right.script ?? '');
    const console = lineDiff(leftConsole.text, rightConsole.text);
    const identical = artifacts.length > 0 && artifacts.every((artifact) => artifact.state === 'same');
    return {
      page: 'compare', title: `Compare ${a.slice(0, 8)} and ${b.slice(0, 8)}`,
      model: {
        a: runView(left), b: runView(right), artifacts, identical, script, console,
        scriptSame: script.every((line) => line.kind === 'same'), consoleSame: console.every((line) => line.kind === 'same'),
        truncated: leftConsole.truncated || rightConsole.truncated, maxLines: COMPARE_MAX_LINES,
      },
      json: {
        a: left.uuid, b: right.uuid, reproducible: identical, artifacts,
        script: script.filter((line) => line.kind !== 'same'), console: console.filter((line) => line.kind !== 'same'),
        consoleTruncated: leftConsole.truncated || rightConsole.truncated,
      },
    };
  }

  /** A console's text for comparing (streams and text, not times), up to COMPARE_MAX_LINES lines. */
  private async consoleText(uuid: string): Promise<{ text: string; truncated: boolean }> {
    const lines: string[] = [];
    for await (const batch of this.context.consoles.replay(uuid, 0, null)) {
      for (const line of batch.flatMap(chunkLines)) {
        if (lines.length >= COMPARE_MAX_LINES) return { text: `${lines.join('\n')}\n`, truncated: true };
        lines.push(`${streamMarker(line.stream)} ${line.text}`);
      }
    }
    return { text: lines.length === 0 ? '' : `${lines.join('\n')}\n`, truncated: false };
  }

  private hash(sha256: string): Answer {
    const hash = sha256.toLowerCase();
    if (!SHA256_PATTERN.test(hash)) throw new HttpError(400, `'${sha256}' is not a SHA-256 (64 hexadecimal digits)`);
    const found = this.context.store.artifactsWithHash(hash);
    return {
      page: 'hash', title: `SHA-256 ${hash.slice(0, 12)}…`,
      model: { sha256: hash, found: found.map((entry) => ({ ...entry, run: runView(entry.run), sizeText: formatBytes(entry.size) })) },
      json: { sha256: hash, artifacts: found.map((entry) => ({ run: entry.run, path: entry.path, size: entry.size })) },
    };
  }

  private workers(): Answer {
    // Every worker, idle or busy, heartbeats each period: late after 1.5 periods of silence, gone
    // after 3 (its run is queued again); gone ones are listed until --forget-workers-after.
    const workers = this.context.dispatcher.listAll();
    return {
      page: 'workers', title: 'Workers',
      model: {
        workers: workers.map((worker) => ({ ...worker, progressText: worker.progress === null || worker.progress === undefined ? null : formatProgress(worker.progress) })),
        none: workers.length === 0,
        forget: formatDuration(this.context.options.forgetWorkersSeconds),
      },
      json: { workers },
    };
  }

  private queue(): Answer {
    const { store } = this.context;
    const queues = queuesWithReasons(this.context);
    const running = store.runsInState('running');
    const platforms = [...new Set([...Object.keys(queues), ...running.map((run) => run.platform)])].sort();
    return {
      page: 'queue', title: 'Queue',
      model: {
        platforms: platforms.map((platform) => ({
          platform, dropped: store.isDropped(platform),
          running: running.filter((run) => run.platform === platform).map(runView),
          queued: (queues[platform] ?? []).map((entry, index) => ({ ...entry, position: index + 1 })),
        })),
        empty: platforms.length === 0,
      },
      json: { queues, running, dropped: store.droppedPlatforms() },
    };
  }
}
