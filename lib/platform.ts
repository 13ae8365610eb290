// What the system offers that decides which binary can load: the glibc this process runs on and
// the newest glibc a binary asks for. Loads no addon, so it serves the loader's error and doctor.
import * as fs from 'fs';

/** The glibc this process runs on ('2.31'), or null (not glibc, or not reported). */
export function glibcVersion(): string | null {
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  return header?.glibcVersionRuntime ?? null;
}

/** The newest GLIBC_x.y symbol version a binary asks for ('2.28'), from its version strings; null if none. */
export function glibcNeeded(file: string): string | null {
  let text: string;
  try {
    text = fs.readFileSync(file).toString('latin1');
  } catch {
    return null;
  }
  let best: [number, number] | null = null;
  for (const m of text.matchAll(/GLIBC_(\d+)\.(\d+)/g)) {
    const v: [number, number] = [Number(m[1]), Number(m[2])];
    if (!best || v[0] > best[0] || (v[0] === best[0] && v[1] > best[1])) best = v;
  }
  return best ? `${best[0]}.${best[1]}` : null;
}

/** a < b for versions 'major.minor'. */
export function olderThan(a: string, b: string): boolean {
  const [am, an] = a.split('.').map(Number);
  const [bm, bn] = b.split('.').map(Number);
  return am < bm || (am === bm && an < bn);
}
