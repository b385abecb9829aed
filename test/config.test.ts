/**
 * Config files and BUILDER_* variables: each program reads TOML and YAML, one precedence (default
 * < file < environment < flag) shown by --print-config with each value's origin, a server, worker
 * and client configured by files alone run a job, every mistake is one line naming the file and
 * key (or the variable) with exit status 1, and the variables a job runs with change nothing.
 * No test reads this machine's /etc/builder or ~/.config/builder: the harness sets
 * BUILDER_CONFIG_DIRS empty, and tests that search point it (or XDG_CONFIG_HOME) at a temp dir.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ConfigSpec, formatConfig, loadConfig } from '../lib/config.js';
import { PLATFORM, ROOT, killAll, sha256, startProcess, tempDir, waitFor } from './harness.js';

interface Ran { code: number | null; stdout: string; stderr: string }

async function run(script: 'server' | 'worker' | 'client', args: string[], env: NodeJS.ProcessEnv = {}): Promise<Ran> {
  const proc = startProcess(`builder-${script}.js`, args, env);
  const { code } = await proc.exit;
  return { code, stdout: proc.stdout, stderr: proc.stderr };
}

/** --print-config's table, aligned as it prints it (for rows whose values have varying lengths). */
function table(head: string, rows: [string, string, string][]): string {
  const keyWidth = Math.max(...rows.map(([key]) => key.length));
  const valueWidth = Math.max(...rows.map(([, value]) => value.length));
  return `${[head, ...rows.map(([key, value, origin]) => `${key.padEnd(keyWidth)} = ${value.padEnd(valueWidth)}  (${origin})`)].join('\n')}\n`;
}

let dir: string;
const at = (...parts: string[]): string => path.join(dir, ...parts);
const write = (file: string, text: string): string => {
  fs.mkdirSync(path.dirname(at(file)), { recursive: true });
  fs.writeFileSync(at(file), text);
  return at(file);
};

beforeAll(() => {
  dir = tempDir('builder-config-');
});
afterAll(async () => {
  await killAll();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('--print-config', () => {
  it('builder-server: a TOML file given with --config, then a YAML file found in the state directory', async () => {
    const toml = write('server/server.toml', [
      '# builder-server settings',
      'listen = "127.0.0.1:0"',
      'state-dir = "state"          # relative to this file',
      'job-timeout = "2h"',
      'keep-runs = 5',
      'strict = true',
      'notify = ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]',
      '',
    ].join('\n'));
    const fromToml = await run('server', ['--config', toml, '--print-config']);
    const file = `file ${toml}`;
    const rows = (overrides: Record<string, [string, string]>): [string, string, string][] => [
      ['listen', '127.0.0.1:1234', 'default'], ['state-dir', path.join(ROOT, 'var'), 'default'], ['templates', path.join(ROOT, 'templates'), 'default'],
      ['job-timeout', '1h', 'default'], ['heartbeat', '10s', 'default'], ['max-frame-bytes', '16777216', 'default'],
      ['strict', 'false', 'default'], ['max-artifact-bytes', '68719476736', 'default'], ['max-run-artifact-bytes', '274877906944', 'default'],
      ['max-line-bytes', '65536', 'default'], ['max-console-bytes', '1073741824', 'default'], ['max-connections-per-address', '256', 'default'],
      ['min-free-bytes', '67108864', 'default'], ['hello-timeout', '10s', 'default'], ['observer-backlog-bytes', '8388608', 'default'],
      ['tls-cert', '-', 'default'], ['tls-key', '-', 'default'], ['allow-plaintext', 'false', 'default'], ['keep-runs', '0', 'default'],
      ['vacuum-every', '1h', 'default'], ['http', '-', 'default'], ['notify', '[]', 'default'], ['notify-secret-file', '-', 'default'],
      ['notify-attempts', '8', 'default'], ['notify-backoff', '2s', 'default'], ['public-url', '-', 'default'],
      ['forget-workers-after', '1h', 'default'],
    ].map(([key, value, origin]) => [key, ...(overrides[key] ?? [value, origin])] as [string, string, string]);
    expect(fromToml).toEqual({
      code: 0, stderr: '',
      stdout: table(`config file: ${toml} (--config)`, rows({
        listen: ['127.0.0.1:0', file], 'state-dir': [at('server', 'state'), file], 'job-timeout': ['2h', file], 'keep-runs': ['5', file],
        strict: ['true', file], notify: ['http://127.0.0.1:9/a,http://127.0.0.1:9/b', file],
      })),
    });

    const stateDir = at('server-state');
    const yaml = write('server-state/server.yaml', [
      '# builder-server settings',
      'listen: 127.0.0.1:0',
      'heartbeat: 5s',
      'max-line-bytes: 4096',
      'allow-plaintext: false',
      'tls-cert: certs/server.pem',
      'tls-key: /etc/ssl/server.key',
      'http:                      # null: left at its default',
      'notify:',
      '  - https://hooks.example.org/builder',
      '',
    ].join('\n'));
    const fromYaml = await run('server', ['--state-dir', stateDir, '--print-config']);
    const yfile = `file ${yaml}`;
    expect(fromYaml).toEqual({
      code: 0, stderr: '',
      stdout: table(`config file: ${yaml} (default location)`, rows({
        listen: ['127.0.0.1:0', yfile], 'state-dir': [stateDir, 'flag'], heartbeat: ['5s', yfile], 'max-line-bytes': ['4096', yfile],
        'allow-plaintext': ['false', yfile], 'tls-cert': [path.join(stateDir, 'certs', 'server.pem'), yfile],
        'tls-key': ['/etc/ssl/server.key', yfile], notify: ['https://hooks.example.org/builder', yfile],
      })),
    });
    // Nothing was started: no database in either state directory.
    expect(fs.existsSync(at('server', 'state'))).toBe(false);
    expect(fs.readdirSync(stateDir)).toEqual(['server.yaml']);
  });

  it('builder-worker: a TOML file found in BUILDER_CONFIG_DIRS, then a YAML file named by BUILDER_CONFIG; no PLATFORM needed', async () => {
    const toml = write('worker-etc/worker.toml', [
      'remote = "build.example.org:1234"',
      'labels = ["gpu", "big"]',
      'loop = true',
      'hostname = "box-1"',
      'tls = true',
      'sandbox = "docker"',
      'image = "builder/debian:12"',
      'memory = "2g"',
      'cpus = 2                     # a number for a text option is taken as its text',
      'pids = 512',
      '',
    ].join('\n'));
    const fromToml = await run('worker', ['--print-config'], { BUILDER_CONFIG_DIRS: `${at('nowhere')}:${at('worker-etc')}` });
    expect(fromToml).toEqual({
      code: 0, stderr: '', stdout: `config file: ${toml} (default location)
remote     = build.example.org:1234  (file ${toml})
labels     = gpu,big                 (file ${toml})
loop       = true                    (file ${toml})
hostname   = box-1                   (file ${toml})
tls-ca     = -                       (default)
tls        = true                    (file ${toml})
token-file = -                       (default)
tmp-dir    = -                       (default)
sandbox    = docker                  (file ${toml})
image      = builder/debian:12       (file ${toml})
memory     = 2g                      (file ${toml})
cpus       = 2                       (file ${toml})
pids       = 512                     (file ${toml})
network    = none                    (default)
`,
    });

    const yaml = write('worker.yml', 'remote: 10.1.2.3:1234\nlabels: fast,arm\nhostname: box-2\nnetwork: host\nloop: false\n');
    const fromYaml = await run('worker', [PLATFORM, '--print-config'], { BUILDER_CONFIG: yaml, BUILDER_CONFIG_DIRS: at('worker-etc') });
    expect(fromYaml).toEqual({
      code: 0, stderr: '', stdout: `config file: ${yaml} (BUILDER_CONFIG)
remote     = 10.1.2.3:1234  (file ${yaml})
labels     = fast,arm       (file ${yaml})
loop       = false          (file ${yaml})
hostname   = box-2          (file ${yaml})
tls-ca     = -              (default)
tls        = false          (default)
token-file = -              (default)
tmp-dir    = -              (default)
sandbox    = process        (default)
image      = -              (default)
memory     = -              (default)
cpus       = -              (default)
pids       = -              (default)
network    = host           (file ${yaml})
`,
    });
  });

  it('builder-client: a TOML file in $XDG_CONFIG_HOME/builder, then a YAML file given with --config; a global option, no command needed', async () => {
    const toml = write('xdg/builder/client.toml', 'remote = "127.0.0.1:4321"\ntoken-file = "ci.token"\ntls = true\n');
    const fromToml = await run('client', ['--print-config'], { BUILDER_CONFIG_DIRS: undefined, XDG_CONFIG_HOME: at('xdg') });
    expect(fromToml).toEqual({
      code: 0, stderr: '', stdout: table(`config file: ${toml} (default location)`, [
        ['remote', '127.0.0.1:4321', `file ${toml}`],
        ['token-file', at('xdg', 'builder', 'ci.token'), `file ${toml}`],
        ['tls-ca', '-', 'default'],
        ['tls', 'true', `file ${toml}`],
      ]),
    });

    const yaml = write('client.yaml', 'remote: 127.0.0.1:5555\n');
    const fromYaml = await run('client', ['info', '--config', yaml, '--print-config']);
    expect(fromYaml).toEqual({
      code: 0, stderr: '', stdout: `config file: ${yaml} (--config)
remote     = 127.0.0.1:5555  (file ${yaml})
token-file = -               (default)
tls-ca     = -               (default)
tls        = false           (default)
`,
    });
  });

  it('says where it looked when there is no config file', async () => {
    const none = await run('client', ['--print-config'], { BUILDER_CONFIG_DIRS: `${at('empty-a')}:${at('empty-b')}` });
    expect(none).toEqual({
      code: 0, stderr: '', stdout: `no config file (none of client.toml, client.yaml, client.yml in ${at('empty-a')}, ${at('empty-b')})
remote     = 127.0.0.1:1234  (default)
token-file = -               (default)
tls-ca     = -               (default)
tls        = false           (default)
`,
    });
    const nowhere = await run('worker', ['--print-config']);
    expect(nowhere.stdout.split('\n')[0]).toBe('no config file (BUILDER_CONFIG_DIRS is empty: nowhere to look)');
  });
});

describe('precedence: default < file < environment < flag', () => {
  it('the same key from each source, with its origin', async () => {
    const file = write('precedence/client.toml', 'remote = "10.0.0.1:1"\ntls = true\n');
    const remoteAndTls = async (args: string[], env: NodeJS.ProcessEnv): Promise<string[]> => {
      const result = await run('client', ['--config', file, ...args, '--print-config'], env);
      expect(result.code).toBe(0);
      return result.stdout.split('\n').filter((line) => /^(remote|tls) /.test(line));
    };
    expect(await remoteAndTls([], {})).toEqual([
      `remote     = 10.0.0.1:1  (file ${file})`,
      `tls        = true        (file ${file})`,
    ]);
    expect(await remoteAndTls([], { BUILDER_REMOTE: '10.0.0.2:2', BUILDER_TLS: 'no' })).toEqual([
      'remote     = 10.0.0.2:2  (env BUILDER_REMOTE)',
      'tls        = false       (env BUILDER_TLS)',
    ]);
    expect(await remoteAndTls(['--remote', '10.0.0.3:3', '--no-tls'], { BUILDER_REMOTE: '10.0.0.2:2', BUILDER_TLS: 'yes' })).toEqual([
      'remote     = 10.0.0.3:3  (flag)',
      'tls        = false       (flag)',
    ]);
    expect(await remoteAndTls(['--remote=10.0.0.4:4', '--tls'], { BUILDER_TLS: '0' })).toEqual([
      'remote     = 10.0.0.4:4  (flag)',
      'tls        = true        (flag)',
    ]);
    // An empty variable counts as unset.
    expect(await remoteAndTls([], { BUILDER_REMOTE: '', BUILDER_TLS: '' })).toEqual([
      `remote     = 10.0.0.1:1  (file ${file})`,
      `tls        = true        (file ${file})`,
    ]);
  });

  it('numbers, booleans and lists from the environment; flags after them win', async () => {
    const file = write('precedence/server.toml', 'keep-runs = 3\nstrict = true\nnotify = ["http://127.0.0.1:9/file"]\n');
    const env = { BUILDER_KEEP_RUNS: '7', BUILDER_STRICT: 'FALSE', BUILDER_NOTIFY: 'http://127.0.0.1:9/a, http://127.0.0.1:9/b' };
    const pick = (stdout: string): string[] => stdout.split('\n').filter((line) => /^(keep-runs|strict|notify) /.test(line)).map((line) => line.replace(/ +/g, ' '));
    const fromEnv = await run('server', ['--config', file, '--state-dir', at('unused'), '--print-config'], env);
    expect(pick(fromEnv.stdout)).toEqual([
      'strict = false (env BUILDER_STRICT)',
      'keep-runs = 7 (env BUILDER_KEEP_RUNS)',
      'notify = http://127.0.0.1:9/a,http://127.0.0.1:9/b (env BUILDER_NOTIFY)',
    ]);
    const fromFlags = await run('server', ['--config', file, '--state-dir', at('unused'), '--keep-runs', '9', '--strict', '--notify', 'http://127.0.0.1:9/flag', '--print-config'], env);
    expect(pick(fromFlags.stdout)).toEqual([
      'strict = true (flag)',
      'keep-runs = 9 (flag)',
      'notify = http://127.0.0.1:9/flag (flag)',
    ]);
    const worker = await run('worker', ['--print-config', '--no-loop', '--', '--labels', 'x'], { BUILDER_LABELS: 'a,b', BUILDER_LOOP: '1' });
    expect(worker.stdout.split('\n').filter((line) => /^(labels|loop) /.test(line))).toEqual([
      'labels     = a,b             (env BUILDER_LABELS)',
      'loop       = false           (flag)',
    ]);
  });
});

describe('a server, worker and client configured by files alone', () => {
  it('run a job end to end', async () => {
    const serverFile = write('e2e/etc/server.yaml', 'listen: 127.0.0.1:0\nstate-dir: ../state\nheartbeat: 1s\nkeep-runs: 10\n');
    const server = startProcess('builder-server.js', ['--config', serverFile]);
    const address = await waitFor('the server to listen', () => {
      if (server.exited !== null) throw new Error(`builder-server exited ${server.exited.code}: ${server.stderr}`);
      return /listening address=(\S+)/.exec(server.stderr)?.[1];
    }, 20_000);
    expect(fs.existsSync(at('e2e', 'state', 'builder.sqlite'))).toBe(true);

    write('e2e/client/client.toml', `remote = "${address}"\n`);
    const clientEnv = { BUILDER_CONFIG_DIRS: at('e2e', 'client') };
    const script = write('e2e/job.sh', 'echo "configured build"\necho configured > out.txt\n');
    const scheduled = await run('client', ['schedule', 'configured', PLATFORM, script, '--period', 'never'], clientEnv);
    expect(scheduled.code).toBe(0);
    const uuid = scheduled.stdout.trim();
    expect(uuid).toMatch(/^[0-9a-f-]{36}$/);

    fs.mkdirSync(at('e2e', 'tmp'));
    const workerFile = write('e2e/worker.toml', `remote = "${address}"\ntmp-dir = "tmp"\nhostname = "configured-worker"\n`);
    const worker = await run('worker', [PLATFORM], { BUILDER_CONFIG: workerFile });
    expect(worker.code).toBe(0);
    expect(worker.stderr).toContain(`builder-worker: connected to ${address} `);

    const observed = await run('client', ['observe', uuid, '--raw'], clientEnv);
    expect([observed.code, observed.stdout]).toEqual([0, 'configured build\n']);
    const shown = await run('client', ['show', uuid, '--json'], clientEnv);
    expect(shown.code).toBe(0);
    const run1 = JSON.parse(shown.stdout) as { status: string; worker: string; outcome: unknown; artifacts: { path: string; sha256: string }[] };
    expect(run1.status).toBe('success');
    expect(run1.outcome).toEqual({ kind: 'exited', code: 0 });
    expect(run1.worker).toMatch(/^configured-worker\//);
    expect(run1.artifacts.map((a) => [a.path, a.sha256])).toEqual([['out.txt', sha256('configured\n')]]);
    server.kill();
    await server.exit;
  });

  it('builder-server token uses the state-dir of the config file', async () => {
    const file = write('tokens/server.toml', 'state-dir = "state"\n');
    const added = await run('server', ['token', 'add', 'ci', '--role', 'viewer', '--config', file]);
    expect(added.code).toBe(0);
    expect(fs.existsSync(at('tokens', 'state', 'auth.sqlite'))).toBe(true);
    const listed = await run('server', ['token', 'list'], { BUILDER_CONFIG: file });
    expect(listed.stdout).toMatch(/^ci\tviewer\t\S+\n$/);
    const flagWins = await run('server', ['token', 'list', '--config', file, '--state-dir', at('tokens', 'other')]);
    expect([flagWins.code, flagWins.stdout]).toEqual([0, '']);
  });
});

describe('mistakes: one line naming the file and key, or the variable; exit 1', () => {
  const cases: { name: string; program: 'server' | 'worker' | 'client'; file?: [string, string]; args?: string[]; env?: NodeJS.ProcessEnv; stderr: (file: string) => string }[] = [
    {
      name: 'unknown key', program: 'server', file: ['server.toml', 'listen = "127.0.0.1:0"\nremte = "x"\n'],
      stderr: (f) => `builder-server: ${f}: unknown key 'remte' (known keys: listen, state-dir, templates, job-timeout, heartbeat, max-frame-bytes, strict, `
        + 'max-artifact-bytes, max-run-artifact-bytes, max-line-bytes, max-console-bytes, max-connections-per-address, min-free-bytes, hello-timeout, '
        + 'observer-backlog-bytes, tls-cert, tls-key, allow-plaintext, keep-runs, vacuum-every, http, notify, notify-secret-file, notify-attempts, '
        + 'notify-backoff, public-url, forget-workers-after)\n',
    },
    {
      name: 'a key spelled with _', program: 'worker', file: ['worker.yaml', 'tmp_dir: /tmp\n'],
      stderr: (f) => `builder-worker: ${f}: unknown key 'tmp_dir' (did you mean 'tmp-dir'?)\n`,
    },
    { name: 'wrong type: boolean', program: 'worker', file: ['worker.toml', 'loop = "yes"\n'], stderr: (f) => `builder-worker: ${f}: key 'loop' must be true or false, not "yes"\n` },
    { name: 'wrong type: YAML yes is a string', program: 'worker', file: ['worker.yml', 'loop: yes\n'], stderr: (f) => `builder-worker: ${f}: key 'loop' must be true or false, not "yes"\n` },
    { name: 'wrong type: number', program: 'server', file: ['server.toml', 'keep-runs = "5"\n'], stderr: (f) => `builder-server: ${f}: key 'keep-runs' must be a number, not "5"\n` },
    { name: 'wrong type: string', program: 'client', file: ['client.toml', 'remote = true\n'], stderr: (f) => `builder-client: ${f}: key 'remote' must be a string, not true\n` },
    { name: 'wrong type: list', program: 'server', file: ['server.toml', 'notify = "http://x/"\n'], stderr: (f) => `builder-server: ${f}: key 'notify' must be a list of strings, not "http://x/"\n` },
    { name: 'not one of the choices', program: 'worker', file: ['worker.toml', 'sandbox = "lxc"\n'], stderr: (f) => `builder-worker: ${f}: key 'sandbox' must be one of process, docker, podman, not "lxc"\n` },
    {
      name: 'a nested table', program: 'server', file: ['server.toml', '[server]\nlisten = "127.0.0.1:0"\n'],
      stderr: (f) => `builder-server: ${f}: key 'server' is a table; nested tables are not allowed: give each option as a top-level key, named as on the command line\n`,
    },
    { name: 'bad TOML syntax', program: 'client', file: ['client.toml', '# client\nremote = "127.0.0.1:1234"\ntls = \n'], stderr: (f) => `builder-client: ${f}: line 3: invalid TOML: invalid value\n` },
    { name: 'a TOML key twice', program: 'client', file: ['client.toml', 'tls = true\ntls = false\n'], stderr: (f) => `builder-client: ${f}: line 2: invalid TOML: trying to redefine an already defined table or value\n` },
    {
      name: 'bad YAML', program: 'worker', file: ['worker.yaml', 'remote: 127.0.0.1:1234\n  labels: a\n'],
      stderr: (f) => `builder-worker: ${f}: line 1: invalid YAML: Nested mappings are not allowed in compact mappings\n`,
    },
    { name: 'a YAML list at the top', program: 'client', file: ['client.yml', '- remote\n'], stderr: (f) => `builder-client: ${f}: expected key: value pairs at the top level, not a list\n` },
    { name: 'a missing --config file', program: 'server', args: ['--config', '@/nope.toml'], stderr: () => `builder-server: --config: @/nope.toml does not exist\n` },
    { name: 'a missing BUILDER_CONFIG file', program: 'client', env: { BUILDER_CONFIG: '@/nope.yaml' }, args: ['info'], stderr: () => `builder-client: BUILDER_CONFIG: @/nope.yaml does not exist\n` },
    {
      name: 'an unknown extension', program: 'client', file: ['client.conf', 'remote = "x"\n'],
      stderr: (f) => `builder-client: ${f}: cannot tell whether it is TOML or YAML: name it *.toml, *.yaml or *.yml\n`,
    },
    { name: 'a bad number variable', program: 'worker', env: { BUILDER_PIDS: 'many' }, stderr: () => "builder-worker: BUILDER_PIDS: 'many' is not a number\n" },
    { name: 'a bad boolean variable', program: 'client', env: { BUILDER_TLS: 'maybe' }, args: ['info'], stderr: () => "builder-client: BUILDER_TLS: 'maybe' is not true or false (use true, false, 1, 0, yes or no)\n" },
    { name: 'a bad choice variable', program: 'worker', env: { BUILDER_SANDBOX: 'lxc' }, stderr: () => "builder-worker: BUILDER_SANDBOX: 'lxc' must be one of process, docker, podman\n" },
    {
      name: 'a value the option refuses, from a file', program: 'server', file: ['server.toml', 'keep-runs = -1\n'],
      stderr: (f) => `builder-server: ${f}: key 'keep-runs': '-1' is not a whole number from 1 to 1000000\n`,
    },
    {
      name: 'a duration the option refuses, from a file', program: 'server', file: ['server.yaml', 'job-timeout: soon\n'],
      stderr: (f) => `builder-server: ${f}: key 'job-timeout': invalid duration 'soon': use a number and a unit s, m, h, d or w, e.g. 30m, 6h, 1d or 1d12h\n`,
    },
    { name: 'an address the option refuses, from a variable', program: 'server', env: { BUILDER_LISTEN: 'bogus' }, stderr: () => "builder-server: BUILDER_LISTEN: invalid address 'bogus': expected HOST:PORT, for example 127.0.0.1:1234\n" },
    {
      name: 'a file the option cannot read, from a file', program: 'client', file: ['client.toml', 'token-file = "missing.token"\n'], args: ['info'],
      stderr: (f) => `builder-client: ${f}: key 'token-file': cannot read ${path.join(path.dirname(f), 'missing.token')}: ENOENT\n`,
    },
  ];
  it.each(cases.map((c, i) => [c.name, i] as const))('%s', async (_name, index) => {
    const c = cases[index] as (typeof cases)[number];
    const caseDir = at('mistakes', String(index));
    fs.mkdirSync(caseDir, { recursive: true });
    const file = c.file === undefined ? '' : path.join(caseDir, c.file[0]);
    if (c.file !== undefined) fs.writeFileSync(file, c.file[1]);
    const args = [...(c.program === 'worker' ? [PLATFORM] : []), ...(c.program === 'server' ? ['--state-dir', path.join(caseDir, 'state')] : []),
      ...(c.file === undefined ? [] : ['--config', file]), ...(c.args ?? []).map((arg) => arg.replace('@', caseDir))];
    const env = Object.fromEntries(Object.entries(c.env ?? {}).map(([key, value]) => [key, value?.replace('@', caseDir)]));
    const result = await run(c.program, args, env);
    expect(result).toEqual({ code: 1, stdout: '', stderr: c.stderr(file).replace('@', caseDir) });
    expect(fs.existsSync(path.join(caseDir, 'state'))).toBe(false);
  });

  it('a bad variable is an error even when a flag overrides it', async () => {
    const result = await run('client', ['--tls', '--print-config'], { BUILDER_TLS: 'maybe' });
    expect(result).toEqual({ code: 1, stdout: '', stderr: "builder-client: BUILDER_TLS: 'maybe' is not true or false (use true, false, 1, 0, yes or no)\n" });
  });
});

describe('the variables a job runs with', () => {
  it('BUILDER_UUID, BUILDER_JOB, BUILDER_PLATFORM and BUILDER_PROGRESS change nothing', async () => {
    const jobEnv = { BUILDER_UUID: '0b5e0000-0000-4000-8000-000000000000', BUILDER_JOB: 'evil', BUILDER_PLATFORM: 'other-platform', BUILDER_PROGRESS: '/tmp/progress' };
    for (const program of ['server', 'worker', 'client'] as const) {
      const args = program === 'server' ? ['--state-dir', at('job-env'), '--print-config'] : ['--print-config'];
      const plain = await run(program, args);
      const inJob = await run(program, args, jobEnv);
      expect(inJob).toEqual(plain);
      expect(plain.code).toBe(0);
      expect(plain.stdout).not.toContain('(env ');
    }
    // The worker's PLATFORM stays command-line only.
    const worker = await run('worker', [], jobEnv);
    expect(worker).toEqual({ code: 1, stdout: '', stderr: 'builder-worker: give the PLATFORM to run jobs for, e.g. builder-worker debian-12\n' });
  });
});

describe('lib/config.ts', () => {
  const env = { BUILDER_CONFIG_DIRS: '' };
  it('never prints the value of a key ending in -secret', () => {
    const spec: ConfigSpec = { name: 'client', keys: { 'api-secret': 'string', 'other-secret': 'string', plain: 'string' } };
    const loaded = loadConfig(spec, { args: [], env: { ...env, BUILDER_API_SECRET: 'hunter2' } });
    expect(formatConfig(loaded, (key) => (key === 'api-secret' ? 'hunter2' : undefined))).toBe([
      'no config file (BUILDER_CONFIG_DIRS is empty: nowhere to look)',
      'api-secret   = ***  (env BUILDER_API_SECRET)',
      'other-secret = -    (default)',
      'plain        = -    (default)',
      '',
    ].join('\n'));
  });

  it('refuses to declare an option that would read a variable jobs run with', () => {
    for (const key of ['job', 'platform', 'uuid', 'progress', 'token', 'config-dirs']) {
      expect(() => loadConfig({ name: 'client', keys: { [key]: 'string' } }, { args: [], env })).toThrow(/has another meaning; declare it with env: false/);
    }
    const fileOnly = loadConfig({ name: 'client', keys: { platform: { type: 'string', env: false } } }, { args: [], env: { ...env, BUILDER_PLATFORM: 'x' } });
    expect(fileOnly.values.size).toBe(0);
  });

  it('reads only the declared variables', () => {
    const loaded = loadConfig({ name: 'worker', keys: { loop: 'boolean' } }, { args: [], env: { ...env, BUILDER_LOOP: 'yes', BUILDER_OTHER: 'x', BUILDER_TMP_DIR: os.tmpdir() } });
    expect([...loaded.values.entries()]).toEqual([['loop', { value: true, origin: { kind: 'env', variable: 'BUILDER_LOOP' } }]]);
  });
});
