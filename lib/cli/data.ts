// Training data for `lora-cuda finetune`: reading .txt / .jsonl files,
// tokenizing, the train/eval split, the seeded shuffle and padded batches.
//
// Formats:
//   .txt    one training example per non-empty line (lines are used as they
//           are, without the line break; blank lines are skipped).
//   .jsonl  one JSON object per non-empty line, either { "text": "..." } (loss
//           on every token) or { "prompt": "...", "completion": "..." } (loss on
//           the completion tokens only: the prompt's labels are -100). Prompt
//           and completion are joined as they are, so put any separator (a
//           space, a newline) into the data itself. Other keys are ignored.
import * as crypto from 'crypto';
import * as path from 'path';
import { CliError } from './io';
import { MAX_JSON_CONTAINERS, MAX_JSON_DEPTH, READ_LIMITS, readWholeFile, scanJsonShape } from '../fsio';

/** One example as read from the data file; `line` is 1-based. */
export type RawExample = { line: number; text: string } | { line: number; prompt: string; completion: string };

/** A tokenized example: `labels[t]` is `ids[t]`, or -100 where no loss is taken. */
export interface TokenizedExample {
  ids: number[];
  labels: number[];
}

export interface DataFile {
  examples: RawExample[];
  /** sha256 of the file's bytes, to check that a resumed run sees the same data. */
  sha256: string;
}

export const IGNORE_INDEX = -100;
const DATA_EXTENSIONS = ['.txt', '.jsonl'];

const FORMAT_HINT = 'use .txt (one example per line) or .jsonl (objects with "text", or "prompt" and "completion")';

/** Reads and validates a data file; every problem is a CliError naming the file (and line). */
export async function readDataFile(file: string): Promise<DataFile> {
  const ext = path.extname(file).toLowerCase();
  if (!DATA_EXTENSIONS.includes(ext)) {
    throw new CliError(`--data ${file}: unsupported file extension ${JSON.stringify(ext || '(none)')}; ${FORMAT_HINT}`);
  }
  let buf: Buffer;
  try {
    buf = await readWholeFile('--data', file, READ_LIMITS.data);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') throw new CliError(`--data ${file}: file not found (check the path)`);
    // The reader's message names the file after "--data: ".
    const message = err.message.replace(`--data: ${file}`, `--data ${file}`);
    if (err.code === 'ERR_NOT_REGULAR_FILE') throw new CliError(`${message}; expected a .txt or .jsonl file`);
    throw new CliError(message);
  }
  const sha256 = crypto.createHash('sha256').update(buf).digest('hex');
  const text = buf.toString('utf8').replace(/^\uFEFF/, '');
  const lines = text.split(/\r?\n/);
  const examples: RawExample[] = [];
  if (ext === '.txt') {
    lines.forEach((l, i) => {
      if (l.trim() !== '') examples.push({ line: i + 1, text: l });
    });
  } else {
    lines.forEach((l, i) => {
      if (l.trim() === '') return;
      examples.push(parseJsonlLine(file, i + 1, l));
    });
  }
  if (!examples.length) {
    throw new CliError(`--data ${file}: no training examples (the file has no non-empty lines); ${FORMAT_HINT}`);
  }
  return { examples, sha256 };
}

function parseJsonlLine(file: string, line: number, l: string): RawExample {
  const where = `--data ${file} line ${line}`;
  let v: unknown;
  const shape = scanJsonShape(Buffer.from(l, 'utf8'));
  if (shape.depth > MAX_JSON_DEPTH) throw new CliError(`${where}: not valid JSON here (it nests deeper than ${MAX_JSON_DEPTH} levels); each line must be one JSON object such as {"text": "..."}`);
  if (shape.containers > MAX_JSON_CONTAINERS) throw new CliError(`${where}: not valid JSON here (more than ${MAX_JSON_CONTAINERS} objects and arrays); each line must be one JSON object such as {"text": "..."}`);
  try {
    v = JSON.parse(l);
  } catch (e) {
    throw new CliError(`${where}: not valid JSON (${(e as Error).message}); each line must be one JSON object such as {"text": "..."}`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) {
    const got = v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
    throw new CliError(`${where}: expected a JSON object with "text", or "prompt" and "completion", got ${got}`);
  }
  const o = v as Record<string, unknown>;
  const str = (k: string): string => {
    if (typeof o[k] !== 'string') throw new CliError(`${where}: "${k}" must be a string, got ${o[k] === null ? 'null' : Array.isArray(o[k]) ? 'an array' : typeof o[k]}`);
    return o[k] as string;
  };
  const hasText = 'text' in o;
  const hasPrompt = 'prompt' in o;
  const hasCompletion = 'completion' in o;
  if (hasText && (hasPrompt || hasCompletion)) {
    throw new CliError(`${where}: has both "text" and "prompt"/"completion"; give either "text" or "prompt" and "completion"`);
  }
  if (hasText) return { line, text: str('text') };
  if (hasPrompt && hasCompletion) return { line, prompt: str('prompt'), completion: str('completion') };
  if (hasPrompt || hasCompletion) {
    throw new CliError(`${where}: has "${hasPrompt ? 'prompt' : 'completion'}" without "${hasPrompt ? 'completion' : 'prompt'}"; give both, or "text"`);
  }
  const keys = Object.keys(o);
  throw new CliError(`${where}: expected "text", or "prompt" and "completion", got ${keys.length ? `keys ${keys.map((k) => JSON.stringify(k)).join(', ')}` : 'an empty object'}`);
}

/** The part of a tokenizer the data pipeline uses. */
export interface EncodingTokenizer {
  encode(text: string, options?: { add_special_tokens?: boolean }): { ids: number[] };
}

export interface TokenizeOptions {
  /** Keep at most this many tokens (the rest is cut off). */
  seqLen: number;
  /** The model's vocab_size: every id must be below it. */
  vocabSize: number;
  /** Appended (with a label) to every example when given. */
  eosId?: number | null;
}

export interface TokenizeResult {
  examples: TokenizedExample[];
  /** Source line of each kept example. */
  lines: number[];
  /** Examples cut to seqLen. */
  truncated: number;
  /** Examples dropped because nothing was left to predict (under 2 tokens, or no completion token within seqLen). */
  skipped: number;
  /** Tokens of the kept examples (after truncation). */
  tokens: number;
}

/**
 * Tokenizes examples: `text` with the tokenizer's own special tokens (e.g. a
 * BOS its post-processor adds); `prompt` likewise and `completion` without
 * special tokens, concatenated, with the prompt's labels set to -100. Then the
 * optional EOS is appended and the result is cut to seqLen.
 */
export function tokenizeExamples(raw: RawExample[], tokenizer: EncodingTokenizer, o: TokenizeOptions, file = 'data'): TokenizeResult {
  const out: TokenizeResult = { examples: [], lines: [], truncated: 0, skipped: 0, tokens: 0 };
  for (const ex of raw) {
    let ids: number[];
    let labels: number[];
    if ('text' in ex) {
      ids = [...tokenizer.encode(ex.text).ids];
      labels = ids.slice();
    } else {
      const p = [...tokenizer.encode(ex.prompt).ids];
      const c = [...tokenizer.encode(ex.completion, { add_special_tokens: false }).ids];
      ids = [...p, ...c];
      labels = [...p.map(() => IGNORE_INDEX), ...c];
    }
    if (o.eosId != null) {
      ids.push(o.eosId);
      labels.push(o.eosId);
    }
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= o.vocabSize) {
        throw new CliError(`--data ${file} line ${ex.line}: the tokenizer produced token id ${id}, but the model's vocab_size is ${o.vocabSize}; use the tokenizer.json that belongs to this model`);
      }
    }
    if (ids.length > o.seqLen) {
      ids.length = o.seqLen;
      labels.length = o.seqLen;
      out.truncated++;
    }
    // Position t predicts labels[t + 1]: at least one label after position 0.
    if (ids.length < 2 || !labels.slice(1).some((l) => l !== IGNORE_INDEX)) {
      out.skipped++;
      continue;
    }
    out.examples.push({ ids, labels });
    out.lines.push(ex.line);
    out.tokens += ids.length;
  }
  return out;
}

/** A small seeded PRNG (mulberry32) for the data order: 32-bit state, uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Mixes a seed with a stream number (epoch, or the split) into a 32-bit PRNG seed. */
function streamSeed(seed: number, stream: number): number {
  let h = 2166136261;
  for (const v of [seed >>> 0, Math.floor(seed / 4294967296) >>> 0, stream >>> 0, 0x9e3779b9]) {
    h = Math.imul(h ^ v, 16777619) >>> 0;
    h ^= h >>> 13;
  }
  return h >>> 0;
}

/** Fisher-Yates shuffle of `items` (a copy) with mulberry32. */
function shuffled<T>(items: readonly T[], seed: number): T[] {
  const a = items.slice();
  const rnd = mulberry32(seed);
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/** The order of the training examples in `epoch` (0-based): a function of seed and epoch only. */
export function epochOrder(n: number, seed: number, epoch: number): number[] {
  return shuffled(Array.from({ length: n }, (_, i) => i), streamSeed(seed, epoch + 1));
}

/**
 * Held-out split: with fraction > 0 and n >= 2, max(1, round(fraction * n))
 * examples (at most n - 1), chosen by a seeded shuffle; otherwise none.
 */
export function splitTrainEval(n: number, fraction: number, seed: number): { train: number[]; eval: number[] } {
  const all = Array.from({ length: n }, (_, i) => i);
  if (!(fraction > 0) || n < 2) return { train: all, eval: [] };
  const k = Math.min(n - 1, Math.max(1, Math.round(fraction * n)));
  const perm = shuffled(all, streamSeed(seed, 0));
  return { train: perm.slice(k).sort((a, b) => a - b), eval: perm.slice(0, k).sort((a, b) => a - b) };
}

export interface Batch {
  ids: number[][];
  labels: number[][];
  /** Real (non-padding) tokens. */
  tokens: number;
  /** Tokens that carry a loss (labels other than -100, after the first position). */
  targets: number;
}

/**
 * Pads the examples to the longest one, at the end (the model has no attention
 * mask; with causal attention real tokens never see padding that follows
 * them). Padding gets `padId` as input and -100 as label.
 */
export function makeBatch(examples: TokenizedExample[], padId: number): Batch {
  const T = Math.max(...examples.map((e) => e.ids.length));
  let tokens = 0;
  let targets = 0;
  const ids: number[][] = [];
  const labels: number[][] = [];
  for (const e of examples) {
    const pad = T - e.ids.length;
    ids.push([...e.ids, ...new Array<number>(pad).fill(padId)]);
    labels.push([...e.labels, ...new Array<number>(pad).fill(IGNORE_INDEX)]);
    tokens += e.ids.length;
    for (let t = 1; t < e.labels.length; t++) if (e.labels[t] !== IGNORE_INDEX) targets++;
  }
  return { ids, labels, tokens, targets };
}

/** Splits `order` into micro-batches of `batchSize` (the last may be smaller). */
export function microBatches(order: number[], batchSize: number): number[][] {
  const out: number[][] = [];
  for (let i = 0; i < order.length; i += batchSize) out.push(order.slice(i, i + batchSize));
  return out;
}
