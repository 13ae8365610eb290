// Training data for `lora-cuda finetune`: reading .txt / .jsonl files into rows
// (lib/data.ts turns them into examples), the train/eval split, the seeded
// shuffle, and the micro-batches: padded (right padding with an attention mask)
// or packed (documents end to end in one row, positions restarting per document).
//
// Formats:
//   .txt    one training example per non-empty line (lines are used as they
//           are, without the line break; blank lines are skipped), as {"text"} rows.
//   .jsonl  one JSON object per non-empty line, in the shapes of lib/data.ts:
//           {"messages": [...]} (the chat template; loss on assistant turns),
//           {"prompt", "completion"} and Alpaca {"instruction", "input", "output"}
//           (loss on the completion / output), {"text"} (loss on every token).
//           Other keys are ignored.
import * as crypto from 'crypto';
import * as path from 'path';
import { CliError } from './io';
import { MAX_JSON_CONTAINERS, MAX_JSON_DEPTH, READ_LIMITS, readWholeFile, scanJsonShape } from '../fsio';
import { IGNORE_INDEX, parseRow } from '../data';
import type { BatchOptions } from '../models/llama';

export { IGNORE_INDEX };

/** A tokenized example: `labels[t]` is `ids[t]`, or -100 where no loss is taken. */
export interface TokenizedExample {
  ids: number[];
  labels: number[];
}

export interface DataFile {
  /** The rows as parsed objects ({"text"} for each .txt line). */
  rows: Record<string, unknown>[];
  /** Source line of each row (1-based). */
  lines: number[];
  /** Every row is plain text ({"text"}), so packing is the default. */
  textOnly: boolean;
  /** sha256 of the file's bytes, to check that a resumed run sees the same data. */
  sha256: string;
}

const DATA_EXTENSIONS = ['.txt', '.jsonl'];

const FORMAT_HINT = 'use .txt (one example per line) or .jsonl (objects with "messages", "prompt" and "completion", "instruction" and "output", or "text")';

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
  const rows: Record<string, unknown>[] = [];
  const lines: number[] = [];
  let textOnly = true;
  text.split(/\r?\n/).forEach((l, i) => {
    if (l.trim() === '') return;
    if (ext === '.txt') {
      rows.push({ text: l });
    } else {
      const v = parseJsonlLine(file, i + 1, l);
      rows.push(v.row);
      if (v.kind !== 'text') textOnly = false;
    }
    lines.push(i + 1);
  });
  if (!rows.length) {
    throw new CliError(`--data ${file}: no training examples (the file has no non-empty lines); ${FORMAT_HINT}`);
  }
  return { rows, lines, textOnly, sha256 };
}

function parseJsonlLine(file: string, line: number, l: string): { row: Record<string, unknown>; kind: string } {
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
  try {
    return { row: v as Record<string, unknown>, kind: parseRow(v, where).kind };
  } catch (e) {
    throw new CliError((e as Error).message);
  }
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
  /** How the model reads the rows: an attention mask (padded rows) or document boundaries (a packed row). */
  layout: BatchOptions;
  /** Real (non-padding) tokens. */
  tokens: number;
  /** Tokens that carry a loss (labels other than -100, after each document's first position). */
  targets: number;
}

function targetsOf(labels: number[]): number {
  let n = 0;
  for (let t = 1; t < labels.length; t++) if (labels[t] !== IGNORE_INDEX) n++;
  return n;
}

/**
 * Pads the examples to the longest one, at the end (right padding, as for
 * training in transformers), with an attention mask: padding gets `padId` as
 * input, 0 in the mask and -100 as label, so it neither attends nor is attended.
 */
export function makeBatch(examples: TokenizedExample[], padId: number): Batch {
  const T = Math.max(...examples.map((e) => e.ids.length));
  let tokens = 0;
  let targets = 0;
  const ids: number[][] = [];
  const labels: number[][] = [];
  const mask: number[][] = [];
  for (const e of examples) {
    const pad = T - e.ids.length;
    ids.push([...e.ids, ...new Array<number>(pad).fill(padId)]);
    labels.push([...e.labels, ...new Array<number>(pad).fill(IGNORE_INDEX)]);
    mask.push([...new Array<number>(e.ids.length).fill(1), ...new Array<number>(pad).fill(0)]);
    tokens += e.ids.length;
    targets += targetsOf(e.labels);
  }
  return { ids, labels, layout: { attentionMask: mask }, tokens, targets };
}

/**
 * Packs the examples end to end into one row with their boundaries (cuSeqLens):
 * each document's positions restart at 0 and no token attends across a boundary,
 * so the row has no padding. Each document's first label is -100, as
 * transformers' DataCollatorWithFlattening sets it (nothing before it predicts it).
 */
export function makePackedBatch(examples: TokenizedExample[]): Batch {
  const ids: number[] = [];
  const labels: number[] = [];
  const cu = [0];
  let targets = 0;
  for (const e of examples) {
    ids.push(...e.ids);
    labels.push(IGNORE_INDEX, ...e.labels.slice(1));
    cu.push(ids.length);
    targets += targetsOf(e.labels);
  }
  return { ids: [ids], labels: [labels], layout: { cuSeqLens: [cu] }, tokens: ids.length, targets };
}

/**
 * Groups examples (by index) into bins of at most `budget` tokens with best-fit
 * decreasing (TRL's packing strategy): longest first, each into the fullest bin
 * it still fits, else a new one. Deterministic: ties keep the order of `order`.
 * The cost of a bin is `cost(rows, longest)`: the sum of lengths for packed rows,
 * rows x longest for padded ones.
 */
export function binByTokens(order: number[], lengths: number[], budget: number, padded: boolean): number[][] {
  const sorted = order.slice().sort((a, b) => lengths[b] - lengths[a]);
  type Bin = { items: number[]; used: number; longest: number };
  const bins: Bin[] = [];
  // Bins that may still take a row: the rows come longest first, so a bin that cannot take the
  // shortest row left is closed for good (keeps this near linear on large data).
  let open: Bin[] = [];
  sorted.forEach((i, k) => {
    const len = lengths[i];
    const cost = (b: Bin, l: number) => (padded ? (b.items.length + 1) * Math.max(b.longest, l) : b.used + l);
    let best: Bin | null = null;
    for (const b of open) {
      if (cost(b, len) <= budget && (best === null || cost(b, len) > cost(best, len))) best = b;
    }
    if (best === null) {
      best = { items: [], used: 0, longest: 0 };
      bins.push(best);
      open.push(best);
    }
    best.items.push(i);
    best.used += len;
    best.longest = Math.max(best.longest, len);
    const shortest = lengths[sorted[sorted.length - 1]];
    if (k + 1 < sorted.length && cost(best, shortest) > budget) open = open.filter((b) => b !== best);
  });
  // Each bin in data order.
  const pos = new Map(order.map((v, k) => [v, k]));
  return bins.map((b) => b.items.sort((x, y) => pos.get(x)! - pos.get(y)!));
}

/** Splits `order` into micro-batches of `batchSize` (the last may be smaller). */
export function microBatches(order: number[], batchSize: number): number[][] {
  const out: number[][] = [];
  for (let i = 0; i < order.length; i += batchSize) out.push(order.slice(i, i + batchSize));
  return out;
}
