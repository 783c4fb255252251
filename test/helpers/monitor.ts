/**
 * MONITOR over a plain socket. ioredis's `monitor()` (5 and 6) switches to monitoring mode only
 * after the `+OK` of MONITOR was handled, so a command line that arrives in the same read as the
 * `+OK` is taken for a reply nobody waits for ("Command queue state error"): on a busy shared
 * server that made a test fail now and then. Here every line after `+OK` is a command line.
 */
import net from 'node:net';

/** The arguments of one MONITOR line (`+<time> [<db> <addr>] "cmd" "arg" ...`), unescaped. */
function argsOf(line: string): string[] {
  const start = line.indexOf('] ');
  const out: string[] = [];
  const quoted = /"((?:[^"\\]|\\.)*)"/g;
  for (let m = quoted.exec(line.slice(start + 2)); m !== null; m = quoted.exec(line.slice(start + 2))) {
    out.push(m[1]!.replace(/\\x([0-9a-f]{2})|\\(.)/gi, (_all, hex: string | undefined, ch: string | undefined) => (hex !== undefined ? String.fromCharCode(parseInt(hex, 16)) : ch === 'n' ? '\n' : ch === 'r' ? '\r' : ch === 't' ? '\t' : ch!)));
  }
  return out;
}

/** Starts MONITOR on `node`; `onCommand` hears each command's arguments. Resolves once monitoring. */
export async function rawMonitor(node: { host: string; port: number }, onCommand: (args: string[]) => void): Promise<{ stop(): void }> {
  const socket = net.connect(node.port, node.host);
  socket.setEncoding('latin1');
  let buffer = '';
  let monitoring = false;
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      for (let end = buffer.indexOf('\r\n'); end >= 0; end = buffer.indexOf('\r\n')) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!monitoring) {
          if (line === '+OK') {
            monitoring = true;
            resolve();
          } else {
            reject(new Error(`MONITOR refused: ${line}`));
          }
        } else if (line.startsWith('+')) {
          onCommand(argsOf(line));
        }
      }
    });
    socket.write('MONITOR\r\n');
  });
  socket.on('error', () => {});
  return { stop: () => socket.destroy() };
}
