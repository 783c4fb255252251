/**
 * A guard for the sockets of the connections the library opens itself (the subscriber, the
 * sharded links): see {@link guardSocket}.
 *
 * @module
 */
import type { Cluster, Redis } from 'ioredis';

const guardedSockets = new WeakSet<object>();

/**
 * ioredis listens to its socket's `error` with `once` (twice: the connector and the connection),
 * and a failed TLS handshake can emit more errors than that on one socket (a refused certificate,
 * then the server's alert): the extra one is an uncaught exception that ends the process
 * (ioredis pull requests #961/#962, not merged). On the first error of a connection the library
 * owns, the socket gets a listener of its own; ioredis still reports the connection's errors.
 */
export function guardSocket(conn: Redis | Cluster): void {
  const socket = (conn as { stream?: { on?: unknown } }).stream;
  if (socket === undefined || typeof socket.on !== 'function' || guardedSockets.has(socket)) return;
  guardedSockets.add(socket);
  (socket as { on(event: 'error', listener: () => void): void }).on('error', () => {});
}
