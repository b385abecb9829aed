/**
 * The floors of the dispatch benchmark: the least a Node server speaking our frames can do per job,
 * with one write(2) of a line to a log file per job, as beanstalkd's binlog gets one per job with
 * -f 50. No SQLite, no validation, no state: what is left is Node's event loop, the frame code, and
 * the system calls.
 *
 *   node dispatch-floor.js LOGFILE    listens on 127.0.0.1 (a free port) and prints the port
 *
 * It serves two kinds of peer, told apart by their first frame:
 * - The frame floor (dispatch-workers.js floor PORT K COUNT): a peer that sends anything but a hello
 *   gets a job frame (as large as the real one) for every frame it sends. Its clients are as light
 *   as beanstalkd's, so where our server stands between this and beanstalkd shows which share of
 *   the gap is ours and which is Node's.
 * - The worker floor (dispatch-workers.js builder ADDRESS K COUNT, the real workers): a peer that
 *   says hello is welcomed and then served as our server serves a worker in --loop mode (a job for
 *   each request-job; an acknowledgement for each finished, sent in the same write as the next job),
 *   but with nothing recorded. It is the most any server could do with the real workers on this
 *   machine: their own CPU, on the same cores, is part of every round trip.
 */
import fs from 'node:fs';
import net from 'node:net';
import { DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encodeFrame } from '../protocol/frame.js';
import { PROTOCOL_VERSION } from '../protocol/messages.js';

const log = fs.openSync(process.argv[2] ?? '/dev/null', 'w');
const job = encodeFrame({
  type: 'job', uuid: '01234567-89ab-cdef-0123-456789abcdef', name: 'dispatch-19999', platform: 'bench', script: 'true\n', timeoutSeconds: 3600,
});
const welcome = encodeFrame({
  type: 'welcome', version: PROTOCOL_VERSION, software: 'dispatch-floor', heartbeatSeconds: 30, maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
  features: ['request-after-finished'],
});
let jobs = 0;

/** What the worker floor answers to one message of a real worker (nothing: an empty list). */
function answerWorker(message: { type?: unknown; uuid?: unknown }): Buffer[] {
  switch (message.type) {
    case 'request-job': {
      const n = jobs++;
      // Each job its own run: the worker says one line per run, which the benchmark counts.
      return [encodeFrame({
        type: 'job', uuid: `01234567-89ab-cdef-0123-${n.toString(16).padStart(12, '0')}`, name: `dispatch-${n}`, platform: 'bench',
        script: 'true\n', timeoutSeconds: 3600,
      })];
    }
    case 'finished':
      fs.writeSync(log, `finished ${String(message.uuid)}\n`);
      return [encodeFrame({ type: 'finished-ack', uuid: message.uuid })];
    case 'heartbeat':
      return [encodeFrame({ type: 'heartbeat-ack', uuid: message.uuid ?? null })];
    default:
      return [];
  }
}

const server = net.createServer((socket) => {
  socket.setNoDelay(true);
  socket.on('error', () => {});
  const decoder = new FrameDecoder();
  let worker: boolean | null = null;
  socket.on('data', (data: Buffer) => {
    const out: Buffer[] = [];
    for (const value of decoder.push(data)) {
      const message = value as { type?: unknown; uuid?: unknown };
      worker ??= message.type === 'hello';
      if (!worker) {
        fs.writeSync(log, `finished ${String(message.uuid ?? '-')}\n`);
        socket.write(job);
      } else if (message.type === 'hello') {
        out.push(welcome);
      } else {
        out.push(...answerWorker(message));
      }
    }
    // Everything a read called for leaves in one write, as the real server's acknowledgement and
    // next job do.
    if (out.length === 0) return;
    socket.cork();
    for (const frame of out) socket.write(frame);
    socket.uncork();
  });
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`${(server.address() as net.AddressInfo).port}\n`));
