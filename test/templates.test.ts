/**
 * The shipped job templates (templates/TEMPLATE/PLATFORM.sh.hbs): every variant renders with its
 * documented variables, a missing variable or platform is reported in words a user can act on,
 * the rendered scripts pass `shellcheck -s sh`, and the git-build script really clones, builds and
 * leaves exactly its outputs behind when run the way the worker runs it (/bin/sh -e in a fresh
 * directory holding only the script).
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SCRIPT_NAME } from '../lib/job-directory.js';
import { TemplateError, Templates } from '../lib/templates.js';

const TEMPLATES_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'templates');
const PLATFORMS = ['debian-12', 'freebsd-14', 'ubuntu-24.04'];
const UUID = '6c1f0a52-9d3e-4b7a-8f21-3a5b7c9d0e1f';

/** Every shipped template with a complete set of sample variables. */
const SAMPLES: Record<string, Record<string, string>> = {
  shell: { command: 'uname -a > uname.txt' },
  'git-build': {
    repository: 'https://example.org/project.git',
    ref: 'v1.2.3',
    command: 'make dist',
    outputs: 'dist/app.tar.gz dist/*.sha256',
  },
};

const templates = new Templates(TEMPLATES_DIR);
const context = (platform: string) => ({ job: 'sample-job', platform, uuid: UUID });

function renderError(fn: () => unknown): Error {
  try {
    fn();
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected rendering to fail');
}

const hasShellcheck = spawnSync('shellcheck', ['--version'], { stdio: 'ignore' }).status === 0;

describe('shipped templates', () => {
  it('are exactly the documented ones, each for every platform', () => {
    expect(templates.list()).toEqual(Object.keys(SAMPLES).sort());
    for (const name of Object.keys(SAMPLES)) expect(templates.platformsOf(name)).toEqual(PLATFORMS);
  });

  for (const [name, vars] of Object.entries(SAMPLES)) {
    for (const platform of PLATFORMS) {
      describe(`${name} for ${platform}`, () => {
        it('renders with its sample variables', () => {
          const script = templates.render(name, platform, vars, context(platform));
          expect(script.startsWith('#!/bin/sh\n')).toBe(true);
          expect(script).toContain(`# builder template ${name} for ${platform}: job sample-job, run ${UUID}`);
          for (const value of Object.values(vars)) expect(script).toContain(value);
          // The documentation header is a Handlebars comment: it stays in the template file.
          expect(script).not.toContain('Variables (all required');
          expect(script).not.toContain('{{');
        });

        for (const missing of Object.keys(vars)) {
          it(`refuses to render without ${missing}, naming it`, () => {
            const partial = { ...vars };
            delete partial[missing];
            const error = renderError(() => templates.render(name, platform, partial, context(platform)));
            expect(error).toBeInstanceOf(TemplateError);
            expect(error.message).toBe(`template ${name} for ${platform} needs variable '${missing}': give it with --var ${missing}=VALUE`);
          });
        }

        it('passes shellcheck -s sh', (ctx) => {
          if (!hasShellcheck) {
            if (process.env.CI === 'true') throw new Error('shellcheck is not installed, and CI=true requires it: apt-get install shellcheck');
            ctx.skip();
          }
          const script = templates.render(name, platform, vars, context(platform));
          const result = spawnSync('shellcheck', ['-s', 'sh', '-'], { input: script, encoding: 'utf8' });
          expect(result.stdout + result.stderr).toBe('');
          expect(result.status).toBe(0);
        });
      });
    }
  }

  it('lists the platforms that exist when a variant is missing', () => {
    const error = renderError(() => templates.render('git-build', 'openbsd-7', SAMPLES['git-build'] as Record<string, string>, context('openbsd-7')));
    expect(error).toBeInstanceOf(TemplateError);
    expect(error.message).toBe(`template git-build has no variant for platform openbsd-7; it has: ${PLATFORMS.join(', ')}`);
  });

  it('lists the templates that exist when a template is unknown', () => {
    const error = renderError(() => templates.render('no-such-template', 'debian-12', {}, context('debian-12')));
    expect(error).toBeInstanceOf(TemplateError);
    expect(error.message).toContain('unknown template no-such-template');
    expect(error.message).toContain('git-build, shell');
  });
});

// ---- running the rendered scripts -----------------------------------------------------------------

/** A git environment that ignores the machine's own configuration. */
const GIT_ENV = {
  PATH: process.env.PATH ?? '/usr/bin:/bin',
  HOME: os.tmpdir(),
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_CONFIG_GLOBAL: '/dev/null',
  GIT_AUTHOR_NAME: 'builder test', GIT_AUTHOR_EMAIL: 'test@builder.invalid',
  GIT_COMMITTER_NAME: 'builder test', GIT_COMMITTER_EMAIL: 'test@builder.invalid',
};

function git(cwd: string, ...args: string[]): string {
  const result = spawnSync('git', args, { cwd, env: GIT_ENV, encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`git ${args.join(' ')} failed: ${result.stderr}`);
  return result.stdout.trim();
}

let scratch: string;
/** The repository path has quotes, a space, $(...) and backquotes: it must arrive verbatim. */
let repo: string;
const commits: Record<string, string> = {};
let runs = 0;

beforeAll(() => {
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'builder-templates-test-'));
  repo = path.join(scratch, `it's a "repo" $(touch pwned) \`touch pwned2\``);
  fs.mkdirSync(repo);
  git(repo, 'init', '--quiet', '--initial-branch=main');
  fs.writeFileSync(path.join(repo, 'build.sh'), [
    '#!/bin/sh',
    'mkdir -p dist build',
    'cp VERSION dist/out.txt',
    'echo "log of $(cat VERSION)" > dist/build.log',
    'echo intermediate > build/tmp.o',
    'echo "built $(cat VERSION)"',
    '',
  ].join('\n'), { mode: 0o755 });
  const commit = (version: string): string => {
    fs.writeFileSync(path.join(repo, 'VERSION'), `${version}\n`);
    git(repo, 'add', '.');
    git(repo, 'commit', '--quiet', '-m', version);
    return git(repo, 'rev-parse', 'HEAD');
  };
  commits.v1 = commit('v1');
  git(repo, 'tag', '-a', 'v1.0', '-m', 'release 1.0');
  commits.v2 = commit('v2');
  git(repo, 'checkout', '--quiet', '-b', 'feature');
  commits.feature = commit('feature');
  git(repo, 'checkout', '--quiet', 'main');
  commits.v3 = commit('v3');
});

afterAll(() => {
  if (scratch !== undefined) fs.rmSync(scratch, { recursive: true, force: true });
});

/** Runs a rendered script as the worker does; returns its status, output and what it left. */
function runScript(script: string): { status: number | null; stdout: string; stderr: string; left: Record<string, string> } {
  const dir = fs.mkdtempSync(path.join(scratch, `run${++runs}-`));
  const file = path.join(dir, SCRIPT_NAME);
  fs.writeFileSync(file, script, { mode: 0o500 });
  const result = spawnSync('/bin/sh', ['-e', file], {
    cwd: dir,
    encoding: 'utf8',
    env: { ...GIT_ENV, BUILDER_UUID: UUID, BUILDER_JOB: 'sample-job', BUILDER_PLATFORM: 'debian-12' },
    timeout: 60_000,
  });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr, left: listTree(dir) };
}

/** Every entry under `dir`: files map to their content, directories to '<dir>', links to '<link>'. */
function listTree(dir: string, prefix = ''): Record<string, string> {
  const entries: Record<string, string> = {};
  for (const entry of fs.readdirSync(path.join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix === '' ? entry.name : `${prefix}/${entry.name}`;
    if (entry.isDirectory()) {
      entries[rel] = '<dir>';
      Object.assign(entries, listTree(dir, rel));
    } else if (entry.isSymbolicLink()) {
      entries[rel] = '<link>';
    } else {
      entries[rel] = fs.readFileSync(path.join(dir, rel), 'utf8');
    }
  }
  return entries;
}

function gitBuild(vars: Partial<Record<'repository' | 'ref' | 'command' | 'outputs', string>>) {
  const all = { repository: repo, ref: 'main', command: './build.sh', outputs: 'dist/out.txt', ...vars };
  return runScript(templates.render('git-build', 'debian-12', all, context('debian-12')));
}

describe('git-build for debian-12, run for real', () => {
  const cases: [string, () => string, string][] = [
    ['a branch', () => 'main', 'v3'],
    ['another branch', () => 'feature', 'feature'],
    ['a tag', () => 'v1.0', 'v1'],
    ['a full commit hash', () => commits.v2 as string, 'v2'],
    ['an abbreviated commit hash', () => (commits.v1 as string).slice(0, 10), 'v1'],
  ];
  for (const [what, ref, version] of cases) {
    it(`builds ${what} and leaves only its outputs`, () => {
      const result = gitBuild({ ref: ref(), outputs: 'dist/out.txt dist/*.log' });
      expect(result.stderr).toBe('');
      expect(result.status).toBe(0);
      expect(result.stdout).toContain(`commit ${commits[version]}\n`);
      expect(result.stdout).toContain(`built ${version}\n`);
      expect(result.left).toEqual({
        [SCRIPT_NAME]: expect.any(String),
        dist: '<dir>',
        'dist/out.txt': `${version}\n`,
        'dist/build.log': `log of ${version}\n`,
      });
    }, 60_000);
  }

  it('copies a directory output whole, at the same relative path', () => {
    const result = gitBuild({ command: './build.sh && mkdir -p out/deep && echo x > out/deep/x.txt', outputs: './out/ VERSION' });
    expect(result.status).toBe(0);
    expect(result.left).toEqual({
      [SCRIPT_NAME]: expect.any(String), out: '<dir>', 'out/deep': '<dir>', 'out/deep/x.txt': 'x\n', VERSION: 'v3\n',
    });
  }, 60_000);

  it('takes every value verbatim: quotes, $(...) and backquotes are not shell code', () => {
    const result = gitBuild({ ref: 'v1.0' });
    expect(result.status).toBe(0);
    expect(result.stdout).toContain(`git-build: cloning ${repo}\n`);
    expect(fs.existsSync(path.join(repo, 'pwned'))).toBe(false);
    expect(fs.readdirSync(scratch).some((name) => name.startsWith('pwned'))).toBe(false);
    expect(Object.keys(result.left).sort()).toEqual([SCRIPT_NAME, 'dist', 'dist/out.txt']);
  }, 60_000);

  it('fails, naming every missing output, and leaves nothing behind', () => {
    const result = gitBuild({ outputs: 'dist/out.txt dist/app.tar.gz pkg/*.deb' });
    expect(result.status).not.toBe(0);
    expect(result.stderr).toContain("git-build: missing output(s): 'dist/app.tar.gz' 'pkg/*.deb': the build did not produce them");
    expect(Object.keys(result.left)).toEqual([SCRIPT_NAME]);
  }, 60_000);

  it('fails when the build command fails, with its exit status, and leaves nothing behind', () => {
    const result = gitBuild({ command: './build.sh\nexit 3\necho not reached' });
    expect(result.status).not.toBe(0);
    expect(result.stdout).not.toContain('not reached');
    expect(result.stderr).toContain('git-build: the build command failed with exit status 3');
    expect(Object.keys(result.left)).toEqual([SCRIPT_NAME]);
  }, 60_000);

  it('stops the build command at its first failing command (sh -e)', () => {
    const result = gitBuild({ command: 'false\necho not reached' });
    expect(result.status).not.toBe(0);
    expect(result.stdout).not.toContain('not reached');
    expect(result.stderr).toContain('git-build: the build command failed with exit status 1');
  }, 60_000);

  it('fails clearly on a ref the repository does not have', () => {
    const result = gitBuild({ ref: 'no-such-branch' });
    expect(result.status).not.toBe(0);
    expect(result.stderr).toContain("git-build: ref 'no-such-branch' is not a branch, a tag or a commit of");
    expect(Object.keys(result.left)).toEqual([SCRIPT_NAME]);
  }, 60_000);

  it('fails clearly on a repository that cannot be cloned', () => {
    const result = gitBuild({ repository: path.join(scratch, 'missing-repo') });
    expect(result.status).not.toBe(0);
    expect(result.stderr).toContain(`git-build: cannot clone ${path.join(scratch, 'missing-repo')}`);
    expect(Object.keys(result.left)).toEqual([SCRIPT_NAME]);
  }, 60_000);

  for (const [outputs, problem] of [
    ['../escape', "output '../escape' leaves the checkout (..)"],
    ['/etc/passwd', "output '/etc/passwd' is an absolute path"],
    ['.', "output '.' names the whole checkout"],
    [SCRIPT_NAME, `output '${SCRIPT_NAME}': names starting with .builder- are reserved`],
  ] as const) {
    it(`refuses the output ${outputs}`, () => {
      const result = gitBuild({ outputs });
      expect(result.status).not.toBe(0);
      expect(result.stderr).toContain(`git-build: ${problem}`);
      expect(Object.keys(result.left)).toEqual([SCRIPT_NAME]);
    }, 60_000);
  }

  it('refuses an output that is a symbolic link', () => {
    const result = gitBuild({ command: './build.sh && ln -s out.txt dist/latest.txt', outputs: 'dist/latest.txt' });
    expect(result.status).not.toBe(0);
    expect(result.stderr).toContain("git-build: output 'dist/latest.txt' is a symbolic link");
    expect(Object.keys(result.left)).toEqual([SCRIPT_NAME]);
  }, 60_000);
});

describe('shell for debian-12, run for real', () => {
  it('runs the command in the working directory with the BUILDER_ variables set', () => {
    const command = 'echo "$BUILDER_JOB $BUILDER_UUID" > who.txt\nmkdir sub && echo "it\'s fine" > sub/quote.txt';
    const result = runScript(templates.render('shell', 'debian-12', { command }, context('debian-12')));
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    expect(result.left).toEqual({
      [SCRIPT_NAME]: expect.any(String), 'who.txt': `sample-job ${UUID}\n`, sub: '<dir>', 'sub/quote.txt': "it's fine\n",
    });
  });

  it('stops at the first failing command', () => {
    const result = runScript(templates.render('shell', 'debian-12', { command: 'echo one\nfalse\necho two' }, context('debian-12')));
    expect(result.status).toBe(1);
    expect(result.stdout).toBe('one\n');
  });
});
