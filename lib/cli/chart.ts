// Loss-curve charts: a terminal chart (braille dots, or plain ASCII) and a
// standalone SVG file. Series are laid out one after another on the step axis
// (phase A's steps, then phase B's), with a logarithmic loss axis.

export interface LossSeries {
  /** Legend text, e.g. 'phase A: full pretraining'. */
  label: string;
  /** Loss per step. */
  losses: number[];
  /** SVG colour (CSS); terminal colour is picked from the series index. */
  color?: string;
}

export interface TerminalChartOptions {
  /** Columns of the plot area, without the axis labels (default 60). */
  width?: number;
  /** Rows of the plot area (default 10). */
  height?: number;
  /** Plain ASCII characters instead of braille dots (default false). */
  ascii?: boolean;
  /** ANSI colours per series (default false). */
  color?: boolean;
}

export interface SvgChartOptions {
  title?: string;
  width?: number;
  height?: number;
  xLabel?: string;
  yLabel?: string;
}

const DEFAULT_COLORS = ['#2563eb', '#ea580c', '#16a34a', '#9333ea'];
const ANSI = ['\x1b[34m', '\x1b[33m', '\x1b[32m', '\x1b[35m'];
const ASCII_MARKS = ['*', 'o', '+', 'x'];
const MIN_LOSS = 1e-6;

/** log10 of a loss, clamped so zero or tiny losses stay on the chart; NaN for non-finite. */
function logLoss(v: number): number {
  return Number.isFinite(v) ? Math.log10(Math.max(v, MIN_LOSS)) : NaN;
}

/** The decade range [lo, hi] (powers of ten) covering every finite loss. */
function decadeRange(series: LossSeries[]): [number, number] {
  let min = Infinity;
  let max = -Infinity;
  for (const s of series) {
    for (const v of s.losses) {
      const l = logLoss(v);
      if (Number.isNaN(l)) continue;
      min = Math.min(min, l);
      max = Math.max(max, l);
    }
  }
  if (min === Infinity) return [0, 1];
  const lo = Math.floor(min);
  let hi = Math.ceil(max);
  if (hi <= lo) hi = lo + 1;
  return [lo, hi];
}

/** '10', '1', '0.1', '0.01', '0.001', then '1e-4'. */
function decadeLabel(k: number): string {
  if (k >= 0 && k <= 6) return String(10 ** k);
  if (k < 0 && k >= -3) return (10 ** k).toFixed(-k);
  return `1e${k}`;
}

/** Tick values 0, d, 2d, … up to `max`, with d a 1/2/5 multiple of a power of ten. */
function niceTicks(max: number, count = 8): number[] {
  if (max <= 0) return [0];
  const raw = max / count;
  const p = 10 ** Math.floor(Math.log10(raw));
  const d = [1, 2, 5, 10].map((m) => m * p).find((m) => m >= raw) ?? 10 * p;
  const out: number[] = [];
  for (let v = 0; v <= max + 1e-9; v += d) out.push(Math.round(v));
  return out;
}

/** The mean of the finite log-losses of steps [from, to) (NaN when none). */
function meanLog(losses: number[], from: number, to: number): number {
  let s = 0;
  let n = 0;
  for (let i = Math.max(0, from); i < Math.min(losses.length, to); i++) {
    const l = logLoss(losses[i]);
    if (!Number.isNaN(l)) {
      s += l;
      n++;
    }
  }
  return n ? s / n : NaN;
}

/**
 * A loss chart for the terminal: log-scale y axis with decade labels, the step
 * axis below with a mark where one series ends and the next begins, and a legend.
 */
export function terminalChart(series: LossSeries[], options: TerminalChartOptions = {}): string {
  const W = Math.max(10, Math.floor(options.width ?? 60));
  const H = Math.max(3, Math.floor(options.height ?? 10));
  const ascii = options.ascii ?? false;
  const color = options.color ?? false;
  const total = series.reduce((n, s) => n + s.losses.length, 0);
  if (total === 0) return '(no loss values to chart)\n';
  const [lo, hi] = decadeRange(series);
  const sx = ascii ? 1 : 2; // dots per cell, x
  const sy = ascii ? 1 : 4; // dots per cell, y
  const DX = W * sx;
  const DY = H * sy;
  const yDot = (l: number) => Math.min(DY - 1, Math.max(0, Math.round(((hi - l) / (hi - lo)) * (DY - 1))));
  const bits = new Uint8Array(W * H);
  const owner = new Int8Array(W * H).fill(-1);
  const set = (x: number, y: number, k: number) => {
    const cx = Math.floor(x / sx);
    const cy = Math.floor(y / sy);
    if (ascii) {
      bits[cy * W + cx] = 1;
    } else {
      const dx = x % sx;
      const dy = y % sy;
      const bit = dy === 3 ? (dx ? 0x80 : 0x40) : (dx ? 0x08 : 0x01) << dy;
      bits[cy * W + cx] |= bit;
    }
    owner[cy * W + cx] = k;
  };
  const boundaries: number[] = [];
  let offset = 0;
  series.forEach((s, k) => {
    let prev = NaN;
    for (let x = 0; x < DX; x++) {
      // Steps of this series that fall into dot column x.
      const from = Math.floor((x / DX) * total) - offset;
      const to = Math.floor(((x + 1) / DX) * total) - offset;
      if (to <= 0 || from >= s.losses.length) continue;
      const m = meanLog(s.losses, from, Math.max(to, from + 1));
      if (Number.isNaN(m)) continue;
      const y = yDot(m);
      // Join to the previous column so the curve has no gaps.
      const [a, b] = Number.isNaN(prev) || ascii ? [y, y] : [Math.min(prev, y), Math.max(prev, y)];
      for (let yy = a; yy <= b; yy++) set(x, yy, k);
      prev = y;
    }
    offset += s.losses.length;
    if (k < series.length - 1) boundaries.push(Math.min(W - 1, Math.round((offset / total) * W)));
  });

  const labels = new Map<number, string>();
  for (let d = hi; d >= lo; d--) {
    const row = Math.floor(yDot(d) / sy);
    if (!labels.has(row)) labels.set(row, decadeLabel(d));
  }
  const lw = Math.max(4, ...[...labels.values()].map((l) => l.length));
  const paint = (text: string, k: number) => (color && k >= 0 ? `${ANSI[k % ANSI.length]}${text}\x1b[0m` : text);
  const lines: string[] = [`${' '.repeat(lw)}  loss (log scale)`];
  for (let r = 0; r < H; r++) {
    let row = '';
    for (let c = 0; c < W; c++) {
      const i = r * W + c;
      if (ascii) row += bits[i] ? paint(ASCII_MARKS[owner[i] % ASCII_MARKS.length], owner[i]) : ' ';
      else row += bits[i] ? paint(String.fromCharCode(0x2800 + bits[i]), owner[i]) : ' ';
    }
    const label = labels.get(r) ?? '';
    const tick = labels.has(r) ? (ascii ? '+' : '┤') : (ascii ? '|' : '│');
    lines.push(`${label.padStart(lw)} ${tick}${row.replace(/\s+$/, '')}`);
  }
  let axis = (ascii ? '-' : '─').repeat(W).split('');
  for (const b of boundaries) axis[b] = ascii ? '+' : '┴';
  lines.push(`${' '.repeat(lw)} ${ascii ? '+' : '└'}${axis.join('')}`);
  // Step numbers under the start, each boundary and the end.
  const marks: [number, string][] = [[0, '0']];
  offset = 0;
  series.forEach((s, k) => {
    offset += s.losses.length;
    marks.push([k < series.length - 1 ? boundaries[k] : W - 1, String(offset)]);
  });
  axis = ' '.repeat(W + 2).split('');
  for (const [col, text] of marks) {
    const start = Math.max(0, Math.min(W + 2 - text.length, col + 1 - Math.floor(text.length / 2)));
    if (axis.slice(start, start + text.length + 1).some((ch) => ch !== ' ') && col !== 0) continue;
    for (let i = 0; i < text.length; i++) axis[start + i] = text[i];
  }
  lines.push(`${' '.repeat(lw)} ${axis.join('').replace(/\s+$/, '')}  step`);
  const legend = series.map((s, k) => `${paint(ascii ? ASCII_MARKS[k % ASCII_MARKS.length] : '⣿', k)} ${s.label}`).join('   ');
  lines.push(`${' '.repeat(lw)}  ${legend}`);
  return lines.join('\n') + '\n';
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

const f1 = (v: number) => (Math.round(v * 10) / 10).toString();

/** Centred moving mean of the log-losses over 2h + 1 steps (no lag; NaN entries skipped). */
function smoothLog(losses: number[], h: number): number[] {
  const logs = losses.map(logLoss);
  return logs.map((_, i) => {
    let s = 0;
    let n = 0;
    for (let j = Math.max(0, i - h); j <= Math.min(logs.length - 1, i + h); j++) {
      if (!Number.isNaN(logs[j])) {
        s += logs[j];
        n++;
      }
    }
    return n ? s / n : NaN;
  });
}

/**
 * A standalone SVG document (XML declaration, one <svg> root in the SVG
 * namespace): log-scale loss against step, the raw loss of each series as a
 * thin line and a smoothed one on top, decade grid lines, step ticks, a dashed
 * line where each series ends, axis labels, a title and a legend.
 */
export function svgChart(series: LossSeries[], options: SvgChartOptions = {}): string {
  const width = options.width ?? 760;
  const height = options.height ?? 380;
  const title = options.title ?? 'Training loss';
  const xLabel = options.xLabel ?? 'step';
  const yLabel = options.yLabel ?? 'loss (log scale)';
  const m = { left: 72, right: 24, top: 48, bottom: 56 };
  const pw = width - m.left - m.right;
  const ph = height - m.top - m.bottom;
  const total = Math.max(1, series.reduce((n, s) => n + s.losses.length, 0));
  const [lo, hi] = decadeRange(series);
  const X = (step: number) => m.left + (step / total) * pw;
  const Y = (l: number) => m.top + ((hi - l) / (hi - lo)) * ph;
  const out: string[] = [];
  out.push('<?xml version="1.0" encoding="UTF-8"?>');
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif" font-size="12">`);
  out.push(`  <title>${esc(title)}</title>`);
  out.push(`  <rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(`  <text x="${width / 2}" y="24" text-anchor="middle" font-size="15" font-weight="600" fill="#111827">${esc(title)}</text>`);
  // Grid: decades (solid) and 2..9 within each decade (faint).
  out.push('  <g stroke-width="1">');
  for (let d = lo; d <= hi; d++) {
    out.push(`    <line x1="${m.left}" y1="${f1(Y(d))}" x2="${m.left + pw}" y2="${f1(Y(d))}" stroke="#d1d5db"/>`);
    if (d < hi) {
      for (let k = 2; k <= 9; k++) {
        const y = f1(Y(d + Math.log10(k)));
        out.push(`    <line x1="${m.left}" y1="${y}" x2="${m.left + pw}" y2="${y}" stroke="#f3f4f6"/>`);
      }
    }
  }
  out.push('  </g>');
  // Axes, ticks and labels.
  out.push(`  <g stroke="#374151" stroke-width="1" fill="none">`);
  out.push(`    <line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${m.top + ph}"/>`);
  out.push(`    <line x1="${m.left}" y1="${m.top + ph}" x2="${m.left + pw}" y2="${m.top + ph}"/>`);
  const ticks = niceTicks(total);
  for (const t of ticks) out.push(`    <line x1="${f1(X(t))}" y1="${m.top + ph}" x2="${f1(X(t))}" y2="${m.top + ph + 5}"/>`);
  for (let d = lo; d <= hi; d++) out.push(`    <line x1="${m.left - 5}" y1="${f1(Y(d))}" x2="${m.left}" y2="${f1(Y(d))}"/>`);
  out.push('  </g>');
  out.push('  <g fill="#374151">');
  for (const t of ticks) out.push(`    <text x="${f1(X(t))}" y="${m.top + ph + 19}" text-anchor="middle">${t}</text>`);
  for (let d = lo; d <= hi; d++) out.push(`    <text x="${m.left - 9}" y="${f1(Y(d) + 4)}" text-anchor="end">${esc(decadeLabel(d))}</text>`);
  out.push(`    <text x="${m.left + pw / 2}" y="${height - 12}" text-anchor="middle">${esc(xLabel)}</text>`);
  out.push(`    <text x="18" y="${m.top + ph / 2}" text-anchor="middle" transform="rotate(-90 18 ${m.top + ph / 2})">${esc(yLabel)}</text>`);
  out.push('  </g>');
  // Series.
  let offset = 0;
  series.forEach((s, k) => {
    const colour = s.color ?? DEFAULT_COLORS[k % DEFAULT_COLORS.length];
    const raw: string[] = [];
    s.losses.forEach((v, i) => {
      const l = logLoss(v);
      if (!Number.isNaN(l)) raw.push(`${f1(X(offset + i + 1))},${f1(Y(l))}`);
    });
    const smooth: string[] = [];
    smoothLog(s.losses, Math.max(1, Math.round(s.losses.length / 100))).forEach((l, i) => {
      if (!Number.isNaN(l)) smooth.push(`${f1(X(offset + i + 1))},${f1(Y(l))}`);
    });
    out.push(`  <g fill="none" stroke="${esc(colour)}" stroke-linejoin="round" stroke-linecap="round">`);
    out.push(`    <title>${esc(s.label)}</title>`);
    if (raw.length) out.push(`    <polyline stroke-width="1" stroke-opacity="0.35" points="${raw.join(' ')}"/>`);
    if (smooth.length) out.push(`    <polyline stroke-width="2.2" points="${smooth.join(' ')}"/>`);
    out.push('  </g>');
    offset += s.losses.length;
    if (k < series.length - 1) {
      out.push(`  <line x1="${f1(X(offset))}" y1="${m.top}" x2="${f1(X(offset))}" y2="${m.top + ph}" stroke="#6b7280" stroke-width="1" stroke-dasharray="4 4"/>`);
    }
  });
  // Legend, top right.
  const lx = m.left + pw - 12;
  series.forEach((s, k) => {
    const colour = s.color ?? DEFAULT_COLORS[k % DEFAULT_COLORS.length];
    const y = m.top + 16 + k * 18;
    out.push(`  <line x1="${lx - 28}" y1="${y - 4}" x2="${lx - 6}" y2="${y - 4}" stroke="${esc(colour)}" stroke-width="2.2"/>`);
    out.push(`  <text x="${lx - 34}" y="${y}" text-anchor="end" fill="#111827">${esc(s.label)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
