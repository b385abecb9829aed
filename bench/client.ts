/**
 * client — the wall time of `builder-client info` against `node -e 0`, run one after the other,
 * alternating so that both see the same machine (target: at most 1.5 times as long).
 */
import path from 'node:path';
import { BIN, type BenchOptions, type Result, cost, median, startServer, timedNode } from './common.js';

export async function clientLatency({ quick, tmp }: BenchOptions): Promise<Result[]> {
  const count = quick ? 10 : 40;
  const server = await startServer(path.join(tmp, 'state'));
  try {
    const ours: number[] = [];
    const bare: number[] = [];
    for (let i = 0; i < count; i++) {
      ours.push(await timedNode([path.join(BIN, 'builder-client.js'), '--remote', server.address, 'info']));
      bare.push(await timedNode(['-e', '0']));
    }
    return [cost('client-info', median(ours), 'ms', median(bare), Math.round((1 / 1.5) * 1000) / 1000)];
  } finally {
    await server.stop();
  }
}
