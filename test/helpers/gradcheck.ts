// Finite-difference gradient checking (float64) for the autograd engine.
//
// gradcheck(fn, inputs) computes out = fn(...inputs), contracts it with a fixed
// random projection w (L = sum(out * w)), runs L.backward() for the analytic
// gradients, then recomputes L by central differences for every element of
// every input that requires grad. The numeric evaluations run inside noGrad and
// perturb the input tensors in place with copy_ (restored afterwards), so fn may
// close over module state (e.g. a LoRALinear whose A/B are among the inputs).
import { Tensor, tensor, noGrad } from '../../lib';

export interface GradcheckOptions {
  /** Central-difference step. Default 1e-6. */
  eps?: number;
  /** Absolute tolerance. Default 1e-6. */
  atol?: number;
  /** Relative tolerance (against the numeric value). Default 1e-5. */
  rtol?: number;
  /** Seed of the projection w. Default 1234. */
  seed?: number;
}

export interface GradcheckResult {
  /** Number of (input, element) pairs compared. */
  checked: number;
  /** Largest |analytic - numeric| seen. */
  maxAbsErr: number;
  /** Shape of fn's output. */
  outShape: readonly number[];
}

/** mulberry32: a small deterministic PRNG in [0, 1). */
export function makeRng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard normal samples from a seeded JS PRNG (Box-Muller). */
export function randnArray(n: number, seed: number): Float64Array {
  const rng = makeRng(seed);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const u1 = Math.max(rng(), 1e-12);
    const u2 = rng();
    out[i] = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
  return out;
}

const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

/**
 * A float64 tensor with deterministic N(0,1) values (or values mapped by `map`).
 * requiresGrad defaults to true.
 */
export function t64(
  shape: readonly number[],
  seed: number,
  opts: { requiresGrad?: boolean; map?: (v: number, i: number) => number } = {},
): Tensor {
  const data = randnArray(prod(shape), seed);
  if (opts.map) for (let i = 0; i < data.length; i++) data[i] = opts.map(data[i], i);
  return tensor(data, { dtype: 'float64', shape: shape.slice(), requiresGrad: opts.requiresGrad ?? true });
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/**
 * Checks the analytic gradient of fn at inputs against central differences.
 * Throws with input index, element index, analytic and numeric values on the
 * first mismatch (after collecting up to a few mismatches for the message).
 */
export function gradcheck(
  fn: (...inputs: Tensor[]) => Tensor,
  inputs: Tensor[],
  opts: GradcheckOptions = {},
): GradcheckResult {
  const eps = opts.eps ?? 1e-6;
  const atol = opts.atol ?? 1e-6;
  const rtol = opts.rtol ?? 1e-5;
  const seed = opts.seed ?? 1234;

  inputs.forEach((x, i) => {
    if (!(x instanceof Tensor)) throw new TypeError(`gradcheck: inputs[${i}] is not a Tensor`);
    if (x.dtype !== 'float64') throw new TypeError(`gradcheck: inputs[${i}] must be float64, got ${x.dtype}`);
    if (!x.isLeaf) throw new TypeError(`gradcheck: inputs[${i}] must be a leaf tensor`);
  });
  if (!inputs.some((x) => x.requiresGrad)) throw new Error('gradcheck: no input requires grad');

  // ---------------------------------------------------------------- analytic
  for (const x of inputs) x.grad = null;
  const out = fn(...inputs);
  if (!(out instanceof Tensor)) throw new TypeError('gradcheck: fn must return a Tensor');
  if (out.dtype !== 'float64') throw new TypeError(`gradcheck: fn returned ${out.dtype}, expected float64`);
  if (!out.requiresGrad) throw new Error('gradcheck: fn output does not require grad (no graph was recorded)');
  const outShape = out.shape.slice();
  const wArr = randnArray(out.numel, seed);
  const w = tensor(wArr, { dtype: 'float64', shape: outShape });
  const L0 = out.mul(w).sum();
  // The contraction itself must agree with a JS dot product.
  const L0js = dot(out.toArray(), wArr);
  if (Math.abs(L0.item() - L0js) > 1e-9 * (1 + Math.abs(L0js))) {
    throw new Error(`gradcheck: sum(out * w) = ${L0.item()} but the JS dot product gives ${L0js}`);
  }
  L0.backward();

  const analytic: (Float64Array | null)[] = inputs.map((x, i) => {
    if (!x.requiresGrad) {
      if (x.grad !== null) {
        throw new Error(`gradcheck: inputs[${i}] has requiresGrad false but got a grad (${x.grad.describe()})`);
      }
      return null;
    }
    const g = x.grad;
    if (g === null) {
      throw new Error(`gradcheck: inputs[${i}] requires grad but its grad is null after backward`);
    }
    if (g.shape.length !== x.shape.length || g.shape.some((d, k) => d !== x.shape[k])) {
      throw new Error(`gradcheck: inputs[${i}].grad has shape [${g.shape.join(', ')}], expected [${x.shape.join(', ')}]`);
    }
    return Float64Array.from(g.toArray());
  });

  // ----------------------------------------------------------------- numeric
  const evalL = (): number =>
    noGrad(() => {
      const o = fn(...inputs);
      if (o.shape.length !== outShape.length || o.shape.some((d, k) => d !== outShape[k])) {
        throw new Error(`gradcheck: fn output shape changed to [${o.shape.join(', ')}] during numeric evaluation`);
      }
      // No dispose(): o may be a view sharing an input's storage (reshape),
      // and disposing a view frees the storage of every tensor sharing it.
      return dot(o.toArray(), wArr);
    });

  const failures: string[] = [];
  let nFail = 0;
  let checked = 0;
  let maxAbsErr = 0;
  inputs.forEach((x, i) => {
    const a = analytic[i];
    if (!a) return;
    const orig = Float64Array.from(x.toArray());
    const work = Float64Array.from(orig);
    try {
      for (let j = 0; j < orig.length; j++) {
        work[j] = orig[j] + eps;
        noGrad(() => x.copy_(work));
        const lp = evalL();
        work[j] = orig[j] - eps;
        noGrad(() => x.copy_(work));
        const lm = evalL();
        work[j] = orig[j];
        const n = (lp - lm) / (2 * eps);
        const err = Math.abs(a[j] - n);
        checked++;
        maxAbsErr = Number.isNaN(err) || Number.isNaN(maxAbsErr) ? NaN : Math.max(maxAbsErr, err);
        if (!(err <= atol + rtol * Math.abs(n))) {
          nFail++;
          if (failures.length < 8) {
            failures.push(`input ${i} [${x.shape.join(', ')}] element ${j}: analytic ${a[j]}, numeric ${n} (|diff| ${err})`);
          }
        }
      }
    } finally {
      noGrad(() => x.copy_(orig));
    }
  });
  if (nFail > 0) {
    throw new Error(
      `gradcheck failed: ${nFail} of ${checked} gradient elements mismatch ` +
        `(tolerance |a-n| <= ${atol} + ${rtol}*|n|, eps ${eps}, output shape [${outShape.join(', ')}]):\n  ` +
        failures.join('\n  ') + (nFail > failures.length ? `\n  … and ${nFail - failures.length} more` : ''),
    );
  }
  for (const x of inputs) x.grad = null;
  if (process.env.GRADCHECK_VERBOSE) {
    // eslint-disable-next-line no-console
    console.log(`gradcheck: ${checked} elements, max |analytic - numeric| = ${maxAbsErr.toExponential(2)}`);
  }
  return { checked, maxAbsErr, outShape };
}
