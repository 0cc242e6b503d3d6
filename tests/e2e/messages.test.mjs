// The page↔worker messages against their one declaration, read as text (no
// browser, no TypeScript compiler). src/protocol/messages.rs declares what
// www/kvchat.js posts to www/worker.js (WorkerRequest) and what the worker posts
// back (WorkerMessage); both are rendered into www/protocol.d.ts. Both JS files
// build and read these objects by hand, so this test checks every `type` and
// field they use, both ways, against those unions.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

const read = (p) => readFileSync(new URL(`../../${p}`, import.meta.url), 'utf8');
const page = read('www/kvchat.js');
const worker = read('www/worker.js');
const protocol = read('www/protocol.d.ts');

const ID = '[A-Za-z_$][\\w$]*';
const sorted = (xs) => [...xs].sort();
const HINT = 'declare it in src/protocol/messages.rs, then `KVCHAT_BLESS=1 cargo test --release --lib protocol`';

/** `text` with the contents of strings, template literals and comments blanked
 * out (same length, so indices still point into `text`). */
function mask(text) {
  let out = '';
  for (let i = 0; i < text.length;) {
    const c = text[i];
    const blankTo = (end) => { out += text.slice(i, end).replace(/[^\n]/g, ' '); i = end; };
    if (c === '/' && text[i + 1] === '/') blankTo(text.indexOf('\n', i) < 0 ? text.length : text.indexOf('\n', i));
    else if (c === '/' && text[i + 1] === '*') blankTo(text.indexOf('*/', i) + 2);
    else if (c === "'" || c === '"' || c === '`') {
      let j = i + 1;
      while (j < text.length && text[j] !== c) {
        if (text[j] === '\\') j++;
        else if (c === '`' && text[j] === '$' && text[j + 1] === '{') {
          let depth = 0; // a ${…} expression: to its closing brace
          for (j++; j < text.length; j++) {
            if (text[j] === '{') depth++;
            else if (text[j] === '}' && --depth === 0) break;
          }
        }
        j++;
      }
      out += c;
      i++;
      blankTo(j);
      out += text[i] ?? '';
      i++;
    } else { out += c; i++; }
  }
  return out;
}

/** The index just past the bracket that closes the one at `open` (in masked text). */
function closing(masked, open) {
  let depth = 0;
  for (let i = open; i < masked.length; i++) {
    if ('{[('.includes(masked[i])) depth++;
    else if ('}])'.includes(masked[i]) && --depth === 0) return i + 1;
  }
  throw new Error(`unbalanced brackets at ${open}`);
}

/** An object literal's top-level entries: `key: value`, shorthand `key`, or `...spread`. */
function entries(text, masked, open) {
  const end = closing(masked, open) - 1;
  const items = [];
  let depth = 0;
  let start = open + 1;
  for (let i = open + 1; i <= end; i++) {
    if ('{[('.includes(masked[i])) depth++;
    else if ('}])'.includes(masked[i]) && i < end) depth--;
    if ((masked[i] === ',' && depth === 0) || i === end) {
      const m = masked.slice(start, i);
      const at = start + m.length - m.trimStart().length;
      const item = m.trim();
      start = i + 1;
      if (!item) continue;
      const kv = item.match(new RegExp(`^(${ID})\\s*(?::|=)\\s*`));
      if (item.startsWith('...')) items.push({ spread: item.slice(3).trim() });
      else if (kv) items.push({ key: kv[1], value: text.slice(at + kv[0].length, at + item.length).trim(), at: at + kv[0].length });
      else if (new RegExp(`^${ID}$`).test(item)) items.push({ key: item, value: item });
      else throw new Error(`cannot read the object entry ${JSON.stringify(text.slice(at, at + item.length))}`);
    }
  }
  return items;
}

/** Every object literal passed to `head` (a regex source ending at the literal's `{`), with its entries. */
function literals(text, head) {
  const masked = mask(text);
  return [...masked.matchAll(new RegExp(head, 'g'))].map((m) => {
    const open = m.index + m[0].length - 1;
    return { line: text.slice(0, m.index).split('\n').length, items: entries(text, masked, open), match: m };
  });
}

/** `export type Name = …;` of protocol.d.ts: its text. */
function typeText(name) {
  const m = protocol.match(new RegExp(`^export type ${name} = ([\\s\\S]*?);$`, 'm'));
  assert.ok(m, `www/protocol.d.ts declares no type ${name}: ${HINT}`);
  return m[1];
}

/** Field names of a declared type (every member of a union or intersection), and which are optional. */
function fieldsOf(text) {
  const fields = new Map();
  for (const f of text.replace(/\/\*[\s\S]*?\*\//g, '').matchAll(new RegExp(`^\\s+(${ID})(\\?)?:`, 'gm'))) fields.set(f[1], Boolean(f[2]));
  return fields;
}

/** A tagged union of protocol.d.ts: `type` → its fields (name → optional), `type` itself left out. */
function union(name) {
  const text = typeText(name);
  const variants = new Map();
  for (const body of text.split(/^\} \| \{$/m)) {
    const tag = body.match(/^\s+"type": "([^"]+)",$/m);
    assert.ok(tag, `a member of ${name} has no "type": is it still #[serde(tag = "type")]?`);
    variants.set(tag[1], fieldsOf(body));
  }
  return variants;
}

/** `posted` (field names a JS object literal sets) against a declared variant: same names, optional ones aside. */
function checkFields(what, posted, declared) {
  const undeclared = sorted(posted).filter((f) => !declared.has(f));
  const unset = sorted(declared.keys()).filter((f) => !declared.get(f) && !posted.has(f));
  assert.deepEqual(undeclared, [], `${what} sets fields its declaration lacks: ${HINT}`);
  assert.deepEqual(unset, [], `${what} does not set declared fields`);
}

const messages = union('WorkerMessage');
const requests = union('WorkerRequest');

test('protocol.d.ts declares the page↔worker unions', () => {
  for (const t of ['progress', 'piece', 'done', 'aborted', 'batch', 'result', 'error', 'crash']) assert.ok(messages.has(t), `WorkerMessage lacks ${t}`);
  for (const t of ['load', 'generate', 'generateBatch', 'abort', 'tokenize', 'reset', 'dispose']) assert.ok(requests.has(t), `WorkerRequest lacks ${t}`);
});

test('every message worker.js posts is a declared WorkerMessage, with its fields', () => {
  // All messages go through `post`: nothing else may call postMessage on self.
  const direct = [...mask(worker).matchAll(/(?:\bself\.|\bglobalThis\.|(?<![\w$.]))postMessage\(/g)].length;
  assert.equal(direct, 1, 'worker.js posts to the page outside `const post = ...`: post its messages through post()');
  assert.match(worker, /const post = \(msg, transfer\) => self\.postMessage\(msg,/, 'post() is how worker.js sends: update this test');
  const posts = [...mask(worker).matchAll(/\bpost\(/g)].length;
  const found = literals(worker, '\\bpost\\(\\{');
  assert.equal(found.length, posts, 'a post(...) in worker.js does not take an object literal: build the message in place');
  const sent = new Set();
  for (const { line, items } of found) {
    const type = items.find((x) => x.key === 'type');
    assert.ok(type && /^'[^']*'$/.test(type.value), `worker.js:${line}: post() without a literal type`);
    const t = type.value.slice(1, -1);
    assert.ok(!items.some((x) => x.spread), `worker.js:${line}: post({ type: '${t}', ...spread }) cannot be checked`);
    assert.ok(messages.has(t), `worker.js:${line} posts type '${t}', which WorkerMessage does not declare: ${HINT}`);
    checkFields(`worker.js:${line} (type '${t}')`, new Set(items.filter((x) => x.key !== 'type').map((x) => x.key)), messages.get(t));
    sent.add(t);
  }
  assert.deepEqual(sorted(messages.keys()).filter((t) => !sent.has(t)), [], 'WorkerMessage declares types worker.js never posts');
});

test('every message type kvchat.js handles is declared, and the fields it reads exist', () => {
  const handled = new Set([...page.matchAll(/\bm\.type\s*[!=]==\s*'([^']*)'/g)].map((m) => m[1]));
  for (const t of ['progress', 'piece', 'done', 'result', 'error', 'crash']) assert.ok(handled.has(t), `the parser missed m.type === '${t}': fix this test`);
  assert.deepEqual(sorted(handled).filter((t) => !messages.has(t)), [], `kvchat.js handles message types WorkerMessage does not declare: ${HINT}`);
  const declared = new Set([...messages.values()].flatMap((f) => [...f.keys()]));
  const readFields = new Set([...mask(page).matchAll(new RegExp(`\\bm\\.(${ID})`, 'g'))].map((m) => m[1]).filter((f) => f !== 'type'));
  assert.deepEqual(sorted(readFields).filter((f) => !declared.has(f)), [], 'kvchat.js reads message fields no WorkerMessage declares');
});

test('every request kvchat.js sends is a declared WorkerRequest, with its fields', () => {
  assert.match(page, /this\.#worker\.postMessage\(\{ type, id, \.\.\.payload \}, transfer\)/, '#send() is how kvchat.js posts requests ({ type, id, ...payload }): update this test');
  assert.equal([...mask(page).matchAll(/\bpostMessage\(/g)].length, 1, 'kvchat.js calls postMessage outside #send(): send requests through #call/#send/#stream');
  // Every call of #call/#send/#stream passes a literal type and a literal payload (or forwards its own `type, payload`).
  const calls = [...mask(page).matchAll(/\.#(call|send|stream)\(\s*(\S[^,]*),/g)];
  const forwards = calls.filter((c) => c[2] === 'type').length;
  const found = literals(page, "\\.#(?:call|send|stream)\\(\\s*'[^']*',\\s*\\{");
  assert.equal(found.length + forwards, calls.length, 'a #call/#send/#stream in kvchat.js without a literal type and payload object');
  const sent = new Set();
  for (const { line, items, match } of found) {
    const t = page.slice(match.index).match(/'([^']*)'/)[1];
    assert.ok(requests.has(t), `kvchat.js:${line} sends type '${t}', which WorkerRequest does not declare: ${HINT}`);
    assert.ok(!items.some((x) => x.spread), `kvchat.js:${line}: a ...spread in the payload cannot be checked`);
    const declared = requests.get(t);
    checkFields(`kvchat.js:${line} (type '${t}')`, new Set(['id', ...items.map((x) => x.key)]), declared);
    // A nested literal (load's options) against the declared field's named type.
    for (const x of items.filter((i) => i.value.startsWith('{'))) {
      const ref = typeText('WorkerRequest').split(/^\} \| \{$/m).find((b) => b.includes(`"type": "${t}",`)).match(new RegExp(`^\\s+${x.key}\\??: (${ID}),$`, 'm'));
      assert.ok(ref, `kvchat.js:${line}: '${t}'.${x.key} is a literal object but its declared type is not a named type`);
      const keys = entries(page, mask(page), x.at).map((e) => e.key);
      const fields = fieldsOf(typeText(ref[1]));
      assert.deepEqual(keys.filter((k) => !fields.has(k)), [], `kvchat.js:${line}: '${t}'.${x.key} sets fields ${ref[1]} lacks: ${HINT}`);
    }
    sent.add(t);
  }
  assert.deepEqual(sorted(requests.keys()).filter((t) => !sent.has(t)), [], 'WorkerRequest declares types kvchat.js never sends');
});

test('worker.js handles every declared request, and reads only declared fields', () => {
  const masked = mask(worker);
  const open = masked.indexOf('{', masked.indexOf('const handlers = {'));
  assert.ok(open > 0, '`const handlers = {` not found in worker.js: update this test');
  const handlers = entries(worker, masked, open);
  assert.deepEqual(sorted(handlers.map((h) => h.key)), sorted(requests.keys()), 'the handlers in worker.js and the declared WorkerRequest types differ');
  // The fields each handler destructures: `({ a, b })` in its parameters, or `const { a, b } = msg` in its body.
  for (const { key, value } of handlers) {
    let src = value;
    if (new RegExp(`^${ID}$`).test(value)) {
      const def = worker.match(new RegExp(`(?:^(?:async )?function ${value}\\(|^const ${value} = )[\\s\\S]*?^\\S`, 'm'));
      assert.ok(def, `worker.js: the handler ${value} is not defined as a top-level function or const`);
      src = def[0];
    }
    const pattern = src.match(/^(?:const \w+ = |(?:async )?function \w+)?\s*(?:async\s*)?\(\{([^}]*)\}\)/) ?? src.match(/const \{([^}]*)\} = msg;/);
    const read = new Set(pattern ? pattern[1].split(',').map((s) => s.trim().split(/\s*=/)[0]).filter(Boolean) : []);
    const declared = requests.get(key);
    assert.deepEqual(sorted(read).filter((f) => !declared.has(f)), [], `worker.js's '${key}' handler reads fields WorkerRequest '${key}' lacks: ${HINT}`);
  }
  // load's options, as the worker reads them.
  const load = worker.match(/^async function load\(msg\) \{[\s\S]*?^\}/m)[0];
  const options = new Set([...load.matchAll(new RegExp(`\\boptions\\.(${ID})`, 'g'))].map((m) => m[1]));
  assert.ok(options.has('backend'), 'the parser missed options.backend: fix this test');
  const fields = fieldsOf(typeText('WorkerLoadOptions'));
  assert.deepEqual(sorted(options).filter((f) => !fields.has(f)), [], `worker.js reads load options WorkerLoadOptions lacks: ${HINT}`);
});

test('the payloads worker.js builds (stats, load reply, error) are declared', () => {
  const keysOf = (head) => {
    const [lit] = literals(worker, head);
    assert.ok(lit, `${head} not found in worker.js: update this test`);
    return lit.items.filter((x) => x.key).map((x) => x.key);
  };
  const check = (what, keys, type) => {
    const fields = fieldsOf(typeText(type));
    assert.deepEqual(keys.filter((k) => !fields.has(k)), [], `${what} sets fields ${type} lacks: ${HINT}`);
  };
  check('statsOf()', keysOf('return \\{(?= \\.\\.\\.s, )'), 'WorkerStats');
  check("load()'s result", keysOf('return \\{(?= info: )'), 'LoadReply');
  const errorKeys = keysOf('const errorOf = \\(e\\) => \\(\\{');
  check('errorOf()', errorKeys, 'WorkerError');
  assert.deepEqual(sorted(errorKeys), sorted(fieldsOf(typeText('WorkerError')).keys()), 'errorOf() and WorkerError differ');
});
