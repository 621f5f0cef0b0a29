// Ground truth for the estimator corpus: the input tokens of each body in bodies/, counted
// with the public Claude tokenizer (@anthropic-ai/tokenizer) plus the upstream's documented
// rules for what a tokenizer cannot see. Writes truth.json. One-off, offline; see README.md.
//
//   TOKENIZER_DIR=/tmp/tok node ground_truth.mjs
//
// What "truth" means here (and its limits are in docs/rate-limiting.md):
// - Text: every text the model reads, rendered in the legacy "\n\nHuman: … \n\nAssistant:"
//   prompt format (system first; tool definitions, tool calls and tool results as compact
//   JSON or tags; thinking in tags), NFKC-normalised, tokenized as one string.
// - Tools: the documented tool-use system prompt (346 tokens for tool_choice auto/none, 313
//   for any/tool, Claude 4 models) and the documented extras of Anthropic-defined tools.
// - Images: tokens = width × height / 750 after scaling to the model's documented limits
//   (long edge 1568 px and ~1,600 tokens; Opus 4.7: 2576 px and 4784 tokens), with width and
//   height read from the fully decoded file (independently of the Rust header reader).
// - PDFs: pages (counted in the fully decoded file) × 2,250 tokens, the middle of the
//   documented 1,500-3,000 per page. URL or file sources: 5 pages, as the estimator assumes.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { count } from './count_tokens.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const TOOLS_AUTO = 346, TOOLS_ANY = 313, PDF_PAGE = 2250, UNSEEN_DOC_PAGES = 5;
const ANTHROPIC_TOOLS = { bash_: 245, text_editor_: 700, computer_: 735 };

function imageDims(buf) {
  if (buf.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])))
    return [buf.readUInt32BE(16), buf.readUInt32BE(20)];
  if (buf.subarray(0, 3).toString('latin1') === 'GIF') return [buf.readUInt16LE(6), buf.readUInt16LE(8)];
  if (buf.subarray(0, 4).toString('latin1') === 'RIFF' && buf.subarray(12, 16).toString('latin1') === 'VP8X')
    return [buf.readUIntLE(24, 3) + 1, buf.readUIntLE(27, 3) + 1];
  if (buf[0] === 0xff && buf[1] === 0xd8) {
    let i = 2;
    while (i + 9 < buf.length) {
      const m = buf[i + 1];
      if (m >= 0xc0 && m <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(m)) return [buf.readUInt16BE(i + 7), buf.readUInt16BE(i + 5)];
      i += 2 + buf.readUInt16BE(i + 2);
    }
  }
  return null;
}

function imageTokens(dims, model) {
  const [edge, cap] = model.startsWith('claude-opus-4-7') ? [2576, 4784] : [1568, 1600];
  if (!dims) return cap;
  let [w, h] = dims;
  let s = Math.min(1, edge / Math.max(w, h));
  if ((w * h * s * s) / 750 > cap) s *= Math.sqrt(cap / ((w * h * s * s) / 750));
  return Math.max(1, Math.ceil((w * s * h * s) / 750));
}

function render(body) {
  const out = [];
  let extra = 0;
  const model = body.model ?? '';
  const blocks = (content) => {
    if (typeof content === 'string') return content;
    return content.map(block).join('\n');
  };
  const block = (b) => {
    switch (b.type) {
      case 'text': return b.text;
      case 'image': {
        const src = b.source;
        extra += imageTokens(src.type === 'base64' ? imageDims(Buffer.from(src.data, 'base64')) : null, model);
        return '';
      }
      case 'document': {
        const src = b.source;
        let text = [b.title, b.context].filter(Boolean).join('\n');
        if (src.type === 'base64') {
          const pdf = Buffer.from(src.data, 'base64').toString('latin1');
          extra += (pdf.match(/\/Type\s*\/Page(?![s\w])/g) ?? []).length * PDF_PAGE;
        } else if (src.type === 'text') text += '\n' + src.data;
        else if (src.type === 'content') text += '\n' + blocks(src.content);
        else extra += UNSEEN_DOC_PAGES * PDF_PAGE;
        return text;
      }
      case 'tool_use': return `<tool_use id="${b.id}" name="${b.name}">${JSON.stringify(b.input)}</tool_use>`;
      case 'tool_result': return `<tool_result id="${b.tool_use_id}">${b.content === undefined ? '' : blocks(b.content)}</tool_result>`;
      case 'thinking': return `<thinking>${b.thinking}</thinking>`;
      default: throw new Error(`corpus block type ${b.type} has no rendering`);
    }
  };
  if (body.tools?.length) {
    const choice = body.tool_choice?.type ?? 'auto';
    extra += choice === 'any' || choice === 'tool' ? TOOLS_ANY : TOOLS_AUTO;
    for (const t of body.tools) {
      if (t.type && t.type !== 'custom') {
        for (const [p, n] of Object.entries(ANTHROPIC_TOOLS)) if (t.type.startsWith(p)) extra += n;
        out.push(JSON.stringify({ name: t.name }));
      } else out.push(JSON.stringify({ name: t.name, description: t.description, input_schema: t.input_schema }));
    }
  }
  if (body.system !== undefined) out.push(blocks(body.system));
  for (const m of body.messages) out.push((m.role === 'user' ? '\n\nHuman: ' : '\n\nAssistant: ') + blocks(m.content));
  if (body.messages.at(-1)?.role !== 'assistant') out.push('\n\nAssistant:');
  const text = count(out.join(''));
  return { text, other: extra, total: text + extra };
}

const manifest = JSON.parse(fs.readFileSync(path.join(here, 'manifest.json'), 'utf8'));
const rows = manifest.map(({ file, category }) => {
  const body = JSON.parse(fs.readFileSync(path.join(here, 'bodies', file), 'utf8'));
  const r = render(body);
  return { file, category, actual_total: r.total, text_tokens: r.text, other_tokens: r.other };
});
fs.writeFileSync(path.join(here, 'truth.json'), '[\n' + rows.map((r) => JSON.stringify(r)).join(',\n') + '\n]\n');
console.log(`${rows.length} bodies, ${rows.reduce((a, r) => a + r.actual_total, 0)} tokens`);
