/**
 * Just enough of beanstalkd's text protocol (put, reserve, delete) for the dispatch baseline:
 * one command in flight per connection, as a beanstalk worker uses it.
 */
import net from 'node:net';

export class Beanstalk {
  private buffer: Buffer = Buffer.alloc(0);
  private waiting: ((reply: { line: string; body: Buffer | null }) => void) | null = null;
  private expectBody = false;

  private constructor(private readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (data: Buffer) => {
      this.buffer = this.buffer.length === 0 ? data : Buffer.concat([this.buffer, data]);
      this.deliver();
    });
  }

  static open(port: number): Promise<Beanstalk> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1', () => resolve(new Beanstalk(socket)));
      socket.once('error', reject);
    });
  }

  private deliver(): void {
    if (this.waiting === null) return;
    const end = this.buffer.indexOf('\r\n');
    if (end < 0) return;
    const line = this.buffer.toString('latin1', 0, end);
    let body: Buffer | null = null;
    let used = end + 2;
    if (this.expectBody && line.startsWith('RESERVED ')) {
      const bytes = Number(line.split(' ')[2]);
      if (this.buffer.length < used + bytes + 2) return;
      body = this.buffer.subarray(used, used + bytes);
      used += bytes + 2;
    }
    this.buffer = this.buffer.subarray(used);
    const waiting = this.waiting;
    this.waiting = null;
    waiting({ line, body });
  }

  private command(text: string, body: Buffer | null = null, expectBody = false): Promise<{ line: string; body: Buffer | null }> {
    return new Promise((resolve) => {
      this.waiting = resolve;
      this.expectBody = expectBody;
      this.socket.write(body === null ? `${text}\r\n` : Buffer.concat([Buffer.from(`${text}\r\n`), body, Buffer.from('\r\n')]));
    });
  }

  async put(body: Buffer): Promise<void> {
    const { line } = await this.command(`put 0 0 60 ${body.length}`, body);
    if (!line.startsWith('INSERTED')) throw new Error(`beanstalkd put: ${line}`);
  }

  /** Reserves the next job; null when none is ready (reserve-with-timeout 0). */
  async reserve(): Promise<{ id: string; body: Buffer } | null> {
    const { line, body } = await this.command('reserve-with-timeout 0', null, true);
    if (line === 'TIMED_OUT') return null;
    if (!line.startsWith('RESERVED') || body === null) throw new Error(`beanstalkd reserve: ${line}`);
    return { id: line.split(' ')[1] as string, body };
  }

  async delete(id: string): Promise<void> {
    const { line } = await this.command(`delete ${id}`);
    if (line !== 'DELETED') throw new Error(`beanstalkd delete ${id}: ${line}`);
  }

  close(): void {
    this.socket.end();
  }
}
