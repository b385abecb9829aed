/**
 * The server's answers to client requests. Each handler checks the request against the stored state,
 * asks the store to change it (committed before the reply is sent), and replies with one message (or,
 * for observe and fetch, a stream of them).
 */
import fs from 'node:fs';
import type { Connection } from '../protocol/connection.js';
import { fileChunks, tarStream, type TarSource } from '../protocol/artifacts.js';
import type { ClientMessage } from '../protocol/messages.js';
import { describeOutcome } from '../protocol/types.js';
import type { QueueEntry } from '../protocol/types.js';
import { type Identity, OPEN_IDENTITY, mayChangeJob } from './auth.js';
import { diskFullProblem, isDiskFull } from './disk.js';
import { checkCron, describePeriod, nextDue } from './period.js';
import type { ServerContext } from './server.js';
import { type JobRecord, StoreError } from './store.js';
import { TemplateError } from './templates.js';

function notYours(job: JobRecord, verb: string): string {
  const owner = job.owner === null || job.owner === undefined ? 'no token (it was made before tokens existed)' : `token ${job.owner}`;
  return `permission denied: job ${job.name} belongs to ${owner}; only its owner (an operator) or an admin may ${verb} it`;
}

const PLACEHOLDER_UUID = '00000000-0000-0000-0000-000000000000';

export async function handleClientMessage(context: ServerContext, conn: Connection, message: ClientMessage, identity: Identity = OPEN_IDENTITY): Promise<void> {
  const { store, log } = context;
  const fail = (text: string): void => {
    log('refuse', { peer: conn.peer, request: message.type, reason: text });
    conn.send({ type: 'failure', id: message.id, message: text });
  };
  const ok = (text: string): void => {
    conn.send({ type: 'ok', id: message.id, message: text });
  };
  const now = Date.now();
  if (message.type === 'schedule' || message.type === 'execute') {
    const full = diskFullProblem(context.options.stateDir, context.options.minFreeBytes);
    if (full !== null) {
      log('disk-full', { request: message.type });
      return fail(full);
    }
  }
  try {
    switch (message.type) {
      case 'schedule': {
        if (message.period.kind === 'cron') checkCron(message.period.expression);
        if (message.source.kind === 'template') {
          const platforms = context.templates.platformsOf(message.source.template);
          if (!platforms.includes(message.platform)) {
            const withTemplates = context.templates.list().filter((t) => context.templates.platformsOf(t).includes(message.platform));
            return fail(platforms.length === 0
              ? `unknown template ${message.source.template}; known templates: ${context.templates.list().join(', ') || 'none'}`
              : `template ${message.source.template} has no variant for platform ${message.platform}; platforms that have one: ${platforms.join(', ')}`
                + (withTemplates.length > 0 ? `; templates for ${message.platform}: ${withTemplates.join(', ')}` : ''));
          }
          // Render once now so that a missing variable is reported at schedule time, not at dispatch.
          context.templates.render(message.source.template, message.platform, message.source.vars,
            { job: message.name, platform: message.platform, uuid: PLACEHOLDER_UUID });
        }
        const existing = store.getJob(message.name);
        if (existing !== null && message.replace && !mayChangeJob(identity, existing.owner ?? null)) return fail(notYours(existing, 'replace'));
        const { replaced, enqueued, cancelled } = store.putJob({
          name: message.name, platform: message.platform, source: message.source, period: message.period,
          nextDue: nextDue(message.period, now), timeoutSeconds: message.timeoutSeconds, keepRuns: message.keepRuns ?? null,
          owner: identity.name, requires: [...new Set(message.requires ?? [])].sort(), env: message.env ?? {},
          notify: [...new Set(message.notify ?? [])], createdAt: now,
        }, message.replace, now, message.secretEnv ?? {});
        log('schedule', {
          peer: conn.peer, job: message.name, platform: message.platform, period: describePeriod(message.period), replaced,
          requires: message.requires?.join(','), env: Object.keys(message.env ?? {}).join(',') || undefined,
          secrets: Object.keys(message.secretEnv ?? {}).join(',') || undefined, notify: message.notify?.length,
        });
        context.scheduler.rearm();
        endRun(context, cancelled);
        const verb = replaced ? 'replaced' : 'scheduled';
        if (enqueued === null) {
          conn.send({ type: 'queued', id: message.id, job: message.name, uuid: null,
            message: `${verb} ${message.name} (${describePeriod(message.period)}); platform ${message.platform} is dropped, so nothing was queued` });
        } else {
          conn.send({ type: 'queued', id: message.id, job: message.name, uuid: enqueued.uuid,
            message: `${verb} ${message.name} (${describePeriod(message.period)}); ${enqueued.fresh ? 'queued' : 'already queued as'} run ${enqueued.uuid}` });
          context.dispatcher.queued([enqueued]);
        }
        return;
      }
      case 'unschedule': {
        const job = store.getJob(message.name);
        if (job !== null && !mayChangeJob(identity, job.owner ?? null)) return fail(notYours(job, 'unschedule'));
        const { existed, cancelled } = store.deleteJob(message.name, now);
        if (!existed) return fail(`unknown job ${message.name}`);
        log('unschedule', { peer: conn.peer, job: message.name });
        context.scheduler.rearm();
        endRun(context, cancelled);
        return ok(`unscheduled ${message.name}${cancelled !== null ? `; its queued run ${cancelled} was cancelled` : ''}`);
      }
      case 'execute': {
        const enqueued = store.enqueue(message.name, true, now);
        log('execute', { peer: conn.peer, job: message.name, run: enqueued.uuid });
        conn.send({ type: 'queued', id: message.id, job: message.name, uuid: enqueued.uuid,
          message: `${enqueued.fresh ? 'queued' : 'moved'} run ${enqueued.uuid} of ${message.name} to the front of the ${enqueued.platform} queue` });
        context.dispatcher.queued([enqueued]);
        return;
      }
      case 'reschedule': {
        const job = store.getJob(message.name);
        if (job === null) return fail(`unknown job ${message.name}`);
        if (message.period?.kind === 'cron') checkCron(message.period.expression);
        const period = message.period ?? job.period;
        const due = period.kind === 'never' ? null : message.nextDue;
        store.setSchedule(message.name, due, message.period);
        context.scheduler.rearm();
        log('reschedule', { peer: conn.peer, job: message.name, next: due === null ? 'never' : new Date(due).toISOString() });
        return ok(`${message.name} is ${describePeriod(period)}, next due ${due === null ? 'never (execute it by hand)' : new Date(due).toISOString()}`);
      }
      case 'drop-platform': {
        const { already, cancelled } = store.dropPlatform(message.platform, now);
        log('drop', { peer: conn.peer, platform: message.platform, cancelled: cancelled.length });
        for (const uuid of cancelled) endRun(context, uuid);
        return ok(`${already ? 'platform was already dropped' : `dropped platform ${message.platform}`}: nothing is queued for it until undrop-platform`
          + (cancelled.length > 0 ? `; cancelled ${cancelled.length} queued run(s)` : ''));
      }
      case 'undrop-platform': {
        if (!store.undropPlatform(message.platform)) return fail(`platform ${message.platform} is not dropped`);
        log('undrop', { peer: conn.peer, platform: message.platform });
        return ok(`undropped platform ${message.platform}: its jobs are queued again when they fall due`);
      }
      case 'cancel': {
        const run = store.getRun(message.uuid);
        if (run === null) return fail(`unknown run ${message.uuid}`);
        if (run.state === 'finished') return fail(`run ${message.uuid} already finished (${describeOutcome(run.outcome)})`);
        if (run.state === 'queued') {
          store.cancelQueued(message.uuid, 'cancelled while queued', now);
          log('cancel', { peer: conn.peer, run: message.uuid, state: 'queued' });
          endRun(context, message.uuid);
          return ok(`cancelled queued run ${message.uuid} of ${run.job}`);
        }
        if (!context.dispatcher.cancelRunning(message.uuid, 'cancelled by a client')) {
          return fail(`run ${message.uuid} is running but its worker is not connected; it will be recorded as worker lost`);
        }
        return ok(`cancelling run ${message.uuid} of ${run.job}: its worker stops the job (SIGTERM, then SIGKILL)`);
      }
      case 'info': {
        conn.send({
          type: 'info-result', id: message.id,
          info: {
            jobs: store.jobInfos(store.secretKeysByJob()),
            queues: queuesWithReasons(context),
            running: store.runsInState('running'),
            dropped: store.droppedPlatforms(),
            workers: context.dispatcher.count,
          },
        });
        return;
      }
      case 'results': {
        const runs = store.runsOfJob(message.name, message.limit);
        if (runs.length === 0 && store.getJob(message.name) === null) return fail(`unknown job ${message.name}`);
        conn.send({ type: 'results-result', id: message.id, runs });
        return;
      }
      case 'workers':
        conn.send({ type: 'workers-result', id: message.id, workers: context.dispatcher.listAll() });
        return;
      case 'show': {
        const run = store.runDetail(message.uuid);
        if (run === null) return fail(`unknown run ${message.uuid}`);
        conn.send({ type: 'show-result', id: message.id, run });
        return;
      }
      case 'observe': {
        const run = store.getRun(message.uuid);
        if (run === null) return fail(`unknown run ${message.uuid}`);
        await context.hub.observe(conn, message.id, run, (uuid) => context.dispatcher.consoleOffset(uuid));
        return;
      }
      case 'observe-latest': {
        const run = store.latestRun(message.job, message.platform);
        if (run === null) {
          context.hub.waitForLatest(conn, message.id, message.job, message.platform);
          return;
        }
        await context.hub.observe(conn, message.id, run, (uuid) => context.dispatcher.consoleOffset(uuid));
        return;
      }
      case 'fetch': {
        const run = store.runDetail(message.uuid);
        if (run === null) return fail(`unknown run ${message.uuid}`);
        if (run.state !== 'finished') return fail(`run ${message.uuid} is ${run.state}; its artifacts can be fetched once it has finished`);
        log('fetch', { peer: conn.peer, run: run.uuid, artifacts: run.artifacts.length });
        conn.send({ type: 'artifacts', id: message.id, uuid: run.uuid, artifacts: run.artifacts });
        const sources: TarSource[] = run.artifacts.map((artifact) => ({
          path: artifact.path,
          size: artifact.size,
          chunks: () => fileChunks(context.artifacts.fileOf(artifact.sha256), artifact.size),
        }));
        for await (const chunk of tarStream(sources)) {
          if (conn.isClosed) return;
          await conn.sendWritten({ type: 'data', id: message.id, chunk });
        }
        conn.send({ type: 'data-end', id: message.id });
        return;
      }
    }
  } catch (error) {
    if (error instanceof StoreError || error instanceof TemplateError) return fail(error.message);
    if (error instanceof Error && error.message.startsWith('invalid cron expression')) return fail(error.message);
    if (isDiskFull(error)) {
      return fail(`the disk holding ${context.options.stateDir} is full: ${message.type} was not done and nothing stored was lost; free some space and try again`);
    }
    throw error;
  }
}

/**
 * The queues, each run with the reason no connected worker can take it, if that is so: no worker
 * of its platform is connected, or none has all the labels its job requires.
 */
export function queuesWithReasons(context: ServerContext): Record<string, QueueEntry[]> {
  const { store, dispatcher } = context;
  const queues = store.queues();
  const requires = store.queuedRequirements();
  for (const [platform, entries] of Object.entries(queues)) {
    const workers = dispatcher.workersOf(platform);
    for (const entry of entries) entry.blocked = blockedReason(platform, requires.get(entry.job) ?? [], workers);
  }
  return queues;
}

function blockedReason(platform: string, requires: string[], workers: { id: string; labels: string[] }[]): string | null {
  if (workers.length === 0) return `no ${platform} worker is connected`;
  if (requires.length === 0) return null;
  const lacking = workers.map((worker) => ({ id: worker.id, missing: requires.filter((label) => !worker.labels.includes(label)) }));
  if (lacking.some((worker) => worker.missing.length === 0)) return null;
  const shown = lacking.slice(0, 5).map((worker) => `${worker.id} lacks ${worker.missing.join(',')}`).join('; ');
  return `no connected ${platform} worker has all of the labels ${requires.join(',')} (${shown}${lacking.length > 5 ? `; and ${lacking.length - 5} more` : ''})`;
}

/** Tells observers of a run that it ended (it was cancelled while queued, for instance). */
function endRun(context: ServerContext, uuid: string | null): void {
  if (uuid === null) return;
  const run = context.store.getRun(uuid);
  if (run !== null) context.hub.end(run);
}
