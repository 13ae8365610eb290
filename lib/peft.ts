// Adapters in the format Python's PEFT reads and writes: adapter_config.json
// plus adapter_model.safetensors with keys
//   base_model.model.<module path>.lora_A.weight  [r, in]
//   base_model.model.<module path>.lora_B.weight  [out, r]
// and merged exports as ordinary Hugging Face checkpoints.
import * as fs from 'fs';
import * as path from 'path';
import { Module } from './nn/module';
import { Linear } from './nn/layers';
import { LoRALinear, injectLora, loraLayers } from './lora';
import { Tensor } from './tensor';
import { noGrad } from './autograd';
import { SafetensorsFile, saveSafetensors } from './safetensors';
import { checkOptions, checkKnownKeys, typeError } from './errors';

const PREFIX = 'base_model.model.';
const CONFIG = 'adapter_config.json';
const WEIGHTS = 'adapter_model.safetensors';

export interface SaveAdapterOptions {
  /** Written as base_model_name_or_path (PEFT uses it to find the base model). */
  baseModelNameOrPath?: string | null;
}

/** Writes `content` to `file` through a temporary file and a rename. */
async function writeFileAtomic(file: string, content: string): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`);
  try {
    const fh = await fs.promises.open(tmp, 'w');
    try {
      await fh.writeFile(content);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.promises.rename(tmp, file);
  } catch (e) {
    await fs.promises.rm(tmp, { force: true });
    throw e;
  }
}

function lastPart(name: string): string {
  return name.slice(name.lastIndexOf('.') + 1);
}

/**
 * Saves every LoRA adapter of `model` to `dir` in PEFT's format. Weights are
 * written first and the config last, each through a temporary file and a
 * rename, so an interrupted save never leaves a half-written file.
 */
export async function saveAdapter(model: Module, dir: string, options?: SaveAdapterOptions): Promise<void> {
  const where = 'saveAdapter';
  if (!(model instanceof Module)) throw typeError(where, 'model', 'a Module', model);
  if (typeof dir !== 'string' || dir === '') throw typeError(where, 'dir', 'a directory path', dir);
  const o = checkOptions(where, options);
  checkKnownKeys(where, o, ['baseModelNameOrPath']);
  const base = o.baseModelNameOrPath ?? (model as { config?: { raw?: { _name_or_path?: string } } }).config?.raw?._name_or_path ?? null;
  if (base !== null && typeof base !== 'string') throw typeError(where, 'options.baseModelNameOrPath', 'a string', base);

  const layers = loraLayers(model).filter(([, m]) => m.r > 0);
  if (!layers.length) throw new RangeError(`${where}: the model has no LoRA layers with r > 0 (call injectLora first)`);
  const [, first] = layers[0];
  for (const [name, m] of layers) {
    if (m.r !== first.r || m.alpha !== first.alpha || m.useRslora !== first.useRslora || m.dropout !== first.dropout) {
      throw new RangeError(`${where}: layer '${name}' has r=${m.r}, alpha=${m.alpha}, dropout=${m.dropout}, useRslora=${m.useRslora} but '${layers[0][0]}' has r=${first.r}, alpha=${first.alpha}, dropout=${first.dropout}, useRslora=${first.useRslora}; per-layer ranks (PEFT's rank_pattern) are not supported`);
    }
  }
  // target_modules by last name part when that selects exactly these layers,
  // else by full name (PEFT matches a target against the end of the name).
  const wrapped = new Set(layers.map(([n]) => n));
  const parts = [...new Set(layers.map(([n]) => lastPart(n)))].sort();
  const others = [...model.namedModules()].filter(([n, m]) => m instanceof Linear && !wrapped.has(n) &&
    !n.endsWith('.origLinear') && parts.includes(lastPart(n)));
  const targetModules = others.length ? [...wrapped].sort() : parts;

  const tensors: Record<string, Tensor> = {};
  for (const [name, m] of layers) {
    tensors[`${PREFIX}${name}.lora_A.weight`] = m.A!;
    tensors[`${PREFIX}${name}.lora_B.weight`] = m.B!;
  }
  const config = {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: base,
    r: first.r,
    lora_alpha: first.alpha,
    lora_dropout: first.dropout,
    target_modules: targetModules,
    bias: 'none',
    use_rslora: first.useRslora,
    use_dora: false,
    fan_in_fan_out: false,
    init_lora_weights: first.init === 'kaiming' ? true : 'gaussian',
    inference_mode: false,
    modules_to_save: null,
    layers_to_transform: null,
    rank_pattern: {},
    alpha_pattern: {},
    revision: null,
  };
  await fs.promises.mkdir(dir, { recursive: true });
  await saveSafetensors(path.join(dir, WEIGHTS), tensors, { metadata: { format: 'pt' } });
  await writeFileAtomic(path.join(dir, CONFIG), JSON.stringify(config, null, 2) + '\n');
}

function fail(where: string, msg: string): never {
  throw new RangeError(`${where}: ${msg}`);
}

/**
 * Reads an adapter saved by saveAdapter or by Python PEFT, wraps the layers it
 * names in LoRALinear (per its config) and loads A and B. Every key and shape
 * is checked before anything is injected; returns the names of the layers.
 */
export async function loadAdapter(model: Module, dir: string): Promise<string[]> {
  const where = 'loadAdapter';
  if (!(model instanceof Module)) throw typeError(where, 'model', 'a Module', model);
  if (typeof dir !== 'string' || dir === '') throw typeError(where, 'dir', 'a directory path', dir);
  const cfgPath = path.join(dir, CONFIG);
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(await fs.promises.readFile(cfgPath, 'utf8'));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new Error(err.code === 'ENOENT' ? `${where}: ${cfgPath} not found (not a PEFT adapter directory)` : `${where}: cannot read ${cfgPath}: ${err.message}`);
  }
  if (cfg === null || typeof cfg !== 'object') fail(where, `${CONFIG} is not a JSON object`);
  if (cfg.peft_type !== 'LORA') fail(where, `${CONFIG}: peft_type is ${JSON.stringify(cfg.peft_type)}, only "LORA" is supported`);
  const r = cfg.r;
  const alpha = cfg.lora_alpha ?? 8;
  const dropout = cfg.lora_dropout ?? 0;
  if (typeof r !== 'number' || !Number.isInteger(r) || r <= 0) fail(where, `${CONFIG}: r must be a positive integer, got ${JSON.stringify(r)}`);
  if (typeof alpha !== 'number' || !Number.isFinite(alpha)) fail(where, `${CONFIG}: lora_alpha must be a number, got ${JSON.stringify(alpha)}`);
  if (typeof dropout !== 'number' || dropout < 0 || dropout >= 1) fail(where, `${CONFIG}: lora_dropout must be in [0, 1), got ${JSON.stringify(dropout)}`);
  if (cfg.fan_in_fan_out === true) fail(where, `${CONFIG}: fan_in_fan_out adapters (GPT-2 style Conv1D) are not supported`);
  if (cfg.use_dora === true) fail(where, `${CONFIG}: DoRA adapters are not supported`);
  if (cfg.bias != null && cfg.bias !== 'none') fail(where, `${CONFIG}: bias ${JSON.stringify(cfg.bias)} is not supported (only "none")`);
  for (const k of ['rank_pattern', 'alpha_pattern'] as const) {
    const v = cfg[k];
    if (v != null && (typeof v !== 'object' || Object.keys(v).length)) fail(where, `${CONFIG}: ${k} is not supported (all layers must share r and lora_alpha)`);
  }
  const tm = cfg.target_modules;
  let targets: string[] | RegExp;
  if (typeof tm === 'string') {
    targets = new RegExp(`^(?:${tm})$`); // PEFT: a string is a regex matched on the full name
  } else if (Array.isArray(tm) && tm.length && tm.every((t) => typeof t === 'string')) {
    targets = tm as string[];
  } else {
    fail(where, `${CONFIG}: target_modules must be a list of names or a regex string, got ${JSON.stringify(tm)}`);
  }

  const weightsPath = path.join(dir, WEIGHTS);
  if (!fs.existsSync(weightsPath)) {
    const bin = fs.existsSync(path.join(dir, 'adapter_model.bin'));
    fail(where, `${weightsPath} not found${bin ? ' (adapter_model.bin is a PyTorch pickle and is not supported; save with safe_serialization=True)' : ''}`);
  }
  const st = await SafetensorsFile.open(weightsPath);
  try {
    // Group the file's keys by module path.
    const found = new Map<string, { A?: string; B?: string }>();
    const unexpected: string[] = [];
    for (const key of st.keys()) {
      const m = /^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$/.exec(key);
      if (!m) {
        unexpected.push(key);
        continue;
      }
      const e = found.get(m[1]) ?? {};
      e[m[2] as 'A' | 'B'] = key;
      found.set(m[1], e);
    }
    if (unexpected.length) fail(where, `${WEIGHTS} has keys that are not LoRA A/B weights: ${unexpected.slice(0, 8).join(', ')}`);
    const incomplete = [...found].filter(([, e]) => !e.A || !e.B).map(([n]) => n);
    if (incomplete.length) fail(where, `${WEIGHTS} lacks lora_A or lora_B for: ${incomplete.join(', ')}`);

    // The layers the config selects must be exactly those with weights.
    const modules = new Map(model.namedModules());
    const selects = (name: string) => (targets instanceof RegExp ? targets.test(name) : targets.some((t) => name === t || name.endsWith(`.${t}`)));
    const selected = [...modules].filter(([n, m]) => (m instanceof Linear && !n.endsWith('.origLinear')) || m instanceof LoRALinear)
      .map(([n]) => n).filter(selects);
    const missing = selected.filter((n) => !found.has(n));
    if (missing.length) fail(where, `${WEIGHTS} has no weights for layers selected by target_modules: ${missing.slice(0, 8).join(', ')}`);
    for (const name of found.keys()) {
      const m = modules.get(name);
      const lin = m instanceof LoRALinear ? m.origLinear : m;
      if (!(lin instanceof Linear)) fail(where, `${WEIGHTS} has weights for '${name}', which is not a Linear layer of this model`);
      const a = st.entry(found.get(name)!.A!);
      const b = st.entry(found.get(name)!.B!);
      const wantA = [r, lin.inFeatures];
      const wantB = [lin.outFeatures, r];
      if (a.shape.join() !== wantA.join()) fail(where, `'${a.name}' has shape [${a.shape.join(', ')}], expected [${wantA.join(', ')}]`);
      if (b.shape.join() !== wantB.join()) fail(where, `'${b.name}' has shape [${b.shape.join(', ')}], expected [${wantB.join(', ')}]`);
      if (m instanceof LoRALinear && m.r !== r) fail(where, `'${name}' is already a LoRALinear with r=${m.r}, the adapter has r=${r}`);
    }

    const names = [...found.keys()];
    const fresh = new Set(names);
    injectLora(model, {
      r, alpha, dropout, useRslora: cfg.use_rslora === true,
      init: cfg.init_lora_weights === 'gaussian' ? 'gaussian' : 'kaiming',
      filter: (name) => fresh.has(name),
    });
    for (const name of names) {
      const layer = model.getSubmodule(name) as LoRALinear;
      const A = await st.read(found.get(name)!.A!, { dtype: layer.A!.dtype as 'float32' });
      const B = await st.read(found.get(name)!.B!, { dtype: layer.B!.dtype as 'float32' });
      noGrad(() => {
        layer.A!.copy_(A);
        layer.B!.copy_(B);
      });
      A.dispose();
      B.dispose();
    }
    return names;
  } finally {
    st.close();
  }
}

/**
 * Writes the model with every adapter folded in as an ordinary Hugging Face
 * checkpoint (config.json + model.safetensors). The model itself is not changed.
 */
export async function saveMerged(model: Module & { config?: { raw?: Record<string, unknown>; tieWordEmbeddings?: boolean } }, dir: string): Promise<void> {
  const where = 'saveMerged';
  if (!(model instanceof Module)) throw typeError(where, 'model', 'a Module', model);
  if (typeof dir !== 'string' || dir === '') throw typeError(where, 'dir', 'a directory path', dir);
  const out: Record<string, Tensor> = {};
  const temps: Tensor[] = [];
  const lora = new Map(loraLayers(model));
  for (const [key, t] of Object.entries(model.stateDict())) {
    const m = /^(.*)\.(origLinear\.(weight|bias)|A|B)$/.exec(key);
    const layer = m ? lora.get(m[1]) : undefined;
    if (!m || !layer) {
      out[key] = t;
      continue;
    }
    if (m[2] === 'A' || m[2] === 'B') continue;
    if (m[3] === 'bias') {
      out[`${m[1]}.bias`] = t;
    } else {
      // W + scale * B A, computed aside (the model's own weight is untouched).
      const merged = layer.r > 0 && !layer.merged
        ? noGrad(() => t.add(layer.B!.matmul(layer.A!).mul(layer.scale)))
        : t;
      if (merged !== t) temps.push(merged);
      out[`${m[1]}.weight`] = merged;
    }
  }
  if (model.config?.tieWordEmbeddings && 'lm_head.weight' in out) delete out['lm_head.weight'];
  try {
    await fs.promises.mkdir(dir, { recursive: true });
    await saveSafetensors(path.join(dir, 'model.safetensors'), out, { metadata: { format: 'pt' } });
    if (model.config?.raw) {
      const cfg = { ...model.config.raw, torch_dtype: 'float32' };
      await writeFileAtomic(path.join(dir, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
    }
  } finally {
    for (const t of temps) t.dispose();
  }
}
