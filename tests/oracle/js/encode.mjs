// Reference encodings from tokenizers.js (@huggingface/tokenizers).
// usage: node encode.mjs NPM_PREFIX TOKENIZER_DIR CORPUS_JSON OUT_JSON
// CORPUS_JSON is a JSON array of strings. OUT_JSON receives
// {"special": [[ids]...], "plain": [[ids]...], "decoded": [text...]} where "special" uses
// add_special_tokens=true, "plain" false, and "decoded" is decode(plain ids) without cleanup.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [prefix, tokDir, corpusPath, outPath] = process.argv.slice(2);
if (!outPath) {
  console.error('usage: node encode.mjs NPM_PREFIX TOKENIZER_DIR CORPUS_JSON OUT_JSON');
  process.exit(2);
}
const lib = path.join(prefix, 'node_modules', '@huggingface', 'tokenizers', 'dist', 'tokenizers.mjs');
const { Tokenizer } = await import(pathToFileURL(lib).href);
const tokJson = JSON.parse(fs.readFileSync(path.join(tokDir, 'tokenizer.json'), 'utf8'));
const cfgPath = path.join(tokDir, 'tokenizer_config.json');
const tokCfg = fs.existsSync(cfgPath) ? JSON.parse(fs.readFileSync(cfgPath, 'utf8')) : {};
const tok = new Tokenizer(tokJson, tokCfg);
const corpus = JSON.parse(fs.readFileSync(corpusPath, 'utf8'));

const special = [], plain = [], decoded = [];
for (const text of corpus) {
  special.push(tok.encode(text, { add_special_tokens: true }).ids);
  const ids = tok.encode(text, { add_special_tokens: false }).ids;
  plain.push(ids);
  decoded.push(ids.length ? tok.decode(ids, { clean_up_tokenization_spaces: false }) : '');
}
fs.writeFileSync(outPath, JSON.stringify({ special, plain, decoded }));
