/**
 * The data set: `keyCount` keys and their values, each a small object of about 100 bytes (JSON).
 */

/** Key name of index `i` (before any adapter-specific prefix). */
export const keyName = (i) => `k${i}`;

/**
 * A ~100-byte object (JSON.stringify length 99-104); `version` lets the invalidation benchmark
 * recognize a new value.
 */
export function makeValue(i, version = 0) {
  return {
    id: i,
    version,
    name: `user-${String(i).padStart(6, '0')}`,
    email: `user${String(i).padStart(6, '0')}@example.com`,
    score: (i % 1000) / 10,
    active: (i & 1) === 0,
    tags: ['red', 'blue'],
  };
}

/** Pre-built arrays of key names and values for indexes [0, n). */
export function makeDataset(n) {
  const keys = new Array(n);
  const values = new Array(n);
  for (let i = 0; i < n; i++) {
    keys[i] = keyName(i);
    values[i] = makeValue(i);
  }
  return { keys, values };
}
