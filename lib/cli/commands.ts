// What each command is, said once: the summary and the usage line that both
// `lora-cuda --help` (index.ts lists them) and the command's own --help print.
// Nothing is imported here, so the main help loads no command and no addon.
export interface CommandText {
  summary: string;
  usage: string;
}

export const COMMAND_TEXT = {
  demo: {
    summary: 'Pretrain a tiny Llama on a synthetic task, LoRA-fine-tune it on another (no downloads; about 6 s on 2 CPU cores).',
    usage: 'lora-cuda demo [--device cpu|cuda] [--out DIR] [--svg FILE] [--json]',
  },
  finetune: {
    summary: 'LoRA fine-tuning of a Hugging Face Llama-family checkpoint on a .txt or .jsonl file.',
    usage: 'lora-cuda finetune --model DIR --data FILE [--out DIR] [options]',
  },
  merge: {
    summary: 'Fold a LoRA adapter into its base model and save a plain Hugging Face checkpoint.',
    usage: 'lora-cuda merge --model DIR --adapter DIR --out DIR',
  },
  generate: {
    summary: 'Continue a prompt with a checkpoint, optionally with a LoRA adapter applied.',
    usage: 'lora-cuda generate --model DIR [--adapter DIR] --prompt TEXT [options]',
  },
  doctor: {
    summary: 'Check this installation: Node, glibc, the native addon, CPU features, BLAS, CUDA and each GPU, with what to do for each missing part.',
    usage: 'lora-cuda doctor [--json]',
  },
  bench: {
    summary: 'Time LoRA layers against the frozen linear layer they wrap (the table of npm run bench).',
    usage: 'lora-cuda bench [--quick] [--device cpu|cuda] [--json FILE] [--results DIR]',
  },
  launch: {
    summary: 'Run a command (finetune) as N data-parallel processes: through mpirun, or as NCCL processes on this machine.',
    usage: 'lora-cuda launch --nproc N [--backend mpi|nccl] [--hostfile FILE] -- finetune [options]',
  },
} satisfies Record<string, CommandText>;

export type CommandName = keyof typeof COMMAND_TEXT;
