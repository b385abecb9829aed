import Database from 'better-sqlite3';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { thrown } from './unit-helpers.js';
import { type JobRecord, MIGRATIONS, Store, StoreError } from '../lib/store.js';
import type { Artifact, JobSource, Period } from '../protocol/types.js';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const SHA_A = 'a'.repeat(64);
const SHA_B = 'b'.repeat(64);
const SCRIPT: JobSource = { kind: 'script', script: 'make test' };

let dir: string;
let file: string;
const open: Store[] = [];

function openStore(options: { strict?: boolean; keepRuns?: number } = {}): Store {
  const store = new Store(file, options);
  open.push(store);
  return store;
}

function closeStore(store: Store): void {
  store.close();
  open.splice(open.indexOf(store), 1);
}

function job(name: string, overrides: Partial<JobRecord> = {}): JobRecord {
  return {
    name,
    platform: 'debian-12',
    source: SCRIPT,
    period: { kind: 'every', seconds: 86400 },
    nextDue: 1_000_000,
    timeoutSeconds: null,
    keepRuns: null,
    owner: null,
    requires: [],
    env: {},
    notify: [],
    createdAt: 1,
    ...overrides,
  };
}

/** Queues `name` via putJob and returns the uuid of its queued run. */
function put(store: Store, record: JobRecord, now = 10): string {
  const { enqueued } = store.putJob(record, false, now);
  if (enqueued === null) throw new Error('expected the job to be queued');
  return enqueued.uuid;
}

/** A raw database at schema `version`, made by the migrations as they shipped up to it. */
function databaseAtVersion(version: number): Database.Database {
  const raw = new Database(file);
  for (const migration of MIGRATIONS.slice(0, version)) {
    if (typeof migration === 'string') raw.exec(migration);
    else migration(raw);
  }
  raw.pragma(`user_version = ${version}`);
  return raw;
}

function order(store: Store, platform = 'debian-12'): string[] {
  return (store.queues()[platform] ?? []).map((entry) => entry.job);
}


beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'builder-store-test-'));
  file = path.join(dir, 'state.db');
});

afterEach(() => {
  for (const store of open.splice(0)) {
    try {
      store.close();
    } catch {
      // already closed
    }
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('opening and migrations', () => {
  it('runs the migrations on a new file and sets user_version to their number (6), in incremental auto-vacuum mode', () => {
    const store = openStore();
    expect(store.schemaVersion).toBe(6);
    expect(store.db.pragma('user_version', { simple: true })).toBe(6);
    expect(store.db.pragma('auto_vacuum', { simple: true })).toBe(2);
    const tables = (store.db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[])
      .map((row) => row.name);
    expect(tables).toEqual(['artifacts', 'deliveries', 'dropped_platforms', 'garbage', 'job_secrets', 'jobs', 'runs']);
    expect(fs.existsSync(file)).toBe(true);
  });

  it('uses WAL journaling, foreign keys, and NORMAL sync (FULL when strict)', () => {
    const store = openStore();
    expect(store.db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(store.db.pragma('foreign_keys', { simple: true })).toBe(1);
    expect(store.db.pragma('synchronous', { simple: true })).toBe(1);
    put(store, job('a'));
    expect(fs.existsSync(`${file}-wal`)).toBe(true);
    closeStore(store);
    const strict = openStore({ strict: true });
    expect(strict.db.pragma('synchronous', { simple: true })).toBe(2);
    expect(strict.db.pragma('journal_mode', { simple: true })).toBe('wal');
  });

  it('keeps the journal of the savepoints inside a group commit in memory, not in a temporary file', () => {
    const store = openStore();
    const uuids = Array.from({ length: 300 }, (_, i) => put(store, job(`many-${i}`)));
    // SQLite names its temporary files etilqs_*, and unlinks them at once: only an open descriptor shows one.
    const tempFiles = (): string[] => fs.readdirSync('/proc/self/fd').flatMap((fd) => {
      try {
        return [fs.readlinkSync(`/proc/self/fd/${fd}`)];
      } catch {
        return [];
      }
    }).filter((target) => target.includes('etilqs_'));
    const seen = store.batch(() => {
      // Each start and finish is a savepoint of the shared transaction, as in the server's group
      // commit; the first here changes many pages (SQLite spills a journal past 64 KiB to a file).
      store.batch(() => {
        for (const uuid of uuids) store.startRun(uuid, 'w1', SCRIPT, 'make test', 20);
      });
      for (const uuid of uuids) store.finishRun(uuid, { kind: 'exited', code: 0 }, 30);
      return tempFiles();
    });
    expect(seen).toEqual([]);
    expect(store.db.pragma('temp_store', { simple: true })).toBe(2);
    expect(store.getRun(uuids[299]!)?.outcome).toEqual({ kind: 'exited', code: 0 });
  });

  it('reopens an existing database keeping its data and version', () => {
    const first = openStore();
    const uuid = put(first, job('nightly'));
    closeStore(first);
    const second = openStore();
    expect(second.schemaVersion).toBe(6);
    expect(second.getJob('nightly')?.name).toBe('nightly');
    expect(second.getRun(uuid)?.state).toBe('queued');
  });

  it('does not re-run migrations on a database that has user_version 6', () => {
    // A database claiming to be at version 6 but without any tables: if the store ran the migrations
    // again the tables would appear.
    const raw = new Database(file);
    raw.pragma('user_version = 6');
    raw.close();
    const store = openStore();
    expect(store.schemaVersion).toBe(6);
    expect(store.db.prepare("SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table'").get()).toEqual({ n: 0 });
  });

  it('refuses a database with a newer schema version, saying a newer builder-server is needed, and leaves it alone', () => {
    const raw = new Database(file);
    raw.exec('CREATE TABLE future (x)');
    raw.pragma('user_version = 7');
    raw.close();
    const error = thrown(() => new Store(file));
    expect(error).toBeInstanceOf(Error);
    expect((error as Error).message).toBe(
      'the state database has schema version 7, newer than this builder-server knows (6); run a newer builder-server',
    );
    const check = new Database(file);
    expect(check.pragma('user_version', { simple: true })).toBe(7);
    expect((check.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[]).map((r) => r.name)).toEqual(['future']);
    check.close();
  });

  it('migration 5 stores the source summary info lists for the jobs a version 4 database already has', () => {
    const raw = databaseAtVersion(4);
    const insert = raw.prepare(`INSERT INTO jobs (name, platform, source, period, next_due, timeout_s, created_at) VALUES (?, 'debian-12', ?, '{"kind":"never"}', NULL, NULL, 1)`);
    insert.run('scripted', JSON.stringify({ kind: 'script', script: 'echo héllo\n' }));
    insert.run('templated', JSON.stringify({ kind: 'template', template: 'debian-package', vars: { repo: 'https://example.org/r.git' } }));
    raw.close();
    const store = openStore();
    expect(store.schemaVersion).toBe(6);
    expect(store.jobInfos(new Map()).map((info) => [info.name, info.source])).toEqual([
      ['scripted', { kind: 'script', bytes: 12, sha256: crypto.createHash('sha256').update('echo héllo\n').digest('hex') }],
      ['templated', { kind: 'template', template: 'debian-package', vars: { repo: 'https://example.org/r.git' } }],
    ]);
  });

  it('migration 6 keeps each queue in its order as runs, and cancels a queued run the old queue table had lost', () => {
    const raw = databaseAtVersion(5);
    const insertJob = raw.prepare(`INSERT INTO jobs (name, platform, source, period, next_due, timeout_s, created_at) VALUES (?, ?, '{"kind":"script","script":"true"}', '{"kind":"never"}', NULL, NULL, 1)`);
    const insertRun = raw.prepare(`INSERT INTO runs (uuid, job, platform, state, queued_at, started_at, worker, finished_at, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`);
    const insertQueue = raw.prepare('INSERT INTO queue (run_uuid, job, platform, position) VALUES (?, ?, ?, ?)');
    const uuid = (n: number): string => `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`;
    // Queued in the order b, a, c on debian-12 (b was put at the front: a negative position), d on
    // freebsd-14; e is queued but has no queue row; f runs; g finished.
    for (const [n, name, platform, position] of [[1, 'a', 'debian-12', 0], [2, 'b', 'debian-12', -1], [3, 'c', 'debian-12', 1], [4, 'd', 'freebsd-14', 0]] as const) {
      insertJob.run(name, platform);
      insertRun.run(uuid(n), name, platform, 'queued', 100 + n, null, null, null, null);
      insertQueue.run(uuid(n), name, platform, position);
    }
    for (const name of ['e', 'f', 'g']) insertJob.run(name, 'debian-12');
    insertRun.run(uuid(5), 'e', 'debian-12', 'queued', 105, null, null, null, null);
    insertRun.run(uuid(6), 'f', 'debian-12', 'running', 106, 200, 'w1', null, null);
    insertRun.run(uuid(7), 'g', 'debian-12', 'finished', 107, 200, 'w1', 300, '{"kind":"exited","code":0}');
    raw.close();

    const store = openStore();
    expect(store.schemaVersion).toBe(6);
    expect(store.integrityCheck()).toBe('ok');
    expect(order(store)).toEqual(['b', 'a', 'c']);
    expect(order(store, 'freebsd-14')).toEqual(['d']);
    expect(store.queuedPlatforms().sort()).toEqual(['debian-12', 'freebsd-14']);
    const lost = store.getRun(uuid(5));
    expect(lost?.state).toBe('finished');
    expect(lost?.outcome).toEqual({ kind: 'cancelled', message: 'queued, but missing from the queue when the store was upgraded' });
    expect(store.runsInState('running').map((run) => run.uuid)).toEqual([uuid(6)]);
    expect(store.runsInState('queued').map((run) => run.uuid)).toEqual([uuid(1), uuid(2), uuid(3), uuid(4)]);
    expect(store.getRun(uuid(7))?.outcome).toEqual({ kind: 'exited', code: 0 });
    // The queue goes on from the positions it had: the front before b, the back after c, and a job
    // already waiting is not queued twice.
    expect(store.enqueue('e', true, 400).fresh).toBe(true);
    expect(store.enqueue('g', false, 400).fresh).toBe(true);
    expect(store.enqueue('a', false, 400)).toEqual({ uuid: uuid(1), job: 'a', platform: 'debian-12', fresh: false });
    expect(order(store)).toEqual(['e', 'b', 'a', 'c', 'g']);
    expect(store.nextFor('debian-12', [])?.job.name).toBe('e');
  });

  it('has exactly the indexes on runs that the queue and info need, and its queue queries use the partial ones', () => {
    const indexes = (store: Store): string[] => (store.db.prepare(`SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs'
      AND name NOT LIKE 'sqlite_autoindex%' ORDER BY name`).all() as { name: string }[]).map((row) => row.name);
    const plan = (store: Store, sql: string): string => (store.db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all() as { detail: string }[])
      .map((row) => row.detail).join('; ');
    const expected = ['runs_job', 'runs_job_finished', 'runs_queue', 'runs_queued_at', 'runs_queued_job', 'runs_running'];
    const fresh = openStore();
    expect(indexes(fresh)).toEqual(expected);
    closeStore(fresh);
    fs.rmSync(file);
    // The same after migration 6 from version 5 (runs_state gone).
    databaseAtVersion(5).close();
    const migrated = openStore();
    expect(indexes(migrated)).toEqual(expected);
    // A partial index is used only when a query states its condition: these must never scan the history.
    expect(plan(migrated, `SELECT 1 FROM runs WHERE platform = 'p' AND state = 'queued' LIMIT 1`)).toContain('runs_queue');
    expect(plan(migrated, `SELECT uuid FROM runs WHERE job = 'j' AND state = 'queued'`)).toContain('runs_queued_job');
    expect(plan(migrated, `SELECT * FROM runs WHERE state = 'running' ORDER BY started_at, queued_at`)).toContain('runs_running');
  });

  it('a run leaves its queue position behind when it starts, or is cancelled while queued', () => {
    const store = openStore();
    const started = put(store, job('started'));
    const cancelled = put(store, job('cancelled'));
    store.startRun(started, 'w1', SCRIPT, 'make test', 20);
    expect(store.cancelQueued(cancelled, 'no longer wanted', 30)).toBe(true);
    const positions = store.db.prepare('SELECT uuid, position FROM runs ORDER BY uuid').all() as { uuid: string; position: number | null }[];
    expect(positions.map((row) => row.position)).toEqual([null, null]);
  });

  it('integrityCheck() says ok', () => {
    const store = openStore();
    put(store, job('a'));
    expect(store.integrityCheck()).toBe('ok');
  });
});

describe('jobs', () => {
  it('putJob stores the job and queues it at once', () => {
    const store = openStore();
    const record = job('nightly', { source: { kind: 'template', template: 'opam', vars: { PKG: 'lwt' } }, period: { kind: 'cron', expression: '0 3 * * *' }, timeoutSeconds: 600 });
    const result = store.putJob(record, false, 50);
    expect(result.replaced).toBe(false);
    expect(result.enqueued).toEqual({ uuid: expect.stringMatching(UUID_RE), job: 'nightly', platform: 'debian-12', fresh: true });
    const uuid = result.enqueued?.uuid as string;
    expect(store.getJob('nightly')).toEqual(record);
    expect(store.listJobs()).toEqual([record]);
    expect(store.getRun(uuid)).toEqual({
      uuid, job: 'nightly', platform: 'debian-12', state: 'queued', worker: null,
      queuedAt: 50, startedAt: null, finishedAt: null, outcome: null, progress: null,
    });
    expect(store.queues()).toEqual({ 'debian-12': [{ uuid, job: 'nightly', queuedAt: 50 }] });
    expect(store.nextFor('debian-12', [])).toEqual({ uuid, job: record });
    expect(store.nextFor('freebsd-14', [])).toBeNull();
  });

  it('refuses a duplicate name without replace, with a StoreError, and changes nothing', () => {
    const store = openStore();
    const uuid = put(store, job('nightly'));
    const error = thrown(() => store.putJob(job('nightly', { source: { kind: 'script', script: 'other' } }), false, 60));
    expect(error).toBeInstanceOf(StoreError);
    expect((error as Error).message).toBe('job nightly already exists; give --replace to replace it');
    expect(store.getJob('nightly')?.source).toEqual(SCRIPT);
    expect(store.queues()).toEqual({ 'debian-12': [{ uuid, job: 'nightly', queuedAt: 10 }] });
    expect(store.runsOfJob('nightly', 10)).toHaveLength(1);
  });

  it('replace keeps the already-queued run (no second queue entry) and the original creation time', () => {
    const store = openStore();
    const uuid = put(store, job('nightly', { createdAt: 5 }));
    put(store, job('other'));
    const replacement = job('nightly', { source: { kind: 'script', script: 'new script' }, period: { kind: 'never' }, nextDue: null, createdAt: 99 });
    const result = store.putJob(replacement, true, 70);
    expect(result).toEqual({ replaced: true, enqueued: { uuid, job: 'nightly', platform: 'debian-12', fresh: false }, cancelled: null });
    expect(store.getJob('nightly')).toEqual({ ...replacement, createdAt: 5 });
    expect(store.queues()['debian-12']?.map((entry) => entry.uuid)).toEqual([uuid, expect.any(String)]);
    expect(order(store)).toEqual(['nightly', 'other']);
    expect(store.runsOfJob('nightly', 10)).toHaveLength(1);
  });

  it('replace of a job that is not queued queues it again', () => {
    const store = openStore();
    const uuid = put(store, job('nightly'));
    store.startRun(uuid, 'w1', SCRIPT, 'make test', 20);
    const result = store.putJob(job('nightly'), true, 30);
    expect(result.replaced).toBe(true);
    expect(result.enqueued?.fresh).toBe(true);
    expect(result.enqueued?.uuid).not.toBe(uuid);
    expect(store.getRun(uuid)?.state).toBe('running');
  });

  it('replace for another platform cancels the queued run and queues on the new platform', () => {
    const store = openStore();
    const uuid = put(store, job('nightly'));
    const result = store.putJob(job('nightly', { platform: 'freebsd-14' }), true, 80);
    expect(result.replaced).toBe(true);
    expect(result.enqueued).toEqual({ uuid: expect.stringMatching(UUID_RE), job: 'nightly', platform: 'freebsd-14', fresh: true });
    expect(result.enqueued?.uuid).not.toBe(uuid);
    expect(result.cancelled).toBe(uuid);
    expect(store.getRun(uuid)).toMatchObject({ state: 'finished', finishedAt: 80, outcome: { kind: 'cancelled', message: 'job replaced for another platform' } });
    expect(store.queues()).toEqual({ 'freebsd-14': [{ uuid: result.enqueued?.uuid, job: 'nightly', queuedAt: 80 }] });
  });

  it('deleteJob cancels the queued run and returns it', () => {
    const store = openStore();
    const uuid = put(store, job('nightly'));
    put(store, job('other'));
    expect(store.deleteJob('nightly', 90)).toEqual({ existed: true, cancelled: uuid });
    expect(store.getJob('nightly')).toBeNull();
    expect(store.getRun(uuid)).toMatchObject({ state: 'finished', finishedAt: 90, outcome: { kind: 'cancelled', message: 'job unscheduled' } });
    expect(order(store)).toEqual(['other']);
    expect(store.deleteJob('nightly', 91)).toEqual({ existed: false, cancelled: null });
  });

  it('deleteJob of a job that is running leaves the run alone', () => {
    const store = openStore();
    const uuid = put(store, job('nightly'));
    store.startRun(uuid, 'w1', SCRIPT, 'make test', 20);
    expect(store.deleteJob('nightly', 30)).toEqual({ existed: true, cancelled: null });
    expect(store.getRun(uuid)?.state).toBe('running');
  });

  it('setSchedule moves next_due and optionally the period', () => {
    const store = openStore();
    put(store, job('nightly'));
    expect(store.setSchedule('nightly', 5000, null)).toBe(true);
    expect(store.getJob('nightly')).toMatchObject({ nextDue: 5000, period: { kind: 'every', seconds: 86400 } });
    const period: Period = { kind: 'cron', expression: '*/5 * * * *' };
    expect(store.setSchedule('nightly', null, period)).toBe(true);
    expect(store.getJob('nightly')).toMatchObject({ nextDue: null, period });
    expect(store.setSchedule('missing', 1, null)).toBe(false);
  });
});

describe('queue', () => {
  it('enqueues at the back in order; execute (front) moves an already-queued job to the front', () => {
    const store = openStore();
    const a = put(store, job('a'));
    const b = put(store, job('b'));
    const c = put(store, job('c'));
    expect(order(store)).toEqual(['a', 'b', 'c']);
    expect(store.nextFor('debian-12', [])?.uuid).toBe(a);

    expect(store.enqueue('c', true, 100)).toEqual({ uuid: c, job: 'c', platform: 'debian-12', fresh: false });
    expect(order(store)).toEqual(['c', 'a', 'b']);
    expect(store.nextFor('debian-12', [])?.uuid).toBe(c);

    // back: an already-waiting job keeps its place
    expect(store.enqueue('a', false, 101)).toEqual({ uuid: a, job: 'a', platform: 'debian-12', fresh: false });
    expect(order(store)).toEqual(['c', 'a', 'b']);

    expect(store.enqueue('b', true, 102)).toEqual({ uuid: b, job: 'b', platform: 'debian-12', fresh: false });
    expect(order(store)).toEqual(['b', 'c', 'a']);
    // the queued time is the time it was first queued
    expect(store.queues()['debian-12']?.find((entry) => entry.uuid === b)?.queuedAt).toBe(10);
  });

  it('enqueue at the front of a job that is not queued puts a new run before the others', () => {
    const store = openStore();
    const a = put(store, job('a'));
    put(store, job('b'));
    store.cancelQueued(a, 'test', 20);
    expect(order(store)).toEqual(['b']);
    const again = store.enqueue('a', true, 30);
    expect(again).toEqual({ uuid: expect.stringMatching(UUID_RE), job: 'a', platform: 'debian-12', fresh: true });
    expect(again.uuid).not.toBe(a);
    expect(order(store)).toEqual(['a', 'b']);
    store.cancelQueued(again.uuid, 'test', 40);
    expect(store.enqueue('a', false, 50).fresh).toBe(true);
    expect(order(store)).toEqual(['b', 'a']);
  });

  it('never queues a job twice, however often it is enqueued', () => {
    const store = openStore();
    const uuid = put(store, job('a'));
    for (let i = 0; i < 5; i++) {
      expect(store.enqueue('a', i % 2 === 0, 20 + i).uuid).toBe(uuid);
      expect(store.putJob(job('a'), true, 30 + i).enqueued?.uuid).toBe(uuid);
    }
    expect(store.enqueueDue(Number.MAX_SAFE_INTEGER, () => null)).toEqual([]);
    expect(store.queues()).toEqual({ 'debian-12': [{ uuid, job: 'a', queuedAt: 10 }] });
    expect(store.runsOfJob('a', 100)).toHaveLength(1);
  });

  it('enqueue of an unknown job throws StoreError', () => {
    const store = openStore();
    const error = thrown(() => store.enqueue('ghost', false, 1));
    expect(error).toBeInstanceOf(StoreError);
    expect((error as Error).message).toBe('unknown job ghost');
  });

  it('keeps one queue per platform; queues() groups them by platform, each in order', () => {
    const store = openStore();
    const d1 = put(store, job('d1'), 1);
    const f1 = put(store, job('f1', { platform: 'freebsd-14' }), 2);
    const d2 = put(store, job('d2'), 3);
    const f2 = put(store, job('f2', { platform: 'freebsd-14' }), 4);
    store.enqueue('f2', true, 5);
    const a1 = put(store, job('a1', { platform: 'alpine-3' }), 6);
    const queues = store.queues();
    expect(Object.keys(queues)).toEqual(['alpine-3', 'debian-12', 'freebsd-14']);
    expect(queues).toEqual({
      'alpine-3': [{ uuid: a1, job: 'a1', queuedAt: 6 }],
      'debian-12': [{ uuid: d1, job: 'd1', queuedAt: 1 }, { uuid: d2, job: 'd2', queuedAt: 3 }],
      'freebsd-14': [{ uuid: f2, job: 'f2', queuedAt: 4 }, { uuid: f1, job: 'f1', queuedAt: 2 }],
    });
    expect(store.queuedPlatforms().sort()).toEqual(['alpine-3', 'debian-12', 'freebsd-14']);
    expect(store.nextFor('freebsd-14', [])?.uuid).toBe(f2);
    expect(store.nextFor('debian-12', [])?.uuid).toBe(d1);
  });

  it('cancelQueued cancels a queued run only', () => {
    const store = openStore();
    const a = put(store, job('a'));
    const b = put(store, job('b'));
    expect(store.cancelQueued(a, 'cancelled by alice', 40)).toBe(true);
    expect(store.getRun(a)).toMatchObject({ state: 'finished', finishedAt: 40, outcome: { kind: 'cancelled', message: 'cancelled by alice' } });
    expect(order(store)).toEqual(['b']);
    expect(store.cancelQueued(a, 'again', 41)).toBe(false);
    expect(store.getRun(a)?.outcome).toEqual({ kind: 'cancelled', message: 'cancelled by alice' });
    store.startRun(b, 'w1', SCRIPT, 'make', 50);
    expect(store.cancelQueued(b, 'too late', 51)).toBe(false);
    expect(store.getRun(b)?.state).toBe('running');
    expect(store.cancelQueued('00000000-0000-4000-8000-000000000000', 'x', 52)).toBe(false);
  });
});

describe('runs', () => {
  it('startRun takes the run off its queue and records it as running', () => {
    const store = openStore();
    const a = put(store, job('a'));
    const b = put(store, job('b'));
    const source: JobSource = { kind: 'template', template: 'opam', vars: { PKG: 'x' } };
    store.startRun(a, 'worker-7', source, '#!/bin/sh\nbuild x\n', 200);
    expect(order(store)).toEqual(['b']);
    expect(store.nextFor('debian-12', [])?.uuid).toBe(b);
    expect(store.getRun(a)).toEqual({
      uuid: a, job: 'a', platform: 'debian-12', state: 'running', worker: 'worker-7',
      queuedAt: 10, startedAt: 200, finishedAt: null, outcome: null, progress: null,
    });
    expect(store.runDetail(a)).toMatchObject({ script: '#!/bin/sh\nbuild x\n', source, consoleLines: 0, artifacts: [] });
    expect(store.runsInState('running').map((run) => run.uuid)).toEqual([a]);
    expect(store.runsInState('queued').map((run) => run.uuid)).toEqual([b]);
  });

  it('startRun of a run that is not queued throws and changes nothing', () => {
    const store = openStore();
    const a = put(store, job('a'));
    store.startRun(a, 'w1', SCRIPT, 'make', 20);
    expect(() => store.startRun(a, 'w2', SCRIPT, 'make', 30)).toThrow(`run ${a} is not queued`);
    expect(store.getRun(a)).toMatchObject({ worker: 'w1', startedAt: 20 });
  });

  it('batch commits many outcomes together; one the store refuses is rolled back alone', () => {
    for (const strict of [false, true]) {
      const store = openStore({ strict });
      const [a, b, c] = ['a', 'b', 'c'].map((name) => put(store, job(`${name}-${strict}`))) as [string, string, string];
      store.batch(() => {
        for (const uuid of [a, b, c]) store.startRun(uuid, 'w1', SCRIPT, 'make', 20);
      }, false);
      store.finishRun(b, { kind: 'exited', code: 7 }, 200);
      const failures = store.batch(() => [a, b, c].map((uuid, i) => {
        try {
          store.finishRun(uuid, { kind: 'exited', code: i }, 300, [{ path: `out-${i}`, size: 1, sha256: SHA_A }], i);
          return null;
        } catch (error) {
          return (error as Error).message;
        }
      }));
      // b had finished already: finishing it again is refused, and its artifact row goes with it.
      expect(failures).toEqual([null, `run ${b} is not queued or running`, null]);
      closeStore(store);
      // Committed: a fresh store on the same file sees both outcomes, and b's first one.
      const again = openStore({ strict });
      expect(again.getRun(a)).toMatchObject({ state: 'finished', outcome: { kind: 'exited', code: 0 } });
      expect(again.getRun(b)).toMatchObject({ state: 'finished', outcome: { kind: 'exited', code: 7 }, finishedAt: 200 });
      expect(again.getRun(c)).toMatchObject({ state: 'finished', outcome: { kind: 'exited', code: 2 } });
      expect(again.artifactsOf(b)).toEqual([]);
      expect(again.artifactsOf(c)).toEqual([{ path: 'out-2', size: 1, sha256: SHA_A }]);
      closeStore(again);
    }
  });

  it('finishRun stores the outcome, console line count and artifacts (listed by path)', () => {
    const store = openStore();
    const a = put(store, job('a'));
    store.startRun(a, 'w1', SCRIPT, 'make', 20);
    const artifacts: Artifact[] = [
      { path: 'z/last.txt', size: 5, sha256: SHA_A },
      { path: 'a.txt', size: 0, sha256: SHA_B },
      { path: 'm/ü.bin', size: 123456, sha256: SHA_A },
    ];
    store.finishRun(a, { kind: 'exited', code: 0 }, 300, artifacts, 42);
    expect(store.getRun(a)).toEqual({
      uuid: a, job: 'a', platform: 'debian-12', state: 'finished', worker: 'w1',
      queuedAt: 10, startedAt: 20, finishedAt: 300, outcome: { kind: 'exited', code: 0 }, progress: null,
    });
    const sorted = [...artifacts].sort((x, y) => (x.path < y.path ? -1 : 1));
    expect(store.artifactsOf(a)).toEqual(sorted);
    expect(store.artifactsOf(a).map((artifact) => artifact.path)).toEqual(['a.txt', 'm/ü.bin', 'z/last.txt']);
    expect(store.runDetail(a)).toMatchObject({ consoleLines: 42, artifacts: sorted, script: 'make', source: SCRIPT });
    expect(store.runsInState('running')).toEqual([]);
  });

  it('finishRun of a finished run throws StoreError and adds no artifacts', () => {
    const store = openStore();
    const a = put(store, job('a'));
    store.startRun(a, 'w1', SCRIPT, 'make', 20);
    store.finishRun(a, { kind: 'signalled', signal: 9 }, 30);
    const error = thrown(() => store.finishRun(a, { kind: 'exited', code: 0 }, 40, [{ path: 'x', size: 1, sha256: SHA_A }]));
    expect(error).toBeInstanceOf(StoreError);
    expect((error as Error).message).toBe(`run ${a} is not queued or running`);
    expect(store.getRun(a)).toMatchObject({ finishedAt: 30, outcome: { kind: 'signalled', signal: 9 } });
    expect(store.artifactsOf(a)).toEqual([]);
  });

  it('runDetail and getRun of an unknown run are null', () => {
    const store = openStore();
    expect(store.getRun('00000000-0000-4000-8000-000000000000')).toBeNull();
    expect(store.runDetail('00000000-0000-4000-8000-000000000000')).toBeNull();
  });

  it('loseRun records worker-lost and queues a NEW run at the front of the queue', () => {
    const store = openStore();
    const a = put(store, job('a'));
    put(store, job('b'));
    put(store, job('c'));
    store.startRun(a, 'w1', SCRIPT, 'make', 20);
    expect(order(store)).toEqual(['b', 'c']);
    const again = store.loseRun(a, 'worker w1 disconnected', 500, 17);
    expect(again).toEqual({ uuid: expect.stringMatching(UUID_RE), job: 'a', platform: 'debian-12', fresh: true });
    expect(again?.uuid).not.toBe(a);
    expect(store.getRun(a)).toMatchObject({ state: 'finished', finishedAt: 500, outcome: { kind: 'worker-lost', message: 'worker w1 disconnected' } });
    expect(store.runDetail(a)?.consoleLines).toBe(17);
    expect(order(store)).toEqual(['a', 'b', 'c']);
    expect(store.nextFor('debian-12', [])?.uuid).toBe(again?.uuid);
    expect(store.getRun(again?.uuid as string)).toMatchObject({ state: 'queued', queuedAt: 500 });
  });

  it('loseRun moves a job that is already queued again to the front instead of queuing it twice', () => {
    const store = openStore();
    const a = put(store, job('a'));
    store.startRun(a, 'w1', SCRIPT, 'make', 20);
    put(store, job('b'));
    const queuedAgain = store.enqueue('a', false, 30);
    expect(order(store)).toEqual(['b', 'a']);
    const again = store.loseRun(a, 'lost', 40, 0);
    expect(again).toEqual({ uuid: queuedAgain.uuid, job: 'a', platform: 'debian-12', fresh: false });
    expect(order(store)).toEqual(['a', 'b']);
  });

  it('loseRun returns null when the job was deleted meanwhile (and still records the lost run)', () => {
    const store = openStore();
    const a = put(store, job('a'));
    store.startRun(a, 'w1', SCRIPT, 'make', 20);
    store.deleteJob('a', 30);
    expect(store.loseRun(a, 'gone', 40, 3)).toBeNull();
    expect(store.getRun(a)).toMatchObject({ state: 'finished', outcome: { kind: 'worker-lost', message: 'gone' } });
    expect(store.queues()).toEqual({});
  });

  it('loseRun returns null when the platform was dropped meanwhile', () => {
    const store = openStore();
    const a = put(store, job('a'));
    store.startRun(a, 'w1', SCRIPT, 'make', 20);
    store.dropPlatform('debian-12', 25);
    expect(store.loseRun(a, 'gone', 40, 0)).toBeNull();
    expect(store.getRun(a)?.outcome).toEqual({ kind: 'worker-lost', message: 'gone' });
    expect(store.queues()).toEqual({});
  });

  it('loseRun of a run that is not running does nothing and returns null', () => {
    const store = openStore();
    const a = put(store, job('a'));
    expect(store.loseRun(a, 'x', 40, 0)).toBeNull();
    expect(store.getRun(a)?.state).toBe('queued');
    store.startRun(a, 'w1', SCRIPT, 'make', 50);
    store.finishRun(a, { kind: 'exited', code: 1 }, 60);
    expect(store.loseRun(a, 'x', 70, 0)).toBeNull();
    expect(store.getRun(a)?.outcome).toEqual({ kind: 'exited', code: 1 });
    expect(store.loseRun('00000000-0000-4000-8000-000000000000', 'x', 80, 0)).toBeNull();
    expect(order(store)).toEqual([]);
  });

  it('runsOfJob lists newest first, up to the limit', () => {
    const store = openStore();
    const first = put(store, job('a'), 100);
    put(store, job('b'), 101);
    store.startRun(first, 'w1', SCRIPT, 'make', 110);
    store.finishRun(first, { kind: 'exited', code: 0 }, 120);
    const second = store.enqueue('a', false, 200).uuid;
    store.startRun(second, 'w1', SCRIPT, 'make', 210);
    store.finishRun(second, { kind: 'exited', code: 2 }, 220);
    const third = store.enqueue('a', false, 300).uuid;
    expect(store.runsOfJob('a', 10).map((run) => run.uuid)).toEqual([third, second, first]);
    expect(store.runsOfJob('a', 2).map((run) => run.uuid)).toEqual([third, second]);
    expect(store.runsOfJob('a', 1)[0]).toMatchObject({ uuid: third, state: 'queued' });
    expect(store.runsOfJob('b', 10)).toHaveLength(1);
    expect(store.runsOfJob('nope', 10)).toEqual([]);
  });

  it('runsOfJob breaks ties of the same queued time by insertion order (newest first)', () => {
    const store = openStore();
    const first = put(store, job('a'), 100);
    store.cancelQueued(first, 'x', 100);
    const second = store.enqueue('a', false, 100).uuid;
    expect(store.runsOfJob('a', 10).map((run) => run.uuid)).toEqual([second, first]);
  });

  // latestRun originally used ?1/?2 placeholders, which better-sqlite3 binds only by name: every call threw
  // "Too many parameter values were provided" (fixed in f7b59fa); this test guards against that.
  it('latestRun finds the newest run, optionally of one job and/or platform', () => {
    const store = openStore();
    expect(store.latestRun(null, null)).toBeNull();
    const a = put(store, job('a'), 100);
    const f = put(store, job('f', { platform: 'freebsd-14' }), 200);
    const b = put(store, job('b'), 300);
    expect(store.latestRun(null, null)?.uuid).toBe(b);
    expect(store.latestRun('a', null)?.uuid).toBe(a);
    expect(store.latestRun(null, 'freebsd-14')?.uuid).toBe(f);
    expect(store.latestRun(null, 'debian-12')?.uuid).toBe(b);
    expect(store.latestRun('a', 'debian-12')?.uuid).toBe(a);
    expect(store.latestRun('a', 'freebsd-14')).toBeNull();
    expect(store.latestRun('nope', null)).toBeNull();
  });
});

describe('platforms', () => {
  it('dropPlatform cancels the queued runs of that platform only, and enqueue then refuses', () => {
    const store = openStore();
    const a = put(store, job('a'));
    const b = put(store, job('b'));
    const f = put(store, job('f', { platform: 'freebsd-14' }));
    const result = store.dropPlatform('debian-12', 60);
    expect(result.already).toBe(false);
    expect([...result.cancelled].sort()).toEqual([a, b].sort());
    for (const uuid of [a, b]) {
      expect(store.getRun(uuid)).toMatchObject({ state: 'finished', finishedAt: 60, outcome: { kind: 'cancelled', message: 'platform debian-12 dropped' } });
    }
    expect(store.queues()).toEqual({ 'freebsd-14': [{ uuid: f, job: 'f', queuedAt: 10 }] });
    expect(store.isDropped('debian-12')).toBe(true);
    expect(store.isDropped('freebsd-14')).toBe(false);
    expect(store.droppedPlatforms()).toEqual(['debian-12']);

    const error = thrown(() => store.enqueue('a', true, 70));
    expect(error).toBeInstanceOf(StoreError);
    expect((error as Error).message).toBe('platform debian-12 is dropped; run undrop-platform debian-12 first');
    expect(store.queues()['debian-12']).toBeUndefined();

    expect(store.dropPlatform('debian-12', 80)).toEqual({ already: true, cancelled: [] });
  });

  it('putJob for a dropped platform stores the job but queues nothing', () => {
    const store = openStore();
    store.dropPlatform('windows-11', 1);
    const result = store.putJob(job('w', { platform: 'windows-11' }), false, 10);
    expect(result).toEqual({ replaced: false, enqueued: null, cancelled: null });
    expect(store.getJob('w')?.platform).toBe('windows-11');
    expect(store.queues()).toEqual({});
    expect(store.runsOfJob('w', 10)).toEqual([]);
  });

  it('undropPlatform lets the platform queue again', () => {
    const store = openStore();
    store.dropPlatform('debian-12', 1);
    store.dropPlatform('alpine-3', 1);
    store.putJob(job('a'), false, 10);
    expect(store.undropPlatform('debian-12')).toBe(true);
    expect(store.undropPlatform('debian-12')).toBe(false);
    expect(store.isDropped('debian-12')).toBe(false);
    expect(store.droppedPlatforms()).toEqual(['alpine-3']);
    expect(store.enqueue('a', false, 20).fresh).toBe(true);
    expect(order(store)).toEqual(['a']);
  });
});

describe('schedules', () => {
  it('earliestDue is the smallest next_due, ignoring jobs that are never due', () => {
    const store = openStore();
    expect(store.earliestDue()).toBeNull();
    put(store, job('never', { period: { kind: 'never' }, nextDue: null }));
    expect(store.earliestDue()).toBeNull();
    put(store, job('late', { nextDue: 9000 }));
    put(store, job('soon', { nextDue: 3000 }));
    expect(store.earliestDue()).toBe(3000);
    store.setSchedule('soon', null, { kind: 'never' });
    expect(store.earliestDue()).toBe(9000);
  });

  it('enqueueDue queues the due jobs, moves every due schedule via the callback, and skips what is not due', () => {
    const store = openStore();
    // putJob queues at once; take those runs off the queue so that enqueueDue has something to do
    for (const [name, due] of [['a', 100], ['b', 200], ['c', 300], ['z', 250]] as const) {
      store.cancelQueued(put(store, job(name, { nextDue: due })), 'setup', 1);
    }
    put(store, job('n', { period: { kind: 'never' }, nextDue: null }));
    const seen: [string, number | null][] = [];
    const queued = store.enqueueDue(250, (record) => {
      seen.push([record.name, record.nextDue]);
      return (record.nextDue as number) + 1000;
    });
    expect(seen).toEqual([['a', 100], ['b', 200], ['z', 250]]);
    expect(queued).toEqual([
      { uuid: expect.stringMatching(UUID_RE), job: 'a', platform: 'debian-12', fresh: true },
      { uuid: expect.stringMatching(UUID_RE), job: 'b', platform: 'debian-12', fresh: true },
      { uuid: expect.stringMatching(UUID_RE), job: 'z', platform: 'debian-12', fresh: true },
    ]);
    expect(order(store)).toEqual(['n', 'a', 'b', 'z']);
    expect(store.queues()['debian-12']?.slice(1).map((entry) => entry.queuedAt)).toEqual([250, 250, 250]);
    expect(store.getJob('a')?.nextDue).toBe(1100);
    expect(store.getJob('b')?.nextDue).toBe(1200);
    expect(store.getJob('z')?.nextDue).toBe(1250);
    expect(store.getJob('c')?.nextDue).toBe(300);
    expect(store.getJob('n')?.nextDue).toBeNull();
    expect(store.earliestDue()).toBe(300);
  });

  it('enqueueDue skips jobs already queued but still moves their next_due', () => {
    const store = openStore();
    const a = put(store, job('a', { nextDue: 100 }));
    const queued = store.enqueueDue(150, () => 5000);
    expect(queued).toEqual([]);
    expect(store.getJob('a')?.nextDue).toBe(5000);
    expect(store.queues()).toEqual({ 'debian-12': [{ uuid: a, job: 'a', queuedAt: 10 }] });
  });

  it('enqueueDue queues a job whose previous run is still running', () => {
    const store = openStore();
    const a = put(store, job('a', { nextDue: 100 }));
    store.startRun(a, 'w1', SCRIPT, 'make', 50);
    const queued = store.enqueueDue(150, () => 5000);
    expect(queued).toHaveLength(1);
    expect(queued[0]?.uuid).not.toBe(a);
  });

  it('enqueueDue skips dropped platforms but still moves their next_due', () => {
    const store = openStore();
    store.dropPlatform('windows-11', 1);
    store.putJob(job('w', { platform: 'windows-11', nextDue: 100 }), false, 10);
    expect(store.enqueueDue(150, () => 7000)).toEqual([]);
    expect(store.getJob('w')?.nextDue).toBe(7000);
    expect(store.queues()).toEqual({});
  });

  it('enqueueDue can set a schedule to never due (callback returns null)', () => {
    const store = openStore();
    store.cancelQueued(put(store, job('once', { nextDue: 100 })), 'setup', 1);
    expect(store.enqueueDue(100, () => null).map((entry) => entry.job)).toEqual(['once']);
    expect(store.getJob('once')?.nextDue).toBeNull();
    expect(store.earliestDue()).toBeNull();
    expect(store.enqueueDue(1_000_000, () => { throw new Error('not called'); })).toEqual([]);
  });
});

describe('durability across restarts', () => {
  it('keeps jobs, schedules, queues, runs, artifacts and dropped platforms when closed and reopened', () => {
    const first = openStore();
    const template: JobSource = { kind: 'template', template: 'opam', vars: { PKG: 'lwt', V: '5' } };
    put(first, job('a', { source: template, period: { kind: 'cron', expression: '0 3 * * *' }, nextDue: 111, timeoutSeconds: 60 }), 10);
    const bUuid = put(first, job('b', { nextDue: 222 }), 11);
    put(first, job('c', { period: { kind: 'never' }, nextDue: null }), 12);
    put(first, job('f', { platform: 'freebsd-14' }), 13);
    const aUuid = first.nextFor('debian-12', [])?.uuid as string;
    first.startRun(aUuid, 'w1', template, 'rendered script', 20);
    first.finishRun(aUuid, { kind: 'exited', code: 0 }, 30, [{ path: 'out.tar', size: 10, sha256: SHA_A }, { path: 'log.txt', size: 2, sha256: SHA_B }], 5);
    first.startRun(bUuid, 'w2', SCRIPT, 'make test', 40);
    const lostAgain = first.loseRun(bUuid, 'no heartbeat', 50, 3);
    first.enqueue('a', true, 60);
    first.dropPlatform('freebsd-14', 70);
    first.dropPlatform('windows-11', 71);

    const snapshot = (store: Store) => ({
      jobs: store.listJobs(),
      queues: store.queues(),
      dropped: store.droppedPlatforms(),
      earliest: store.earliestDue(),
      runs: ['a', 'b', 'c', 'f'].map((name) => store.runsOfJob(name, 100)),
      details: ['a', 'b', 'c', 'f'].flatMap((name) => store.runsOfJob(name, 100)).map((run) => store.runDetail(run.uuid)),
      running: store.runsInState('running'),
      front: store.nextFor('debian-12', []),
    });
    const before = snapshot(first);
    expect(before.queues).toEqual({
      'debian-12': [
        { uuid: expect.any(String), job: 'a', queuedAt: 60 },
        { uuid: lostAgain?.uuid, job: 'b', queuedAt: 50 },
        { uuid: expect.any(String), job: 'c', queuedAt: 12 },
      ],
    });
    expect(before.dropped).toEqual(['freebsd-14', 'windows-11']);
    expect(before.details.find((detail) => detail?.uuid === aUuid)).toMatchObject({
      script: 'rendered script', source: template, consoleLines: 5,
      artifacts: [{ path: 'log.txt', size: 2, sha256: SHA_B }, { path: 'out.tar', size: 10, sha256: SHA_A }],
    });
    closeStore(first);

    const second = openStore();
    expect(snapshot(second)).toEqual(before);
    expect(second.integrityCheck()).toBe('ok');
    // and it keeps working: the restored queue hands out the same front run
    const front = second.nextFor('debian-12', []);
    expect(front?.job.name).toBe('a');
    second.startRun(front?.uuid as string, 'w3', template, 'x', 80);
    expect(order(second)).toEqual(['b', 'c']);
    closeStore(second);

    const third = openStore();
    expect(third.getRun(front?.uuid as string)).toMatchObject({ state: 'running', worker: 'w3', startedAt: 80 });
    expect(order(third)).toEqual(['b', 'c']);
  });

  it('a failed transaction leaves nothing behind after a restart', () => {
    const first = openStore();
    put(first, job('a'));
    expect(() => first.putJob(job('a'), false, 20)).toThrow(StoreError);
    closeStore(first);
    const second = openStore();
    expect(second.runsOfJob('a', 10)).toHaveLength(1);
    expect(second.listJobs()).toHaveLength(1);
  });
});

describe('retention', () => {
  /** Runs job `name` once to completion with these artifacts; returns the run's uuid. */
  function runOnce(store: Store, name: string, now: number, artifacts: { path: string; size: number; sha256: string }[] = []): string {
    const uuid = store.enqueue(name, false, now).uuid;
    store.startRun(uuid, 'w1', SCRIPT, 'make', now + 1);
    store.finishRun(uuid, { kind: 'exited', code: 0 }, now + 2, artifacts);
    return uuid;
  }
  const SHA = (n: number): string => n.toString(16).padStart(64, '0');

  it('keeps the newest N finished runs of a job, lists the removed files as garbage, and keeps shared hashes', () => {
    const store = openStore({ keepRuns: 2 });
    store.putJob(job('a', { nextDue: null, period: { kind: 'never' } }), false, 1);
    const first = store.queues()['debian-12']?.[0]?.uuid ?? '';
    store.startRun(first, 'w1', SCRIPT, 'make', 2);
    store.finishRun(first, { kind: 'exited', code: 0 }, 3, [{ path: 'shared', size: 1, sha256: SHA(1) }, { path: 'own', size: 1, sha256: SHA(2) }]);
    const second = runOnce(store, 'a', 10, [{ path: 'shared', size: 1, sha256: SHA(1) }, { path: 'own', size: 1, sha256: SHA(3) }]);
    expect(store.garbage()).toEqual({ artifacts: [], consoles: [], referenced: [] });
    const third = runOnce(store, 'a', 20, [{ path: 'shared', size: 1, sha256: SHA(1) }]);
    // The first run is gone with its rows; its own file is garbage, the shared one still in use.
    expect(store.runsOfJob('a', 10).map((run) => run.uuid)).toEqual([third, second]);
    expect(store.getRun(first)).toBeNull();
    expect(store.artifactsOf(first)).toEqual([]);
    expect(store.garbage()).toEqual({ artifacts: [SHA(2)], consoles: [first], referenced: [SHA(1)] });
    store.clearGarbage('artifact', [SHA(2), SHA(1)]);
    store.clearGarbage('console', [first]);
    expect(store.garbage()).toEqual({ artifacts: [], consoles: [], referenced: [] });
  });

  it('lists what is added after the list was found empty, and what is listed again after a restart', () => {
    const store = openStore();
    expect(store.garbage()).toEqual({ artifacts: [], consoles: [], referenced: [] });
    store.addGarbage('artifact', [SHA(7)]);
    expect(store.garbage()).toEqual({ artifacts: [SHA(7)], consoles: [], referenced: [] });
    closeStore(store);
    // Left listed by a server that stopped before deleting it: found by the next one.
    const again = openStore();
    expect(again.garbage()).toEqual({ artifacts: [SHA(7)], consoles: [], referenced: [] });
  });

  it('a job may keep its own number; queued and running runs are never removed', () => {
    const store = openStore({ keepRuns: 5 });
    store.putJob(job('b', { keepRuns: 1, nextDue: null, period: { kind: 'never' } }), false, 1);
    const queuedFirst = store.queues()['debian-12']?.[0]?.uuid ?? '';
    store.startRun(queuedFirst, 'w1', SCRIPT, 'make', 2);
    // Running: untouched while the others come and go.
    const done1 = runOnce(store, 'b', 10);
    const done2 = runOnce(store, 'b', 20);
    expect(store.getRun(queuedFirst)?.state).toBe('running');
    expect(store.getRun(done1)).toBeNull();
    expect(store.getRun(done2)?.state).toBe('finished');
  });

  it('pruneAll applies a smaller --keep-runs to the history already there', () => {
    const keepAll = openStore();
    keepAll.putJob(job('c', { nextDue: null, period: { kind: 'never' } }), false, 1);
    const queued = keepAll.queues()['debian-12']?.[0]?.uuid ?? '';
    keepAll.startRun(queued, 'w1', SCRIPT, 'make', 2);
    keepAll.finishRun(queued, { kind: 'exited', code: 1 }, 3);
    const runs = [queued, runOnce(keepAll, 'c', 10), runOnce(keepAll, 'c', 20), runOnce(keepAll, 'c', 30)];
    expect(keepAll.runsOfJob('c', 10)).toHaveLength(4);
    closeStore(keepAll);
    const keepTwo = openStore({ keepRuns: 2 });
    expect(keepTwo.pruneAll()).toBe(2);
    expect(keepTwo.runsOfJob('c', 10).map((run) => run.uuid)).toEqual([runs[3], runs[2]]);
    expect(keepTwo.garbage().consoles.sort()).toEqual([runs[0], runs[1]].sort());
  });
});

describe('labels, environment, secrets and run events', () => {
  it('nextFor gives a worker the first run whose job requires no label it lacks; a blocked job holds up nobody', () => {
    const store = openStore();
    const big = put(store, job('big', { requires: ['big-disk', 'docker'] }), 1);
    const small = put(store, job('small'), 2);
    const docker = put(store, job('docker', { requires: ['docker'] }), 3);
    expect(store.nextFor('debian-12', [])?.uuid).toBe(small);
    expect(store.nextFor('debian-12', ['docker'])?.uuid).toBe(small);
    expect(store.nextFor('debian-12', ['docker', 'big-disk', 'x'])?.uuid).toBe(big);
    expect(store.nextFor('freebsd-14', ['docker'])).toBeNull();
    store.startRun(small, 'w1', SCRIPT, 'make', 4);
    expect(store.nextFor('debian-12', ['docker'])?.uuid).toBe(docker);
    expect(store.nextFor('debian-12', ['big-disk'])).toBeNull();
    expect(store.getJob('big')?.requires).toEqual(['big-disk', 'docker']);
  });

  it('keeps secrets apart from the job: listed by name, replaced with the job, removed with it', () => {
    const store = openStore();
    store.putJob(job('deploy', { env: { STAGE: 'prod' } }), false, 1, { TOKEN: 's3cret', KEY: 'k' });
    expect(store.getJob('deploy')?.env).toEqual({ STAGE: 'prod' });
    expect(JSON.stringify(store.getJob('deploy'))).not.toContain('s3cret');
    expect(JSON.stringify(store.listJobs())).not.toContain('s3cret');
    expect(store.secretsOf('deploy')).toEqual({ KEY: 'k', TOKEN: 's3cret' });
    expect(store.secretKeysByJob()).toEqual(new Map([['deploy', ['KEY', 'TOKEN']]]));
    store.putJob(job('deploy'), true, 2, { OTHER: 'o' });
    expect(store.secretsOf('deploy')).toEqual({ OTHER: 'o' });
    store.deleteJob('deploy', 3);
    expect(store.secretsOf('deploy')).toEqual({});
    expect(store.db.prepare('SELECT count(*) AS n FROM job_secrets').get()).toEqual({ n: 0 });
  });

  it('startRun records the environment given and the secrets by name; progress is kept with the run', () => {
    const store = openStore();
    const uuid = put(store, job('a'));
    store.startRun(uuid, 'w1', SCRIPT, 'make', 20, { env: { A: '1' }, secretKeys: ['TOKEN'] });
    store.setProgress(uuid, { percent: 40, message: 'compiling', at: 25 });
    expect(store.runDetail(uuid)).toEqual(expect.objectContaining({
      env: { A: '1' }, secretKeys: ['TOKEN'], progress: { percent: 40, message: 'compiling', at: 25 }, deliveries: [],
    }));
    store.finishRun(uuid, { kind: 'exited', code: 0 }, 30);
    store.setProgress(uuid, { percent: 90, message: 'too late', at: 35 });
    expect(store.getRun(uuid)?.progress).toEqual({ percent: 40, message: 'compiling', at: 25 });
  });

  it('run events happen inside their transaction: deliveries commit with the event, or not at all', () => {
    const store = openStore();
    const events: string[] = [];
    store.onRunEvent = (event, uuid) => {
      events.push(event);
      store.addDeliveries(uuid, event, ['http://127.0.0.1:9/hook'], JSON.stringify({ event }), 100);
    };
    const uuid = put(store, job('a'));
    store.startRun(uuid, 'w1', SCRIPT, 'make', 20);
    store.finishRun(uuid, { kind: 'exited', code: 0 }, 30, [{ path: 'x', size: 1, sha256: SHA_A }]);
    expect(events).toEqual(['queued', 'started', 'finished']);
    expect(store.deliveriesOf(uuid).map((d) => [d.event, d.state, d.attempts])).toEqual([['queued', 'pending', 0], ['started', 'pending', 0], ['finished', 'pending', 0]]);
    // One URL's events go out oldest first: only the head is offered.
    expect(store.deliveryHeads().map((d) => d.event)).toEqual(['queued']);
    // A failing event rolls its delivery back with it.
    store.onRunEvent = (event, run) => {
      store.addDeliveries(run, event, ['http://127.0.0.1:9/hook'], '{}', 100);
      throw new Error('boom');
    };
    expect(() => store.enqueue('a', false, 40)).toThrow('boom');
    expect(store.db.prepare('SELECT count(*) AS n FROM deliveries').get()).toEqual({ n: 3 });
    expect(store.queues()).toEqual({});
  });

  it("a run's webhook URLs are its job's, also for a job given webhooks after runs of jobs without any", () => {
    const store = openStore();
    const plain = put(store, job('plain'));
    expect(store.notifyOfRun(plain)).toEqual([]);
    const hooked = put(store, job('hooked', { notify: ['http://127.0.0.1:9/hook'] }));
    expect(store.notifyOfRun(hooked)).toEqual(['http://127.0.0.1:9/hook']);
    expect(store.notifyOfRun(plain)).toEqual([]);
    closeStore(store);
    expect(openStore().notifyOfRun(hooked)).toEqual(['http://127.0.0.1:9/hook']);
  });

  it('retention removes a run with its deliveries', () => {
    const store = openStore();
    store.onRunEvent = (event, uuid) => store.addDeliveries(uuid, event, ['http://127.0.0.1:9/hook'], '{}', 1);
    store.putJob(job('r', { keepRuns: 1, nextDue: null, period: { kind: 'never' } }), false, 1);
    const first = store.queues()['debian-12']?.[0]?.uuid ?? '';
    store.startRun(first, 'w1', SCRIPT, 'make', 2);
    store.finishRun(first, { kind: 'exited', code: 0 }, 3);
    store.enqueue('r', false, 4);
    const second = store.queues()['debian-12']?.[0]?.uuid ?? '';
    store.startRun(second, 'w1', SCRIPT, 'make', 5);
    store.finishRun(second, { kind: 'exited', code: 0 }, 6);
    expect(store.getRun(first)).toBeNull();
    expect(store.deliveriesOf(first)).toEqual([]);
    expect(store.deliveriesOf(second)).toHaveLength(3);
  });
});
