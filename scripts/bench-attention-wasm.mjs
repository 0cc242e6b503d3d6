// One head group's decode attention in wasm, timed in headless Chromium: examples/attention_wasm.rs
// (SmolLM2's shape: a 516-key window alone, and with 512 recalled rows as the cold tier adds them),
// cycling over COPIES groups (1: the rows stay in cache; 90: a decode step's layers x kv heads, ~38 MB,
// streamed from memory as a long-context decode step reads them). Several builds of the example
// alternate in one page, three rounds, so two versions of a kernel compare back to back.
//   cargo build --release --locked --target wasm32-unknown-unknown --example attention_wasm
//   node scripts/bench-attention-wasm.mjs [COPIES, default 90] [example.wasm ...]
import { readFileSync } from 'node:fs';
import { serve, browser } from '../tests/e2e/harness.mjs';

const copies = Number(process.argv[2] || 90);
const files = process.argv.length > 3 ? process.argv.slice(3) : ['target/wasm32-unknown-unknown/release/examples/attention_wasm.wasm'];
const srv = await serve();
const b = await browser();
try {
  const page = await b.newPage();
  await page.goto(`${srv.url}/index.html`);
  for (let round = 0; round < 3; round++) {
    for (const file of files) {
      const bytes = [...readFileSync(file)];
      const [window, withRecalled] = await page.evaluate(async ({ bytes, copies }) => {
        const module = await WebAssembly.compile(new Uint8Array(bytes));
        // The example never calls the wasm-bindgen imports the crate declares.
        const imports = {};
        for (const imp of WebAssembly.Module.imports(module)) {
          imports[imp.module] ??= {};
          imports[imp.module][imp.name] = () => { throw new Error(`unexpected import ${imp.name}`); };
        }
        const { exports } = await WebAssembly.instantiate(module, imports);
        exports.setup(copies);
        const medians = [];
        for (const recalled of [0, 1]) {
          // Warm up past V8's tier-up to its optimizing compiler.
          exports.run(3000, recalled);
          await new Promise((resolve) => setTimeout(resolve, 300));
          const times = [];
          for (let r = 0; r < 7; r++) {
            const t = performance.now();
            exports.run(1800, recalled);
            times.push(((performance.now() - t) / 1800) * 1000);
          }
          times.sort((x, y) => x - y);
          medians.push(Number(times[3].toFixed(2)));
        }
        return medians;
      }, { bytes, copies });
      console.log(JSON.stringify({ round, file, copies, window_516_us: window, window_and_recalled_1028_us: withRecalled }));
    }
  }
} finally {
  await b.close();
  srv.close();
}
