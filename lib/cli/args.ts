// A small, strict option parser: every command declares its options; unknown
// options, missing values and bad numbers are usage errors (exit code 2).
import { UsageError } from './io';

export type OptionSpec =
  | { type: 'string'; default?: string; help: string; metavar?: string }
  | { type: 'number'; default?: number; help: string; integer?: boolean; min?: number; max?: number; metavar?: string }
  | { type: 'boolean'; default?: boolean; help: string };

export type Specs = Record<string, OptionSpec>;
/** 'steps-a' -> 'stepsA': parsed options are keyed in camelCase. */
type Camel<S extends string> = S extends `${infer H}-${infer T}` ? `${H}${Capitalize<Camel<T>>}` : S;

export type Parsed<S extends Specs> = {
  [K in keyof S as Camel<K & string>]: S[K] extends { type: 'string' } ? string | undefined
    : S[K] extends { type: 'number' } ? number | undefined
    : boolean;
} & { _: string[]; help: boolean };

function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** Parses `--name value`, `--name=value`, boolean `--flag` / `--no-flag`, and positionals. */
export function parseArgs<S extends Specs>(command: string, specs: S, argv: string[]): Parsed<S> {
  const out: Record<string, unknown> = { _: [], help: false };
  for (const [k, s] of Object.entries(specs)) out[camel(k)] = s.default ?? (s.type === 'boolean' ? false : undefined);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') {
      out.help = true;
      continue;
    }
    if (!a.startsWith('--')) {
      (out._ as string[]).push(a);
      continue;
    }
    const [name, inline] = a.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    let value = inline;
    const spec = specs[name];
    if (!spec && name.startsWith('no-') && specs[name.slice(3)]?.type === 'boolean' && value === undefined) {
      out[camel(name.slice(3))] = false;
      continue;
    }
    if (!spec) throw new UsageError(`unknown option --${name} (see lora-cuda ${command} --help)`);
    if (spec.type === 'boolean') {
      if (value !== undefined) throw new UsageError(`--${name} takes no value`);
      out[camel(name)] = true;
      continue;
    }
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined || value.startsWith('--')) throw new UsageError(`--${name} needs a value (${spec.metavar ?? spec.type})`);
    }
    if (spec.type === 'number') {
      const n = Number(value);
      if (value.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got ${JSON.stringify(value)}`);
      if (spec.integer && !Number.isInteger(n)) throw new UsageError(`--${name} must be an integer, got ${value}`);
      if (spec.min !== undefined && n < spec.min) throw new UsageError(`--${name} must be >= ${spec.min}, got ${value}`);
      if (spec.max !== undefined && n > spec.max) throw new UsageError(`--${name} must be <= ${spec.max}, got ${value}`);
      out[camel(name)] = n;
    } else {
      out[camel(name)] = value;
    }
  }
  return out as Parsed<S>;
}

/** The --help text of a command: usage line, description, one line per option. */
export function helpText(command: string, summary: string, specs: Specs, usage = `lora-cuda ${command} [options]`): string {
  const rows = Object.entries(specs).map(([k, s]) => {
    const flag = s.type === 'boolean' ? `--${k}` : `--${k} ${('metavar' in s && s.metavar) || s.type.toUpperCase()}`;
    const dflt = s.default !== undefined && s.default !== false ? ` (default ${s.default})` : '';
    return [flag, `${s.help}${dflt}`];
  });
  rows.push(['--help', 'show this help']);
  const w = Math.max(...rows.map((r) => r[0].length));
  return [`usage: ${usage}`, '', summary, '', 'options:', ...rows.map(([f, h]) => `  ${f.padEnd(w)}  ${h}`), ''].join('\n');
}
