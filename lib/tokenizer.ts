// Tokenizers from a checkpoint directory's tokenizer.json, through
// @huggingface/tokenizers (pure JS; nothing is downloaded).
import * as fs from 'fs';
import * as path from 'path';
import { Tokenizer } from '@huggingface/tokenizers';
import { typeError } from './errors';

export { Tokenizer };

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
    let text: string;
    try {
      text = await fs.promises.readFile(file, 'utf8');
    } catch (e) {
      if (!required && (e as NodeJS.ErrnoException).code === 'ENOENT') return {};
      throw new Error(`${where}: cannot read ${file}: ${(e as Error).message}`);
    }
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new Error(`${where}: ${file} is not valid JSON: ${(e as Error).message}`);
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
