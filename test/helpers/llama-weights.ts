// Rebuilds the tiny checkpoints of test/fixtures/generate_llama.py: the same
// integer formula per tensor name and element, so no weights are stored.
import * as fs from 'fs';
import * as path from 'path';
import { Tensor, tensor } from '../../lib';
import { saveSafetensors } from '../../lib/safetensors';

export function nameHash(name: string): number {
  let h = 0;
  for (let k = 0; k < name.length; k++) h = (h * 31 + name.charCodeAt(k)) % 1000003;
  return h;
}

export function formulaValues(name: string, shape: number[]): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const h = nameHash(name);
  const kind = /(layernorm|norm)\.weight$/.test(name) ? 'norm' : name === 'model.embed_tokens.weight' ? 'embed' : 'proj';
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = ((i * 2654435761 + h * 40503) % 4294967296) / 4294967296;
    out[i] = kind === 'norm' ? 1 + 0.25 * (u - 0.5) : kind === 'embed' ? u - 0.5 : 0.25 * (u - 0.5);
  }
  return out;
}

export interface LlamaCase {
  config: Record<string, unknown>;
  input_ids: number[][];
  labels: number[][];
  logits: number[];
  loss: number;
  params: [string, number[]][];
}

export function loadCases(): { batch: number; seq: number; cases: Record<string, LlamaCase> } {
  return JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'fixtures', 'llama-logits.json'), 'utf8'));
}

/** Writes config.json and the weights (one file, or `shards` files with an index). */
export async function writeCheckpoint(dir: string, c: LlamaCase, opts: { dtype?: 'F32' | 'F16' | 'BF16'; shards?: number } = {}): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(c.config, null, 2));
  const tensors: [string, Tensor][] = c.params.map(([name, shape]) => [name, tensor(formulaValues(name, shape), { shape })]);
  const shards = opts.shards ?? 1;
  if (shards === 1) {
    await saveSafetensors(path.join(dir, 'model.safetensors'), Object.fromEntries(tensors), { dtype: opts.dtype });
    return;
  }
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const part = tensors.filter((_, i) => i % shards === s);
    for (const [name] of part) weightMap[name] = file;
    await saveSafetensors(path.join(dir, file), Object.fromEntries(part), { dtype: opts.dtype });
  }
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
}
