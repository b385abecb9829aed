/**
 * TLS on the builder port and the web view, with a CA and certificates made by openssl for the
 * test: clients and workers that trust the CA work end to end; every way of getting it wrong
 * (no TLS, an untrusted certificate, a certificate for another name, TLS against a plain server)
 * is one clear line; and a server refuses to listen beyond loopback without TLS unless told.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  PLATFORM, type ServerHandle, client, killAll, ok, sha256, startProcess, startServer, startWorker, tempDir, waitFor,
} from './harness.js';

/** A CA, and a certificate it signs for `names` (subjectAltName entries like IP:127.0.0.1). */
function makeCertificates(dir: string): { ca: string; cert: string; key: string; otherCert: string; otherKey: string } {
  const run = (args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  };
  run(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=builder test CA']);
  const leaf = (name: string, san: string): void => {
    run(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`]);
    fs.writeFileSync(path.join(dir, `${name}.ext`), `subjectAltName=${san}\n`);
    run(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`]);
  };
  leaf('server', 'IP:127.0.0.1,DNS:localhost');
  leaf('other', 'DNS:other.example');
  const at = (file: string): string => path.join(dir, file);
  return { ca: at('ca.pem'), cert: at('server.pem'), key: at('server.key'), otherCert: at('other.pem'), otherKey: at('other.key') };
}

describe('TLS', () => {
  let dir: string;
  let certs: ReturnType<typeof makeCertificates>;
  let server: ServerHandle;

  beforeAll(async () => {
    dir = tempDir();
    certs = makeCertificates(dir);
    server = await startServer(path.join(dir, 'state'), ['--tls-cert', certs.cert, '--tls-key', certs.key, '--http', '127.0.0.1:0']);
  });
  afterAll(async () => {
    await killAll();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('runs a job end to end over TLS: client and worker trust the CA', async () => {
    expect(server.proc.stderr).toMatch(/listening address=\S+ tls=on /);
    const tls = ['--tls-ca', certs.ca];
    fs.writeFileSync(path.join(dir, 'job.sh'), 'echo secret-build > out.txt\n');
    const scheduled = await client(server, [...tls, 'schedule', 'over-tls', PLATFORM, path.join(dir, 'job.sh')]);
    expect(scheduled.code).toBe(0);
    const uuid = scheduled.stdout.trim();
    const worker = startWorker(server, tls, PLATFORM, dir);
    expect((await worker.exit).code).toBe(0);
    const shown = JSON.parse((await client(server, [...tls, 'show', uuid, '--json'])).stdout) as { outcome: unknown; artifacts: { sha256: string }[] };
    expect(shown.outcome).toEqual({ kind: 'exited', code: 0 });
    expect(shown.artifacts.map((a) => a.sha256)).toEqual([sha256('secret-build\n')]);
    const fetched = await client(server, [...tls, 'fetch', uuid, '-o', path.join(dir, 'fetched')]);
    expect(fetched.code).toBe(0);
    expect(fs.readFileSync(path.join(dir, 'fetched', 'out.txt'), 'utf8')).toBe('secret-build\n');
    // The same with the host name the certificate also names.
    const port = server.address.split(':').at(-1);
    expect((await client({ address: `localhost:${port}` }, [...tls, 'info'])).code).toBe(0);
  });

  it('serves the web view over HTTPS with the same certificate', async () => {
    expect(server.web).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const body = await new Promise<string>((resolve, reject) => {
      https.get(`${server.web}/`, { ca: fs.readFileSync(certs.ca) }, (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (chunk: string) => { text += chunk; }).on('end', () => resolve(text));
      }).on('error', reject);
    });
    expect(body).toContain('<a href="/job/over-tls">over-tls</a>');
  });

  it('says in one line what is wrong when the two sides disagree', async () => {
    const plain = await client(server, ['info']);
    expect([plain.code, plain.stderr]).toEqual([2,
      `builder-client: the server at ${server.address} closed the connection during the hello (connection closed); if it uses TLS, give --tls-ca FILE or --tls\n`]);
    const systemStore = await client(server, ['--tls', 'info']);
    expect([systemStore.code, systemStore.stderr]).toEqual([2,
      `builder-client: TLS with the server at ${server.address} failed: the server's certificate is not trusted (UNABLE_TO_VERIFY_LEAF_SIGNATURE): give the CA that signed it with --tls-ca FILE\n`]);
    const missingCa = await client(server, ['--tls-ca', path.join(dir, 'nope.pem'), 'info']);
    expect([missingCa.code, missingCa.stderr]).toEqual([1, `builder-client: --tls-ca: cannot read ${path.join(dir, 'nope.pem')}: ENOENT\n`]);
    const worker = startWorker(server, ['--tls'], PLATFORM, dir);
    expect((await worker.exit).code).toBe(2);
    expect(worker.stderr).toContain("TLS with the server at 127.0.0.1:");
    expect(worker.stderr).toContain("failed: the server's certificate is not trusted");
    await waitFor('the handshake failure to be logged', () => /error peer=127\.0\.0\.1:\d+ problem="TLS handshake failed: /.test(server.proc.stderr) || null);
  });

  it('refuses a certificate made for another name, and TLS against a plain server', async () => {
    const other = await startServer(path.join(dir, 'state-other'), ['--tls-cert', certs.otherCert, '--tls-key', certs.otherKey]);
    const wrongName = await client(other, ['--tls-ca', certs.ca, 'info']);
    expect(wrongName.code).toBe(2);
    expect(wrongName.stderr).toMatch(/^builder-client: TLS with the server at \S+ failed: the server's certificate is not valid for this address: Hostname\/IP does not match certificate's altnames: IP: 127\.0\.0\.1 is not in the cert's list: \n$/);
    const plainServer = await startServer(path.join(dir, 'state-plain'));
    const tlsToPlain = await client(plainServer, ['--tls-ca', certs.ca, 'info']);
    expect(tlsToPlain.code).toBe(2);
    expect(tlsToPlain.stderr).toMatch(/^builder-client: TLS with the server at \S+ failed: the TLS handshake failed \(.+\): does the server use TLS \(--tls-cert\)\? without it, drop --tls\/--tls-ca\n$/);
  });

  it('will not listen beyond loopback without TLS, unless told the network is trusted', async () => {
    const refused = startProcess('builder-server.js', ['--listen', '0.0.0.0:0', '--state-dir', path.join(dir, 'state-open')]);
    expect((await refused.exit).code).toBe(2);
    expect(refused.stderr).toBe('builder-server: refusing to serve the builder protocol on 0.0.0.0:0 without TLS: anyone on the network could read tokens '
      + 'and run code on the workers; give --tls-cert FILE --tls-key FILE, or --allow-plaintext if this network is trusted\n');
    expect(fs.existsSync(path.join(dir, 'state-open', 'builder.sqlite'))).toBe(false);
    const web = startProcess('builder-server.js', ['--listen', '127.0.0.1:0', '--http', '0.0.0.0:0', '--state-dir', path.join(dir, 'state-open')]);
    expect((await web.exit).code).toBe(2);
    expect(web.stderr).toContain('refusing to serve the web view on 0.0.0.0:0 without TLS');
    const halfTls = startProcess('builder-server.js', ['--tls-cert', certs.cert, '--state-dir', path.join(dir, 'state-open')]);
    expect([(await halfTls.exit).code, halfTls.stderr]).toEqual([1, 'builder-server: give both --tls-cert and --tls-key, or neither\n']);
    const allowed = await startServer(path.join(dir, 'state-trusted'), ['--allow-plaintext'], '0.0.0.0:0');
    expect(allowed.proc.stderr).toMatch(/listening address=0\.0\.0\.0:\d+ tls=off/);
    expect(await ok(allowed, ['info'])).toContain('jobs (0):');
  });
});
