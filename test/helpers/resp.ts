/**
 * A minimal one-shot RESP2 client used by the harness for administrative commands (PING, INFO,
 * CLUSTER INFO/NODES, SHUTDOWN).
 *
 * It opens a fresh TCP connection per command, has no retries, no offline queue and no ready check,
 * so it can never hang on a dead, paused or half-started server: every call ends at its deadline.
 * Tests should use ioredis; this exists so the harness does not depend on client behaviour under test.
 */
import net from 'node:net';

/** A decoded RESP2 reply. Error replies are thrown as {@link RespReplyError}. */
export type RespValue = string | number | null | RespValue[];

/** An error reply (`-ERR ...`) from the server. */
export class RespReplyError extends Error {
  override readonly name = 'RespReplyError';
}

/** Where to send a command. */
export interface RespTarget {
  host: string;
  port: number;
}

interface Parsed {
  value: RespValue | RespReplyError;
  next: number;
}

/** Parses one RESP2 value starting at `offset`; `undefined` when `buf` does not hold all of it yet. */
function parseReply(buf: Buffer, offset: number): Parsed | undefined {
  if (offset >= buf.length) return undefined;
  const lineEnd = buf.indexOf('\r\n', offset, 'latin1');
  if (lineEnd < 0) return undefined;
  const type = String.fromCharCode(buf[offset] ?? 0);
  const line = buf.toString('utf8', offset + 1, lineEnd);
  const afterLine = lineEnd + 2;
  switch (type) {
    case '+':
      return { value: line, next: afterLine };
    case '-':
      return { value: new RespReplyError(line), next: afterLine };
    case ':':
      return { value: Number(line), next: afterLine };
    case '$': {
      const length = Number(line);
      if (length < 0) return { value: null, next: afterLine };
      if (buf.length < afterLine + length + 2) return undefined;
      return { value: buf.toString('utf8', afterLine, afterLine + length), next: afterLine + length + 2 };
    }
    case '*': {
      const count = Number(line);
      if (count < 0) return { value: null, next: afterLine };
      const items: RespValue[] = [];
      let next = afterLine;
      for (let i = 0; i < count; i++) {
        const item = parseReply(buf, next);
        if (!item) return undefined;
        // An error nested in an array (e.g. EXEC) is kept as its message.
        items.push(item.value instanceof RespReplyError ? item.value.message : item.value);
        next = item.next;
      }
      return { value: items, next };
    }
    default:
      throw new Error(`unexpected RESP type byte ${JSON.stringify(type)}`);
  }
}

function encodeCommand(args: readonly (string | number)[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const arg of args) {
    const bytes = Buffer.from(String(arg), 'utf8');
    parts.push(Buffer.from(`$${bytes.length}\r\n`), bytes, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

/**
 * Sends one command on a new connection and resolves with the decoded reply.
 *
 * @param target - the server
 * @param args - command and arguments, e.g. `['CLUSTER', 'INFO']`
 * @param timeoutMs - deadline for connect + reply (default 2 000 ms)
 * @throws RespReplyError on an error reply; Error on connection failure or timeout
 */
export function respCommand(
  target: RespTarget,
  args: readonly (string | number)[],
  timeoutMs = 2_000,
): Promise<RespValue> {
  return new Promise<RespValue>((resolve, reject) => {
    let settled = false;
    let received: Buffer = Buffer.alloc(0);
    const socket = net.connect({ host: target.host, port: target.port });
    const finish = (error: Error | undefined, value?: RespValue): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(value ?? null);
    };
    const timer = setTimeout(() => {
      finish(new Error(`${String(args[0])} to ${target.host}:${target.port} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.setNoDelay(true);
    socket.on('connect', () => socket.write(encodeCommand(args)));
    socket.on('data', (chunk: Buffer) => {
      received = received.length === 0 ? chunk : Buffer.concat([received, chunk]);
      let parsed: Parsed | undefined;
      try {
        parsed = parseReply(received, 0);
      } catch (error) {
        finish(error as Error);
        return;
      }
      if (!parsed) return;
      if (parsed.value instanceof RespReplyError) finish(parsed.value);
      else finish(undefined, parsed.value);
    });
    socket.on('error', (error) => finish(error));
    socket.on('close', () => {
      finish(new Error(`connection to ${target.host}:${target.port} closed before a reply to ${String(args[0])}`));
    });
  });
}

/** `true` when the server answers PING with PONG within `timeoutMs`; never throws. */
export async function pingOk(target: RespTarget, timeoutMs = 1_000): Promise<boolean> {
  try {
    return (await respCommand(target, ['PING'], timeoutMs)) === 'PONG';
  } catch {
    return false;
  }
}

/** Parses `INFO`/`CLUSTER INFO` text (`key:value` lines) into a record. */
export function parseInfo(text: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const colon = line.indexOf(':');
    if (colon > 0) fields[line.slice(0, colon)] = line.slice(colon + 1);
  }
  return fields;
}
