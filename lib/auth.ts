/**
 * Who may do what. Tokens live in their own small SQLite file, STATE/auth.sqlite (only a SHA-256
 * of each token is stored), opened without the exclusive lock the main database holds, so that
 * `builder-server token add|list|revoke` works while the server runs and a revoked token stops
 * working at its next request.
 *
 * Roles: viewer (look: info, results, workers, show, observe, fetch), operator (also schedule,
 * execute, reschedule, cancel any job, unschedule its own), admin (also unschedule or replace any
 * job, drop and undrop platforms), worker (the worker protocol only). Until the first token exists
 * the server is open, but only to loopback peers.
 */
import crypto from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import Database from 'better-sqlite3';
import type { ClientMessage } from '../protocol/messages.js';
import { statementCache } from './statements.js';

export const ROLES = ['viewer', 'operator', 'admin', 'worker'] as const;
export type Role = (typeof ROLES)[number];
type ClientRole = Exclude<Role, 'worker'>;

/** The role each client request needs, at least (viewer < operator < admin). */
export const REQUIRED_ROLE: Record<ClientMessage['type'], ClientRole> = {
  info: 'viewer', results: 'viewer', workers: 'viewer', show: 'viewer', observe: 'viewer', 'observe-latest': 'viewer', fetch: 'viewer',
  schedule: 'operator', execute: 'operator', reschedule: 'operator', cancel: 'operator', unschedule: 'operator',
  'drop-platform': 'admin', 'undrop-platform': 'admin',
};

const RANK: Record<Role, number> = { worker: 0, viewer: 1, operator: 2, admin: 3 };

/** Who is on a connection: a token's name and role, or nobody on an open (token-less) server. */
export interface Identity {
  /** The token's name; null on a server without tokens (then everything is allowed). */
  name: string | null;
  role: Role;
}

export const OPEN_IDENTITY: Identity = { name: null, role: 'admin' };

export function allows(identity: Identity, needed: ClientRole): boolean {
  return identity.role !== 'worker' && RANK[identity.role] >= RANK[needed];
}

/** An admin may change any job; an operator the jobs its token created. */
export function mayChangeJob(identity: Identity, owner: string | null): boolean {
  return identity.role === 'admin' || (identity.role === 'operator' && owner !== null && owner === identity.name);
}

export function isLoopback(address: string): boolean {
  const host = address.replace(/^::ffff:/, '');
  if (host === 'localhost') return true;
  return net.isIPv4(host) ? host.startsWith('127.') : host === '::1';
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$/;

function hash(token: string): string {
  return crypto.createHash('sha256').update(token).digest('hex');
}

export interface TokenInfo { name: string; role: Role; createdAt: number }

export class TokenError extends Error {}

export class Tokens {
  private readonly db: Database.Database;
  private readonly sql: (text: string) => Database.Statement;

  constructor(stateDir: string) {
    this.db = new Database(path.join(stateDir, 'auth.sqlite'));
    this.sql = statementCache(this.db);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(`CREATE TABLE IF NOT EXISTS tokens (
      name TEXT PRIMARY KEY,
      role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin', 'worker')),
      sha256 TEXT NOT NULL UNIQUE,
      created_at INTEGER NOT NULL
    )`);
  }

  close(): void {
    this.db.close();
  }

  /** Creates a token and returns it; it is never shown again (only its hash is kept). */
  add(name: string, role: Role, now = Date.now()): string {
    if (!NAME.test(name)) throw new TokenError(`invalid token name '${name}': use up to 64 letters, digits, . _ + -`);
    if (!ROLES.includes(role)) throw new TokenError(`unknown role '${role}': use one of ${ROLES.join(', ')}`);
    const token = `bt_${crypto.randomBytes(32).toString('base64url')}`;
    try {
      this.sql('INSERT INTO tokens (name, role, sha256, created_at) VALUES (?, ?, ?, ?)').run(name, role, hash(token), now);
    } catch (error) {
      if ((error as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') throw new TokenError(`a token named ${name} exists; revoke it first`);
      throw error;
    }
    return token;
  }

  list(): TokenInfo[] {
    return (this.sql('SELECT name, role, created_at FROM tokens ORDER BY name').all() as { name: string; role: Role; created_at: number }[])
      .map((row) => ({ name: row.name, role: row.role, createdAt: row.created_at }));
  }

  revoke(name: string): boolean {
    return this.sql('DELETE FROM tokens WHERE name = ?').run(name).changes === 1;
  }

  get count(): number {
    return (this.sql('SELECT count(*) AS n FROM tokens').get() as { n: number }).n;
  }

  /** Who a token belongs to, or null. */
  check(token: string): Identity | null {
    const row = this.sql('SELECT name, role FROM tokens WHERE sha256 = ?').get(hash(token)) as Identity | undefined;
    return row ?? null;
  }

  /** A token's current role (null once revoked): checked before each request. */
  roleOf(name: string): Role | null {
    return (this.sql('SELECT role FROM tokens WHERE name = ?').get(name) as { role: Role } | undefined)?.role ?? null;
  }
}
