// Adam and AdamW, numerically matching torch.optim.Adam / AdamW. The update of
// every parameter in a group runs in one native call (a multi-tensor step).
import { Tensor } from './tensor';
import { zeros } from './creation';
import { keep } from './scope';
import { assertTensor } from './checks';
import { clearGrads } from './autograd';
import { adamStep } from './ops/optim';
import { DeviceSpec } from './device';
import { checkBool, checkNumber, checkKnownKeys, describe, rangeError, typeError } from './errors';
import { SafetensorsFile, saveSafetensors } from './safetensors';
import { mergedAdapterRole } from './lora';
import { MAX_JSON_CONTAINERS, MAX_JSON_DEPTH, scanJsonShape } from './fsio';

export interface AdamOptions {
  /** Learning rate (> 0). Default 1e-3. */
  lr?: number;
  /** Decay rates of the moment estimates, each in [0, 1). Default [0.9, 0.999]. */
  betas?: [number, number];
  /** Added to the denominator (>= 0). Default 1e-8. */
  eps?: number;
  /** L2 penalty for Adam (default 0); decoupled decay for AdamW (default 1e-2). */
  weightDecay?: number;
  /** Use the maximum of past squared-gradient averages (AMSGrad). Default false. */
  amsgrad?: boolean;
}

export interface ParamGroup {
  params: Tensor[];
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
  amsgrad: boolean;
}

/** A group of parameters with its own options (torch's param groups). */
export interface ParamGroupInput extends AdamOptions {
  params: Iterable<Tensor>;
}

/** What Adam.stateDict() returns and loadStateDict() takes. */
export interface AdamStateDict {
  state: Record<number, { step: number; expAvg: Tensor; expAvgSq: Tensor; maxExpAvgSq?: Tensor }>;
  paramGroups: (Omit<ParamGroup, 'params'> & { numParams: number })[];
}

interface AdamState {
  step: number;
  expAvg: Tensor;
  expAvgSq: Tensor;
  maxExpAvgSq: Tensor | null;
}

// Moment estimates start at exactly zero (not p * 0, which is NaN where p is Inf).
function zerosLike(p: Tensor): Tensor {
  // Optimiser state outlives any tidy() scope a step runs in.
  return keep(zeros(p.shape, { dtype: p.dtype, device: p.device as DeviceSpec }));
}

const OPTION_KEYS = ['lr', 'betas', 'eps', 'weightDecay', 'amsgrad'] as const;

/**
 * @internal How the constructor's errors name the call and its arguments, for a caller that builds
 * the optimiser from arguments of its own (Trainer: 'options.params', 'options.optimizer').
 */
export interface AdamNaming {
  where: string;
  params: string;
  options: string;
}

export class Adam {
  readonly paramGroups: ParamGroup[] = [];
  /** Per-parameter state (step count and moment estimates), created on the first step. */
  readonly state = new Map<Tensor, AdamState>();
  protected readonly decoupled: boolean;
  protected readonly name: string;

  constructor(params: Iterable<Tensor> | Iterable<ParamGroupInput>, options?: AdamOptions, /** @internal */ naming?: AdamNaming) {
    this.decoupled = new.target === AdamW;
    this.name = this.decoupled ? 'AdamW' : 'Adam';
    const where = naming?.where ?? this.name;
    const P = naming?.params ?? 'params';
    const O = naming?.options ?? 'options';
    if (options !== undefined && (options === null || typeof options !== 'object' || Array.isArray(options))) {
      throw typeError(where, O, 'an object', options);
    }
    const o = (options ?? {}) as Record<string, unknown>;
    checkKnownKeys(naming ? `${where}: ${O}` : where, o, OPTION_KEYS);
    const defaults = this.resolve(where, O, o, {
      lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weightDecay: this.decoupled ? 1e-2 : 0, amsgrad: false,
    });
    if (params === null || typeof params !== 'object' || typeof (params as Iterable<unknown>)[Symbol.iterator] !== 'function') {
      throw typeError(where, P, 'an iterable of tensors or of parameter groups', params);
    }
    const list = [...(params as Iterable<unknown>)];
    if (list.length === 0) throw new RangeError(`${where}: ${P} is empty (nothing to optimise; did injectLora select any layer?)`);
    const flat = list.some((p) => p instanceof Tensor);
    if (flat) {
      const bad = list.findIndex((p) => !(p instanceof Tensor));
      if (bad >= 0) throw typeError(where, `${P}[${bad}]`, 'a Tensor (a list of tensors, or of parameter groups, not both)', list[bad]);
    }
    const groups = flat ? [{ params: list as Tensor[] }] : (list as ParamGroupInput[]);
    const seen = new Set<Tensor>();
    groups.forEach((g, gi) => {
      if (g === null || typeof g !== 'object' || g instanceof Tensor || !('params' in g)) {
        throw typeError(where, `${P}[${gi}]`, 'a Tensor or a parameter group { params, ...options }', g);
      }
      const { params: ps, ...rest } = g;
      checkKnownKeys(`${where}: ${P}[${gi}]`, rest as Record<string, unknown>, OPTION_KEYS);
      const group = this.resolve(where, `${P}[${gi}]`, rest as Record<string, unknown>, defaults);
      const tensors = [...(ps as Iterable<unknown>)];
      tensors.forEach((p, i) => {
        const what = flat ? `${P}[${i}]` : `${P}[${gi}].params[${i}]`;
        assertTensor(where, what, p);
        p._checkLive(where, what);
        if (p.dtype === 'int32') throw rangeError(where, `${what}.dtype`, 'float32, float64, bfloat16 or float16', p.dtype);
        if (!p.isLeaf) throw new TypeError(`${where}: ${what} is not a leaf tensor (it was computed by ${p.gradFn}); optimise the parameters themselves`);
        if (seen.has(p)) throw new RangeError(`${where}: ${what} appears more than once`);
        seen.add(p);
      });
      this.paramGroups.push({ ...group, params: tensors as Tensor[] });
    });
  }

  /**
   * Checks options against defaults `d`. A learning rate must be > 0 when given to the constructor;
   * later (`step`, `loadStateDict`) 0 is allowed too, which schedules reach (warm-up from 0, decay to 0).
   */
  private resolve(where: string, prefix: string, o: Record<string, unknown>, d: Omit<ParamGroup, 'params'>, zeroLr = false): Omit<ParamGroup, 'params'> {
    let lr = d.lr;
    if (o.lr !== undefined) {
      lr = checkNumber(where, `${prefix}.lr`, o.lr);
      if (zeroLr ? lr < 0 : lr <= 0) throw rangeError(where, `${prefix}.lr`, zeroLr ? 'a number >= 0' : 'a number > 0', o.lr);
    }
    let betas = d.betas;
    if (o.betas !== undefined) {
      const b = o.betas as unknown[];
      if (!Array.isArray(b) || b.length !== 2) throw typeError(where, `${prefix}.betas`, 'a pair [beta1, beta2]', o.betas);
      b.forEach((v, i) => {
        checkNumber(where, `${prefix}.betas[${i}]`, v);
        if ((v as number) < 0 || (v as number) >= 1) throw rangeError(where, `${prefix}.betas[${i}]`, 'in [0, 1)', v);
      });
      betas = [b[0] as number, b[1] as number];
    }
    const eps = o.eps === undefined ? d.eps : checkNumber(where, `${prefix}.eps`, o.eps);
    if (eps < 0) throw rangeError(where, `${prefix}.eps`, '>= 0', eps);
    const weightDecay = o.weightDecay === undefined ? d.weightDecay : checkNumber(where, `${prefix}.weightDecay`, o.weightDecay);
    if (weightDecay < 0) throw rangeError(where, `${prefix}.weightDecay`, '>= 0', weightDecay);
    const amsgrad = o.amsgrad === undefined ? d.amsgrad : checkBool(where, `${prefix}.amsgrad`, o.amsgrad);
    return { lr, betas, eps, weightDecay, amsgrad };
  }

  /** One update of every parameter that has a gradient (others are skipped, as in torch). */
  step(): void {
    const where = `${this.name}.step`;
    // Everything is checked before anything changes: the options of every group (they are public and
    // may have been edited since the constructor checked them) and every parameter and gradient. A
    // throw leaves the parameters, the moments and the step counts as they were.
    this.paramGroups.forEach((g, gi) => {
      this.resolve(where, `paramGroups[${gi}]`, g as unknown as Record<string, unknown>, g, true);
      g.params.forEach((p, i) => {
        if (!p.grad) return;
        p._checkLive(where);
        p.grad._checkLive(where);
        // A merged adapter's weight holds scale * B A as merged: a step on A or B would leave it stale
        // (and an unmerge would then take out something else than was added).
        const role = mergedAdapterRole(p);
        if (role) {
          throw new Error(`${where}: paramGroups[${gi}].params[${i}] is the ${role} of a LoRA adapter that is merged into its layer's weight, ` +
            'which would not follow the step; unmerge it first (unmergeLora(model) or layer.unmergeFromOrig())');
        }
      });
    });
    for (const g of this.paramGroups) {
      const ps: Tensor[] = [];
      const gs: Tensor[] = [];
      const ms: Tensor[] = [];
      const vs: Tensor[] = [];
      const vmax: Tensor[] = [];
      const steps: number[] = [];
      const touched: Tensor[] = [];
      for (const p of g.params) {
        if (!p.grad) continue;
        let s = this.state.get(p);
        if (!s) {
          s = { step: 0, expAvg: zerosLike(p), expAvgSq: zerosLike(p), maxExpAvgSq: g.amsgrad ? zerosLike(p) : null };
          this.state.set(p, s);
        }
        if (g.amsgrad && !s.maxExpAvgSq) s.maxExpAvgSq = zerosLike(p);
        ps.push(p);
        gs.push(p.grad);
        ms.push(s.expAvg);
        vs.push(s.expAvgSq);
        if (g.amsgrad) vmax.push(s.maxExpAvgSq as Tensor);
        steps.push(s.step + 1);
        touched.push(p);
      }
      if (!ps.length) continue;
      adamStep(ps, gs, ms, vs, g.amsgrad ? vmax : null, steps,
        { lr: g.lr, beta1: g.betas[0], beta2: g.betas[1], eps: g.eps, weightDecay: g.weightDecay, decoupled: this.decoupled });
      for (const p of touched) {
        (this.state.get(p) as AdamState).step++;
        p._bumpVersion();
      }
    }
  }

  /**
   * The optimiser's state for checkpoints, like torch's: per parameter (by its
   * index over all groups, in order) the step count and moment estimates, and
   * the groups' options. The tensors are copies.
   */
  stateDict(): AdamStateDict {
    const state: AdamStateDict['state'] = {};
    let i = 0;
    for (const g of this.paramGroups) {
      for (const p of g.params) {
        const s = this.state.get(p);
        if (s) {
          state[i] = {
            step: s.step,
            expAvg: s.expAvg.clone(),
            expAvgSq: s.expAvgSq.clone(),
            ...(s.maxExpAvgSq ? { maxExpAvgSq: s.maxExpAvgSq.clone() } : {}),
          };
        }
        i++;
      }
    }
    const paramGroups = this.paramGroups.map(({ params, ...opts }) => ({ ...opts, betas: [...opts.betas] as [number, number], numParams: params.length }));
    return { state, paramGroups };
  }

  /**
   * Restores stateDict() output onto an optimiser over the same parameters. Everything is checked
   * before anything changes: the groups' sizes and every option of every group (all must be there),
   * each state's step and tensor shapes, and that a parameter of an amsgrad group has its
   * maxExpAvgSq (without it the run would silently restart the maximum from zero).
   */
  loadStateDict(sd: AdamStateDict): void {
    const where = `${this.name}.loadStateDict`;
    if (sd === null || typeof sd !== 'object' || sd.state === null || typeof sd.state !== 'object' || !Array.isArray(sd.paramGroups)) {
      throw typeError(where, 'stateDict', 'the object returned by stateDict()', sd);
    }
    if (sd.paramGroups.length !== this.paramGroups.length || sd.paramGroups.some((g, i) => g?.numParams !== this.paramGroups[i].params.length)) {
      throw new RangeError(`${where}: the state has groups of ${sd.paramGroups.map((g) => g?.numParams).join(', ')} parameters, this optimiser ${this.paramGroups.map((g) => g.params.length).join(', ')}`);
    }
    const groups = sd.paramGroups.map((g, i) => {
      const missing = OPTION_KEYS.filter((k) => g[k] === undefined);
      if (missing.length) throw new RangeError(`${where}: stateDict.paramGroups[${i}] lacks ${missing.join(', ')} (give the whole object returned by stateDict())`);
      const { numParams: _n, ...opts } = g;
      return this.resolve(where, `paramGroups[${i}]`, opts as Record<string, unknown>, this.paramGroups[i], true);
    });
    const params = this.paramGroups.flatMap((g) => g.params);
    const groupOf = this.paramGroups.flatMap((g, gi) => g.params.map(() => gi));
    for (const [k, s] of Object.entries(sd.state)) {
      const p = params[Number(k)];
      if (!p) throw rangeError(where, `state key`, `an index below ${params.length}`, k);
      if (s === null || typeof s !== 'object') throw typeError(where, `state[${k}]`, 'an object { step, expAvg, expAvgSq, maxExpAvgSq? }', s);
      for (const t of [s.expAvg, s.expAvgSq, ...(s.maxExpAvgSq ? [s.maxExpAvgSq] : [])]) {
        assertTensor(where, `state[${k}] tensor`, t);
        if (t.shape.join() !== p.shape.join()) throw rangeError(where, `state[${k}] shape`, `[${p.shape.join(', ')}]`, t.shape);
        t._checkLive(where, `a tensor of state[${k}]`);
      }
      if (!Number.isInteger(s.step) || s.step < 0) throw rangeError(where, `state[${k}].step`, 'a non-negative integer', s.step);
      if (groups[groupOf[Number(k)]].amsgrad && !s.maxExpAvgSq) {
        throw new RangeError(`${where}: state[${k}] has no maxExpAvgSq, which amsgrad needs (paramGroups[${groupOf[Number(k)]}].amsgrad is true)`);
      }
    }
    this.state.clear();
    for (const [k, s] of Object.entries(sd.state)) {
      const p = params[Number(k)];
      const copy = (t: Tensor) => zerosLike(p).copy_(t);
      this.state.set(p, { step: s.step, expAvg: copy(s.expAvg), expAvgSq: copy(s.expAvgSq), maxExpAvgSq: s.maxExpAvgSq ? copy(s.maxExpAvgSq) : null });
    }
    groups.forEach((g, i) => Object.assign(this.paramGroups[i], g));
  }

  /** Clears the gradients of every parameter (to null by default, like torch). */
  zeroGrad(setToNone = true): void {
    const where = `${this.name}.zeroGrad`;
    checkBool(where, 'setToNone', setToNone);
    clearGrads(where, this.paramGroups.flatMap((g) => g.params), setToNone);
  }
}

/** Adam with decoupled weight decay (Loshchilov & Hutter); weightDecay defaults to 1e-2. */
export class AdamW extends Adam {}

// ============================================================ state files

/** The metadata key of an optimiser state file that holds its scalars (JSON). */
const STATE_METADATA = 'lora_cuda.optimizer';
const STATE_FORMAT = 'lora-cuda-optimizer';
/** torch's names for the per-parameter tensors, as `state.<index>.<name>` in the file. */
const TENSOR_NAMES = { expAvg: 'exp_avg', expAvgSq: 'exp_avg_sq', maxExpAvgSq: 'max_exp_avg_sq' } as const;

/** What an optimiser state file holds besides its tensors: the step counts and the param groups. */
export interface OptimizerStateScalars {
  /** 'Adam' or 'AdamW' (the decay differs, so a state is not moved from one to the other). */
  optimizer: 'Adam' | 'AdamW';
  /** Each parameter's step count, by its index over all groups (parameters not yet stepped are absent). */
  steps: Record<string, number>;
  paramGroups: AdamStateDict['paramGroups'];
}

function optimizerName(optimizer: Adam): 'Adam' | 'AdamW' {
  return optimizer instanceof AdamW ? 'AdamW' : 'Adam';
}

function checkOptimizer(where: string, optimizer: unknown): Adam {
  if (!(optimizer instanceof Adam)) throw typeError(where, 'optimizer', 'an Adam or AdamW optimiser', optimizer);
  return optimizer;
}

/**
 * Writes the optimiser's whole state (stateDict(): every parameter's step count and moment tensors,
 * maxExpAvgSq included, and every group's options) to one safetensors file, atomically: the tensors as
 * `state.<i>.exp_avg`, `state.<i>.exp_avg_sq`, `state.<i>.max_exp_avg_sq` in their own dtype, the
 * scalars as JSON in the metadata (`lora_cuda.optimizer`). loadOptimizerState reads it back.
 */
export async function saveOptimizerState(optimizer: Adam, file: string): Promise<void> {
  const where = 'saveOptimizerState';
  checkOptimizer(where, optimizer);
  if (typeof file !== 'string' || file === '') throw typeError(where, 'file', 'a file path', file);
  const sd = optimizer.stateDict();
  const tensors: Record<string, Tensor> = {};
  const steps: Record<string, number> = {};
  for (const [i, s] of Object.entries(sd.state)) {
    steps[i] = s.step;
    for (const [field, name] of Object.entries(TENSOR_NAMES) as [keyof typeof TENSOR_NAMES, string][]) {
      const t = s[field];
      if (t) tensors[`state.${i}.${name}`] = t;
    }
  }
  const scalars = { format: STATE_FORMAT, version: 1, optimizer: optimizerName(optimizer), steps, paramGroups: sd.paramGroups };
  try {
    await saveSafetensors(file, tensors, { metadata: { [STATE_METADATA]: JSON.stringify(scalars) } });
  } finally {
    for (const t of Object.values(tensors)) t.dispose();
  }
}

/**
 * Restores a state written by saveOptimizerState onto an optimiser over the same parameters (same
 * groups, shapes and dtypes). The file is checked as a whole before the optimiser changes: its
 * scalars, that every stepped parameter has its moments (and maxExpAvgSq under amsgrad), that no
 * tensor is left over, and each tensor's dtype and shape.
 */
export async function loadOptimizerState(optimizer: Adam, file: string): Promise<void> {
  const where = 'loadOptimizerState';
  checkOptimizer(where, optimizer);
  if (typeof file !== 'string' || file === '') throw typeError(where, 'file', 'a file path', file);
  await readOptimizerState(where, optimizer, file, null);
}

/**
 * loadOptimizerState, with the scalars given instead of read from the file's metadata (checkpoints of
 * `lora-cuda finetune` format 1 kept them in trainer_state.json).
 */
export async function readOptimizerState(where: string, optimizer: Adam, file: string, given: OptimizerStateScalars | null): Promise<void> {
  const st = await SafetensorsFile._open(where, file);
  const read: Tensor[] = [];
  try {
    const fail = (msg: string): never => {
      throw new RangeError(`${where}: ${file}: ${msg}`);
    };
    let scalars = given;
    if (!scalars) {
      const raw = st.metadata[STATE_METADATA];
      if (raw === undefined) fail(`no "${STATE_METADATA}" metadata: not an optimiser state written by saveOptimizerState`);
      let parsed: unknown;
      // Bounded before JSON.parse: the metadata is a string in the header, so the header's own check does not see inside it.
      const shape = scanJsonShape(Buffer.from(raw as string, 'utf8'));
      if (shape.depth > MAX_JSON_DEPTH || shape.containers > MAX_JSON_CONTAINERS) {
        fail(`the "${STATE_METADATA}" metadata nests deeper than ${MAX_JSON_DEPTH} levels or holds more than ${MAX_JSON_CONTAINERS} objects and arrays`);
      }
      try {
        parsed = JSON.parse(raw as string);
      } catch (e) {
        fail(`the "${STATE_METADATA}" metadata is not JSON (${(e as Error).message})`);
      }
      const o = parsed as Record<string, unknown>;
      if (o === null || typeof o !== 'object' || o.format !== STATE_FORMAT || o.version !== 1) {
        fail(`the "${STATE_METADATA}" metadata is not format ${STATE_FORMAT} version 1`);
      }
      scalars = o as unknown as OptimizerStateScalars;
    }
    const { steps, paramGroups } = scalars;
    if (scalars.optimizer !== optimizerName(optimizer)) fail(`it holds the state of ${describe(scalars.optimizer)}, this optimiser is ${optimizerName(optimizer)}`);
    if (steps === null || typeof steps !== 'object' || Array.isArray(steps)) fail(`steps must be an object mapping parameter indices to step counts, got ${describe(steps)}`);
    if (!Array.isArray(paramGroups)) fail(`paramGroups must be an array, got ${describe(paramGroups)}`);
    const params = optimizer.paramGroups.flatMap((g) => g.params);
    const names = new Set(st.keys());
    const state: AdamStateDict['state'] = {};
    for (const [i, step] of Object.entries(steps)) {
      const p = params[Number(i)];
      if (!/^\d+$/.test(i) || !p) fail(`state for parameter ${describe(i)}, but this optimiser has ${params.length} parameters`);
      const entry: Partial<AdamStateDict['state'][number]> = { step };
      for (const [field, name] of Object.entries(TENSOR_NAMES) as [keyof typeof TENSOR_NAMES, string][]) {
        const key = `state.${i}.${name}`;
        if (!names.has(key)) {
          if (field === 'maxExpAvgSq') continue;
          fail(`no tensor "${key}": the state of parameter ${i} is incomplete`);
        }
        names.delete(key);
        const e = st.entry(key);
        const want = p.dtype === 'float64' ? 'F64' : 'F32';
        if (e.dtype !== want) fail(`"${key}" is ${e.dtype}, parameter ${i} is ${p.dtype}`);
        if (e.shape.join() !== p.shape.join()) fail(`"${key}" has shape [${e.shape.join(', ')}], parameter ${i} has [${p.shape.join(', ')}]`);
        const t = await st._readTensor(where, key, { dtype: p.dtype });
        read.push(t);
        entry[field] = t;
      }
      state[Number(i)] = entry as AdamStateDict['state'][number];
    }
    if (names.size) fail(`tensors that belong to no stepped parameter: ${[...names].slice(0, 8).join(', ')}`);
    try {
      optimizer.loadStateDict({ state, paramGroups });
    } catch (e) {
      fail((e as Error).message);
    }
  } finally {
    for (const t of read) t.dispose();
    st.close();
  }
}
