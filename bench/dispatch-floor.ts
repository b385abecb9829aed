/**
 * The floor of the dispatch benchmark: the least a Node server speaking our frames can do per job.
 * It answers every frame it receives with a job message (as large as the real one) after one
 * write(2) of a line to a log file, as beanstalkd's binlog gets one per job with -f 50. No SQLite,
 * no validation, no state: what is left is Node's event loop, the frame code, and the system calls.
 *
 *   node dispatch-floor.js LOGFILE    listens on 127.0.0.1 (a free port) and prints the port
 *
 * The dispatch benchmark runs it against the same K clients as beanstalkd (dispatch-workers.js
 * floor PORT K COUNT) and reports how many round trips a second it managed: where our server's
 * figure stands between this and beanstalkd's shows which share of the gap is ours and which is
 * Node's.
 */
import fs from 'node:fs';
import net from 'node:net';
import { FrameDecoder, encodeFrame } from '../protocol/frame.js';

const log = fs.openSync(process.argv[2] ?? '/dev/null', 'w');
const job = encodeFrame({
  type: 'job', uuid: '01234567-89ab-cdef-0123-456789abcdef', name: 'dispatch-19999', platform: 'bench', script: 'true\n', timeoutSeconds: 3600,
});
const server = net.createServer((socket) => {
  socket.setNoDelay(true);
  socket.on('error', () => {});
  const decoder = new FrameDecoder();
  socket.on('data', (data: Buffer) => {
    for (const value of decoder.push(data)) {
      fs.writeSync(log, `finished ${(value as { uuid?: string }).uuid ?? '-'}\n`);
      socket.write(job);
    }
  });
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`${(server.address() as net.AddressInfo).port}\n`));
