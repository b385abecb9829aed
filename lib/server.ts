/**
 * builder-server: accepts connections, checks each one's hello, and hands clients to the request
 * handlers (server-requests.ts) and workers to the dispatcher (server-workers.ts). It owns the state
 * directory: the SQLite store, console logs and artifact files.
 */
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import path from 'node:path';
import { Connection, formatAddress, parseAddress } from '../protocol/connection.js';
import { DEFAULT_MAX_FRAME_BYTES } from '../protocol/frame.js';
import { ClientMessage, Hello, PROTOCOL_VERSION, parseWith } from '../protocol/messages.js';
import { ArtifactFiles } from './artifact-files.js';
import { type Identity, OPEN_IDENTITY, REQUIRED_ROLE, Tokens, allows, isLoopback } from './auth.js';
import { ConsoleStore } from './console-log.js';
import { type Logger, stderrLogger } from './log.js';
import { Notifier } from './notifier.js';
import { ObserverHub } from './observers.js';
import { Retention } from './retention.js';
import { Scheduler } from './scheduler.js';
import { handleClientMessage } from './server-requests.js';
import { Dispatcher } from './server-workers.js';
import { Store } from './store.js';
import { Templates } from './templates.js';
import { type RunningWeb, startWeb } from './web.js';
import { SOFTWARE } from './version.js';

export interface ServerOptions {
  listen: string;
  stateDir: string;
  templatesDir: string;
  /** Default job timeout; a job may set its own. */
  jobTimeoutSeconds: number;
  /** Workers heartbeat this often while running; three missed beats mean the worker is lost. */
  heartbeatSeconds: number;
  /** A connection that has not said hello after this long is closed. */
  helloTimeoutSeconds: number;
  maxFrameBytes: number;
  /** Unsent bytes an observer may have before it goes back to reading the console file. */
  observerBacklogBytes: number;
  /** Largest single artifact file accepted. */
  maxArtifactBytes: number;
  /** Most artifact bytes one run may upload in all. */
  maxRunArtifactBytes: number;
  /** Longest console line kept whole (longer ones are cut, saying so). */
  maxLineBytes: number;
  /** Most console bytes kept per run (beyond, output is dropped, saying so once). */
  maxConsoleBytes: number;
  /** Most simultaneous connections from one IP address. */
  maxConnectionsPerAddress: number;
  /** Below this much free space in the state directory, no new work is accepted. */
  minFreeBytes: number;
  /** fsync every commit (synchronous = FULL) instead of relying on WAL + NORMAL. */
  strict: boolean;
  /** HOST:PORT for the read-only web view, or null for none. */
  http: string | null;
  /** Certificate and key (PEM) for TLS on the builder port and the web view; null: plain. */
  tls: { cert: Buffer; key: Buffer } | null;
  /** Listen beyond loopback without TLS (a trusted network only). */
  allowPlaintext: boolean;
  /** Finished runs kept per job (a job may set its own); 0 keeps all. */
  keepRuns: number;
  /** How often free database pages are handed back to the file system. */
  vacuumIntervalSeconds: number;
  /** Gone workers are listed (workers, the web view) this long, then forgotten. */
  forgetWorkersSeconds: number;
  /** Webhook URLs told about every run's events, besides each job's own. */
  notify: string[];
  /** Key for the HMAC-SHA256 signature of webhook bodies; null: unsigned. */
  notifySecret: Buffer | null;
  /** Attempts per webhook delivery before it is recorded as failed. */
  notifyAttempts: number;
  /** Wait after the first failed attempt; doubled after each further one (at most 1 hour). */
  notifyBackoffMs: number;
  /** Base of the links in webhook bodies (the web view's address); null: derived from --http. */
  publicUrl: string | null;
  log: Logger;
}

export const DEFAULT_SERVER_OPTIONS: Omit<ServerOptions, 'stateDir' | 'templatesDir'> = {
  listen: '127.0.0.1:1234',
  jobTimeoutSeconds: 3600,
  heartbeatSeconds: 10,
  helloTimeoutSeconds: 10,
  maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
  observerBacklogBytes: 8 * 1024 * 1024,
  maxArtifactBytes: 64 * 1024 * 1024 * 1024,
  maxRunArtifactBytes: 256 * 1024 * 1024 * 1024,
  maxLineBytes: 64 * 1024,
  maxConsoleBytes: 1024 * 1024 * 1024,
  maxConnectionsPerAddress: 256,
  minFreeBytes: 64 * 1024 * 1024,
  strict: false,
  http: null,
  tls: null,
  allowPlaintext: false,
  keepRuns: 0,
  vacuumIntervalSeconds: 3600,
  forgetWorkersSeconds: 3600,
  notify: [],
  notifySecret: null,
  notifyAttempts: 8,
  notifyBackoffMs: 2000,
  publicUrl: null,
  log: stderrLogger,
};

/** Everything a handler needs; one per running server. */
export interface ServerContext {
  options: ServerOptions;
  store: Store;
  consoles: ConsoleStore;
  artifacts: ArtifactFiles;
  templates: Templates;
  hub: ObserverHub;
  scheduler: Scheduler;
  dispatcher: Dispatcher;
  retention: Retention;
  tokens: Tokens;
  notifier: Notifier;
  /** Where the web view listens, once it does. */
  webAddress: string | null;
  log: Logger;
}

export interface RunningServer {
  /** The address actually listened on, e.g. 127.0.0.1:40123 when started with port 0. */
  address: string;
  /** Where the web view listens, or null without --http. */
  webAddress: string | null;
  context: ServerContext;
  close(): Promise<void>;
}

/** Refuses a plaintext listener beyond loopback unless --allow-plaintext says the network is trusted. */
export function plaintextProblem(what: string, listen: string, options: Pick<ServerOptions, 'tls' | 'allowPlaintext'>): string | null {
  if (options.tls !== null || options.allowPlaintext || isLoopback(parseAddress(listen).host)) return null;
  return `refusing to serve ${what} on ${listen} without TLS: anyone on the network could read tokens and run code on the workers; `
    + 'give --tls-cert FILE --tls-key FILE, or --allow-plaintext if this network is trusted';
}

export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const log = options.log;
  const refused = plaintextProblem('the builder protocol', options.listen, options)
    ?? (options.http === null ? null : plaintextProblem('the web view', options.http, options));
  if (refused !== null) throw new Error(refused);
  fs.mkdirSync(options.stateDir, { recursive: true });
  const store = new Store(path.join(options.stateDir, 'builder.sqlite'), { strict: options.strict, keepRuns: options.keepRuns });
  const consoles = new ConsoleStore(path.join(options.stateDir, 'console'), options.strict);
  const artifacts = new ArtifactFiles(path.join(options.stateDir, 'artifacts'), options.strict);
  const templates = new Templates(options.templatesDir);
  const hub = new ObserverHub(consoles, { maxBacklogBytes: options.observerBacklogBytes });
  const tokens = new Tokens(options.stateDir);
  const context = { options, store, consoles, artifacts, templates, hub, tokens, log, webAddress: null } as ServerContext;
  context.notifier = new Notifier(context);
  store.onRunEvent = (event, uuid) => context.notifier.record(event, uuid);
  context.dispatcher = new Dispatcher(context);
  context.scheduler = new Scheduler(store, (runs) => context.dispatcher.queued(runs),
    (error) => log('error', { during: 'scheduling', problem: error.message }));

  context.retention = new Retention(context);
  context.dispatcher.recoverInterrupted();
  context.retention.start(options.vacuumIntervalSeconds);
  context.scheduler.rearm();

  const connections = new Set<Connection>();
  const perAddress = new Map<string, number>();
  const onSocket = (socket: net.Socket): void => {
    const conn = new Connection(socket, options.maxFrameBytes);
    const from = socket.remoteAddress ?? '?';
    const count = (perAddress.get(from) ?? 0) + 1;
    perAddress.set(from, count);
    socket.once('close', () => {
      const left = (perAddress.get(from) ?? 1) - 1;
      if (left <= 0) perAddress.delete(from);
      else perAddress.set(from, left);
    });
    if (count > options.maxConnectionsPerAddress) {
      log('refuse', { peer: conn.peer, reason: 'too many connections from this address' });
      conn.fail(`too many connections from ${from}: at most ${options.maxConnectionsPerAddress} at once (--max-connections-per-address)`);
      return;
    }
    connections.add(conn);
    accept(context, conn, () => connections.delete(conn));
  };
  const server = options.tls === null ? net.createServer(onSocket) : tls.createServer({ cert: options.tls.cert, key: options.tls.key }, onSocket);
  // A peer that does not speak TLS (or distrusts our certificate) fails here, before any hello.
  server.on('tlsClientError', (error: Error, socket: tls.TLSSocket) => {
    log('error', { peer: `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`, problem: `TLS handshake failed: ${(error as NodeJS.ErrnoException).code ?? error.message}` });
  });
  const { host, port } = parseAddress(options.listen);
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => {
      reject(new Error(error.code === 'EADDRINUSE'
        ? `cannot listen on ${options.listen}: the address is already in use (is another builder-server running? choose another with --listen)`
        : `cannot listen on ${options.listen}: ${error.message}`));
    });
    server.listen({ host, port }, () => resolve());
  });
  const bound = server.address() as net.AddressInfo;
  const address = formatAddress(bound.address, bound.port);
  log('listening', { address, tls: options.tls === null ? 'off' : 'on', state: options.stateDir, templates: options.templatesDir, schema: store.schemaVersion });
  const tokenCount = tokens.count;
  if (tokenCount === 0) log('open', { note: 'no tokens: every loopback connection may do anything, others are refused; add one with builder-server token add' });
  else log('auth', { tokens: tokenCount });
  let web: RunningWeb | null = null;
  if (options.http !== null) {
    try {
      web = await startWeb(context, options.http);
      context.webAddress = web.address;
    } catch (error) {
      server.close();
      store.close();
      throw error;
    }
  }

  context.notifier.start();
  return {
    address,
    webAddress: web?.address ?? null,
    context,
    async close() {
      context.notifier.stop();
      await web?.close();
      context.retention.stop();
      context.scheduler.stop();
      context.dispatcher.stop();
      for (const conn of connections) conn.socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      store.close();
      tokens.close();
    },
  };
}

/** Waits for a connection's hello, then hands it to the client or worker side. */
function accept(context: ServerContext, conn: Connection, forget: () => void): void {
  const { log, options } = context;
  log('connect', { peer: conn.peer });
  let role: 'hello' | 'refused' | 'client' | 'worker' = 'hello';
  let identity: Identity = OPEN_IDENTITY;
  let onWorkerMessage: ((value: unknown) => void) | null = null;
  let onWorkerClose: ((reason: string) => void) | null = null;
  const helloTimer = setTimeout(() => {
    log('error', { peer: conn.peer, problem: 'no hello in time' });
    conn.fail(`no hello within ${options.helloTimeoutSeconds}s: the first message on a connection must be a hello`);
  }, options.helloTimeoutSeconds * 1000);

  conn.start({
    message(value) {
      if (role === 'client') {
        const parsed = parseWith(ClientMessage, value);
        if (!parsed.ok) {
          log('error', { peer: conn.peer, problem: parsed.error });
          const id = typeof value === 'object' && value !== null && 'id' in value && typeof value.id === 'number' ? value.id : null;
          if (id !== null && Number.isInteger(id) && id >= 0) conn.send({ type: 'failure', id, message: parsed.error });
          else conn.fail(parsed.error);
          return;
        }
        const problem = permissionProblem(context, identity, parsed.message.type);
        if (problem !== null) {
          log('refuse', { peer: conn.peer, token: identity.name ?? '-', request: parsed.message.type, reason: problem.message });
          // A revoked token, or a token-less connection once tokens exist, is done for: close it.
          if (problem.fatal) conn.fail(problem.message);
          else conn.send({ type: 'failure', id: parsed.message.id, message: problem.message });
          return;
        }
        handleClientMessage(context, conn, parsed.message, identity).catch((error: Error) => {
          log('error', { peer: conn.peer, request: parsed.message.type, problem: error.stack ?? error.message });
          conn.send({ type: 'failure', id: parsed.message.id, message: `internal error: ${error.message}` });
        });
        return;
      }
      if (role === 'worker') {
        onWorkerMessage?.(value);
        return;
      }
      if (role === 'refused') return;
      clearTimeout(helloTimer);
      // The version is compared before the rest of the hello is validated: a peer of another version
      // may shape its hello differently, and deserves the version sentence, not a schema error.
      const claimed = typeof value === 'object' && value !== null && 'type' in value && value.type === 'hello' && 'version' in value ? value.version : undefined;
      if (typeof claimed === 'number' && claimed !== PROTOCOL_VERSION) {
        const fields = value as { role?: unknown; software?: unknown };
        const role = typeof fields.role === 'string' ? fields.role.slice(0, 16) : 'peer';
        const software = typeof fields.software === 'string' ? fields.software.slice(0, 64) : 'unknown software';
        log('error', { peer: conn.peer, problem: 'protocol version mismatch', theirs: claimed, ours: PROTOCOL_VERSION });
        conn.fail(`protocol version mismatch: this server (${SOFTWARE}) speaks protocol version ${PROTOCOL_VERSION}, `
          + `the ${role} (${software}) speaks ${claimed}; use matching builder versions`);
        return;
      }
      const parsed = parseWith(Hello, value);
      if (!parsed.ok) {
        log('error', { peer: conn.peer, problem: parsed.error });
        conn.fail(`${parsed.error} (the first message must be a valid hello)`);
        return;
      }
      const hello = parsed.message;
      const who = authenticate(context, hello, conn.socket.remoteAddress ?? '');
      if (typeof who === 'string') {
        // Refused. A wrong token waits a little before it hears so, and never learns which part was
        // wrong: guessing stays slow.
        role = 'refused';
        log('refuse', { peer: conn.peer, role: hello.role, reason: who });
        setTimeout(() => conn.fail(who), hello.token === undefined ? 0 : BAD_TOKEN_DELAY_MS);
        return;
      }
      identity = who;
      conn.send({
        type: 'welcome', version: PROTOCOL_VERSION, software: SOFTWARE,
        heartbeatSeconds: options.heartbeatSeconds, maxFrameBytes: options.maxFrameBytes, features: ['progress', 'request-after-finished'],
      });
      if (hello.role === 'client') {
        role = 'client';
        log('hello', { peer: conn.peer, role: 'client', token: identity.name ?? '-', software: hello.software });
      } else {
        role = 'worker';
        const session = context.dispatcher.addWorker(conn, hello);
        onWorkerMessage = (v) => session.message(v);
        onWorkerClose = (reason) => session.closed(reason);
      }
    },
    close(reason) {
      clearTimeout(helloTimer);
      forget();
      context.hub.forget(conn);
      onWorkerClose?.(reason);
      log('disconnect', { peer: conn.peer, role, reason });
    },
  });
}

const BAD_TOKEN_DELAY_MS = 300;

/** Who a hello speaks for, or why it is refused (one line saying what to do). */
function authenticate(context: ServerContext, hello: Hello, address: string): Identity | string {
  const { tokens } = context;
  if (tokens.count === 0) {
    if (isLoopback(address)) return OPEN_IDENTITY;
    return 'this server has no tokens yet, so it accepts loopback connections only; '
      + 'create one on the server with builder-server token add NAME --role ROLE';
  }
  if (hello.token === undefined) {
    return 'this server requires a token: give --token-file FILE or set BUILDER_TOKEN';
  }
  const identity = tokens.check(hello.token);
  if (identity === null) return 'invalid token';
  if (hello.role === 'worker' && identity.role !== 'worker') return `token ${identity.name} has the ${identity.role} role; a worker needs a worker token`;
  if (hello.role === 'client' && identity.role === 'worker') return `token ${identity.name} is a worker token; clients need a viewer, operator or admin token`;
  return identity;
}

/**
 * Why this identity may not make this request now (null: it may). `fatal`: the connection itself
 * is no longer allowed (its token was revoked, or tokens now exist and it has none).
 */
function permissionProblem(context: ServerContext, identity: Identity, request: ClientMessage['type']): { message: string; fatal: boolean } | null {
  if (identity.name === null) {
    // Said hello before the first token existed: from now on, a token is needed like everyone else.
    return context.tokens.count === 0 ? null : { message: 'this server now requires a token: reconnect with --token-file FILE or BUILDER_TOKEN', fatal: true };
  }
  // Revoked, or its role changed, since the hello.
  const current = context.tokens.roleOf(identity.name);
  if (current === null) return { message: `token ${identity.name} was revoked`, fatal: true };
  const needed = REQUIRED_ROLE[request];
  if (allows({ name: identity.name, role: current }, needed)) return null;
  return { message: `permission denied: ${request} needs the ${needed} role or higher; token ${identity.name} has the ${current} role`, fatal: false };
}
