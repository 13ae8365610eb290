// Input checks shared by the linear layers (kept out of F, which is public).
import { assertTensor, requireFloat } from '../tensor';
import { rangeError } from '../errors';

/** Validates x [..., inFeatures] against a weight [out, in]; returns M (rows). */
export function checkLinearInput(where: string, x: unknown, inFeatures: number, what = 'inFeatures'): number {
  assertTensor(where, 'x', x);
  requireFloat(where, x, 'x');
  if (x.ndim < 1) throw rangeError(where, 'x', 'a tensor with at least 1 dim [..., in]', x);
  const last = x.shape[x.ndim - 1];
  if (last !== inFeatures) throw rangeError(where, 'x.shape[-1]', `${inFeatures} (${what})`, last);
  return x.numel / inFeatures;
}
