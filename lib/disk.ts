/**
 * A full disk: before the server accepts new work (schedule, execute, a dispatch) it looks at the
 * free space of the state directory's file system. Below --min-free-bytes it refuses, saying why,
 * and keeps everything it has; when space returns, the next request or the retry timer goes on.
 * No polling while there is room: the check is one statfs at the moment new work would start.
 */
import fs from 'node:fs';

/** When each state directory was last found to have room (ms, monotonic); see diskFullProblem. */
const hadRoomAt = new Map<string, number>();

/**
 * Why no new work can be accepted now, or null. `reuseMs` lets a caller that asks thousands of times
 * a second (dispatch, once per pass) take a look at most that old that found room, instead of a
 * statfs of its own; a full disk is always looked at again. Work started in that window is at worst
 * a few runs' rows, and a write that then finds no space fails cleanly (isDiskFull).
 */
export function diskFullProblem(stateDir: string, minFreeBytes: number, reuseMs = 0): string | null {
  const now = performance.now();
  if (reuseMs > 0 && now - (hadRoomAt.get(stateDir) ?? -Infinity) < reuseMs) return null;
  let free: number;
  try {
    const stats = fs.statfsSync(stateDir);
    free = stats.bavail * stats.bsize;
  } catch {
    return null;
  }
  if (free >= minFreeBytes) {
    hadRoomAt.set(stateDir, now);
    return null;
  }
  hadRoomAt.delete(stateDir);
  return `the disk holding ${stateDir} is full (${free} bytes free, at least ${minFreeBytes} needed, --min-free-bytes): `
    + 'no new work is accepted until space is freed; nothing stored was lost';
}

/** Whether an error is the disk (or SQLite's database) being full. */
export function isDiskFull(error: unknown): boolean {
  const code = (error as { code?: string }).code;
  return code === 'ENOSPC' || code === 'SQLITE_FULL' || code === 'EDQUOT';
}
