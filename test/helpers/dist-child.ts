// A rank of the MPI tests (test/distributed.test.ts), started by mpirun: node -r ts-register
// dist-child.ts <case>. Prints one JSON line per finding; the test reads them.
import { tensor, zeros } from '../../lib';
import { DistributedDataParallel, allReduce, barrier, broadcast, checkSameTensors, initDistributed, getProcessGroup } from '../../lib/distributed';
import { Trainer } from '../../lib/trainer';

const which = process.argv[2];
const say = (o: object) => process.stdout.write(JSON.stringify(o) + '\n');
const codeOf = (e: unknown) => ({ code: (e as { code?: string }).code, message: (e as Error).message });

if (which === 'missing') {
  // LORA_CUDA_MPI / LORA_CUDA_NCCL name a library that is not there.
  for (const backend of ['mpi', 'nccl'] as const) {
    try {
      initDistributed({ backend });
      say({ backend, ok: true });
    } catch (e) {
      say({ backend, ...codeOf(e) });
    }
  }
  process.exit(0);
}

const g = initDistributed({ backend: 'mpi', timeoutMs: which === 'timeout' ? 1500 : 60000, bucketBytes: 1024 });
if (which === 'collectives') {
  // 3000 + 1 floats over buckets of 1 KiB (256 floats): 12 reductions in one call.
  const a = tensor(Array.from({ length: 3000 }, (_, i) => (g.rank + 1) * i));
  const b = tensor([g.rank + 0.5], { dtype: 'float64' });
  const c = tensor([g.rank + 1, 7], { dtype: 'int32' });
  allReduce([a, b], 'mean');
  allReduce([c], 'sum');
  const x = zeros([5]).add(g.rank * 10 + 1);
  broadcast([x], 1);
  barrier();
  const av = a.toArray();
  say({ rank: g.rank, world: g.worldSize, a0: av[0], a1: av[1], aLast: av[2999], b: b.item(), c: Array.from(c.toArray()), x: Array.from(x.toArray()), group: getProcessGroup() });
} else if (which === 'mismatch') {
  const p = zeros(g.rank === 1 ? [4, 3] : [3, 4]);
  const q = zeros([2]);
  try {
    checkSameTensors([['layers.0.lora_A', q], ['layers.0.lora_B', p]]);
    say({ rank: g.rank, ok: true });
  } catch (e) {
    say({ rank: g.rank, ...codeOf(e) });
  }
} else if (which === 'ddp') {
  // Each rank starts from its own values: DDP gives every rank rank 0's.
  const p = tensor([g.rank + 1, g.rank + 2]).requiresGrad_();
  const q = tensor([5 * (g.rank + 1)]).requiresGrad_();
  const ddp = new DistributedDataParallel([p, q]);
  const afterBroadcast = [...p.toArray(), ...q.toArray()];
  // Rank r's gradient of p is r + 1; q has a gradient on rank 1 only (a missing one counts as zeros).
  p.grad = tensor([g.rank + 1, 10 * (g.rank + 1)]);
  if (g.rank === 1) q.grad = tensor([4]);
  ddp.syncGradients();
  const grads = [...p.grad!.toArray(), ...q.grad!.toArray()];
  // A Trainer whose ranks have different numbers of micro-batches per epoch is refused on every rank.
  let trainer: object;
  try {
    const train = Array.from({ length: g.rank + 2 }, () => ({ ids: [[0, 1]] }));
    new Trainer({ params: [p], loss: () => p.sum(), train, distributed: true });
    trainer = { ok: true };
  } catch (e) {
    trainer = codeOf(e);
  }
  say({ rank: g.rank, afterBroadcast, grads, trainer });
} else if (which === 'die') {
  // Rank 1 dies; rank 0 waits in a collective that can never complete. mpirun must end the job.
  if (g.rank === 1) process.exit(3);
  const t = zeros([16]);
  allReduce([t]);
  say({ rank: g.rank, unexpected: 'allReduce returned' });
} else if (which === 'timeout') {
  // Rank 1 is alive but never joins; rank 0's collective gives up after timeoutMs.
  if (g.rank === 1) {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 30000);
    process.exit(0);
  }
  try {
    allReduce([zeros([16])]);
    say({ rank: 0, unexpected: 'allReduce returned' });
  } catch (e) {
    say({ rank: 0, ...codeOf(e) });
    try {
      barrier();
    } catch (e2) {
      say({ rank: 0, after: codeOf(e2) });
    }
  }
  process.exit(4);  // a failed rank: mpirun ends rank 1
}
