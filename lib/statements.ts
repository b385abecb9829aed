/**
 * Prepared statements by SQL text, prepared on first use: preparing a statement costs more than
 * running most of them, and the hot paths (dispatch, finishing a run, a token check per request)
 * run the same few thousands of times a second. The set of texts is fixed in the code, so the cache
 * stays small.
 */
import type Database from 'better-sqlite3';

export function statementCache(db: Database.Database): (text: string) => Database.Statement {
  const statements = new Map<string, Database.Statement>();
  return (text) => {
    let statement = statements.get(text);
    if (statement === undefined) {
      statement = db.prepare(text);
      statements.set(text, statement);
    }
    return statement;
  };
}
