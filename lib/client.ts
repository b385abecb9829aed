/**
 * The client's connection to the server: dial, hello, then one request at a time, each reply matched
 * by its request id. Knows only the protocol. Errors carry the exit status builder-client ends with.
 */
import { type Connection, type DialTls, dial, dialProblem } from '../protocol/connection.js';
import { HandshakeRefused, handshake } from '../protocol/handshake.js';
import { ConnectionClosed, Inbox } from '../protocol/inbox.js';
import { type ClientMessage, ServerToClient } from '../protocol/messages.js';
import { SOFTWARE } from './version.js';

/** Exit statuses of builder-client, as documented in the README. */
export const EXIT = {
  ok: 0,
  usage: 1,
  /** The server refused the request, or could not be reached. */
  server: 2,
  /** The observed run did not succeed. */
  runFailed: 3,
} as const;

export class ClientError extends Error {
  constructor(message: string, readonly exitCode: number) {
    super(message);
  }
}

/** A request without its id: the client numbers requests itself. */
type Request = ClientMessage extends infer M ? (M extends ClientMessage ? Omit<M, 'id'> : never) : never;

export class Client {
  private nextId = 1;

  private constructor(readonly remote: string, readonly conn: Connection, readonly inbox: Inbox<ServerToClient>) {}

  static async open(remote: string, token?: string, tls: DialTls | null = null): Promise<Client> {
    let conn: Connection;
    try {
      // The server is trusted to send large replies (info on a big farm): accept frames far above the
      // 16 MiB the server allows its peers.
      conn = await dial(remote, 256 * 1024 * 1024, 10_000, tls);
    } catch (error) {
      if (error instanceof Error && error.message.startsWith('invalid address')) throw new ClientError(error.message, EXIT.usage);
      const problem = dialProblem(error);
      if (problem.tls) throw new ClientError(`TLS with the server at ${remote} failed: ${problem.reason}`, EXIT.server);
      throw new ClientError(`cannot reach the server at ${remote} (${problem.reason}): is builder-server running there? `
        + '--remote HOST:PORT or the environment variable BUILDER_REMOTE sets the address', EXIT.server);
    }
    const inbox = new Inbox(conn, ServerToClient);
    try {
      await handshake(inbox, { role: 'client', software: SOFTWARE, ...(token === undefined ? {} : { token }) });
    } catch (error) {
      if (error instanceof HandshakeRefused) throw new ClientError(error.message, EXIT.server);
      if (error instanceof ConnectionClosed) {
        throw new ClientError(`the server at ${remote} closed the connection during the hello (${error.reason})`
          + (tls === null ? '; if it uses TLS, give --tls-ca FILE or --tls' : ''), EXIT.server);
      }
      throw error;
    }
    return new Client(remote, conn, inbox);
  }

  /** Sends a request and returns its id. */
  send(request: Request): number {
    const id = this.nextId++;
    this.conn.send({ ...request, id } as ClientMessage);
    return id;
  }

  /** The next message for request `id`. A failure reply or a closed connection throws a ClientError. */
  async receive(id: number): Promise<ServerToClient> {
    for (;;) {
      let message: ServerToClient;
      try {
        message = await this.inbox.next();
      } catch (error) {
        if (error instanceof ConnectionClosed) {
          throw new ClientError(error.fatal !== null ? `the server closed the connection: ${error.fatal}`
            : `lost the connection to the server at ${this.remote} (${error.reason})`, EXIT.server);
        }
        throw error;
      }
      if (message.type === 'error') throw new ClientError(`the server closed the connection: ${message.message}`, EXIT.server);
      if (!('id' in message) || message.id !== id) continue;
      if (message.type === 'failure') throw new ClientError(message.message, EXIT.server);
      return message;
    }
  }

  /** Sends a request and waits for its reply, which must be of type `type`. */
  async call<K extends ServerToClient['type']>(request: Request, type: K): Promise<Extract<ServerToClient, { type: K }>> {
    const id = this.send(request);
    const reply = await this.receive(id);
    if (reply.type !== type) throw new ClientError(`unexpected reply '${reply.type}' to '${request.type}' (expected '${type}')`, EXIT.server);
    return reply as Extract<ServerToClient, { type: K }>;
  }

  close(): void {
    this.conn.close();
  }
}
