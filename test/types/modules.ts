// Compiled (never run) by test/types.test.ts with tsc --noEmit: the typing of the
// containers, Module.call and the grad-mode functions. Each @ts-expect-error line must be
// an error, so a misuse that type-checks fails the test.
import {
  Dropout, Embedding, GELU, Identity, LayerNorm, Linear, Module, ModuleDict, ModuleList, ReLU, Sequential, Tensor,
  enableGrad, noGrad, setGradEnabled, zeros,
} from '../../lib';

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false;
function assertType<T extends true>(): T | undefined {
  return undefined;
}

const x = zeros([2, 4]);

// Sequential: forward is typed from the layers.
const seq = new Sequential(new Linear(4, 8), new ReLU(), new Dropout(0.1), new LayerNorm([8]), new Linear(8, 2));
const y: Tensor = seq.forward(x);
assertType<Equal<typeof y, Tensor>>();
assertType<Equal<ReturnType<typeof seq.forward>, Tensor>>();
assertType<Equal<Parameters<typeof seq.forward>, [x: Tensor]>>();
const first: Linear = seq.at(0);
const second: ReLU = seq.at(1);
void first;
void second;
// @ts-expect-error a Sequential of tensor layers takes no string
seq.forward('x');
// @ts-expect-error its output is a Tensor, not a number
const notNumber: number = seq.forward(x);
void notNumber;

// A layer with another input type: the chain is checked where it breaks.
class Tokens extends Module {
  forward(ids: Tensor): number[] {
    return [ids.numel];
  }
}
class Count extends Module {
  forward(xs: number[]): number {
    return xs.length;
  }
}
const counted = new Sequential(new Linear(4, 4), new Tokens(), new Count());
const n: number = counted.forward(x);
assertType<Equal<ReturnType<typeof counted.forward>, number>>();
void n;
// @ts-expect-error Count takes number[], but Linear returns a Tensor
new Sequential(new Linear(4, 4), new Count());
// @ts-expect-error Linear takes a Tensor, but Tokens returns number[]
new Sequential(new Tokens(), new Linear(4, 4));
// Identity passes its input through.
const withIdentity = new Sequential(new Tokens(), new Identity(), new Count());
assertType<Equal<ReturnType<typeof withIdentity.forward>, number>>();
// @ts-expect-error not a Module
new Sequential(new Linear(4, 4), (t: Tensor) => t);

// Module.call is forward, typed.
const lin = new Linear(4, 3);
const z: Tensor = lin.call(x);
void z;
const count: number = new Count().call([1, 2]);
void count;
// @ts-expect-error Linear.call takes a Tensor
lin.call([1, 2]);
// @ts-expect-error Count.call returns a number
const wrong: Tensor = new Count().call([1]);
void wrong;
const seqOut: Tensor = seq.call(x);
void seqOut;

// ModuleList<T> and ModuleDict<T>.
const list = new ModuleList([new Linear(4, 4), new Linear(4, 4)]);
const l0: Linear = list.at(0);
void l0;
for (const l of list) {
  const h: Tensor = l.forward(x);
  void h;
}
list.append(new Linear(4, 4)).insert(0, new Linear(4, 4));
// @ts-expect-error a ModuleList<Linear> holds Linear layers only
list.append(new ReLU());
const mixed = new ModuleList<Module>([new ReLU(), new Linear(2, 2)]);
mixed.append(new GELU());
const dict = new ModuleDict({ q: new Linear(4, 4), k: new Linear(4, 4) });
const q: Linear = dict.get('q');
void q;
for (const key of dict) {
  const k: string = key;
  void k;
}
const pairs: [string, Linear][] = dict.entries();
void pairs;
// @ts-expect-error a ModuleDict<Linear> holds Linear layers only
dict.set('e', new Embedding(3, 4));

// parameters() is an array; namedParameters() a generator of pairs.
const ps: Tensor[] = seq.parameters();
const count2: number = ps.length;
void count2;
const named: Generator<[string, Tensor]> = seq.namedParameters();
void named;

// Grad mode returns what fn returns.
const g1: Tensor = noGrad(() => lin.call(x));
const g2: number = enableGrad(() => 1);
const g3: string = setGradEnabled(false, () => 'a');
setGradEnabled(true);
void g1;
void g2;
void g3;
// @ts-expect-error setGradEnabled takes a boolean
setGradEnabled(1);
x.backward({ retainGraph: true });
// @ts-expect-error an unknown backward option
x.backward({ retain_graph: true });

// A typed Sequential is still a Sequential (where code takes any Sequential or Module).
const anySeq: Sequential = seq;
const asModule: Module = counted;
void anySeq;
void asModule;
