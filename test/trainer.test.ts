// The Trainer used from a plain Node program: a tiny Llama with LoRA, batches as arrays or from a
// BatchSource, the callbacks, checkpoints and a resume that ends bit for bit where an uninterrupted
// run does (amsgrad and dropout included), stop(), and its coded errors.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  LlamaForCausalLM, LoRALinear, Trainer, TrainerError, getLoraAB, getRngState, injectLora, loraLayers, manualSeed,
  readCheckpoint, tensor,
} from '../lib';
import type { AdamOptions, BatchSource, TrainerBatch, TrainerOptions, TrainerStepInfo } from '../lib';
import { SafetensorsFile, saveSafetensors } from '../lib/safetensors';
import { loadCases } from './helpers/llama-weights';
import { bits } from './helpers/state';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-trainer-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const CONFIG = loadCases().cases.llama_gqa.config; // vocab 67, hidden 32, 2 layers

/** The same tiny Llama every time, with LoRA (dropout on by default) on q_proj and v_proj. */
function tinyModel(dropout = 0.1, targetModules = ['q_proj', 'v_proj']): LlamaForCausalLM {
  manualSeed(11);
  const model = new LlamaForCausalLM(CONFIG);
  injectLora(model, { r: 4, alpha: 8, dropout, targetModules });
  return model;
}

/** 10 sequences "count up from k" (learnable), prompt-masked labels on half of them. */
function examples(): TrainerBatch[] {
  return Array.from({ length: 10 }, (_, k) => {
    const ids = Array.from({ length: 6 }, (_, t) => 3 + ((k + t) % 60));
    return { ids: [ids], labels: [k % 2 ? ids : [-100, -100, ...ids.slice(2)]] };
  });
}

/** Micro-batches of 2 in an order that depends on the epoch, as a BatchSource. */
function shuffledSource(): BatchSource & { calls: string[] } {
  const ex = examples();
  const calls: string[] = [];
  return {
    calls,
    batchesPerEpoch: 5,
    batch(epoch, index) {
      calls.push(`${epoch}:${index}`);
      const order = ex.map((_, i) => (i * 3 + epoch * 7) % 10);
      const pick = order.slice(index * 2, index * 2 + 2).map((i) => ex[i]);
      return { ids: pick.flatMap((b) => b.ids), labels: pick.flatMap((b) => b.labels!), tokens: 12 };
    },
  };
}

function weights(model: LlamaForCausalLM): string[] {
  return getLoraAB(model).map(bits);
}

// 5 micro-batches, gradAccum 2 -> 3 steps per epoch (the last has 1 micro-batch); 3 epochs = 9 steps.
const RUN: Omit<TrainerOptions, 'model' | 'train'> = {
  epochs: 3, gradAccum: 2, optimizer: { lr: 0.02, amsgrad: true, weightDecay: 0.01 }, lrSchedule: 'cosine', warmupSteps: 2, maxGradNorm: 0.5,
};

test('a Node training loop: batches in, loss down, callbacks with step, lr, norm, tokens/s and eval', async () => {
  // The head is adapted too: with a frozen random head a tiny model cannot sharpen its logits.
  const model = tinyModel(0, ['q_proj', 'v_proj', 'lm_head']);
  const data = examples();
  const steps: TrainerStepInfo[] = [];
  const logs: number[] = [];
  const evals: [number, number, number][] = [];
  const trainer = new Trainer({
    model,
    train: data,
    eval: data.slice(0, 2).map((b) => ({ ...b, targets: 4 })),
    epochs: 6,
    gradAccum: 5,
    optimizer: { lr: 0.05 },
    lrSchedule: 'linear',
    warmupSteps: 3,
    maxGradNorm: 0,
    logEvery: 4,
    evalEvery: 5,
    onStep: (s) => void steps.push(s),
    onLog: (l) => {
      expect(l.tokensPerSecond).toBeGreaterThan(0);
      expect(l.gradNorm).toBeNull();
      logs.push(l.step);
    },
    onEval: (e) => void evals.push([e.step, e.loss, e.targets]),
  });
  expect([trainer.batchesPerEpoch, trainer.stepsPerEpoch, trainer.totalSteps]).toEqual([10, 2, 12]);
  const before = trainer.evaluate()!;
  const r = await trainer.train();
  expect(r).toEqual({ step: 12, totalSteps: 12, stepsRun: 12, reason: 'done', checkpoint: null });
  expect(steps.map((s) => [s.step, s.epoch])).toEqual(Array.from({ length: 12 }, (_, i) => [i + 1, Math.floor(i / 2)]));
  // transformers' linear schedule: step k uses 0.05 * f(k - 1), f(s) = s / 3 during the warm-up, then (12 - s) / 9.
  const f = (s: number) => (s < 3 ? s / 3 : (12 - s) / 9);
  steps.forEach((s, i) => expect(s.lr).toBeCloseTo(0.05 * f(i), 12));
  expect(steps.every((s) => s.gradNorm === null && s.tokens === 30)).toBe(true);
  expect(logs).toEqual([4, 8, 12]);
  expect(evals.map((e) => [e[0], e[2]])).toEqual([[5, 8], [10, 8], [12, 8]]);
  expect(evals[2][1]).toBeLessThan(before.loss);
  expect(steps[11].loss).toBeLessThan(0.7 * steps[0].loss);
  expect(model.training).toBe(true);
  // Nothing left to do: train() returns at once.
  expect(await trainer.train()).toMatchObject({ stepsRun: 0, reason: 'done' });
});

describe('checkpoints and resume', () => {
  let straight: string[];
  let straightLosses: number[];
  beforeAll(async () => {
    const model = tinyModel();
    const losses: number[] = [];
    const r = await new Trainer({ model, train: shuffledSource(), ...RUN, onStep: (s) => void losses.push(s.loss) }).train();
    expect(r.step).toBe(9);
    straight = weights(model);
    straightLosses = losses;
  });

  test('an amsgrad run stopped at maxSteps and resumed by a new Trainer ends bit-identical to an uninterrupted one', async () => {
    const dir = path.join(tmp, 'resume', 'checkpoint');
    const first = tinyModel();
    const reasons: string[] = [];
    const r1 = await new Trainer({
      model: first, train: shuffledSource(), ...RUN, maxSteps: 4, saveEvery: 3, checkpointDir: dir, metadata: { note: 'mine' },
      onCheckpoint: (c) => void reasons.push(`${c.step}:${c.reason}`),
    }).train();
    expect(r1).toEqual({ step: 4, totalSteps: 9, stepsRun: 4, reason: 'max-steps', checkpoint: dir });
    expect(reasons).toEqual(['3:periodic', '4:max-steps']);
    expect(fs.readdirSync(dir).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors', 'optimizer.safetensors', 'trainer_state.json']);
    expect(fs.readdirSync(path.dirname(dir))).toEqual(['checkpoint']); // no temporary directory left
    const info = await readCheckpoint(dir);
    expect(info).toMatchObject({ version: 2, step: 4, totalSteps: 9, stepsPerEpoch: 3, metadata: { note: 'mine' } });

    // A new process, in effect: the model rebuilt as before, a new Trainer, the checkpoint.
    const second = tinyModel();
    manualSeed(999); // the generator state comes from the checkpoint
    const source = shuffledSource();
    const losses: number[] = [];
    const trainer = new Trainer({ model: second, train: source, ...RUN, checkpointDir: dir, onStep: (s) => void losses.push(s.loss) });
    expect(await trainer.loadCheckpoint(dir)).toMatchObject({ step: 4 });
    expect(trainer.step).toBe(4);
    expect(getRngState()).toEqual(info.rng);
    const r2 = await trainer.train();
    expect(r2).toMatchObject({ step: 9, stepsRun: 5, reason: 'done' });
    expect(source.calls[0]).toBe('1:2'); // step 5 is the second of epoch 1: micro-batches 2 and 3
    expect(losses).toEqual(straightLosses.slice(4));
    expect(weights(second)).toEqual(straight);
  });

  test('stop() ends the run after the current step with a checkpoint; mid-accumulation the step is abandoned and redone', async () => {
    const dir = path.join(tmp, 'stop', 'checkpoint');
    const model = tinyModel();
    let trainer: Trainer;
    let microBatches = 0;
    const source = shuffledSource();
    // Stop while the second micro-batch of step 5 would come next: the trainer yields between micro-batches.
    const wrapped: BatchSource = {
      batchesPerEpoch: source.batchesPerEpoch,
      batch: (e, i) => {
        if (++microBatches === 8) setImmediate(() => trainer.stop()); // 8th micro-batch = first of step 5
        return source.batch(e, i);
      },
    };
    trainer = new Trainer({ model, train: wrapped, ...RUN, checkpointDir: dir });
    const r = await trainer.train();
    expect(r).toMatchObject({ step: 4, reason: 'stopped', checkpoint: dir });
    expect((await readCheckpoint(dir)).step).toBe(4);
    const resumed = tinyModel();
    const t2 = new Trainer({ model: resumed, train: shuffledSource(), ...RUN });
    await t2.loadCheckpoint(dir);
    await t2.train();
    expect(weights(resumed)).toEqual(straight);

    // stop() from a callback: the step in progress finishes.
    const m3 = tinyModel();
    const t3: Trainer = new Trainer({ model: m3, train: shuffledSource(), ...RUN, checkpointDir: dir, onStep: (s) => { if (s.step === 2) t3.stop(); } });
    expect(await t3.train()).toMatchObject({ step: 2, reason: 'stopped' });
    expect((await readCheckpoint(dir)).step).toBe(2);
  });

  test('a loss function and plain parameters, without a model: the parameters are checkpointed by index', async () => {
    const make = () => {
      const w = tensor([[0.5, -0.25], [0.1, 0.3]]).requiresGrad_(true);
      const x = tensor([[1, 2], [3, 4]]);
      const loss = (b: TrainerBatch) => { const d = w.matmul(x).sub(tensor(b.ids)); return d.mul(d).mean(); };
      return { w, options: { loss, params: [w], train: [{ ids: [[1, 0], [0, 1]] }, { ids: [[2, 1], [1, 2]] }], epochs: 4, optimizer: { lr: 0.1 } } };
    };
    const a = make();
    await new Trainer(a.options).train();
    const dir = path.join(tmp, 'plain');
    const b = make();
    await new Trainer({ ...b.options, maxSteps: 3, checkpointDir: dir }).train();
    expect(fs.readdirSync(dir).sort()).toEqual(['optimizer.safetensors', 'params.safetensors', 'trainer_state.json']);
    const c = make();
    const t = new Trainer(c.options);
    await t.loadCheckpoint(dir);
    await t.train();
    expect(bits(c.w)).toBe(bits(a.w));
  });

  test('checkpoints that do not fit are refused with a code, and the optimiser is left as it was', async () => {
    const dir = path.join(tmp, 'fit', 'checkpoint');
    await new Trainer({ model: tinyModel(), train: shuffledSource(), ...RUN, maxSteps: 2, checkpointDir: dir }).train();

    const code = async (p: Promise<unknown>) => p.then(() => 'resolved', (e: TrainerError) => {
      expect(e).toBeInstanceOf(TrainerError);
      return `${e.code}${e.mismatch ? `/${e.mismatch}` : ''}: ${e.reason ?? e.message}`;
    });
    const other = new Trainer({ model: tinyModel(), train: examples(), ...RUN }); // 10 micro-batches: 5 steps per epoch
    expect(await code(other.loadCheckpoint(dir))).toBe('ERR_CHECKPOINT_MISMATCH/steps-per-epoch: the checkpoint has 3 steps per epoch, this run 5');
    const plain = new Trainer({ model: tinyModel(), train: shuffledSource(), ...RUN, optimizer: { ...RUN.optimizer, amsgrad: false } });
    expect(await code(plain.loadCheckpoint(dir))).toMatch(/^ERR_CHECKPOINT_MISMATCH\/state: its optimiser has \{"betas":\[0\.9,0\.999\],"eps":1e-8,"amsgrad":true\}, this run .*"amsgrad":false\}$/);
    expect(plain.optimizer.state.size).toBe(0);
    expect(plain.step).toBe(0);
    // The adapter of another rank: the optimiser state is put back when the weights do not load.
    manualSeed(11);
    const r8 = new LlamaForCausalLM(CONFIG);
    injectLora(r8, { r: 8, alpha: 8, targetModules: ['q_proj', 'v_proj'] });
    const wrongRank = new Trainer({ model: r8, train: shuffledSource(), ...RUN });
    expect(await code(wrongRank.loadCheckpoint(dir))).toMatch(/^ERR_CHECKPOINT_MISMATCH\/state: .*shape/);
    expect(wrongRank.optimizer.state.size).toBe(0);
    expect((loraLayers(r8)[0][1] as LoRALinear).r).toBe(8);

    expect(await code(readCheckpoint(path.join(tmp, 'nothing-here')))).toMatch(/^ERR_CHECKPOINT_NOT_FOUND: readCheckpoint: no checkpoint in/);
    const damaged = path.join(tmp, 'damaged');
    fs.mkdirSync(damaged);
    fs.writeFileSync(path.join(damaged, 'trainer_state.json'), '{"step": 3,');
    expect(await code(readCheckpoint(damaged))).toMatch(/^ERR_CHECKPOINT_DAMAGED: /);
    fs.writeFileSync(path.join(damaged, 'trainer_state.json'), '{"format": "something", "version": 9}');
    expect(await code(readCheckpoint(damaged))).toMatch(/^ERR_CHECKPOINT_FORMAT: readCheckpoint: .* is not a checkpoint of a version this library reads/);
  });
});

test('a damaged checkpoint is refused with ERR_CHECKPOINT_DAMAGED and its fault, before anything is restored', async () => {
  const dir = path.join(tmp, 'damaged-fields', 'checkpoint');
  await new Trainer({ model: tinyModel(), train: shuffledSource(), ...RUN, maxSteps: 2, checkpointDir: dir }).train();
  const stateFile = path.join(dir, 'trainer_state.json');
  const good = fs.readFileSync(stateFile, 'utf8');
  const fault = (p: Promise<unknown>) => p.then(() => 'resolved', (e: TrainerError) => `${e.code}: ${e.reason}`);
  const cases: [Record<string, unknown>, string][] = [
    [{ step: 100 }, 'ERR_CHECKPOINT_DAMAGED: "step" 100 is past "totalSteps" 9'],
    [{ step: -5 }, 'ERR_CHECKPOINT_DAMAGED: "step" must be an integer >= 0, got -5'],
    [{ rng: { seed: '0', offset: '1e3' } }, 'ERR_CHECKPOINT_DAMAGED: "rng.offset" must be a decimal string of an integer in [0, 2^64), got "1e3"'],
    [{ rng: { seed: String(2n ** 64n), offset: '0' } }, 'ERR_CHECKPOINT_DAMAGED: "rng.seed" must be a decimal string of an integer in [0, 2^64), got "18446744073709551616"'],
    [{ metadata: [] }, 'ERR_CHECKPOINT_DAMAGED: "metadata" must be an object, got []'],
  ];
  for (const [change, want] of cases) {
    fs.writeFileSync(stateFile, JSON.stringify({ ...JSON.parse(good), ...change }));
    expect(await fault(readCheckpoint(dir))).toBe(want);
  }
  fs.writeFileSync(stateFile, good);
  // The optimiser's step counts: a parameter past the checkpoint's step.
  const optim = path.join(dir, 'optimizer.safetensors');
  const st = await SafetensorsFile.open(optim);
  const tensors = Object.fromEntries(await Promise.all(st.keys().map(async (k) => [k, await st.read(k)] as const)));
  const meta = JSON.parse(st.metadata['lora_cuda.optimizer']);
  st.close();
  meta.steps['0'] = 5;
  await saveSafetensors(optim, tensors, { metadata: { 'lora_cuda.optimizer': JSON.stringify(meta) } });
  const t = new Trainer({ model: tinyModel(), train: shuffledSource(), ...RUN });
  expect(await fault(t.loadCheckpoint(dir))).toBe("ERR_CHECKPOINT_DAMAGED: optimizer.safetensors has a parameter at step 5, past the checkpoint's step 2");
  expect(t.optimizer.state.size).toBe(0);
  expect(t.step).toBe(0);
});

describe('errors', () => {
  test('a loss that stops being finite: ERR_NONFINITE_LOSS with the step', async () => {
    let calls = 0;
    const p = tensor([1]).requiresGrad_(true);
    const trainer = new Trainer({
      params: [p], train: [{ ids: [[0]] }], epochs: 5,
      loss: () => (++calls === 3 ? p.mul(Number.NaN).sum() : p.mul(2).sum()),
    });
    const e = await trainer.train().then(() => null, (err: TrainerError) => err);
    expect(e).toBeInstanceOf(TrainerError);
    expect({ code: e!.code, step: e!.step, loss: e!.loss, message: e!.message }).toEqual({
      code: 'ERR_NONFINITE_LOSS', step: 3, loss: Number.NaN, message: 'Trainer: the training loss became NaN at step 3',
    });
    expect(trainer.step).toBe(2);
  });

  test('weights that stop being finite are never saved: the last good checkpoint stays, ERR_NONFINITE_WEIGHTS', async () => {
    // AdamW's decay multiplies p by 1 - lr * weightDecay = 1 - 1e299 each step: finite after step 1
    // in float64, infinite after step 2; the loss 2p stays finite at step 2.
    const dir = path.join(tmp, 'nonfinite');
    const p = tensor([1], { dtype: 'float64' }).requiresGrad_(true);
    const trainer = new Trainer({
      params: [p], train: [{ ids: [[0]] }], epochs: 4, saveEvery: 1, checkpointDir: dir, maxGradNorm: 0,
      optimizer: { lr: 0.1, weightDecay: 1e300 }, loss: () => p.mul(2).sum(),
    });
    const e = await trainer.train().then(() => null, (err: TrainerError) => err);
    expect(e).toBeInstanceOf(TrainerError);
    expect({ code: e!.code, step: e!.step, tensor: e!.tensor, path: e!.path, checkpointStep: e!.checkpointStep })
      .toEqual({ code: 'ERR_NONFINITE_WEIGHTS', step: 2, tensor: 'params[0]', path: dir, checkpointStep: 1 });
    expect(e!.message).toBe(`Trainer: the trained weights hold NaN or Inf after step 2 (params[0]); nothing was saved; ${dir} keeps the checkpoint of step 1`);
    expect((await readCheckpoint(dir)).step).toBe(1);
    // saveCheckpoint refuses too, and leaves the directory as it was.
    await expect(trainer.saveCheckpoint(dir)).rejects.toMatchObject({
      code: 'ERR_NONFINITE_WEIGHTS', message: `Trainer.saveCheckpoint: params[0] holds NaN or Inf (step 2); nothing was saved, ${dir} is left as it was`,
    });
    expect((await readCheckpoint(dir)).step).toBe(1);
    // The checkpoint resumes: its weights are the finite ones of step 1.
    const q = tensor([0], { dtype: 'float64' }).requiresGrad_(true);
    const again = new Trainer({ params: [q], train: [{ ids: [[0]] }], epochs: 4, optimizer: { lr: 0.1, weightDecay: 1e300 }, loss: () => q.sum() });
    await again.loadCheckpoint(dir);
    expect(Number.isFinite(q.item())).toBe(true);
  });

  test('without checkpoints, a run whose weights became NaN does not end as done; a NaN loss from NaN weights says so', async () => {
    const poisoned = (steps: number) => {
      const model = tinyModel(0);
      const [name, layer] = loraLayers(model)[0];
      const trainer = new Trainer({
        model, train: examples().slice(0, steps), optimizer: { lr: 0.01 },
        onStep: ({ step }) => void (step === 1 && layer.A!.fill_(Number.NaN)),
      });
      return { trainer, tensor: `'${name}.A'` };
    };
    const one = poisoned(1);
    await expect(one.trainer.train()).rejects.toMatchObject({
      code: 'ERR_NONFINITE_WEIGHTS', step: 1, tensor: one.tensor,
      message: `Trainer: the trained weights hold NaN or Inf after step 1 (${one.tensor}); nothing was saved`,
    });
    const three = poisoned(3);
    await expect(three.trainer.train()).rejects.toMatchObject({
      code: 'ERR_NONFINITE_WEIGHTS', step: 1, tensor: three.tensor,
      message: `Trainer: the trained weights hold NaN or Inf after step 1 (${three.tensor}), so the loss of step 2 is NaN; nothing was saved`,
    });
  });

  test('out of memory in a step becomes ERR_OUT_OF_MEMORY with the step', async () => {
    const p = tensor([1]).requiresGrad_(true);
    const trainer = new Trainer({
      params: [p], train: [{ ids: [[0]] }], epochs: 3, loss: () => p.sum(),
      onStep: ({ step }) => {
        if (step === 2) throw Object.assign(new Error('out of memory allocating 8 bytes'), { code: 'ERR_OUT_OF_MEMORY' });
      },
    });
    await expect(trainer.train()).rejects.toMatchObject({ code: 'ERR_OUT_OF_MEMORY', step: 2, message: 'Trainer: out of memory at step 2: out of memory allocating 8 bytes' });
  });

  test('options are checked when the Trainer is made', () => {
    const model = tinyModel();
    const train = examples();
    expect(() => new Trainer({ model, train, lrSchedule: 'cosine', warmupSteps: 11 })).toThrow(
      expect.objectContaining({ code: 'ERR_WARMUP_TOO_LONG', totalSteps: 10, warmupSteps: 11 }));
    expect(() => new Trainer({ model, train, saveEvery: 2 })).toThrow('Trainer: options.saveEvery needs options.checkpointDir');
    expect(() => new Trainer({ model, train: [] })).toThrow('Trainer: options.train has no batches');
    expect(() => new Trainer({ model, train, epochs: 0 })).toThrow(/options\.epochs must be an integer >= 1, got 0/);
    expect(() => new Trainer({ model, train, lrSchedule: 'step' as 'linear' })).toThrow(/options\.lrSchedule must be one of "constant", "linear", "cosine"/);
    expect(() => new Trainer({ model, train, epoch: 2 } as TrainerOptions)).toThrow(/unknown option "epoch"/);
    expect(() => new Trainer({ train, loss: () => tensor([0]) })).toThrow(/options\.params must be the tensors to train/);
    expect(() => new Trainer({ train } as TrainerOptions)).toThrow(/options\.model must be a model with a loss\(ids, labels\) method/);
    expect(() => new Trainer({ model, train: { batchesPerEpoch: 0, batch: () => train[0] } })).toThrow(/batchesPerEpoch must be an integer >= 1/);
  });

  test("the optimiser's errors name the Trainer and the option they come from", () => {
    const p = tensor([1]).requiresGrad_(true);
    const base: TrainerOptions = { params: [p], train: [{ ids: [[0]] }], loss: () => p.sum() };
    expect(() => new Trainer({ ...base, optimizer: { lr: -1 } })).toThrow(/^Trainer: options\.optimizer\.lr must be a number > 0, got -1$/);
    expect(() => new Trainer({ ...base, optimizer: { beta: 0.9 } as AdamOptions })).toThrow(/^Trainer: options\.optimizer: unknown option "beta" \(known: lr, /);
    expect(() => new Trainer({ ...base, optimizer: 5 as AdamOptions })).toThrow(/^Trainer: options\.optimizer must be an object, got 5$/);
    expect(() => new Trainer({ ...base, params: [p, tensor([1], { dtype: 'int32' })] })).toThrow(/^Trainer: options\.params\[1\]\.dtype must be float32, float64, bfloat16 or float16, got "int32"$/);
    const gone = tensor([1]).requiresGrad_(true);
    gone.dispose();
    expect(() => new Trainer({ ...base, params: [p, gone] })).toThrow(/^Trainer: options\.params\[1\] has been disposed$/);
  });
});

test('evaluate() leaves the generator and the training flag as they were', () => {
  const model = tinyModel();
  const trainer = new Trainer({ model, train: examples(), eval: examples() });
  const rng = getRngState();
  model.train();
  const r = trainer.evaluate()!;
  expect(r.targets).toBe(10);
  expect(Number.isFinite(r.loss)).toBe(true);
  expect(getRngState()).toEqual(rng);
  expect(model.training).toBe(true);
  expect(new Trainer({ model, train: examples() }).evaluate()).toBeNull();
});
