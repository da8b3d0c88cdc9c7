// The official OpenAI Node client against `mha2mla serve`: completions and chat, whole and streamed, the
// model list and two refusals. Prints one JSON object for tests/serve/test_openai_client.cpp to check.
// usage: node openai_client.mjs BASE_URL API_KEY NPM_PREFIX
import { pathToFileURL } from 'node:url';

const [base, key, prefix] = process.argv.slice(2);
const { default: OpenAI } = await import(pathToFileURL(`${prefix}/node_modules/openai/index.mjs`).href);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0 });
const out = {};

const prompt = { model: 'kjv-mha', prompt: 'In the beginning', max_tokens: 16, temperature: 0 };
const c = await client.completions.create(prompt);
out.completion = c.choices[0].text;
out.finish_reason = c.choices[0].finish_reason;
out.usage = c.usage;
out.streamed = '';
for await (const chunk of await client.completions.create({ ...prompt, stream: true }))
  out.streamed += chunk.choices[0]?.text ?? '';

const chat = { model: 'kjv-mha', messages: [{ role: 'user', content: 'Who is my shepherd?' }], max_tokens: 8, temperature: 0 };
out.chat = (await client.chat.completions.create(chat)).choices[0].message.content;
out.chat_streamed = '';
for await (const chunk of await client.chat.completions.create({ ...chat, stream: true }))
  out.chat_streamed += chunk.choices[0]?.delta?.content ?? '';

out.models = (await client.models.list()).data.map((m) => m.id);
try {
  await client.completions.create({ ...prompt, max_tokens: -1 });
  out.bad_request = 'accepted';
} catch (e) {
  out.bad_request = e.status;
}
try {
  await new OpenAI({ baseURL: `${base}/v1`, apiKey: 'wrong', maxRetries: 0 }).models.list();
  out.wrong_key = 'accepted';
} catch (e) {
  out.wrong_key = e.status;
}
console.log(JSON.stringify(out));
