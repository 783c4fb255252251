/**
 * Test certificates made with `openssl`: a CA, a server certificate for 127.0.0.1 / localhost
 * signed by it, and a second, unrelated CA (a client that trusts only that one must refuse the
 * server). Everything is written to a folder the caller removes.
 *
 * @module
 */
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { findExecutable } from './harness.js';

const run = promisify(execFile);

/** Files and contents of {@link makeTestCertificates}. */
export interface TestCertificates {
  /** PEM of the CA that signed the server certificate. */
  readonly ca: Buffer;
  /** PEM of a CA that signed nothing the server has. */
  readonly otherCa: Buffer;
  /** Paths, for `redis-server --tls-*-file`. */
  readonly files: { readonly ca: string; readonly cert: string; readonly key: string };
}

/** The path of `openssl`, or `undefined` when it is not installed (TLS tests are then skipped). */
export function findOpenssl(): string | undefined {
  return findExecutable('openssl');
}

/** Makes the certificates in `dir` (an existing folder). */
export async function makeTestCertificates(dir: string): Promise<TestCertificates> {
  const openssl = findOpenssl();
  if (openssl === undefined) throw new Error('openssl is not installed');
  const file = (name: string): string => path.join(dir, name);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  for (const name of ['ca', 'other-ca']) {
    await run(openssl, ['req', '-x509', ...ec, '-keyout', file(`${name}.key`), '-out', file(`${name}.crt`), '-days', '2', '-subj', `/CN=redis-pubsub-dict test ${name}`]);
  }
  await run(openssl, ['req', ...ec, '-keyout', file('server.key'), '-out', file('server.csr'), '-subj', '/CN=localhost']);
  await writeFile(file('server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n');
  await run(openssl, [
    'x509', '-req', '-in', file('server.csr'), '-CA', file('ca.crt'), '-CAkey', file('ca.key'), '-CAcreateserial',
    '-out', file('server.crt'), '-days', '2', '-extfile', file('server.ext'),
  ]);
  return {
    ca: await readFile(file('ca.crt')),
    otherCa: await readFile(file('other-ca.crt')),
    files: { ca: file('ca.crt'), cert: file('server.crt'), key: file('server.key') },
  };
}
