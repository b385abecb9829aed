/** Connection over real loopback TCP: how the messages it sends are grouped into writes. */
import net from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Connection, dial } from '../protocol/connection.js';
import { FrameDecoder } from '../protocol/frame.js';

/** A listening peer that records, for each read, the message types that read completed. */
let server: net.Server;
let reads: string[][];
let conn: Connection;

beforeEach(async () => {
  reads = [];
  server = net.createServer((socket) => {
    const decoder = new FrameDecoder();
    socket.on('data', (data) => reads.push(decoder.push(data).map((value) => (value as { type: string }).type)));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  conn = await dial(`127.0.0.1:${(server.address() as net.AddressInfo).port}`);
});

afterEach(async () => {
  conn.close();
  conn.socket.destroy();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

const until = async (check: () => boolean): Promise<void> => {
  for (let i = 0; i < 500 && !check(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
};
const received = (): string[] => reads.flat();

describe('Connection.holdForThisTurn', () => {
  it('sends what was held in one write once released', async () => {
    const release = conn.holdForThisTurn();
    conn.send({ type: 'finished', uuid: '00000000-0000-4000-8000-000000000001', outcome: { kind: 'exited', code: 0 } });
    await Promise.resolve();
    conn.send({ type: 'request-job' });
    release();
    await until(() => received().length === 2);
    expect(reads).toEqual([['finished', 'request-job']]);
  });

  it('never holds a message past the end of the turn, released or not', async () => {
    const release = conn.holdForThisTurn();
    conn.send({ type: 'finished', uuid: '00000000-0000-4000-8000-000000000001', outcome: { kind: 'exited', code: 0 } });
    await until(() => received().length === 1);
    expect(reads).toEqual([['finished']]);
    // What is sent in a later turn leaves on its own, and a late release changes nothing.
    await new Promise((resolve) => setTimeout(resolve, 50));
    release();
    conn.send({ type: 'request-job' });
    await until(() => received().length === 2);
    expect(reads).toEqual([['finished'], ['request-job']]);
  });

  it('together() sends its messages in one write', async () => {
    conn.together(() => {
      conn.send({ type: 'heartbeat', uuid: null });
      conn.send({ type: 'request-job' });
    });
    await until(() => received().length === 2);
    expect(reads).toEqual([['heartbeat', 'request-job']]);
  });
});
