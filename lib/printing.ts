// Printing: a tensor as torch's repr prints it (tensor([[1., 2.], ...]) with
// torch's number formats, summarised past 1000 elements, and the suffixes that
// differ from the defaults), and numbers as Python's repr writes them, for the
// module trees (Module.toString and the layers' extraRepr).
import type { DType } from './dtype';

// torch's print options (torch.set_printoptions defaults).
const PRECISION = 4;
const THRESHOLD = 1000;
const EDGE_ITEMS = 3;
const LINE_WIDTH = 80;

/** x with `digits` decimals, ties to even as Python's format() (JS's toFixed rounds ties away from zero). */
function fixed(x: number, digits: number): string {
  const s = x.toFixed(digits);
  // An exact tie has a 5 then only zeros past the kept digits: toFixed(20) shows it exactly.
  const long = Math.abs(x).toFixed(20);
  const dot = long.indexOf('.');
  if (!/^50*$/.test(long.slice(dot + 1 + digits))) return s;
  const kept = long.slice(0, digits ? dot + 1 + digits : dot);
  // An even last digit stays (Python); an odd one rounds up, as toFixed did.
  return Number(kept[kept.length - 1]) % 2 === 0 ? `${x < 0 ? '-' : ''}${kept}` : s;
}

/** Python's '{:.Ne}': at least two exponent digits. */
function exponential(x: number, digits: number): string {
  if (!Number.isFinite(x)) return nonFinite(x);
  const [m, e] = x.toExponential(digits).split('e');
  const n = Number(e);
  return `${m}e${n < 0 ? '-' : '+'}${String(Math.abs(n)).padStart(2, '0')}`;
}

const nonFinite = (x: number): string => (Number.isNaN(x) ? 'nan' : x > 0 ? 'inf' : '-inf');

/** Python's repr of a float: 1.0, 0.5, 1e-05, 1e+16, inf, nan. */
export function pyFloat(x: number): string {
  if (!Number.isFinite(x)) return nonFinite(x);
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  // Both languages print the shortest digits that round-trip; Python uses an exponent outside [1e-4, 1e16).
  const [m, p] = x.toExponential().split('e');
  const e = Number(p);
  if (e < -4 || e >= 16) return `${m}e${e < 0 ? '-' : '+'}${String(Math.abs(e)).padStart(2, '0')}`;
  const s = String(x);
  return s.includes('.') ? s : `${s}.0`;
}

/** Python's repr of a value in an extra_repr: floats as pyFloat, booleans as True/False. */
export function pyValue(v: number | boolean | string | null | readonly number[], float = true): string {
  if (v === null) return 'None';
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  if (typeof v === 'string') return `'${v}'`;
  if (typeof v === 'number') return float ? pyFloat(v) : String(v);
  return v.length === 1 ? `(${v[0]},)` : `(${v.join(', ')})`;
}

/** torch's _Formatter: one width and one style for every number printed. */
class Formatter {
  private intMode = true;
  private sciMode = false;
  private maxWidth = 1;
  constructor(private readonly floating: boolean, values: ArrayLike<number>) {
    if (!floating) {
      for (let i = 0; i < values.length; i++) this.maxWidth = Math.max(this.maxWidth, String(values[i]).length);
      return;
    }
    const vals: number[] = [];
    for (let i = 0; i < values.length; i++) if (Number.isFinite(values[i]) && values[i] !== 0) vals.push(values[i]);
    if (!vals.length) return;
    let min = Infinity;
    let max = 0;
    for (const v of vals) {
      min = Math.min(min, Math.abs(v));
      max = Math.max(max, Math.abs(v));
    }
    this.intMode = vals.every((v) => v === Math.ceil(v));
    const widest = (f: (v: number) => string, extra = 0) => {
      for (const v of vals) this.maxWidth = Math.max(this.maxWidth, f(v).length + extra);
    };
    if (this.intMode) {
      if (max / min > 1000 || max > 1e8) {
        this.sciMode = true;
        widest((v) => exponential(v, PRECISION));
      } else {
        widest((v) => fixed(v, 0), 1);
      }
    } else if (max / min > 1000 || max > 1e8 || min < 1e-4) {
      this.sciMode = true;
      widest((v) => exponential(v, PRECISION));
    } else {
      widest((v) => fixed(v, PRECISION));
    }
  }

  get width(): number {
    return this.maxWidth;
  }

  format(v: number): string {
    let s: string;
    if (!this.floating) s = String(v);
    else if (!Number.isFinite(v)) s = nonFinite(v);
    else if (this.sciMode) s = exponential(v, PRECISION);
    else if (this.intMode) s = `${fixed(v, 0)}.`;
    else s = fixed(v, PRECISION);
    return s.padStart(this.maxWidth);
  }
}

/** Row-major strides of `shape`. */
function strides(shape: readonly number[]): number[] {
  const out = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    out[i] = s;
    s *= shape[i];
  }
  return out;
}

/** The indices shown along a dim of size n: all, or the first and last EDGE_ITEMS when summarising. */
function shown(n: number, summarize: boolean): number[] | [number[], number[]] {
  if (summarize && n > 2 * EDGE_ITEMS) {
    return [Array.from({ length: EDGE_ITEMS }, (_, i) => i), Array.from({ length: EDGE_ITEMS }, (_, i) => n - EDGE_ITEMS + i)];
  }
  return Array.from({ length: n }, (_, i) => i);
}

const split = (s: number[] | [number[], number[]]): [number[], number[] | null] =>
  (Array.isArray(s[0]) ? [s[0] as number[], s[1] as number[]] : [s as number[], null]);

/** The values torch's formatter sees: all, or only those shown when summarising. */
function summarizedValues(data: ArrayLike<number>, shape: readonly number[], summarize: boolean): ArrayLike<number> {
  if (!summarize) return data;
  const st = strides(shape);
  const out: number[] = [];
  const walk = (dim: number, off: number) => {
    if (dim === shape.length) {
      out.push(data[off]);
      return;
    }
    const [head, tail] = split(shown(shape[dim], true));
    for (const i of [...head, ...(tail ?? [])]) walk(dim + 1, off + i * st[dim]);
  };
  walk(0, 0);
  return out;
}

/** torch's _tensor_str_with_formatter for the sub-tensor at `off` from `dim` on. */
function body(data: ArrayLike<number>, shape: readonly number[], st: number[], dim: number, off: number, indent: number,
  summarize: boolean, fmt: Formatter): string {
  const nd = shape.length - dim;
  if (nd === 0) return fmt.format(data[off]);
  const [head, tail] = split(shown(shape[dim], summarize));
  if (nd === 1) {
    const elementLength = fmt.width + 2;
    const perLine = Math.max(1, Math.floor((LINE_WIDTH - indent) / elementLength));
    const items = head.map((i) => fmt.format(data[off + i * st[dim]]));
    if (tail) items.push(' ...', ...tail.map((i) => fmt.format(data[off + i * st[dim]])));
    const lines: string[] = [];
    for (let i = 0; i < items.length; i += perLine) lines.push(items.slice(i, i + perLine).join(', '));
    return `[${lines.join(`,\n${' '.repeat(indent + 1)}`)}]`;
  }
  const sub = (i: number) => body(data, shape, st, dim + 1, off + i * st[dim], indent + 1, summarize, fmt);
  const slices = head.map(sub);
  if (tail) slices.push('...', ...tail.map(sub));
  return `[${slices.join(`,${'\n'.repeat(nd - 1)}${' '.repeat(indent + 1)}`)}]`;
}

export interface TensorReprInput {
  data: ArrayLike<number>;
  shape: readonly number[];
  dtype: DType;
  device: string;
  requiresGrad: boolean;
  gradFn: string | null;
}

/**
 * torch's repr of a tensor: `tensor([...])`, then device='cuda:0' off the CPU, dtype=... unless
 * float32 (the default dtype here), grad_fn=<...> or requires_grad=True. Past 1000 elements only
 * the first and last 3 along each dim are shown, and shape=[...] is added (torch shows no size
 * there); an empty tensor shows its shape unless it is 1-D, as torch's size=(...).
 */
export function tensorRepr(t: TensorReprInput): string {
  const prefix = 'tensor(';
  const indent = prefix.length;
  // Each suffix with the length torch's own would have (dtype=torch.float64, grad_fn=<MulBackward0>),
  // so lines break where torch breaks them.
  const suffixes: [string, number][] = [];
  const push = (s: string, torchLength = s.length) => suffixes.push([s, torchLength]);
  if (t.device !== 'cpu') push(`device='${t.device}'`);
  const numel = t.shape.reduce((a, b) => a * b, 1);
  let str: string;
  if (numel === 0) {
    if (t.shape.length !== 1) push(`shape=[${t.shape.join(', ')}]`, `size=(${t.shape.join(', ')})`.length);
    if (t.dtype !== 'float32') push(`dtype=${t.dtype}`, `dtype=torch.${t.dtype}`.length);
    str = '[]';
  } else {
    if (t.dtype !== 'float32') push(`dtype=${t.dtype}`, `dtype=torch.${t.dtype}`.length);
    const summarize = numel > THRESHOLD;
    const fmt = new Formatter(t.dtype !== 'int32', summarizedValues(t.data, t.shape, summarize));
    str = body(t.data, t.shape, strides(t.shape), 0, 0, indent, summarize, fmt);
    if (summarize) push(`shape=[${t.shape.join(', ')}]`);
  }
  if (t.gradFn) push(`grad_fn=<${t.gradFn}>`, `grad_fn=<${t.gradFn}0>`.length);
  else if (t.requiresGrad) push('requires_grad=True');
  // torch's _add_suffixes: on the last line while it fits in the line width, else on a new one.
  let out = prefix + str;
  let lastLineLen = out.length - out.lastIndexOf('\n') + 1;
  for (const [s, len] of suffixes) {
    if (lastLineLen + len + 2 > LINE_WIDTH) {
      out += `,\n${' '.repeat(indent)}${s}`;
      lastLineLen = indent + len;
    } else {
      out += `, ${s}`;
      lastLineLen += len + 2;
    }
  }
  return `${out})`;
}
