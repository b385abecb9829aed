/**
 * A job's working directory on the worker's host, whatever sandbox runs the job: made fresh for each
 * run with the script in it, walked for artifacts afterwards, and removed at the end. Containers
 * bind-mount this same directory, so every sandbox collects artifacts the same way.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type TarSource, fileChunks } from '../protocol/artifacts.js';

/** The script's file name in the working directory; it is never collected as an artifact. */
export const SCRIPT_NAME = '.builder-script.sh';
/** The file a job writes progress lines to ($BUILDER_PROGRESS); not an artifact either. */
export const PROGRESS_NAME = '.builder-progress';
/** A directory put first on the job's PATH, holding builder-progress; not collected. */
export const TOOLS_NAME = '.builder-bin';
/** Containers: the job's variables as a shell file, read and removed before the script starts. */
export const ENV_NAME = '.builder-env';
/** Top-level entries of the working directory that are builder's, not the job's. */
const RESERVED = new Set([SCRIPT_NAME, PROGRESS_NAME, TOOLS_NAME, ENV_NAME]);

/** `export KEY='value'` lines for sh; any value (newlines, quotes) survives. */
export function shellExports(env: Record<string, string>): string {
  return Object.entries(env).map(([key, value]) => `export ${key}='${value.replaceAll("'", "'\\''")}'\n`).join('');
}

/**
 * `builder-progress [PERCENT] MESSAGE`: appends one line to $BUILDER_PROGRESS. Plain sh, so that it
 * works in any image; the worker parses what it wrote.
 */
const PROGRESS_COMMAND = `#!/bin/sh
# builder-progress [PERCENT] MESSAGE: tells builder how far this job has got.
if [ -z "\${BUILDER_PROGRESS:-}" ]; then
  echo "builder-progress: BUILDER_PROGRESS is not set; run it inside a builder job" >&2
  exit 1
fi
if [ "$#" -eq 0 ]; then
  echo "usage: builder-progress [PERCENT] MESSAGE   (e.g. builder-progress 40 compiling)" >&2
  exit 1
fi
printf '%s\n' "$*" >> "$BUILDER_PROGRESS"
`;

/**
 * Makes a fresh builder-XXXXXX directory under `base` (default: the OS temp dir) holding the script,
 * an empty progress file and the builder-progress command. Synchronous: five tiny writes take a
 * fraction of what five trips through libuv's thread pool cost, and a job waits for them.
 */
export async function makeJobDirectory(script: string, base = os.tmpdir()): Promise<string> {
  try {
    const dir = fs.mkdtempSync(path.join(base, 'builder-'));
    fs.writeFileSync(path.join(dir, SCRIPT_NAME), script, { mode: 0o500 });
    fs.writeFileSync(path.join(dir, PROGRESS_NAME), '', { mode: 0o644 });
    fs.mkdirSync(path.join(dir, TOOLS_NAME), { mode: 0o755 });
    fs.writeFileSync(path.join(dir, TOOLS_NAME, 'builder-progress'), PROGRESS_COMMAND, { mode: 0o555 });
    return dir;
  } catch (error) {
    throw new Error(`cannot write the job's files in ${base}: ${(error as Error).message}`);
  }
}

/** Every regular file under `dir` (except builder's own), in name order; the rest is noted and skipped. */
export function collectJobDirectory(dir: string, notes: (text: string) => void): AsyncGenerator<TarSource> {
  return walk(dir, '', notes);
}

/** Entries a job directory may hold and still be removed synchronously. */
const SYNC_REMOVE_ENTRIES = 2000;

/**
 * Removes a job's directory, whatever the job did to its permissions. Never throws. A small tree
 * (most are) is removed synchronously, several times faster than call by call through the thread
 * pool; a big one asynchronously, so that the worker keeps answering the server meanwhile.
 */
export async function removeJobDirectory(dir: string, report: (problem: string) => void): Promise<void> {
  try {
    // Whatever the synchronous pass left (a big tree, or one it could not remove) goes the slow way.
    if (await removeSmallTree(dir, { left: SYNC_REMOVE_ENTRIES }) || !fs.existsSync(dir)) return;
    // The job may have left directories without write permission; make them removable first.
    await makeWritable(dir);
    await fs.promises.rm(dir, { recursive: true, force: true });
  } catch {
    // fs.rm gives up on trees deeper than PATH_MAX; rm(1) walks them relative to each directory.
    const rm = spawnSync('rm', ['-rf', dir], { encoding: 'utf8' });
    if (rm.status !== 0 || fs.existsSync(dir)) report(`could not remove the job's directory ${dir}: ${rm.stderr.trim() || `rm exited ${rm.status}`}`);
  }
}

/** Removals started by removeJobDirectorySoon and not finished yet. */
const removals = new Set<Promise<void>>();

/**
 * Removes a job's directory without making the caller wait for all of it: it is renamed to
 * DIR.removing at once (the job's path is free and nothing of it is collected any more), its files
 * are unlinked now (a few microseconds each), and its directories are removed through the thread
 * pool, while a --loop worker asks for and starts its next job: each rmdir waits on the file
 * system's journal, 0.1–0.4 ms with barely any CPU. A bigger tree is removed asynchronously.
 * `jobDirectoriesRemoved` waits until every such removal is done (before the worker exits).
 */
export function removeJobDirectorySoon(dir: string, report: (problem: string) => void): void {
  let doomed = dir;
  try {
    fs.renameSync(dir, `${dir}${REMOVING}`);
    doomed = `${dir}${REMOVING}`;
  } catch {
    // Removed where it is, then.
  }
  track(removeJobDirectory(doomed, report));
}

/**
 * Removes, in the background, the DIR.removing directories a worker left under `base` when it was
 * killed before it had removed them. Another worker removing the same one meanwhile does no harm.
 */
export function removeLeftoverJobDirectories(base: string, report: (problem: string) => void): void {
  let names: string[];
  try {
    names = fs.readdirSync(base);
  } catch {
    return;
  }
  for (const name of names) {
    if (name.startsWith('builder-') && name.endsWith(REMOVING)) track(removeJobDirectory(path.join(base, name), report));
  }
}

const REMOVING = '.removing';

function track(removal: Promise<void>): void {
  const tracked = removal.finally(() => removals.delete(tracked));
  removals.add(tracked);
}

/** Resolves once every removal removeJobDirectorySoon started is done. */
export async function jobDirectoriesRemoved(): Promise<void> {
  while (removals.size > 0) await Promise.all(removals);
}

/**
 * Lists and lstats synchronously: one directory's listing is quick, a trip through the thread pool
 * per call cost more than the calls themselves, and the generator yields between files anyway.
 */
async function* walk(root: string, relative: string, notes: (text: string) => void): AsyncGenerator<TarSource> {
  const dir = path.join(root, relative);
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch (error) {
    const where = relative === '' ? 'the working directory' : shorten(relative);
    notes(`cannot list ${where}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
    return;
  }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const entry of entries) {
    const rel = relative === '' ? entry.name : `${relative}/${entry.name}`;
    if (relative === '' && RESERVED.has(entry.name)) continue;
    const full = path.join(root, rel);
    let stat: fs.Stats;
    try {
      stat = fs.lstatSync(full);
    } catch (error) {
      notes(`not an artifact: ${shorten(rel)}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
      continue;
    }
    if (stat.isDirectory()) {
      yield* walk(root, rel, notes);
    } else if (stat.isFile()) {
      yield {
        path: rel,
        size: stat.size,
        mode: stat.mode & 0o111 ? 0o755 : 0o644,
        // O_NOFOLLOW: a file swapped for a symlink after the listing is refused, not followed.
        chunks: () => fileChunks(full, stat.size, fs.constants.O_NOFOLLOW),
      };
    } else if (stat.isSymbolicLink()) {
      notes(`not an artifact: ${rel} is a symbolic link (links are not followed)`);
    } else {
      notes(`not an artifact: ${rel} is not a regular file`);
    }
  }
}

/** A path as console notes show it: a very deep one is cut after 200 characters. */
function shorten(relative: string): string {
  return relative.length > 200 ? `${relative.slice(0, 200)}…` : relative;
}

/**
 * Removes a tree of at most `budget.left` entries bottom up, making each directory writable first:
 * one listing per directory and one call per entry (fs.rm tries rmdir first, fails, then lists
 * again). Listings and unlinks are synchronous (a few microseconds each, less than a trip through
 * the thread pool); rmdir goes through the pool, as it waits on the file system's journal (0.1–0.4
 * ms here) with barely any CPU, and the worker can meanwhile go on. Resolves to false, with the tree
 * partly removed, when it is bigger or an entry resists.
 */
async function removeSmallTree(dir: string, budget: { left: number }): Promise<boolean> {
  try {
    fs.chmodSync(dir, 0o700);
  } catch {
    // Not ours to change (or gone): the listing or the removal below says so.
  }
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ENOENT';
  }
  budget.left -= entries.length;
  if (budget.left < 0) return false;
  for (const entry of entries) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      if (!await removeSmallTree(full, budget)) return false;
    } else {
      try {
        fs.unlinkSync(full);
      } catch {
        return false;
      }
    }
  }
  try {
    await fs.promises.rmdir(dir);
    return true;
  } catch {
    return false;
  }
}

async function makeWritable(dir: string): Promise<void> {
  await fs.promises.chmod(dir, 0o700).catch(() => {});
  const entries = await fs.promises.readdir(dir, { withFileTypes: true }).catch(() => [] as fs.Dirent[]);
  for (const entry of entries) if (entry.isDirectory()) await makeWritable(path.join(dir, entry.name));
}
