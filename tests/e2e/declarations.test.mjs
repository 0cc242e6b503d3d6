// The TypeScript declarations against the code, read as text (no browser):
// both .d.ts files compile with the TypeScript compiler in strict mode, and www/kvchat.d.ts declares every export and every member of
// the KvChat class that www/kvchat.js defines (and nothing it does not), imports
// only types that www/protocol.d.ts (generated from src/protocol/) exports, and
// the fields the JS reads from the engine's replies exist in those types.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

const read = (p) => readFileSync(new URL(`../../${p}`, import.meta.url), 'utf8');
const js = read('www/kvchat.js');
const dts = read('www/kvchat.d.ts');
const protocol = read('www/protocol.d.ts');
const worker = read('www/worker.js');

const ID = '[A-Za-z_$][\\w$]*';
const sorted = (set) => [...set].sort();
const missing = (want, have) => sorted(want).filter((x) => !have.has(x));

/** The text of the `{ ... }` block that starts at the first `{` after `head` (braces counted). */
function block(text, head) {
  const at = text.indexOf(head);
  assert.notEqual(at, -1, `"${head}" not found: update tests/e2e/declarations.test.mjs`);
  const open = text.indexOf('{', at + head.length - 1);
  let depth = 0;
  for (let i = open; i < text.length; i++) {
    if (text[i] === '{') depth++;
    else if (text[i] === '}' && --depth === 0) return text.slice(open + 1, i);
  }
  throw new Error(`unbalanced braces after "${head}"`);
}

/** Only the lines at the block's own indentation (class members), comments dropped. */
const topLevel = (body, indent) => body.replace(/\/\*[\s\S]*?\*\//g, '').split('\n').filter((l) => l.startsWith(indent) && l[indent.length] !== ' ');

function jsMembers() {
  const body = block(js, 'export class KvChat ');
  const names = new Set();
  for (const line of topLevel(body, '  ')) {
    // fields (`info = null;`), methods, getters, static and async methods, async generators
    const m = line.match(new RegExp(`^  (?:static\\s+)?(?:async\\s+)?(?:\\*\\s*)?(?:get\\s+|set\\s+)?(${ID})\\s*(?:=|;|\\()`));
    if (m) names.add(m[1]);
  }
  // properties assigned on the instance (`this.lastResult = ...`) or on a new one (`llm.info = ...`)
  const instances = ['this', ...[...body.matchAll(new RegExp(`(${ID})\\s*=\\s*new KvChat\\(`, 'g'))].map((m) => m[1])];
  for (const v of instances) for (const m of body.matchAll(new RegExp(`\\b${v}\\.(${ID})\\s*=(?!=)`, 'g'))) names.add(m[1]);
  return names;
}

function dtsMembers() {
  const names = new Set();
  for (const line of topLevel(block(dts, 'export declare class KvChat '), '  ')) {
    const m = line.match(new RegExp(`^  (?:static\\s+)?(?:readonly\\s+)?(${ID})\\??\\s*[:(<]`));
    if (m) names.add(m[1]);
  }
  return names;
}

/** `export type Name = ...;` of protocol.d.ts: name → the field names of its object types (all union members). */
function protocolTypes() {
  const types = new Map();
  for (const chunk of protocol.split(/^export type /m).slice(1)) {
    const name = chunk.match(new RegExp(`^${ID}`))[0];
    const body = chunk.replace(/\/\*[\s\S]*?\*\//g, '');
    types.set(name, new Set([...body.matchAll(new RegExp(`^\\s+(${ID})\\??:`, 'gm'))].map((f) => f[1])));
  }
  return types;
}

test('kvchat.d.ts declares every member of the KvChat class, and only those', () => {
  const have = jsMembers();
  const declared = dtsMembers();
  for (const x of ['load', 'generate', 'lastResult', 'lastStats', 'lastBatchStats']) assert.ok(have.has(x), `the parser missed ${x}: fix this test`);
  assert.deepEqual(missing(have, declared), [], 'members of KvChat in www/kvchat.js that www/kvchat.d.ts does not declare');
  assert.deepEqual(missing(declared, have), [], 'members declared in www/kvchat.d.ts that KvChat in www/kvchat.js does not define');
});

test('kvchat.d.ts declares every export of kvchat.js', () => {
  const exported = new Set([...js.matchAll(new RegExp(`^export\\s+(?:async\\s+)?(?:const|let|class|function\\*?)\\s+(${ID})`, 'gm'))].map((m) => m[1]));
  // re-exports: `export { a, b } from './module.js';`
  for (const m of js.matchAll(/^export\s*\{([^}]*)\}\s*from/gm)) for (const name of m[1].split(',')) exported.add(name.trim());
  const declared = new Set([...dts.matchAll(new RegExp(`^export\\s+declare\\s+(?:const|let|class|function)\\s+(${ID})`, 'gm'))].map((m) => m[1]));
  assert.ok(exported.has('KvChat') && exported.has('KvChatError') && exported.has('MODELS'));
  assert.deepEqual(sorted(exported), sorted(declared));
});

test('kvchat.d.ts imports only types that protocol.d.ts declares', () => {
  const types = protocolTypes();
  assert.ok(types.has('StepReply') && types.has('GenerationResult'), 'protocol.d.ts parsed');
  const imports = [...dts.matchAll(/(?:import|export) type \{([^}]*)\} from '\.\/protocol\.js'/g)];
  assert.ok(imports.length > 0, 'kvchat.d.ts imports from ./protocol.js');
  const names = imports.flatMap((m) => m[1].split(',').map((s) => s.trim()).filter(Boolean));
  assert.deepEqual(names.filter((n) => !types.has(n)), []);
});

test('the fields the JS reads from the engine replies are declared in protocol.d.ts', () => {
  const types = protocolTypes();
  const reads = (text, v) => new Set([...text.matchAll(new RegExp(`\\b${v}\\.(${ID})`, 'g'))].map((m) => m[1]));
  const slice = (text, from, to) => {
    const a = text.indexOf(from);
    const b = text.indexOf(to, a);
    assert.ok(a >= 0 && b > a, `"${from}" … "${to}" not found: update tests/e2e/declarations.test.mjs`);
    return text.slice(a, b);
  };
  // worker.js: engine.step() and engine.batchStep() replies are `r`
  assert.deepEqual(missing(reads(slice(worker, 'const generate =', 'const generateBatch ='), 'r'), types.get('StepReply')), [], 'StepReply');
  assert.deepEqual(missing(reads(slice(worker, 'const generateBatch =', 'const handlers ='), 'r'), types.get('BatchStepReply')), [], 'BatchStepReply');
  // kvchat.js: a batch event is `ev`, its generation `ev.result`
  const batch = slice(js, 'async *generateBatch(', 'async *#stream(');
  assert.deepEqual(missing(reads(batch, 'ev'), types.get('BatchStepEvent')), [], 'BatchStepEvent');
  assert.deepEqual(missing(reads(batch, 'ev\\.result'), types.get('GenerationResult')), [], 'GenerationResult');
});

test('kvchat.d.ts and protocol.d.ts compile with tsc --strict', () => {
  const root = new URL('../../', import.meta.url).pathname;
  const tsc = `${root}node_modules/typescript/bin/tsc`;
  const args = ['--noEmit', '--strict', '--lib', 'es2022,dom', 'www/kvchat.d.ts', 'www/protocol.d.ts'];
  try {
    execFileSync(process.execPath, [tsc, ...args], { cwd: root, encoding: 'utf8', stdio: 'pipe' });
  } catch (e) {
    assert.fail(`tsc found errors in the declarations:\n${e.stdout}${e.stderr}`);
  }
});
