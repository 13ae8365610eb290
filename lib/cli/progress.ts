// Training progress: a redrawn bar on stderr when it is a terminal, and
// otherwise a few plain lines (one per quarter), never a stream of bars.
import { performance } from 'perf_hooks';
import { CliIO } from './io';

export interface ProgressOptions {
  /** Shown before the bar, e.g. 'phase A'. */
  label: string;
  /** Number of steps. */
  total: number;
  /** Minimum milliseconds between redraws of the bar (default 80). */
  intervalMs?: number;
}

function formatRate(perSecond: number): string {
  if (!Number.isFinite(perSecond)) return '-';
  return perSecond >= 1e4 ? `${(perSecond / 1e3).toFixed(0)}k` : perSecond >= 1e3 ? `${(perSecond / 1e3).toFixed(1)}k` : perSecond.toFixed(0);
}

function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return '-';
  return s < 60 ? `${s.toFixed(s < 10 ? 1 : 0)}s` : `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
}

export class Progress {
  private readonly start = performance.now();
  private lastDraw = -Infinity;
  private nextQuarter = 1;
  private finished = false;
  private readonly intervalMs: number;

  constructor(private readonly io: CliIO, private readonly opts: ProgressOptions) {
    this.intervalMs = opts.intervalMs ?? 80;
  }

  /**
   * Reports that `step` of `total` steps are done; `info` is shown after the
   * bar (e.g. 'loss 0.123'); `tokens` (done so far) gives a tokens/s rate.
   */
  update(step: number, info = '', tokens?: number): void {
    if (this.finished) return;
    const { total, label } = this.opts;
    const elapsed = (performance.now() - this.start) / 1000;
    const rate = tokens !== undefined && elapsed > 0 ? ` ${formatRate(tokens / elapsed)} tok/s` : '';
    if (this.io.isTTY) {
      const now = performance.now();
      if (step < total && now - this.lastDraw < this.intervalMs) return;
      this.lastDraw = now;
      const eta = step > 0 && step < total ? ` eta ${formatSeconds((elapsed / step) * (total - step))}` : ` ${formatSeconds(elapsed)}`;
      const tail = ` ${String(step).padStart(String(total).length)}/${total}${info ? ` ${info}` : ''}${rate}${eta}`;
      const width = Math.max(10, Math.min(40, this.io.columns - label.length - tail.length - 4));
      const frac = total > 0 ? Math.min(1, step / total) : 1;
      const full = Math.floor(frac * width);
      const partial = ' ▏▎▍▌▋▊▉'[Math.floor((frac * width - full) * 8)] ?? '';
      const bar = '█'.repeat(full) + (full < width ? partial : '') + ' '.repeat(Math.max(0, width - full - 1));
      this.io.stderr(`\r${label} │${bar.slice(0, width)}│${tail}\x1b[K`);
    } else {
      // One plain line per quarter of the run.
      let crossed = false;
      while (this.nextQuarter <= 4 && step >= (total * this.nextQuarter) / 4) {
        this.nextQuarter++;
        crossed = true;
      }
      if (crossed) this.io.stderr(`${label}: step ${step}/${total}${info ? `, ${info}` : ''}${rate}, ${formatSeconds(elapsed)}\n`);
    }
  }

  /** Ends the bar (a newline after it on a terminal). */
  done(): void {
    if (this.finished) return;
    this.finished = true;
    if (this.io.isTTY) this.io.stderr('\n');
  }
}
