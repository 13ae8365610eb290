// `lora-cuda merge`: fold a PEFT LoRA adapter into a Hugging Face checkpoint
// and write the result as a plain checkpoint (no adapter needed to use it).
import * as fs from 'fs';
import * as path from 'path';
import { LlamaForCausalLM } from '../models/llama';
import { loadAdapter, saveMerged } from '../peft';
import { loraEmbeddingLayers, loraLayers } from '../lora';
import { CliError, CliIO, UsageError, samePath, statPath } from './io';
import { READ_LIMITS, pathExists, readWholeFileSync } from '../fsio';
import { helpText, parseArgs, Specs } from './args';
import { writeFileAtomicSync } from '../atomic';
import { COMMAND_TEXT } from './commands';
import { resolveDtype } from './device';


const SPECS = {
  model: { type: 'string', metavar: 'DIR', help: 'the base model: a Hugging Face checkpoint directory (config.json, model.safetensors)' },
  adapter: { type: 'string', metavar: 'DIR', help: 'the adapter: a PEFT directory (adapter_config.json, adapter_model.safetensors)' },
  out: { type: 'string', metavar: 'DIR', help: 'where to write the merged checkpoint' },
  dtype: { type: 'string', default: 'auto', metavar: 'auto|float32|bfloat16|float16', help: 'the dtype of the merge and of the merged checkpoint: auto = the base checkpoint\'s torch_dtype' },
} satisfies Specs;

/** Files copied from the model directory so the merged checkpoint is usable as is. */
const COMPANIONS = [
  'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'added_tokens.json', 'chat_template.jinja', 'chat_template.json',
  'generation_config.json', 'tokenizer.model', 'vocab.json', 'merges.txt',
];

function isDir(flag: string, p: string): boolean {
  return statPath(flag, p)?.isDirectory() ?? false;
}

/** Library errors about the user's files become one-line CLI errors (not bugs). */
async function userStep<T>(fn: () => Promise<T>, hint?: (message: string) => string): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ERR_OUT_OF_MEMORY') throw e;
    if (e instanceof Error) throw new CliError(`${err.message}${hint ? hint(err.message) : ''}`);
    throw e;
  }
}

function formatBytes(n: number): string {
  return n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(2)} GiB` : n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`;
}

export async function mergeCommand(argv: string[], io: CliIO): Promise<number> {
  const a = parseArgs('merge', SPECS, argv);
  if (a.help) {
    io.stdout(helpText('merge', `${COMMAND_TEXT.merge.summary}\n\n` +
      'Loads the base model (LlamaForCausalLM family: Llama, Mistral, Qwen2, SmolLM, TinyLlama), applies the\n' +
      'adapter, and writes config.json and model.safetensors with the adapter folded into every adapted layer\n' +
      '(W + (alpha / r) B A; DoRA, lora_bias, embeddings and modules to save as PEFT merges them).\n' +
      'Tokenizer, chat-template and generation files next to the base model are copied along.', SPECS,
    COMMAND_TEXT.merge.usage));
    return 0;
  }
  if (a._.length) throw new UsageError(`unexpected argument '${a._[0]}' (give directories with --model, --adapter and --out)`);
  const missing = (['model', 'adapter', 'out'] as const).filter((k) => !a[k]);
  if (missing.length) throw new UsageError(`missing ${missing.map((k) => `--${k} DIR`).join(', ')}`);
  // auto on every device: the merged checkpoint keeps the base's dtype (a bf16 base merges in bf16,
  // each W + scale B A computed in float32 and rounded once, as PEFT's merge_and_unload on a bf16 model).
  const dtype = resolveDtype(a.dtype, 'cuda');
  const modelDir = path.resolve(a.model!);
  const adapterDir = path.resolve(a.adapter!);
  const outDir = path.resolve(a.out!);
  if (!isDir('--model', modelDir)) throw new CliError(`--model ${a.model} is not a directory (give a Hugging Face checkpoint directory with config.json and model.safetensors)`);
  if (!isDir('--adapter', adapterDir)) throw new CliError(`--adapter ${a.adapter} is not a directory (give a PEFT adapter directory with adapter_config.json and adapter_model.safetensors)`);
  // By identity (device and inode), so that a symbolic link to a directory, or another spelling of it, is seen through.
  if (samePath(outDir, modelDir)) throw new CliError('--out is the --model directory; choose a new directory so the base checkpoint is not overwritten');
  if (samePath(outDir, adapterDir)) throw new CliError('--out is the --adapter directory; choose a new directory');
  if (statPath('--out', outDir) && !isDir('--out', outDir)) throw new CliError(`--out ${a.out} exists and is not a directory; choose a directory path`);

  const t0 = process.hrtime.bigint();
  const model = await userStep(() => LlamaForCausalLM.fromPretrained(modelDir, { dtype }));
  const c = model.config;
  const arch = (c.raw.architectures as string[] | undefined)?.[0] ?? c.modelType;
  const modelDtype = model.model.embed_tokens.weight.dtype;
  io.stdout(`loaded ${modelDir}: ${arch}, ${c.numHiddenLayers} layers, hidden ${c.hiddenSize}, vocab ${c.vocabSize}, ` +
    `${model.numParameters().toLocaleString('en-US')} parameters, ${modelDtype}\n`);

  const layers = await userStep(() => loadAdapter(model, adapterDir),
    (m) => (/has shape|has no weights for layers|not a Linear layer/.test(m) ? ' (was the adapter trained on this base model?)' : ''));
  const [, first] = [...loraLayers(model), ...loraEmbeddingLayers(model)][0];
  const kinds = [...new Set(layers.map((n) => n.slice(n.lastIndexOf('.') + 1)))].sort();
  io.stdout(`applied ${adapterDir}: LoRA r ${first.r}, alpha ${first.alpha} (scale ${+first.scale.toFixed(6)}) on ${layers.length} layers (${kinds.join(', ')})\n`);

  await userStep(() => saveMerged(model, outDir));
  const copied: string[] = [];
  for (const f of COMPANIONS) {
    const src = path.join(modelDir, f);
    let bytes: Buffer;
    try {
      const where = `cannot copy ${f} from --model`;
      if (!pathExists(where, src)) continue;
      bytes = readWholeFileSync(where, src, READ_LIMITS.large);
    } catch (e) {
      throw new CliError((e as Error).message);
    }
    try {
      writeFileAtomicSync(path.join(outDir, f), bytes);
      copied.push(f);
    } catch (e) {
      throw new CliError(`cannot copy ${src} to ${outDir}: ${(e as Error).message}`);
    }
  }
  const size = fs.statSync(path.join(outDir, 'model.safetensors')).size;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  io.stdout(`wrote ${outDir}: config.json, model.safetensors (${formatBytes(size)}, ${modelDtype})` +
    `${copied.length ? `, ${copied.join(', ')}` : ''} in ${seconds.toFixed(1)} s\n`);
  io.stdout('the merged model needs no adapter: load it with LlamaForCausalLM.fromPretrained or transformers\n');
  return 0;
}
