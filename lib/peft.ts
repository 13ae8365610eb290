// Adapters in the format Python's PEFT reads and writes: adapter_config.json
// plus adapter_model.safetensors with keys
//   base_model.model.<module path>.lora_A.weight  [r, in]
//   base_model.model.<module path>.lora_B.weight  [out, r]
// and merged exports as ordinary Hugging Face checkpoints.
import * as fs from 'fs';
import * as path from 'path';
import { Module } from './nn/module';
import { Linear } from './nn/layers';
import { Embedding } from './nn/transformer';
import { _adapterNames, _inAdapterSlotAsync, adapterDtype, LoRAEmbedding, loraEmbeddingLayers, LoRALinear, ModulesToSaveWrapper, _wrapModulesToSave, checkPeftTargetFields, getLoraAB, loraLayers, modulesToSaveLayers, peftTargetMatcher } from './lora';
import { Tensor } from './tensor';
import { noGrad } from './autograd';
import { SafetensorsFile, saveSafetensors } from './safetensors';
import { stageFile } from './atomic';
import { READ_LIMITS, pathExists, readJsonFile, readWholeFile, realPathOf } from './fsio';
import { allFinite } from './ops/elementwise';
import { checkBool, checkOptions, checkKnownKeys, describe, typeError } from './errors';

const PREFIX = 'base_model.model.';
const CONFIG = 'adapter_config.json';
const WEIGHTS = 'adapter_model.safetensors';

export interface SaveAdapterOptions {
  /** Written as base_model_name_or_path (PEFT uses it to find the base model). */
  baseModelNameOrPath?: string | null;
  /** Save only this adapter (default: every adapter; 'default' into dir, others into dir/<name>, as PEFT). */
  adapterName?: string;
}

export interface LoadAdapterOptions {
  /** PEFT's adapter_name: load as this named adapter (a new name next to an active adapter is added inactive). */
  adapterName?: string;
  /**
   * PEFT's autocast_adapter_dtype (PeftModel.from_pretrained): the adapters of bfloat16/float16
   * layers are float32 (default true); false keeps them in the layer's dtype.
   */
  autocastAdapterDtype?: boolean;
}

/** The last save queued for each directory, by its real path (see inTurn). */
const savesInTurn = new Map<string, Promise<void>>();

/**
 * Runs `save` after every save into `dir` called before it, by the directory's real path (so through
 * any link to it too): saves at once into one directory would interleave their renames and could leave
 * the weights of one beside the config of another. Called synchronously by the saving function, so
 * the saves run in the order of the calls and the last call's files are the ones left.
 */
function inTurn(dir: string, save: () => Promise<void>): Promise<void> {
  const key = realPathOf(dir);
  const mine = (savesInTurn.get(key) ?? Promise.resolve()).then(save);
  const settled = mine.then(() => undefined, () => undefined);
  savesInTurn.set(key, settled);
  void settled.then(() => {
    if (savesInTurn.get(key) === settled) savesInTurn.delete(key);
  });
  return mine;
}

/**
 * Writes `weights` with saveSafetensors and `content` to `configFile`, so that a failure while
 * writing either (a full disk) leaves both files as they were: the config is staged beside its target
 * first, then the weights are written and renamed, then the config is renamed. A config equal to the
 * file already there is not rewritten (one rename, so the save is atomic).
 */
async function writePair(weightsFile: string, tensors: Record<string, Tensor>, metadata: Record<string, string>,
  configFile: string, content: string): Promise<void> {
  // Only compared with the new content: a config that cannot be read is replaced (a FIFO there is not waited on).
  const old = await readWholeFile('saveAdapter', configFile, READ_LIMITS.config).then((b) => b.toString('utf8'), () => null);
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
 * to the weights beside it. The patterns are recorded only when used, so adapters saved before
 * they existed still match.
 */
const CONFIG_METADATA = 'lora_cuda.adapter_config';
function weightsConfig(c: Record<string, unknown>): string {
  const tm = c.target_modules;
  const patterns: Record<string, unknown> = {};
  for (const k of ['rank_pattern', 'alpha_pattern']) {
    const v = c[k];
    if (v && typeof v === 'object' && Object.keys(v).length) patterns[k] = v;
  }
  for (const k of ['use_dora', 'lora_bias']) if (c[k] === true) patterns[k] = true;
  if (Array.isArray(c.modules_to_save) && c.modules_to_save.length) patterns.modules_to_save = c.modules_to_save;
  return JSON.stringify({
    r: c.r ?? 8,
    lora_alpha: c.lora_alpha ?? 8,
    use_rslora: c.use_rslora === true,
    target_modules: Array.isArray(tm) ? [...tm].sort() : tm,
    ...patterns,
  });
}

/** The most frequent value (the first of equally frequent ones). */
function mostCommon<T>(values: T[]): T {
  const counts = new Map<T, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  let best = values[0];
  for (const [v, n] of counts) if (n > (counts.get(best) ?? 0)) best = v;
  return best;
}

/** A regular expression that PEFT's pattern matching (`(.*\.)?(KEY)$` on the module name) reads as this one name. */
function exactPattern(name: string): string {
  return `^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`;
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
 * pair instead of loading them under the wrong settings. Layers with another
 * rank or alpha than most are written as PEFT's rank_pattern / alpha_pattern.
 */
export async function saveAdapter(model: Module, dir: string, options?: SaveAdapterOptions): Promise<void> {
  const where = 'saveAdapter';
  if (!(model instanceof Module)) throw typeError(where, 'model', 'a Module', model);
  if (typeof dir !== 'string' || dir === '') throw typeError(where, 'dir', 'a directory path', dir);
  const o = checkOptions(where, options);
  checkKnownKeys(where, o, ['baseModelNameOrPath', 'adapterName']);
  const { active, stored } = _adapterNames(model);
  // As PEFT's save_pretrained: the adapter named 'default' goes to dir, any other to dir/<name>.
  const into = (n: string) => (n === 'default' ? dir : path.join(dir, n));
  const rest = { baseModelNameOrPath: o.baseModelNameOrPath as string | null | undefined };
  if (o.adapterName !== undefined) {
    const name = o.adapterName;
    if (typeof name !== 'string' || name === '') throw typeError(where, 'options.adapterName', 'an adapter name', name);
    if (name === active) return saveActive(model, into(name), rest);
    if (!stored.includes(name)) throw new RangeError(`${where}: the model has no adapter '${name}' (it has: ${[...(active !== null ? [active] : []), ...stored].map((n) => `'${n}'`).join(', ') || 'none'})`);
    return _inAdapterSlotAsync(where, model, name, () => saveActive(model, into(name), rest));
  }
  if (!stored.length) return saveActive(model, active === null ? dir : into(active), rest);
  if (active !== null) await saveActive(model, into(active), rest);
  for (const n of stored) await _inAdapterSlotAsync(where, model, n, () => saveActive(model, into(n), rest));
}

/** Saves the adapter whose layers are in the tree (see saveAdapter). */
async function saveActive(model: Module, dir: string, o: { baseModelNameOrPath?: string | null }): Promise<void> {
  const where = 'saveAdapter';
  const base = o.baseModelNameOrPath ?? (model as { config?: { raw?: { _name_or_path?: string } } }).config?.raw?._name_or_path ?? null;
  if (base !== null && typeof base !== 'string') throw typeError(where, 'options.baseModelNameOrPath', 'a string', base);

  const layers = loraLayers(model).filter(([, m]) => m.r > 0);
  const embs = loraEmbeddingLayers(model).filter(([, m]) => m.r > 0);
  if (!layers.length && !embs.length) throw new RangeError(`${where}: the model has no LoRA layers with r > 0 (call injectLora first)`);
  // The settings an adapter has once; LoRA on embeddings has no dropout, DoRA or lora_bias of its own.
  const first = layers.length ? layers[0][1]
    : { dropout: 0, useRslora: embs[0][1].useRslora, useDora: false, loraBias: null, init: 'kaiming' as const };
  for (const [name, m] of embs) {
    if (m.useRslora !== first.useRslora) {
      throw new RangeError(`${where}: layer '${name}' has useRslora=${m.useRslora} but the other layers have useRslora=${first.useRslora}; a PEFT adapter has one use_rslora`);
    }
  }
  for (const [name, m] of layers) {
    if (m.useRslora !== first.useRslora || m.dropout !== first.dropout || m.useDora !== first.useDora || (m.loraBias !== null) !== (first.loraBias !== null)) {
      throw new RangeError(`${where}: layer '${name}' has dropout=${m.dropout}, useRslora=${m.useRslora}, useDora=${m.useDora}, loraBias=${m.loraBias !== null} ` +
        `but '${layers[0][0]}' has dropout=${first.dropout}, useRslora=${first.useRslora}, useDora=${first.useDora}, loraBias=${first.loraBias !== null}; ` +
        'a PEFT adapter has one lora_dropout, use_rslora, use_dora and lora_bias');
    }
  }
  // target_modules by last name part when that selects exactly these layers,
  // else by full name (PEFT matches a target against the end of the name).
  const all: [string, { r: number; alpha: number }][] = [...layers, ...embs];
  const wrapped = new Set(all.map(([n]) => n));
  const parts = [...new Set(all.map(([n]) => lastPart(n)))].sort();
  const inner = new Set<Module>();
  for (const [, m] of layers) inner.add(m.origLinear);
  for (const [, m] of embs) inner.add(m.origEmbedding);
  const others = [...model.namedModules()].filter(([n, m]) => (m instanceof Linear || m instanceof Embedding) && !wrapped.has(n) &&
    !inner.has(m) && parts.includes(lastPart(n)));
  const targetModules = others.length ? [...wrapped].sort() : parts;
  const r = mostCommon(all.map(([, m]) => m.r));
  const alpha = mostCommon(all.map(([, m]) => m.alpha));
  const rankPattern = Object.fromEntries(all.filter(([, m]) => m.r !== r).map(([n, m]) => [exactPattern(n), m.r]));
  const alphaPattern = Object.fromEntries(all.filter(([, m]) => m.alpha !== alpha).map(([n, m]) => [exactPattern(n), m.alpha]));

  const tensors: Record<string, Tensor> = {};
  // Modules to save: their copies' tensors under the module's own keys (PEFT drops 'modules_to_save.<adapter>.').
  const toSave = modulesToSaveLayers(model);
  for (const [name, w] of toSave) {
    for (const [k, t] of Object.entries(w.modulesToSave.stateDict())) tensors[`${PREFIX}${name}.${k}`] = t;
  }
  for (const [name, m] of layers) {
    m.A!._checkLive(where, `layer '${name}': A`);
    m.B!._checkLive(where, `layer '${name}': B`);
    tensors[`${PREFIX}${name}.lora_A.weight`] = m.A!;
    tensors[`${PREFIX}${name}.lora_B.weight`] = m.B!;
    if (m.loraBias) {
      m.loraBias._checkLive(where, `layer '${name}': loraBias`);
      tensors[`${PREFIX}${name}.lora_B.bias`] = m.loraBias;
    }
    if (m.magnitude) {
      m.magnitude._checkLive(where, `layer '${name}': magnitude`);
      // PEFT's key for DoRA's magnitude has no '.weight'.
      tensors[`${PREFIX}${name}.lora_magnitude_vector`] = m.magnitude;
    }
  }
  for (const [name, m] of embs) {
    m.A!._checkLive(where, `layer '${name}': A`);
    m.B!._checkLive(where, `layer '${name}': B`);
    tensors[`${PREFIX}${name}.lora_embedding_A`] = m.A!;
    tensors[`${PREFIX}${name}.lora_embedding_B`] = m.B!;
  }
  // As PEFT's default save (save_embedding_layers "auto"): when target_modules names embed_tokens or
  // lm_head, the adapted layers of those names are written with their base weight too.
  if (targetModules.some((t) => t === 'embed_tokens' || t === 'lm_head')) {
    for (const [name, m] of all as [string, LoRALinear | LoRAEmbedding][]) {
      const part = lastPart(name);
      if (part !== 'embed_tokens' && part !== 'lm_head') continue;
      const w = m instanceof LoRALinear ? m.origLinear.weight : m.origEmbedding.weight;
      w._checkLive(where, `layer '${name}': weight`);
      tensors[`${PREFIX}${name}.base_layer.weight`] = w;
    }
  }
  const config = {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: base,
    r,
    lora_alpha: alpha,
    lora_dropout: first.dropout,
    target_modules: targetModules,
    bias: 'none',
    use_rslora: first.useRslora,
    use_dora: first.useDora,
    fan_in_fan_out: false,
    // PEFT's names for A's start: 'gaussian' is its N(0, 1/r²), true its kaiming-uniform default. It has
    // none for the reference N(0, 0.01²) ('normal'); the field only decides how PEFT fills the layers
    // before the saved weights replace them, so that is written as PEFT's default.
    init_lora_weights: first.init === 'gaussian' ? 'gaussian' : true,
    inference_mode: false,
    modules_to_save: toSave.length ? toSave.map(([n]) => n) : null,
    layers_to_transform: null,
    rank_pattern: rankPattern,
    alpha_pattern: alphaPattern,
    revision: null,
    lora_bias: first.loraBias !== null,
  };
  await inTurn(dir, async () => {
    await fs.promises.mkdir(dir, { recursive: true });
    await writePair(path.join(dir, WEIGHTS), tensors, { format: 'pt', [CONFIG_METADATA]: weightsConfig(config) },
      path.join(dir, CONFIG), JSON.stringify(config, null, 2) + '\n');
  });
}

function fail(where: string, msg: string): never {
  throw new RangeError(`${where}: ${msg}`);
}

/** A PEFT config value that means "not used": absent, null, false, or empty. */
function isOff(v: unknown): boolean {
  return v === undefined || v === null || v === false || (Array.isArray(v) && v.length === 0) ||
    (typeof v === 'object' && !Array.isArray(v) && Object.keys(v as object).length === 0);
}

/**
 * What loadAdapter does with each field of PEFT's LoraConfig (and PeftConfig), in one place.
 * Read and applied: peft_type, r, lora_alpha, lora_dropout, target_modules, exclude_modules,
 * layers_to_transform, layers_pattern, use_rslora, use_dora, lora_bias, modules_to_save, rank_pattern, alpha_pattern, init_lora_weights, bias ("none" only).
 * Ignored, whatever their value, because they do not change what a loaded adapter computes:
 */
export const PEFT_IGNORED_FIELDS: readonly string[] = [
  'base_model_name_or_path', 'revision', 'task_type', 'inference_mode', 'auto_mapping', 'peft_version',
  // distribution and run-time settings
  'megatron_config', 'megatron_core', 'runtime_config',
  // settings of initialisations (the saved weights replace what they would compute)
  'loftq_config', 'eva_config', 'corda_config', 'lora_ga_config',
  // read only together with fields refused below (use_qalora)
  'qalora_group_size',
  // fields of old PEFT versions
  'enable_lora', 'merge_weights',
];
/** Fields that change what the adapter computes and are not implemented: refused unless unset. */
const PEFT_UNSUPPORTED_FIELDS: Record<string, string> = {
  fan_in_fan_out: 'weights stored transposed (GPT-2 style Conv1D layers)',
  trainable_token_indices: 'trained rows of the token embedding',
  layer_replication: 'repeated decoder layers',
  target_parameters: 'LoRA on parameters rather than modules',
  alora_invocation_tokens: 'Activated LoRA (the adapter acts only after its invocation tokens)',
  use_qalora: 'QALoRA input pooling',
  velora_config: 'VeLoRA',
  monteclora_config: 'MonteCLoRA sampling',
  use_bdlora: 'block-diagonal LoRA',
  arrow_config: 'Arrow routing',
  kasa_config: 'KaSA',
};
const PEFT_APPLIED_FIELDS = ['peft_type', 'r', 'lora_alpha', 'lora_dropout', 'target_modules', 'exclude_modules', 'layers_to_transform', 'layers_pattern', 'use_rslora', 'use_dora', 'lora_bias', 'modules_to_save',
  'rank_pattern', 'alpha_pattern', 'init_lora_weights', 'bias', 'ensure_weight_tying'];
/**
 * How loadAdapter treats each field of PEFT's LoraConfig and PeftConfig: 'applied' (read and honoured),
 * 'ignored' (does not change what a loaded adapter computes) or 'refused' (refused, naming the field,
 * unless unset).
 */
export const PEFT_FIELD_HANDLING: Readonly<Record<string, 'applied' | 'ignored' | 'refused'>> = Object.freeze(Object.fromEntries([
  ...PEFT_APPLIED_FIELDS.map((k) => [k, 'applied'] as const),
  ...PEFT_IGNORED_FIELDS.map((k) => [k, 'ignored'] as const),
  ...Object.keys(PEFT_UNSUPPORTED_FIELDS).map((k) => [k, 'refused'] as const),
]));
/** init_lora_weights values whose adapters belong to a base model that PEFT changed while initialising them. */
const BASE_CHANGING_INIT = /^(pissa|olora|corda|loftq|lora_ga)/i;

/** PEFT's rank_pattern / alpha_pattern: the first key whose regex matches the end of the name at a dot. */
function patternValue(where: string, field: string, pattern: Record<string, unknown>, name: string, dflt: number): number {
  for (const [key, value] of Object.entries(pattern)) {
    let re: RegExp;
    try {
      re = new RegExp(`^(?:.*\\.)?(?:${key})$`);
    } catch (e) {
      fail(where, `${CONFIG}: ${field} key ${JSON.stringify(key)} is not a valid regular expression (${(e as Error).message})`);
    }
    if (re.test(name)) return value as number;
  }
  return dflt;
}

/** Checks every field of an adapter config against what this project implements (see PEFT_IGNORED_FIELDS). */
function checkConfigFields(where: string, cfg: Record<string, unknown>): void {
  for (const [k, v] of Object.entries(cfg)) {
    if (PEFT_APPLIED_FIELDS.includes(k) || PEFT_IGNORED_FIELDS.includes(k)) continue;
    const what = Object.hasOwn(PEFT_UNSUPPORTED_FIELDS, k) ? PEFT_UNSUPPORTED_FIELDS[k] : null;
    if (isOff(v)) continue;
    fail(where, what
      ? `${CONFIG}: ${k} is ${describe(v)}: ${what} is not supported`
      : `${CONFIG}: field ${k} (${describe(v)}) is unknown to lora-cuda, so it cannot tell whether the adapter computes something else with it; refusing rather than guessing`);
  }
  if (cfg.bias != null && cfg.bias !== 'none') fail(where, `${CONFIG}: bias ${describe(cfg.bias)} is not supported (only "none")`);
  const init = cfg.init_lora_weights;
  if (typeof init === 'string' && BASE_CHANGING_INIT.test(init)) {
    fail(where, `${CONFIG}: init_lora_weights ${JSON.stringify(init)}: such an adapter belongs to a base model whose weights PEFT changed when it was initialised, so on the original base it computes something else; convert it to a plain LoRA in PEFT (save_pretrained with path_initial_model_for_weight_conversion) first`);
  }
  for (const k of ['rank_pattern', 'alpha_pattern'] as const) {
    const p = cfg[k];
    if (p == null) continue;
    if (typeof p !== 'object' || Array.isArray(p)) fail(where, `${CONFIG}: ${k} must be an object mapping module names to numbers, got ${describe(p)}`);
    for (const [key, value] of Object.entries(p)) {
      const ok = k === 'rank_pattern' ? typeof value === 'number' && Number.isSafeInteger(value) && value > 0 : typeof value === 'number' && Number.isFinite(value);
      if (!ok) fail(where, `${CONFIG}: ${k}[${JSON.stringify(key)}] must be ${k === 'rank_pattern' ? 'a positive integer' : 'a number'}, got ${describe(value)}`);
    }
  }
}

/**
 * Reads an adapter saved by saveAdapter or by Python PEFT, wraps the layers it
 * selects in LoRALinear (per its config, rank_pattern and alpha_pattern
 * included) and loads A and B. Every field, key and shape is checked before
 * anything is injected: config fields that would change what the adapter
 * computes and are not implemented are refused by name. As in PEFT, weights
 * for modules the config does not select are not applied; they are named in a
 * process warning (code LORA_CUDA_IGNORED_ADAPTER_KEYS). The new layers take
 * the model's mode (a model in eval mode stays without dropout). Returns the
 * names of the layers.
 */
export async function loadAdapter(model: Module, dir: string, options?: LoadAdapterOptions): Promise<string[]> {
  const where = 'loadAdapter';
  if (!(model instanceof Module)) throw typeError(where, 'model', 'a Module', model);
  if (typeof dir !== 'string' || dir === '') throw typeError(where, 'dir', 'a directory path', dir);
  const o = checkOptions(where, options);
  checkKnownKeys(where, o, ['adapterName', 'autocastAdapterDtype']);
  const autocast = o.autocastAdapterDtype === undefined ? true : checkBool(where, 'options.autocastAdapterDtype', o.autocastAdapterDtype);
  if (o.adapterName !== undefined) {
    if (typeof o.adapterName !== 'string' || o.adapterName === '' || /[/\\]/.test(o.adapterName)) {
      throw typeError(where, 'options.adapterName', 'a non-empty name without a path separator', o.adapterName);
    }
    return _inAdapterSlotAsync(where, model, o.adapterName, () => loadAdapter(model, dir, { autocastAdapterDtype: autocast }));
  }
  const cfgPath = path.join(dir, CONFIG);
  let cfg: Record<string, unknown>;
  try {
    cfg = await readJsonFile(where, cfgPath, READ_LIMITS.config) as Record<string, unknown>;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    throw new Error(`${where}: ${cfgPath} not found (not a PEFT adapter directory)`);
  }
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) fail(where, `${CONFIG} is not a JSON object`);
  if (cfg.peft_type !== 'LORA') fail(where, `${CONFIG}: peft_type is ${describe(cfg.peft_type)}, only "LORA" is supported`);
  // PEFT's LoraConfig defaults: r = 8, lora_alpha = 8.
  const r = cfg.r ?? 8;
  const alpha = cfg.lora_alpha ?? 8;
  const dropout = cfg.lora_dropout ?? 0;
  if (typeof r !== 'number' || !Number.isSafeInteger(r) || r <= 0) fail(where, `${CONFIG}: r must be a positive integer, got ${describe(r)}`);
  if (typeof alpha !== 'number' || !Number.isFinite(alpha)) fail(where, `${CONFIG}: lora_alpha must be a number, got ${describe(alpha)}`);
  if (typeof dropout !== 'number' || !(dropout >= 0 && dropout < 1)) fail(where, `${CONFIG}: lora_dropout must be in [0, 1), got ${describe(dropout)}`);
  checkConfigFields(where, cfg);
  const rankPattern = (cfg.rank_pattern ?? {}) as Record<string, unknown>;
  const alphaPattern = (cfg.alpha_pattern ?? {}) as Record<string, unknown>;
  const useRslora = cfg.use_rslora === true;
  for (const k of ['use_dora', 'lora_bias']) {
    if (cfg[k] != null && typeof cfg[k] !== 'boolean') fail(where, `${CONFIG}: ${k} must be true or false, got ${describe(cfg[k])}`);
  }
  const useDora = cfg.use_dora === true;
  const loraBias = cfg.lora_bias === true;
  if (useDora && loraBias) fail(where, `${CONFIG}: lora_bias is not supported with use_dora (PEFT refuses the pair)`);

  // The layers the config selects: PEFT's target_modules (a list, a full-match regex, or
  // "all-linear": every Linear but the output layer), less exclude_modules.
  // The Linear inside a LoRALinear is part of that layer, not a layer of its own: told by identity,
  // not by name, so a user's module that happens to be called origLinear is a layer like any other.
  // The model itself is never a target (PEFT skips the root too).
  const modules = new Map(model.namedModules());
  const inner = new Set<Module>();
  for (const m of modules.values()) if (m instanceof LoRALinear) inner.add(m.origLinear);
  for (const m of modules.values()) if (m instanceof LoRAEmbedding) inner.add(m.origEmbedding);
  // Modules inside a module to save are not layers of their own.
  for (const m of modules.values()) {
    if (m instanceof ModulesToSaveWrapper) for (const d of [...m.originalModule.modules(), ...m.modulesToSave.modules()]) inner.add(d);
  }
  // PEFT's modules_to_save: every module whose name ends with an entry is trained whole, as a copy.
  const mts = cfg.modules_to_save;
  if (mts != null && !(Array.isArray(mts) && mts.every((e) => typeof e === 'string' && e !== ''))) {
    fail(where, `${CONFIG}: modules_to_save must be a list of module names, got ${describe(mts)}`);
  }
  const saveEntries = (mts ?? []) as string[];
  // name → the module whose tensors the file holds (the copy of a wrapper already there).
  const saveTargets = new Map<string, Module>();
  for (const [n, m] of modules) {
    if (n === '' || inner.has(m) || !saveEntries.some((e) => n.endsWith(e))) continue;
    if (m instanceof LoRALinear || m instanceof LoRAEmbedding) fail(where, `${CONFIG}: modules_to_save names '${n}', which has a LoRA adapter`);
    saveTargets.set(n, m instanceof ModulesToSaveWrapper ? m.modulesToSave : m);
  }
  if (saveEntries.length && !saveTargets.size) fail(where, `${CONFIG}: modules_to_save ${describe(saveEntries)} names no module of this model`);
  const saveKeys = new Map<string, { name: string; target: Tensor }>();
  for (const [n, m] of saveTargets) {
    for (const [k, t] of Object.entries(m.stateDict())) saveKeys.set(`${PREFIX}${n}.${k}`, { name: n, target: t });
  }
  // Layers LoRA can adapt: Linear and, as PEFT, Embedding (lora_embedding_A / lora_embedding_B).
  const isLayer = (m: Module | undefined) => ((m instanceof Linear || m instanceof Embedding) && !inner.has(m)) || m instanceof LoRALinear || m instanceof LoRAEmbedding;
  const isEmb = (m: Module | undefined) => m instanceof Embedding || m instanceof LoRAEmbedding;
  const linears = [...modules].filter(([n, m]) => n !== '' && isLayer(m)).map(([n]) => n);
  const tm = cfg.target_modules;
  let targetList: string | string[];
  if (tm === 'all-linear') {
    // PEFT turns "all-linear" into the last name parts of the Linear layers, the output layer's aside.
    targetList = [...new Set(linears.filter((n) => n !== 'lm_head' && !isEmb(modules.get(n))).map(lastPart))];
  } else {
    if (!(typeof tm === 'string' || (Array.isArray(tm) && tm.length > 0 && tm.every((t) => typeof t === 'string')))) {
      fail(where, `${CONFIG}: target_modules must be a list of names or a regex string, got ${describe(tm)}`);
    }
    targetList = tm as string | string[];
  }
  try {
    checkPeftTargetFields(where, { idx: `${CONFIG}: layers_to_transform`, pattern: `${CONFIG}: layers_pattern`, exclude: `${CONFIG}: exclude_modules` },
      cfg.layers_to_transform, cfg.layers_pattern, cfg.exclude_modules);
  } catch (e) {
    fail(where, (e as Error).message.replace(/^loadAdapter: /, ''));
  }
  const pick = peftTargetMatcher(where, {
    targetModules: targetList,
    layersToTransform: cfg.layers_to_transform as number | number[] | null | undefined,
    layersPattern: cfg.layers_pattern as string | string[] | null | undefined,
    excludeModules: cfg.exclude_modules as string | string[] | null | undefined,
    modulesToSave: saveEntries,
  }, (f) => `${CONFIG}: ${f}`);
  // Without exclusions, for telling "weights for a module of another kind" from "not selected".
  const targeted = peftTargetMatcher(where, { targetModules: targetList, layersToTransform: cfg.layers_to_transform as number | number[] | null | undefined,
    layersPattern: cfg.layers_pattern as string | string[] | null | undefined }, (f) => `${CONFIG}: ${f}`);
  const excluded = (name: string) => targeted(name) && !pick(name);
  const selected = linears.filter((n) => targeted(n) && !excluded(n));

  const weightsPath = path.join(dir, WEIGHTS);
  if (!pathExists(where, weightsPath)) {
    const bin = fs.existsSync(path.join(dir, 'adapter_model.bin'));
    fail(where, `${weightsPath} not found${bin ? ' (adapter_model.bin is a PyTorch pickle and is not supported; save with safe_serialization=True)' : ''}`);
  }
  const st = await SafetensorsFile._open(where, weightsPath);
  try {
    // Group the file's keys by module path.
    type Keys = { A?: string; B?: string; bias?: string; magnitude?: string; base?: string };
    const found = new Map<string, Keys>();
    const embKind = new Map<string, 'emb' | 'lin'>();
    const unexpected: string[] = [];
    const what: Record<keyof Keys, string> = { A: 'lora_A weights', B: 'lora_B weights', bias: 'lora_B biases', magnitude: 'DoRA magnitudes', base: 'base layer weights' };
    for (const key of st.keys()) {
      if (saveKeys.has(key)) continue;
      // PEFT's keys: lora_A.weight, lora_B.weight, lora_B.bias (lora_bias) and lora_magnitude_vector (DoRA),
      // some older files with the adapter's name before the last part.
      // On embeddings: lora_embedding_A / lora_embedding_B, and the base_layer.weight PEFT saves beside them.
      const ab = /^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.(weight|bias)$/.exec(key);
      const mag = ab ? null : /^base_model\.model\.(.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$/.exec(key);
      const emb = ab || mag ? null : /^base_model\.model\.(.+)\.lora_embedding_([AB])(?:\.[^.]+)?$/.exec(key);
      const base = ab || mag || emb ? null : /^base_model\.model\.(.+)\.base_layer\.weight$/.exec(key);
      const role: keyof Keys | null = ab ? (ab[3] === 'weight' ? ab[2] as 'A' | 'B' : ab[2] === 'B' ? 'bias' : null)
        : mag ? 'magnitude' : emb ? emb[2] as 'A' | 'B' : base ? 'base' : null;
      if (!role) {
        unexpected.push(key);
        continue;
      }
      const path = (ab ?? mag ?? emb ?? base)![1];
      if (emb || ab) {
        const kind = emb ? 'emb' : 'lin';
        const prev = embKind.get(path);
        if (prev && prev !== kind) fail(where, `${WEIGHTS} has both lora_${emb ? emb[2] : ab![2]} and lora_embedding weights for '${path}'`);
        embKind.set(path, kind);
      }
      const e = found.get(path) ?? {};
      if (e[role]) fail(where, `${WEIGHTS} has two ${what[role]} for '${path}': '${e[role]}' and '${key}'`);
      e[role] = key;
      found.set(path, e);
    }
    if (unexpected.length) fail(where, `${WEIGHTS} has keys that are not LoRA weights${saveKeys.size ? ' or of the modules to save' : ''}: ${unexpected.slice(0, 8).join(', ')}`);
    const fileKeys = new Set(st.keys());
    const lacking = [...saveKeys.keys()].filter((k) => !fileKeys.has(k));
    if (lacking.length) fail(where, `${WEIGHTS} lacks tensors of the modules to save: ${lacking.slice(0, 8).join(', ')}`);
    for (const [k, { target }] of saveKeys) {
      const e = st.entry(k);
      if (e.shape.join() !== target.shape.join()) fail(where, `'${k}' has shape [${e.shape.join(', ')}], expected [${target.shape.join(', ')}]`);
    }
    // One use_dora and one lora_bias per adapter: their tensors are there for every layer or for none.
    for (const [field, role, on] of [['use_dora', 'magnitude', useDora], ['lora_bias', 'bias', loraBias]] as const) {
      const have = [...found].filter(([, e]) => e[role]).map(([n]) => n);
      if (!on && have.length) fail(where, `${WEIGHTS} has ${what[role]} (${found.get(have[0])![role]}) but ${CONFIG} does not set ${field}`);
    }
    const recorded = st.metadata[CONFIG_METADATA];
    if (recorded !== undefined && recorded !== weightsConfig(cfg)) {
      fail(where, `${CONFIG} does not belong to ${WEIGHTS}: the weights were saved with ${recorded.length > 300 ? `${recorded.slice(0, 300)}…` : recorded}, the config says ${weightsConfig(cfg)} (was a save interrupted between the two files? save the adapter again)`);
    }
    // Weights of modules the config does not select are not applied (PEFT loads the state dict
    // with strict=False and reports them as unexpected keys).
    const chosen = new Set(selected);
    // A selected module that is not a Linear (an embedding, say) would get a LoRA of another kind in PEFT.
    const otherKinds = [...found.keys()].filter((n) => !chosen.has(n) && modules.has(n) && !inner.has(modules.get(n)!) && targeted(n) && !excluded(n));
    if (otherKinds.length) fail(where, `${WEIGHTS} has weights for '${otherKinds[0]}', which is not a Linear or Embedding layer of this model (LoRA on other module kinds is not supported)`);
    const ignored = [...found].filter(([n]) => !chosen.has(n)).flatMap(([, e]) => [e.A, e.B, e.base].filter((k): k is string => !!k));
    for (const n of [...found.keys()]) if (!chosen.has(n)) found.delete(n);
    const incomplete = [...found].filter(([, e]) => !e.A || !e.B).map(([n]) => n);
    if (incomplete.length) fail(where, `${WEIGHTS} lacks lora_A or lora_B for: ${incomplete.join(', ')}`);
    const noMag = useDora ? [...found].filter(([, e]) => !e.magnitude).map(([n]) => n) : [];
    if (noMag.length) fail(where, `${WEIGHTS} lacks the DoRA magnitude (lora_magnitude_vector) for: ${noMag.slice(0, 8).join(', ')}`);
    const noBias = loraBias ? [...found].filter(([, e]) => !e.bias).map(([n]) => n) : [];
    if (noBias.length) fail(where, `${WEIGHTS} lacks the lora_B bias (lora_bias) for: ${noBias.slice(0, 8).join(', ')}`);

    // The layers the config selects must be exactly those with weights.
    const missing = selected.filter((n) => !found.has(n));
    if (missing.length) fail(where, `${WEIGHTS} has no weights for layers selected by target_modules: ${missing.slice(0, 8).join(', ')}`);
    const settings = new Map<string, { r: number; alpha: number }>();
    const baseOf = (m: Module | undefined): Linear | Embedding =>
      m instanceof LoRALinear ? m.origLinear : m instanceof LoRAEmbedding ? m.origEmbedding : m as Linear | Embedding;
    for (const name of found.keys()) {
      const m = modules.get(name);
      const lin = baseOf(m);
      const lr = patternValue(where, 'rank_pattern', rankPattern, name, r);
      const la = patternValue(where, 'alpha_pattern', alphaPattern, name, alpha);
      settings.set(name, { r: lr, alpha: la });
      const onEmb = lin instanceof Embedding;
      if (onEmb !== (embKind.get(name) === 'emb')) {
        fail(where, `'${name}' is ${onEmb ? 'an Embedding' : 'a Linear'} but ${WEIGHTS} holds ${onEmb ? 'lora_A / lora_B' : 'lora_embedding_A / lora_embedding_B'} weights for it`);
      }
      if (onEmb && (useDora || loraBias)) fail(where, `${CONFIG}: ${useDora ? 'use_dora' : 'lora_bias'} on the Embedding '${name}' is not supported`);
      const a = st.entry(found.get(name)!.A!);
      const b = st.entry(found.get(name)!.B!);
      // lora_embedding_A [r, vocab] and lora_embedding_B [dim, r]; lora_A [r, in] and lora_B [out, r].
      const wantA = onEmb ? [lr, lin.numEmbeddings] : [lr, (lin as Linear).inFeatures];
      const wantB = onEmb ? [lin.embeddingDim, lr] : [(lin as Linear).outFeatures, lr];
      const baseKey = found.get(name)!.base;
      if (baseKey) {
        const e = st.entry(baseKey);
        if (e.shape.join() !== lin.weight.shape.join()) fail(where, `'${baseKey}' has shape [${e.shape.join(', ')}], expected [${lin.weight.shape.join(', ')}]`);
      }
      if (m instanceof LoRAEmbedding) {
        if (m.r !== lr || m.alpha !== la || m.useRslora !== useRslora) {
          fail(where, `'${name}' is already a LoRAEmbedding with r=${m.r}, lora_alpha=${m.alpha}, use_rslora=${m.useRslora}; the adapter has r=${lr}, lora_alpha=${la}, use_rslora=${useRslora}`);
        }
        if (m.merged) fail(where, `'${name}' is a LoRAEmbedding whose adapter is merged into its weight; call unmergeLora(model) first`);
      }
      if (a.shape.join() !== wantA.join()) fail(where, `'${a.name}' has shape [${a.shape.join(', ')}], expected [${wantA.join(', ')}]`);
      if (b.shape.join() !== wantB.join()) fail(where, `'${b.name}' has shape [${b.shape.join(', ')}], expected [${wantB.join(', ')}]`);
      for (const role of ['bias', 'magnitude'] as const) {
        const k = found.get(name)![role];
        if (!k) continue;
        const e = st.entry(k);
        const out = (lin as Linear).outFeatures;
        if (e.shape.join() !== String(out)) fail(where, `'${e.name}' has shape [${e.shape.join(', ')}], expected [${out}]`);
      }
      if (m instanceof LoRALinear) {
        if (m.r !== lr) fail(where, `'${name}' is already a LoRALinear with r=${m.r}, the adapter has r=${lr}`);
        if (m.useDora !== useDora || (m.loraBias !== null) !== loraBias) {
          fail(where, `'${name}' is already a LoRALinear with useDora=${m.useDora}, loraBias=${m.loraBias !== null}; the adapter has use_dora=${useDora}, lora_bias=${loraBias}`);
        }
        if (m.alpha !== la || m.useRslora !== useRslora) {
          fail(where, `'${name}' is already a LoRALinear with lora_alpha=${m.alpha}, use_rslora=${m.useRslora}; the adapter has lora_alpha=${la}, use_rslora=${useRslora}`);
        }
        if (m.merged) fail(where, `'${name}' is a LoRALinear whose adapter is merged into its weight; call unmergeLora(model) first`);
        m.A!._checkLive(where, `layer '${name}': A`);
        m.B!._checkLive(where, `layer '${name}': B`);
      }
      lin.weight._checkLive(where, `layer '${name}': weight`);
      // The layer is replaced through its dotted name, which must lead back to it.
      let reached: Module | null = null;
      try {
        reached = model.getSubmodule(name);
      } catch {
        // reported below
      }
      if (reached !== m) fail(where, `the module '${name}' cannot be reached by its dotted name (a property name with a '.'?), so it cannot be replaced`);
      // PEFT ties the adapters of tied layers (an lm_head sharing the embedding) with ensure_weight_tying:
      // the embedding then has an adapter too, which this project does not implement.
      if (cfg.ensure_weight_tying === true && [...modules.values()].some((o) => o !== lin && o instanceof Module &&
        Object.entries(o).some(([, v]) => v === lin.weight))) {
        fail(where, `${CONFIG}: ensure_weight_tying with '${name}', whose weight is tied to another module: adapters on tied embeddings are not supported`);
      }
    }
    // One model holds one adapter's settings: new layers must agree with the LoRA layers already there
    // on what a config has once (injectLora's rule).
    const names = [...found.keys()];
    const fresh = linears.filter((n) => found.has(n) && !(modules.get(n) instanceof LoRALinear) && !(modules.get(n) instanceof LoRAEmbedding));
    const existing = [...modules].find(([, m]) => m instanceof LoRALinear) as [string, LoRALinear] | undefined;
    const freshLin = fresh.filter((n) => !isEmb(modules.get(n)));
    if (freshLin.length && existing && (existing[1].useDora !== useDora || (existing[1].loraBias !== null) !== loraBias)) {
      const [n, e] = existing;
      fail(where, `the model already has LoRA layers with useDora=${e.useDora}, loraBias=${e.loraBias !== null} ('${n}'); the adapter's new layers would have use_dora=${useDora}, lora_bias=${loraBias}, and a model holds one adapter's settings`);
    }
    if (fresh.length && existing && (existing[1].dropout !== dropout || existing[1].useRslora !== useRslora)) {
      const [n, e] = existing;
      fail(where, `the model already has LoRA layers with dropout=${e.dropout}, useRslora=${e.useRslora} ('${n}'); the adapter's new layers (${fresh.slice(0, 4).join(', ')}${fresh.length > 4 ? ', …' : ''}) ` +
        `would have lora_dropout=${dropout}, use_rslora=${useRslora}, and a model holds one adapter's settings`);
    }

    // Every tensor is read and checked, and the new layers are built and filled, before the model is
    // changed, so a failure leaves it as it was.
    const values = new Map<string, Tensor[]>();
    const saveValues = new Map<string, Tensor>();
    const made = new Map<string, LoRALinear | LoRAEmbedding>();
    const baseValues = new Map<string, Tensor>();
    const frozen: [Tensor, boolean][] = [];
    let attached = false;
    try {
      for (const name of names) {
        const m = modules.get(name)!;
        const dtype = baseOf(m).weight.dtype;
        // The adapters' own dtype: an existing layer's, or float32 on a half layer (autocast_adapter_dtype).
        const own = m instanceof LoRALinear || m instanceof LoRAEmbedding ? m.A?.dtype : undefined;
        const aDtype = own ?? adapterDtype(dtype, autocast);
        const pair: Tensor[] = [];
        const e = found.get(name)!;
        for (const key of [e.A!, e.B!, ...(e.bias ? [e.bias] : []), ...(e.magnitude ? [e.magnitude] : [])]) {
          const t = await st._readTensor(where, key, { dtype: aDtype });
          pair.push(t);
          t._checkLive(where);
          if (!allFinite(t)) {
            for (const u of pair) u.dispose();
            fail(where, `${WEIGHTS}: '${key}' holds NaN or Inf`);
          }
        }
        values.set(name, pair);
        if (e.base) {
          const t = await st._readTensor(where, e.base, { dtype });
          baseValues.set(name, t);
          if (!allFinite(t)) fail(where, `${WEIGHTS}: '${e.base}' holds NaN or Inf`);
        }
      }
      for (const [k, { target }] of saveKeys) {
        const t = await st._readTensor(where, k, { dtype: target.dtype as 'float32' });
        saveValues.set(k, t);
        if (!allFinite(t)) fail(where, `${WEIGHTS}: '${k}' holds NaN or Inf`);
      }
      const init = cfg.init_lora_weights === 'gaussian' ? 'gaussian' : 'kaiming';
      // The new layers, by (rank, alpha) in the order the layers come and then in module order, as
      // injectLora would make them (A's initial draws come from the global generator).
      const order = [...new Set(names.map((n) => `${settings.get(n)!.r}/${settings.get(n)!.alpha}`))];
      for (const key of order) {
        for (const name of fresh) {
          const s = settings.get(name)!;
          if (`${s.r}/${s.alpha}` !== key) continue;
          const lin = modules.get(name) as Linear | Embedding;
          if (lin instanceof Embedding) {
            frozen.push([lin.weight, lin.weight.requiresGrad]);
            made.set(name, new LoRAEmbedding(lin, { r: s.r, alpha: s.alpha, useRslora, autocastAdapterDtype: autocast }));
            continue;
          }
          for (const t of [lin.weight, lin.bias]) if (t) frozen.push([t, t.requiresGrad]);
          made.set(name, new LoRALinear(lin, { r: s.r, alpha: s.alpha, dropout, useRslora, init, useDora, loraBias, autocastAdapterDtype: autocast }));
        }
      }
      const layerOf = (name: string) => made.get(name) ?? (modules.get(name) as LoRALinear | LoRAEmbedding);
      noGrad(() => {
        for (const [name, [A, B, ...rest]] of values) {
          const layer = layerOf(name);
          layer.A!.copy_(A);
          layer.B!.copy_(B);
          const e = found.get(name)!;
          if (layer instanceof LoRALinear && e.bias) layer.loraBias!.copy_(rest.shift()!);
          if (layer instanceof LoRALinear && e.magnitude) layer.magnitude!.copy_(rest.shift()!);
        }
      });
      for (const [name, layer] of made) model.setSubmodule(name, layer);
      attached = true;
      // PEFT loads the base_layer.weight saved beside an adapted embedding into the layer's weight.
      noGrad(() => {
        for (const [name, t] of baseValues) {
          const w = baseOf(layerOf(name)).weight;
          w.copy_(t);
          w._bumpVersion();
        }
      });
      if (saveEntries.length) {
        _wrapModulesToSave(where, model, saveEntries);
        noGrad(() => {
          for (const [k, { name }] of saveKeys) {
            const w = model.getSubmodule(name) as ModulesToSaveWrapper;
            const sub = k.slice(PREFIX.length + name.length + 1);
            const own = Object.fromEntries([...w.modulesToSave.namedParameters(), ...w.modulesToSave.namedBuffers()]);
            own[sub].copy_(saveValues.get(k)!);
          }
        });
      }
      // As injectLora (freezeBase): every parameter that is not a LoRA A or B is frozen.
      const adapters = new Set<Tensor>(getLoraAB(model));
      for (const p of model.parameters()) if (!adapters.has(p)) p.requiresGrad_(false);
    } catch (e) {
      if (!attached) for (const [t, flag] of frozen) t.requiresGrad_(flag);
      throw e;
    } finally {
      for (const pair of values.values()) for (const t of pair) t.dispose();
      for (const t of saveValues.values()) t.dispose();
      for (const t of baseValues.values()) t.dispose();
    }
    if (ignored.length) {
      process.emitWarning(`${where}: ${WEIGHTS} holds weights for modules that ${CONFIG}'s target_modules does not select; they were not applied (as in PEFT): ` +
        `${ignored.slice(0, 8).join(', ')}${ignored.length > 8 ? `, … (${ignored.length} in all)` : ''}`, { code: 'LORA_CUDA_IGNORED_ADAPTER_KEYS' });
    }
    return names;
  } finally {
    st.close();
  }
}

/**
 * Writes the model with every adapter folded in as an ordinary Hugging Face
 * checkpoint (config.json + model.safetensors). The model itself is not changed. Weights are
 * written in the model's dtype (config.json's torch_dtype says which): a bfloat16 model gives a
 * bfloat16 checkpoint, each merged weight W + scale B A computed in float32 and rounded once.
 */
export async function saveMerged(model: Module & { config?: { raw?: Record<string, unknown> } }, dir: string): Promise<void> {
  const where = 'saveMerged';
  if (!(model instanceof Module)) throw typeError(where, 'model', 'a Module', model);
  if (typeof dir !== 'string' || dir === '') throw typeError(where, 'dir', 'a directory path', dir);
  const out: Record<string, Tensor> = {};
  const temps: Tensor[] = [];
  const lora = new Map(loraLayers(model));
  const embLora = new Map(loraEmbeddingLayers(model));
  for (const [name, t] of [...model.namedParameters(), ...model.namedBuffers()]) t._checkLive(where, `'${name}'`);
  const wrappers = modulesToSaveLayers(model).map(([n]) => n);
  for (const [key0, t] of Object.entries(model.stateDict())) {
    // A module to save is written as its trained copy, under the module's own keys.
    let key = key0;
    const w = wrappers.find((n) => key0.startsWith(`${n}.originalModule.`) || key0.startsWith(`${n}.modulesToSave.`));
    if (w) {
      if (key0.startsWith(`${w}.originalModule.`)) continue;
      key = `${w}.${key0.slice(w.length + '.modulesToSave.'.length)}`;
    }
    const e = /^(.*)\.(origEmbedding\.weight|A|B)$/.exec(key);
    const embLayer = e ? embLora.get(e[1]) : undefined;
    if (e && embLayer) {
      if (e[2] !== 'origEmbedding.weight') continue;
      // W + scale (B A)ᵀ, computed aside.
      let merged = t;
      if (embLayer.r > 0 && !embLayer.merged && embLayer.A && embLayer.B) {
        embLayer._checkMergeable(where);
        merged = embLayer._mergedWeight(t, embLayer.A!, embLayer.B!);
        temps.push(merged);
      }
      out[`${e[1]}.weight`] = merged;
      continue;
    }
    const m = /^(.*)\.(origLinear\.(weight|bias)|A|B|loraBias|magnitude)$/.exec(key);
    const layer = m ? lora.get(m[1]) : undefined;
    if (!m || !layer) {
      out[key] = t;
      continue;
    }
    if (m[2] === 'A' || m[2] === 'B' || m[2] === 'loraBias' || m[2] === 'magnitude') continue;
    const unmerged = layer.r > 0 && !layer.merged && layer.A && layer.B;
    if (m[3] === 'bias') {
      // b + scale * loraBias, computed aside, as the weight.
      const merged = unmerged && layer.loraBias ? noGrad(() => { const d = layer.loraBias!.mul(layer.scale); return (t.dtype === d.dtype ? t : t.to(d.dtype)).add(d).to(t.dtype); }) : t;
      if (merged !== t) temps.push(merged);
      out[`${m[1]}.bias`] = merged;
    } else {
      // W + scale * B A (rescaled per row for DoRA), computed aside (the model's own weight is untouched).
      let merged = t;
      if (unmerged) {
        layer._checkMergeable(where);
        const both = layer._mergedTensors();
        both.bias?.dispose();
        merged = both.weight;
        temps.push(merged);
      }
      out[`${m[1]}.weight`] = merged;
    }
  }
  // Tied embeddings stay tied only while the head still holds the embedding's tensor. A head with an
  // adapter (merged here, or by mergeLora, which unties it) has weights of its own: they are
  // written, and the config says the two are no longer tied.
  const head = out['lm_head.weight'];
  const embed = out['model.embed_tokens.weight'];
  const tied = head !== undefined && embed !== undefined && head._store === embed._store;
  if (tied) delete out['lm_head.weight'];
  try {
    await inTurn(dir, async () => {
      await fs.promises.mkdir(dir, { recursive: true });
      if (model.config?.raw) {
        // The dtype the weights are written in (the model's: a bfloat16 model gives a bfloat16 checkpoint).
        const first = Object.values(out).find((t) => t.dtype !== 'int32');
        const cfg: Record<string, unknown> = { ...model.config.raw, torch_dtype: first?.dtype ?? 'float32' };
        if (!tied && head !== undefined && cfg.tie_word_embeddings === true) cfg.tie_word_embeddings = false;
        await writePair(path.join(dir, 'model.safetensors'), out, { format: 'pt' }, path.join(dir, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
      } else {
        await saveSafetensors(path.join(dir, 'model.safetensors'), out, { metadata: { format: 'pt' } });
      }
    });
  } finally {
    for (const t of temps) t.dispose();
  }
}
