// Llama-family checkpoints end to end: tiny random checkpoints written in
// Hugging Face layout by the test itself, logits against an independent
// PyTorch implementation (test/fixtures/generate_llama.py), LoRA training,
// PEFT adapters and merged exports.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  Adam, LoRALinear, LlamaForCausalLM, getLoraAB, injectLora, loadAdapter, loadTokenizer, manualSeed, noGrad, qkvFilter,
  randn, saveAdapter, saveMerged, tensor,
} from '../lib';
import { SafetensorsFile, saveSafetensors } from '../lib/safetensors';
import { formulaValues, loadCases, writeCheckpoint } from './helpers/llama-weights';

const fixture = loadCases();
let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-llama-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

async function checkpoint(name: string, opts: { dtype?: 'F32' | 'F16' | 'BF16'; shards?: number } = {}): Promise<string> {
  const dir = path.join(tmp, `${name}-${opts.dtype ?? 'F32'}-${opts.shards ?? 1}`);
  if (!fs.existsSync(dir)) await writeCheckpoint(dir, fixture.cases[name], opts);
  return dir;
}

describe.each(Object.keys(fixture.cases))('%s', (name) => {
  const c = fixture.cases[name];

  test('logits and loss match the PyTorch reference', async () => {
    const model = await LlamaForCausalLM.fromPretrained(await checkpoint(name));
    const logits = noGrad(() => model.forward(c.input_ids));
    expect(logits.shape).toEqual([fixture.batch, fixture.seq, c.config.vocab_size]);
    expect(maxAbsDiff(logits.toArray(), c.logits)).toBeLessThan(2e-4);
    const loss = noGrad(() => model.loss(c.input_ids, c.labels)).item();
    expect(Math.abs(loss - c.loss)).toBeLessThan(1e-4);
  });

  test('Hugging Face parameter names', async () => {
    const model = await LlamaForCausalLM.fromPretrained(await checkpoint(name));
    const names = Object.keys(model.stateDict());
    const expected = c.params.map(([n]) => n);
    if (c.config.tie_word_embeddings) expected.push('lm_head.weight');
    expect(names.sort()).toEqual(expected.sort());
  });
});

test('a sharded checkpoint (model.safetensors.index.json) loads the same weights', async () => {
  const c = fixture.cases.llama_gqa;
  const model = await LlamaForCausalLM.fromPretrained(await checkpoint('llama_gqa', { shards: 3 }));
  expect(fs.readdirSync(await checkpoint('llama_gqa', { shards: 3 })).filter((f) => f.endsWith('.safetensors'))).toHaveLength(3);
  expect(maxAbsDiff(noGrad(() => model.forward(c.input_ids)).toArray(), c.logits)).toBeLessThan(2e-4);
});

describe('shards: each tensor is read from the shard the index\'s weight_map names', () => {
  const c = fixture.cases.llama_gqa;
  const shard = (i: number) => `model-0000${i}-of-00003.safetensors`;
  /** A copy of the 3-shard checkpoint, with `edit` applied to it. */
  async function variant(name: string, edit: (dir: string, map: Record<string, string>) => Promise<void>): Promise<string> {
    const dir = path.join(tmp, `shards-${name}`);
    fs.cpSync(await checkpoint('llama_gqa', { shards: 3 }), dir, { recursive: true });
    const indexFile = path.join(dir, 'model.safetensors.index.json');
    const index = JSON.parse(fs.readFileSync(indexFile, 'utf8'));
    await edit(dir, index.weight_map);
    fs.writeFileSync(indexFile, JSON.stringify(index));
    return dir;
  }
  /** Adds `extra` tensors to a shard file. */
  async function addTo(dir: string, file: string, extra: Record<string, ReturnType<typeof tensor>>): Promise<void> {
    const st = await SafetensorsFile.open(path.join(dir, file));
    const all: Record<string, ReturnType<typeof tensor>> = {};
    for (const k of st.keys()) all[k] = await st.read(k);
    st.close();
    await saveSafetensors(path.join(dir, file), { ...all, ...extra });
  }
  function warnings(): { codes: string[]; messages: string[]; restore: () => void } {
    const codes: string[] = [];
    const messages: string[] = [];
    const spy = jest.spyOn(process, 'emitWarning').mockImplementation(((w: string, o?: { code?: string }) => {
      codes.push(o?.code ?? '');
      messages.push(w);
    }) as typeof process.emitWarning);
    return { codes, messages, restore: () => spy.mockRestore() };
  }

  test('a tensor also in a later shard (other values) is read from the one the weight_map names; the copy is reported', async () => {
    let key = '';
    const dir = await variant('duplicate', async (d, map) => {
      key = Object.keys(map).find((k) => map[k] === shard(1) && /layers\.0\..*_proj\.weight$/.test(k))!;
      const st = await SafetensorsFile.open(path.join(d, shard(1)));
      const shape = st.entry(key).shape;
      st.close();
      await addTo(d, shard(3), { [key]: tensor(new Float32Array(shape[0] * shape[1]), { shape }) });
    });
    const w = warnings();
    const model = await LlamaForCausalLM.fromPretrained(dir).finally(w.restore);
    expect(maxAbsDiff(noGrad(() => model.forward(c.input_ids)).toArray(), c.logits)).toBeLessThan(2e-4);
    expect(w.codes).toEqual(['LORA_CUDA_UNASSIGNED_SHARD_KEYS']);
    expect(w.messages[0]).toContain(`'${key}' in ${shard(3)} (the weight_map puts it in ${shard(1)}, which was read)`);
  });

  test('a tensor the weight_map does not list is not read (as transformers), and is reported', async () => {
    const dir = await variant('unlisted', (d) => addTo(d, shard(2), { 'model.layers.0.extra.weight': tensor([1, 2]) }));
    const w = warnings();
    const model = await LlamaForCausalLM.fromPretrained(dir).finally(w.restore);
    expect(maxAbsDiff(noGrad(() => model.forward(c.input_ids)).toArray(), c.logits)).toBeLessThan(2e-4);
    expect(w.messages.join()).toContain(`'model.layers.0.extra.weight' in ${shard(2)} (not in the weight_map)`);
  });

  test('a weight_map that puts a tensor in a shard without it is refused', async () => {
    const key = 'model.norm.weight';
    const dir = await variant('misplaced', async (_d, map) => {
      map[key] = map[key] === shard(1) ? shard(2) : shard(1);
    });
    await expect(LlamaForCausalLM.fromPretrained(dir)).rejects.toThrow(
      new RegExp(`model\\.safetensors\\.index\\.json puts '${key.replace(/\./g, '\\.')}' in model-0000\\d-of-00003\\.safetensors, which does not hold it$`));
    const bad = await variant('not-a-name', async (_d, map) => {
      (map as Record<string, unknown>)[key] = 7;
    });
    await expect(LlamaForCausalLM.fromPretrained(bad)).rejects.toThrow(/weight_map\["model\.norm\.weight"\] must be a shard file name, got 7/);
  });
});

test.each(['BF16', 'F16'] as const)('%s checkpoints load as float32, rounded as stored', async (dtype) => {
  const c = fixture.cases.llama_gqa;
  const model = await LlamaForCausalLM.fromPretrained(await checkpoint('llama_gqa', { dtype }));
  const w = model.model.layers.at(0) as unknown as { self_attn: { q_proj: { weight: { toArray(): Float32Array } } } };
  const got = w.self_attn.q_proj.weight.toArray();
  const exact = formulaValues('model.layers.0.self_attn.q_proj.weight', [32, 32]);
  // Rounding to 8 (BF16) or 11 (F16) significant bits, nothing more.
  const rel = dtype === 'BF16' ? 2 ** -8 : 2 ** -11;
  for (let i = 0; i < got.length; i++) expect(Math.abs(got[i] - exact[i])).toBeLessThanOrEqual(Math.abs(exact[i]) * rel + 1e-12);
  expect(maxAbsDiff(got, exact)).toBeGreaterThan(0);
  const logits = noGrad(() => model.forward(c.input_ids)).toArray();
  expect(maxAbsDiff(logits, c.logits)).toBeLessThan(dtype === 'BF16' ? 0.1 : 0.02);
});

test('tied embeddings share one tensor and are not required in the checkpoint', async () => {
  const model = await LlamaForCausalLM.fromPretrained(await checkpoint('qwen2_bias_tied_mqa'));
  expect(model.lm_head.weight).toBe(model.model.embed_tokens.weight);
  expect([...model.namedParameters()].map(([n]) => n)).not.toContain('lm_head.weight');
});

test('forward accepts an int32 tensor and rejects bad ids', async () => {
  const c = fixture.cases.mistral;
  const model = await LlamaForCausalLM.fromPretrained(await checkpoint('mistral'));
  const ids = tensor(c.input_ids, { dtype: 'int32' });
  expect(maxAbsDiff(noGrad(() => model.forward(ids)).toArray(), c.logits)).toBeLessThan(2e-4);
  expect(() => model.forward([[1, 2], [3]])).toThrow(/equal lengths/);
  expect(() => model.forward([[1, 999]])).toThrow(/token id in \[0, 40\)/);
  const windowed = new LlamaForCausalLM({ ...c.config, sliding_window: 4 });
  expect(() => windowed.forward([[1, 2, 3, 4, 5]])).toThrow(/exceed the model's sliding_window \(4\)/);
  expect(windowed.forward([[1, 2, 3, 4]]).shape).toEqual([1, 4, 40]);
});

describe('LoRA on a checkpoint', () => {
  test('targetModules q_proj/v_proj, training lowers the loss, adapter round trip gives identical logits', async () => {
    manualSeed(5);
    const c = fixture.cases.llama_gqa;
    const dir = await checkpoint('llama_gqa');
    const model = await LlamaForCausalLM.fromPretrained(dir);
    const replaced = injectLora(model, { targetModules: ['q_proj', 'v_proj'], r: 4, alpha: 8 });
    expect(replaced).toEqual([
      'model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj',
      'model.layers.1.self_attn.q_proj', 'model.layers.1.self_attn.v_proj',
    ]);
    expect(injectLora(await LlamaForCausalLM.fromPretrained(dir), { filter: qkvFilter })).toHaveLength(6);
    // Also adapt the MLP so a tiny model can fit the batch quickly.
    injectLora(model, { targetModules: ['up_proj'], r: 4, alpha: 8 });
    const opt = new Adam(getLoraAB(model), { lr: 5e-2 });
    const losses: number[] = [];
    for (let step = 0; step < 30; step++) {
      const loss = model.loss(c.input_ids);
      losses.push(loss.item());
      opt.zeroGrad();
      loss.backward();
      opt.step();
    }
    // Only rank-4 adapters on a frozen base: the loss falls steadily (4.55 -> 3.51 here).
    expect(losses[losses.length - 1]).toBeLessThan(0.85 * losses[0]);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(mean(losses.slice(-5))).toBeLessThan(mean(losses.slice(10, 15)));

    const adapterDir = path.join(tmp, 'adapter');
    await saveAdapter(model, adapterDir, { baseModelNameOrPath: 'tiny/llama-gqa' });
    const cfg = JSON.parse(fs.readFileSync(path.join(adapterDir, 'adapter_config.json'), 'utf8'));
    expect(cfg).toMatchObject({
      peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 4, lora_alpha: 8, lora_dropout: 0, bias: 'none',
      use_rslora: false, fan_in_fan_out: false, base_model_name_or_path: 'tiny/llama-gqa',
      target_modules: ['q_proj', 'up_proj', 'v_proj'],
    });
    const st = SafetensorsFile.openSync(path.join(adapterDir, 'adapter_model.safetensors'));
    expect(st.keys()).toContain('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight');
    expect(st.entry('base_model.model.model.layers.1.mlp.up_proj.lora_B.weight').shape).toEqual([48, 4]);
    expect(st.keys()).toHaveLength(12);
    st.close();

    const fresh = await LlamaForCausalLM.fromPretrained(dir);
    const loadedNames = await loadAdapter(fresh, adapterDir);
    expect(loadedNames.sort()).toEqual([...replaced, 'model.layers.0.mlp.up_proj', 'model.layers.1.mlp.up_proj'].sort());
    const a = noGrad(() => model.forward(c.input_ids)).toArray();
    const b = noGrad(() => fresh.forward(c.input_ids)).toArray();
    expect(maxAbsDiff(a, b)).toBe(0);

    // A merged export loads as a plain checkpoint with the same outputs.
    const mergedDir = path.join(tmp, 'merged');
    await saveMerged(fresh, mergedDir);
    const merged = await LlamaForCausalLM.fromPretrained(mergedDir);
    expect([...merged.modules()].some((m) => m instanceof LoRALinear)).toBe(false);
    expect(maxAbsDiff(noGrad(() => merged.forward(c.input_ids)).toArray(), a)).toBeLessThan(1e-4);
    // The model that was exported is unchanged (not merged in place).
    expect((fresh.getSubmodule('model.layers.0.self_attn.q_proj') as LoRALinear).merged).toBe(false);
  });

  test('an adapter in the layout Python PEFT writes loads (regex target_modules, extra config fields)', async () => {
    const dir = await checkpoint('mistral');
    const model = await LlamaForCausalLM.fromPretrained(dir);
    const adapterDir = path.join(tmp, 'peft-made');
    fs.mkdirSync(adapterDir, { recursive: true });
    const r = 2;
    const tensors: Record<string, ReturnType<typeof randn>> = {};
    for (const l of [0, 1]) {
      tensors[`base_model.model.model.layers.${l}.self_attn.k_proj.lora_A.weight`] = randn([r, 24]);
      tensors[`base_model.model.model.layers.${l}.self_attn.k_proj.lora_B.weight`] = randn([8, r]);
    }
    await saveSafetensors(path.join(adapterDir, 'adapter_model.safetensors'), tensors, { metadata: { format: 'pt' } });
    fs.writeFileSync(path.join(adapterDir, 'adapter_config.json'), JSON.stringify({
      alpha_pattern: {}, auto_mapping: null, base_model_name_or_path: 'mistral-tiny', bias: 'none',
      fan_in_fan_out: false, inference_mode: true, init_lora_weights: true, layer_replication: null,
      layers_pattern: null, layers_to_transform: null, loftq_config: {}, lora_alpha: 4, lora_dropout: 0.05,
      megatron_config: null, megatron_core: 'megatron.core', modules_to_save: null, peft_type: 'LORA', r,
      rank_pattern: {}, revision: null, target_modules: '.*self_attn\\.k_proj', task_type: 'CAUSAL_LM',
      use_dora: false, use_rslora: false,
    }));
    const names = await loadAdapter(model, adapterDir);
    expect(names).toEqual(['model.layers.0.self_attn.k_proj', 'model.layers.1.self_attn.k_proj']);
    const layer = model.getSubmodule('model.layers.1.self_attn.k_proj') as LoRALinear;
    expect(layer.scale).toBe(2);
    expect(layer.dropout).toBe(0.05);
    expect(Array.from(layer.B!.toArray())).toEqual(Array.from(tensors['base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight'].toArray()));
  });

  test('bad adapters are rejected with what is wrong', async () => {
    const dir = await checkpoint('mistral');
    const bad = path.join(tmp, 'bad-adapter');
    fs.mkdirSync(bad, { recursive: true });
    const write = (cfg: object, tensors: Record<string, ReturnType<typeof randn>>) => {
      fs.writeFileSync(path.join(bad, 'adapter_config.json'), JSON.stringify(cfg));
      return saveSafetensors(path.join(bad, 'adapter_model.safetensors'), tensors);
    };
    const base = { peft_type: 'LORA', r: 2, lora_alpha: 4, target_modules: ['q_proj'] };
    const model = await LlamaForCausalLM.fromPretrained(dir);
    await write(base, {
      'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': randn([2, 24]),
      'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight': randn([24, 2]),
    });
    await expect(loadAdapter(model, bad)).rejects.toThrow(/no weights for layers selected by target_modules: model\.layers\.1\.self_attn\.q_proj/);
    await write(base, {
      'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': randn([3, 24]),
      'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight': randn([24, 2]),
      'base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight': randn([2, 24]),
      'base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight': randn([24, 2]),
    });
    await expect(loadAdapter(model, bad)).rejects.toThrow(/lora_A\.weight' has shape \[3, 24\], expected \[2, 24\]/);
    await write({ ...base, peft_type: 'IA3' }, {});
    await expect(loadAdapter(model, bad)).rejects.toThrow(/only "LORA"/);
    expect([...model.modules()].some((m) => m instanceof LoRALinear)).toBe(false);
    await expect(loadAdapter(model, path.join(tmp, 'nowhere'))).rejects.toThrow(/not found/);
  });
});

describe('fromPretrained errors', () => {
  async function variant(label: string, edit: (dir: string) => void | Promise<void>): Promise<string> {
    const dir = path.join(tmp, `variant-${label}`);
    fs.cpSync(await checkpoint('mistral'), dir, { recursive: true });
    await edit(dir);
    return dir;
  }

  test('unsupported architecture', async () => {
    const dir = await variant('arch', (d) => {
      const cfg = JSON.parse(fs.readFileSync(path.join(d, 'config.json'), 'utf8'));
      fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify({ ...cfg, architectures: ['GPT2LMHeadModel'], model_type: 'gpt2' }));
    });
    await expect(LlamaForCausalLM.fromPretrained(dir)).rejects.toThrow(/unsupported architecture GPT2LMHeadModel; supported: LlamaForCausalLM/);
  });

  test('missing, unexpected and mis-shaped weights are named', async () => {
    const c = fixture.cases.mistral;
    const without = await variant('missing', async (d) => {
      const t: Record<string, ReturnType<typeof tensor>> = {};
      for (const [n, s] of c.params) if (n !== 'model.norm.weight') t[n] = tensor(formulaValues(n, s), { shape: s });
      await saveSafetensors(path.join(d, 'model.safetensors'), t);
    });
    await expect(LlamaForCausalLM.fromPretrained(without)).rejects.toThrow(/lacks weights: 'model\.norm\.weight'/);
    const extra = await variant('extra', async (d) => {
      const t: Record<string, ReturnType<typeof tensor>> = {};
      for (const [n, s] of c.params) t[n] = tensor(formulaValues(n, s), { shape: s });
      t['model.layers.0.self_attn.q_norm.weight'] = tensor([1, 2]);
      await saveSafetensors(path.join(d, 'model.safetensors'), t);
    });
    await expect(LlamaForCausalLM.fromPretrained(extra)).rejects.toThrow(/does not use: 'model\.layers\.0\.self_attn\.q_norm\.weight'/);
    const shaped = await variant('shape', async (d) => {
      const t: Record<string, ReturnType<typeof tensor>> = {};
      for (const [n, s] of c.params) t[n] = tensor(formulaValues(n, s), { shape: s });
      t['model.norm.weight'] = tensor(new Float32Array(23), { shape: [23] });
      await saveSafetensors(path.join(d, 'model.safetensors'), t);
    });
    await expect(LlamaForCausalLM.fromPretrained(shaped)).rejects.toThrow(/'model\.norm\.weight' has shape \[23\], the config implies \[24\]/);
  });

  test('no weights, or only PyTorch .bin weights', async () => {
    const dir = await variant('bin', (d) => {
      fs.rmSync(path.join(d, 'model.safetensors'));
      fs.writeFileSync(path.join(d, 'pytorch_model.bin'), 'x');
    });
    await expect(LlamaForCausalLM.fromPretrained(dir)).rejects.toThrow(/pytorch_model\.bin: PyTorch \.bin checkpoints are not supported/);
    await expect(LlamaForCausalLM.fromPretrained(path.join(tmp, 'absent'))).rejects.toThrow(/config\.json not found/);
  });
});

test('loadTokenizer reads tokenizer.json from a checkpoint directory', async () => {
  const dir = path.join(tmp, 'tok');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify({
    version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
    pre_tokenizer: { type: 'WhitespaceSplit' }, post_processor: null, decoder: null,
    model: {
      type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false,
      vocab: { '<unk>': 0, h: 1, e: 2, l: 3, o: 4, w: 5, r: 6, d: 7, he: 8, ll: 9, hell: 10, hello: 11 },
      merges: ['h e', 'l l', 'he ll', 'hell o'],
    },
  }));
  const tok = await loadTokenizer(dir);
  const enc = tok.encode('hello world');
  expect(enc.ids).toEqual([11, 5, 4, 6, 3, 7]);
  expect(tok.decode([11])).toBe('hello');
  await expect(loadTokenizer(path.join(tmp, 'nope'))).rejects.toThrow(/tokenizer\.json/);
});
