// `lora-cuda demo`: LoRA end to end on a tiny Llama, with nothing downloaded.
//
// A small LlamaForCausalLM is pretrained (every parameter) on task A, copying a
// digit sequence after a separator. It is then frozen, LoRA (r 8, alpha 16) is
// injected into q_proj and v_proj, and only the adapters are trained on task B,
// adding 1 to each digit (9 -> 0), which the base model cannot do: it copies,
// so every answer digit is wrong. The two tasks differ by a marker token.
//
//   task A:  <copy> 3 1 4 1 5 9 = 3 1 4 1 5 9
//   task B:  <inc>  3 1 4 1 5 9 = 4 2 5 2 6 0
//
// Accuracy is measured on held-out sequences (never trained on), over the answer
// tokens, by greedy argmax with the true prefix (teacher forcing).
import * as fs from 'fs';
import * as path from 'path';
import { LlamaForCausalLM } from '../models/llama';
import { Adam } from '../optim';
import { injectLora, mergeLora, withAdaptersDisabled } from '../lora';
import { saveAdapter, saveMerged } from '../peft';
import { manualSeed } from '../random';
import { noGrad } from '../autograd';
import { Tensor } from '../tensor';
import { tensor } from '../creation';
import { CliError, CliIO, UsageError, samePath } from './io';
import { helpText, parseArgs, Specs } from './args';
import { CliDevice, resolveDevice } from './device';
import { Progress } from './progress';
import { LossSeries, svgChart, terminalChart } from './chart';
import { ensureWritableDir as ensureWritable, writeFileAtomic } from '../atomic';
import { COMMAND_TEXT } from './commands';

/** Digits 0-9, then the separator and the two task markers; ids 13-15 are unused. */
const DEMO_TOKENS = ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '=', '<copy>', '<inc>'];
const SEP = 10;
const MARK_A = 11;
const MARK_B = 12;
/** Digits per sequence; a sequence is marker, digits, separator, answer digits. */
export const DEMO_DIGITS = 6;
const DEMO_SEQ_LEN = 2 * DEMO_DIGITS + 2;
const ANSWER_START = DEMO_DIGITS + 2;
const HELD_OUT = 256;

/**
 * tokenizer.json for the demo's tokens (id 13 is <unk>): space-separated words, the markers and "="
 * matched whole, digits one per token. With it the base model in OUT/base-model works with
 * `lora-cuda generate` and `finetune` like any checkpoint.
 */
function demoTokenizerJson(): object {
  const vocab: Record<string, number> = Object.fromEntries([...DEMO_TOKENS, '<unk>'].map((t, i) => [t, i]));
  const added = (id: number, special: boolean) => ({
    id, content: [...DEMO_TOKENS, '<unk>'][id], single_word: false, lstrip: false, rstrip: false, normalized: false, special,
  });
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [added(SEP, false), added(MARK_A, false), added(MARK_B, false), added(13, true)],
    normalizer: null, pre_tokenizer: { type: 'WhitespaceSplit' }, post_processor: null, decoder: null,
    model: {
      type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, vocab, merges: [],
    },
  };
}

/** The demo model's config.json (a Llama in miniature). */
export const DEMO_CONFIG = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  vocab_size: 16,
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  max_position_embeddings: 64,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  hidden_act: 'silu',
  tie_word_embeddings: false,
  initializer_range: 0.02,
};

const DEMO_LORA = { targetModules: ['q_proj', 'v_proj'], r: 8, alpha: 16 };

export interface DemoOptions {
  seed: number;
  stepsA: number;
  stepsB: number;
  batchSize: number;
  lrA: number;
  lrB: number;
  device: CliDevice;
  /** Adapter directory. */
  out: string;
  /** SVG file (default <out>/loss.svg). */
  svg?: string;
  /** Terminal chart even when not a TTY. */
  chart: boolean;
}

export interface DemoSummary {
  before: { accuracy: number };
  after: { accuracy: number };
  /** Task A accuracy with the adapter disabled, after fine-tuning. */
  baseTaskAccuracy: number;
  trainableParams: number;
  totalParams: number;
  adapterBytes: number;
  /** Training tokens per second of the LoRA phase. */
  tokensPerSecond: number;
  mergeMaxDiff: number;
  device: CliDevice;
  seconds: number;
  adapterDir: string;
  baseModelDir: string;
  svg: string;
  seed: number;
  pretrain: { steps: number; seconds: number; tokensPerSecond: number; finalLoss: number; accuracy: number };
  finetune: { steps: number; seconds: number; finalLoss: number };
}

/** A small seeded generator (mulberry32) for the synthetic data. */
function rng(seed: number): () => number {
  let a = (seed >>> 0) ^ 0x6d2b79f5;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export type DemoTask = 'A' | 'B';
type Task = DemoTask;

/** A task's sequence for the given digits: marker, digits, separator, answer. */
export function demoSequence(task: DemoTask, digits: number[]): number[] {
  const answer = task === 'A' ? digits : digits.map((d) => (d + 1) % 10);
  return [task === 'A' ? MARK_A : MARK_B, ...digits, SEP, ...answer];
}

/** Shows a sequence as text, e.g. '<inc> 3 1 4 = 4 2 5'. */
function showSequence(ids: number[]): string {
  return ids.map((t) => DEMO_TOKENS[t] ?? `#${t}`).join(' ');
}

interface Batch {
  ids: number[][];
  /** The answer tokens; -100 elsewhere (the prompt is not trained on). */
  labels: number[][];
}

class TaskData {
  private readonly heldOut = new Set<string>();
  readonly testA: Batch;
  readonly testB: Batch;
  private readonly draw: () => number;

  constructor(seed: number) {
    const testDraw = rng(seed * 2 + 1);
    const digitsSet: number[][] = [];
    while (digitsSet.length < HELD_OUT) {
      const d = Array.from({ length: DEMO_DIGITS }, () => Math.floor(testDraw() * 10));
      if (this.heldOut.has(d.join(''))) continue;
      this.heldOut.add(d.join(''));
      digitsSet.push(d);
    }
    this.testA = TaskData.batchOf(digitsSet.map((d) => demoSequence('A', d)));
    this.testB = TaskData.batchOf(digitsSet.map((d) => demoSequence('B', d)));
    this.draw = rng(seed * 2 + 2);
  }

  private static batchOf(ids: number[][]): Batch {
    return { ids, labels: ids.map((row) => row.map((t, i) => (i >= ANSWER_START ? t : -100))) };
  }

  /** A training batch of `n` fresh sequences, none of them held out. */
  batch(task: Task, n: number): Batch {
    const rows: number[][] = [];
    while (rows.length < n) {
      const d = Array.from({ length: DEMO_DIGITS }, () => Math.floor(this.draw() * 10));
      if (!this.heldOut.has(d.join(''))) rows.push(demoSequence(task, d));
    }
    return TaskData.batchOf(rows);
  }
}

function idsTensor(rows: number[][], device: CliDevice): Tensor {
  return tensor(rows.flat(), { shape: [rows.length, rows[0].length], dtype: 'int32', device });
}

/** Logits of a batch as a flat array [B * T * vocab]. */
function logitsOf(model: LlamaForCausalLM, b: Batch, device: CliDevice): Float32Array {
  return noGrad(() => {
    const ids = idsTensor(b.ids, device);
    const logits = model.forward(ids);
    const out = logits.toArray() as Float32Array;
    logits.dispose();
    ids.dispose();
    return out;
  });
}

/** Greedy accuracy over the answer tokens: argmax at t - 1 must be token t. */
function accuracyOf(logits: Float32Array, b: Batch, vocab: number): number {
  let ok = 0;
  let n = 0;
  const T = b.ids[0].length;
  b.ids.forEach((row, i) => {
    for (let t = ANSWER_START; t < T; t++) {
      const o = (i * T + t - 1) * vocab;
      let best = 0;
      for (let v = 1; v < vocab; v++) if (logits[o + v] > logits[o + best]) best = v;
      if (best === row[t]) ok++;
      n++;
    }
  });
  return ok / n;
}

interface PhaseResult {
  losses: number[];
  seconds: number;
  tokensPerSecond: number;
}

/** Adam with linear warm-up and cosine decay; returns the loss per step. */
function train(model: LlamaForCausalLM, params: Tensor[], opts: {
  steps: number; lr: number; warmup: number; batch: () => Batch; device: CliDevice; progress: Progress;
}): PhaseResult {
  const opt = new Adam(params, { lr: opts.lr });
  const losses: number[] = [];
  let tokens = 0;
  const t0 = process.hrtime.bigint();
  for (let step = 0; step < opts.steps; step++) {
    opt.paramGroups[0].lr = opts.lr * Math.min(1, (step + 1) / opts.warmup) * 0.5 * (1 + Math.cos((Math.PI * step) / opts.steps));
    const b = opts.batch();
    const ids = idsTensor(b.ids, opts.device);
    const loss = model.loss(ids, b.labels);
    opt.zeroGrad();
    loss.backward();
    opt.step();
    const value = loss.item();
    loss.dispose();
    ids.dispose();
    if (!Number.isFinite(value)) throw new Error(`the loss became ${value} at step ${step + 1}`);
    losses.push(value);
    tokens += b.ids.length * b.ids[0].length;
    opts.progress.update(step + 1, `loss ${value.toFixed(4)}`, tokens);
  }
  opts.progress.done();
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  for (const s of opt.state.values()) {
    s.expAvg.dispose();
    s.expAvgSq.dispose();
  }
  return { losses, seconds, tokensPerSecond: tokens / seconds };
}

const fmtInt = (n: number) => n.toLocaleString('en-US');
const fmtAcc = (a: number) => a.toFixed(3);

/** Creates `dir` (and parents) and checks it is writable, before any training. */
function ensureWritableDir(dir: string, what: string): void {
  try {
    ensureWritable(dir);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new CliError(`cannot write ${what} to ${dir} (${err.code ?? err.message}); choose another ${what === 'the SVG chart' ? '--svg' : '--out'}`);
  }
}

async function writing<T>(what: string, fn: () => Promise<T> | T): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.syscall || err.code?.startsWith('E')) throw new CliError(`cannot write ${what}: ${err.message}`);
    throw e;
  }
}

/** Runs the demo, printing its report through `io`; returns the summary. */
async function runDemo(o: DemoOptions, io: CliIO): Promise<DemoSummary> {
  const t0 = process.hrtime.bigint();
  const out = (s = '') => io.stdout(s + '\n');
  const adapterDir = path.resolve(o.out);
  const baseDir = path.join(adapterDir, 'base-model');
  const svgPath = path.resolve(o.svg ?? path.join(adapterDir, 'loss.svg'));
  ensureWritableDir(adapterDir, 'the adapter');
  ensureWritableDir(path.dirname(svgPath), 'the SVG chart');
  // The chart is written last: at the place of another output it would replace it (by identity, so
  // through symbolic links too).
  const outputs = [path.join(adapterDir, 'adapter_model.safetensors'), path.join(adapterDir, 'adapter_config.json'), baseDir,
    ...['model.safetensors', 'config.json', 'tokenizer.json'].map((f) => path.join(baseDir, f))];
  const clash = outputs.find((p) => samePath(svgPath, p));
  if (clash !== undefined) throw new CliError(`--svg ${o.svg} is ${clash}, which the demo writes too; choose another file for the chart`);

  manualSeed(o.seed);
  const data = new TaskData(o.seed);
  const model = new LlamaForCausalLM(DEMO_CONFIG, { device: o.device });
  const vocab = DEMO_CONFIG.vocab_size;
  const T = DEMO_SEQ_LEN;
  const c = DEMO_CONFIG;
  const exampleDigits = [3, 1, 4, 1, 5, 9];

  out(`lora-cuda demo: LoRA fine-tuning of a tiny Llama, from scratch (device ${o.device}, seed ${o.seed})`);
  out();
  out(`model    LlamaForCausalLM: vocab ${c.vocab_size}, hidden ${c.hidden_size}, ${c.num_hidden_layers} layers, ` +
    `${c.num_attention_heads} heads (${c.num_key_value_heads} kv heads), ${fmtInt(model.numParameters())} parameters`);
  out(`task A   copy the digits:       ${showSequence(demoSequence('A', exampleDigits))}`);
  out(`task B   add 1 to each digit:   ${showSequence(demoSequence('B', exampleDigits))}`);
  out(`         (${HELD_OUT} held-out sequences per task; accuracy = greedy argmax on the ${DEMO_DIGITS} answer tokens)`);
  out();

  // Phase A: full pretraining on task A.
  out(`phase A  full pretraining on task A: ${o.stepsA} steps x ${o.batchSize} sequences of ${T} tokens`);
  const phaseA = train(model, [...model.parameters()], {
    steps: o.stepsA, lr: o.lrA, warmup: 20, device: o.device, batch: () => data.batch('A', o.batchSize),
    progress: new Progress(io, { label: 'phase A', total: o.stepsA }),
  });
  const accA = accuracyOf(logitsOf(model, data.testA, o.device), data.testA, vocab);
  const before = accuracyOf(logitsOf(model, data.testB, o.device), data.testB, vocab);
  out(`         ${phaseA.seconds.toFixed(1)} s, ${fmtInt(Math.round(phaseA.tokensPerSecond))} tokens/s, ` +
    `final loss ${phaseA.losses[phaseA.losses.length - 1].toFixed(4)}; task A accuracy ${fmtAcc(accA)}, task B accuracy ${fmtAcc(before)}`);
  await writing(`the base model to ${baseDir}`, async () => {
    await saveMerged(model, baseDir);
    await writeFileAtomic(path.join(baseDir, 'tokenizer.json'), `${JSON.stringify(demoTokenizerJson())}\n`);
  });

  // Phase B: freeze the base, inject LoRA, train the adapters on task B.
  model.requiresGrad_(false);
  injectLora(model, DEMO_LORA);
  const trainable = model.numParameters(true);
  const total = model.numParameters();
  out();
  out(`phase B  LoRA on ${DEMO_LORA.targetModules.join(', ')} (r ${DEMO_LORA.r}, alpha ${DEMO_LORA.alpha}), base frozen: ` +
    `${o.stepsB} steps x ${o.batchSize} sequences`);
  const phaseB = train(model, [...model.parameters()].filter((p) => p.requiresGrad), {
    steps: o.stepsB, lr: o.lrB, warmup: 10, device: o.device, batch: () => data.batch('B', o.batchSize),
    progress: new Progress(io, { label: 'phase B', total: o.stepsB }),
  });
  out(`         ${phaseB.seconds.toFixed(1)} s, ${fmtInt(Math.round(phaseB.tokensPerSecond))} tokens/s, ` +
    `final loss ${phaseB.losses[phaseB.losses.length - 1].toFixed(4)}`);

  const unmerged = logitsOf(model, data.testB, o.device);
  const after = accuracyOf(unmerged, data.testB, vocab);
  const baseTaskAccuracy = withAdaptersDisabled(model, () => accuracyOf(logitsOf(model, data.testA, o.device), data.testA, vocab));
  await writing(`the adapter to ${adapterDir}`, () => saveAdapter(model, adapterDir));
  const adapterBytes = fs.statSync(path.join(adapterDir, 'adapter_model.safetensors')).size;

  // Merge: fold scale * B A into the weights; logits must not change.
  mergeLora(model);
  const merged = logitsOf(model, data.testB, o.device);
  let mergeMaxDiff = 0;
  for (let i = 0; i < merged.length; i++) mergeMaxDiff = Math.max(mergeMaxDiff, Math.abs(merged[i] - unmerged[i]));

  const series: LossSeries[] = [
    { label: 'phase A: full pretraining (task A)', losses: phaseA.losses },
    { label: 'phase B: LoRA fine-tuning (task B)', losses: phaseB.losses },
  ];
  await writing(`the SVG chart to ${svgPath}`, () => writeFileAtomic(svgPath, svgChart(series, {
    title: `lora-cuda demo: training loss (LoRA r ${DEMO_LORA.r} on ${DEMO_LORA.targetModules.join(', ')})`,
  })));

  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const rel = (p: string) => {
    const r = path.relative(process.cwd(), p);
    return r && !r.startsWith('..') && !path.isAbsolute(r) ? r : p;
  };
  out();
  out(`results on held-out sequences`);
  const rows: [string, string][] = [
    ['task B accuracy before fine-tuning', fmtAcc(before)],
    ['task B accuracy after fine-tuning', fmtAcc(after)],
    ['task A accuracy, adapter disabled', `${fmtAcc(baseTaskAccuracy)}  (the frozen base is untouched)`],
    ['trainable / total parameters', `${fmtInt(trainable)} / ${fmtInt(total)} (${((100 * trainable) / total).toFixed(2)}%)`],
    ['adapter size', `${fmtInt(adapterBytes)} bytes (adapter_model.safetensors)`],
    ['training speed (LoRA phase)', `${fmtInt(Math.round(phaseB.tokensPerSecond))} tokens/s`],
    ['merged vs unmerged logits', `max |difference| ${mergeMaxDiff.toExponential(2)}`],
    ['total time', `${seconds.toFixed(1)} s`],
  ];
  const w = Math.max(...rows.map((r) => r[0].length));
  for (const [k, v] of rows) out(`  ${k.padEnd(w)}  ${v}`);
  if (io.isTTY || o.chart) {
    out();
    out(terminalChart(series, { width: Math.max(20, Math.min(72, io.columns - 12)), height: 10, color: io.isTTY }).replace(/\n$/, ''));
  }
  out();
  out(`wrote ${rel(adapterDir)}/ (adapter_config.json, adapter_model.safetensors: PEFT format)`);
  out(`      ${rel(baseDir)}/ (the pretrained base model as a Hugging Face checkpoint)`);
  out(`      ${rel(svgPath)} (loss curves)`);
  out(`next: lora-cuda generate --model ${rel(baseDir)} --adapter ${rel(adapterDir)} --prompt '<inc> 3 1 4 1 5 9 =' --max-new-tokens 6`);
  out(`      lora-cuda merge --model ${rel(baseDir)} --adapter ${rel(adapterDir)} --out ${rel(adapterDir)}-merged`);

  return {
    before: { accuracy: before },
    after: { accuracy: after },
    baseTaskAccuracy,
    trainableParams: trainable,
    totalParams: total,
    adapterBytes,
    tokensPerSecond: phaseB.tokensPerSecond,
    mergeMaxDiff,
    device: o.device,
    seconds,
    adapterDir,
    baseModelDir: baseDir,
    svg: svgPath,
    seed: o.seed,
    pretrain: {
      steps: o.stepsA, seconds: phaseA.seconds, tokensPerSecond: phaseA.tokensPerSecond,
      finalLoss: phaseA.losses[phaseA.losses.length - 1], accuracy: accA,
    },
    finetune: { steps: o.stepsB, seconds: phaseB.seconds, finalLoss: phaseB.losses[phaseB.losses.length - 1] },
  };
}

const SPECS = {
  device: { type: 'string', metavar: 'cpu|cuda', help: 'where to train (default: cuda when available, else cpu)' },
  seed: { type: 'number', integer: true, min: 0, default: 0, metavar: 'N', help: 'random seed (weights and data)' },
  'steps-a': { type: 'number', integer: true, min: 1, default: 300, metavar: 'N', help: 'pretraining steps on task A' },
  'steps-b': { type: 'number', integer: true, min: 1, default: 500, metavar: 'N', help: 'LoRA fine-tuning steps on task B' },
  'batch-size': { type: 'number', integer: true, min: 1, max: 4096, default: 32, metavar: 'N', help: 'sequences per step' },
  out: { type: 'string', default: './lora-demo-adapter', metavar: 'DIR', help: 'where to write the adapter (PEFT format), the base model and the chart' },
  svg: { type: 'string', metavar: 'FILE', help: 'loss chart as SVG (default <out>/loss.svg)' },
  chart: { type: 'boolean', help: 'draw the loss chart in the terminal even when output is not a terminal' },
  json: { type: 'boolean', help: 'print a JSON summary as the last line of stdout' },
} satisfies Specs;

export async function demoCommand(argv: string[], io: CliIO): Promise<number> {
  const a = parseArgs('demo', SPECS, argv);
  if (a.help) {
    io.stdout(helpText('demo', `${COMMAND_TEXT.demo.summary}\n\n` +
      'Pretrains every parameter of a small LlamaForCausalLM on task A (copy a digit sequence), freezes it,\n' +
      'injects LoRA (r 8, alpha 16) into q_proj and v_proj and trains only the adapters on task B (add 1 to\n' +
      'each digit). Prints accuracies before and after, parameter counts, adapter size, speed and the\n' +
      'merge check; writes the adapter, the base model and a loss chart.', SPECS, COMMAND_TEXT.demo.usage));
    return 0;
  }
  if (a._.length) throw new UsageError(`unexpected argument '${a._[0]}'`);
  const device = resolveDevice(a.device);
  const summary = await runDemo({
    seed: a.seed!, stepsA: a.stepsA!, stepsB: a.stepsB!, batchSize: a.batchSize!, lrA: 3e-3, lrB: 1e-2,
    device, out: a.out!, svg: a.svg, chart: a.chart,
  }, io);
  if (a.json) io.stdout(JSON.stringify(summary) + '\n');
  return 0;
}
