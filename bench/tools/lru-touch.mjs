/**
 * Why node-redis client-side caching is slow on one hot key (docs/benchmarks.md, "node-redis CSC,
 * one hot key"): its LRU moves an entry to the back of a `Map` on every hit by `delete` + `set`
 * (`@redis/client` dist/lib/client/cache.js), and in V8 that pattern costs time that grows with the
 * map's size when it repeats on one key. No Redis needed:
 *
 *   node bench/tools/lru-touch.mjs
 *
 * Prints, for maps of 1,000 / 10,000 / 100,000 entries, the cost of one "touch" (`get` + `delete` +
 * `set` of the same key) repeated on one key and on keys spread over the map, and the cost of a
 * plain `get` of the hot key after the touches (fast: the lookup is not what is slow).
 */
const ops = 20_000;
const time = (f) => {
  const start = process.hrtime.bigint();
  for (let i = 0; i < ops; i++) f(i);
  return Number(process.hrtime.bigint() - start) / ops;
};
for (const n of [1_000, 10_000, 100_000]) {
  const map = new Map();
  for (let i = 0; i < n; i++) map.set(`k${i}`, i);
  const hot = `k${n >> 1}`;
  const spread = Array.from({ length: ops }, (_, i) => `k${(i * 7919) % n}`);
  const touchHot = time(() => {
    const v = map.get(hot);
    map.delete(hot);
    map.set(hot, v);
  });
  const getHot = time(() => map.get(hot));
  const touchSpread = time((i) => {
    const k = spread[i];
    const v = map.get(k);
    map.delete(k);
    map.set(k, v);
  });
  console.log(
    `${n.toLocaleString('en-US').padStart(7)} entries: touch of one hot key ${touchHot.toFixed(0).padStart(6)} ns, ` +
      `touch of spread keys ${touchSpread.toFixed(0).padStart(5)} ns, get of the hot key afterwards ${getHot.toFixed(0)} ns`,
  );
}
