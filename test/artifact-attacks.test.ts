/**
 * Artifact attacks: an evil worker (speaking the protocol by hand) uploads hand-made tar streams —
 * escaping paths, absolute paths, links, devices, control characters, long-name and pax tricks,
 * a file over the size limit, truncated and garbage streams. Each is refused with a clear reason,
 * the run is recorded as an error with no artifacts, and nothing is written outside the store.
 * The number of attacks refused is printed.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Header, Pax } from 'tar';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROTOCOL_VERSION } from '../protocol/messages.js';
import { PLATFORM, type ServerHandle, killAll, scheduleScript, show, startServer, tempDir } from './harness.js';
import { RawPeer } from './raw-peer.js';

const LIMIT = 1024 * 1024;

type HeaderData = ConstructorParameters<typeof Header>[0] & { path: string };

/** One tar member: its header (with a pax header first when asked) and its padded body. */
function member(data: HeaderData, body: Buffer = Buffer.alloc(0), pax: Record<string, string> | null = null): Buffer {
  const blocks: Buffer[] = [];
  if (pax !== null) blocks.push(new Pax({ ...pax, mtime: new Date(0) } as ConstructorParameters<typeof Pax>[0]).encode());
  const header = new Header({ mode: 0o644, mtime: new Date(0), uid: 0, gid: 0, size: body.length, type: 'File', ...data });
  header.encode();
  blocks.push(header.block as Buffer, body, Buffer.alloc((512 - (body.length % 512)) % 512));
  return Buffer.concat(blocks);
}

/** A GNU long-name member: the next header's real name is this body. */
function longName(name: string): Buffer {
  const body = Buffer.from(`${name}\0`);
  return member({ path: '././@LongLink', type: 'NextFileHasLongPath', size: body.length }, body);
}

const END = Buffer.alloc(1024);
const file = (name: string, text = 'evil\n'): Buffer => member({ path: name }, Buffer.from(text));

interface Attack { name: string; tar: Buffer; reason: string | RegExp }

const ATTACKS: Attack[] = [
  { name: 'parent directory', tar: Buffer.concat([file('../escaped.txt'), END]), reason: 'artifact "../escaped.txt" refused: path contains \'..\'' },
  { name: 'parent directory, deeper', tar: Buffer.concat([file('a/b/../../../escaped.txt'), END]), reason: /refused: path contains '\.\.'/ },
  { name: 'absolute path', tar: Buffer.concat([file('/tmp/builder-attack-absolute.txt'), END]), reason: /refused: (absolute path|path contains)/ },
  { name: 'absolute path into /etc', tar: Buffer.concat([file('/etc/builder-attack'), END]), reason: /refused: (absolute path|path contains)/ },
  { name: 'symlink to /etc/passwd', tar: Buffer.concat([member({ path: 'passwd', type: 'SymbolicLink', linkpath: '/etc/passwd' }), END]), reason: 'artifact "passwd" refused: it is a SymbolicLink, only regular files are artifacts' },
  { name: 'symlink up the tree', tar: Buffer.concat([member({ path: 'up', type: 'SymbolicLink', linkpath: '../../..' }), END]), reason: 'artifact "up" refused: it is a SymbolicLink, only regular files are artifacts' },
  { name: 'symlink then a file through it', tar: Buffer.concat([member({ path: 'd', type: 'SymbolicLink', linkpath: '/tmp' }), file('d/builder-attack-via-link.txt'), END]), reason: /refused: it is a SymbolicLink/ },
  { name: 'hard link to /etc/passwd', tar: Buffer.concat([member({ path: 'hard', type: 'Link', linkpath: '/etc/passwd' }), END]), reason: 'artifact "hard" refused: it is a Link, only regular files are artifacts' },
  { name: 'hard link to a sibling', tar: Buffer.concat([file('a.txt'), member({ path: 'b.txt', type: 'Link', linkpath: 'a.txt' }), END]), reason: 'artifact "b.txt" refused: it is a Link, only regular files are artifacts' },
  { name: 'character device', tar: Buffer.concat([member({ path: 'null', type: 'CharacterDevice', devmaj: 1, devmin: 3 } as HeaderData), END]), reason: 'artifact "null" refused: it is a CharacterDevice, only regular files are artifacts' },
  { name: 'block device', tar: Buffer.concat([member({ path: 'sda', type: 'BlockDevice', devmaj: 8, devmin: 0 } as HeaderData), END]), reason: 'artifact "sda" refused: it is a BlockDevice, only regular files are artifacts' },
  { name: 'FIFO', tar: Buffer.concat([member({ path: 'fifo', type: 'FIFO' }), END]), reason: 'artifact "fifo" refused: it is a FIFO, only regular files are artifacts' },
  { name: 'newline in the name', tar: Buffer.concat([file('a\nb.txt'), END]), reason: 'artifact "a\\nb.txt" refused: path contains a control character (newline, NUL, ...)' },
  { name: 'escape sequence in the name', tar: Buffer.concat([file('\u001b[31mred.txt'), END]), reason: /refused: path contains a control character/ },
  { name: 'pax path that escapes', tar: Buffer.concat([member({ path: 'innocent.txt' }, Buffer.from('x'), { path: '../../pax-escaped.txt' }), END]), reason: 'artifact "../../pax-escaped.txt" refused: path contains \'..\'' },
  { name: 'GNU long name that escapes', tar: Buffer.concat([longName(`${'../'.repeat(40)}long-escaped.txt`), file('short.txt'), END]), reason: /refused: path contains '\.\.'/ },
  { name: 'path over 4096 bytes', tar: Buffer.concat([member({ path: 'x.txt' }, Buffer.from('x'), { path: `${'d/'.repeat(2100)}f.txt` }), END]), reason: `artifact "${'d/'.repeat(100)}…" refused: path longer than 4096 bytes` },
  { name: 'NUL in a ustar name', tar: Buffer.concat([(() => {
    // Write "bad\0../../x" into the name field by hand: tar ends names at the NUL.
    const block = member({ path: 'placeholder-name.txt' }, Buffer.from('x'));
    block.fill(0, 0, 100);
    block.write('\u0000../../nul-escaped.txt', 3, 'latin1');
    block.write('bad', 0, 'latin1');
    let sum = 0;
    block.fill(0x20, 148, 156);
    for (let i = 0; i < 512; i++) sum += block[i] ?? 0;
    block.write(`${sum.toString(8).padStart(6, '0')}\u0000 `, 148, 'latin1');
    return block;
  })(), file('../after-nul.txt'), END]), reason: 'artifact "../after-nul.txt" refused: path contains \'..\'' },
  { name: 'empty path component', tar: Buffer.concat([file('a//b.txt'), END]), reason: 'artifact "a//b.txt" refused: path has an empty or "." component' },
  { name: '"." component', tar: Buffer.concat([file('./././x/./y.txt'), END]), reason: /refused: path has an empty or "\." component/ },
  { name: 'directory that escapes', tar: Buffer.concat([member({ path: '../dir/', type: 'Directory', mode: 0o755 }), END]), reason: /refused: path contains '\.\.'/ },
  { name: 'the same path twice', tar: Buffer.concat([file('twice.txt'), file('twice.txt', 'other\n'), END]), reason: 'the artifact stream holds the same path twice' },
  { name: 'tar bomb: a file over the size limit', tar: Buffer.concat([member({ path: 'bomb.bin' }, Buffer.alloc(LIMIT + 1)), END]), reason: `artifact bomb.bin is larger than the limit of ${LIMIT} bytes` },
  { name: 'truncated stream: less data than the header says', tar: (() => {
    const header = new Header({ path: 'short.bin', mode: 0o644, size: 4096, mtime: new Date(0), type: 'File' });
    header.encode();
    return Buffer.concat([header.block as Buffer, Buffer.alloc(100)]);
  })(), reason: /short\.bin ended after \d+ of 4096 bytes|not a valid tar stream/ },
  { name: 'garbage instead of tar', tar: crypto.randomBytes(2048), reason: /not a valid tar stream/ },
];

describe('artifact attacks', () => {
  let dir: string;
  let server: ServerHandle;
  let refused = 0;

  beforeAll(async () => {
    dir = tempDir();
    server = await startServer(path.join(dir, 'state'), ['--max-artifact-bytes', String(LIMIT)]);
  });
  afterAll(async () => {
    process.stdout.write(`artifact attacks: ${refused} of ${ATTACKS.length} refused, nothing written outside the store\n`);
    await killAll();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it.each(ATTACKS.map((attack, index) => [index, attack.name]))('%i: %s', async (index) => {
    const attack = ATTACKS[index as number] as Attack;
    const uuid = await scheduleScript(server, dir, `attack-${index}`, 'true\n');
    const peer = new RawPeer(server.address);
    peer.send({ type: 'hello', version: PROTOCOL_VERSION, role: 'worker', software: 'evil worker', platform: PLATFORM, hostname: 'evil', labels: [] });
    expect((await peer.next()).type).toBe('welcome');
    peer.send({ type: 'request-job' });
    expect(await peer.next()).toMatchObject({ type: 'job', uuid });
    for (let at = 0; at < attack.tar.length; at += 256 * 1024) peer.send({ type: 'upload', uuid, chunk: attack.tar.subarray(at, at + 256 * 1024) });
    peer.send({ type: 'finished', uuid, outcome: { kind: 'exited', code: 0 } });
    expect(await peer.next()).toEqual({ type: 'finished-ack', uuid });
    peer.socket.destroy();
    const run = await show(server, uuid);
    expect(run.outcome?.kind).toBe('error');
    const prefix = 'exited 0, but its artifacts were refused: ';
    expect(run.outcome?.message?.startsWith(prefix)).toBe(true);
    const reason = run.outcome?.message?.slice(prefix.length) ?? '';
    if (typeof attack.reason === 'string') expect(reason).toBe(attack.reason);
    else expect(reason).toMatch(attack.reason);
    expect(run.artifacts).toEqual([]);
    // Nothing outside the store: not beside it, not where the paths pointed.
    expect(fs.readdirSync(dir).filter((name) => name !== 'state' && !/^attack-\d+\.sh$/.test(name))).toEqual([]);
    for (const escaped of ['escaped.txt', 'pax-escaped.txt', 'long-escaped.txt', 'dir']) expect(fs.existsSync(path.join(dir, escaped)), escaped).toBe(false);
    for (const outside of ['/tmp/builder-attack-absolute.txt', '/etc/builder-attack', '/tmp/builder-attack-via-link.txt', '/escaped.txt', '/long-escaped.txt']) {
      expect(fs.existsSync(outside), outside).toBe(false);
    }
    // Inside the store, nothing stays either: files stored before the refusal are removed.
    const storeFiles = fs.readdirSync(path.join(dir, 'state', 'artifacts'), { recursive: true }) as string[];
    expect(storeFiles.filter((name) => !/^(tmp|[0-9a-f]{2})$/.test(name))).toEqual([]);
    refused += 1;
  });
});
