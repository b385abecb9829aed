/**
 * Property tests (fast-check) on the two things that read untrusted bytes: the frame decoder and
 * the message validators. Arbitrary bytes, cut anywhere, and mutated valid messages never make
 * them throw anything but a FrameError, and never let an invalid message through. The number of
 * cases run is printed at the end so that it can be quoted.
 */
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { FrameDecoder, FrameError, encodeFrame } from '../protocol/frame.js';
import { ClientMessage, Hello, ServerToClient, ServerToWorker, WorkerMessage, parseWith } from '../protocol/messages.js';

let cases = 0;
const counted = <T>(property: fc.IProperty<T>, numRuns: number): void => {
  fc.assert(property, { numRuns });
  cases += numRuns;
};
afterAll(() => {
  process.stdout.write(`property tests: ${cases} cases run\n`);
});

/** Feeds `bytes` to a fresh decoder in the given cuts; returns the values or the FrameError. */
function decodeInPieces(bytes: Buffer, cuts: number[], max = 1024 * 1024): { values: unknown[]; error: FrameError | null } {
  const decoder = new FrameDecoder(max);
  const values: unknown[] = [];
  const points = [...new Set(cuts.map((cut) => cut % (bytes.length + 1)))].sort((a, b) => a - b);
  let from = 0;
  try {
    for (const point of [...points, bytes.length]) {
      values.push(...decoder.push(bytes.subarray(from, point)));
      from = point;
    }
  } catch (error) {
    if (!(error instanceof FrameError)) throw error;
    return { values, error };
  }
  return { values, error: null };
}

describe('the frame decoder', () => {
  it('never throws anything but a FrameError on arbitrary bytes, cut anywhere', () => {
    counted(fc.property(fc.uint8Array({ maxLength: 512 }), fc.array(fc.nat(), { maxLength: 8 }), (bytes, cuts) => {
      decodeInPieces(Buffer.from(bytes), cuts);
    }), 30_000);
  });

  it('never throws anything but a FrameError on well-framed random bodies', () => {
    counted(fc.property(fc.uint8Array({ minLength: 1, maxLength: 256 }), fc.array(fc.nat(), { maxLength: 4 }), (body, cuts) => {
      const frame = Buffer.alloc(4 + body.length);
      frame.writeUInt32BE(body.length);
      frame.set(body, 4);
      const { values, error } = decodeInPieces(frame, cuts);
      expect(values.length + (error === null ? 0 : 1)).toBe(1);
    }), 20_000);
  });

  it('gives back exactly the values encoded, however the stream is cut', () => {
    // A "__proto__" key is the one thing not given back as is: msgpackr renames it (see below).
    const value = fc.jsonValue({ maxDepth: 3 }).filter((v) => !JSON.stringify(v).includes('"__proto__"'));
    counted(fc.property(fc.array(value, { minLength: 1, maxLength: 5 }), fc.array(fc.nat(), { maxLength: 10 }), (values, cuts) => {
      const stream = Buffer.concat(values.map((v) => encodeFrame(v)));
      const decoded = decodeInPieces(stream, cuts, 16 * 1024 * 1024);
      expect(decoded.error).toBeNull();
      // msgpack has no -0 and no distinction of integral floats: compare as JSON does.
      expect(JSON.parse(JSON.stringify(decoded.values))).toEqual(JSON.parse(JSON.stringify(values)));
    }), 10_000);
  });

  it('cannot be used for prototype pollution: a "__proto__" key stays a harmless plain key', () => {
    // msgpack {"__proto__": {"polluted": true}}, written by hand (a JS literal would set the prototype).
    const body = Buffer.from([0x81, 0xa9, ...Buffer.from('__proto__'), 0x81, 0xa8, ...Buffer.from('polluted'), 0xc3]);
    const frame = Buffer.concat([Buffer.from([0, 0, 0, body.length]), body]);
    const [decoded] = new FrameDecoder().push(frame) as [Record<string, unknown>];
    expect(Object.getPrototypeOf(decoded)).toBe(Object.prototype);
    expect((decoded as { polluted?: unknown }).polluted).toBeUndefined();
    expect(({} as { polluted?: unknown }).polluted).toBeUndefined();
  });

  it('refuses a frame over the maximum before reading its body', () => {
    counted(fc.property(fc.integer({ min: 1025, max: 0xffffffff }), (length) => {
      const header = Buffer.alloc(4);
      header.writeUInt32BE(length);
      expect(() => new FrameDecoder(1024).push(header)).toThrow(FrameError);
    }), 1_000);
  });
});

const UUID = '0b5e9c1e-51f2-4a66-9d3b-3f1f8c1d2e4a';
/** One valid example of each kind of message a server receives. */
const VALID: [string, (value: unknown) => { ok: boolean }, unknown][] = [
  ['hello (client)', (v) => parseWith(Hello, v), { type: 'hello', version: 1, role: 'client', software: 'builder 0.1.0', token: 'bt_x' }],
  ['hello (worker)', (v) => parseWith(Hello, v), { type: 'hello', version: 1, role: 'worker', software: 'b', platform: 'debian-12', labels: ['a'], hostname: 'h' }],
  ['schedule', (v) => parseWith(ClientMessage, v), {
    type: 'schedule', id: 1, name: 'job', platform: 'debian-12', source: { kind: 'script', script: 'echo hi' },
    period: { kind: 'every', seconds: 3600 }, replace: false, timeoutSeconds: null, keepRuns: 3,
  }],
  ['schedule (template)', (v) => parseWith(ClientMessage, v), {
    type: 'schedule', id: 2, name: 'job', platform: 'debian-12', source: { kind: 'template', template: 'shell', vars: { command: 'make' } },
    period: { kind: 'cron', expression: '0 3 * * *' }, replace: true, timeoutSeconds: 60,
  }],
  ['reschedule', (v) => parseWith(ClientMessage, v), { type: 'reschedule', id: 3, name: 'job', nextDue: 1_800_000_000_000, period: null }],
  ['cancel', (v) => parseWith(ClientMessage, v), { type: 'cancel', id: 4, uuid: UUID }],
  ['results', (v) => parseWith(ClientMessage, v), { type: 'results', id: 5, name: 'job', limit: 10 }],
  ['output', (v) => parseWith(WorkerMessage, v), { type: 'output', uuid: UUID, chunks: [{ at: 5, stream: 'out', text: 'hello' }] }],
  ['upload', (v) => parseWith(WorkerMessage, v), { type: 'upload', uuid: UUID, chunk: new Uint8Array([1, 2, 3]) }],
  ['finished', (v) => parseWith(WorkerMessage, v), { type: 'finished', uuid: UUID, outcome: { kind: 'signalled', signal: 9, message: 'out of memory' } }],
  ['heartbeat', (v) => parseWith(WorkerMessage, v), { type: 'heartbeat', uuid: UUID }],
];

/** A random change to a message: drop, replace or add a field, or change a nested value. */
function mutate(value: unknown, path: string[], replacement: unknown, drop: boolean): unknown {
  if (typeof value !== 'object' || value === null || value instanceof Uint8Array) return replacement;
  const copy: Record<string, unknown> = Array.isArray(value) ? { ...value } : { ...(value as Record<string, unknown>) };
  const keys = Object.keys(copy);
  const [head, ...rest] = path;
  const key = keys.length === 0 || head === undefined ? (head ?? 'extra') : (keys[head.length % keys.length] ?? 'extra');
  if (drop && rest.length === 0) delete copy[key];
  else copy[key] = rest.length === 0 ? replacement : mutate(copy[key], rest, replacement, drop);
  return Array.isArray(value) ? Object.values(copy) : copy;
}

describe('the message validators', () => {
  it('accept the valid examples (so that the mutations below start from valid messages)', () => {
    for (const [name, parse, value] of VALID) expect(parse(value).ok, name).toBe(true);
  });

  it('never throw on arbitrary values, and accept none that lack a known type', () => {
    const schemas = [Hello, ClientMessage, WorkerMessage, ServerToClient, ServerToWorker];
    counted(fc.property(fc.anything({ withTypedArray: true, withMap: true, withSet: true, withBigInt: true, withDate: true, withNullPrototype: true }), (value) => {
      for (const schema of schemas) {
        const parsed = parseWith(schema, value);
        if (parsed.ok) throw new Error(`accepted ${String(value)}`);
        expect(typeof parsed.error).toBe('string');
      }
    }), 20_000);
  });

  it('never throw on mutated valid messages, and what they accept still validates', () => {
    const replacement = fc.oneof(fc.anything({ withTypedArray: true, withBigInt: true }), fc.string({ maxLength: 5000 }), fc.double(), fc.integer());
    counted(fc.property(fc.nat(VALID.length - 1), fc.array(fc.string({ maxLength: 3 }), { minLength: 1, maxLength: 4 }), replacement, fc.boolean(),
      (which, path, value, drop) => {
        const [, parse, valid] = VALID[which] ?? VALID[0]!;
        const mutated = mutate(valid, path, value, drop);
        const parsed = parse(mutated) as { ok: boolean; message?: unknown; error?: string };
        if (parsed.ok) expect(parse(parsed.message).ok).toBe(true);
        else expect(parsed.error?.length).toBeLessThan(20_000);
      }), 30_000);
  });
});
