/**
 * A small TCP proxy in front of a Redis server, for fault tests.
 *
 * - `pass`: bytes flow both ways.
 * - `blackhole`: connections stay open but every byte, in both directions, is swallowed. This is a
 *   silent network partition: no RST, no FIN, so a client such as ioredis stays "ready" and only
 *   notices through its own timeouts/heartbeats. New connections made while blackholed are accepted
 *   and swallowed too.
 * - `stall`: client-to-server bytes flow, but the proxy stops reading from the server side
 *   (`socket.pause()`), so replies and pushed messages pile up in the kernel buffers and then in
 *   Redis's output buffer, exactly like a client whose event loop is blocked. Nothing is lost:
 *   switching back to `pass` delivers what was held, in order (and a close by the server is seen
 *   only then, after the held bytes).
 *
 * A connection that has had bytes swallowed is "broken" for good: its byte stream lost data, so it
 * keeps swallowing even after `setMode('pass')` (like a TCP connection that died during a partition).
 * Only connections opened after the partition healed (or that carried no bytes during it) pass
 * traffic again. `resetAll()` destroys every client connection (the client sees a reset/close).
 *
 * @module
 */
import net from 'node:net';
import type { RedisNode } from './harness.js';

/** Proxy behaviour, see the module documentation. */
export type TcpProxyMode = 'pass' | 'blackhole' | 'stall';

/** A running proxy; connect clients to `host:port`. */
export interface TcpProxy {
  /** Address clients connect to (127.0.0.1). */
  readonly host: string;
  /** Port clients connect to. */
  readonly port: number;
  /** `redis://host:port` of the proxy. */
  readonly url: string;
  /** Current mode. */
  readonly mode: TcpProxyMode;
  /** Number of client connections currently open through the proxy. */
  readonly connections: number;
  /** Switches the mode for existing and new connections (broken connections stay broken). */
  setMode(mode: TcpProxyMode): void;
  /** Destroys all client connections and their upstream sockets. */
  resetAll(): void;
  /** Stops listening and destroys all connections. */
  close(): Promise<void>;
}

interface Pair {
  client: net.Socket;
  upstream: net.Socket | undefined;
  /** Bytes were swallowed on this connection: it never forwards again. */
  broken: boolean;
}

/**
 * Starts a proxy on a free 127.0.0.1 port forwarding to `target`, initially in `pass` mode.
 */
export async function startTcpProxy(target: RedisNode): Promise<TcpProxy> {
  let mode: TcpProxyMode = 'pass';
  const pairs = new Set<Pair>();

  const destroyPair = (pair: Pair): void => {
    pairs.delete(pair);
    pair.client.destroy();
    pair.upstream?.destroy();
  };

  const connectUpstream = (pair: Pair): void => {
    const upstream = net.connect({ host: target.host, port: target.port });
    upstream.setNoDelay(true);
    pair.upstream = upstream;
    upstream.on('data', (chunk: Buffer) => {
      if (mode === 'blackhole' || pair.broken) {
        pair.broken = true;
        return;
      }
      if (!pair.client.write(chunk)) {
        upstream.pause();
        pair.client.once('drain', () => {
          if (mode !== 'stall') upstream.resume();
        });
      }
    });
    if (mode === 'stall') upstream.pause();
    upstream.on('error', () => destroyPair(pair));
    upstream.on('close', () => destroyPair(pair));
  };

  const server = net.createServer((client) => {
    client.setNoDelay(true);
    const pair: Pair = { client, upstream: undefined, broken: false };
    pairs.add(pair);
    client.on('error', () => destroyPair(pair));
    client.on('close', () => destroyPair(pair));
    client.on('data', (chunk: Buffer) => {
      if (mode === 'blackhole' || pair.broken) {
        pair.broken = true;
        return;
      }
      if (!pair.upstream) connectUpstream(pair);
      const upstream = pair.upstream as net.Socket;
      // Writes before the upstream connect completes are buffered by Node.
      if (!upstream.write(chunk)) {
        client.pause();
        upstream.once('drain', () => client.resume());
      }
    });
    // Open the upstream connection right away when passing, so the server sees the client at once
    // (a blackholed connection never reaches the server).
    if (mode === 'pass') connectUpstream(pair);
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  if (!address || typeof address === 'string') throw new Error('tcp proxy: no address');

  const proxy: TcpProxy = {
    host: '127.0.0.1',
    port: address.port,
    url: `redis://127.0.0.1:${address.port}`,
    get mode() {
      return mode;
    },
    get connections() {
      return pairs.size;
    },
    setMode(next: TcpProxyMode): void {
      const wasStalled = mode === 'stall';
      mode = next;
      for (const pair of pairs) {
        if (next === 'stall') pair.upstream?.pause();
        else if (wasStalled) pair.upstream?.resume();
      }
    },
    resetAll(): void {
      for (const pair of [...pairs]) {
        // resetAndDestroy sends an RST where available (Node >= 18.3), like a real connection reset.
        pair.client.resetAndDestroy();
        destroyPair(pair);
      }
    },
    close(): Promise<void> {
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const pair of [...pairs]) destroyPair(pair);
      });
    },
  };
  return proxy;
}
