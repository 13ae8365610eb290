// Half-precision models end to end: checkpoints loaded in bfloat16/float16 (dtype 'auto' as
// transformers' torch_dtype="auto"), a small Llama's logits and loss in bf16 against PyTorch
// (test/fixtures/generate_llama_half.py), LoRA with float32 adapters on a bf16 base (PEFT's
// autocast_adapter_dtype), merging with one rounding, saved dtypes, and the CLI's --dtype.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  Adam, Embedding, F, LoRAEmbedding, LoRALinear, clipGradNorm, Linear, LlamaForCausalLM, Module, RMSNorm, Tensor, getLoraAB, injectLora, loadAdapter, manualSeed,
  mergeLora, noGrad, randn, saveAdapter, saveMerged, tensor,
} from '../lib';
import { SafetensorsFile, saveSafetensors } from '../lib/safetensors';
import { toHalfBits } from '../lib/ops/memory';
import { main } from '../lib/cli/index';
import { CliIO } from '../lib/cli/io';
import { LlamaCase, formulaValues, loadCases, writeCheckpoint } from './helpers/llama-weights';
import { finetuneFixture } from './helpers/finetune-fixture';

interface HalfCase extends LlamaCase {
  logits_f64: number[];
  loss_f64: number;
}
const half: { batch: number; seq: number; cases: Record<string, HalfCase> } = JSON.parse(
  fs.readFileSync(path.join(__dirname, 'fixtures', 'llama-half.json'), 'utf8'));
const f32Cases = loadCases().cases;

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-half-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** A checkpoint directory of a fixture case, written once per (case, stored dtype, config edit). */
async function checkpoint(name: string, c: LlamaCase, dtype: 'F32' | 'F16' | 'BF16', config?: Record<string, unknown>): Promise<string> {
  const dir = path.join(tmp, `${name}-${dtype}${config ? `-${Object.keys(config).join('-')}` : ''}`);
  if (!fs.existsSync(dir)) {
    const cfg = { ...c.config, ...config };
    for (const [k, v] of Object.entries(cfg)) if (v === undefined) delete cfg[k];
    await writeCheckpoint(dir, { ...c, config: cfg }, { dtype });
  }
  return dir;
}

function bitsOf(t: { dtype: string }): number[] {
  return Array.from(toHalfBits(t as never));
}

describe('fromPretrained dtype', () => {
  const c = half.cases.llama_gqa; // config.json says torch_dtype "bfloat16"

  test("'auto' takes config.json's torch_dtype: a BF16 checkpoint keeps its bits", async () => {
    const dir = await checkpoint('gqa', c, 'BF16');
    const model = await LlamaForCausalLM.fromPretrained(dir, { dtype: 'auto' });
    const st = await SafetensorsFile.open(path.join(dir, 'model.safetensors'));
    for (const [name, p] of model.namedParameters()) {
      expect(p.dtype).toBe('bfloat16');
      const raw = await st.readRaw(name);
      expect(bitsOf(p)).toEqual(Array.from(new Uint16Array(raw.buffer, raw.byteOffset, raw.length / 2)));
    }
    st.close();
  });

  test("without a torch_dtype, 'auto' takes the dtype of the checkpoint's first float tensor", async () => {
    const dir = await checkpoint('gqa', c, 'F16', { torch_dtype: undefined });
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')).torch_dtype).toBeUndefined();
    const model = await LlamaForCausalLM.fromPretrained(dir, { dtype: 'auto' });
    expect(new Set([...model.parameters()].map((p) => p.dtype))).toEqual(new Set(['float16']));
  });

  test('without options.dtype the weights are float32 (transformers\' default), the BF16 values exactly', async () => {
    const model = await LlamaForCausalLM.fromPretrained(await checkpoint('gqa', c, 'BF16'));
    const w = model.model.layers.at(0).self_attn.q_proj.weight;
    expect(w.dtype).toBe('float32');
    const want = tensor(formulaValues('model.layers.0.self_attn.q_proj.weight', [...w.shape]), { dtype: 'bfloat16' });
    expect(Array.from(w.toArray())).toEqual(Array.from(want.toArray()));
  });

  test('an explicit half dtype converts each tensor as it is read (rounded once), never the whole model through float32', async () => {
    const dir = await checkpoint('gqa', f32Cases.llama_gqa, 'F32');
    const reads: (string | undefined)[] = [];
    const orig = SafetensorsFile.prototype._readTensor;
    const spy = jest.spyOn(SafetensorsFile.prototype, '_readTensor').mockImplementation(function (this: SafetensorsFile, where, name, opts) {
      reads.push(opts?.dtype);
      return orig.call(this, where, name, opts);
    });
    const model = await LlamaForCausalLM.fromPretrained(dir, { dtype: 'bfloat16' }).finally(() => spy.mockRestore());
    // One read per stored tensor, each straight into bfloat16.
    expect(reads).toHaveLength(f32Cases.llama_gqa.params.length);
    expect(new Set(reads)).toEqual(new Set(['bfloat16']));
    const name = 'model.layers.1.mlp.down_proj.weight';
    const p = model.stateDict()[name];
    expect(bitsOf(p)).toEqual(bitsOf(tensor(formulaValues(name, [...p.shape]), { shape: [...p.shape], dtype: 'bfloat16' })));
  });

  test('a float16 overflow while loading names the tensor; unknown dtypes are refused', async () => {
    const dir = path.join(tmp, 'overflow');
    await writeCheckpoint(dir, f32Cases.llama_gqa);
    const file = path.join(dir, 'model.safetensors');
    const st = await SafetensorsFile.open(file);
    const all: Record<string, ReturnType<typeof tensor>> = {};
    for (const k of st.keys()) all[k] = await st.read(k);
    st.close();
    const key = 'model.layers.1.self_attn.k_proj.weight';
    const vals = all[key].toArray();
    vals[5] = 1e5;
    all[key] = tensor(vals, { shape: [...all[key].shape] });
    await saveSafetensors(file, all);
    await expect(LlamaForCausalLM.fromPretrained(dir, { dtype: 'float16' })).rejects.toThrow(
      `LlamaForCausalLM.fromPretrained: tensor "${key}" (F32) holds 100000 at index 5, beyond float16's range (largest finite value 65504); read it as 'float32' or 'bfloat16'`);
    await expect(LlamaForCausalLM.fromPretrained(dir, { dtype: 'bfloat17' as 'bfloat16' })).rejects.toThrow(
      'LlamaForCausalLM.fromPretrained: options.dtype must be one of "auto", "float32", "float64", "bfloat16", "float16", got "bfloat17"');
    const odd = await checkpoint('gqa', c, 'BF16', { torch_dtype: 'float8_e4m3fn' });
    await expect(LlamaForCausalLM.fromPretrained(odd, { dtype: 'auto' })).rejects.toThrow(
      /config\.json: torch_dtype must be one of "bfloat16", "float16", "float32", "float64" for dtype 'auto' \(or pass an explicit options\.dtype\), got "float8_e4m3fn"/);
  });
});

describe('Module.to({ dtype })', () => {
  class Net extends Module {
    emb = new Embedding(7, 4);
    lin = new Linear(4, 3);
    norm = new RMSNorm(3);
    head: Linear;
    constructor() {
      super();
      this.head = new Linear(4, 7, { bias: false });
      this.head.weight = this.emb.weight; // tied, as a Llama's embedding and head
      this.registerBuffer('ids', tensor([1, 2], { dtype: 'int32' }));
    }
    forward(): void {}
  }

  test('casts float parameters, buffers and gradients in place; int32 buffers and tied tensors stay as they are', () => {
    const net = new Net();
    const w = net.lin.weight;
    const before = Array.from(w.toArray());
    w.grad = tensor(new Float32Array(12).fill(0.1), { shape: [3, 4] });
    expect(net.to({ dtype: 'bfloat16' })).toBe(net);
    expect(net.lin.weight).toBe(w); // the same object (optimisers holding it stay valid)
    expect(w.dtype).toBe('bfloat16');
    expect(w.requiresGrad).toBe(true);
    expect(w.grad!.dtype).toBe('bfloat16');
    expect(bitsOf(w)).toEqual(bitsOf(tensor(before, { shape: [3, 4], dtype: 'bfloat16' })));
    for (const [, p] of net.namedParameters()) expect(p.dtype).toBe('bfloat16');
    expect((net as unknown as { ids: { dtype: string } }).ids.dtype).toBe('int32');
    expect(net.head.weight).toBe(net.emb.weight);
    net.to('float32');
    expect(w.dtype).toBe('float32');
    expect(Array.from(w.toArray())).toEqual(Array.from(tensor(before, { shape: [3, 4], dtype: 'bfloat16' }).toArray()));
    expect(() => net.to({ dtype: 'int32' as 'float32' })).toThrow(
      'Module.to: options.dtype must be one of "float32", "float64", "bfloat16", "float16", got "int32"');
    expect(() => net.to({ dtype: 'float16', colour: 1 } as never)).toThrow(/unknown option "colour"/);
  });
});

describe.each(Object.keys(half.cases))('bfloat16 %s', (name) => {
  const c = half.cases[name];

  test('logits and loss match PyTorch in bf16 (tolerances from the size of bf16 rounding)', async () => {
    const model = await LlamaForCausalLM.fromPretrained(await checkpoint(name, c, 'BF16'), { dtype: 'auto' });
    expect(model.lm_head.weight.dtype).toBe('bfloat16');
    const logits = noGrad(() => model.forward(c.input_ids));
    // Logits come out float32 (the head's bf16 values, upcast exactly, as transformers' logits.float()).
    expect(logits.dtype).toBe('float32');
    const got = logits.toArray() as Float32Array;
    const bits = new Uint32Array(got.buffer, got.byteOffset, got.length);
    expect(bits.every((b) => (b & 0xffff) === 0)).toBe(true);
    // PyTorch's own bf16 error against the float64 forward of the same (bf16) weights: the size of
    // bf16 rounding noise in this model. Two correct bf16 implementations that round at different
    // places (fused RMSNorm, rotary and attention round once where transformers rounds after each op)
    // each stay within about that of the exact result, so within twice it of each other; and this one
    // must be no less accurate than PyTorch's (its error at most 1.5 times PyTorch's).
    const torchErr = maxAbsDiff(c.logits, c.logits_f64);
    const diff = maxAbsDiff(got, c.logits);
    expect(diff).toBeLessThanOrEqual(2 * torchErr);
    expect(maxAbsDiff(got, c.logits_f64)).toBeLessThanOrEqual(1.5 * torchErr);
    // The loss is float32; cross-entropy moves by at most 2 max|Δlogit| (its gradient in the logits
    // has an L1 norm of at most 2), plus float32 evaluation noise.
    const loss = noGrad(() => model.loss(c.input_ids, c.labels));
    expect(loss.dtype).toBe('float32');
    expect(Math.abs(loss.item() - c.loss)).toBeLessThanOrEqual(2 * diff + 1e-5);
  });
});

describe('LoRA on a bfloat16 base', () => {
  const c = half.cases.llama_gqa;

  test('float32 adapters (PEFT autocast_adapter_dtype): a few Adam steps lower the loss; the base keeps its bits', async () => {
    const model = await LlamaForCausalLM.fromPretrained(await checkpoint('gqa', c, 'BF16'), { dtype: 'auto' });
    manualSeed(1);
    injectLora(model, { targetModules: ['q_proj', 'v_proj', 'down_proj'], r: 4, alpha: 8 });
    const base = model.model.layers.at(0).self_attn.q_proj as unknown as LoRALinear;
    const baseBits = bitsOf(base.origLinear.weight);
    const ab = getLoraAB(model);
    expect(new Set(ab.map((t) => t.dtype))).toEqual(new Set(['float32']));
    const opt = new Adam(ab, { lr: 2e-2 });
    model.train();
    const losses: number[] = [];
    for (let step = 0; step < 6; step++) {
      const loss = model.loss(c.input_ids, c.labels);
      expect(loss.dtype).toBe('float32');
      losses.push(loss.item());
      opt.zeroGrad();
      loss.backward();
      for (const t of ab) expect(t.grad!.dtype).toBe('float32');
      opt.step();
    }
    for (const t of ab) {
      const s = opt.state.get(t)!;
      expect([s.expAvg.dtype, s.expAvgSq.dtype]).toEqual(['float32', 'float32']);
    }
    expect(losses[losses.length - 1]).toBeLessThan(losses[0] - 0.05);
    expect(base.origLinear.weight.dtype).toBe('bfloat16');
    expect(bitsOf(base.origLinear.weight)).toEqual(baseBits);
    expect(base.origLinear.weight.grad).toBeNull();
  });

  test('the loss reads bf16 logits directly: the same loss and gradients as upcasting them first (transformers\' logits.float())', async () => {
    const model = await LlamaForCausalLM.fromPretrained(await checkpoint('gqa', c, 'BF16'), { dtype: 'auto' });
    manualSeed(3);
    injectLora(model, { targetModules: ['q_proj', 'v_proj'], r: 4, alpha: 8 });
    const ab = getLoraAB(model);
    // B starts at zero; give it values so that A's gradient is not zero too.
    noGrad(() => ab.filter((t) => t.shape[1] === 4).forEach((b) => b.copy_(randn([...b.shape], { std: 0.2 }))));
    const grads = (lossOf: () => Tensor) => {
      for (const t of ab) t.grad = null;
      const loss = lossOf();
      loss.backward();
      return { loss: loss.item(), dtype: loss.dtype, g: ab.map((t) => Array.from(t.grad!.toArray())) };
    };
    const direct = grads(() => model.loss(c.input_ids, c.labels));
    const upcast = grads(() => {
      const logits = model.forward(c.input_ids); // float32: the bf16 head upcast
      expect(logits.dtype).toBe('float32');
      const [B, T, V] = logits.shape;
      const targets: number[] = [];
      for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) targets.push(t + 1 < T ? c.labels[b][t + 1] : -100);
      return F.crossEntropy(logits.reshape(B * T, V), targets);
    });
    expect(direct.dtype).toBe('float32');
    // Both compute the cross entropy in float32 from the same bf16 logits (the half rows are widened
    // into the float32 rows' code) and round the logits' gradient once to bf16: the same bits.
    expect(direct.loss).toBe(upcast.loss);
    direct.g.forEach((g, i) => {
      expect(Math.max(...upcast.g[i].map(Math.abs))).toBeGreaterThan(0);
      expect(g).toEqual(upcast.g[i]);
    });
  });

  test('autocastAdapterDtype: false keeps the adapters in bfloat16', async () => {
    const model = await LlamaForCausalLM.fromPretrained(await checkpoint('gqa', c, 'BF16'), { dtype: 'auto' });
    injectLora(model, { targetModules: ['q_proj'], r: 2, autocastAdapterDtype: false });
    expect(new Set(getLoraAB(model).map((t) => t.dtype))).toEqual(new Set(['bfloat16']));
    const loss = model.loss(c.input_ids, c.labels);
    loss.backward();
    expect(getLoraAB(model).every((t) => t.grad!.dtype === 'bfloat16')).toBe(true);
    expect(() => new LoRALinear(new Linear(2, 2), { autocastAdapterDtype: 1 as never })).toThrow(/^LoRALinear: options\.autocastAdapterDtype must be a boolean/);
  });

  test('a float64 adapter on a bfloat16 layer is refused, naming both', () => {
    const layer = new LoRALinear(new Linear(4, 3, { dtype: 'bfloat16' }), { r: 2 });
    layer.A = randn([2, 4], { dtype: 'float64' });
    expect(() => layer.forward(randn([1, 4]).to('bfloat16'))).toThrow(
      'LoRALinear.forward: A is float64 but x is bfloat16; the adapters of a bfloat16 layer must be bfloat16 or float32');
  });
});

test('clipGradNorm clips float32 adapter gradients and bfloat16 gradients together (norm in float32)', () => {
  const a = tensor([0, 0], { dtype: 'float32' }).requiresGrad_(true);
  const h = tensor([0, 0], { dtype: 'bfloat16' }).requiresGrad_(true);
  a.grad = tensor([3, 0]);
  h.grad = tensor([0, 4], { dtype: 'bfloat16' });
  const norm = clipGradNorm([a, h], 1);
  expect(norm.dtype).toBe('float32');
  expect(norm.item()).toBe(5);
  // Each scaled in float32 (coefficient 1 / (5 + 1e-6)), the bf16 one rounded once.
  const coef = Math.fround(1 / Math.fround(5 + 1e-6));
  expect(Array.from(a.grad!.toArray())).toEqual([Math.fround(3 * coef), 0]);
  expect(h.grad!.dtype).toBe('bfloat16');
  expect(bitsOf(h.grad!)).toEqual(bitsOf(tensor([0, Math.fround(4 * coef)], { dtype: 'bfloat16' })));
});

test('DoRA, lora_bias and embedding adapters on half layers: float32 adapters, half outputs, merged results equal to the unmerged ones', () => {
  manualSeed(9);
  const x = randn([3, 8]).to('bfloat16');
  for (const opts of [{ useDora: true }, { loraBias: true }]) {
    const l = new LoRALinear(new Linear(8, 5, { dtype: 'bfloat16' }), { r: 2, alpha: 4, ...opts });
    noGrad(() => l.B!.copy_(randn([5, 2], { std: 0.3 })));
    if (l.loraBias) noGrad(() => l.loraBias!.copy_(randn([5], { std: 0.3 })));
    const extra = l.magnitude ?? l.loraBias!;
    expect([l.A!.dtype, l.B!.dtype, extra.dtype]).toEqual(['float32', 'float32', 'float32']);
    const y = l.forward(x);
    expect(y.dtype).toBe('bfloat16');
    y.to('float32').sum().backward();
    expect(extra.grad!.dtype).toBe('float32');
    const before = y.toArray();
    l.mergeToOrig();
    const after = noGrad(() => l.forward(x)).toArray();
    // One bf16 rounding of the weight and of the output apart: a few bf16 ulps of values of about 1.
    expect(maxAbsDiff(after, before)).toBeLessThan(0.05);
  }
  const emb = new Embedding(6, 4, { dtype: 'bfloat16' });
  const le = new LoRAEmbedding(emb, { r: 2, alpha: 2 });
  expect([le.A!.dtype, le.B!.dtype]).toEqual(['float32', 'float32']);
  noGrad(() => le.A!.copy_(randn([2, 6], { std: 0.5 })));
  const ids = tensor([[1, 4, 5]], { dtype: 'int32' });
  const ye = noGrad(() => le.forward(ids));
  expect(ye.dtype).toBe('bfloat16');
  le.mergeToOrig();
  expect(emb.weight.dtype).toBe('bfloat16');
  expect(maxAbsDiff(noGrad(() => le.forward(ids)).toArray(), ye.toArray())).toBeLessThan(0.05);
});

describe('merging into a half weight', () => {
  // W = 1 and ΔW = 2^-8 + 2^-17: 1 + ΔW lies just above the bf16 tie 1 + 2^-8, so one rounding gives
  // 1 + 2^-7 (0x3f81). Rounding ΔW to bf16 first (2^-8) would make it the tie, which rounds to 1 (even).
  const delta = 2 ** -8 + 2 ** -17;
  function layer(autocastAdapterDtype = true): LoRALinear {
    const lin = new Linear(2, 1, { bias: false, dtype: 'bfloat16' });
    noGrad(() => lin.weight.copy_(tensor([[1, 1]])));
    const l = new LoRALinear(lin, { r: 1, alpha: 1, autocastAdapterDtype });
    noGrad(() => {
      l.A!.copy_(tensor([[delta, -delta]]));
      l.B!.copy_(tensor([[1]]));
    });
    return l;
  }

  test('W + scale B A is computed in float32 and rounded once (round to nearest even)', () => {
    const l = layer();
    l.mergeToOrig();
    expect(bitsOf(l.origLinear.weight)).toEqual([0x3f81, 0x3f7f]);
    l.unmergeFromOrig();
    expect(l.origLinear.weight.dtype).toBe('bfloat16');
    // With bf16 adapters ΔW itself is a bf16 value (2^-8 exactly), so the sum is a tie.
    const b = layer(false);
    b.mergeToOrig();
    expect(bitsOf(b.origLinear.weight)).toEqual([0x3f80, 0x3f7f]);
  });

  test('saveMerged writes a bfloat16 checkpoint of a bfloat16 model; saveAdapter writes float32 adapters', async () => {
    const model = await LlamaForCausalLM.fromPretrained(await checkpoint('gqa', half.cases.llama_gqa, 'BF16'), { dtype: 'auto' });
    manualSeed(5);
    injectLora(model, { targetModules: ['q_proj', 'v_proj'], r: 4, alpha: 8 });
    noGrad(() => {
      for (const [n, t] of model.namedParameters()) if (n.endsWith('.B')) t.copy_(randn([...t.shape], { std: 0.2 }));
    });
    const adapterDir = path.join(tmp, 'bf16-adapter');
    await saveAdapter(model, adapterDir);
    const ad = await SafetensorsFile.open(path.join(adapterDir, 'adapter_model.safetensors'));
    expect(new Set(ad.keys().map((k) => ad.entry(k).dtype))).toEqual(new Set(['F32']));
    ad.close();
    const outDir = path.join(tmp, 'bf16-merged');
    await saveMerged(model, outDir);
    expect(JSON.parse(fs.readFileSync(path.join(outDir, 'config.json'), 'utf8')).torch_dtype).toBe('bfloat16');
    const st = await SafetensorsFile.open(path.join(outDir, 'model.safetensors'));
    expect(new Set(st.keys().map((k) => st.entry(k).dtype))).toEqual(new Set(['BF16']));
    // The merged weights are mergeLora's, bit for bit.
    mergeLora(model);
    const q = (model.model.layers.at(1).self_attn.q_proj as unknown as LoRALinear).origLinear.weight;
    const raw = await st.readRaw('model.layers.1.self_attn.q_proj.weight');
    expect(Array.from(new Uint16Array(raw.buffer, raw.byteOffset, raw.length / 2))).toEqual(bitsOf(q));
    st.close();
    // The adapter loads back into float32 layers on a bf16 base, its values exactly.
    const again = await LlamaForCausalLM.fromPretrained(await checkpoint('gqa', half.cases.llama_gqa, 'BF16'), { dtype: 'auto' });
    await loadAdapter(again, adapterDir);
    const a1 = getLoraAB(again);
    expect(new Set(a1.map((t) => t.dtype))).toEqual(new Set(['float32']));
  });
});

describe('lora-cuda --dtype', () => {
  function capture() {
    const out: string[] = [];
    const err: string[] = [];
    const io: CliIO = { stdout: (t) => out.push(t), stderr: (t) => err.push(t), isTTY: false, columns: 100 };
    return { io, stdout: () => out.join(''), stderr: () => err.join('') };
  }
  async function run(argv: string[]) {
    const c = capture();
    const code = await main(argv, c.io);
    return { code, stdout: c.stdout(), stderr: c.stderr() };
  }

  test('merge keeps the base checkpoint\'s dtype by default (auto) and takes --dtype', async () => {
    const modelDir = await checkpoint('gqa', half.cases.llama_gqa, 'BF16');
    const model = await LlamaForCausalLM.fromPretrained(modelDir, { dtype: 'auto' });
    manualSeed(2);
    injectLora(model, { targetModules: ['v_proj'], r: 2, alpha: 4 });
    const adapterDir = path.join(tmp, 'cli-adapter');
    await saveAdapter(model, adapterDir);
    const dtypeOf = (dir: string) => {
      const st = SafetensorsFile.openSync(path.join(dir, 'model.safetensors'));
      const all = new Set(st.keys().map((k) => st.entry(k).dtype));
      st.close();
      return [...all];
    };
    let r = await run(['merge', '--model', modelDir, '--adapter', adapterDir, '--out', path.join(tmp, 'cli-m1')]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/model\.safetensors \([\d.]+ KiB, bfloat16\)/);
    expect(dtypeOf(path.join(tmp, 'cli-m1'))).toEqual(['BF16']);
    r = await run(['merge', '--model', modelDir, '--adapter', adapterDir, '--out', path.join(tmp, 'cli-m2'), '--dtype', 'float32']);
    expect(r.code).toBe(0);
    expect(dtypeOf(path.join(tmp, 'cli-m2'))).toEqual(['F32']);
    expect(JSON.parse(fs.readFileSync(path.join(tmp, 'cli-m2', 'config.json'), 'utf8')).torch_dtype).toBe('float32');
  });

  test('finetune trains float32 adapters on a bfloat16 base (--dtype bfloat16), float32 by default on the cpu; generate takes --dtype', async () => {
    const { model: modelDir, data } = await finetuneFixture(path.join(tmp, 'ft'));
    const common = ['--model', modelDir, '--data', data, '--r', '4', '--alpha', '8', '--lr', '1e-2', '--batch-size', '4', '--max-steps', '3', '--seed', '1'];
    const out16 = path.join(tmp, 'ft-bf16');
    let r = await run(['finetune', ...common, '--out', out16, '--dtype', 'bfloat16']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/device cpu, dtype bfloat16\n/);
    const st = SafetensorsFile.openSync(path.join(out16, 'adapter_model.safetensors'));
    expect(new Set(st.keys().map((k) => st.entry(k).dtype))).toEqual(new Set(['F32']));
    st.close();
    r = await run(['finetune', ...common, '--out', path.join(tmp, 'ft-f32')]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/device cpu, dtype float32\n/);
    r = await run(['generate', '--model', modelDir, '--adapter', out16, '--prompt', 'the cat', '--max-new-tokens', '3', '--device', 'cpu', '--dtype', 'bfloat16']);
    expect(r.code).toBe(0);
    expect(r.stdout.startsWith('the cat')).toBe(true);
  });

  test.each(['merge', 'generate', 'finetune'])('%s refuses an unknown --dtype (usage error, exit 2)', async (cmd) => {
    const dir = await checkpoint('gqa', half.cases.llama_gqa, 'BF16');
    const args = cmd === 'merge' ? ['--model', dir, '--adapter', dir, '--out', path.join(tmp, 'never')]
      : cmd === 'generate' ? ['--model', dir, '--prompt', 'hi', '--device', 'cpu'] : ['--model', dir, '--data', path.join(tmp, 'none.txt'), '--out', path.join(tmp, 'never')];
    const r = await run([cmd, ...args, '--dtype', 'half']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--dtype must be auto, float32, bfloat16, float16, got "half"');
    expect(fs.existsSync(path.join(tmp, 'never'))).toBe(false);
  });
});
