// `lora-cuda launch`: starts N processes of a lora-cuda command for data-parallel training on this
// machine: through mpirun (the MPI backend; with --hostfile, across machines), or, with --backend
// nccl, as N child processes with torchrun's RANK / WORLD_SIZE / LOCAL_RANK and a rendezvous file
// for NCCL's unique id. When one process fails, the others are ended.
import { ChildProcess, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CliError, CliIO, UsageError } from './io';
import { Specs, helpText, parseArgs } from './args';
import { COMMAND_TEXT } from './commands';

const COMMAND = 'launch';
const SUMMARY = [
  COMMAND_TEXT.launch.summary,
  'Everything after -- is the command each process runs, with the same flags (lora-cuda finetune splits',
  '--batch-size across the processes). mpi (default): mpirun -np N (Open MPI: apt-get install openmpi-bin',
  'libopenmpi3), on the machines of --hostfile if given. nccl: N processes on this machine, one GPU each,',
  'started here with RANK, WORLD_SIZE, LOCAL_RANK and LORA_CUDA_RENDEZVOUS set.',
].join('\n');

const SPECS = {
  nproc: { type: 'number', integer: true, min: 1, metavar: 'N', help: 'number of processes (ranks) (required)' },
  backend: { type: 'string', default: 'mpi', metavar: 'mpi|nccl', help: 'how the processes are started and talk' },
  hostfile: { type: 'string', metavar: 'FILE', help: 'mpi: Open MPI hostfile of the machines to run on' },
} satisfies Specs;

/** The lora-cuda script that started this process: the children run the same one. */
function binScript(): string {
  for (let dir = __dirname, i = 0; i < 5; i++, dir = path.dirname(dir)) {
    const p = path.join(dir, 'bin', 'lora-cuda.js');
    if (fs.existsSync(p)) return p;
  }
  throw new CliError('cannot find bin/lora-cuda.js of this package');
}

function waitAll(children: ChildProcess[], io: CliIO): Promise<number> {
  return new Promise((resolve) => {
    let left = children.length;
    let failed = 0;
    children.forEach((c, rank) => {
      c.on('exit', (code, signal) => {
        const status = code ?? (signal ? 128 + (os.constants.signals[signal] ?? 0) : 1);
        if (status !== 0 && !failed) {
          failed = status;
          io.stderr(`lora-cuda launch: rank ${rank} exited with ${signal ? `signal ${signal}` : `code ${code}`}; ending the other ranks\n`);
          for (const o of children) if (o !== c && o.exitCode === null && o.signalCode === null) o.kill('SIGTERM');
        }
        if (--left === 0) resolve(failed);
      });
    });
  });
}

export async function launchCommand(argv: string[], io: CliIO): Promise<number> {
  const sep = argv.indexOf('--');
  const own = sep < 0 ? argv : argv.slice(0, sep);
  const rest = sep < 0 ? [] : argv.slice(sep + 1);
  const a = parseArgs(COMMAND, SPECS, own);
  if (a.help) {
    io.stdout(helpText(COMMAND, SUMMARY, SPECS, COMMAND_TEXT.launch.usage));
    return 0;
  }
  if (a._.length) throw new UsageError(`unexpected argument ${JSON.stringify(a._[0])}: put the command to run after -- (lora-cuda launch --nproc N -- finetune ...)`);
  if (a.nproc === undefined) throw new UsageError('--nproc is required');
  if (!rest.length) throw new UsageError('no command after --: e.g. lora-cuda launch --nproc 2 -- finetune --model DIR --data FILE');
  if (rest[0] === COMMAND) throw new UsageError('the command after -- cannot be launch itself');
  const backend = a.backend;
  if (backend !== 'mpi' && backend !== 'nccl') throw new UsageError(`--backend must be mpi or nccl, got ${JSON.stringify(backend)}`);
  if (a.hostfile !== undefined && backend !== 'mpi') throw new UsageError('--hostfile is for --backend mpi (NCCL processes are started on this machine only)');
  const node = [...process.execArgv, binScript(), ...rest];

  if (backend === 'mpi') {
    if (spawnSync('mpirun', ['--version'], { stdio: 'ignore' }).error) {
      throw new CliError('mpirun was not found: install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi3), or use --backend nccl on one machine with GPUs');
    }
    const env = { ...process.env };
    // Open MPI refuses root unless told (containers and CI often run as root).
    if (process.getuid?.() === 0) Object.assign(env, { OMPI_ALLOW_RUN_AS_ROOT: '1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1' });
    const args = ['-np', String(a.nproc), ...(a.hostfile ? ['--hostfile', a.hostfile] : ['--oversubscribe']), process.execPath, ...node];
    const c = spawn('mpirun', args, { stdio: 'inherit', env });
    return await waitAll([c], io);
  }

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-launch-'));
  try {
    const children: ChildProcess[] = [];
    for (let rank = 0; rank < a.nproc; rank++) {
      const env = {
        ...process.env, RANK: String(rank), WORLD_SIZE: String(a.nproc), LOCAL_RANK: String(rank), LOCAL_WORLD_SIZE: String(a.nproc),
        LORA_CUDA_RENDEZVOUS: path.join(dir, 'nccl-unique-id'),
      };
      children.push(spawn(process.execPath, node, { stdio: 'inherit', env }));
    }
    const onSignal = (sig: NodeJS.Signals) => children.forEach((c) => c.kill(sig));
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    try {
      return await waitAll(children, io);
    } finally {
      process.removeListener('SIGINT', onSignal);
      process.removeListener('SIGTERM', onSignal);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
