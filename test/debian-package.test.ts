/**
 * The Debian package (debian/): dpkg-buildpackage builds it from a copy of the checkout (tracked and
 * untracked files plus node_modules) and `debian/rules clean` returns that copy to exactly what it
 * was; the .deb holds the app, its wrappers, its units and the right dependencies; systemd-analyze
 * accepts the units. As root it then really installs it on this machine: the builder user and
 * /var/lib/builder exist, the installed server runs as builder with the installed defaults (state
 * dir, templates), an installed worker runs a templated job, and purging removes it all.
 *
 * Needs dpkg-dev, debhelper, systemd (systemd-analyze) and git; the install part needs root. Without
 * them the tests skip, except under CI=true where they fail instead.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, tempDir, waitFor } from './harness.js';

const CI = process.env.CI === 'true';
const IS_ROOT = process.getuid?.() === 0;
const TOOLS = ['git', 'dpkg-buildpackage', 'dh', 'dpkg-deb', 'dpkg-parsechangelog', 'systemd-analyze'];
const missingTools = TOOLS.filter((tool) => spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status !== 0);
const canBuild = missingTools.length === 0;
if (!canBuild && CI) throw new Error(`CI=true needs ${missingTools.join(', ')}: apt-get install dpkg-dev debhelper systemd git`);

const NODE_MAJOR = Number(process.versions.node.split('.')[0]);
const UNITS = ['builder-server.service', 'builder-worker@.service'];
const PROGRAMS = ['builder-server', 'builder-worker', 'builder-client'];
/** What dpkg-buildpackage leaves in debian/ (the .gitignore entries for an in-place build). */
const BUILD_LEFTOVERS = [
  /^debian\/\.debhelper\//, /^debian\/builder\//, /^debian\/tmp\//, /^debian\/build\//, /^debian\/files$/,
  /^debian\/debhelper-build-stamp$/, /^debian\/builder\.substvars$/, /^debian\/[^/]*\.debhelper(\.log)?$/,
];

interface Run { code: number | null; stdout: string; stderr: string }

/** Runs a command to completion (without a shell), collecting its output. */
function run(command: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: options.cwd, env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

async function ok(command: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  const result = await run(command, args, options);
  if (result.code !== 0) throw new Error(`${command} ${args.join(' ')} exited ${result.code}:\n${result.stderr}${result.stdout}`);
  return result.stdout;
}

/** Every file and symlink below `dir` (relative paths, directories omitted) with a content hash. */
function snapshot(dir: string, skip: (rel: string) => boolean = () => false): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (rel: string): void => {
    for (const entry of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const child = rel === '' ? entry.name : `${rel}/${entry.name}`;
      if (skip(child)) continue;
      const full = path.join(dir, child);
      if (entry.isDirectory()) walk(child);
      else if (entry.isSymbolicLink()) files.set(child, `-> ${fs.readlinkSync(full)}`);
      else files.set(child, `${fs.statSync(full).mode.toString(8)} ${crypto.createHash('sha256').update(fs.readFileSync(full)).digest('hex')}`);
    }
  };
  walk('');
  return files;
}

function exists(file: string): boolean {
  try {
    fs.lstatSync(file);
    return true;
  } catch {
    return false;
  }
}

let work: string;
let src: string;
let deb: string;
let extracted: string;
/** `dpkg-deb -c`: path (without the leading '.') → mode string, e.g. '/usr/bin/builder-server' → '-rwxr-xr-x'. */
const contents = new Map<string, string>();
let unitDir: string;
let before: Map<string, string>;
let afterBuild: Map<string, string>;
let builtFiles: string[];
const inNodeModules = (rel: string): boolean => rel === 'node_modules';

describe.skipIf(!canBuild)('the Debian package', () => {
  beforeAll(async () => {
    work = tempDir('builder-deb-');
    src = path.join(work, 'src');
    // A copy of the checkout as git sees it (tracked and untracked, not ignored files) plus the
    // installed node_modules, which the package build reuses instead of downloading anything.
    const listed = (await ok('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: ROOT })).split('\0').filter((f) => f !== '');
    for (const file of listed) {
      if (!exists(path.join(ROOT, file))) continue; // deleted in the work tree, not yet in the index
      fs.mkdirSync(path.dirname(path.join(src, file)), { recursive: true });
      fs.cpSync(path.join(ROOT, file), path.join(src, file), { verbatimSymlinks: true, preserveTimestamps: true });
    }
    await ok('cp', ['-a', path.join(ROOT, 'node_modules'), src]);
    before = snapshot(src, inNodeModules);

    const build = await run('dpkg-buildpackage', ['-us', '-uc', '-b'], { cwd: src });
    if (build.code !== 0) throw new Error(`dpkg-buildpackage exited ${build.code}:\n${build.stdout.slice(-4000)}${build.stderr.slice(-4000)}`);
    afterBuild = snapshot(src, inNodeModules);
    builtFiles = fs.readdirSync(work).sort();

    const version = (await ok('dpkg-parsechangelog', ['-S', 'Version'], { cwd: src })).trim();
    const arch = (await ok('dpkg', ['--print-architecture'])).trim();
    deb = path.join(work, `builder_${version}_${arch}.deb`);
    for (const line of (await ok('dpkg-deb', ['-c', deb])).split('\n').filter((l) => l !== '')) {
      const fields = line.split(/\s+/);
      contents.set(fields[5]!.replace(/^\./, '').replace(/(.)\/$/, '$1'), fields[0]!);
    }
    unitDir = contents.has('/usr/lib/systemd/system/builder-server.service') ? '/usr/lib/systemd/system' : '/lib/systemd/system';
    extracted = path.join(work, 'extracted');
    await ok('dpkg-deb', ['-x', deb, extracted]);
  }, 900_000);

  afterAll(() => {
    if (work !== undefined) fs.rmSync(work, { recursive: true, force: true });
  });

  describe('dpkg-buildpackage -us -uc -b', () => {
    it('writes only the .deb, .buildinfo and .changes next to the tree (no -dbgsym package)', () => {
      const stem = path.basename(deb, '.deb');
      expect(builtFiles).toEqual([`${stem}.buildinfo`, `${stem}.changes`, `${stem}.deb`, 'src']);
    });

    it('changes nothing outside debian/, leaves only the known debhelper files there, and clean removes them', async () => {
      const added = [...afterBuild.keys()].filter((file) => !before.has(file));
      const changed = [...before.keys()].filter((file) => afterBuild.get(file) !== before.get(file));
      expect(changed).toEqual([]);
      expect(added.filter((file) => !BUILD_LEFTOVERS.some((pattern) => pattern.test(file)))).toEqual([]);
      expect(added).toContain('debian/files');
      await ok('debian/rules', ['clean'], { cwd: src });
      expect(snapshot(src, inNodeModules)).toEqual(before);
    });
  });

  describe('the .deb', () => {
    it('holds the wrappers, the units, the /etc/default files, the app and its templates', () => {
      for (const program of PROGRAMS) expect(contents.get(`/usr/bin/${program}`)).toBe('-rwxr-xr-x');
      for (const unit of UNITS) expect(contents.get(`${unitDir}/${unit}`)).toBe('-rw-r--r--');
      expect(contents.get('/etc/default/builder-server')).toBe('-rw-r--r--');
      expect(contents.get('/etc/default/builder-worker')).toBe('-rw-r--r--');
      expect(contents.get('/usr/share/doc/builder/README.md')).toBe('-rw-r--r--');
      // package.json marks the package root (lib/platform.ts); no tsconfig.json marks it installed.
      expect(contents.get('/usr/lib/builder/package.json')).toBe('-rw-r--r--');
      expect(contents.has('/usr/lib/builder/tsconfig.json')).toBe(false);
      // node runs it all through the wrappers: no stray execute bits from npm tarballs.
      expect([...contents].filter(([file, mode]) => file.startsWith('/usr/lib/builder/') && mode.startsWith('-') && mode.includes('x'))).toEqual([]);
      for (const program of PROGRAMS) expect(contents.get(`/usr/lib/builder/dist/bin/${program}.js`)).toBe('-rw-r--r--');
      for (const dir of ['lib', 'protocol']) {
        const shipped = [...contents.keys()].filter((f) => f.startsWith(`/usr/lib/builder/dist/${dir}/`) && f.endsWith('.js')).map((f) => path.basename(f, '.js')).sort();
        const sources = fs.readdirSync(path.join(src, dir)).filter((f) => f.endsWith('.ts')).map((f) => path.basename(f, '.ts')).sort();
        expect(shipped).toEqual(sources);
      }
      // The checkout-only parts stay out.
      for (const absent of ['/usr/lib/builder/dist/bench', '/usr/lib/builder/dist/bin/builder-dev.js', '/usr/lib/builder/lib', '/usr/lib/builder/test', '/usr/lib/builder/bin']) {
        expect(contents.has(absent)).toBe(false);
      }
      // The job templates and the web view's pages, every file of each.
      for (const dir of ['templates', 'web']) {
        const shipped = [...contents.keys()].filter((f) => f.startsWith(`/usr/lib/builder/${dir}/`) && contents.get(f)!.startsWith('-'));
        const inRepo = fs.readdirSync(path.join(src, dir), { recursive: true, withFileTypes: true })
          .filter((e) => e.isFile()).map((e) => `/usr/lib/builder/${dir}/${path.relative(path.join(src, dir), path.join(e.parentPath, e.name))}`);
        expect(shipped.sort()).toEqual(inRepo.sort());
        expect(shipped.length).toBeGreaterThan(0);
      }
    });

    it('holds exactly the production node_modules, better-sqlite3 reduced to its compiled addon', () => {
      const pkg = JSON.parse(fs.readFileSync(path.join(src, 'package.json'), 'utf8')) as { dependencies: Record<string, string>; devDependencies: Record<string, string> };
      for (const dep of Object.keys(pkg.dependencies)) expect(contents.has(`/usr/lib/builder/node_modules/${dep}/package.json`), dep).toBe(true);
      for (const dep of [...Object.keys(pkg.devDependencies), 'vite', 'rolldown']) expect(contents.has(`/usr/lib/builder/node_modules/${dep}`), dep).toBe(false);
      const sqlite = '/usr/lib/builder/node_modules/better-sqlite3';
      expect([...contents.keys()].filter((f) => f.startsWith(`${sqlite}/build/`))).toEqual([`${sqlite}/build/Release`, `${sqlite}/build/Release/better_sqlite3.node`]);
      expect(contents.has(`${sqlite}/deps`)).toBe(false);
      expect(contents.has(`${sqlite}/src`)).toBe(false);
      expect([...contents.keys()].filter((f) => f.endsWith('.musl.node'))).toEqual([]);
    });

    it('ships the units, the wrappers and the default files exactly as in debian/', () => {
      for (const unit of UNITS) expect(fs.readFileSync(path.join(extracted, unitDir, unit), 'utf8')).toBe(fs.readFileSync(path.join(src, 'debian', unit), 'utf8'));
      for (const program of PROGRAMS) {
        const wrapper = fs.readFileSync(path.join(extracted, 'usr/bin', program), 'utf8');
        expect(wrapper.startsWith('#!/bin/sh\n')).toBe(true);
        expect(wrapper).toContain(`\nexec /usr/bin/node /usr/lib/builder/dist/bin/${program}.js "$@"\n`);
      }
      expect(fs.readFileSync(path.join(extracted, 'etc/default/builder-server'), 'utf8')).toContain('\nBUILDER_SERVER_ARGS=""\n');
    });

    it('declares its dependencies: nodejs pinned to the building Node major, docker recommended, /etc/default as conffiles', async () => {
      const field = async (name: string): Promise<string> => (await ok('dpkg-deb', ['-f', deb, name])).trim();
      expect(await field('Package')).toBe('builder');
      expect(await field('Architecture')).toBe((await ok('dpkg', ['--print-architecture'])).trim());
      const depends = (await field('Depends')).split(', ');
      expect(depends.slice(0, 3)).toEqual([`nodejs (>= ${NODE_MAJOR > 20 ? NODE_MAJOR : '20.19'}~)`, `nodejs (<< ${NODE_MAJOR + 1}~)`, 'adduser']);
      expect(depends.some((d) => /^libc6 \(>= [\d.]+\)$/.test(d))).toBe(true);
      expect(await field('Recommends')).toBe('docker.io | podman-docker');
      expect(await ok('dpkg-deb', ['-I', deb, 'conffiles'])).toBe('/etc/default/builder-server\n/etc/default/builder-worker\n');
    });

    it('runs from its own tree: builder-server --help', async () => {
      const result = await run(process.execPath, [path.join(extracted, 'usr/lib/builder/dist/bin/builder-server.js'), '--help']);
      expect(result.code).toBe(0);
      expect(result.stdout).toMatch(/^builder-server \[options\]\n\nRuns the builder server/);
      expect(result.stdout).toContain(`"${path.join(extracted, 'usr/lib/builder/templates')}"`);
    });
  });

  describe('its systemd units', () => {
    /**
     * A root for systemd-analyze --root: the extracted package, this system's own units (targets,
     * slices) and a stand-in docker: docker.service and /usr/bin/docker (whether or not this machine
     * has docker, so the result does not depend on it).
     */
    function analyzeRoot(withDocker: boolean): string {
      const root = path.join(work, `analyze-root-${withDocker}`);
      fs.rmSync(root, { recursive: true, force: true });
      fs.cpSync(extracted, root, { recursive: true, verbatimSymlinks: true });
      const units = path.join(root, unitDir);
      for (const systemDir of ['/lib/systemd/system', '/usr/lib/systemd/system']) {
        if (!exists(systemDir)) continue;
        for (const entry of fs.readdirSync(systemDir, { withFileTypes: true })) {
          if (entry.isDirectory() || entry.name.startsWith('docker.') || exists(path.join(units, entry.name))) continue;
          fs.cpSync(path.join(systemDir, entry.name), path.join(units, entry.name), { verbatimSymlinks: true });
        }
      }
      if (withDocker) {
        fs.writeFileSync(path.join(units, 'docker.service'), '[Unit]\nDescription=stand-in\n\n[Service]\nExecStart=/usr/bin/docker\n');
        fs.writeFileSync(path.join(root, 'usr/bin/docker'), '#!/bin/sh\n', { mode: 0o755 });
      }
      return root;
    }

    it('pass systemd-analyze verify (the worker template as an instance)', async () => {
      const root = analyzeRoot(true);
      const result = await run('systemd-analyze', ['verify', `--root=${root}`, 'builder-server.service', 'builder-worker@debian-12.service']);
      expect(result.stderr + result.stdout).toBe('');
      expect(result.code).toBe(0);
    });

    it('fail systemd-analyze verify without docker (so the check above checks something)', async () => {
      const root = analyzeRoot(false);
      const result = await run('systemd-analyze', ['verify', `--root=${root}`, 'builder-worker@debian-12.service']);
      expect(result.code).not.toBe(0);
      expect(result.stderr).toContain('Unit docker.service not found');
      expect(result.stderr).toContain('Command /usr/bin/docker is not executable');
    });

    it('run the server well sandboxed (systemd-analyze security: exposure at most 2.0)', async () => {
      const result = await run('systemd-analyze', ['security', '--offline=true', `--root=${analyzeRoot(true)}`, 'builder-server.service']);
      const exposure = /Overall exposure level for builder-server\.service: ([\d.]+)/.exec(result.stdout)?.[1];
      expect(exposure, result.stdout + result.stderr).toBeDefined();
      expect(Number(exposure)).toBeLessThanOrEqual(2.0);
      for (const setting of ['NoNewPrivileges=', 'ProtectSystem=', 'ProtectHome=', 'PrivateTmp=', 'PrivateDevices=', 'RestrictAddressFamilies=~AF_PACKET']) {
        expect(result.stdout).toMatch(new RegExp(`✓ ${setting.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
      }
      // V8's JIT needs writable+executable memory.
      expect(result.stdout).toMatch(/✗ MemoryDenyWriteExecute=/);
    });
  });

  describe.skipIf(!IS_ROOT && !CI)('installed with dpkg -i (as root)', () => {
    let userExisted = false;
    let server: ChildProcess | null = null;
    let address = '';
    let serverLog = '';

    beforeAll(async () => {
      if (!IS_ROOT) throw new Error('CI=true: the install tests need root');
      const status = await run('dpkg-query', ['-W', '-f=${db:Status-Abbrev}', 'builder']);
      if (status.code === 0 && !status.stdout.startsWith('un') && !status.stdout.startsWith('pn')) {
        throw new Error(`a builder package is already installed (${status.stdout.trim()}): this test would replace and purge it; dpkg --purge builder first`);
      }
      userExisted = (await run('getent', ['passwd', 'builder'])).code === 0;
    });

    afterAll(async () => {
      if (server !== null && server.exitCode === null) server.kill('SIGKILL');
      if ((await run('dpkg-query', ['-W', '-f=${db:Status-Abbrev}', 'builder'])).stdout.startsWith('i')) await run('dpkg', ['--purge', 'builder']);
      if (!userExisted && (await run('getent', ['passwd', 'builder'])).code === 0) await run('userdel', ['builder']);
    });

    it('installs', async () => {
      await ok('dpkg', ['-i', deb]);
      expect((await ok('dpkg-query', ['-W', '-f=${Status} ${Version}', 'builder']))).toMatch(/^install ok installed 0\.1\.0-/);
    });

    it('creates the builder system user and /var/lib/builder owned by it', async () => {
      const [name, , uid, gid, , home, shell] = (await ok('getent', ['passwd', 'builder'])).trim().split(':');
      expect(name).toBe('builder');
      expect(Number(uid)).toBeLessThan(1000);
      expect((await ok('getent', ['group', 'builder'])).split(':')[2]).toBe(gid);
      expect(home).toBe('/var/lib/builder');
      expect(shell).toBe('/usr/sbin/nologin');
      const stat = fs.statSync('/var/lib/builder');
      expect(stat.isDirectory()).toBe(true);
      expect([stat.uid, stat.gid, stat.mode & 0o7777]).toEqual([Number(uid), Number(gid), 0o750]);
    });

    it('installs both units and enables only the server', () => {
      for (const unit of UNITS) expect(fs.readFileSync(path.join(unitDir, unit), 'utf8')).toBe(fs.readFileSync(path.join(src, 'debian', unit), 'utf8'));
      expect(fs.readlinkSync('/etc/systemd/system/multi-user.target.wants/builder-server.service')).toBe(`${unitDir}/builder-server.service`);
      expect(fs.readdirSync('/etc/systemd/system/multi-user.target.wants').filter((f) => f.startsWith('builder-worker'))).toEqual([]);
    });

    it('passes systemd-analyze verify on this system', async () => {
      const serverUnit = await run('systemd-analyze', ['verify', 'builder-server.service']);
      expect(serverUnit.stderr + serverUnit.stdout).toBe('');
      expect(serverUnit.code).toBe(0);
      // The worker needs docker; where it is not installed, exactly that is what verify reports.
      const hasDocker = exists('/usr/bin/docker') && ['/lib/systemd/system/docker.service', '/usr/lib/systemd/system/docker.service', '/etc/systemd/system/docker.service'].some(exists);
      const worker = await run('systemd-analyze', ['verify', 'builder-worker@debian-12.service']);
      const lines = (worker.stderr + worker.stdout).split('\n').filter((l) => l !== '');
      if (hasDocker) {
        expect(lines).toEqual([]);
        expect(worker.code).toBe(0);
      } else {
        expect(lines.every((l) => /Unit docker\.service not found|Command \/usr\/bin\/docker is not executable/.test(l)), lines.join('\n')).toBe(true);
      }
    });

    it('has working commands on PATH', async () => {
      for (const program of PROGRAMS) {
        const result = await run(`/usr/bin/${program}`, ['--help']);
        expect(result.code, program).toBe(0);
        expect(result.stdout, program).toMatch(new RegExp(`^${program} `));
      }
      expect((await run('/usr/bin/builder-server', ['--help'])).stdout).toContain('[default: "/usr/lib/builder/templates"]');
    });

    it('runs the server as builder with the installed defaults, and an installed worker runs a templated job', async () => {
      const uid = Number((await ok('id', ['-u', 'builder'])).trim());
      const gid = Number((await ok('id', ['-g', 'builder'])).trim());
      // Only --listen (an ephemeral port): state dir and templates come from the installed defaults.
      server = spawn('/usr/bin/builder-server', ['--listen', '127.0.0.1:0', '--http', '127.0.0.1:0'], {
        cwd: '/', uid, gid, env: { PATH: '/usr/bin:/bin', HOME: '/var/lib/builder', LANG: 'C.UTF-8' }, stdio: ['ignore', 'ignore', 'pipe'],
      });
      server.stderr!.setEncoding('utf8').on('data', (d: string) => { serverLog += d; });
      address = await waitFor('the installed server to listen', () => {
        if (server!.exitCode !== null) throw new Error(`builder-server exited ${server!.exitCode}: ${serverLog}`);
        return /listening address=(\S+)/.exec(serverLog)?.[1];
      }, 20_000);
      expect(fs.statSync('/var/lib/builder/builder.sqlite').uid).toBe(uid);

      const client = (args: string[]): Promise<string> => ok('/usr/bin/builder-client', ['--remote', address, ...args]);
      expect(await client(['info'])).toBe('jobs (0):\n  none\nqueues (0 runs waiting):\n  all empty\nrunning (0):\n  none\ndropped platforms: none\nworkers connected: 0\n');
      const uuid = (await client(['schedule-template', 'packaged', 'debian-12', 'shell', '--var', 'command=echo "packaged on $BUILDER_PLATFORM" > out.txt', '--period', 'never'])).trim();
      expect(uuid).toMatch(/^[0-9a-f-]{36}$/);

      const worker = await run('runuser', ['-u', 'builder', '--', '/usr/bin/builder-worker', 'debian-12', '--remote', address]);
      expect(worker.code, worker.stderr).toBe(0);
      const shown = JSON.parse(await client(['show', uuid, '--json'])) as { state: string; outcome: unknown; artifacts: { path: string; size: number }[] };
      expect(shown.state).toBe('finished');
      expect(shown.outcome).toEqual({ kind: 'exited', code: 0 });
      expect(shown.artifacts.map((a) => [a.path, a.size])).toEqual([['out.txt', 'packaged on debian-12\n'.length]]);
      // Rendered from the installed templates (/usr/lib/builder/templates).
      expect(await client(['show', uuid, '--script'])).toContain(`# builder template shell for debian-12: job packaged, run ${uuid}\n`);
      // The web view, from the installed pages (/usr/lib/builder/web).
      const web = /web address=(http:\/\/\S+?)\/?\n/.exec(serverLog)?.[1];
      const page = await fetch(`${web}/run/${uuid}`);
      expect(page.status).toBe(200);
      expect(await page.text()).toContain('<title>Run ' + uuid.slice(0, 8) + ' of packaged · builder</title>');
      expect(await (await fetch(`${web}/run/${uuid}/artifact/out.txt`)).text()).toBe('packaged on debian-12\n');

      server.kill('SIGTERM');
      expect(await new Promise((resolve) => server!.once('exit', (code) => resolve(code)))).toBe(0);
      expect(serverLog).toMatch(/stopping signal=SIGTERM/);
    });

    it('purges completely (the system user stays, as Debian does)', async () => {
      await ok('dpkg', ['--purge', 'builder']);
      expect((await run('dpkg-query', ['-W', '-f=${db:Status-Abbrev}', 'builder'])).stdout).not.toMatch(/^i/);
      for (const gone of [...PROGRAMS.map((p) => `/usr/bin/${p}`), '/usr/lib/builder', '/var/lib/builder', '/etc/default/builder-server',
        '/etc/default/builder-worker', ...UNITS.map((u) => `${unitDir}/${u}`), '/etc/systemd/system/multi-user.target.wants/builder-server.service']) {
        expect(exists(gone), gone).toBe(false);
      }
      expect((await run('getent', ['passwd', 'builder'])).code).toBe(0);
    });
  });
});
