// The `lora-cuda` command line: dispatch to a command, and turn every failure
// into one line on stderr ("lora-cuda <cmd>: <message>") and an exit code:
// 0 ok, 1 failure, 2 usage. Commands are loaded on demand, so `--help` answers
// at once and works even where the native addon does not load.
import * as fs from 'fs';
import * as path from 'path';
import { CliError, CliIO, UsageError, processIO } from './io';
import { COMMAND_TEXT, CommandName } from './commands';

export { CliError, UsageError, processIO } from './io';
export type { CliIO } from './io';

// How to run each command; what it is (summary, usage) is in commands.ts.
const COMMANDS: Record<CommandName, (argv: string[], io: CliIO) => Promise<number>> = {
  demo: async (argv, io) => (await import('./demo')).demoCommand(argv, io),
  finetune: async (argv, io) => (await import('./finetune')).finetuneCommand(argv, io),
  merge: async (argv, io) => (await import('./merge')).mergeCommand(argv, io),
  generate: async (argv, io) => (await import('./generate')).generateCommand(argv, io),
  doctor: async (argv, io) => (await import('./doctor')).doctorCommand(argv, io),
  // The benchmarks live outside the library (bench/, shipped as dist/bench).
  bench: async (argv, io) => (await import('../../bench/command')).benchCommand(argv, io),
  launch: async (argv, io) => (await import('./launch')).launchCommand(argv, io),
};

/** The package version, from the package.json above this file (lib/cli or dist/lib/cli). */
function version(): string {
  let dir = __dirname;
  for (let i = 0; i < 5; i++) {
    const file = path.join(dir, 'package.json');
    try {
      const pkg = JSON.parse(fs.readFileSync(file, 'utf8'));
      if (pkg.name === 'lora-cuda') return String(pkg.version);
    } catch {
      // not here: go up
    }
    dir = path.dirname(dir);
  }
  return 'unknown';
}

export function mainHelp(): string {
  const w = Math.max(...Object.keys(COMMANDS).map((k) => k.length));
  return [
    'usage: lora-cuda <command> [options]',
    '',
    'LoRA fine-tuning for Node.js on a native core. With no command, runs the demo.',
    '',
    'commands:',
    ...Object.entries(COMMAND_TEXT).map(([k, c]) => `  ${k.padEnd(w)}  ${c.summary}`),
    '',
    'Run lora-cuda <command> --help for a command\'s options. Exit codes: 0 ok, 1 failure, 2 wrong usage.',
    '',
    'examples:',
    '  npx lora-cuda demo',
    '  npx lora-cuda finetune --model ./SmolLM-135M --data train.jsonl --out ./my-adapter',
    '  npx lora-cuda merge --model ./SmolLM-135M --adapter ./my-adapter --out ./SmolLM-135M-merged',
    "  npx lora-cuda generate --model ./SmolLM-135M --adapter ./my-adapter --prompt 'Once upon a time'",
    '  npx lora-cuda bench --quick',
    '  npx lora-cuda launch --nproc 2 -- finetune --model ./SmolLM-135M --data train.jsonl --batch-size 8',
    '  npx lora-cuda doctor',
    '',
  ].join('\n');
}

/** One line: newlines and runs of whitespace around them become '; '. */
function oneLine(s: string): string {
  return s.trim().replace(/\s*\n\s*/g, '; ');
}

/** Prints `err` as one line for command `cmd` and returns the exit code. */
function report(err: unknown, cmd: string, io: CliIO): number {
  const prefix = cmd ? `lora-cuda ${cmd}` : 'lora-cuda';
  const e = err as (Error & NodeJS.ErrnoException) | undefined;
  const message = oneLine(e instanceof Error ? e.message : String(err));
  if (err instanceof UsageError) {
    const hint = /--help\b/.test(message) ? '' : ` (see lora-cuda${cmd ? ` ${cmd}` : ''} --help)`;
    io.stderr(`${prefix}: ${message}${hint}\n`);
    return err.exitCode;
  }
  if (err instanceof CliError) {
    io.stderr(`${prefix}: ${message}\n`);
    return err.exitCode;
  }
  if (e?.code === 'ERR_OUT_OF_MEMORY') {
    const fix = cmd === 'finetune' ? 'use a smaller --batch-size or --seq-len' : cmd === 'demo' ? 'use a smaller --batch-size' : 'free memory or use a smaller model';
    io.stderr(`${prefix}: out of memory (${message}); ${fix}\n`);
    return 1;
  }
  if (e?.syscall && typeof e.code === 'string') {
    // The operating system refused something (a file, a directory): not a bug.
    io.stderr(`${prefix}: ${message}\n`);
    return 1;
  }
  io.stderr(`${prefix}: ${message} (this is a bug; please report it)\n`);
  if (process.env.LORA_CUDA_DEBUG && e?.stack) io.stderr(`${e.stack}\n`);
  return 1;
}

/**
 * Runs the command line `argv` (without node and the script) and returns the
 * exit code; nothing throws. `io` receives all output (tests capture it).
 */
export async function main(argv: string[], io: CliIO = processIO): Promise<number> {
  const first = argv[0];
  if (first === '--help' || first === '-h' || first === 'help' && argv.length === 1) {
    io.stdout(mainHelp());
    return 0;
  }
  if (first === '--version' || first === '-v') {
    io.stdout(`lora-cuda ${version()}\n`);
    return 0;
  }
  let name = 'demo';
  let rest = argv;
  if (first === 'help') {
    // lora-cuda help <command> = lora-cuda <command> --help
    name = argv[1];
    rest = ['--help'];
  } else if (first !== undefined && !first.startsWith('-')) {
    name = first;
    rest = argv.slice(1);
  }
  const command = Object.hasOwn(COMMANDS, name) ? COMMANDS[name as CommandName] : undefined;
  if (!command) {
    io.stderr(`lora-cuda: unknown command '${name}' (commands: ${Object.keys(COMMANDS).join(', ')}; see lora-cuda --help)\n`);
    return 2;
  }
  try {
    return await command(rest, io);
  } catch (err) {
    return report(err, name, io);
  }
}
