// `lora-cuda generate`: continue a prompt with a Hugging Face checkpoint, with or without a LoRA
// adapter, to see what fine-tuning did.
import * as path from 'path';
import { performance } from 'perf_hooks';
import { LlamaForCausalLM } from '../models/llama';
import { loadAdapter } from '../peft';
import { manualSeed } from '../random';
import { loadTokenizer } from '../tokenizer';
import { DTYPE_HELP, resolveDevice, resolveDtype } from './device';
import { helpText, parseArgs, Specs } from './args';
import { CliError, CliIO, UsageError, oneLine, statPath, tokenContent } from './io';
import { COMMAND_TEXT } from './commands';
import { READ_LIMITS, readJsonFileSync } from '../fsio';
import { describe } from '../errors';


const SPECS = {
  model: { type: 'string', metavar: 'DIR', help: 'Hugging Face checkpoint: config.json, model.safetensors (or shards), tokenizer.json (required)' },
  adapter: { type: 'string', metavar: 'DIR', help: 'a PEFT adapter directory to apply (adapter_config.json, adapter_model.safetensors)' },
  prompt: { type: 'string', metavar: 'TEXT', help: 'the text to continue (required)' },
  chat: { type: 'boolean', help: 'send --prompt as a user message through the checkpoint\'s chat template (with the generation prompt) and print only the reply' },
  'max-new-tokens': { type: 'number', integer: true, min: 0, default: 50, metavar: 'N', help: 'tokens to generate at most' },
  temperature: { type: 'number', min: 0, default: 0, metavar: 'T', help: '0 = greedy (the most likely token each step); > 0 samples with this temperature' },
  'top-k': { type: 'number', integer: true, min: 0, default: 50, metavar: 'K', help: 'when sampling: among the K most likely tokens only, 0 = all' },
  'top-p': { type: 'number', min: 0, max: 1, default: 1, metavar: 'P', help: 'when sampling: among the most likely tokens whose probabilities reach P' },
  seed: { type: 'number', integer: true, min: 0, default: 0, metavar: 'N', help: 'seed of the sampling' },
  device: { type: 'string', metavar: 'cpu|cuda', help: 'where to run (default: cuda when available)' },
  dtype: { type: 'string', metavar: 'auto|float32|bfloat16|float16', help: DTYPE_HELP },
} satisfies Specs;

/** tokenizer_config.json's eos_token as text ("</s>" or { content: "</s>" }), if any (loadTokenizer has read the file already). */
function eosText(modelDir: string): string | null {
  let cfg: Record<string, unknown> | null;
  try {
    cfg = readJsonFileSync('generate', path.join(modelDir, 'tokenizer_config.json'), READ_LIMITS.large) as Record<string, unknown> | null;
  } catch {
    return null;
  }
  return cfg !== null && typeof cfg === 'object' ? tokenContent(cfg.eos_token) : null;
}

function isTokenId(id: unknown, vocab: number): boolean {
  return Number.isInteger(id) && (id as number) >= 0 && (id as number) < vocab;
}

export async function generateCommand(argv: string[], io: CliIO): Promise<number> {
  const a = parseArgs('generate', SPECS, argv);
  if (a.help) {
    io.stdout(helpText('generate', `${COMMAND_TEXT.generate.summary}\n\n` +
      'Prints the prompt and its continuation; with --chat, the prompt goes through the chat template as a user\n' +
      'message and only the reply is printed. Generation stops at the end-of-sequence token (config.json\'s\n' +
      'eos_token_id, or tokenizer_config.json\'s eos_token) or after --max-new-tokens. The text is printed as it\n' +
      'is generated (up to the last space, as transformers\' TextStreamer does), with a key/value cache.', SPECS,
    COMMAND_TEXT.generate.usage));
    return 0;
  }
  if (a._.length) throw new UsageError(`unexpected argument ${JSON.stringify(a._[0])} (give the text with --prompt)`);
  if (!a.model) throw new UsageError('--model DIR is required (a Hugging Face checkpoint directory with config.json, model.safetensors and tokenizer.json)');
  if (a.prompt === undefined) throw new UsageError('--prompt TEXT is required');
  if (a.topP === 0) throw new UsageError('--top-p must be > 0');
  const device = resolveDevice(a.device);
  const dtype = resolveDtype(a.dtype, device);
  const modelDir = a.model;
  if (!statPath('--model', modelDir)?.isDirectory()) {
    throw new CliError(`--model ${modelDir}: not a directory (give a Hugging Face checkpoint directory with config.json, model.safetensors and tokenizer.json)`);
  }
  if (a.adapter !== undefined && !statPath('--adapter', a.adapter)?.isDirectory()) {
    throw new CliError(`--adapter ${a.adapter}: not a directory (give a PEFT adapter directory with adapter_config.json and adapter_model.safetensors)`);
  }

  let model: LlamaForCausalLM;
  try {
    model = await LlamaForCausalLM.fromPretrained(modelDir, { device, dtype });
  } catch (e) {
    if ((e as { code?: string }).code === 'ERR_OUT_OF_MEMORY') throw e;
    throw new CliError(oneLine((e as Error).message));
  }
  let tokenizer;
  try {
    tokenizer = await loadTokenizer(modelDir);
  } catch (e) {
    throw new CliError(`--model ${modelDir}: ${oneLine((e as Error).message)}`);
  }
  if (a.adapter !== undefined) {
    try {
      await loadAdapter(model, a.adapter);
    } catch (e) {
      throw new CliError(`${oneLine((e as Error).message)}${/has shape|has no weights for layers|not a Linear layer/.test((e as Error).message) ? ' (was the adapter trained on this base model?)' : ''}`);
    }
  }

  let text = a.prompt;
  if (a.chat) {
    try {
      text = tokenizer.applyChatTemplate([{ role: 'user', content: a.prompt }], { addGenerationPrompt: true });
    } catch (e) {
      throw new CliError(`--chat: ${oneLine((e as Error).message).replace(/^applyChatTemplate: /, '').replace(/; pass one as the chatTemplate option$/, '; leave out --chat, or add chat_template to tokenizer_config.json')}`);
    }
  }
  // A rendered template holds its special tokens already (transformers encodes it without adding more).
  const ids = Array.from(tokenizer.encode(text, { add_special_tokens: !a.chat }).ids, Number);
  if (!ids.length) throw new CliError('--prompt gives no tokens; give some text');
  const V = model.config.vocabSize;
  // The ids come from tokenizer.json: one that is no token of the model is the tokenizer's fault, not the prompt's.
  const bad = ids.find((id) => !isTokenId(id, V));
  if (bad !== undefined) {
    throw new CliError(`--model ${modelDir}: the tokenizer (tokenizer.json) gives token id ${bad} for the prompt, but the model's ids are 0 to ${V - 1} (vocab_size ${V}); the tokenizer is damaged or does not belong to this model`);
  }
  let eos: number | number[] | null = null;
  const fromConfig = model.config.raw.eos_token_id;
  if (fromConfig !== undefined && fromConfig !== null) {
    eos = fromConfig as number | number[];
    const ok = Array.isArray(eos) ? eos.every((id) => isTokenId(id, V)) : isTokenId(eos, V);
    if (!ok) throw new CliError(`--model ${modelDir}: config.json's eos_token_id ${describe(eos)} is not a token id of the model (0 to ${V - 1}); fix it in config.json`);
  } else {
    const t = eosText(modelDir);
    const id = t === null ? undefined : tokenizer.token_to_id(t);
    eos = id === undefined || id === null ? null : id;
    if (eos !== null && !isTokenId(eos, V)) {
      throw new CliError(`--model ${modelDir}: the tokenizer (tokenizer.json) gives token id ${eos} for the eos_token ${JSON.stringify(t)} of tokenizer_config.json, but the model's ids are 0 to ${V - 1}; the tokenizer is damaged or does not belong to this model`);
    }
  }

  // Streaming: the shown ids decoded after each step, printed up to the last space (a token may
  // change how the text before it decodes: a merged character, a space the decoder removes), the
  // rest at the end; what is printed is always a prefix of the whole decoded text.
  const shownIds = a.chat ? [] : ids.slice();
  const decode = (t: number[]) => (t.length ? tokenizer.decode(t, { skip_special_tokens: true }) : '');
  let printed = '';
  const show = (text: string, all: boolean) => {
    if (!text.startsWith(printed)) {
      // Never seen with the decoders of Llama-family tokenizers; the whole text then follows on a line of its own.
      if (all) io.stdout(`\n${text}`);
      return;
    }
    const upTo = all || text.endsWith('\n') ? text.length : text.lastIndexOf(' ') + 1;
    if (upTo > printed.length) {
      io.stdout(text.slice(printed.length, upTo));
      printed = text.slice(0, upTo);
    }
  };
  manualSeed(a.seed!);
  const t0 = performance.now();
  let out: number[];
  try {
    show(decode(shownIds), false);
    out = model.generate([ids], {
      maxNewTokens: a.maxNewTokens,
      ...(a.temperature! > 0 ? { doSample: true, temperature: a.temperature, topK: a.topK, topP: a.topP } : {}),
      eosTokenId: eos,
      onToken: ([token]) => {
        if (token === null) return;
        shownIds.push(token);
        show(decode(shownIds), false);
      },
    })[0];
  } catch (e) {
    if ((e as { code?: string }).code === 'ERR_OUT_OF_MEMORY') throw new CliError('out of memory: use a shorter --prompt or fewer --max-new-tokens');
    if (e instanceof RangeError) throw new CliError(oneLine(e.message));
    throw e;
  }
  const secs = (performance.now() - t0) / 1000;
  const added = out.length - ids.length;
  show(decode(a.chat ? out.slice(ids.length) : out), true);
  io.stdout('\n');
  io.stderr(`${added} new token${added === 1 ? '' : 's'} in ${secs.toFixed(2)} s (${(added / Math.max(secs, 1e-9)).toFixed(1)} tokens/s, ${device}` +
    `${a.adapter !== undefined ? `, adapter ${a.adapter}` : ''}${a.temperature! > 0 ? `, sampled at temperature ${a.temperature}` : ', greedy'})\n`);
  return 0;
}
