// Elementwise ops (binary with broadcasting, with a scalar, unary), softmax and
// sums: the differentiable arithmetic of Tensor.
import type { Tensor } from '../tensor';
import { native } from '../native';
import { defineFunction } from '../autograd';
import { BINARY_OP, BinaryOp, UNARY_OP, UnaryOp } from './enums';
import { sumToShape } from './memory';

// ------------------------------------------------------------------- binary

/** (g op other) summed down to `to`: the gradient of one broadcast operand (other broadcasts to g). */
function reduceBinary(op: BinaryOp, g: Tensor, other: Tensor, to: readonly number[]): Tensor {
  const p = g._make(native.binary(BINARY_OP[op], g._h, other._h), g.shape);
  const r = sumToShape(p, to);
  if (r !== p) p.dispose();
  return r;
}

type BinaryArgs = [a: Tensor, b: Tensor, shape: readonly number[]];
type Shapes = { aShape: readonly number[]; bShape: readonly number[] };

function binaryForward(op: BinaryOp, a: Tensor, b: Tensor, shape: readonly number[]): Tensor {
  return a._make(native.binary(BINARY_OP[op], a._h, b._h), shape);
}

const Add = defineFunction<BinaryArgs, Shapes>({
  name: 'AddBackward',
  forward(ctx, a, b, shape) {
    ctx.aShape = a.shape;
    ctx.bShape = b.shape;
    return binaryForward('add', a, b, shape);
  },
  backward(ctx, g) {
    const [na, nb] = ctx.needsInputGrad;
    return [na ? sumToShape(g, ctx.aShape) : null, nb ? sumToShape(g, ctx.bShape) : null, null];
  },
});

const Sub = defineFunction<BinaryArgs, Shapes>({
  name: 'SubBackward',
  forward(ctx, a, b, shape) {
    ctx.aShape = a.shape;
    ctx.bShape = b.shape;
    return binaryForward('sub', a, b, shape);
  },
  backward(ctx, g) {
    const [na, nb] = ctx.needsInputGrad;
    let gb: Tensor | null = null;
    if (nb) {
      const neg = g._make(native.affine(g._h, -1, 0), g.shape);
      gb = sumToShape(neg, ctx.bShape);
      if (gb !== neg) neg.dispose();
    }
    return [na ? sumToShape(g, ctx.aShape) : null, gb, null];
  },
});

const Mul = defineFunction<BinaryArgs>({
  name: 'MulBackward',
  forward(ctx, a, b, shape) {
    ctx.saveForBackward(a, b);
    return binaryForward('mul', a, b, shape);
  },
  backward(ctx, g) {
    const [a, b] = ctx.savedTensors as Tensor[];
    const [na, nb] = ctx.needsInputGrad;
    return [na ? reduceBinary('mul', g, b, a.shape) : null, nb ? reduceBinary('mul', g, a, b.shape) : null, null];
  },
});

const Div = defineFunction<BinaryArgs>({
  name: 'DivBackward',
  forward(ctx, a, b, shape) {
    const out = binaryForward('div', a, b, shape);
    ctx.saveForBackward(a, b, out);
    return out;
  },
  backward(ctx, g) {
    const [a, b, out] = ctx.savedTensors as Tensor[];
    const [na, nb] = ctx.needsInputGrad;
    const ga = na ? reduceBinary('div', g, b, a.shape) : null;
    let gb: Tensor | null = null;
    if (nb) {
      // d(a/b)/db = -(a/b)/b: from the saved output, negated after the reduction.
      const q = out._make(native.binary(BINARY_OP.div, out._h, b._h), out.shape);
      const r = reduceBinary('mul', g, q, b.shape);
      q.dispose();
      gb = r._make(native.affine(r._h, -1, 0), r.shape);
      r.dispose();
    }
    return [ga, gb, null];
  },
});

const BINARY = { add: Add, sub: Sub, mul: Mul, div: Div };

/** a op b with broadcasting to `shape` (checked by the caller). */
export function binary(op: BinaryOp, a: Tensor, b: Tensor, shape: readonly number[]): Tensor {
  return BINARY[op](a, b, shape);
}

// ------------------------------------------------------------------- scalar

/** alpha * x + beta, the gradient alpha * g: a binary op with a number folded into one pass. */
function affineFunction(name: string) {
  return defineFunction<[x: Tensor, alpha: number, beta: number], { alpha: number }>({
    name,
    forward(ctx, x, alpha, beta) {
      ctx.alpha = alpha;
      return x._make(native.affine(x._h, alpha, beta), x.shape);
    },
    backward(ctx, g) {
      const { alpha } = ctx;
      return [alpha === 1 ? g : g._make(native.affine(g._h, alpha, 0), g.shape), null, null];
    },
  });
}

const SCALAR = {
  add: affineFunction('AddBackward'),
  sub: affineFunction('SubBackward'),
  mul: affineFunction('MulBackward'),
  div: affineFunction('DivBackward'),
};

/** x op s for a number s. */
export function scalar(op: BinaryOp, x: Tensor, s: number): Tensor {
  const [alpha, beta] = op === 'add' ? [1, s] : op === 'sub' ? [1, -s] : op === 'mul' ? [s, 0] : [1 / s, 0];
  return SCALAR[op](x, alpha, beta);
}

// -------------------------------------------------------------------- unary

function unaryFunction(op: UnaryOp, name: string) {
  const code = UNARY_OP[op];
  return defineFunction<[x: Tensor]>({
    name,
    forward(ctx, x) {
      ctx.saveForBackward(x);
      return x._make(native.unary(code, x._h), x.shape);
    },
    backward(ctx, g) {
      const [x] = ctx.savedTensors as Tensor[];
      return [g._make(native.unaryBackward(code, x._h, g._h), x.shape)];
    },
  });
}

const UNARY: Record<UnaryOp, (x: Tensor) => Tensor> = {
  relu: unaryFunction('relu', 'ReluBackward'),
  gelu: unaryFunction('gelu', 'GeluBackward'),
  geluTanh: unaryFunction('geluTanh', 'GeluBackward'),
  silu: unaryFunction('silu', 'SiluBackward'),
  exp: unaryFunction('exp', 'ExpBackward'),
  log: unaryFunction('log', 'LogBackward'),
  neg: unaryFunction('neg', 'NegBackward'),
  sqrt: unaryFunction('sqrt', 'SqrtBackward'),
  abs: unaryFunction('abs', 'AbsBackward'),
  sigmoid: unaryFunction('sigmoid', 'SigmoidBackward'),
  tanh: unaryFunction('tanh', 'TanhBackward'),
};

export function unary(op: UnaryOp, x: Tensor): Tensor {
  return UNARY[op](x);
}

// --------------------------------------------------------- softmax, sums

/** Softmax over the last dim (max-subtracted). */
export const softmax = defineFunction<[x: Tensor]>({
  name: 'SoftmaxBackward',
  forward(ctx, x) {
    const out = x._make(native.softmax(x._h), x.shape);
    ctx.saveForBackward(out);
    return out;
  },
  backward(ctx, g) {
    const [out] = ctx.savedTensors as Tensor[];
    return [g._make(native.softmaxBackward(out._h, g._h), g.shape)];
  },
});

/** The sum over `dims` (distinct, non-negative; checked by the caller), keeping them as 1s or not. */
export const sum = defineFunction<[x: Tensor, dims: readonly number[], keepdim: boolean], { kept: number[]; inShape: number[] }>({
  name: 'SumBackward',
  forward(ctx, x, dims, keepdim) {
    const kept = x.shape.map((d, i) => (dims.includes(i) ? 1 : d));
    const outShape = keepdim ? kept : x.shape.filter((_, i) => !dims.includes(i));
    const summed = native.sumTo(x._h, kept);
    ctx.kept = kept;
    ctx.inShape = x.shape.slice();
    return x._make(keepdim ? summed : native.view(summed, outShape), outShape);
  },
  backward(ctx, g) {
    const gk = native.view(g._h, ctx.kept);
    return [g._make(native.expand(gk, ctx.inShape), ctx.inShape), null, null];
  },
});

/** True when no element of t is NaN or infinite. */
export function allFinite(t: Tensor): boolean {
  return native.allFinite(t._h);
}
