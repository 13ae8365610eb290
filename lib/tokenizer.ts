// Tokenizers from a checkpoint directory's tokenizer.json, through
// @huggingface/tokenizers (pure JS; nothing is downloaded).
import * as path from 'path';
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';
import { typeError } from './errors';
import { READ_LIMITS, readJsonFile } from './fsio';

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
}
export interface TokenizerConstructor {
  /** From the parsed tokenizer.json and tokenizer_config.json. */
  new (tokenizerJson: object, tokenizerConfig: object): Tokenizer;
}
export const Tokenizer: TokenizerConstructor = HFTokenizer as unknown as TokenizerConstructor;

/**
 * Loads tokenizer.json (and tokenizer_config.json when present) from `dir`.
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
  try {
    return new Tokenizer(json, config);
  } catch (e) {
    throw new Error(`${where}: ${path.join(dir, 'tokenizer.json')} could not be used: ${(e as Error).message}`);
  }
}
