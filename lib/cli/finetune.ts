// `lora-cuda finetune`: LoRA fine-tuning of a Hugging Face Llama-family
// checkpoint on a .txt or .jsonl file, writing a PEFT adapter directory.
//
// The command parses and checks its options, loads the model, tokenizer and data,
// and runs a Trainer (lib/trainer.ts), printing from its callbacks and turning its
// errors into one-line messages. The run is deterministic for a seed: the data
// order comes from a seeded JS PRNG (a function of seed and epoch), LoRA's A init
// and dropout from the global Philox generator. A checkpoint (OUT/checkpoint: the
// adapter, the optimiser state, the step and the generator state) is written by
// --save-every, at the end, at --max-steps and on Ctrl-C; --resume continues from
// it and ends with the same adapter, bit for bit, as an uninterrupted run.
import * as path from 'path';
import { CliError, CliIO, UsageError, isWithin, oneLine, samePath, statPath, tokenContent } from './io';
import { READ_LIMITS, readJsonFile } from '../fsio';
import { describe } from '../errors';
import { OptionSpec, Specs, helpText, parseArgs } from './args';
import { COMMAND_TEXT } from './commands';
import {
  Batch, TokenizedExample, binByTokens, epochOrder, makeBatch, makePackedBatch, microBatches, readDataFile, splitTrainEval,
} from './data';
import { buildExamples } from '../data';
import { LlamaForCausalLM } from '../models/llama';
import { loadTokenizer, Tokenizer } from '../tokenizer';
import { injectLora } from '../lora';
import { Linear } from '../nn/layers';
import { manualSeed } from '../random';
import { saveAdapter } from '../peft';
import { backendInfo } from '../backend';
import { ensureWritableDir } from '../atomic';
import { BatchSource, CheckpointInfo, Trainer, TrainerError, readCheckpoint } from '../trainer';
import type { DeviceSpec } from '../device';
import { CLI_DTYPES, CliDtype, DTYPE_HELP, resolveDtype } from './device';
import { DistributedSampler, ProcessGroup, initDistributed, launchEnv } from '../distributed';

const COMMAND = 'finetune';
const SUMMARY = [
  COMMAND_TEXT.finetune.summary,
  'Families: Llama, Mistral, Qwen2, SmolLM, TinyLlama.',
  'Writes a PEFT adapter directory (adapter_config.json, adapter_model.safetensors) to --out, and a resume',
  'checkpoint to OUT/checkpoint (at --save-every steps, at the end, at --max-steps and on Ctrl-C).',
  '',
  'Data: .txt = one example per non-empty line; .jsonl = one object per line: {"messages": [{"role", "content"}, ...]}',
  '(rendered with the checkpoint\'s chat template, loss on the assistant turns), {"prompt", "completion"} or',
  '{"instruction", "input", "output"} (Alpaca; loss on the completion / output only), or {"text"} (loss on every token).',
  'Examples are cut to --max-length. With --pack (the default for text-only data) a micro-batch is one row of',
  'documents end to end, up to --batch-tokens tokens, positions restarting per document and no attention across',
  'them; otherwise rows are padded at the end with an attention mask, --batch-size rows per micro-batch (or as many',
  'as fit --batch-tokens, rows of similar length together). AdamW; the learning rate warms up over',
  '--warmup-steps and then follows --lr-schedule; the gradients are clipped to --max-grad-norm.',
  '',
  'Several processes: run the same command under mpirun -np N (or lora-cuda launch --nproc N -- finetune ...).',
  '--batch-size is then the global batch, split across the ranks; each rank trains on its shard of the',
  'data, the gradients are averaged over the ranks every step, and only rank 0 prints and writes.',
].join('\n');

const FINETUNE_SPECS = {
  model: { type: 'string', metavar: 'DIR', help: 'Hugging Face checkpoint: config.json, model.safetensors (or shards), tokenizer.json (required)' },
  data: { type: 'string', metavar: 'FILE', help: 'training data, .txt or .jsonl (required)' },
  out: { type: 'string', metavar: 'DIR', default: './lora-adapter', help: 'output adapter directory' },
  r: { type: 'number', integer: true, min: 1, default: 8, metavar: 'N', help: 'LoRA rank' },
  alpha: { type: 'number', default: 16, metavar: 'X', help: 'LoRA alpha (scale = alpha / r)' },
  dropout: { type: 'number', min: 0, default: 0.05, metavar: 'P', help: 'dropout on the adapters\' input, in [0, 1)' },
  target: { type: 'string', default: 'q_proj,v_proj', metavar: 'NAMES', help: 'comma-separated layer names to adapt, or all-linear (every Linear except lm_head)' },
  lr: { type: 'number', default: 2e-4, metavar: 'X', help: 'peak learning rate' },
  'lr-schedule': { type: 'string', default: 'constant', metavar: 'NAME', help: 'after the warm-up: constant, linear or cosine (both decay to 0 at the last step of --epochs; --max-steps only pauses the run)' },
  'warmup-steps': { type: 'number', integer: true, min: 0, default: 0, metavar: 'N', help: 'linear warm-up of the learning rate from 0 over the first N steps' },
  'max-grad-norm': { type: 'number', min: 0, default: 1, metavar: 'X', help: 'clip the gradients\' joint L2 norm to X before each step, 0 = off' },
  'weight-decay': { type: 'number', min: 0, default: 0, metavar: 'X', help: 'AdamW decoupled weight decay' },
  epochs: { type: 'number', integer: true, min: 1, default: 1, metavar: 'N', help: 'passes over the training examples' },
  'max-steps': { type: 'number', integer: true, min: 0, default: 0, metavar: 'N', help: 'stop (with a checkpoint) once N optimizer steps are done in all, 0 = no limit' },
  'batch-size': { type: 'number', integer: true, min: 1, default: 4, metavar: 'N', help: 'rows per padded micro-batch (packed: the default --batch-tokens is N x --max-length)' },
  'grad-accum': { type: 'number', integer: true, min: 1, default: 1, metavar: 'N', help: 'micro-batches per optimizer step (gradients averaged)' },
  'max-length': { type: 'number', integer: true, min: 2, metavar: 'N', help: 'tokens per example at most (longer ones are cut, keeping the start); default 256' },
  'seq-len': { type: 'number', integer: true, min: 2, default: 256, metavar: 'N', help: 'the same as --max-length (its older name)' },
  pack: { type: 'boolean', help: 'pack documents end to end into rows without padding (default: on when every row is text, off otherwise; --no-pack to pad)' },
  'batch-tokens': { type: 'number', integer: true, min: 0, default: 0, metavar: 'N', help: 'tokens per micro-batch at most (padding included when padded), 0 = --batch-size rows (packed: --batch-size x --max-length tokens)' },
  'add-eos': { type: 'boolean', help: 'append the EOS token (tokenizer_config.json eos_token) to every example' },
  seed: { type: 'number', integer: true, min: 0, default: 0, metavar: 'N', help: 'seed of the data order, the split, LoRA init and dropout' },
  device: { type: 'string', default: 'cpu', metavar: 'cpu|cuda', help: 'where to train' },
  dtype: { type: 'string', metavar: 'auto|float32|bfloat16|float16', help: `${DTYPE_HELP}; the adapters stay float32` },
  'eval-every': { type: 'number', integer: true, min: 0, default: 0, metavar: 'N', help: 'held-out loss every N steps and at the end, 0 = off (no split)' },
  'eval-fraction': { type: 'number', min: 0, max: 0.9, default: 0.1, metavar: 'F', help: 'share of the examples held out when --eval-every is on (at least 1 when there are 2 or more)' },
  'save-every': { type: 'number', integer: true, min: 0, default: 0, metavar: 'N', help: 'write the adapter and a resume checkpoint every N steps, 0 = only at the end' },
  'log-every': { type: 'number', integer: true, min: 1, default: 1, metavar: 'N', help: 'print a progress line every N steps' },
  resume: { type: 'boolean', help: 'continue from OUT/checkpoint (options not given are taken from it)' },
  'gradient-checkpointing': { type: 'boolean', help: 'recompute each decoder layer in backward instead of keeping its activations: the same gradients, less memory, about a third more compute' },
} satisfies Specs;

/** The same options without defaults, so that the parser tells which were given. */
const PARSE_SPECS: Specs = Object.fromEntries(Object.entries(FINETUNE_SPECS).map(([k, s]) => {
  const { default: _d, ...rest } = s as typeof s & { default?: unknown };
  return [k, rest];
})) as Specs;

function finetuneHelp(): string {
  return helpText(COMMAND, SUMMARY, FINETUNE_SPECS, COMMAND_TEXT.finetune.usage);
}

/** Test hooks: called after every optimizer step (inside the command's error handling). */
export interface FinetuneHooks {
  onStep?(info: { step: number; totalSteps: number; epoch: number; loss: number }): void | Promise<void>;
}

/** Resolved options (camelCase). */
interface Options {
  model: string;
  data: string;
  out: string;
  r: number;
  alpha: number;
  dropout: number;
  target: string;
  lr: number;
  lrSchedule: 'constant' | 'linear' | 'cosine';
  warmupSteps: number;
  maxGradNorm: number;
  weightDecay: number;
  epochs: number;
  maxSteps: number;
  batchSize: number;
  gradAccum: number;
  seqLen: number;
  /** Resolved once the data is read: undefined = the default for the data. */
  pack: boolean | undefined;
  batchTokens: number;
  addEos: boolean;
  seed: number;
  device: string;
  /** undefined until resolved: auto on cuda, float32 on cpu. */
  dtype: CliDtype | undefined;
  evalEvery: number;
  evalFraction: number;
  saveEvery: number;
  logEvery: number;
  resume: boolean;
  gradientCheckpointing: boolean;
}

/** Options that define the run: on --resume they come from the checkpoint and may not be changed. */
const FIXED_ON_RESUME = ['r', 'alpha', 'dropout', 'target', 'batchSize', 'gradAccum', 'seqLen', 'addEos', 'seed', 'evalFraction', 'pack', 'batchTokens'] as const;
/** Options taken from the checkpoint on --resume unless given again. */
const CARRIED_ON_RESUME = ['model', 'data', 'lr', 'lrSchedule', 'warmupSteps', 'maxGradNorm', 'weightDecay', 'epochs', 'device', 'dtype', 'evalEvery', 'saveEvery', 'logEvery'] as const;

const SCHEDULES = ['constant', 'linear', 'cosine'] as const;

function fmtLr(v: number): string {
  return v.toExponential(2);
}

const CHECKPOINT = 'checkpoint';
/** The largest finite float32: the adapters are trained in float32. */
const FLOAT32_MAX = 3.4028234663852886e38;

/** What the command stores with each checkpoint (Trainer metadata), to resume with the same options and data. */
interface RunMetadata {
  /** tokens: of the kept examples (absent in checkpoints from before it was recorded). */
  data: { sha256: string; examples: number; tokens?: number };
  args: Partial<Options>;
}

function flagOf(key: string): string {
  return `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

function targetList(t: string): string[] {
  return t.split(',').map((s) => s.trim()).filter(Boolean);
}

function resolveOptions(a: Record<string, unknown>, saved: Partial<Options> | undefined): Options {
  const o: Record<string, unknown> = {};
  for (const [flag, spec] of Object.entries(FINETUNE_SPECS)) {
    const key = flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
    const given = spec.type === 'boolean' ? a[key] === true || argGiven(a, key) : a[key] !== undefined;
    if (saved && (FIXED_ON_RESUME as readonly string[]).includes(key) && key in saved) {
      const was = saved[key as keyof Options];
      const now = a[key];
      const same = key === 'target'
        ? targetList(String(now ?? '')).sort().join() === targetList(String(was)).sort().join()
        : now === was;
      if (given && now !== undefined && !same) {
        throw new UsageError(`--resume: ${flagOf(key)} was ${JSON.stringify(was)} in the checkpoint, got ${JSON.stringify(now)}; resuming needs the same value (leave it out to use the checkpoint's)`);
      }
      o[key] = was;
    } else if (saved && !given && (CARRIED_ON_RESUME as readonly string[]).includes(key) && saved[key as keyof Options] !== undefined) {
      o[key] = saved[key as keyof Options];
    } else {
      o[key] = a[key] ?? ('default' in spec ? spec.default : spec.type === 'boolean' ? false : undefined);
    }
  }
  const opts = o as unknown as Options;
  opts.resume = a.resume === true;
  // Packing not given: the checkpoint's (runs from before packing padded), else the data's default.
  if (!(a.pack === true || argGiven(a, 'pack')) && !(saved && typeof saved.pack === 'boolean')) opts.pack = saved ? false : undefined;
  if (opts.batchTokens > 0 && opts.batchTokens < opts.seqLen) {
    throw new UsageError(`--batch-tokens ${opts.batchTokens} is below --max-length ${opts.seqLen}: a row of --max-length tokens would not fit; give at least ${opts.seqLen}, or 0`);
  }
  if (!(opts.lr > 0)) throw new UsageError(`--lr must be > 0, got ${opts.lr}`);
  if (!(SCHEDULES as readonly string[]).includes(opts.lrSchedule)) {
    throw new UsageError(`--lr-schedule must be ${SCHEDULES.join(', ')}, got ${JSON.stringify(opts.lrSchedule)}`);
  }
  if (!(opts.alpha > 0)) throw new UsageError(`--alpha must be > 0, got ${opts.alpha}`);
  if (opts.alpha / opts.r > FLOAT32_MAX) {
    throw new UsageError(`--alpha ${opts.alpha} with --r ${opts.r} makes the LoRA scale alpha/r = ${fmtNum(opts.alpha / opts.r)}, beyond float32's range (about 3.4e+38), ` +
      'so the adapter\'s outputs would be infinite; use an --alpha of the order of --r (alpha/r of 1 to 2 is usual)');
  }
  if (!(opts.dropout >= 0 && opts.dropout < 1)) throw new UsageError(`--dropout must be in [0, 1), got ${opts.dropout}`);
  if (opts.device !== 'cpu' && opts.device !== 'cuda') throw new UsageError(`--device must be cpu or cuda, got ${JSON.stringify(opts.device)}`);
  opts.dtype = resolveDtype(opts.dtype, opts.device);
  if (!targetList(opts.target).length) throw new UsageError('--target needs at least one layer name, e.g. q_proj,v_proj');
  if (saved && saved.evalEvery !== undefined && (opts.evalEvery > 0) !== (saved.evalEvery > 0)) {
    throw new UsageError(saved.evalEvery > 0
      ? `--resume: the checkpoint holds out an eval split (--eval-every ${saved.evalEvery}); --eval-every 0 would change the training set, so give N > 0 or leave it out`
      : '--resume: the checkpoint was trained without an eval split; --eval-every would change the training set, so leave it out');
  }
  if (!opts.model) throw new UsageError('--model DIR is required (a Hugging Face checkpoint directory with config.json, model.safetensors and tokenizer.json)');
  if (!opts.data) throw new UsageError('--data FILE is required (.txt with one example per line, or .jsonl)');
  return opts;
}

// parseArgs sets booleans to false when absent; --no-flag also gives false, which we treat as given.
function argGiven(a: Record<string, unknown>, key: string): boolean {
  return (a.__given as Set<string> | undefined)?.has(key) ?? false;
}

function rawArgKeys(argv: string[]): Set<string> {
  const s = new Set<string>();
  for (const x of argv) {
    const m = /^--(?:no-)?([a-z][a-z-]*)/.exec(x);
    if (m) s.add(m[1].replace(/-([a-z])/g, (_, c: string) => c.toUpperCase()));
  }
  return s;
}

async function readJsonIfExists(file: string): Promise<Record<string, unknown> | null> {
  let v: unknown;
  try {
    v = await readJsonFile('finetune', file, READ_LIMITS.large);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new CliError(oneLine((e as Error).message).replace(/^finetune: /, ''));
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new CliError(`${file} must hold a JSON object, got ${describe(v)}`);
  return v as Record<string, unknown>;
}

function fmtLoss(v: number): string {
  return v.toFixed(4);
}

/** The process group when a launcher started several processes (mpirun, lora-cuda launch), else null. */
function joinProcessGroup(device: string): ProcessGroup | null {
  const env = launchEnv();
  if (env.worldSize === null || env.worldSize < 2) return null;
  try {
    return initDistributed({ backend: device === 'cuda' ? 'auto' : 'mpi' });
  } catch (e) {
    throw new CliError(`${env.worldSize} processes (started by ${env.launcher}): ${oneLine((e as Error).message)}`);
  }
}

/** One GPU per local rank, when the gradients go through MPI. */
function cudaOfRank(group: ProcessGroup): `cuda:${number}` {
  const n = backendInfo().cuda.devices.length;
  if (group.localRank >= n) {
    throw new CliError(`--device cuda: local rank ${group.localRank} has no GPU of its own (${n} on this machine); start at most ${n} processes per machine`);
  }
  return `cuda:${group.localRank}`;
}

function fmtInt(n: number): string {
  return n.toLocaleString('en-US');
}

/**
 * The micro-batches of fixed composition, grouped once by token budget (packed: documents per row up to
 * --batch-tokens, default --batch-size x --max-length; padded with --batch-tokens: rows of similar length
 * whose padded size fits); null for --batch-size rows drawn afresh each epoch. A fixed grouping keeps
 * the number of micro-batches the same every epoch, as resuming needs; their order is shuffled per epoch.
 */
function groupBatches(examples: TokenizedExample[], indices: number[], opts: Options): number[][] | null {
  if (!opts.pack && opts.batchTokens === 0) return null;
  const budget = opts.batchTokens || opts.batchSize * opts.seqLen;
  return binByTokens(indices, examples.map((e) => e.ids.length), budget, !opts.pack);
}

function batchOf(examples: TokenizedExample[], members: number[], opts: Options, padId: number): Batch {
  const rows = members.map((i) => examples[i]);
  return opts.pack ? makePackedBatch(rows) : makeBatch(rows, padId);
}

function batchWords(opts: Options): string {
  if (opts.pack) return `packed rows of up to ${opts.batchTokens || opts.batchSize * opts.seqLen} tokens`;
  return opts.batchTokens ? `padded batches of up to ${opts.batchTokens} tokens` : `batch ${opts.batchSize}`;
}

/**
 * The training examples as the Trainer's micro-batches: each epoch in its seeded order. In a process
 * group each rank takes its shard of that order (DistributedSampler: every worldSize-th item): of the
 * examples, in micro-batches of batchSize / worldSize, so that micro-batch k of all the ranks together
 * holds the examples of a single process's micro-batch k; or of the fixed token-budget groups, one per
 * rank per micro-batch.
 */
function trainBatches(examples: TokenizedExample[], train: number[], opts: Options, padId: number,
  group: ProcessGroup | null): BatchSource {
  const groups = groupBatches(examples, train, opts);
  let epochCached = -1;
  let batches: number[][] = [];
  if (groups) {
    const order = (epoch: number) => epochOrder(groups.length, opts.seed, epoch);
    const sampler = group ? new DistributedSampler(groups.length, group.rank, group.worldSize, order) : null;
    return {
      batchesPerEpoch: sampler ? sampler.numSamples : groups.length,
      batch(epoch, index) {
        if (epoch !== epochCached) {
          batches = (sampler ? sampler.indices(epoch) : order(epoch)).map((i) => groups[i]);
          epochCached = epoch;
        }
        return batchOf(examples, batches[index], opts, padId);
      },
    };
  }
  const order = (epoch: number) => epochOrder(train.length, opts.seed, epoch).map((i) => train[i]);
  const sampler = group ? new DistributedSampler(train.length, group.rank, group.worldSize, order) : null;
  const perRank = group ? opts.batchSize / group.worldSize : opts.batchSize;
  return {
    batchesPerEpoch: Math.ceil((sampler ? sampler.numSamples : train.length) / perRank),
    batch(epoch, index) {
      if (epoch !== epochCached) {
        batches = microBatches(sampler ? sampler.indices(epoch) : order(epoch), perRank);
        epochCached = epoch;
      }
      return batchOf(examples, batches[index], opts, padId);
    },
  };
}

/** Reads OUT/checkpoint for --resume (after undoing what a kill during a checkpoint write left behind). */
async function readResumeState(dir: string): Promise<CheckpointInfo & { metadata: RunMetadata }> {
  const file = path.join(dir, 'trainer_state.json');
  const notOurs = () => new CliError(`--resume: ${file} is not a lora-cuda finetune checkpoint (or another version); delete ${dir} to start fresh`);
  let info: CheckpointInfo;
  try {
    info = await readCheckpoint(dir);
  } catch (e) {
    if (!(e instanceof TrainerError)) throw e;
    if (e.code === 'ERR_CHECKPOINT_NOT_FOUND') {
      throw new CliError(`--resume: no checkpoint in ${dir} (one is written by --save-every, at the end, at --max-steps and on Ctrl-C); run without --resume to start fresh`);
    }
    if (e.code === 'ERR_CHECKPOINT_DAMAGED') throw new CliError(`--resume: ${file} is damaged (${oneLine(e.reason ?? e.message)}); delete ${dir} to start fresh`);
    throw notOurs();
  }
  const m = info.metadata as Partial<RunMetadata>;
  const data = m.data as RunMetadata['data'] | undefined;
  if (!m.args || typeof m.args !== 'object' || Array.isArray(m.args) || !data || typeof data.sha256 !== 'string' || !Number.isInteger(data.examples)) throw notOurs();
  const problem = savedArgsProblem(m.args as Record<string, unknown>) ??
    (/^[0-9a-f]{64}$/.test(data.sha256) ? null : `"data.sha256" must be a SHA-256 in hex, got ${describe(data.sha256)}`) ??
    (data.examples >= 1 ? null : `"data.examples" must be at least 1, got ${data.examples}`);
  if (problem) throw new CliError(`--resume: ${file} is damaged (${problem}); delete ${dir} to start fresh`);
  return info as CheckpointInfo & { metadata: RunMetadata };
}

/** The LoRA scale alpha / r (finetune does not use rsLoRA). */
function loraScale(opts: Options): number {
  return opts.alpha / opts.r;
}

/** What to change when training produced NaN or Inf: the setting that makes it likely, else the learning rate. */
function nonFiniteAdvice(opts: Options): string {
  const scale = loraScale(opts);
  if (scale > 100) {
    return `the LoRA scale alpha/r = ${fmtNum(scale)} (--alpha ${opts.alpha}, --r ${opts.r}) is far above the usual 0.5 to 4 and makes the adapter's outputs overflow; lower --alpha`;
  }
  const decay = opts.lr * opts.weightDecay;
  if (decay >= 1) {
    return `--weight-decay ${opts.weightDecay} with --lr ${opts.lr} multiplies the weights by 1 - lr * weight-decay = ${fmtNum(1 - decay)} at every step; lower --weight-decay (0 to 0.1 is usual)`;
  }
  return `lower --lr (now ${opts.lr})`;
}

function fmtCount(n: number): string {
  return n >= 1e9 ? `${fmtNum(n / 1e9)} billion` : n >= 1e6 ? `${fmtNum(n / 1e6)} million` : fmtInt(n);
}

function fmtBytes(n: number): string {
  return n >= 2 ** 30 ? `${fmtNum(n / 2 ** 30)} GiB` : `${fmtNum(n / 2 ** 20)} MiB`;
}

function fmtNum(v: number): string {
  return Math.abs(v) >= 1e6 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : String(Number(v.toPrecision(4)));
}

/** Sizes that tell what an out-of-memory error comes from: the adapter's parameters against the model's. */
interface RunSizes {
  adapter: number;
  model: number;
}

/** The advice for an out-of-memory error: the rank when the adapter outweighs the model, else the batch. */
function oomAdvice(opts: Options, sizes: RunSizes | null, more: string): string {
  if (sizes && sizes.adapter > sizes.model) {
    return `the adapter (--r ${opts.r}) has ${fmtCount(sizes.adapter)} parameters, more than the model's ${fmtCount(sizes.model)}, and training holds 4 floats for each: use a much smaller --r (8 to 64 is usual)`;
  }
  // float32 weights: bfloat16 would halve them (the adapters stay float32).
  return `use a smaller --batch-size or --seq-len${opts.dtype === 'float32' ? ', or --dtype bfloat16 (half the weights\' memory)' : ''}${more}`;
}

/**
 * What is wrong with the options a checkpoint recorded, or null: each as its flag would be checked
 * (type, integer, range, and resolveOptions' checks), so that a damaged checkpoint is named as such
 * instead of failing later under the name of a flag that was not given.
 */
function savedArgsProblem(args: Record<string, unknown>): string | null {
  for (const key of [...FIXED_ON_RESUME, ...CARRIED_ON_RESUME]) {
    if (!Object.hasOwn(args, key)) continue; // not recorded: taken from the command line or the default
    const v = args[key];
    const name = flagOf(key).slice(2) as keyof typeof FINETUNE_SPECS;
    const spec: OptionSpec = FINETUNE_SPECS[name];
    const bad = (expected: string) => `"args.${key}" (${flagOf(key)}) must be ${expected}, got ${describe(v)}`;
    if (spec.type === 'boolean') {
      if (typeof v !== 'boolean') return bad('true or false');
    } else if (spec.type === 'string') {
      if (typeof v !== 'string' || v === '') return bad('a non-empty string');
    } else {
      const range = [spec.min !== undefined ? `>= ${spec.min}` : '', spec.max !== undefined ? `<= ${spec.max}` : ''].filter(Boolean).join(' and ');
      const expected = `${spec.integer ? 'an integer' : 'a number'}${range ? ` ${range}` : ''}`;
      if (typeof v !== 'number' || !Number.isFinite(v) || (spec.integer && !Number.isSafeInteger(v)) ||
        (spec.min !== undefined && v < spec.min) || (spec.max !== undefined && v > spec.max)) return bad(expected);
    }
  }
  const a = args as Partial<Options>;
  if (a.lr !== undefined && !(a.lr > 0)) return `"args.lr" (--lr) must be > 0, got ${a.lr}`;
  if (a.alpha !== undefined && !(a.alpha > 0)) return `"args.alpha" (--alpha) must be > 0, got ${a.alpha}`;
  if (a.dropout !== undefined && !(a.dropout < 1)) return `"args.dropout" (--dropout) must be < 1, got ${a.dropout}`;
  if (a.lrSchedule !== undefined && !(SCHEDULES as readonly string[]).includes(a.lrSchedule)) return `"args.lrSchedule" (--lr-schedule) must be ${SCHEDULES.join(', ')}, got ${describe(a.lrSchedule)}`;
  if (a.device !== undefined && a.device !== 'cpu' && a.device !== 'cuda') return `"args.device" (--device) must be cpu or cuda, got ${describe(a.device)}`;
  if (a.dtype !== undefined && !(CLI_DTYPES as readonly string[]).includes(a.dtype)) return `"args.dtype" (--dtype) must be ${CLI_DTYPES.join(', ')}, got ${describe(a.dtype)}`;
  if (a.target !== undefined && !targetList(a.target).length) return `"args.target" (--target) names no layer: ${describe(a.target)}`;
  return null;
}

/** The command's message for what the Trainer throws (other errors pass through). */
function cliError(e: unknown, opts: Options, ckptDir: string, sizes: RunSizes | null = null): unknown {
  if (!(e instanceof TrainerError)) {
    if ((e as { code?: string }).code === 'ERR_OUT_OF_MEMORY') {
      return new CliError(`out of memory (--batch-size ${opts.batchSize}, --seq-len ${opts.seqLen}): ${oomAdvice(opts, sizes, ', or a smaller model')}`);
    }
    return e;
  }
  switch (e.code) {
    case 'ERR_WARMUP_TOO_LONG':
      return new UsageError(`--warmup-steps ${e.warmupSteps} is more than the run's ${e.totalSteps} steps, after which the ${opts.lrSchedule} schedule reaches 0; use fewer warm-up steps`);
    case 'ERR_NONFINITE_LOSS':
      return new CliError(`the training loss became ${e.loss} at step ${e.step}; ${nonFiniteAdvice(opts)}`);
    case 'ERR_NONFINITE_WEIGHTS': {
      const kept = e.checkpointStep !== undefined
        ? `${opts.out} keeps the adapter and ${ckptDir} the checkpoint of step ${e.checkpointStep}`
        : `no adapter or checkpoint of this run was written`;
      return new CliError(`the trained weights became NaN or Inf by step ${e.step} (${e.tensor}); nothing was saved from it: ${kept}; ${nonFiniteAdvice(opts)}`);
    }
    case 'ERR_OUT_OF_MEMORY':
      return new CliError(`out of memory at step ${e.step} (--batch-size ${opts.batchSize}, --seq-len ${opts.seqLen}): ${oomAdvice(opts, sizes, ' (raise --grad-accum to keep the effective batch size)')}`);
    case 'ERR_CHECKPOINT_WRITE':
      return new CliError(`${oneLine(e.message).replace(/^Trainer\.saveCheckpoint: /, '')}; ${e.previousStep != null
        ? `once the cause is fixed, continue from step ${e.previousStep} with --resume`
        : 'run again once the cause is fixed'}`);
    case 'ERR_CHECKPOINT_DAMAGED':
      return new CliError(`--resume: ${oneLine(e.message).replace(/^[\w.]+: /, '')}; delete ${ckptDir} to start fresh`);
    case 'ERR_CHECKPOINT_MISMATCH':
      return new CliError(e.mismatch === 'steps-per-epoch'
        ? `--resume: ${e.reason}; resume with the same data and options`
        : `--resume: the checkpoint in ${ckptDir} does not fit this run: ${oneLine(e.reason ?? e.message)}`);
    default:
      return new CliError(`--resume: ${oneLine(e.message)}; delete ${ckptDir} to start fresh`);
  }
}

export async function finetuneCommand(argv: string[], io: CliIO, hooks: FinetuneHooks = {}): Promise<number> {
  const parsed = parseArgs(COMMAND, PARSE_SPECS, argv) as Record<string, unknown> & { _: string[]; help: boolean };
  if (parsed.help) {
    io.stdout(finetuneHelp());
    return 0;
  }
  if (parsed._.length) throw new UsageError(`unexpected argument ${JSON.stringify(parsed._[0])} (options start with --; see lora-cuda finetune --help)`);
  parsed.__given = rawArgKeys(argv);
  if (parsed.maxLength !== undefined) {
    if (parsed.seqLen !== undefined && parsed.seqLen !== parsed.maxLength) {
      throw new UsageError(`--max-length ${parsed.maxLength} and --seq-len ${parsed.seqLen} disagree; give one (--seq-len is the older name of --max-length)`);
    }
    parsed.seqLen = parsed.maxLength;
  }

  const out = (parsed.out as string | undefined) ?? FINETUNE_SPECS.out.default;
  const ckptDir = path.join(out, CHECKPOINT);
  const resumeState = parsed.resume === true ? await readResumeState(ckptDir) : null;
  const opts = resolveOptions(parsed, resumeState?.metadata.args);

  if (opts.device === 'cuda') {
    const info = backendInfo();
    if (!info.cuda.available) throw new CliError(`--device cuda: CUDA is not available (${oneLine(info.cuda.reason || 'unknown reason')}); use --device cpu`);
  }
  // Started by mpirun or lora-cuda launch with more than one process: data-parallel training.
  const group = joinProcessGroup(opts.device);
  if (group) {
    if (opts.batchSize % group.worldSize !== 0) {
      throw new UsageError(`--batch-size ${opts.batchSize} is the global batch, split across the ${group.worldSize} ranks: give a multiple of ${group.worldSize}`);
    }
    // Only rank 0 prints (the others' errors still reach stderr, marked with their rank).
    if (group.rank !== 0) {
      const base = io;
      io = { ...base, stdout: () => {}, stderr: (t) => base.stderr(t.startsWith('warning:') ? '' : `rank ${group.rank}: ${t}`) };
    }
  }
  const rank0 = !group || group.rank === 0;
  // mpirun ends the ranks on Ctrl-C, but passes SIGUSR1 on to every rank: kill -USR1 <mpirun's pid>
  // stops them all after the same step, with a checkpoint. Listened to from here on (before any
  // collective), since Node's own SIGUSR1 action would start its inspector instead.
  let usr1Early = false;
  let sigint: (() => void) | null = null;
  const usr1 = group ? () => (sigint ? sigint() : void (usr1Early = true)) : null;
  if (usr1) process.on('SIGUSR1', usr1);
  const device: DeviceSpec = !group ? (opts.device as DeviceSpec) : group.device !== 'cpu' ? group.device : opts.device === 'cuda' ? cudaOfRank(group) : 'cpu';

  // The model directory (checked before the slow parts).
  const modelDir = opts.model;
  const stat = statPath('--model', modelDir);
  if (!stat) throw new CliError(`--model ${modelDir}: directory not found (give a Hugging Face checkpoint directory with config.json, model.safetensors and tokenizer.json)`);
  if (!stat.isDirectory()) throw new CliError(`--model ${modelDir}: not a directory (give the checkpoint directory, not a file in it)`);
  if (!statPath('--model', path.join(modelDir, 'config.json'))) {
    throw new CliError(`--model ${modelDir}: no config.json (expected a Hugging Face checkpoint directory with config.json, model.safetensors and tokenizer.json)`);
  }
  if (!statPath('--model', path.join(modelDir, 'tokenizer.json'))) {
    throw new CliError(`--model ${modelDir}: no tokenizer.json (copy tokenizer.json from the base model's repository into this directory)`);
  }
  // Outputs against inputs, by identity (device and inode: a symbolic link or another spelling is seen through).
  if (samePath(out, modelDir)) {
    throw new CliError(`--out ${out} is the --model directory; choose another directory (an adapter there would make the base checkpoint load with it)`);
  }
  for (const [flag, p] of [['--model', modelDir], ['--data', opts.data]] as const) {
    if (isWithin(p, ckptDir)) throw new CliError(`${flag} ${p} is inside ${ckptDir}, which every checkpoint replaces as a whole; move it elsewhere`);
  }

  // Data, before the model: a bad line fails fast.
  const data = await readDataFile(opts.data);
  if (resumeState && resumeState.metadata.data.sha256 !== data.sha256) {
    throw new CliError(`--resume: ${opts.data} differs from the data the checkpoint was trained on; resume with the same file (or start fresh without --resume)`);
  }

  let tokenizer: Tokenizer;
  try {
    tokenizer = await loadTokenizer(modelDir);
  } catch (e) {
    throw new CliError(`--model ${modelDir}: ${oneLine((e as Error).message)}`);
  }
  const tokConfig = (await readJsonIfExists(path.join(modelDir, 'tokenizer_config.json'))) ?? {};
  const idOf = (v: unknown): number | null => {
    const c = tokenContent(v);
    return c === null ? null : tokenizer.token_to_id(c) ?? null;
  };
  let eosId: number | null = null;
  if (opts.addEos) {
    eosId = idOf(tokConfig.eos_token);
    if (eosId === null) {
      throw new CliError(`--add-eos: ${path.join(modelDir, 'tokenizer_config.json')} names no eos_token that tokenizer.json knows; leave out --add-eos or add "eos_token" to tokenizer_config.json`);
    }
  }
  const padId = idOf(tokConfig.pad_token) ?? eosId ?? idOf(tokConfig.eos_token) ?? 0;

  // Where the results go, before any training: a run must not end unable to save.
  try {
    if (rank0) ensureWritableDir(out);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new CliError(`cannot write the adapter to ${out} (${err.code ?? oneLine(err.message)}); choose another --out`);
  }

  let sizes: RunSizes | null = null;
  try {
    let model: LlamaForCausalLM;
    try {
      model = await LlamaForCausalLM.fromPretrained(modelDir, device !== 'cpu' ? { device, dtype: opts.dtype } : { dtype: opts.dtype });
    } catch (e) {
      if ((e as { code?: string }).code === 'ERR_OUT_OF_MEMORY') throw e;
      throw new CliError(`--model ${modelDir}: ${oneLine((e as Error).message)}`);
    }
    const cfg = model.config;
    if (cfg.slidingWindow !== null && opts.seqLen > cfg.slidingWindow) {
      throw new UsageError(`--seq-len ${opts.seqLen} exceeds the model's sliding_window (${cfg.slidingWindow}), which is not implemented; use --seq-len ${cfg.slidingWindow} or less`);
    }
    if (!Number.isInteger(padId) || padId < 0 || padId >= cfg.vocabSize) {
      throw new CliError(`--model ${modelDir}: the tokenizer (tokenizer.json) gives the pad/eos token id ${padId}, but the model's ids are 0 to ${cfg.vocabSize - 1} (vocab_size ${cfg.vocabSize}); the tokenizer is damaged or does not belong to this model`);
    }

    const dataName = `--data ${opts.data}`;
    let built: ReturnType<typeof buildExamples>;
    try {
      built = buildExamples(data.rows, tokenizer, { maxLength: opts.seqLen, addEos: opts.addEos, lines: data.lines, name: dataName });
    } catch (e) {
      // A row that does not render (the chat template fails, or the checkpoint has none) names its line.
      if ((e as { code?: string }).code === 'ERR_OUT_OF_MEMORY') throw e;
      throw new CliError(oneLine((e as Error).message).replace(/: applyChatTemplate: /, ': ')
        .replace(/; pass one as the chatTemplate option$/, '; add chat_template to tokenizer_config.json, or use prompt/completion rows'));
    }
    const { examples, report } = built;
    for (const ex of examples) {
      const bad = ex.ids.find((id) => id >= cfg.vocabSize);
      if (bad !== undefined) {
        throw new CliError(`${dataName} line ${ex.line}: the tokenizer produced token id ${bad}, but the model's vocab_size is ${cfg.vocabSize}; use the tokenizer.json that belongs to this model`);
      }
    }
    if (!examples.length) {
      const d = report.dropped;
      const why = [d.noAssistantTurn ? `${d.noAssistantTurn} without an assistant turn` : '', d.tooShort ? `${d.tooShort} under 2 tokens` : '',
        d.noTargetsAfterTruncation ? `${d.noTargetsAfterTruncation} with nothing to train on within --max-length ${opts.seqLen}` : ''].filter(Boolean).join(', ');
      throw new CliError(`${dataName}: no usable examples: all ${report.rows} rows were dropped (${why})`);
    }
    if (opts.pack === undefined) opts.pack = data.textOnly;
    const split = splitTrainEval(examples.length, opts.evalEvery > 0 ? opts.evalFraction : 0, opts.seed);
    if (resumeState && (resumeState.metadata.data.examples !== examples.length ||
      (resumeState.metadata.data.tokens !== undefined && resumeState.metadata.data.tokens !== report.tokens))) {
      throw new CliError(`--resume: the data gives ${examples.length} examples, the checkpoint had ${resumeState.metadata.data.examples}` +
        `${resumeState.metadata.data.examples === examples.length ? ` (${report.tokens} tokens against ${resumeState.metadata.data.tokens})` : ''}; resume with the same data and tokenizer`);
    }
    const train = split.train;
    const evalSet = split.eval;

    // LoRA, with A initialised from the global generator (seeded).
    manualSeed(opts.seed);
    const targets = targetList(opts.target);
    const allLinear = targets.length === 1 && targets[0] === 'all-linear';
    const linears = [...model.namedModules()].filter((e): e is [string, Linear] => e[1] instanceof Linear);
    const linearNames = linears.map(([n]) => n);
    const modelParams = model.numParameters();
    let replaced: string[];
    try {
      replaced = injectLora(model, {
        r: opts.r, alpha: opts.alpha, dropout: opts.dropout, init: 'kaiming',
        ...(allLinear ? { filter: (name: string) => name !== 'lm_head' } : { targetModules: targets }),
      });
    } catch (e) {
      if ((e as { code?: string }).code === 'ERR_OUT_OF_MEMORY') {
        // A and B alone did not fit: the rank is the cause, whatever the batch.
        const chosen = linears.filter(([n]) => (allLinear ? n !== 'lm_head' : targets.some((t) => n === t || n.endsWith(`.${t}`))));
        const adapter = chosen.reduce((sum, [, l]) => sum + opts.r * (l.inFeatures + l.outFeatures), 0);
        throw new CliError(`out of memory creating the LoRA layers: --r ${opts.r} on ${chosen.length} layers is ${fmtCount(adapter)} adapter parameters ` +
          `(${fmtBytes(adapter * 4)} in float32, about 4 times that to train), the model itself has ${fmtCount(modelParams)}; use a much smaller --r (8 to 64 is usual)`);
      }
      if (!(e instanceof RangeError)) throw e;
      const parts = [...new Set(linearNames.map((n) => n.slice(n.lastIndexOf('.') + 1)))];
      const unmatched = targets.filter((t) => !linearNames.some((n) => n === t || n.endsWith(`.${t}`)));
      const what = unmatched.length && unmatched.length < targets.length
        ? `--target ${opts.target}: ${unmatched.join(', ')} ${unmatched.length > 1 ? 'match' : 'matches'} no layer of this model`
        : `--target ${opts.target} selects no layer of this model`;
      throw new CliError(`${what}; its Linear layers are named ${parts.join(', ')} (or use all-linear)`);
    }

    const saveTo = (dir: string) => saveAdapter(model, dir, { baseModelNameOrPath: opts.model });
    let interrupted = false;
    const trainer = new Trainer({
      model,
      train: trainBatches(examples, train, opts, padId, group),
      distributed: group !== null,
      ...(evalSet.length ? {
        eval: function* () {
          for (const mb of groupBatches(examples, evalSet, opts) ?? microBatches(evalSet, opts.batchSize)) yield batchOf(examples, mb, opts, padId);
        },
      } : {}),
      epochs: opts.epochs,
      maxSteps: opts.maxSteps,
      gradAccum: opts.gradAccum,
      optimizer: { lr: opts.lr, weightDecay: opts.weightDecay },
      lrSchedule: opts.lrSchedule,
      warmupSteps: opts.warmupSteps,
      maxGradNorm: opts.maxGradNorm,
      gradientCheckpointing: opts.gradientCheckpointing,
      logEvery: opts.logEvery,
      evalEvery: opts.evalEvery,
      saveEvery: opts.saveEvery,
      checkpointDir: ckptDir,
      saveModel: saveTo,
      metadata: {
        data: { sha256: data.sha256, examples: examples.length, tokens: report.tokens },
        args: Object.fromEntries([...FIXED_ON_RESUME, ...CARRIED_ON_RESUME].map((k) => [k, opts[k]])),
      } satisfies RunMetadata,
      onLog: (l) => {
        const norm = l.gradNorm === null ? '' : `  grad-norm ${fmtLoss(l.gradNorm)}`;
        io.stdout(`step ${l.step}/${l.totalSteps}  epoch ${l.epoch + 1}/${opts.epochs}  loss ${fmtLoss(l.loss)}  lr ${fmtLr(l.lr)}${norm}  ${fmtInt(Math.round(l.tokensPerSecond))} tok/s\n`);
      },
      onStep: (s) => hooks.onStep?.({ step: s.step, totalSteps: s.totalSteps, epoch: s.epoch, loss: s.loss }),
      onEval: (ev) => {
        io.stdout(`eval step ${ev.step}: loss ${fmtLoss(ev.loss)} (${evalSet.length} examples, ${fmtInt(ev.targets)} target tokens)\n`);
      },
      // Called on rank 0 only.
      onCheckpoint: async (c) => {
        try {
          await saveTo(out);
        } catch (e) {
          const err = e as NodeJS.ErrnoException;
          if (!err.syscall) throw e;
          // The adapter is written atomically: what was there is as it was, and the checkpoint is complete.
          throw new CliError(`cannot write the adapter to ${out} (${oneLine(err.message)}); the adapter there is as it was, and the checkpoint of step ${c.step} in ${ckptDir} is complete: once the cause is fixed, continue with --resume`);
        }
        if (c.reason === 'periodic') io.stdout(`checkpoint at step ${c.step} written to ${out}\n`);
      },
    });
    if (resumeState) await trainer.loadCheckpoint(ckptDir);
    const { stepsPerEpoch, totalSteps } = trainer;
    const step = trainer.step;

    const trainable = trainer.params.reduce((s, p) => s + p.numel, 0);
    sizes = { adapter: trainable, model: modelParams };
    const layerKinds = [...new Set(replaced.map((n) => n.slice(n.lastIndexOf('.') + 1)))];
    io.stdout(`model: ${modelDir} (${cfg.modelType}, ${cfg.numHiddenLayers} layers, hidden ${cfg.hiddenSize}, vocab ${cfg.vocabSize}), device ${opts.device}, dtype ${model.model.embed_tokens.weight.dtype}\n`);
    if (group) io.stdout(`distributed: ${group.worldSize} ranks over ${group.backend}, ${opts.pack || opts.batchTokens ? 'one token-budget micro-batch' : `${opts.batchSize / group.worldSize} examples`} per rank per micro-batch\n`);
    io.stdout(`lora: r=${opts.r} alpha=${opts.alpha} dropout=${opts.dropout} on ${replaced.length} layers (${layerKinds.join(', ')}), ${fmtInt(trainable)} trainable parameters\n`);
    const d = report.dropped;
    const notes = [
      report.truncated ? `${report.truncated} cut to --max-length ${opts.seqLen}` : '',
      d.noAssistantTurn ? `${d.noAssistantTurn} dropped (no assistant turn)` : '',
      d.tooShort ? `${d.tooShort} dropped (under 2 tokens)` : '',
      d.noTargetsAfterTruncation ? `${d.noTargetsAfterTruncation} dropped (nothing to train on within --max-length ${opts.seqLen})` : '',
    ].filter(Boolean);
    io.stdout(`data: ${opts.data}: ${examples.length} examples (${train.length} train, ${evalSet.length} eval), ${fmtInt(report.tokens)} tokens, ${fmtInt(report.targets)} trained${notes.length ? `; ${notes.join(', ')}` : ''}\n`);
    // The library's warnings (unknown tokens, templates, prompt boundaries); truncation and drops are on the line above.
    for (const w of report.warnings) if (!/ rows were (cut|dropped)/.test(w)) io.stderr(`warning: ${w}\n`);
    if (opts.evalEvery > 0 && !evalSet.length) io.stderr('warning: --eval-every needs at least 2 examples to hold one out; evaluation is off\n');
    io.stdout(`training: ${opts.epochs} epoch${opts.epochs > 1 ? 's' : ''} x ${stepsPerEpoch} step${stepsPerEpoch > 1 ? 's' : ''} = ${totalSteps} step${totalSteps > 1 ? 's' : ''} (${batchWords(opts)} x grad-accum ${opts.gradAccum}), lr ${opts.lr} (${opts.lrSchedule}${opts.warmupSteps ? `, warm-up ${opts.warmupSteps} steps` : ''}), ${opts.maxGradNorm > 0 ? `gradients clipped to norm ${opts.maxGradNorm}` : 'no gradient clipping'}\n`);
    if (!resumeState && statPath('--out', path.join(ckptDir, 'trainer_state.json'))) {
      io.stderr(`warning: ${ckptDir} holds a checkpoint; starting fresh will replace it (use --resume to continue it)\n`);
    }
    if (resumeState) io.stdout(`resuming from ${ckptDir} at step ${step} of ${totalSteps}\n`);

    if (step >= trainer.stopAt) {
      io.stdout(step >= totalSteps
        ? `nothing to do: the checkpoint is at step ${step} of ${totalSteps} (raise --epochs to train further)\n`
        : `nothing to do: the checkpoint is at step ${step}, --max-steps is ${opts.maxSteps}\n`);
      if (rank0) await saveTo(out);
      io.stdout(`adapter written to ${out}\n`);
      return 0;
    }

    sigint = () => {
      if (interrupted) {
        io.stderr('interrupted again: exiting without saving\n');
        process.exit(130);
      }
      interrupted = true;
      io.stderr('interrupt: finishing the current step, then saving (Ctrl-C again to quit without saving)\n');
      trainer.stop();
    };
    process.on('SIGINT', sigint);
    if (usr1Early) sigint();

    const result = await trainer.train();
    if (interrupted) {
      io.stderr(`interrupted at step ${result.step}/${totalSteps}: adapter and checkpoint written to ${out}; continue with --resume\n`);
      return 130;
    }
    if (result.step < totalSteps) {
      io.stdout(`stopped at --max-steps ${opts.maxSteps} (step ${result.step} of ${totalSteps}); continue with --resume\n`);
    }
    io.stdout(`adapter written to ${out}\n`);
    return 0;
  } catch (e) {
    throw cliError(e, opts, ckptDir, sizes);
  } finally {
    if (sigint) process.removeListener('SIGINT', sigint);
    if (usr1) process.removeListener('SIGUSR1', usr1);
  }
}
