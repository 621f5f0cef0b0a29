// Count tokens with the public Claude tokenizer (@anthropic-ai/tokenizer, npm).
// Reads JSON lines {"id": ..., "text": ...} on stdin; writes {"id": ..., "tokens": n} per line.
//
// Not part of any build or test: install the tokenizer somewhere outside the repo first,
//   mkdir -p /tmp/tok && (cd /tmp/tok && npm install @anthropic-ai/tokenizer@0.0.4)
// and point TOKENIZER_DIR at it:
//   TOKENIZER_DIR=/tmp/tok node count_tokens.mjs < texts.jsonl
import { createRequire } from 'node:module';
import readline from 'node:readline';

const dir = process.env.TOKENIZER_DIR ?? '/tmp/tok';
const require = createRequire(dir.replace(/\/?$/, '/'));
const { getTokenizer } = require('@anthropic-ai/tokenizer');
const enc = getTokenizer();

export function count(text) {
  // NFKC, as the package's own countTokens does; special tokens are plain text here.
  return enc.encode(text.normalize('NFKC'), 'all').length;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line.trim()) continue;
    const v = JSON.parse(line);
    process.stdout.write(JSON.stringify({ id: v.id, tokens: count(v.text) }) + '\n');
  }
  enc.free();
}
