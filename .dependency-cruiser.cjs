/**
 * The layers of src/ (see docs/architecture.md), each importing only downward:
 *
 *   index.ts, otel.ts        entry points: may import anything
 *   write-back/              WriteBackCacheManager: dirty map, flush scheduler, conflict decisions
 *   cache/                   near-cache core, subscriber, PubSubCacheManager
 *   store/                   RedisDict, PubSubRedisDict, scripts and their framing, per-node sending
 *   protocol/                stamps, records, keys, codec, MessagePack bytes, the wire format
 *   errors.ts, options.ts, deadline.ts   the base every layer may use
 *
 * Type-only imports count (tsPreCompilationDeps): a type from an upper layer is an upward import.
 * Run by `npm run lint` (`depcruise src`).
 */
/** @type {import('dependency-cruiser').IConfiguration} */
/* global module */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'A cycle between modules: the layers must form a tree of downward imports.',
      from: {},
      to: { circular: true },
    },
    {
      name: 'base-imports-nothing-above',
      severity: 'error',
      comment: 'errors.ts, options.ts and deadline.ts are the bottom: they import no layer.',
      from: { path: '^src/(errors|options|deadline)\\.ts$' },
      to: { path: '^src/(protocol|store|cache|write-back)/|^src/(index|otel)\\.ts$' },
    },
    {
      name: 'protocol-imports-nothing-above',
      severity: 'error',
      comment: 'protocol/ (bytes and formats) imports only itself and the base.',
      from: { path: '^src/protocol/' },
      to: { path: '^src/(store|cache|write-back)/|^src/(index|otel)\\.ts$' },
    },
    {
      name: 'store-imports-protocol-only',
      severity: 'error',
      comment: 'store/ (Redis I/O) imports protocol/ and the base, never the caches above it.',
      from: { path: '^src/store/' },
      to: { path: '^src/(cache|write-back)/|^src/(index|otel)\\.ts$' },
    },
    {
      name: 'cache-imports-store-and-protocol-only',
      severity: 'error',
      comment: 'cache/ imports store/, protocol/ and the base; the write-back layer sits on top of it.',
      from: { path: '^src/cache/' },
      to: { path: '^src/write-back/|^src/(index|otel)\\.ts$' },
    },
    {
      name: 'write-back-imports-no-entry-point',
      severity: 'error',
      comment: 'write-back/ is the top layer; only the entry points import it.',
      from: { path: '^src/write-back/' },
      to: { path: '^src/(index|otel)\\.ts$' },
    },
    {
      name: 'src-imports-no-tests',
      severity: 'error',
      comment: 'The library never imports tests, benchmarks or scripts.',
      from: { path: '^src/' },
      to: { path: '^(test|property-tests|bench|scripts|demo)/' },
    },
    {
      name: 'not-to-unresolvable',
      severity: 'error',
      comment: 'An import that resolves to nothing.',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    includeOnly: '^src/',
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default', 'types'] },
  },
};
