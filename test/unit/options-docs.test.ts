/**
 * Every option of the public API documents its default: each property of an exported `…Options`
 * interface has a TSDoc `@defaultValue` tag (read from the sources with the TypeScript parser).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '../..');
const FILES = ['src/store/redis-dict.ts', 'src/store/pubsub-redis-dict.ts', 'src/store/types.ts', 'src/cache/types.ts', 'src/write-back/manager.ts', 'src/deadline.ts'];

/** `Interface.property` of every option without a `@defaultValue` tag. */
function undocumented(file: string): { options: string[]; missing: string[] } {
  const source = ts.createSourceFile(file, readFileSync(join(root, file), 'utf8'), ts.ScriptTarget.Latest, true);
  const options: string[] = [];
  const missing: string[] = [];
  source.forEachChild((node) => {
    if (!ts.isInterfaceDeclaration(node) || !node.name.text.endsWith('Options')) return;
    if (!node.modifiers?.some((m) => m.kind === ts.SyntaxKind.ExportKeyword)) return;
    for (const member of node.members) {
      if (!ts.isPropertySignature(member)) continue;
      const name = `${node.name.text}.${member.name.getText(source)}`;
      options.push(name);
      if (!ts.getJSDocTags(member).some((tag) => tag.tagName.text === 'defaultValue')) missing.push(name);
    }
  });
  return { options, missing };
}

describe('option docs', () => {
  it.each(FILES)('every option in %s has a @defaultValue', (file) => {
    const { options, missing } = undocumented(file);
    expect(options.length).toBeGreaterThan(0);
    expect(missing).toEqual([]);
  });
});
