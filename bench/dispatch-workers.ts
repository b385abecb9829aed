/**
 * The worker side of the dispatch benchmark, run as its own process so that it does not share an
 * event loop with the server or with beanstalkd's clients:
 *
 *   node dispatch-workers.js builder ADDRESS K COUNT   K real workers (lib/worker.ts) in --loop mode
 *                                                      with a sandbox that runs nothing (against our
 *                                                      server, or dispatch-floor.js's worker floor)
 *   node dispatch-workers.js beanstalk PORT K COUNT    K connections doing reserve → delete
 *   node dispatch-workers.js floor PORT K COUNT        K connections sending a `finished` frame and
 *                                                      waiting for the job frame (dispatch-floor.js)
 *
 * It prints the elapsed milliseconds from its first connection to the COUNT-th job confirmed (for
 * builder: the server's finished-ack, sent once the outcome is committed; for beanstalkd: DELETED;
 * for the floor: the job frame).
 */
import type { TarSource } from '../protocol/artifacts.js';
import type { Outcome } from '../protocol/types.js';
import type { Sandbox } from '../lib/sandbox.js';
import net from 'node:net';
import { FrameDecoder, encodeFrame } from '../protocol/frame.js';
import { runWorker } from '../lib/worker.js';
import { Beanstalk } from './beanstalk.js';

/** Runs nothing: the job "exits 0" at once and leaves no files. */
class NullSandbox implements Sandbox {
  async prepare(): Promise<void> {}
  async run(): Promise<Outcome> {
    return { kind: 'exited', code: 0 };
  }
  kill(): void {}
  setPaused(): void {}
  async *collect(): AsyncGenerator<TarSource> {}
  progressFile(): string | null {
    return null;
  }
  async cleanUp(): Promise<void> {}
}

const [kind, where, k, count] = process.argv.slice(2);
const workers = Number(k);
const total = Number(count);
let done = 0;
const started = performance.now();
const finished = (): void => {
  process.stdout.write(`${performance.now() - started}\n`);
  process.exit(0);
};

if (kind === 'builder') {
  // Each running job adds two signal listeners (the worker stops its job on SIGTERM/SIGINT).
  process.setMaxListeners(0);
  // The worker says one line per confirmed run, ending with its outcome.
  const say = (line: string): void => {
    if (line.endsWith(') exited 0') && ++done === total) finished();
  };
  for (let i = 0; i < workers; i++) {
    void runWorker({ platform: 'bench', remote: where as string, labels: [], loop: true, hostname: `null-${i}`, say, sandbox: () => new NullSandbox() })
      .then((code) => { process.stderr.write(`worker ${i} exited ${code}\n`); process.exit(1); });
  }
} else if (kind === 'floor') {
  const finishedFrame = encodeFrame({ type: 'finished', uuid: '01234567-89ab-cdef-0123-456789abcdef', outcome: { kind: 'exited', code: 0 } });
  for (let i = 0; i < workers; i++) {
    const socket = net.connect(Number(where), '127.0.0.1', () => socket.write(finishedFrame));
    socket.setNoDelay(true);
    const decoder = new FrameDecoder();
    socket.on('data', (data: Buffer) => {
      for (const _ of decoder.push(data)) {
        if (++done === total) finished();
        socket.write(finishedFrame);
      }
    });
  }
} else {
  for (let i = 0; i < workers; i++) {
    void (async () => {
      const beanstalk = await Beanstalk.open(Number(where));
      for (;;) {
        const job = await beanstalk.reserve();
        if (job === null) return;
        await beanstalk.delete(job.id);
        if (++done === total) finished();
      }
    })();
  }
}
