/**
 * A copy of Sigil "installed" somewhere else, as a plugin author's project has one: a directory
 * `<dir>/node_modules/sigil` holding this checkout's package.json (its real `exports` map) and the
 * JavaScript of every module `sigil/plugin` and `sigil/plugin/testing` reach, compiled from src/
 * into dist/ with the layout tsconfig.build.json gives (rootDir src). Its own `node_modules` points
 * at the checkout's dependencies. Modules loaded from it are a second copy of Sigil: its SigilError
 * is a different class from the one the verifier under test uses, as for a real plugin.
 */
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';

const ROOT = resolve(__dirname, '../../..');
const SRC = join(ROOT, 'src');

function closure(entries: string[]): Set<string> {
  const seen = new Set<string>();
  const todo = [...entries];
  while (todo.length > 0) {
    const file = todo.pop() as string;
    if (seen.has(file)) continue;
    seen.add(file);
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(/(?:from|import\()\s*'(\.{1,2}\/[^']+)\.js'/g)) todo.push(resolve(dirname(file), `${m[1]}.ts`));
  }
  return seen;
}

/** Install the compiled kit at `<dir>/node_modules/sigil`; returns that package directory. */
export function installSigilCopy(dir: string): string {
  const pkg = join(dir, 'node_modules', 'sigil');
  mkdirSync(pkg, { recursive: true });
  const real = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { name: string; type: string; exports: unknown; version: string };
  writeFileSync(join(pkg, 'package.json'), JSON.stringify({ name: real.name, version: real.version, type: real.type, exports: real.exports }));
  symlinkSync(join(ROOT, 'node_modules'), join(pkg, 'node_modules'), 'dir');
  for (const file of closure([join(SRC, 'plugin-kit/index.ts'), join(SRC, 'plugin-kit/testing.ts')])) {
    const out = join(pkg, 'dist', relative(SRC, file).replace(/\.ts$/, '.js'));
    mkdirSync(dirname(out), { recursive: true });
    const js = ts.transpileModule(readFileSync(file, 'utf8'), {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, experimentalDecorators: true },
      fileName: file,
    }).outputText;
    writeFileSync(out, js);
  }
  return pkg;
}
