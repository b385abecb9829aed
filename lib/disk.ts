/**
 * A full disk: before the server accepts new work (schedule, execute, a dispatch) it looks at the
 * free space of the state directory's file system. Below --min-free-bytes it refuses, saying why,
 * and keeps everything it has; when space returns, the next request or the retry timer goes on.
 * No polling while there is room: the check is one statfs at the moment new work would start.
 */
import fs from 'node:fs';

/** Why no new work can be accepted now, or null. */
export function diskFullProblem(stateDir: string, minFreeBytes: number): string | null {
  let free: number;
  try {
    const stats = fs.statfsSync(stateDir);
    free = stats.bavail * stats.bsize;
  } catch {
    return null;
  }
  if (free >= minFreeBytes) return null;
  return `the disk holding ${stateDir} is full (${free} bytes free, at least ${minFreeBytes} needed, --min-free-bytes): `
    + 'no new work is accepted until space is freed; nothing stored was lost';
}

/** Whether an error is the disk (or SQLite's database) being full. */
export function isDiskFull(error: unknown): boolean {
  const code = (error as { code?: string }).code;
  return code === 'ENOSPC' || code === 'SQLITE_FULL' || code === 'EDQUOT';
}
