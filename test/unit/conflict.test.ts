/**
 * The conflict decision is a pure function of the policy and both sides: it changes nothing, the
 * write-back manager applies what it returns (see src/write-back/conflict.ts).
 */
import { describe, expect, it } from 'vitest';
import { formatStamp, type Stamp } from '../../src/protocol/stamp.js';
import { type ConflictResolver, decideConflict } from '../../src/write-back/conflict.js';

const ME = '0123456789abcdef';
const PEER = 'fedcba9876543210';
const at = (ms: number, origin = ME): Stamp => formatStamp(1_700_000_000_000 + ms, 0, origin);

/** A local change stamped at 20, dirty since 10. */
const local = { stamp: at(20), since: at(10), value: 'mine', deleted: false };
const remote = (ms: number, known = true) => ({ stamp: at(ms, PEER), value: known ? 'theirs' : undefined, deleted: false, known });

describe('decideConflict', () => {
  it('last-writer-wins: only a remote write newer than the local change wins', () => {
    expect(decideConflict('last-writer-wins', local, remote(15), 'k')).toEqual({ kind: 'none' });
    expect(decideConflict('last-writer-wins', local, remote(25), 'k')).toEqual({ kind: 'remote' });
    expect(decideConflict('last-writer-wins', local, remote(25, false), 'k')).toEqual({ kind: 'remote' });
  });

  it('discard-on-remote-update: any remote write after the key became dirty wins', () => {
    expect(decideConflict('discard-on-remote-update', local, remote(5), 'k')).toEqual({ kind: 'none' });
    expect(decideConflict('discard-on-remote-update', local, remote(15), 'k')).toEqual({ kind: 'remote' });
  });

  it('a resolver decides the same conflicts as discard-on-remote-update, and only with the remote value', () => {
    const calls: unknown[] = [];
    const resolver: ConflictResolver<string> = (l, r, key) => {
      calls.push([l, r, key]);
      return 'local';
    };
    expect(decideConflict(resolver, local, remote(5), 'k')).toEqual({ kind: 'none' });
    expect(decideConflict(resolver, local, remote(15, false), 'k')).toEqual({ kind: 'undecided' });
    expect(calls).toEqual([]);
    expect(decideConflict(resolver, local, remote(15), 'k')).toEqual({ kind: 'local' });
    expect(calls).toEqual([[{ value: 'mine', deleted: false, stamp: local.stamp }, { value: 'theirs', deleted: false, stamp: at(15, PEER) }, 'k']]);
  });

  it('maps each resolver answer to a decision; a throw or a bad answer is a failed decision', () => {
    expect(decideConflict(() => 'remote', local, remote(15), 'k')).toEqual({ kind: 'remote' });
    expect(decideConflict(() => ({ value: 'both' }), local, remote(15), 'k')).toEqual({ kind: 'merged', value: 'both' });
    const boom = new Error('boom');
    expect(
      decideConflict(
        () => {
          throw boom;
        },
        local,
        remote(15),
        'k',
      ),
    ).toEqual({ kind: 'failed', error: boom });
    const bad = decideConflict((() => 'neither') as unknown as ConflictResolver<string>, local, remote(15), 'k');
    expect(bad.kind).toBe('failed');
    expect(bad.kind === 'failed' && bad.error).toBeInstanceOf(TypeError);
  });
});
