// A WebLLM app (examples/webllm-port.html): only the import line differs from the WebLLM original.
// import { CreateMLCEngine } from 'https://esm.run/@mlc-ai/web-llm';
import { CreateMLCEngine } from '../www/webllm.js';

const status = document.getElementById('status');
const engine = await CreateMLCEngine('SmolLM2-135M-Instruct', {
  initProgressCallback: (report) => { status.textContent = report.text; },
});
const button = document.querySelector('#form button');
button.disabled = false;
const messages = [{ role: 'system', content: 'You are a helpful assistant.' }];
const schema = {
  type: 'object',
  properties: { city: { type: 'string', maxLength: 40 }, population: { type: 'integer', minimum: 0, maximum: 100_000_000 } },
  required: ['city', 'population'],
  // JSON Schema admits any other field unless told not to; a small model at temperature 0.7 will
  // invent fields until max_tokens cuts the object off.
  additionalProperties: false,
};

document.getElementById('form').addEventListener('submit', async (e) => {
  e.preventDefault();
  button.disabled = true;
  messages.push({ role: 'user', content: document.getElementById('question').value });
  const request = { messages, stream: true, stream_options: { include_usage: true }, temperature: 0.7, max_tokens: 200 };
  if (document.getElementById('json').checked) {
    request.response_format = { type: 'json_schema', json_schema: { name: 'city', schema } };
  }
  const out = document.getElementById('answer');
  out.textContent = '';
  let reply = '';
  for await (const chunk of await engine.chat.completions.create(request)) {
    reply += chunk.choices[0]?.delta.content ?? '';
    out.textContent = reply;
    if (chunk.usage) {
      const u = chunk.usage;
      document.getElementById('usage').textContent =
        `prompt ${u.prompt_tokens} tokens (${u.prompt_tokens_details.cached_tokens} from the KV cache), completion ${u.completion_tokens}\n` +
        await engine.runtimeStatsText();
    }
  }
  messages.push({ role: 'assistant', content: reply });
  status.textContent = 'Ready';
  button.disabled = false;
});
status.textContent = 'Ready';
