/**
 * The first exchange on every connection, from the client's or worker's side: send hello, expect
 * welcome. A refusal (the server's error message) or a version mismatch becomes a HandshakeRefused
 * whose message says which versions the two sides speak.
 */
import { ConnectionClosed, type Inbox } from './inbox.js';
import { type Hello, PROTOCOL_VERSION, type Welcome } from './messages.js';

export class HandshakeRefused extends Error {}

export async function handshake<T extends { type: string }>(inbox: Inbox<T>, hello: Omit<Hello, 'type' | 'version'>): Promise<Welcome> {
  inbox.conn.send({ type: 'hello', version: PROTOCOL_VERSION, ...hello });
  let reply: T;
  try {
    reply = await inbox.next();
  } catch (error) {
    if (error instanceof ConnectionClosed && error.fatal !== null) throw new HandshakeRefused(`the server refused the connection: ${error.fatal}`);
    throw error;
  }
  if (reply.type === 'error') {
    throw new HandshakeRefused(`the server refused the connection: ${(reply as unknown as { message: string }).message}`);
  }
  if (reply.type !== 'welcome') throw new HandshakeRefused(`the server answered hello with '${reply.type}' instead of welcome`);
  const welcome = reply as unknown as Welcome;
  if (welcome.version !== PROTOCOL_VERSION) {
    inbox.conn.close();
    throw new HandshakeRefused(`protocol version mismatch: this ${hello.role} (${hello.software}) speaks protocol version ${PROTOCOL_VERSION}, the server (${welcome.software}) speaks ${welcome.version}; use matching builder versions`);
  }
  return welcome;
}
