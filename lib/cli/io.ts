// What a command talks to, so tests can run commands in-process and read
// everything they print.
export interface CliIO {
  stdout(text: string): void;
  stderr(text: string): void;
  /** Progress bars and terminal charts only when true. */
  isTTY: boolean;
  /** Terminal width for bars and charts. */
  columns: number;
}

export const processIO: CliIO = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
  isTTY: !!process.stdout.isTTY,
  columns: process.stdout.columns || 80,
};

/** A failure the user can fix: printed as one line ("lora-cuda <cmd>: …"), exit code 1. */
export class CliError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
  }
}

/** Wrong or missing arguments: exit code 2, with a pointer to --help. */
export class UsageError extends CliError {
  constructor(message: string) {
    super(message, 2);
  }
}

/** A library error's message on one line. */
export function oneLine(msg: string): string {
  return msg.replace(/\s*\n\s*/g, ' ').trim();
}

/** A special token as tokenizer_config.json writes it ("</s>" or { "content": "</s>" }), as text. */
export function tokenContent(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}
