/**
 * Where things are by default: this machine's platform name, the state directory and the shipped
 * templates. Checkouts keep state in ./var; installed servers use the OS's state directory.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package root: the directory holding package.json (dist/lib/.. /.. when built). */
export const PACKAGE_ROOT = (() => {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!fs.existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return dir;
})();

export const DEFAULT_TEMPLATES_DIR = path.join(PACKAGE_ROOT, 'templates');

/** True when running from a source checkout rather than an installed package. */
export function isCheckout(): boolean {
  return fs.existsSync(path.join(PACKAGE_ROOT, 'tsconfig.json'));
}

export function defaultStateDir(): string {
  if (isCheckout()) return path.resolve('var');
  return os.platform() === 'freebsd' ? '/var/db/builder' : '/var/lib/builder';
}

/** This machine's platform, as workers announce it: debian-12, ubuntu-24.04, freebsd-14, ... */
export function detectPlatform(): string {
  if (os.platform() === 'freebsd') return `freebsd-${os.release().split('.')[0] ?? ''}`;
  try {
    const release = fs.readFileSync('/etc/os-release', 'utf8');
    const field = (key: string): string | undefined => new RegExp(`^${key}="?([^"\\n]*)"?$`, 'm').exec(release)?.[1];
    const id = field('ID');
    const version = field('VERSION_ID');
    if (id !== undefined && version !== undefined) return `${id}-${version}`;
    if (id !== undefined) return id;
  } catch {
    // No os-release: fall through to the kernel's name.
  }
  return `${os.platform()}-${os.arch()}`;
}
