// Behaviour that must follow transformers and PEFT, where getting it wrong gives a wrong number or a
// lost run without an error: training modes after loading, tied embeddings with an adapted head,
// adapter files and configs that say more than this project implements, target lists, per-layer
// ranks, and the small print of saved configs.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  LoRALinear, Linear, LlamaForCausalLM, Module, Sequential, Tensor, injectLora, loadAdapter, loraLayers, manualSeed,
  mergeLora, noGrad, randn, saveAdapter, saveMerged, unmergeLora,
} from '../lib';
import { SafetensorsFile, saveSafetensors } from '../lib/safetensors';
import { loadCases, writeCheckpoint } from './helpers/llama-weights';

const fixture = loadCases();
let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-semantics-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

let dirs = 0;
async function checkpoint(name: string): Promise<string> {
  const dir = path.join(tmp, `${name}-${dirs++}`);
  await writeCheckpoint(dir, fixture.cases[name]);
  return dir;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** Runs fn and returns the process warnings it emitted (with their codes). */
async function warningsOf<T>(fn: () => Promise<T>): Promise<{ result: T; warnings: { code?: string; message: string }[] }> {
  const warnings: { code?: string; message: string }[] = [];
  const original = process.emitWarning;
  process.emitWarning = ((w: string | Error, o?: { code?: string } | string) => {
    warnings.push({ message: String(w), code: typeof o === 'object' ? o?.code : undefined });
  }) as typeof process.emitWarning;
  try {
    return { result: await fn(), warnings };
  } finally {
    process.emitWarning = original;
  }
}

const logits = (m: LlamaForCausalLM, ids: number[][]) => noGrad(() => m.forward(ids)).toArray();

// ------------------------------------------------------------------ modes

describe('training mode', () => {
  test('fromPretrained returns the model in eval mode, as transformers does', async () => {
    const model = await LlamaForCausalLM.fromPretrained(await checkpoint('llama_gqa'));
    expect([...model.modules()].every((m) => !m.training)).toBe(true);
  });

  test('layers added by injectLora and loadAdapter take the mode of the model: no dropout in eval mode', async () => {
    const dir = await checkpoint('llama_gqa');
    const ids = fixture.cases.llama_gqa.input_ids;
    const model = await LlamaForCausalLM.fromPretrained(dir);
    manualSeed(0);
    injectLora(model, { r: 4, alpha: 8, dropout: 0.5, targetModules: ['q_proj', 'v_proj'] });
    expect(loraLayers(model).every(([, l]) => !l.training)).toBe(true);
    // B is zero at the start: give it values so the adapter (and its dropout) matters.
    noGrad(() => { for (const [, l] of loraLayers(model)) l.B!.copy_(randn([...l.B!.shape])); });
    expect(maxAbsDiff(logits(model, ids), logits(model, ids))).toBe(0);
    await saveAdapter(model, path.join(tmp, 'mode-adapter'));

    const again = await LlamaForCausalLM.fromPretrained(dir);
    await loadAdapter(again, path.join(tmp, 'mode-adapter'));
    expect(loraLayers(again).every(([, l]) => !l.training)).toBe(true);
    expect(maxAbsDiff(logits(again, ids), logits(again, ids))).toBe(0);
    expect(maxAbsDiff(logits(again, ids), logits(model, ids))).toBe(0);

    // In training mode the new layers train (dropout on), as their model does.
    again.train();
    const trained = await LlamaForCausalLM.fromPretrained(dir);
    trained.train();
    injectLora(trained, { r: 2, dropout: 0.1, targetModules: ['k_proj'] });
    expect(loraLayers(trained).every(([, l]) => l.training)).toBe(true);
  });

  test('new LoRALinear(layer) takes the mode of the layer it wraps', () => {
    const lin = new Linear(4, 3);
    lin.eval();
    expect(new LoRALinear(lin, { r: 2, dropout: 0.2 }).training).toBe(false);
    expect(new LoRALinear(new Linear(4, 3), { r: 2 }).training).toBe(true);
  });
});

// ------------------------------------------------------------ tied heads

describe('tied embeddings and an adapted lm_head', () => {
  const name = 'qwen2_bias_tied_mqa';

  async function adaptedTied(): Promise<{ dir: string; model: LlamaForCausalLM; embed: Float32Array; before: ArrayLike<number> }> {
    const dir = await checkpoint(name);
    const model = await LlamaForCausalLM.fromPretrained(dir);
    expect(model.lm_head.weight).toBe(model.model.embed_tokens.weight);
    manualSeed(1);
    const names = injectLora(model, { r: 2, alpha: 4 }); // no targets: every Linear, lm_head included
    expect(names).toContain('lm_head');
    noGrad(() => { for (const [, l] of loraLayers(model)) l.B!.copy_(randn([...l.B!.shape], { std: 0.1 })); });
    const embed = model.model.embed_tokens.weight.toArray() as Float32Array;
    return { dir, model, embed, before: logits(model, fixture.cases[name].input_ids) };
  }

  test('mergeLora unties the head: the embedding keeps its values, the logits stay those of the adapted model', async () => {
    const { model, embed, before } = await adaptedTied();
    expect(mergeLora(model)).toContain('lm_head');
    expect(Array.from(model.model.embed_tokens.weight.toArray())).toEqual(Array.from(embed));
    expect(model.lm_head.weight).not.toBe(model.model.embed_tokens.weight);
    expect(maxAbsDiff(logits(model, fixture.cases[name].input_ids), before)).toBeLessThan(1e-4);
    unmergeLora(model);
    expect(maxAbsDiff(logits(model, fixture.cases[name].input_ids), before)).toBeLessThan(1e-4);
    expect(Array.from(model.model.embed_tokens.weight.toArray())).toEqual(Array.from(embed));
  });

  test('saveMerged writes the adapted head as lm_head.weight and says tie_word_embeddings: false', async () => {
    const { model, embed, before } = await adaptedTied();
    const out = path.join(tmp, 'merged-tied');
    await saveMerged(model, out);
    const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    expect(cfg.tie_word_embeddings).toBe(false);
    const st = await SafetensorsFile.open(path.join(out, 'model.safetensors'));
    try {
      expect(st.keys()).toContain('lm_head.weight');
      const e = await st.read('model.embed_tokens.weight');
      expect(Array.from(e.toArray())).toEqual(Array.from(embed));
    } finally {
      st.close();
    }
    const merged = await LlamaForCausalLM.fromPretrained(out);
    expect(merged.lm_head.weight).not.toBe(merged.model.embed_tokens.weight);
    expect(maxAbsDiff(logits(merged, fixture.cases[name].input_ids), before)).toBeLessThan(1e-4);
  });

  test('a tied model without an adapted head still saves tied (no lm_head.weight)', async () => {
    const model = await LlamaForCausalLM.fromPretrained(await checkpoint(name));
    injectLora(model, { r: 2, targetModules: ['q_proj'] });
    const out = path.join(tmp, 'merged-still-tied');
    await saveMerged(model, out);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).tie_word_embeddings).toBe(true);
    const st = await SafetensorsFile.open(path.join(out, 'model.safetensors'));
    try {
      expect(st.keys()).not.toContain('lm_head.weight');
    } finally {
      st.close();
    }
  });
});

describe('a tied config whose checkpoint also holds lm_head.weight (transformers\' tie_weights)', () => {
  const name = 'qwen2_bias_tied_mqa';
  async function withHead(values: 'same' | 'different'): Promise<string> {
    const dir = await checkpoint(name);
    const file = path.join(dir, 'model.safetensors');
    const st = await SafetensorsFile.open(file);
    const tensors: Record<string, Tensor> = {};
    for (const k of st.keys()) tensors[k] = await st.read(k);
    st.close();
    const embed = tensors['model.embed_tokens.weight'];
    tensors['lm_head.weight'] = values === 'same' ? embed.clone() : embed.mul(-2);
    await saveSafetensors(file, tensors);
    return dir;
  }

  test('different values: the two are kept apart, each with its own values, and a warning says so', async () => {
    const dir = await withHead('different');
    const { result: model, warnings } = await warningsOf(() => LlamaForCausalLM.fromPretrained(dir));
    expect(model.lm_head.weight).not.toBe(model.model.embed_tokens.weight);
    const e = model.model.embed_tokens.weight.toArray();
    const h = model.lm_head.weight.toArray();
    for (let i = 0; i < e.length; i++) expect(h[i]).toBe(Math.fround(-2 * e[i]));
    expect(warnings.map((w) => w.code)).toContain('LORA_CUDA_UNTIED_EMBEDDINGS');
    // Its merged export keeps the head it was loaded with.
    await saveMerged(model, path.join(tmp, 'untied-export'));
    expect(JSON.parse(fs.readFileSync(path.join(tmp, 'untied-export', 'config.json'), 'utf8')).tie_word_embeddings).toBe(false);
  });

  test('equal values (a redundant copy): tied, without a warning', async () => {
    const dir = await withHead('same');
    const { result: model, warnings } = await warningsOf(() => LlamaForCausalLM.fromPretrained(dir));
    expect(model.lm_head.weight).toBe(model.model.embed_tokens.weight);
    expect(warnings).toEqual([]);
  });
});

// --------------------------------------------------------- adapter files

describe('adapter files and configs', () => {
  async function adapterDir(name: string, config: Record<string, unknown>, tensors: Record<string, Tensor>): Promise<string> {
    const dir = path.join(tmp, name);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 2, lora_alpha: 4, ...config }));
    await saveSafetensors(path.join(dir, 'adapter_model.safetensors'), tensors);
    return dir;
  }
  const qkv = (layers: number[], proj: string[], r = 2) => Object.fromEntries(layers.flatMap((l) => proj.flatMap((p) => {
    const out = p === 'q_proj' ? 32 : 16;
    return [
      [`base_model.model.model.layers.${l}.self_attn.${p}.lora_A.weight`, randn([r, 32])],
      [`base_model.model.model.layers.${l}.self_attn.${p}.lora_B.weight`, randn([out, r])],
    ];
  })));

  test('weights of modules that target_modules does not select are not applied, and are named in a warning (as PEFT)', async () => {
    const model = await LlamaForCausalLM.fromPretrained(await checkpoint('llama_gqa'));
    const dir = await adapterDir('extra-keys', { target_modules: ['q_proj'] }, qkv([0, 1], ['q_proj', 'v_proj']));
    const { result: names, warnings } = await warningsOf(() => loadAdapter(model, dir));
    expect(names).toEqual(['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.q_proj']);
    expect(model.getSubmodule('model.layers.0.self_attn.v_proj')).toBeInstanceOf(Linear);
    expect(model.getSubmodule('model.layers.0.self_attn.v_proj')).not.toBeInstanceOf(LoRALinear);
    const w = warnings.find((x) => x.code === 'LORA_CUDA_IGNORED_ADAPTER_KEYS');
    expect(w?.message).toMatch(/base_model\.model\.model\.layers\.0\.self_attn\.v_proj\.lora_A\.weight/);
  });

  test('exclude_modules and "all-linear" select as PEFT does', async () => {
    const model = await LlamaForCausalLM.fromPretrained(await checkpoint('llama_gqa'));
    const dir = await adapterDir('exclude', { target_modules: ['q_proj', 'v_proj'], exclude_modules: ['model.layers.1.self_attn.v_proj'] },
      qkv([0, 1], ['q_proj', 'v_proj']));
    const { result: names } = await warningsOf(() => loadAdapter(model, dir));
    expect(names.sort()).toEqual(['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj', 'model.layers.1.self_attn.q_proj']);

    // all-linear: every Linear but the output layer.
    const all = await LlamaForCausalLM.fromPretrained(await checkpoint('llama_gqa'));
    manualSeed(3);
    injectLora(all, { r: 2, filter: (n) => n !== 'lm_head' });
    await saveAdapter(all, path.join(tmp, 'all-src'));
    const cfg = JSON.parse(fs.readFileSync(path.join(tmp, 'all-src', 'adapter_config.json'), 'utf8'));
    fs.writeFileSync(path.join(tmp, 'all-src', 'adapter_config.json'), JSON.stringify({ ...cfg, target_modules: 'all-linear' }));
    // The weights record the target list they were saved with; a hand-edited config is a new adapter.
    const st = await SafetensorsFile.open(path.join(tmp, 'all-src', 'adapter_model.safetensors'));
    const tensors: Record<string, Tensor> = {};
    for (const k of st.keys()) tensors[k] = await st.read(k);
    st.close();
    await saveSafetensors(path.join(tmp, 'all-src', 'adapter_model.safetensors'), tensors);
    const fresh = await LlamaForCausalLM.fromPretrained(await checkpoint('llama_gqa'));
    const loaded = await loadAdapter(fresh, path.join(tmp, 'all-src'));
    expect(loaded).toHaveLength(loraLayers(all).length);
    expect(loaded).not.toContain('lm_head');
  });

  test.each([
    ['alora_invocation_tokens', [1, 2, 3], /alora_invocation_tokens is \[1, 2, 3\]: Activated LoRA .* is not supported/],
    ['trainable_token_indices', [5], /trainable_token_indices/],
    ['some_future_field', 3, /field some_future_field \(3\) is unknown to lora-cuda/],
  ])('a config with %s set is refused, naming the field', async (field, value, re) => {
    const model = await LlamaForCausalLM.fromPretrained(await checkpoint('llama_gqa'));
    const dir = await adapterDir(`field-${field}`, { target_modules: ['q_proj'], [field]: value }, qkv([0, 1], ['q_proj']));
    await expect(loadAdapter(model, dir)).rejects.toThrow(re);
    expect(loraLayers(model)).toEqual([]);
  });

  test('fields that do not change the computation, and unset ones, are accepted', async () => {
    const model = await LlamaForCausalLM.fromPretrained(await checkpoint('llama_gqa'));
    const dir = await adapterDir('harmless', {
      target_modules: ['q_proj'], alora_invocation_tokens: null, modules_to_save: null, use_qalora: false, qalora_group_size: 16,
      megatron_core: 'megatron.core', runtime_config: { ephemeral_gpu_offload: false }, eva_config: null, loftq_config: {},
      lora_bias: false, target_parameters: null, init_lora_weights: 'eva', peft_version: '0.18.0', task_type: 'CAUSAL_LM',
      layers_pattern: null, layer_replication: null, trainable_token_indices: null, ensure_weight_tying: false,
    }, qkv([0, 1], ['q_proj']));
    expect(await loadAdapter(model, dir)).toHaveLength(2);
  });

  /** The module tree, every parameter's values and requiresGrad: what a refused load must leave as it was. */
  const snapshot = (m: Module) => JSON.stringify([
    [...m.namedModules()].map(([n, x]) => `${n}:${x.constructor.name}`),
    [...m.namedParameters()].map(([n, p]) => [n, p.requiresGrad, Array.from(p.toArray())]),
  ]);
  const ab = (names: string[], r = 2, n = 4) => Object.fromEntries(names.flatMap((x) => [
    [`base_model.model.${x}.lora_A.weight`, randn([r, n])], [`base_model.model.${x}.lora_B.weight`, randn([n, r])],
  ]));

  test('keys of the Linear inside a LoRA layer are not a layer of their own: no half-loaded model, no internal error', async () => {
    // The model itself is a LoRA layer (its state dict keys start with origLinear.) with one more Linear;
    // the file has weights for 'extra' and for 'origLinear', the Linear the root layer wraps.
    manualSeed(5);
    const model = new LoRALinear(new Linear(4, 4), { r: 2, alpha: 4 }) as LoRALinear & { extra: Module };
    model.extra = new Linear(4, 4);
    const rootA = Array.from(model.A!.toArray());
    const dir = await adapterDir('under-origlinear', { target_modules: ['extra', 'origLinear'] }, ab(['extra', 'origLinear']));
    const { result: names, warnings } = await warningsOf(() => loadAdapter(model, dir));
    expect(names).toEqual(['extra']);
    expect(model.extra).toBeInstanceOf(LoRALinear);
    expect(model.origLinear).toBeInstanceOf(Linear);
    expect(Array.from(model.A!.toArray())).toEqual(rootA);
    expect(warnings.find((w) => w.code === 'LORA_CUDA_IGNORED_ADAPTER_KEYS')?.message).toMatch(/base_model\.model\.origLinear\.lora_A\.weight/);
  });

  test('a module of the model that is called origLinear is a layer like any other', async () => {
    class Holder extends Module {
      origLinear = new Linear(4, 4);
      forward(x: Tensor): Tensor { return this.origLinear.forward(x); }
    }
    class Net extends Module {
      a = new Linear(4, 4);
      h = new Holder();
      forward(x: Tensor): Tensor { return this.h.forward(this.a.forward(x)); }
    }
    manualSeed(6);
    const src = new Net();
    manualSeed(6);
    const dst = new Net(); // the same base weights
    injectLora(src, { r: 2, alpha: 4 });
    noGrad(() => (src.getSubmodule('h.origLinear') as LoRALinear).B!.copy_(randn([4, 2])));
    await saveAdapter(src, path.join(tmp, 'holder'));
    expect((await loadAdapter(dst, path.join(tmp, 'holder'))).sort()).toEqual(['a', 'h.origLinear']);
    const x = randn([3, 4]);
    expect(Array.from(noGrad(() => dst.forward(x)).toArray())).toEqual(Array.from(noGrad(() => src.forward(x)).toArray()));
  });

  test('a refused load leaves the model as it was: wrong shapes, NaN, or settings the model\'s LoRA layers do not share', async () => {
    class Net extends Module {
      a = new Linear(4, 4);
      b = new Linear(4, 4);
      c = new Linear(4, 4);
      forward(x: Tensor): Tensor { return this.c.forward(this.b.forward(this.a.forward(x))); }
    }
    manualSeed(7);
    const model = new Net();
    injectLora(model, { r: 2, alpha: 4, targetModules: ['a'] });
    const before = snapshot(model);
    const cases: [string, Record<string, unknown>, Record<string, Tensor>, RegExp][] = [
      ['shape', { target_modules: ['a', 'b', 'c'] }, { ...ab(['a', 'b']), ...ab(['c'], 3) }, /^loadAdapter: 'base_model\.model\.c\.lora_A\.weight' has shape \[3, 4\], expected \[2, 4\]$/],
      ['nan', { target_modules: ['a', 'b', 'c'] }, { ...ab(['a', 'b']), 'base_model.model.c.lora_A.weight': randn([2, 4]), 'base_model.model.c.lora_B.weight': randn([4, 2]).mul(NaN) },
        /^loadAdapter: adapter_model\.safetensors: 'base_model\.model\.c\.lora_B\.weight' holds NaN or Inf$/],
      ['dropout', { target_modules: ['a', 'b'], lora_dropout: 0.1 }, ab(['a', 'b']),
        /^loadAdapter: the model already has LoRA layers with dropout=0, useRslora=false \('a'\); the adapter's new layers \(b\) would have lora_dropout=0\.1/],
      ['pattern', { target_modules: ['a', 'b', 'c'], rank_pattern: { c: 3 } }, { ...ab(['a', 'b']), ...ab(['c'], 2) }, /'base_model\.model\.c\.lora_A\.weight' has shape \[2, 4\], expected \[3, 4\]/],
    ];
    for (const [name, config, tensors, re] of cases) {
      const dir = await adapterDir(`refused-${name}`, config, tensors);
      await expect(loadAdapter(model, dir)).rejects.toThrow(re);
      expect(snapshot(model)).toBe(before);
    }
  });

  test('init_lora_weights that changed the base model at initialisation (PiSSA, OLoRA, ...) is refused', async () => {
    const model = await LlamaForCausalLM.fromPretrained(await checkpoint('llama_gqa'));
    const dir = await adapterDir('pissa', { target_modules: ['q_proj'], init_lora_weights: 'pissa_niter_4' }, qkv([0, 1], ['q_proj']));
    await expect(loadAdapter(model, dir)).rejects.toThrow(/init_lora_weights "pissa_niter_4": .* convert it to a plain LoRA/);
  });
});

// ---------------------------------------------------------------- targets

describe('target lists', () => {
  const model = () => new Sequential(new Linear(4, 4), new Linear(4, 4)) as Module;
  class Block extends Module {
    q_proj = new Linear(4, 4);
    v_proj = new Linear(4, 4);
    forward(x: Tensor): Tensor {
      return this.v_proj.forward(this.q_proj.forward(x));
    }
  }

  test('a partly misspelt list throws, naming every name that matched nothing', () => {
    const m = new Block();
    expect(() => injectLora(m, { targetModules: ['q_proj', 'vproj', 'kproj'] }))
      .toThrow(/^injectLora: options\.targetModules 'vproj', 'kproj' match no Linear layer \(pass allowUnmatchedTargets: true to allow it\); the model's Linear layers are: 'q_proj', 'v_proj'$/);
    expect(loraLayers(m)).toEqual([]);
    expect(injectLora(m, { targetModules: ['q_proj', 'vproj'], allowUnmatchedTargets: true })).toEqual(['q_proj']);
    expect(injectLora(model(), { targetModules: ['0'] })).toEqual(['0']);
  });
});

// ------------------------------------------------------ per-layer ranks

describe('ranks and alphas that differ by layer (PEFT rank_pattern / alpha_pattern)', () => {
  /** PEFT's get_pattern_key and its use in LoraModel._create_and_replace. */
  function peftValue(pattern: Record<string, number>, name: string, dflt: number): number {
    for (const key of Object.keys(pattern)) if (new RegExp(`^(.*\\.)?(${key})$`).test(name)) return pattern[key];
    return dflt;
  }

  test('two injections with different r and alpha save as rank_pattern / alpha_pattern and load back', async () => {
    const dir = await checkpoint('llama_gqa');
    const model = await LlamaForCausalLM.fromPretrained(dir);
    manualSeed(5);
    injectLora(model, { r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] });
    injectLora(model, { r: 2, alpha: 2, targetModules: ['model.layers.1.self_attn.k_proj'] });
    noGrad(() => { for (const [, l] of loraLayers(model)) l.B!.copy_(randn([...l.B!.shape])); });
    const out = path.join(tmp, 'ranks');
    await saveAdapter(model, out);
    const cfg = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'));
    expect(cfg.r).toBe(4);
    expect(cfg.lora_alpha).toBe(8);
    // What PEFT reads from these patterns for every adapted layer:
    for (const [name, l] of loraLayers(model)) {
      expect(peftValue(cfg.rank_pattern, name, cfg.r)).toBe(l.r);
      expect(peftValue(cfg.alpha_pattern, name, cfg.lora_alpha)).toBe(l.alpha);
    }
    expect(Object.keys(cfg.rank_pattern)).toHaveLength(1);
    // No other layer of the model is caught by a pattern key.
    for (const [name] of model.namedModules()) {
      if (name !== 'model.layers.1.self_attn.k_proj') expect(peftValue(cfg.rank_pattern, name, -1)).toBe(-1);
    }

    const again = await LlamaForCausalLM.fromPretrained(dir);
    await loadAdapter(again, out);
    const ranks = Object.fromEntries(loraLayers(again).map(([n, l]) => [n, [l.r, l.alpha]]));
    expect(ranks['model.layers.1.self_attn.k_proj']).toEqual([2, 2]);
    expect(ranks['model.layers.0.self_attn.q_proj']).toEqual([4, 8]);
    const ids = fixture.cases.llama_gqa.input_ids;
    expect(maxAbsDiff(logits(again, ids), logits(model, ids))).toBe(0);
  });

  test('a second injection with another dropout or rsLoRA setting is refused at injection, not at save', () => {
    const m = new Sequential(new Linear(4, 4), new Linear(4, 4));
    injectLora(m, { r: 2, dropout: 0.1, targetModules: ['0'] });
    expect(() => injectLora(m, { r: 4, dropout: 0.2, targetModules: ['1'] }))
      .toThrow(/^injectLora: the model already has LoRA layers with dropout=0\.1, useRslora=false \('0'\); new layers with dropout=0\.2/);
    expect(() => injectLora(m, { r: 4, dropout: 0.1, useRslora: true, targetModules: ['1'] })).toThrow(/useRslora/);
    expect(injectLora(m, { r: 4, dropout: 0.1, targetModules: ['1'] })).toEqual(['1']);
  });
});

// ------------------------------------------------------------ small print

describe('saved configs and small things', () => {
  test('LoRALinear exposes the wrapped weight and bias, so code written for the Linear keeps working', () => {
    const lin = new Linear(3, 2);
    const l = new LoRALinear(lin, { r: 1 });
    expect(l.weight).toBe(lin.weight);
    expect(l.bias).toBe(lin.bias);
    // Not parameters of their own: listed once, under origLinear.
    expect([...l.namedParameters()].map(([n]) => n)).toEqual(['A', 'B', 'origLinear.weight', 'origLinear.bias']);
  });

  test("init_lora_weights says what PEFT would do: 'gaussian' is PEFT's N(0, 1/r²), the default N(0, 0.01²) saves as true", async () => {
    manualSeed(0);
    const g = new LoRALinear(new Linear(2000, 2), { r: 4, init: 'gaussian' });
    const a = g.A!.toArray();
    const std = Math.sqrt(Array.from(a).reduce((s, v) => s + v * v, 0) / a.length);
    expect(std).toBeGreaterThan(0.25 * 0.95);
    expect(std).toBeLessThan(0.25 * 1.05);
    const n = new LoRALinear(new Linear(2000, 2), { r: 4 });
    expect(n.init).toBe('normal');
    const b = n.A!.toArray();
    expect(Math.sqrt(Array.from(b).reduce((s, v) => s + v * v, 0) / b.length)).toBeCloseTo(0.01, 3);

    for (const [init, want] of [['normal', true], ['kaiming', true], ['gaussian', 'gaussian']] as const) {
      const m = new Sequential(new Linear(4, 4));
      injectLora(m, { r: 2, init });
      await saveAdapter(m, path.join(tmp, `init-${init}`));
      expect(JSON.parse(fs.readFileSync(path.join(tmp, `init-${init}`, 'adapter_config.json'), 'utf8')).init_lora_weights).toBe(want);
    }
  });

  test('an adapter saved from a loaded model names the directory it came from (base_model_name_or_path)', async () => {
    const dir = await checkpoint('llama_gqa');
    const model = await LlamaForCausalLM.fromPretrained(dir);
    injectLora(model, { r: 2, targetModules: ['q_proj'] });
    await saveAdapter(model, path.join(tmp, 'named'));
    expect(JSON.parse(fs.readFileSync(path.join(tmp, 'named', 'adapter_config.json'), 'utf8')).base_model_name_or_path).toBe(dir);
  });

  test('a folder with both model.safetensors and a sharded index loads the single file, as transformers does', async () => {
    const dir = await checkpoint('llama_gqa');
    // An index naming a shard that does not exist: read, it would fail.
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { 'model.norm.weight': 'model-00001-of-00002.safetensors' } }));
    const model = await LlamaForCausalLM.fromPretrained(dir);
    expect(maxAbsDiff(logits(model, fixture.cases.llama_gqa.input_ids), fixture.cases.llama_gqa.logits)).toBeLessThan(2e-4);
  });
});
