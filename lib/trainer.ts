// The training loop as a library object: AdamW with a warm-up schedule, gradient clipping and
// accumulation, epochs and a step limit, periodic evaluation, checkpoints that a later run resumes
// bit for bit, and a stop() that ends the run cleanly at a step boundary. `lora-cuda finetune` is a
// thin command line over it.
//
// Determinism: a step is a function of the parameters, the optimiser state, the global generator's
// state (dropout) and which micro-batches it sees. A checkpoint stores all four (the data position as
// the step count: the batches of a step come from the data by epoch and index), so a run resumed from
// it continues exactly as an uninterrupted one.
import * as fs from 'fs';
import * as path from 'path';
import { performance } from 'perf_hooks';
import { Module } from './nn/module';
import { Tensor } from './tensor';
import { noGrad } from './autograd';
import { AdamOptions, AdamW, loadOptimizerState, readOptimizerState, saveOptimizerState, AdamStateDict } from './optim';
import {
  LambdaLR, getConstantScheduleWithWarmup, getCosineScheduleWithWarmup, getLinearScheduleWithWarmup,
} from './schedule';
import { clipGradNorm } from './nn/utils';
import { getRngState, setRngState } from './random';
import { getLoraAB, loraLayers } from './lora';
import { loadAdapter, saveAdapter } from './peft';
import { DistributedDataParallel, allReduceNumbers, barrier } from './distributed';
import { SafetensorsFile, saveSafetensors } from './safetensors';
import { asideDirs, recoverDir, replaceDir, writeFileAtomic } from './atomic';
import { READ_LIMITS, pathExists, readJsonFile } from './fsio';
import { checkBool, checkInt, checkKnownKeys, checkNumber, checkOneOf, checkOptions, describe, typeError } from './errors';
import { allFinite } from './ops/elementwise';
import type { BatchOptions } from './models/llama';

/** One micro-batch: rows of token ids of equal length, and their labels (-100 = no loss). */
export interface TrainerBatch {
  ids: number[][];
  /** Default: the ids themselves (the model's loss then predicts every next token). */
  labels?: number[][];
  /** Real (non-padding) tokens, for tokens per second. Default: every id. */
  tokens?: number;
  /** Weight of this batch's loss in the evaluation mean (e.g. the tokens that carry a loss). Default 1. */
  targets?: number;
  /** Padded or packed rows: the layout the model's loss takes (attentionMask, positionIds or cuSeqLens; see BatchOptions). */
  layout?: BatchOptions;
}

/**
 * Training data that may change order every epoch: the micro-batches of an epoch by index. A step
 * takes `gradAccum` consecutive ones; after a resume the trainer asks again for the batches of the
 * step it continues at, so batch(epoch, index) must depend on nothing else.
 */
export interface BatchSource {
  /** Micro-batches per epoch, the same for every epoch. */
  readonly batchesPerEpoch: number;
  /** Micro-batch `index` (from 0) of `epoch` (from 0). */
  batch(epoch: number, index: number): TrainerBatch;
}

/** Fixed micro-batches, seen in this order every epoch, or a BatchSource. */
export type TrainData = readonly TrainerBatch[] | BatchSource;

/** Computes a micro-batch's loss (a 0-d tensor with a graph back to the parameters). */
export type LossFunction = (batch: TrainerBatch) => Tensor;

export type LrScheduleName = 'constant' | 'linear' | 'cosine';

export interface TrainerStepInfo {
  /** Optimiser steps done in all (1 after the first). */
  step: number;
  totalSteps: number;
  /** The epoch of this step, from 0. */
  epoch: number;
  /** Mean loss of the step's micro-batches. */
  loss: number;
  /** The learning rate the step used. */
  lr: number;
  /** The gradients' joint norm before clipping; null without clipping. */
  gradNorm: number | null;
  /** Real tokens in the step's micro-batches. */
  tokens: number;
}

export interface TrainerLogInfo {
  step: number;
  totalSteps: number;
  epoch: number;
  /** Mean step loss since the last log. */
  loss: number;
  /** The learning rate of the last step. */
  lr: number;
  /** Mean norm before clipping since the last log; null without clipping. */
  gradNorm: number | null;
  /** Real tokens per second since the last log. */
  tokensPerSecond: number;
}

export interface TrainerEvalInfo {
  step: number;
  /** The evaluation batches' losses, weighted by their `targets`. */
  loss: number;
  /** Sum of the weights (the batches' `targets`, 1 each by default). */
  targets: number;
}

/** Why a checkpoint was written: every saveEvery steps, at the end, at maxSteps, or after stop(). */
export type CheckpointReason = 'periodic' | 'end' | 'max-steps' | 'stopped';

export interface TrainerCheckpointInfo {
  step: number;
  dir: string;
  reason: CheckpointReason;
}

type Callback<T> = (info: T) => void | Promise<void>;

export interface TrainerOptions {
  /**
   * The model: its training flag is set for training and cleared for evaluation, and without `loss`
   * its `loss(ids, labels)` is the loss (LlamaForCausalLM). Optional when `loss` and `params` are given.
   */
  model?: Module;
  /** The loss of a micro-batch; default `model.loss(batch.ids, batch.labels)`. */
  loss?: LossFunction;
  /** What is trained; default the model's LoRA A and B (getLoraAB), or else every parameter with requiresGrad. */
  params?: Iterable<Tensor>;
  /** The training micro-batches. */
  train: TrainData;
  /** Evaluation batches (or a function returning them), run without a graph and with the model in eval mode. */
  eval?: Iterable<TrainerBatch> | (() => Iterable<TrainerBatch>);
  /** Passes over the training data. Default 1. */
  epochs?: number;
  /** Stop (with a checkpoint) once this many steps are done in all, 0 = no limit; the schedule still spans every epoch. Default 0. */
  maxSteps?: number;
  /** Micro-batches per optimiser step, their gradients averaged. Default 1. */
  gradAccum?: number;
  /** AdamW's options (its defaults apply). */
  optimizer?: AdamOptions;
  /** After the warm-up: constant, or linear / cosine decay to 0 at the last step of the last epoch. Default constant. */
  lrSchedule?: LrScheduleName;
  /** Linear warm-up from 0 over this many steps. Default 0. */
  warmupSteps?: number;
  /** Clip the gradients' joint L2 norm to this before each step, 0 = off. Default 1. */
  maxGradNorm?: number;
  /** onLog every this many steps (and at the last step). Default 1. */
  logEvery?: number;
  /** Evaluate every this many steps and at the last step of the last epoch, 0 = never. Default 0. */
  evalEvery?: number;
  /** Write a checkpoint every this many steps, 0 = only when train() ends. Needs checkpointDir. Default 0. */
  saveEvery?: number;
  /** Where checkpoints go (replaced as a whole each time); none are written without it. */
  checkpointDir?: string;
  /**
   * Data-parallel training in the process group of initDistributed(): every rank passes its own
   * shard of the data (the same number of micro-batches per epoch), the parameters start from rank
   * 0's, the gradients are averaged over the ranks after each step's backward passes, the logged
   * loss and tokens are the whole job's, and only rank 0 writes checkpoints and calls onCheckpoint
   * (onLog, onStep and onEval run on every rank). Default false.
   */
  distributed?: boolean;
  /**
   * Turn on the model's activation checkpointing when training starts (transformers'
   * gradient_checkpointing argument): each decoder layer keeps only its input and is recomputed
   * in backward, the same gradients for less memory. Needs a model with gradientCheckpointingEnable()
   * (LlamaForCausalLM). Default false (the model is left as it is).
   */
  gradientCheckpointing?: boolean;
  /** Writes the trained weights into a checkpoint directory; default: saveAdapter for LoRA models, else the params. */
  saveModel?: (dir: string) => Promise<void>;
  /** Reads them back on loadCheckpoint; default: loadAdapter for LoRA models, else the params. */
  loadModel?: (dir: string) => Promise<void>;
  /** JSON-serialisable data stored with each checkpoint (readCheckpoint returns it). */
  metadata?: Record<string, unknown>;
  onStep?: Callback<TrainerStepInfo>;
  onLog?: Callback<TrainerLogInfo>;
  onEval?: Callback<TrainerEvalInfo>;
  onCheckpoint?: Callback<TrainerCheckpointInfo>;
}

export interface TrainResult {
  /** Optimiser steps done in all (with those before a resume). */
  step: number;
  totalSteps: number;
  /** Steps this call ran. */
  stepsRun: number;
  /** done: every epoch; max-steps: stopped at maxSteps; stopped: by stop(). */
  reason: 'done' | 'max-steps' | 'stopped';
  /** The last checkpoint written by this call, if any. */
  checkpoint: string | null;
}

export type TrainerErrorCode =
  | 'ERR_NONFINITE_LOSS'
  | 'ERR_NONFINITE_WEIGHTS'
  | 'ERR_OUT_OF_MEMORY'
  | 'ERR_WARMUP_TOO_LONG'
  | 'ERR_CHECKPOINT_NOT_FOUND'
  | 'ERR_CHECKPOINT_DAMAGED'
  | 'ERR_CHECKPOINT_FORMAT'
  | 'ERR_CHECKPOINT_MISMATCH'
  | 'ERR_CHECKPOINT_WRITE';

/** A failure of a training run or of a checkpoint, with a code and the facts a caller needs to explain it. */
export class TrainerError extends Error {
  readonly code: TrainerErrorCode;
  /** The step (from 1) that failed. */
  readonly step?: number;
  /** ERR_NONFINITE_LOSS: the loss value. */
  readonly loss?: number;
  /** ERR_NONFINITE_WEIGHTS: the first tensor found with NaN or Inf (a parameter's name, or an optimiser moment of one). */
  readonly tensor?: string;
  /** ERR_NONFINITE_WEIGHTS: the step of the checkpoint left in checkpointDir, when this trainer wrote or loaded it. */
  readonly checkpointStep?: number;
  /** ERR_WARMUP_TOO_LONG: the run's steps and the warm-up asked for. */
  readonly totalSteps?: number;
  readonly warmupSteps?: number;
  /** Checkpoint errors: the directory or file concerned. */
  readonly path?: string;
  /** ERR_CHECKPOINT_MISMATCH: what does not fit. */
  readonly mismatch?: 'steps-per-epoch' | 'state';
  /** The underlying problem, without the context the message adds. */
  readonly reason?: string;
  /** ERR_CHECKPOINT_WRITE: the step of the checkpoint still there to resume from, or null. */
  readonly previousStep?: number | null;

  constructor(code: TrainerErrorCode, message: string, details: {
    step?: number; loss?: number; tensor?: string; checkpointStep?: number; totalSteps?: number; warmupSteps?: number; path?: string;
    mismatch?: 'steps-per-epoch' | 'state'; reason?: string; previousStep?: number | null; cause?: unknown;
  } = {}) {
    const { cause, ...rest } = details;
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'TrainerError';
    this.code = code;
    Object.assign(this, rest);
  }
}

/** What readCheckpoint returns. */
export interface CheckpointInfo {
  /** 2, or 1 for checkpoints of `lora-cuda finetune` from before the Trainer. */
  version: number;
  step: number;
  totalSteps: number;
  stepsPerEpoch: number;
  /** The generator state to continue from. */
  rng: { seed: bigint; offset: bigint };
  /** The options' metadata. */
  metadata: Record<string, unknown>;
}

const STATE_FILE = 'trainer_state.json';
const OPTIM_FILE = 'optimizer.safetensors';
const PARAMS_FILE = 'params.safetensors';
const FORMAT = 'lora-cuda-trainer';
const VERSION = 2;
/** Format 1: written by `lora-cuda finetune` before the Trainer; the optimiser's scalars in trainer_state.json. */
const V1_FORMAT = 'lora-cuda-finetune';

interface StateV1 {
  format: typeof V1_FORMAT;
  version: 1;
  step: number;
  totalSteps: number;
  stepsPerEpoch: number;
  rng: { seed: string; offset: string };
  optimizer: { steps: Record<string, number>; paramGroups: AdamStateDict['paramGroups'] };
  data: unknown;
  args: unknown;
}

interface StateV2 {
  format: typeof FORMAT;
  version: 2;
  step: number;
  totalSteps: number;
  stepsPerEpoch: number;
  rng: { seed: string; offset: string };
  metadata: Record<string, unknown>;
}

const SCHEDULES = ['constant', 'linear', 'cosine'] as const;
const OPTION_KEYS = [
  'model', 'loss', 'params', 'train', 'eval', 'epochs', 'maxSteps', 'gradAccum', 'optimizer', 'lrSchedule', 'warmupSteps',
  'maxGradNorm', 'logEvery', 'evalEvery', 'saveEvery', 'checkpointDir', 'saveModel', 'loadModel', 'metadata', 'distributed',
  'onStep', 'onLog', 'onEval', 'onCheckpoint', 'gradientCheckpointing',
] as const;

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

function isCheckpoint(dir: string): boolean {
  return fs.existsSync(path.join(dir, STATE_FILE));
}

/** The step of the checkpoint in `dir` as its trainer_state.json says, or null (none, or unreadable). */
async function stepOf(dir: string): Promise<number | null> {
  try {
    const s = await readJsonFile('Trainer', path.join(dir, STATE_FILE), READ_LIMITS.config) as { step?: unknown } | null;
    return typeof s?.step === 'number' && Number.isSafeInteger(s.step) ? s.step : null;
  } catch {
    return null;
  }
}

const TWO_64 = 2n ** 64n;

/** A plain object (not null, not an array). */
function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/**
 * What is wrong with a trainer_state.json whose format and version are known, or null: every field is
 * checked, so that a damaged file is refused here with its fault named instead of failing later.
 */
function stateProblem(s: Record<string, unknown>): string | null {
  const count = (k: string, min: number): string | null => {
    const v = s[k];
    return typeof v === 'number' && Number.isSafeInteger(v) && v >= min ? null : `"${k}" must be an integer >= ${min}, got ${describe(v)}`;
  };
  const bad = count('step', 0) ?? count('totalSteps', 0) ?? count('stepsPerEpoch', 1);
  if (bad) return bad;
  const { step, totalSteps, stepsPerEpoch } = s as { step: number; totalSteps: number; stepsPerEpoch: number };
  if (step > totalSteps) return `"step" ${step} is past "totalSteps" ${totalSteps}`;
  if (totalSteps % stepsPerEpoch !== 0) return `"totalSteps" ${totalSteps} is not a whole number of epochs of "stepsPerEpoch" ${stepsPerEpoch}`;
  if (!isRecord(s.rng)) return `"rng" must be an object { seed, offset }, got ${describe(s.rng)}`;
  for (const k of ['seed', 'offset'] as const) {
    const v = s.rng[k];
    if (typeof v !== 'string' || !/^\d+$/.test(v) || BigInt(v) >= TWO_64) return `"rng.${k}" must be a decimal string of an integer in [0, 2^64), got ${describe(v)}`;
  }
  if (s.version === VERSION) {
    if (!isRecord(s.metadata)) return `"metadata" must be an object, got ${describe(s.metadata)}`;
    return null;
  }
  const o = s.optimizer;
  if (!isRecord(o)) return `"optimizer" must be an object { steps, paramGroups }, got ${describe(o)}`;
  if (!isRecord(o.steps)) return `"optimizer.steps" must be an object, got ${describe(o.steps)}`;
  if (!Array.isArray(o.paramGroups)) return `"optimizer.paramGroups" must be an array, got ${describe(o.paramGroups)}`;
  for (const k of ['data', 'args'] as const) if (!isRecord(s[k])) return `"${k}" must be an object, got ${describe(s[k])}`;
  return null;
}

async function readState(dir: string): Promise<StateV1 | StateV2> {
  const where = 'readCheckpoint';
  await recoverDir(dir, isCheckpoint);
  const file = path.join(dir, STATE_FILE);
  let s: unknown;
  try {
    s = await readJsonFile(where, file, READ_LIMITS.config);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT' || err.code === 'ENOTDIR') throw new TrainerError('ERR_CHECKPOINT_NOT_FOUND', `${where}: no checkpoint in ${dir} (no ${STATE_FILE})`, { path: dir });
    // The reader's message, about the file by its name (the message names the whole path once).
    const reason = err.message.replace(`${where}: ${file}`, STATE_FILE);
    throw new TrainerError('ERR_CHECKPOINT_DAMAGED', `${where}: ${file} is damaged: ${reason}`, { path: file, reason, cause: e });
  }
  const known = isRecord(s) && ((s.format === FORMAT && s.version === VERSION) || (s.format === V1_FORMAT && s.version === 1));
  if (!known) {
    throw new TrainerError('ERR_CHECKPOINT_FORMAT', `${where}: ${file} is not a checkpoint of a version this library reads (${FORMAT} ${VERSION}, or ${V1_FORMAT} 1)`, { path: file });
  }
  const problem = stateProblem(s as Record<string, unknown>);
  if (problem) throw new TrainerError('ERR_CHECKPOINT_DAMAGED', `${where}: ${file} is damaged: ${problem}`, { path: file, reason: problem });
  return s as unknown as StateV1 | StateV2;
}

/**
 * Reads the step, the data position and the metadata of the checkpoint in `dir` (written by a
 * Trainer), without loading it; first puts back a previous checkpoint that a kill in the middle of a
 * checkpoint write left aside. Throws a TrainerError: ERR_CHECKPOINT_NOT_FOUND, ERR_CHECKPOINT_DAMAGED
 * (trainer_state.json cannot be read or is not JSON, or a field is wrong: `reason` says which),
 * ERR_CHECKPOINT_FORMAT (another format or version).
 */
export async function readCheckpoint(dir: string): Promise<CheckpointInfo> {
  if (typeof dir !== 'string' || dir === '') throw typeError('readCheckpoint', 'dir', 'a directory path', dir);
  return checkpointInfo(await readState(dir));
}

function checkpointInfo(s: StateV1 | StateV2): CheckpointInfo {
  return {
    version: s.version,
    step: s.step,
    totalSteps: s.totalSteps,
    stepsPerEpoch: s.stepsPerEpoch,
    rng: { seed: BigInt(s.rng.seed), offset: BigInt(s.rng.offset) },
    metadata: s.version === 1 ? { data: s.data, args: s.args } : s.metadata,
  };
}

function checkCallback(where: string, name: string, f: unknown): void {
  if (f !== undefined && typeof f !== 'function') throw typeError(where, `options.${name}`, 'a function', f);
}

function rowTokens(b: TrainerBatch): number {
  return b.ids.reduce((s, r) => s + r.length, 0);
}

/**
 * A training run. Construct it with the model (or a loss function and the parameters), the data and
 * the options; optionally loadCheckpoint() to continue a run; then train(). Progress comes through
 * the callbacks (each awaited); stop() ends a train() at the next step boundary with a checkpoint.
 */
export class Trainer {
  readonly optimizer: AdamW;
  readonly schedule: LambdaLR;
  readonly params: Tensor[];
  /** Micro-batches per epoch. */
  readonly batchesPerEpoch: number;
  /** Optimiser steps per epoch: ceil(batchesPerEpoch / gradAccum). */
  readonly stepsPerEpoch: number;
  /** Steps of the whole run (every epoch); the schedule ends there. */
  readonly totalSteps: number;
  private _step = 0;
  private readonly ddp: DistributedDataParallel | null = null;
  /** The checkpoint this trainer last wrote or loaded (a run that fails says it is still there). */
  private lastCheckpoint: { dir: string; step: number } | null = null;
  private stopRequested = false;
  private running = false;
  private readonly o: Required<Pick<TrainerOptions, 'epochs' | 'maxSteps' | 'gradAccum' | 'lrSchedule' | 'warmupSteps' | 'maxGradNorm' | 'logEvery' | 'evalEvery' | 'saveEvery'>>;
  private readonly opts: TrainerOptions;
  private readonly source: BatchSource;
  private readonly lossOf: LossFunction;
  private readonly checkpointing: boolean = false;
  private readonly baseLr: number;
  private readonly baseWeightDecay: number;
  private readonly fixedOptions: { betas: [number, number]; eps: number; amsgrad: boolean };

  constructor(options: TrainerOptions) {
    const where = 'Trainer';
    const o = checkOptions(where, options) as TrainerOptions & Record<string, unknown>;
    checkKnownKeys(where, o, OPTION_KEYS);
    if (o.model !== undefined && !(o.model instanceof Module)) throw typeError(where, 'options.model', 'a Module', o.model);
    checkCallback(where, 'loss', o.loss);
    for (const k of ['saveModel', 'loadModel', 'onStep', 'onLog', 'onEval', 'onCheckpoint'] as const) checkCallback(where, k, o[k]);
    const model = o.model;
    if (o.gradientCheckpointing !== undefined && checkBool(where, 'options.gradientCheckpointing', o.gradientCheckpointing)) {
      const enable = (model as { gradientCheckpointingEnable?: unknown } | undefined)?.gradientCheckpointingEnable;
      if (typeof enable !== 'function') {
        throw typeError(where, 'options.model', 'a model with gradientCheckpointingEnable() (LlamaForCausalLM) with options.gradientCheckpointing', model);
      }
      this.checkpointing = true;
    }
    if (o.loss) {
      this.lossOf = o.loss;
    } else {
      const lossMethod = (model as { loss?: unknown } | undefined)?.loss;
      if (typeof lossMethod !== 'function') {
        throw typeError(where, 'options.model', 'a model with a loss(ids, labels) method (or give options.loss)', model);
      }
      const m = model as unknown as { loss(ids: number[][], labels?: number[][], layout?: BatchOptions): Tensor };
      this.lossOf = (b) => (b.layout !== undefined ? m.loss(b.ids, b.labels, b.layout) : b.labels === undefined ? m.loss(b.ids) : m.loss(b.ids, b.labels));
    }
    let params: Tensor[];
    if (o.params !== undefined) {
      if (o.params === null || typeof (o.params as Iterable<unknown>)[Symbol.iterator] !== 'function') {
        throw typeError(where, 'options.params', 'an iterable of tensors', o.params);
      }
      params = [...o.params];
    } else if (model) {
      params = getLoraAB(model);
      if (!params.length) params = [...model.parameters()].filter((p) => p.requiresGrad);
    } else {
      throw typeError(where, 'options.params', 'the tensors to train (needed without options.model)', undefined);
    }
    if (!params.length) throw new RangeError(`${where}: nothing to train (the model has no LoRA layers and no parameter with requiresGrad; did injectLora select any layer?)`);

    const int = (k: 'epochs' | 'maxSteps' | 'gradAccum' | 'warmupSteps' | 'logEvery' | 'evalEvery' | 'saveEvery', d: number, min: number) =>
      (o[k] === undefined ? d : checkInt(where, `options.${k}`, o[k], min));
    const maxGradNorm = o.maxGradNorm === undefined ? 1 : checkNumber(where, 'options.maxGradNorm', o.maxGradNorm);
    if (maxGradNorm < 0) throw new RangeError(`${where}: options.maxGradNorm must be >= 0 (0 = no clipping), got ${maxGradNorm}`);
    this.o = {
      epochs: int('epochs', 1, 1),
      maxSteps: int('maxSteps', 0, 0),
      gradAccum: int('gradAccum', 1, 1),
      warmupSteps: int('warmupSteps', 0, 0),
      logEvery: int('logEvery', 1, 1),
      evalEvery: int('evalEvery', 0, 0),
      saveEvery: int('saveEvery', 0, 0),
      lrSchedule: o.lrSchedule === undefined ? 'constant' : checkOneOf(where, 'options.lrSchedule', o.lrSchedule, SCHEDULES),
      maxGradNorm,
    };
    if (o.checkpointDir !== undefined && (typeof o.checkpointDir !== 'string' || o.checkpointDir === '')) {
      throw typeError(where, 'options.checkpointDir', 'a directory path', o.checkpointDir);
    }
    if (this.o.saveEvery > 0 && o.checkpointDir === undefined) throw new RangeError(`${where}: options.saveEvery needs options.checkpointDir`);
    if (o.metadata !== undefined && (o.metadata === null || typeof o.metadata !== 'object' || Array.isArray(o.metadata))) {
      throw typeError(where, 'options.metadata', 'an object (stored as JSON)', o.metadata);
    }
    if (o.eval !== undefined && typeof o.eval !== 'function' && (o.eval === null || typeof (o.eval as Iterable<unknown>)[Symbol.iterator] !== 'function')) {
      throw typeError(where, 'options.eval', 'an iterable of batches or a function returning one', o.eval);
    }

    const train = o.train as unknown;
    if (Array.isArray(train)) {
      if (!train.length) throw new RangeError(`${where}: options.train has no batches`);
      const list = train as TrainerBatch[];
      this.source = { batchesPerEpoch: list.length, batch: (_e, i) => list[i] };
    } else if (train !== null && typeof train === 'object' && typeof (train as BatchSource).batch === 'function') {
      const n = (train as BatchSource).batchesPerEpoch;
      checkInt(where, 'options.train.batchesPerEpoch', n, 1);
      this.source = train as BatchSource;
    } else {
      throw typeError(where, 'options.train', 'an array of batches { ids, labels? } or a BatchSource { batchesPerEpoch, batch(epoch, index) }', train);
    }
    this.batchesPerEpoch = this.source.batchesPerEpoch;
    this.stepsPerEpoch = Math.ceil(this.batchesPerEpoch / this.o.gradAccum);
    this.totalSteps = this.stepsPerEpoch * this.o.epochs;

    this.opts = o;
    this.params = params;
    if (o.distributed !== undefined && typeof o.distributed !== 'boolean') throw typeError(where, 'options.distributed', 'a boolean', o.distributed);
    if (o.distributed) {
      // Checks that every rank trains the same parameters, and gives them rank 0's values.
      this.ddp = new DistributedDataParallel(model ?? params, model ? { params } : {});
      const counts = new Array<number>(this.ddp.group.worldSize).fill(0);
      counts[this.ddp.group.rank] = this.source.batchesPerEpoch;
      const all = allReduceNumbers(counts, 'sum');
      if (all.some((n) => n !== all[0])) {
        throw new RangeError(`${where}: every rank needs the same number of micro-batches per epoch (options.train), got ${all.join(', ')} on ranks 0 to ${all.length - 1}`);
      }
    }
    // Its errors name this call and the option they come from.
    this.optimizer = new AdamW(params, o.optimizer,
      { where, params: o.params !== undefined ? 'options.params' : "the model's trainable parameters", options: 'options.optimizer' });
    this.baseLr = this.optimizer.paramGroups[0].lr;
    this.baseWeightDecay = this.optimizer.paramGroups[0].weightDecay;
    const g = this.optimizer.paramGroups[0];
    this.fixedOptions = { betas: [...g.betas], eps: g.eps, amsgrad: g.amsgrad };
    const numWarmupSteps = this.o.warmupSteps;
    if (this.o.lrSchedule === 'constant') {
      this.schedule = getConstantScheduleWithWarmup(this.optimizer, { numWarmupSteps });
    } else {
      if (numWarmupSteps > this.totalSteps) {
        throw new TrainerError('ERR_WARMUP_TOO_LONG',
          `${where}: warmupSteps ${numWarmupSteps} is more than the run's ${this.totalSteps} steps, after which the ${this.o.lrSchedule} schedule reaches 0`,
          { totalSteps: this.totalSteps, warmupSteps: numWarmupSteps });
      }
      const s = { numWarmupSteps, numTrainingSteps: this.totalSteps };
      this.schedule = this.o.lrSchedule === 'linear' ? getLinearScheduleWithWarmup(this.optimizer, s) : getCosineScheduleWithWarmup(this.optimizer, s);
    }
  }

  /** Optimiser steps done in all (restored by loadCheckpoint). */
  get step(): number {
    return this._step;
  }

  /** The step at which train() stops: totalSteps, or maxSteps when that is smaller. */
  get stopAt(): number {
    return this.o.maxSteps > 0 ? Math.min(this.totalSteps, this.o.maxSteps) : this.totalSteps;
  }

  /** Makes a running train() return after the current step (a half-accumulated step is abandoned), with a checkpoint. */
  stop(): void {
    this.stopRequested = true;
  }

  /**
   * Restores the run saved in `dir`: the trained weights, the optimiser state, the generator state
   * and the step (the schedule continues there). The learning rate and weight decay are this
   * trainer's (they may change between runs); the data must give the same steps per epoch, and the
   * optimiser state must fit the parameters. The optimiser is restored first and put back if the
   * weights then fail to load; the default weight loaders check everything before they change the
   * model. Throws TrainerError (readCheckpoint's codes, and ERR_CHECKPOINT_MISMATCH).
   */
  async loadCheckpoint(dir: string): Promise<CheckpointInfo> {
    const where = 'Trainer.loadCheckpoint';
    if (typeof dir !== 'string' || dir === '') throw typeError(where, 'dir', 'a directory path', dir);
    if (this.running) throw new Error(`${where}: train() is running`);
    const s = await readState(dir);
    if (s.stepsPerEpoch !== this.stepsPerEpoch) {
      const reason = `the checkpoint has ${s.stepsPerEpoch} steps per epoch, this run ${this.stepsPerEpoch}`;
      throw new TrainerError('ERR_CHECKPOINT_MISMATCH', `${where}: ${reason}`, { path: dir, mismatch: 'steps-per-epoch', reason });
    }
    const before = this.optimizer.stateDict();
    let restored = false;
    try {
      const file = path.join(dir, OPTIM_FILE);
      if (s.version === 1) {
        // Format 1 kept the scalars in trainer_state.json, and wrote no file before the first step.
        const scalars = { optimizer: 'AdamW' as const, steps: s.optimizer.steps, paramGroups: s.optimizer.paramGroups };
        if (pathExists(where, file)) await readOptimizerState(where, this.optimizer, file, scalars);
        else this.optimizer.loadStateDict({ state: {}, paramGroups: s.optimizer.paramGroups });
      } else {
        await loadOptimizerState(this.optimizer, file);
      }
      restored = true;
      // Each optimiser step advances a parameter's count by one at most, and a checkpoint after a step
      // has moments: an empty state there would restart them from zero, silently.
      const counts = [...this.optimizer.state.values()].map((st) => st.step);
      const damaged = (problem: string) => new TrainerError('ERR_CHECKPOINT_DAMAGED', `${where}: the checkpoint in ${dir} is damaged: ${problem}`, { path: dir, reason: problem });
      if (s.step > 0 && counts.length === 0) {
        throw damaged(`${OPTIM_FILE} holds no optimiser state (moments), but the checkpoint is at step ${s.step}`);
      }
      const ahead = counts.find((c) => c > s.step);
      if (ahead !== undefined) throw damaged(`${OPTIM_FILE} has a parameter at step ${ahead}, past the checkpoint's step ${s.step}`);
      // The run's own options win for lr and weight decay (below); the others define the run.
      const g = this.optimizer.paramGroups[0];
      const want = this.fixedOptions;
      const got = { betas: g.betas, eps: g.eps, amsgrad: g.amsgrad };
      if (JSON.stringify(got) !== JSON.stringify(want)) {
        throw new Error(`its optimiser has ${JSON.stringify(got)}, this run ${JSON.stringify(want)}`);
      }
      await (this.opts.loadModel ?? ((d: string) => this.loadWeights(d)))(dir);
    } catch (e) {
      if (restored) this.optimizer.loadStateDict(before);
      if (e instanceof TrainerError) throw e;
      const reason = (e as Error).message;
      throw new TrainerError('ERR_CHECKPOINT_MISMATCH', `${where}: the checkpoint in ${dir} does not fit this run: ${reason}`,
        { path: dir, mismatch: 'state', reason, cause: e });
    } finally {
      for (const st of Object.values(before.state)) {
        st.expAvg.dispose();
        st.expAvgSq.dispose();
        st.maxExpAvgSq?.dispose();
      }
    }
    for (const g of this.optimizer.paramGroups) {
      g.lr = this.baseLr;
      g.weightDecay = this.baseWeightDecay;
    }
    this.schedule.loadStateDict({ lastStep: s.step, baseLrs: [this.baseLr] });
    setRngState({ seed: BigInt(s.rng.seed), offset: BigInt(s.rng.offset) });
    this._step = s.step;
    this.lastCheckpoint = { dir: path.resolve(dir), step: s.step };
    return checkpointInfo(s);
  }

  /**
   * Runs steps until the last epoch ends, maxSteps is reached or stop() is called. Before every
   * checkpoint, and at the end also without checkpoints, the trained weights and the optimiser's
   * moments are checked: NaN or Inf stops the run with ERR_NONFINITE_WEIGHTS and nothing is saved,
   * so the checkpoint already in checkpointDir stays the last good one. A loss that is not finite
   * stops it with ERR_NONFINITE_LOSS (or ERR_NONFINITE_WEIGHTS when the weights already are not).
   */
  async train(): Promise<TrainResult> {
    const where = 'Trainer.train';
    if (this.running) throw new Error(`${where}: already running`);
    this.running = true;
    try {
      return await this.run();
    } finally {
      this.running = false;
      this.stopRequested = false;
    }
  }

  private async run(): Promise<TrainResult> {
    const { o, opts, optimizer, schedule, params } = this;
    const model = opts.model;
    const stopAt = this.stopAt;
    const startStep = this._step;
    if (this.ddp) {
      // Every rank must continue from the same step (a resume reads checkpointDir on each rank).
      const steps = new Array<number>(this.ddp.group.worldSize).fill(0);
      steps[this.ddp.group.rank] = startStep;
      const all = allReduceNumbers(steps, 'sum');
      if (all.some((v) => v !== all[0])) {
        throw Object.assign(new Error(`Trainer.train: the ranks are at different steps (${all.join(', ')} on ranks 0 to ${all.length - 1}); a resumed run must load the same checkpoint on every rank (put checkpointDir on a file system they share)`),
          { code: 'ERR_DIST_MISMATCH' });
      }
    }
    if (startStep >= stopAt) {
      return { step: startStep, totalSteps: this.totalSteps, stepsRun: 0, reason: startStep >= this.totalSteps ? 'done' : 'max-steps', checkpoint: null };
    }
    model?.train();
    if (this.checkpointing) (model as unknown as { gradientCheckpointingEnable(): void }).gradientCheckpointingEnable();
    let rngAtStep = getRngState();
    let checkpoint: string | null = null;
    let current = this._step + 1;
    let win = { loss: 0, norm: 0, steps: 0, tokens: 0, start: performance.now() };
    /** Stops the run when the trained weights (or the optimiser's moments) hold NaN or Inf, before anything is saved. */
    const requireFinite = (context = '') => {
      const bad = this.nonFinite();
      if (!bad) return;
      const dir = opts.checkpointDir;
      const last = dir !== undefined && this.lastCheckpoint?.dir === path.resolve(dir) ? this.lastCheckpoint.step : undefined;
      const kept = dir === undefined ? '' : last !== undefined ? `; ${dir} keeps the checkpoint of step ${last}` : `; ${dir} is left as it was`;
      throw new TrainerError('ERR_NONFINITE_WEIGHTS',
        `Trainer: the trained weights hold NaN or Inf after step ${this._step} (${bad})${context}; nothing was saved${kept}`,
        { step: this._step, tensor: bad, ...(dir === undefined ? {} : { path: dir }), ...(last === undefined ? {} : { checkpointStep: last }) });
    };
    const writeCheckpoint = async (reason: CheckpointReason) => {
      // Also without checkpoints: a run must not end as done with weights that are not numbers.
      requireFinite();
      const dir = opts.checkpointDir;
      if (dir === undefined) return;
      if (!this.ddp || this.ddp.group.rank === 0) {
        await this.writeCheckpointTo(dir, rngAtStep);
        await opts.onCheckpoint?.({ step: this._step, dir, reason });
      }
      // The other ranks go on once it is complete (a resume reads it on every rank).
      if (this.ddp) barrier();
      checkpoint = dir;
    };
    try {
      // Across ranks, only a stop agreed in a step's reduction ends the loop: a rank that left on its
      // own stop() would leave the others waiting in the next step's.
      let agreedStop = false;
      while (this._step < stopAt && !(this.ddp ? agreedStop : this.stopRequested)) {
        const step = this._step;
        const epoch = Math.floor(step / this.stepsPerEpoch);
        const first = (step % this.stepsPerEpoch) * o.gradAccum;
        const count = Math.min(o.gradAccum, this.batchesPerEpoch - first);
        rngAtStep = getRngState();
        current = step + 1;
        let lossSum = 0;
        let tokens = 0;
        let abandoned = false;
        for (let k = 0; k < count; k++) {
          const b = this.source.batch(epoch, first + k);
          const loss = this.lossOf(b);
          const v = loss.item();
          if (!Number.isFinite(v)) {
            loss.dispose();
            // Weights that are already not numbers are the cause: say so (the fix is not the same).
            requireFinite(`, so the loss of step ${step + 1} is ${v}`);
            throw new TrainerError('ERR_NONFINITE_LOSS', `Trainer: the training loss became ${v} at step ${step + 1}`, { step: step + 1, loss: v });
          }
          const scaled = count > 1 ? loss.mul(1 / count) : loss;
          scaled.backward();
          if (scaled !== loss) scaled.dispose();
          loss.dispose();
          lossSum += v;
          tokens += b.tokens ?? rowTokens(b);
          if (k < count - 1) {
            await yieldToEventLoop();
            // Across ranks a stop is agreed at step boundaries only (below).
            if (this.stopRequested && !this.ddp) {
              abandoned = true;
              break;
            }
          }
        }
        if (abandoned) {
          // The half-accumulated step is dropped, to be redone after a resume.
          optimizer.zeroGrad();
          setRngState(rngAtStep);
          break;
        }
        let stepLoss = lossSum / count;
        if (this.ddp) {
          // The job's gradient: the mean of the ranks' (each the mean over its micro-batches).
          this.ddp.syncGradients();
          const [l, t, stop] = allReduceNumbers([stepLoss, tokens, this.stopRequested ? 1 : 0], 'sum');
          stepLoss = l / this.ddp.group.worldSize;
          tokens = t;
          // One rank's stop() (its Ctrl-C) stops every rank after this step.
          if (stop > 0) agreedStop = true;
        }
        const lr = optimizer.paramGroups[0].lr;
        let gradNorm: number | null = null;
        if (o.maxGradNorm > 0) {
          const norm = clipGradNorm(params, o.maxGradNorm);
          gradNorm = norm.item();
          norm.dispose();
          win.norm += gradNorm;
        }
        optimizer.step();
        schedule.step();
        optimizer.zeroGrad();
        this._step = step + 1;
        rngAtStep = getRngState();
        win.loss += stepLoss;
        win.steps++;
        win.tokens += tokens;
        if (this._step % o.logEvery === 0 || this._step === stopAt) {
          const secs = (performance.now() - win.start) / 1000;
          const info: TrainerLogInfo = {
            step: this._step, totalSteps: this.totalSteps, epoch, loss: win.loss / win.steps, lr,
            gradNorm: o.maxGradNorm > 0 ? win.norm / win.steps : null, tokensPerSecond: win.tokens / Math.max(secs, 1e-9),
          };
          win = { loss: 0, norm: 0, steps: 0, tokens: 0, start: performance.now() };
          await opts.onLog?.(info);
        }
        await opts.onStep?.({ step: this._step, totalSteps: this.totalSteps, epoch, loss: stepLoss, lr, gradNorm, tokens });
        if (opts.eval !== undefined && o.evalEvery > 0 && (this._step % o.evalEvery === 0 || this._step === this.totalSteps)) {
          const ev = this.evaluate();
          if (ev) await opts.onEval?.({ step: this._step, ...ev });
        }
        if (o.saveEvery > 0 && this._step % o.saveEvery === 0 && this._step < stopAt) await writeCheckpoint('periodic');
        await yieldToEventLoop();
      }
      const stopped = this._step < stopAt;
      const reason = stopped ? 'stopped' : this._step >= this.totalSteps ? 'done' : 'max-steps';
      await writeCheckpoint(reason === 'done' ? 'end' : reason);
      return { step: this._step, totalSteps: this.totalSteps, stepsRun: this._step - startStep, reason, checkpoint };
    } catch (e) {
      if ((e as { code?: string }).code === 'ERR_OUT_OF_MEMORY' && !(e instanceof TrainerError)) {
        throw new TrainerError('ERR_OUT_OF_MEMORY', `Trainer: out of memory at step ${current}: ${(e as Error).message}`, { step: current, cause: e });
      }
      throw e;
    }
  }

  /**
   * The mean loss over options.eval (weighted by each batch's `targets`), without a graph and with the
   * model in eval mode; null when there are no batches. The generator state is put back afterwards,
   * so evaluating (how often, or not at all) never changes the training that follows.
   */
  evaluate(): { loss: number; targets: number } | null {
    const data = this.opts.eval;
    if (data === undefined) return null;
    const model = this.opts.model;
    const wasTraining = model?.training;
    const rng = getRngState();
    model?.eval();
    let sum = 0;
    let n = 0;
    try {
      noGrad(() => {
        for (const b of typeof data === 'function' ? data() : data) {
          const l = this.lossOf(b);
          const w = b.targets ?? 1;
          sum += l.item() * w;
          n += w;
          l.dispose();
        }
      });
    } finally {
      if (model && wasTraining !== undefined) model.train(wasTraining);
      setRngState(rng);
    }
    return n > 0 ? { loss: sum / n, targets: n } : null;
  }

  /**
   * Writes a checkpoint of the run as it is now into `dir` (replaced as a whole): the weights
   * (saveModel), the optimiser state (optimizer.safetensors) and trainer_state.json (step, generator
   * state, metadata). train() calls it by itself; use it to save between train() calls. Weights or
   * optimiser moments holding NaN or Inf are never written: ERR_NONFINITE_WEIGHTS, and `dir` keeps
   * what it had. A write that fails leaves the previous checkpoint as it was and throws
   * ERR_CHECKPOINT_WRITE, saying which checkpoint is left (`previousStep`).
   */
  async saveCheckpoint(dir: string, rng = getRngState()): Promise<void> {
    const where = 'Trainer.saveCheckpoint';
    if (typeof dir !== 'string' || dir === '') throw typeError(where, 'dir', 'a directory path', dir);
    const bad = this.nonFinite();
    if (bad) {
      throw new TrainerError('ERR_NONFINITE_WEIGHTS', `${where}: ${bad} holds NaN or Inf (step ${this._step}); nothing was saved, ${dir} is left as it was`,
        { step: this._step, tensor: bad, path: dir });
    }
    await this.writeCheckpointTo(dir, rng);
  }

  /**
   * The first trained tensor, or optimiser moment of one, that holds NaN or Inf (by its name in the
   * model, else its index in params); null when every value is finite.
   */
  private nonFinite(): string | null {
    const names = new Map<Tensor, string>();
    if (this.opts.model) for (const [n, p] of this.opts.model.namedParameters()) names.set(p, `'${n}'`);
    const nameOf = (p: Tensor, i: number) => names.get(p) ?? `params[${i}]`;
    for (const [i, p] of this.params.entries()) {
      p._checkLive('Trainer');
      if (!allFinite(p)) return nameOf(p, i);
    }
    for (const [i, p] of this.params.entries()) {
      const st = this.optimizer.state.get(p);
      if (!st) continue;
      for (const [k, t] of [['exp_avg', st.expAvg], ['exp_avg_sq', st.expAvgSq], ['max_exp_avg_sq', st.maxExpAvgSq]] as const) {
        if (t && !allFinite(t)) return `the optimiser's ${k} of ${nameOf(p, i)}`;
      }
    }
    return null;
  }

  private async writeCheckpointTo(dir: string, rng: { seed: bigint; offset: bigint }): Promise<void> {
    const state: StateV2 = {
      format: FORMAT,
      version: VERSION,
      step: this._step,
      totalSteps: this.totalSteps,
      stepsPerEpoch: this.stepsPerEpoch,
      rng: { seed: String(rng.seed), offset: String(rng.offset) },
      metadata: this.opts.metadata ?? {},
    };
    try {
      await fs.promises.mkdir(path.dirname(path.resolve(dir)), { recursive: true });
      await replaceDir(dir, async (tmp) => {
        await (this.opts.saveModel ?? ((d: string) => this.saveWeights(d)))(tmp);
        await saveOptimizerState(this.optimizer, path.join(tmp, OPTIM_FILE));
        await writeFileAtomic(path.join(tmp, STATE_FILE), JSON.stringify(state, null, 2) + '\n');
      });
    } catch (e) {
      // The file system's refusals (ENOSPC, EIO, EACCES, …); other errors (out of memory, a bug) pass as they are.
      const code = (e as NodeJS.ErrnoException).code;
      if (e instanceof TrainerError || typeof code !== 'string' || !/^E[A-Z0-9]+$/.test(code)) throw e;
      // What is left to resume from, in the message: a full disk must not read as a lost run.
      const previousStep = await stepOf(dir);
      const aside = previousStep === null ? asideDirs(dir, isCheckpoint)[0] : undefined;
      const left = previousStep !== null ? `the previous checkpoint there (step ${previousStep}) is intact`
        : aside !== undefined ? `the previous checkpoint waits in ${aside}, where loadCheckpoint (readCheckpoint) finds and restores it`
          : 'there was no checkpoint there before';
      const reason = (e as Error).message;
      throw new TrainerError('ERR_CHECKPOINT_WRITE', `Trainer.saveCheckpoint: could not write the checkpoint of step ${this._step} to ${dir} (${reason}); ${left}`,
        { path: dir, step: this._step, reason, previousStep: previousStep ?? (aside !== undefined ? await stepOf(aside) : null), cause: e });
    }
    this.lastCheckpoint = { dir: path.resolve(dir), step: this._step };
  }

  /** The default saveModel: the adapter for a model with LoRA layers, else the params by index. */
  private async saveWeights(dir: string): Promise<void> {
    const model = this.opts.model;
    if (model && loraLayers(model).some(([, m]) => m.r > 0)) {
      await saveAdapter(model, dir);
      return;
    }
    await saveSafetensors(path.join(dir, PARAMS_FILE), Object.fromEntries(this.params.map((p, i) => [`params.${i}`, p])));
  }

  private async loadWeights(dir: string): Promise<void> {
    const model = this.opts.model;
    if (model && loraLayers(model).some(([, m]) => m.r > 0)) {
      const want = loraLayers(model).filter(([, m]) => m.r > 0).map(([n]) => n);
      // loadAdapter checks every key and shape before it changes anything, including which layers it adapts.
      const loaded = await loadAdapter(model, dir);
      if (loaded.slice().sort().join() !== want.slice().sort().join()) throw new Error(`it adapts ${loaded.join(', ')}, this run ${want.join(', ')}`);
      return;
    }
    const st = await SafetensorsFile.open(path.join(dir, PARAMS_FILE));
    const values: Tensor[] = [];
    try {
      const keys = this.params.map((_, i) => `params.${i}`);
      const extra = st.keys().filter((k) => !keys.includes(k));
      if (extra.length) throw new Error(`${PARAMS_FILE} has ${describe(extra)}, which are not among this run's ${keys.length} parameters`);
      for (const [i, p] of this.params.entries()) {
        const e = st.entry(keys[i]);
        if (e.shape.join() !== p.shape.join()) throw new Error(`${keys[i]} has shape [${e.shape.join(', ')}], the parameter [${p.shape.join(', ')}]`);
        values.push(await st.read(keys[i], { dtype: p.dtype }));
      }
      noGrad(() => this.params.forEach((p, i) => p.copy_(values[i])));
    } finally {
      for (const t of values) t.dispose();
      st.close();
    }
  }
}
