// Gradient clipping, as torch.nn.utils.clip_grad_norm_.
import { DeviceSpec } from '../device';
import { checkBool, checkKnownKeys, checkOptions, checkPositive, rangeError, typeError } from '../errors';
import { Tensor } from '../tensor';
import { full } from '../creation';
import { assertTensor } from '../checks';
import { DType } from '../dtype';
import { clipGradNorm_ } from '../ops/optim';

/**
 * PyTorch's promotion over the gradients' dtypes: float64 over float32 over the halves; bfloat16
 * with float16 gives float32. (A half model's float32 adapters and its half modules to save mix.)
 */
function promotedDtype(dtypes: DType[]): DType {
  const set = new Set(dtypes);
  if (set.has('float64')) return 'float64';
  if (set.has('float32') || set.size > 1) return 'float32';
  return dtypes[0] ?? 'float32';
}

export interface ClipGradNormOptions {
  /** Throw a RangeError, before any gradient changes, when the total norm is NaN or infinite (this reads it back, so on a GPU it waits). Default false. */
  errorIfNonfinite?: boolean;
}

/**
 * Scales the gradients of `parameters` in place so that their joint L2 norm is at most `maxNorm`:
 * every gradient is multiplied by min(1, maxNorm / (norm + 1e-6)), as torch's clip_grad_norm_.
 * Returns the norm before clipping as a 0-d tensor on the gradients' device; everything stays on
 * the device, so nothing waits for a GPU. Parameters without a gradient are skipped; with none at
 * all the norm is 0. A NaN norm leaves the gradients as they are (torch makes them all NaN); check
 * the returned norm, or pass errorIfNonfinite, to skip such a step.
 */
export function clipGradNorm(parameters: Iterable<Tensor>, maxNorm: number, options?: ClipGradNormOptions): Tensor {
  const where = 'clipGradNorm';
  if (parameters === null || typeof parameters !== 'object' || typeof (parameters as Iterable<unknown>)[Symbol.iterator] !== 'function') {
    throw typeError(where, 'parameters', 'an iterable of tensors (model.parameters(), getLoraAB(model), …)', parameters);
  }
  checkPositive(where, 'maxNorm', maxNorm);
  const o = checkOptions(where, options);
  checkKnownKeys(where, o, ['errorIfNonfinite']);
  const errorIfNonfinite = o.errorIfNonfinite === undefined ? false : checkBool(where, 'options.errorIfNonfinite', o.errorIfNonfinite);

  const params = [...(parameters as Iterable<unknown>)];
  const grads: Tensor[] = [];
  params.forEach((p, i) => {
    assertTensor(where, `parameters[${i}]`, p);
    p._checkLive(where);
    const g = p.grad;
    if (!g) return;
    g._checkLive(where);
    const first = grads[0];
    if (first && g.device !== first.device) {
      throw rangeError(where, `parameters[${i}].grad`, `on ${first.device} like the first gradient`, `${g.dtype} on ${g.device}`);
    }
    grads.push(g);
  });
  // Gradients of several dtypes (float32 adapters beside half modules) are clipped together, as
  // torch does: the norm in the promoted dtype, each gradient scaled in it and rounded once.
  const dtype = promotedDtype(grads.map((g) => g.dtype)) as 'float32';
  const device = (grads[0]?.device ?? 'cpu') as DeviceSpec;
  if (!grads.length) return full([], 0, { dtype, device });

  // One native call for every gradient: the norm, then (unless it is not finite and that is an
  // error) the scaling, with no host round trip in between.
  const norm = clipGradNorm_(grads, maxNorm, errorIfNonfinite, dtype);
  if (errorIfNonfinite) {
    const v = norm.item();
    if (!Number.isFinite(v)) {
      norm.dispose();
      throw new RangeError(`${where}: the total norm of the gradients is ${v}, so they cannot be clipped; the gradients are unchanged`);
    }
  }
  return norm;
}
