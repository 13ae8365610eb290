// A tiny checkpoint for `lora-cuda finetune` runs: the llama_gqa test model, a BPE tokenizer whose
// vocabulary holds the words of the data, and a .txt data file.
import * as fs from 'fs';
import * as path from 'path';
import { loadCases, writeCheckpoint } from './llama-weights';

// Words of the data as single BPE tokens; every other word falls back to letters.
const WORDS = ['the', 'cat', 'sat', 'on', 'mat', 'dog', 'ran', 'to', 'a', 'big', 'red', 'ball', 'q', 'ans'];

export const LINES = [
  'the cat sat on the mat', 'the dog ran to the mat', 'a big red ball', 'the cat ran to a ball',
  'the dog sat on a mat', 'a red cat sat', 'the big dog ran', 'the red ball ran to the cat',
  'a cat on a mat', 'the dog sat', 'big red dog', 'the mat sat on the cat',
];

export function tokenizerJson(): object {
  const vocab: Record<string, number> = { '<unk>': 0, '<pad>': 1, '</s>': 2 };
  for (const c of 'abcdefghijklmnopqrstuvwxyz:?') if (!(c in vocab)) vocab[c] = Object.keys(vocab).length;
  const merges: string[] = [];
  // Merge each word left to right: "t h" -> "th", "th e" -> "the", …
  for (const w of WORDS) {
    let cur = w[0];
    for (const ch of w.slice(1)) {
      if (!(cur + ch in vocab)) {
        merges.push(`${cur} ${ch}`);
        vocab[cur + ch] = Object.keys(vocab).length;
      }
      cur += ch;
    }
  }
  if (Object.keys(vocab).length > 67) throw new Error('the tokenizer outgrew the model (vocab_size 67)');
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<pad>'), special(2, '</s>')],
    normalizer: null, pre_tokenizer: { type: 'WhitespaceSplit' }, post_processor: null, decoder: null,
    model: {
      type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, vocab, merges,
    },
  };
}

/** A chat template in the style of the real ones (roles, an end-of-turn token, a generation prompt), in words the tokenizer knows. */
export const CHAT_TEMPLATE =
  "{% for m in messages %}{{ m.role }} : {{ m.content }} {{ eos_token }} {% endfor %}{% if add_generation_prompt %}assistant : {% endif %}";

/** Writes DIR/model (checkpoint + tokenizer) and DIR/data.txt (LINES, then a blank line); returns their paths. */
export async function finetuneFixture(dir: string): Promise<{ model: string; data: string }> {
  const model = path.join(dir, 'model');
  await writeCheckpoint(model, loadCases().cases.llama_gqa);
  fs.writeFileSync(path.join(model, 'tokenizer.json'), JSON.stringify(tokenizerJson()));
  fs.writeFileSync(path.join(model, 'tokenizer_config.json'), JSON.stringify({ eos_token: '</s>', pad_token: '<pad>', chat_template: CHAT_TEMPLATE }));
  const data = path.join(dir, 'data.txt');
  fs.writeFileSync(data, LINES.join('\n') + '\n\n');
  return { model, data };
}
