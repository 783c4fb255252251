/**
 * Redis's own record of what it applied: the append-only file of the nemesis's standalone server
 * (`appendonly yes`). The recorder (a subscriber) misses what is applied while its connection is
 * cut — after a restart, an instance's connection may send the writes it queued while the server
 * was down before the recorder has subscribed again — and a read of Redis misses what such a write
 * held only until a later write replaced it. The log misses nothing: every write a script applied
 * is in it (effects replication: `MSETNX`/`MSET` of records, `HSET <key> s <stamp>` of tombstones),
 * written before the script's reply is sent.
 *
 * @module
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';

/** A record's tag (`v` live, `x` expiring) then its 34-character stamp. */
const RECORD_TAGS = new Set([0x76, 0x78]);
const STAMP_LENGTH = 34;

/** Reads the append-only files of one server incrementally and reports each stamp a write stored. */
export class AppliedLog {
  private readonly offsets = new Map<string, number>();
  private readonly tails = new Map<string, Buffer>();

  constructor(private readonly dataDir: string) {}

  private get dir(): string {
    return path.join(this.dataDir, 'appendonlydir');
  }

  /** Calls `onWrite(redisKey, stamp)` for every record or tombstone written since the last call. */
  async read(onWrite: (redisKey: string, stamp: string) => void): Promise<void> {
    let files: string[];
    try {
      files = (await fsp.readdir(this.dir)).filter((f) => f.endsWith('.incr.aof')).sort();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    for (const file of files) {
      const offset = this.offsets.get(file) ?? 0;
      const handle = await fsp.open(path.join(this.dir, file), 'r');
      let chunk: Buffer;
      try {
        const { size } = await handle.stat();
        chunk = Buffer.alloc(size - offset);
        if (chunk.length > 0) await handle.read(chunk, 0, chunk.length, offset);
      } finally {
        await handle.close();
      }
      this.offsets.set(file, offset + chunk.length);
      const data = Buffer.concat([this.tails.get(file) ?? Buffer.alloc(0), chunk]);
      const used = parseCommands(data, (args) => storedStamps(args, onWrite));
      this.tails.set(file, data.subarray(used));
    }
  }

  /** Deletes the files (the server is down): the next server starts with nothing, and so does the log. */
  async erase(): Promise<void> {
    await fsp.rm(this.dir, { recursive: true, force: true });
    this.offsets.clear();
    this.tails.clear();
  }
}

/** The stamps a command stored: records of `MSET`/`MSETNX`/`SET`, tombstones of `HSET <key> s <stamp>`. */
function storedStamps(args: Buffer[], onWrite: (redisKey: string, stamp: string) => void): void {
  const name = args[0]?.toString('latin1').toUpperCase();
  const record = (key: Buffer | undefined, value: Buffer | undefined): void => {
    if (key === undefined || value === undefined || value.length < 1 + STAMP_LENGTH || !RECORD_TAGS.has(value[0]!)) return;
    onWrite(key.toString(), value.toString('latin1', 1, 1 + STAMP_LENGTH));
  };
  if (name === 'MSET' || name === 'MSETNX') {
    for (let i = 1; i + 1 < args.length; i += 2) record(args[i], args[i + 1]);
  } else if (name === 'SET') {
    record(args[1], args[2]);
  } else if (name === 'HSET' && args.length === 4 && args[2]!.toString() === 's') {
    onWrite(args[1]!.toString(), args[3]!.toString('latin1'));
  }
}

/** Parses RESP arrays of bulk strings; returns how many bytes were whole commands (the rest is a partial tail). */
function parseCommands(data: Buffer, onCommand: (args: Buffer[]) => void): number {
  let pos = 0;
  const line = (from: number): { text: string; next: number } | undefined => {
    const end = data.indexOf('\r\n', from, 'latin1');
    return end < 0 ? undefined : { text: data.toString('latin1', from, end), next: end + 2 };
  };
  for (;;) {
    const start = pos;
    const header = line(pos);
    if (header === undefined) return start;
    if (header.text[0] !== '*') throw new Error(`append-only file: expected an array at byte ${start}, got ${JSON.stringify(header.text.slice(0, 20))}`);
    const count = Number(header.text.slice(1));
    let at = header.next;
    const args: Buffer[] = [];
    for (let i = 0; i < count; i++) {
      const bulk = line(at);
      if (bulk === undefined) return start;
      if (bulk.text[0] !== '$') throw new Error(`append-only file: expected a bulk string at byte ${at}`);
      const length = Number(bulk.text.slice(1));
      if (bulk.next + length + 2 > data.length) return start;
      args.push(data.subarray(bulk.next, bulk.next + length));
      at = bulk.next + length + 2;
    }
    onCommand(args);
    pos = at;
  }
}
