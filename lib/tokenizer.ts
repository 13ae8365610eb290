// Tokenizers from a checkpoint directory's tokenizer.json, through
// @huggingface/tokenizers (pure JS; nothing is downloaded).
import * as path from 'path';
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { checkBool, checkKnownKeys, checkOptions, describe, typeError } from './errors';
import { READ_LIMITS, readJsonFile, readWholeFile } from './fsio';

/** What encode() returns. */
export interface Encoding {
  ids: number[];
  tokens: string[];
  attention_mask: number[];
  token_type_ids?: number[];
}

/**
 * A tokenizer.json tokenizer (@huggingface/tokenizers underneath). The types
 * are the package's own, so a strict consumer does not compile the
 * dependency's declarations.
 */
export interface Tokenizer {
  encode(text: string, options?: { text_pair?: string | null; add_special_tokens?: boolean; return_token_type_ids?: boolean | null }): Encoding;
  decode(ids: number[] | bigint[], options?: { skip_special_tokens?: boolean; clean_up_tokenization_spaces?: boolean | null }): string;
  tokenize(text: string, options?: { text_pair?: string | null; add_special_tokens?: boolean }): string[];
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
  /**
   * Renders `messages` with the checkpoint's chat template, as transformers'
   * `apply_chat_template` does: a string, or with `tokenize: true` its token
   * ids (encoded without adding special tokens again: the template writes them).
   */
  applyChatTemplate(messages: ChatMessage[], options?: ChatTemplateOptions & { tokenize?: false }): string;
  applyChatTemplate(messages: ChatMessage[], options: ChatTemplateOptions & { tokenize: true }): number[];
  applyChatTemplate(messages: ChatMessage[], options?: ChatTemplateOptions): string | number[];
  /** The default chat template's text (tokenizer_config.json or chat_template.jinja), or null. */
  readonly chatTemplate: string | null;
  /** The special tokens of tokenizer_config.json as text (bos_token, eos_token, ...), the variables templates see. */
  readonly specialTokens: SpecialTokens;
  /** The id of the model's unknown token (tokenizer.json model.unk_token), or null when it has none. */
  readonly unkTokenId: number | null;
}

/** One chat message: role ("system", "user", "assistant", "tool", ...) and content, plus any fields a template reads. */
export interface ChatMessage {
  role: string;
  content: unknown;
  [key: string]: unknown;
}

export interface ChatTemplateOptions {
  /** End with the header that opens an assistant turn (for generation). Default false. */
  addGenerationPrompt?: boolean;
  /** Return token ids instead of text. Default false. */
  tokenize?: boolean;
  /** A named template (when tokenizer_config.json lists several) or a template text. Default: the "default" one. */
  chatTemplate?: string;
  /** Tool definitions, passed to the template as `tools`. */
  tools?: unknown[];
  /** Documents, passed to the template as `documents`. */
  documents?: unknown[];
  /** Further template variables (e.g. `enable_thinking`), as transformers' extra keyword arguments. */
  templateVariables?: Record<string, unknown>;
}

export interface SpecialTokens {
  bos_token?: string;
  eos_token?: string;
  unk_token?: string;
  sep_token?: string;
  pad_token?: string;
  cls_token?: string;
  mask_token?: string;
  additional_special_tokens?: string[];
}

export interface TokenizerConstructor {
  /**
   * From the parsed tokenizer.json and tokenizer_config.json; `chatTemplate`
   * is chat_template.jinja's text, which takes precedence over the config's.
   */
  new (tokenizerJson: object, tokenizerConfig: object, options?: { chatTemplate?: string | null }): Tokenizer;
}

const SPECIAL_TOKEN_KEYS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'] as const;

/** A token in tokenizer_config.json: "<s>" or an AddedToken object { content: "<s>", ... }. */
function tokenText(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v !== null && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

/**
 * The chat templates of a config: `chat_template` is a string, or a list of
 * { name, template } (transformers' named templates; "default" is used unless
 * one is asked for by name).
 */
function readTemplates(config: Record<string, unknown>, file: string | null | undefined): Map<string, string> {
  const out = new Map<string, string>();
  const t = config.chat_template;
  if (typeof t === 'string') out.set('default', t);
  else if (Array.isArray(t)) {
    t.forEach((e, i) => {
      const name = (e as { name?: unknown } | null)?.name;
      const template = (e as { template?: unknown } | null)?.template;
      if (typeof name !== 'string' || typeof template !== 'string') {
        throw typeError('Tokenizer', `tokenizer_config.json chat_template[${i}]`, 'an object { name: string, template: string }', e);
      }
      out.set(name, template);
    });
  } else if (t !== undefined && t !== null) {
    throw typeError('Tokenizer', 'tokenizer_config.json chat_template', 'a string or a list of { name, template }', t);
  }
  // transformers reads chat_template.jinja before the config's template.
  if (typeof file === 'string') out.set('default', file);
  return out;
}

class ChatTokenizer extends (HFTokenizer as unknown as new (json: object, config: object) => object) {
  readonly specialTokens: SpecialTokens;
  readonly unkTokenId: number | null;
  private readonly templates: Map<string, string>;
  private readonly compiled = new Map<string, Template>();

  constructor(tokenizerJson: object, tokenizerConfig: object, options?: { chatTemplate?: string | null }) {
    super(tokenizerJson, tokenizerConfig);
    const config = (tokenizerConfig ?? {}) as Record<string, unknown>;
    this.templates = readTemplates(config, options?.chatTemplate);
    const special: SpecialTokens = {};
    for (const k of SPECIAL_TOKEN_KEYS) {
      const v = tokenText(config[k]);
      if (v !== undefined) special[k] = v;
    }
    const extra = config.additional_special_tokens;
    if (Array.isArray(extra)) {
      const list = extra.map(tokenText).filter((x): x is string => x !== undefined);
      if (list.length) special.additional_special_tokens = list;
    }
    this.specialTokens = special;
    const model = (tokenizerJson as { model?: { unk_token?: unknown } }).model;
    const unk = typeof model?.unk_token === 'string' ? model.unk_token : special.unk_token;
    const id = unk === undefined ? undefined : (this as unknown as Tokenizer).token_to_id(unk);
    this.unkTokenId = typeof id === 'number' ? id : null;
  }

  get chatTemplate(): string | null {
    return this.templates.get('default') ?? null;
  }

  applyChatTemplate(messages: ChatMessage[], options?: ChatTemplateOptions): string | number[] {
    const where = 'applyChatTemplate';
    const o = checkOptions(where, options);
    checkKnownKeys(where, o, ['addGenerationPrompt', 'tokenize', 'chatTemplate', 'tools', 'documents', 'templateVariables']);
    if (!Array.isArray(messages)) throw typeError(where, 'messages', 'an array of { role, content } objects', messages);
    messages.forEach((m, i) => {
      if (m === null || typeof m !== 'object' || Array.isArray(m)) throw typeError(where, `messages[${i}]`, 'an object { role, content }', m);
      if (typeof m.role !== 'string') throw typeError(where, `messages[${i}].role`, 'a string', m.role);
    });
    const addGenerationPrompt = o.addGenerationPrompt === undefined ? false : checkBool(where, 'addGenerationPrompt', o.addGenerationPrompt);
    const tokenize = o.tokenize === undefined ? false : checkBool(where, 'tokenize', o.tokenize);
    for (const k of ['tools', 'documents'] as const) {
      if (o[k] !== undefined && o[k] !== null && !Array.isArray(o[k])) throw typeError(where, k, 'an array', o[k]);
    }
    const vars = o.templateVariables;
    if (vars !== undefined && (vars === null || typeof vars !== 'object' || Array.isArray(vars))) throw typeError(where, 'templateVariables', 'an object', vars);
    const text = this.templateText(where, o.chatTemplate, o.tools !== undefined && o.tools !== null);
    let template = this.compiled.get(text);
    if (!template) {
      try {
        template = new Template(text);
      } catch (e) {
        throw new Error(`${where}: the chat template could not be parsed: ${(e as Error).message}`);
      }
      this.compiled.set(text, template);
    }
    let rendered: string;
    try {
      // Variables as transformers passes them: the special tokens, then the call's own.
      rendered = template.render({
        ...this.specialTokens,
        messages,
        add_generation_prompt: addGenerationPrompt,
        ...(o.tools !== undefined ? { tools: o.tools } : {}),
        ...(o.documents !== undefined ? { documents: o.documents } : {}),
        ...(vars as Record<string, unknown> | undefined),
      });
    } catch (e) {
      throw new Error(`${where}: the chat template failed to render these ${messages.length} messages: ${(e as Error).message}`);
    }
    if (!tokenize) return rendered;
    // The template writes BOS and the like itself (transformers encodes with add_special_tokens=False).
    return Array.from((this as unknown as Tokenizer).encode(rendered, { add_special_tokens: false }).ids, Number);
  }

  private templateText(where: string, choice: unknown, hasTools: boolean): string {
    if (choice !== undefined) {
      if (typeof choice !== 'string' || choice === '') throw typeError(where, 'chatTemplate', 'a template name or a template text', choice);
      const named = this.templates.get(choice);
      if (named !== undefined) return named;
      // A name (no template syntax) that is not there is a mistake, not a template.
      if (!/[{%}]/.test(choice)) {
        throw new RangeError(`${where}: chatTemplate must be one of the tokenizer's templates (${[...this.templates.keys()].map((k) => JSON.stringify(k)).join(', ') || 'it has none'}) or a template text, got ${describe(choice)}`);
      }
      return choice;
    }
    if (hasTools && this.templates.has('tool_use')) return this.templates.get('tool_use') as string;
    const t = this.templates.get('default');
    if (t === undefined) {
      throw new Error(`${where}: this tokenizer has no chat template (no chat_template in tokenizer_config.json and no chat_template.jinja${this.templates.size ? `; named templates: ${[...this.templates.keys()].join(', ')} — pick one with chatTemplate` : ''}); pass one as the chatTemplate option`);
    }
    return t;
  }
}

export const Tokenizer: TokenizerConstructor = ChatTokenizer as unknown as TokenizerConstructor;

/**
 * Loads tokenizer.json (and tokenizer_config.json and chat_template.jinja when
 * present) from `dir`.
 * The returned Tokenizer has encode(text) -> { ids, tokens, attention_mask }
 * and decode(ids).
 */
export async function loadTokenizer(dir: string): Promise<Tokenizer> {
  const where = 'loadTokenizer';
  if (typeof dir !== 'string' || dir === '') throw typeError(where, 'dir', 'a directory path', dir);
  const read = async (name: string, required: boolean): Promise<Record<string, unknown>> => {
    const file = path.join(dir, name);
    try {
      return await readJsonFile(where, file, READ_LIMITS.large) as Record<string, unknown>;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') throw e;
      if (!required) return {};
      const err = new Error(`${where}: ${dir} has no ${name} (copy ${name} from the base model's repository into this directory; only tokenizer.json tokenizers are supported)`);
      (err as NodeJS.ErrnoException).code = code;
      throw err;
    }
  };
  const json = await read('tokenizer.json', true);
  const config = await read('tokenizer_config.json', false);
  let chatTemplate: string | null = null;
  try {
    chatTemplate = (await readWholeFile(where, path.join(dir, 'chat_template.jinja'), READ_LIMITS.large)).toString('utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  try {
    return new Tokenizer(json, config, { chatTemplate });
  } catch (e) {
    throw new Error(`${where}: ${path.join(dir, 'tokenizer.json')} could not be used: ${(e as Error).message}`);
  }
}
