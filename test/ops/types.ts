// The shape of an op registry entry (one public op: how to call it, on which
// inputs, what it supports, and how it must fail), after PyTorch's OpInfo and
// ggml's test-backend-ops. The suites that iterate over the registry:
//   test/gradcheck.test.ts   finite-difference gradients in float64 (CPU)
//   test/cuda.test.ts        CPU/CUDA parity of outputs and gradients
//   test/bad-input.test.ts   each entry's error cases, and bad inputs derived from its samples
//   test/op-registry.test.ts every op of the API has an entry, and every entry is well formed
import type { Tensor } from '../../lib';
import type { GradcheckOptions } from '../helpers/gradcheck';

export type Dev = 'cpu' | 'cuda';
export type FloatDType = 'float32' | 'float64';
export type HalfDType = 'bfloat16' | 'float16';
export const HALVES: HalfDType[] = ['bfloat16', 'float16'];
/**
 * Default normalised tolerance (max |half - float32| / max |float32|) of a sample evaluated in a half
 * dtype against float32 on the same (rounded) inputs. Each op rounds once on store, to nearest even:
 * a relative error of at most u = 2^-8 (bfloat16, 8 significant bits) or 2^-11 (float16, 11 bits)
 * per rounding. A sample's outputs and gradients pass through a few roundings (a composed op, its
 * backward, the product with the random output weights): 4u, rounded up.
 */
export const HALF_TOL: Record<HalfDType, number> = { bfloat16: 1.6e-2, float16: 2e-3 };

export interface InputSpec {
  shape: readonly number[];
  /**
   * Float inputs: N(0, 1) values (from a seeded JS generator), passed through `values` when given
   * (positive for log and sqrt, away from 0 at kinks and divisors, scaled).
   */
  values?: (v: number, i: number) => number;
  /**
   * An int32 tensor instead (embedding ids, class targets): the given values, or ids spread over
   * [0, high) with repeats. Never requires grad.
   */
  int32?: readonly number[] | { high: number };
  /** Float inputs: whether the input requires grad (default true). */
  grad?: boolean;
  /**
   * A module's own tensor (weight, bias, A, B) that the sample puts into the layer, rather than an
   * argument of the call: the checks of bad arguments (int32, mixed dtypes, two devices) leave it
   * alone, and bad-input.test.ts spoils it in checks of its own (disposed, int32, float64, on
   * another device), each refused naming the op.
   */
  state?: boolean;
  /** Values read on the host (class indices): a tensor on any device is taken. */
  anyDevice?: boolean;
}

export interface CallContext {
  device: Dev;
  dtype: FloatDType;
}

export interface OpSample {
  name: string;
  inputs: InputSpec[];
  /**
   * The call through the public API. `xs` are the inputs, made on ctx.device in ctx.dtype (int32
   * inputs stay int32); constants it needs are made there too. One output or several.
   */
  call: (xs: Tensor[], ctx: CallContext) => Tensor | Tensor[];
  /** Finite-difference check in float64 (default true; false for shapes too large for it). */
  gradcheck?: boolean | GradcheckOptions;
  /** CPU/CUDA parity (default true). */
  parity?: boolean;
  /** Normalised float32 parity tolerance (default: the entry's, else 2e-5; float64 uses 1e-10). */
  tol32?: number;
  /** Needs a CUDA device even for its CPU evaluation (Tensor.cuda): skipped without one. */
  needsCuda?: boolean;
  /** Each input goes to a call of its own (several sizes in one sample): they are never combined. */
  separateInputs?: boolean;
}

type ErrorClass = new (...args: never[]) => Error;

export interface ErrorCase {
  name: string;
  call: () => unknown;
  type: ErrorClass;
  message: RegExp;
  /** The message also has the standard form "<where>: <what> must be <expected>, got <received>". */
  standard?: boolean;
}

export interface OpInfo {
  /** The public name: 'Tensor.add', 'F.linear', 'LoRALinear.forward'. */
  name: string;
  /**
   * How its argument errors begin ("<where>: ..."): the op's own name, the function the user
   * called (an op that does its work through another one passes its name along).
   */
  where: string[];
  /** Records a graph: gradient checks and gradient parity apply (default true). */
  differentiable?: boolean;
  /** Float dtypes it computes in (each is checked for parity). */
  dtypes: FloatDType[];
  /**
   * int32 inputs in place of float ones: 'refused' with a TypeError or RangeError naming the op,
   * 'supported' (shape and device ops: the same result as on the float values), or undefined when
   * neither holds yet (said at the entry).
   */
  int32?: 'refused' | 'supported';
  devices: Dev[];
  /** Default float32 parity tolerance of its samples. */
  tol32?: number;
  /**
   * The 16-bit dtypes it takes on the CPU (test/half.test.ts evaluates each sample in them and
   * compares with float32 on the same rounded inputs); default both. [] where the op's public
   * entry point does not take them yet (said at the entry).
   */
  halves?: HalfDType[];
  /** Its samples' normalised tolerance per half dtype (default HALF_TOL). */
  tolHalf?: Partial<Record<HalfDType, number>>;
  samples: OpSample[];
  errors: ErrorCase[];
}

/** "<where>: <what> must be <expected>, got <received>": the standard form of argument errors. */
export const STANDARD_MESSAGE = /^[A-Za-z_.]+: .+ must be .+, got .+$/s;

/** Values at least 0.2 above 0 (log, sqrt, divisors). */
export const positive = (v: number): number => 0.2 + Math.abs(v);
/** Values at least `margin` away from 0 (relu and abs kinks, divisors). */
export const awayFromZero = (margin: number) => (v: number): number => (v >= 0 ? 1 : -1) * (margin + Math.abs(v));
export const scaled = (k: number) => (v: number): number => k * v;

/** A float input of this shape (options: values, grad). */
export const I = (shape: readonly number[], o: Omit<InputSpec, 'shape' | 'int32'> = {}): InputSpec => ({ shape, ...o });
/** An int32 input of this shape: the values given, or ids in [0, high). */
export const ids = (shape: readonly number[], values: readonly number[] | { high: number }, o: Pick<InputSpec, 'anyDevice'> = {}): InputSpec =>
  ({ shape, int32: values, ...o });

export const fmt = (s: readonly number[]): string => `[${s.join(',')}]`;
