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
import { stageFile } from './atomic';
import { native } from './native';
import { checkOptions, checkKnownKeys, describe, typeError } from './errors';

const PREFIX = 'base_model.model.';
const CONFIG = 'adapter_config.json';
const WEIGHTS = 'adapter_model.safetensors';

export interface SaveAdapterOptions {
  /** Written as base_model_name_or_path (PEFT uses it to find the base model). */
  baseModelNameOrPath?: string | null;
}

/**
 * Writes `weights` with saveSafetensors and `content` to `configFile`, so that a failure while
 * writing either (a full disk) leaves both files as they were: the config is staged beside its target
 * first, then the weights are written and renamed, then the config is renamed. A config equal to the
 * file already there is not rewritten (one rename, so the save is atomic).
 */
async function writePair(weightsFile: string, tensors: Record<string, Tensor>, metadata: Record<string, string>,
  configFile: string, content: string): Promise<void> {
  const old = await fs.promises.readFile(configFile, 'utf8').catch(() => null);
  const staged = old === content ? null : await stageFile(configFile, content);
  try {
    await saveSafetensors(weightsFile, tensors, { metadata });
  } catch (e) {
    await staged?.discard();
    throw e;
  }
  await staged?.commit();
}

function lastPart(name: string): string {
  return name.slice(name.lastIndexOf('.') + 1);
}

/**
 * The config fields that give the weights their meaning, as recorded in the weights file's metadata
 * (key CONFIG_METADATA) by saveAdapter, so that loadAdapter can tell a config that does not belong
 * to the weights beside it.
 */
const CONFIG_METADATA = 'lora_cuda.adapter_config';
function weightsConfig(c: Record<string, unknown>): string {
  const tm = c.target_modules;
  return JSON.stringify({
    r: c.r,
    lora_alpha: c.lora_alpha ?? 8,
    use_rslora: c.use_rslora === true,
    target_modules: Array.isArray(tm) ? [...tm].sort() : tm,
  });
}

/**
 * Saves every LoRA adapter of `model` to `dir` in PEFT's format. Both files are
 * written to temporary files and fsynced before either is renamed into place
 * (weights first, config last), so an interrupted or failed save (a full disk,
 * a kill) never leaves a half-written file, and until the weights are renamed
 * the previous adapter is untouched. A config equal to the one already there is
 * not rewritten, so saving again with the same settings (checkpoints of one
 * run) replaces the adapter in one atomic rename. When the settings change, a
 * crash between the two renames leaves the new weights beside the old config;
 * the weights record the config they belong to, and loadAdapter refuses such a
 * pair instead of loading them under the wrong settings.
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
  await writePair(path.join(dir, WEIGHTS), tensors, { format: 'pt', [CONFIG_METADATA]: weightsConfig(config) },
    path.join(dir, CONFIG), JSON.stringify(config, null, 2) + '\n');
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
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) fail(where, `${CONFIG} is not a JSON object`);
  if (cfg.peft_type !== 'LORA') fail(where, `${CONFIG}: peft_type is ${describe(cfg.peft_type)}, only "LORA" is supported`);
  const r = cfg.r;
  const alpha = cfg.lora_alpha ?? 8;
  const dropout = cfg.lora_dropout ?? 0;
  if (typeof r !== 'number' || !Number.isSafeInteger(r) || r <= 0) fail(where, `${CONFIG}: r must be a positive integer, got ${describe(r)}`);
  if (typeof alpha !== 'number' || !Number.isFinite(alpha)) fail(where, `${CONFIG}: lora_alpha must be a number, got ${describe(alpha)}`);
  if (typeof dropout !== 'number' || !(dropout >= 0 && dropout < 1)) fail(where, `${CONFIG}: lora_dropout must be in [0, 1), got ${describe(dropout)}`);
  if (cfg.fan_in_fan_out === true) fail(where, `${CONFIG}: fan_in_fan_out adapters (GPT-2 style Conv1D) are not supported`);
  if (cfg.use_dora === true) fail(where, `${CONFIG}: DoRA adapters are not supported`);
  if (cfg.bias != null && cfg.bias !== 'none') fail(where, `${CONFIG}: bias ${describe(cfg.bias)} is not supported (only "none")`);
  for (const k of ['rank_pattern', 'alpha_pattern'] as const) {
    const v = cfg[k];
    if (v != null && (typeof v !== 'object' || Object.keys(v).length)) fail(where, `${CONFIG}: ${k} is not supported (all layers must share r and lora_alpha)`);
  }
  const tm = cfg.target_modules;
  let targets: string[] | RegExp;
  if (typeof tm === 'string') {
    try {
      targets = new RegExp(`^(?:${tm})$`); // PEFT: a string is a regex matched on the full name
    } catch (e) {
      fail(where, `${CONFIG}: target_modules ${JSON.stringify(tm.length > 200 ? `${tm.slice(0, 200)}…` : tm)} is not a valid regular expression (${(e as Error).message})`);
    }
  } else if (Array.isArray(tm) && tm.length && tm.every((t) => typeof t === 'string')) {
    targets = tm as string[];
  } else {
    fail(where, `${CONFIG}: target_modules must be a list of names or a regex string, got ${describe(tm)}`);
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
      if (e[m[2] as 'A' | 'B']) fail(where, `${WEIGHTS} has two lora_${m[2]} weights for '${m[1]}': '${e[m[2] as 'A' | 'B']}' and '${key}'`);
      e[m[2] as 'A' | 'B'] = key;
      found.set(m[1], e);
    }
    if (unexpected.length) fail(where, `${WEIGHTS} has keys that are not LoRA A/B weights: ${unexpected.slice(0, 8).join(', ')}`);
    const incomplete = [...found].filter(([, e]) => !e.A || !e.B).map(([n]) => n);
    if (incomplete.length) fail(where, `${WEIGHTS} lacks lora_A or lora_B for: ${incomplete.join(', ')}`);
    const recorded = st.metadata[CONFIG_METADATA];
    if (recorded !== undefined && recorded !== weightsConfig(cfg)) {
      fail(where, `${CONFIG} does not belong to ${WEIGHTS}: the weights were saved with ${recorded.length > 300 ? `${recorded.slice(0, 300)}…` : recorded}, the config says ${weightsConfig(cfg)} (was a save interrupted between the two files? save the adapter again)`);
    }

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
      if (m instanceof LoRALinear) {
        if (m.r !== r) fail(where, `'${name}' is already a LoRALinear with r=${m.r}, the adapter has r=${r}`);
        if (m.alpha !== alpha || m.useRslora !== (cfg.use_rslora === true)) {
          fail(where, `'${name}' is already a LoRALinear with lora_alpha=${m.alpha}, use_rslora=${m.useRslora}; the adapter has lora_alpha=${alpha}, use_rslora=${cfg.use_rslora === true}`);
        }
        if (m.merged) fail(where, `'${name}' is a LoRALinear whose adapter is merged into its weight; call unmergeLora(model) first`);
      }
    }

    // Every tensor is read and checked before the model is changed, so a failure leaves it as it was.
    const names = [...found.keys()];
    const values: Tensor[] = [];
    try {
      for (const name of names) {
        const m = modules.get(name)!;
        const dtype = (m instanceof LoRALinear ? m.origLinear : (m as Linear)).weight.dtype as 'float32';
        for (const key of [found.get(name)!.A!, found.get(name)!.B!]) {
          const t = await st.read(key, { dtype });
          values.push(t);
          if (!native.allFinite(t._live(where))) fail(where, `${WEIGHTS}: '${key}' holds NaN or Inf`);
        }
      }
      const fresh = new Set(names);
      injectLora(model, {
        r, alpha, dropout, useRslora: cfg.use_rslora === true,
        init: cfg.init_lora_weights === 'gaussian' ? 'gaussian' : 'kaiming',
        filter: (name) => fresh.has(name),
      });
      names.forEach((name, i) => {
        const layer = model.getSubmodule(name) as LoRALinear;
        noGrad(() => {
          layer.A!.copy_(values[2 * i]);
          layer.B!.copy_(values[2 * i + 1]);
        });
      });
    } finally {
      for (const t of values) t.dispose();
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
    if (model.config?.raw) {
      const cfg = { ...model.config.raw, torch_dtype: 'float32' };
      await writePair(path.join(dir, 'model.safetensors'), out, { format: 'pt' }, path.join(dir, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
    } else {
      await saveSafetensors(path.join(dir, 'model.safetensors'), out, { metadata: { format: 'pt' } });
    }
  } finally {
    for (const t of temps) t.dispose();
  }
}
