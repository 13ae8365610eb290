// Runs kernels: every CUDA thread of a block is a fiber with its own stack on
// the calling OS thread; blocks run one after another. A fiber runs until it
// reaches __syncthreads() or a warp function, or returns; then another one
// runs. A barrier releases when every thread of the block (warp)
// has arrived, and only if they all arrived at the same call; shuffles need a
// full warp and a full mask. Anything else, a thread that exits while others
// wait, and memory faults (allocations end at an inaccessible page; a fault in
// a fiber is caught and the fiber abandoned) end the launch with a sticky
// error that names the kernel, the block, the thread and what happened.
//
// The order in which runnable threads go is a choice (any order is one a GPU
// may take); LORA_CUDA_EMU_SCHEDULE picks it, so that a race a missing barrier
// leaves shows in one of them: "forward" (the default: threads in index order,
// those released by a barrier after those already waiting), "reverse" (index
// order backwards), "warp-ahead" (the lanes a warp function releases run next,
// so one warp runs as far ahead of the others as it can: a write after a
// barrier overtakes another warp's read before it), or "reverse,warp-ahead".
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "cuda_runtime.h"
#include "emu.h"

#if defined(__x86_64__) && !defined(LORA_CUDA_EMU_UCONTEXT)
#define EMU_ASM_SWITCH 1
#else
#define EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

namespace emu {

uint3 g_thread_idx, g_block_idx;
dim3 g_block_dim, g_grid_dim;

namespace {

// ---------------------------------------------------------------- contexts

#if EMU_ASM_SWITCH
// Saves the callee-saved registers on the current stack, stores its pointer in
// *save and continues on `to`. (MXCSR and the x87 control word, callee-saved
// too, are left alone: kernel code does not change them.)
extern "C" void emu_ctx_switch(void** save, void* to);
__asm__(
    ".text\n"
    ".globl emu_ctx_switch\n"
    ".hidden emu_ctx_switch\n"
    ".type emu_ctx_switch,@function\n"
    "emu_ctx_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size emu_ctx_switch, .-emu_ctx_switch\n");

struct Ctx {
  void* sp = nullptr;
};
void ctx_init(Ctx& c, char* stack, size_t size, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t{15};
  auto* w = reinterpret_cast<uint64_t*>(top);
  w[-1] = 0;                                  // entry's return address: it never returns
  w[-2] = reinterpret_cast<uint64_t>(entry);  // where the first switch's ret goes (rsp then 8 mod 16)
  for (int i = 3; i <= 8; ++i) w[-i] = 0;     // rbp, rbx, r12-r15
  c.sp = &w[-8];
}
inline void ctx_switch(Ctx& from, Ctx& to) { emu_ctx_switch(&from.sp, to.sp); }
#else
struct Ctx {
  ucontext_t uc;
};
void ctx_init(Ctx& c, char* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
inline void ctx_switch(Ctx& from, Ctx& to) { swapcontext(&from.uc, &to.uc); }
#endif

// ---------------------------------------------------------------- state

constexpr int kMaxLanes = kMaxThreadsPerBlock;
constexpr size_t kStackBytes = 256 * 1024;

enum State : uint8_t { kUnstarted, kReady, kRunning, kAtBarrier, kAtWarp, kDone };

struct Lane {
  Ctx ctx;
  int stack = -1;
  State state = kUnstarted;
  uint3 idx{};
  // Where it waits.
  const char* file = nullptr;
  int line = 0;
  WarpOp op = kShflIdx;
  int arg = 0;
  alignas(16) unsigned char in[16];
  alignas(16) unsigned char out[16];
};

struct Warp {
  int size = 0;     // threads in this warp (32 unless the block size is not a multiple of 32)
  int arrived = 0;  // lanes waiting in the current warp function
  int done = 0;     // lanes that returned
  int first = -1;   // the first lane to arrive
  const char* file = nullptr;
  int line = 0;
  WarpOp op = kShflIdx;
  int width = 32;
  size_t size_v = 0;
};

const char* op_name(WarpOp op) {
  switch (op) {
    case kShflIdx: return "__shfl_sync";
    case kShflUp: return "__shfl_up_sync";
    case kShflDown: return "__shfl_down_sync";
    case kShflXor: return "__shfl_xor_sync";
    case kWmmaLoad: return "wmma::load_matrix_sync";
    case kWmmaStore: return "wmma::store_matrix_sync";
    case kWmmaMma: return "wmma::mma_sync";
    case kWmmaMmaDone: return "wmma::mma_sync (results)";
    default: return "__syncwarp";
  }
}

struct Exec {
  // launch
  LaunchSite site{};
  const char* signature = "";
  dim3 grid, block;
  int device = 0;
  size_t smem = 0, smem_limit = 0;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  bool reverse = false;     // LORA_CUDA_EMU_SCHEDULE
  bool warp_ahead = false;
  std::vector<const Alloc*> args;  // device allocations the pointer arguments point into
  bool failed = false;             // the launch is over: a fault was recorded

  // block
  Lane lanes[kMaxLanes];
  Warp warps[kMaxLanes / 32];
  int nt = 0, nwarps = 0;
  int bar_arrived = 0, bar_first = -1;
  const char* bar_file = nullptr;
  int bar_line = 0;
  int ready[kMaxLanes];
  int rq_head = 0, rq_count = 0;
  int next_start = 0, done = 0;
  int cur = -1;
  Ctx sched;

  // stacks: one region, a guard page below each stack
  char* stacks = nullptr;
  size_t stack_stride = 0;
  std::vector<int> free_stacks;
  bool stack_mapped[kMaxLanes] = {};

  // shared memory: [guard][static][guard][dynamic, flush against the next guard][guard]
  char* smem_map = nullptr;
  char* static_base = nullptr;
  char* dyn_end = nullptr;
  size_t static_used = 0;
  std::vector<std::pair<const void*, void*>> static_sites;
  std::vector<std::pair<char*, size_t>> static_gaps;  // canaries between static variables
  char* dyn_base = nullptr;
  size_t dyn_head = 0;  // canary bytes before the dynamic memory (alignment)

  // memory faults
  sigjmp_buf jmp;
  pthread_t thread{};
  volatile sig_atomic_t in_lane = 0;
  volatile sig_atomic_t signo = 0;
  void* fault_addr = nullptr;
  void* fault_sp = nullptr;  // the stack pointer at the fault (null: unknown)
  int fault_write = -1;  // 1 write, 0 read, -1 unknown
};

Exec* g_exec = nullptr;
size_t g_page = 0;

constexpr size_t kStaticCap = kSharedOptin + 64 * 1024;  // a generous upper bound: the total is checked

Exec& init_exec() {
  if (!g_exec) {
    g_exec = new Exec();  // never destroyed
    g_page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    Exec& e = *g_exec;
    e.stack_stride = kStackBytes + g_page;
    void* m = mmap(nullptr, e.stack_stride * kMaxLanes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                   0);
    if (m == MAP_FAILED) {
      std::perror("lora-cuda CUDA emulator: mmap of the thread stacks");
      std::abort();
    }
    e.stacks = static_cast<char*>(m);
    auto pages = [](size_t n) { return (n + g_page - 1) / g_page * g_page; };
    const size_t static_len = pages(kStaticCap), dyn_len = pages(kSharedOptin + 16);
    const size_t smem_len = g_page + static_len + g_page + dyn_len + g_page;
    m = mmap(nullptr, smem_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
      std::perror("lora-cuda CUDA emulator: mmap of shared memory");
      std::abort();
    }
    e.smem_map = static_cast<char*>(m);
    e.static_base = e.smem_map + g_page;
    char* dyn_start = e.static_base + static_len + g_page;
    if (mprotect(e.static_base, static_len, PROT_READ | PROT_WRITE) != 0 ||
        mprotect(dyn_start, dyn_len, PROT_READ | PROT_WRITE) != 0) {
      std::perror("lora-cuda CUDA emulator: mprotect of shared memory");
      std::abort();
    }
    e.dyn_end = dyn_start + dyn_len;
    for (int i = kMaxLanes - 1; i >= 0; --i) e.free_stacks.push_back(i);
  }
  return *g_exec;
}
inline Exec& exec() { return g_exec ? *g_exec : init_exec(); }

// ---------------------------------------------------------------- reports

std::string dim_str(dim3 d) { return fmt("(%u,%u,%u)", d.x, d.y, d.z); }
std::string idx_str(uint3 d) { return fmt("(%u,%u,%u)", d.x, d.y, d.z); }

// "kernel(param types)" from the launch's __PRETTY_FUNCTION__ ("... [with P = {const float*, long int}; ...]").
std::string kernel_str(const Exec& e) {
  std::string sig = e.signature, params;
  size_t a = sig.find("P = {");
  if (a != std::string::npos) {
    int depth = 0;  // "{anonymous}" may be inside
    for (size_t b = a + 4; b < sig.size(); ++b) {
      if (sig[b] == '{') ++depth;
      if (sig[b] == '}' && --depth == 0) {
        params = sig.substr(a + 5, b - a - 5);
        break;
      }
    }
  }
  return fmt("%s(%s)", e.site.kernel, params.c_str());
}

std::string launch_str(const Exec& e) {
  return fmt("kernel %s launched at %s:%d with grid %s, block %s, %zu bytes of dynamic shared memory",
             kernel_str(e).c_str(), e.site.file, e.site.line, dim_str(e.grid).c_str(), dim_str(e.block).c_str(),
             e.smem);
}

std::string where(const Exec& e) { return launch_str(e) + "; block " + idx_str(g_block_idx); }

void record(cudaError_t code, const std::string& what) {
  Exec& e = exec();
  if (e.failed) return;
  e.failed = true;
  fault(code, what);
}

// A fault found while a fiber runs: record it and leave the fiber for good.
[[noreturn]] void lane_fault(const std::string& what, cudaError_t code = cudaErrorLaunchFailure) {
  Exec& e = exec();
  record(code, where(e) + ", thread " + idx_str(e.lanes[e.cur].idx) + ": " + what);
  ctx_switch(e.lanes[e.cur].ctx, e.sched);
  std::abort();  // never resumed
}

std::string site_str(const char* file, int line) { return fmt("%s:%d", file, line); }
inline bool same_file(const char* a, const char* b) { return a == b || std::strcmp(a, b) == 0; }

// ---------------------------------------------------------------- scheduling
//
// Lanes switch to each other directly; the scheduler's context (the launching
// thread's stack) is entered only when a block is over or cannot go on. A lane
// that returns goes on with the next thread that has not started, on the same
// stack, so a block without barriers costs no switch per thread.

void push_ready(int t) {
  Exec& e = exec();
  e.lanes[t].state = kReady;
  e.ready[(e.rq_head + e.rq_count) % kMaxLanes] = t;
  ++e.rq_count;
}

// Runs next (before the lanes already waiting).
void push_ready_front(int t) {
  Exec& e = exec();
  e.lanes[t].state = kReady;
  e.rq_head = (e.rq_head + kMaxLanes - 1) % kMaxLanes;
  e.ready[e.rq_head] = t;
  ++e.rq_count;
}

int pop_ready() {
  Exec& e = exec();
  if (!e.rq_count) return -1;
  int t = e.ready[e.rq_head];
  e.rq_head = (e.rq_head + 1) % kMaxLanes;
  --e.rq_count;
  return t;
}

int take_unstarted() {
  Exec& e = exec();
  if (e.next_start >= e.nt) return -1;
  int t = e.reverse ? e.nt - 1 - e.next_start : e.next_start;
  ++e.next_start;
  return t;
}

void lane_entry();

void start_lane(int t) {
  Exec& e = exec();
  Lane& L = e.lanes[t];
  int s = e.free_stacks.back();
  e.free_stacks.pop_back();
  char* base = e.stacks + static_cast<size_t>(s) * e.stack_stride;
  if (!e.stack_mapped[s]) {
    // The page below each stack stays inaccessible: an overflow faults.
    if (mprotect(base + g_page, kStackBytes, PROT_READ | PROT_WRITE) != 0) {
      std::perror("lora-cuda CUDA emulator: mprotect of a thread stack");
      std::abort();
    }
    e.stack_mapped[s] = true;
  }
  L.stack = s;
  ctx_init(L.ctx, base + g_page, kStackBytes, lane_entry);
}

// Makes lane t the running one (its context is switched to next).
void activate(int t) {
  Exec& e = exec();
  e.cur = t;
  g_thread_idx = e.lanes[t].idx;
  e.lanes[t].state = kRunning;
}

// The next lane to run: a released one first, else one not started yet; -1 when none.
int pick(bool may_start) {
  int t = pop_ready();
  if (t < 0 && may_start) {
    t = take_unstarted();
    if (t >= 0) start_lane(t);
  }
  return t;
}

// The running lane waits (its state says for what): run another, or return to
// the scheduler when none can run. Returns when the lane is released.
void yield_lane() {
  Exec& e = exec();
  Lane& me = e.lanes[e.cur];
  int t = pick(true);
  if (t < 0) {
    ctx_switch(me.ctx, e.sched);
    return;
  }
  activate(t);
  ctx_switch(me.ctx, e.lanes[t].ctx);
}

Ctx g_dead;  // where the contexts of returned lanes are saved, never to be resumed

// The running lane returned from the kernel.
void lane_exit() {
  Exec& e = exec();
  Lane& L = e.lanes[e.cur];
  Warp& W = e.warps[e.cur / 32];
  L.state = kDone;
  ++e.done;
  ++W.done;
  if (W.arrived > 0)
    lane_fault(fmt("returned while %d lane(s) of its warp wait in %s at %s (a warp function not every lane calls)",
                   W.arrived, op_name(W.op), site_str(W.file, W.line).c_str()));
  if (e.bar_arrived > 0)
    lane_fault(fmt("returned while %d thread(s) wait in __syncthreads() at %s (a barrier not every thread reaches)",
                   e.bar_arrived, site_str(e.bar_file, e.bar_line).c_str()));
}

void lane_entry() {
  Exec& e = exec();
  for (;;) {
    e.body(e.ctx);
    lane_exit();
    const int stack = e.lanes[e.cur].stack;
    e.lanes[e.cur].stack = -1;
    if (e.rq_count == 0) {
      int t = take_unstarted();
      if (t >= 0) {
        // The next thread runs on this stack, from here.
        e.lanes[t].stack = stack;
        activate(t);
        continue;
      }
    }
    int t = pick(false);
    e.free_stacks.push_back(stack);  // after pick: a lane started there must not get it while it is in use
    if (t < 0) {
      ctx_switch(g_dead, e.sched);
    } else {
      activate(t);
      ctx_switch(g_dead, e.lanes[t].ctx);
    }
    std::abort();  // never resumed
  }
}

std::string deadlock_report(Exec& e) {
  int at_bar = 0, exited = 0, at_warp = 0;
  int bar_ex = -1, warp_ex = -1, done_ex = -1;
  for (int t = 0; t < e.nt; ++t) {
    const Lane& L = e.lanes[t];
    if (L.state == kAtBarrier) ++at_bar, bar_ex = bar_ex < 0 ? t : bar_ex;
    else if (L.state == kAtWarp) ++at_warp, warp_ex = warp_ex < 0 ? t : warp_ex;
    else if (L.state == kDone) ++exited, done_ex = done_ex < 0 ? t : done_ex;
  }
  std::string r = "the block cannot go on (divergent barrier or warp function):";
  if (at_bar)
    r += fmt(" %d thread(s) wait in __syncthreads() at %s (e.g. thread %s);", at_bar,
             site_str(e.bar_file, e.bar_line).c_str(), idx_str(e.lanes[bar_ex].idx).c_str());
  if (at_warp) {
    const Lane& L = e.lanes[warp_ex];
    r += fmt(" %d lane(s) wait in %s at %s (e.g. thread %s);", at_warp, op_name(L.op),
             site_str(L.file, L.line).c_str(), idx_str(L.idx).c_str());
  }
  if (exited) r += fmt(" %d thread(s) returned (e.g. thread %s);", exited, idx_str(e.lanes[done_ex].idx).c_str());
  r.pop_back();
  return r;
}

void run_block() {
  Exec& e = exec();
  e.done = 0;
  e.next_start = 0;
  e.rq_head = e.rq_count = 0;
  e.bar_arrived = 0;
  e.bar_first = -1;
  for (int w = 0; w < e.nwarps; ++w) {
    Warp& W = e.warps[w];
    W.size = std::min(32, e.nt - 32 * w);
    W.arrived = W.done = 0;
    W.first = -1;
  }
  int t = pick(true);
  activate(t);
  e.in_lane = 1;
  ctx_switch(e.sched, e.lanes[t].ctx);
  e.in_lane = 0;
  if (!e.failed && e.done < e.nt) record(cudaErrorLaunchFailure, where(e) + ": " + deadlock_report(e));
}

// Takes back the stacks of the lanes of a block that did not finish.
void reclaim_stacks() {
  Exec& e = exec();
  for (int t = 0; t < e.nt; ++t) {
    Lane& L = e.lanes[t];
    if (L.stack >= 0) e.free_stacks.push_back(L.stack);
    L.stack = -1;
    L.state = kUnstarted;
  }
}

// ---------------------------------------------------------------- shared memory

void reset_shared() {
  Exec& e = exec();
  e.static_used = 0;
  e.static_sites.clear();
  e.static_gaps.clear();
  // The dynamic part ends at a guard page; the bytes before it (alignment) are a canary.
  e.dyn_base = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(e.dyn_end - e.smem) & ~uintptr_t{15});
  e.dyn_head = static_cast<size_t>(e.dyn_end - e.smem - e.dyn_base);
  std::memset(e.dyn_base, 0xFF, static_cast<size_t>(e.dyn_end - e.dyn_base));
}

// Writes outside the block's shared variables that stayed on accessible pages.
void check_shared() {
  Exec& e = exec();
  if (e.failed) return;
  if (!all_ff(e.dyn_base, e.dyn_head))
    record(cudaErrorIllegalAddress, where(e) + ": a write before the start of the dynamic shared memory");
  for (auto& g : e.static_gaps)
    if (!all_ff(g.first, g.second)) {
      record(cudaErrorIllegalAddress, where(e) + ": a write past the end of a static __shared__ variable");
      return;
    }
}

// ---------------------------------------------------------------- signals

struct sigaction g_old_segv, g_old_bus, g_old_fpe;

void on_signal(int sig, siginfo_t* si, void* uc) {
  Exec* e = g_exec;
  if (e && e->in_lane && pthread_equal(pthread_self(), e->thread)) {
    e->signo = sig;
    e->fault_addr = si->si_addr;
#if defined(__x86_64__)
    // Bit 1 of the page-fault error code: the access was a write.
    const auto& regs = static_cast<ucontext_t*>(uc)->uc_mcontext.gregs;
    e->fault_write = sig == SIGSEGV ? static_cast<int>((regs[REG_ERR] >> 1) & 1) : -1;
    e->fault_sp = reinterpret_cast<void*>(regs[REG_RSP]);
#endif
    siglongjmp(e->jmp, 1);
  }
  // Not a fault of kernel code: whoever handled the signal before handles it.
  struct sigaction& old = sig == SIGSEGV ? g_old_segv : sig == SIGBUS ? g_old_bus : g_old_fpe;
  if (old.sa_flags & SA_SIGINFO) {
    old.sa_sigaction(sig, si, uc);
  } else if (old.sa_handler == SIG_DFL || old.sa_handler == SIG_IGN) {
    signal(sig, SIG_DFL);  // the instruction faults again and the default action follows
  } else {
    old.sa_handler(sig);
  }
}

void install_handlers() {
  static bool done = false;
  if (!done) {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
    sigaction(SIGFPE, &sa, &g_old_fpe);
    done = true;
  }
  // An alternate signal stack for this thread, so that a fiber's stack overflow is caught too.
  thread_local bool alt = false;
  if (!alt) {
    stack_t cur;
    if (sigaltstack(nullptr, &cur) == 0 && (cur.ss_flags & SS_DISABLE)) {
      stack_t ss;
      ss.ss_size = 256 * 1024;
      ss.ss_sp = std::malloc(ss.ss_size);  // kept for the thread's life
      ss.ss_flags = 0;
      if (ss.ss_sp) sigaltstack(&ss, nullptr);
    }
    alt = true;
  }
}

void record_signal(Exec& e) {
  std::string who = where(e) + ", thread " + idx_str(e.lanes[e.cur].idx) + ": ";
  if (e.signo == SIGFPE) {
    record(cudaErrorLaunchFailure, who + "arithmetic trap (integer division by zero or overflow)");
    return;
  }
  const char* rw = e.fault_write == 1 ? "write to" : e.fault_write == 0 ? "read of" : "access to";
  auto a = reinterpret_cast<uintptr_t>(e.fault_addr);
  auto in = [&](const char* p, size_t n) {
    return a >= reinterpret_cast<uintptr_t>(p) && a < reinterpret_cast<uintptr_t>(p) + n;
  };
  std::string what;
  const Lane& L = e.lanes[e.cur];
  const char* stack_base = L.stack >= 0 ? e.stacks + static_cast<size_t>(L.stack) * e.stack_stride + g_page : nullptr;
  const bool sp_below = stack_base && e.fault_sp && static_cast<const char*>(e.fault_sp) < stack_base + 256;
  if (sp_below || in(e.stacks, e.stack_stride * kMaxLanes)) {
    what = fmt("stack overflow (a thread's stack is %zu KiB here)", kStackBytes / 1024);
  } else if (in(e.smem_map, static_cast<size_t>(e.dyn_end + g_page - e.smem_map))) {
    what = a >= reinterpret_cast<uintptr_t>(e.dyn_end)
               ? fmt("%s %zu bytes past the end of the block's %zu bytes of dynamic shared memory", rw,
                     static_cast<size_t>(a - reinterpret_cast<uintptr_t>(e.dyn_end)), e.smem)
               : fmt("%s shared memory outside the block's variables", rw);
  } else {
    what = fmt("%s %s", rw, describe_address(e.fault_addr).c_str());
  }
  record(cudaErrorIllegalAddress, who + "illegal memory access: " + what);
}

}  // namespace

// ================================================================ the device side

void syncthreads(const char* file, int line) {
  Exec& e = *g_exec;
  Lane& L = e.lanes[e.cur];
  if (e.done > 0) {
    int t = 0;
    while (e.lanes[t].state != kDone) ++t;
    lane_fault(fmt("__syncthreads() at %s after thread %s returned (a barrier not every thread reaches)",
                   site_str(file, line).c_str(), idx_str(e.lanes[t].idx).c_str()));
  }
  if (e.bar_arrived == 0) {
    e.bar_file = file;
    e.bar_line = line;
    e.bar_first = e.cur;
  } else if (e.bar_line != line || !same_file(e.bar_file, file)) {
    lane_fault(fmt("divergent __syncthreads(): this thread waits at %s, thread %s at %s", site_str(file, line).c_str(),
                   idx_str(e.lanes[e.bar_first].idx).c_str(), site_str(e.bar_file, e.bar_line).c_str()));
  }
  L.file = file;
  L.line = line;
  if (++e.bar_arrived == e.nt) {
    e.bar_arrived = 0;
    for (int i = 0; i < e.nt; ++i) {
      int t = e.reverse ? e.nt - 1 - i : i;
      if (t != e.cur) push_ready(t);
    }
    return;  // the last to arrive goes on at once
  }
  L.state = kAtBarrier;
  yield_lane();
}

void warp_op(const char* file, int line, WarpOp op, unsigned mask, int arg, int width, const void* in, void* out,
             size_t size) {
  Exec& e = *g_exec;
  Lane& L = e.lanes[e.cur];
  const int w = e.cur / 32;
  Warp& W = e.warps[w];
  if (mask != 0xffffffffu)
    lane_fault(fmt("%s at %s with mask 0x%08x: the emulator supports full-warp masks (0xffffffff) only", op_name(op),
                   site_str(file, line).c_str(), mask));
  if (W.size != 32)
    lane_fault(fmt("%s at %s in a warp of %d threads (block of %d): a full mask names lanes that do not exist",
                   op_name(op), site_str(file, line).c_str(), W.size, e.nt));
  if (width < 1 || width > 32 || (width & (width - 1)))
    lane_fault(fmt("%s at %s with width %d (a power of two up to 32)", op_name(op), site_str(file, line).c_str(), width));
  if (W.done > 0)
    lane_fault(fmt("%s at %s after a lane of its warp returned", op_name(op), site_str(file, line).c_str()));
  if (W.arrived == 0) {
    W.first = e.cur;
    W.file = file;
    W.line = line;
    W.op = op;
    W.width = width;
    W.size_v = size;
  } else if (W.line != line || !same_file(W.file, file) || W.op != op || W.width != width || W.size_v != size) {
    lane_fault(fmt("divergent warp: this lane is in %s at %s, lane %d of its warp in %s at %s", op_name(op),
                   site_str(file, line).c_str(), W.first % 32, op_name(W.op), site_str(W.file, W.line).c_str()));
  }
  if (in) std::memcpy(L.in, in, 16);
  L.arg = arg;
  L.op = op;
  L.file = file;
  L.line = line;
  if (++W.arrived < 32) {
    L.state = kAtWarp;
    yield_lane();
  } else {
    // The whole warp is here: every lane's result at once.
    W.arrived = 0;
    const int base = w * 32;
    for (int l = 0; l < 32; ++l) {
      Lane& x = e.lanes[base + l];
      const int seg = l & ~(width - 1);
      int src = l;
      switch (op) {
        case kShflIdx: src = seg + (x.arg & (width - 1)); break;
        case kShflUp: src = (l - seg) >= x.arg ? l - x.arg : l; break;
        case kShflDown: src = (l - seg) + x.arg < width ? l + x.arg : l; break;
        case kShflXor: src = (l ^ x.arg) < seg + width && (l ^ x.arg) < 32 ? l ^ x.arg : l; break;
        default: break;
      }
      std::memcpy(x.out, e.lanes[base + src].in, 16);
    }
    for (int i = 0; i < 32; ++i) {
      if (e.warp_ahead) {
        // Pushed to the front in reverse, so that they run in schedule order.
        int t = base + (e.reverse ? i : 31 - i);
        if (t != e.cur) push_ready_front(t);
      } else {
        int t = base + (e.reverse ? 31 - i : i);
        if (t != e.cur) push_ready(t);
      }
    }
  }
  if (out) std::memcpy(out, L.out, 16);
}

void* static_smem(const void* site, size_t size, size_t align) {
  Exec& e = *g_exec;
  for (auto& s : e.static_sites)
    if (s.first == site) return s.second;
  if (align < 16) align = 16;
  size_t off = (e.static_used + align - 1) / align * align;
  if (off + size + 16 > kStaticCap || off + size + e.smem > e.smem_limit)
    lane_fault(fmt("shared memory: %zu bytes of static __shared__ variables and %zu bytes of dynamic shared memory "
                   "exceed the %zu bytes a block may use",
                   off + size, e.smem, e.smem_limit));
  char* p = e.static_base + off;
  std::memset(p, 0xFF, size + 16);  // NaN bytes, and a canary after the variable
  e.static_gaps.push_back({p + size, 16});
  e.static_used = off + size + 16;
  e.static_sites.push_back({site, p});
  return p;
}

void device_fault(const char* file, int line, const char* what) {
  lane_fault(fmt("%s at %s", what, site_str(file, line).c_str()));
}

void* dynamic_smem() { return g_exec->dyn_base + g_exec->dyn_head; }

// ================================================================ launches

bool begin_launch(const LaunchSite& site, const char* signature, const void* fn, dim3 grid, dim3 block, size_t smem,
                  cudaStream_t stream) {
  gpu_mutex().lock();
  auto refuse = [&](cudaError_t code, const std::string& why) {
    fail(code, fmt("%s at %s:%d: %s", site.kernel, site.file, site.line, why.c_str()));
    gpu_mutex().unlock();
    return false;
  };
  if (sticky() != cudaSuccess) {
    gpu_mutex().unlock();
    return false;  // cudaGetLastError reports the sticky error
  }
  const int dev = stream_device(stream);
  if (dev < 0) return refuse(cudaErrorInvalidResourceHandle, "not a live stream");
  if (dev != current_device())
    return refuse(cudaErrorInvalidResourceHandle,
                  fmt("the stream belongs to cuda:%d, the current device is cuda:%d", dev, current_device()));
  if (cudaError_t e = launch_error(dev))
    return refuse(e, fmt("cuda:%d is set to fail every launch (LORA_CUDA_EMU_LAUNCH_ERROR)", dev));
  const unsigned long long nt = 1ull * block.x * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || nt > static_cast<unsigned>(kMaxThreadsPerBlock) ||
      block.x > 1024 || block.y > 1024 || block.z > 64)
    return refuse(cudaErrorInvalidConfiguration, "block " + dim_str(block) + " (at most 1024 threads, z at most 64)");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    return refuse(cudaErrorInvalidConfiguration, "grid " + dim_str(grid) + " (x in [1, 2^31 - 1], y and z in [1, 65535])");
  const size_t limit = max_dynamic_smem(fn);
  if (smem > limit)
    return refuse(cudaErrorInvalidValue,
                  fmt("%zu bytes of dynamic shared memory, more than the %zu allowed%s", smem, limit,
                      limit == kSharedDefault ? " without cudaFuncAttributeMaxDynamicSharedMemorySize" : ""));
  Exec& e = exec();
  e.site = site;
  e.signature = signature;
  e.grid = grid;
  e.block = block;
  e.device = dev;
  e.smem = smem;
  e.smem_limit = std::max(limit, kSharedDefault);
  e.failed = false;
  e.args.clear();
  e.nt = static_cast<int>(nt);
  e.nwarps = (e.nt + 31) / 32;
  static const int schedule = [] {
    const char* s = std::getenv("LORA_CUDA_EMU_SCHEDULE");
    std::string v = s ? s : "";
    if (v.empty() || v == "forward") return 0;
    if (v == "reverse") return 1;
    if (v == "warp-ahead") return 2;
    if (v == "reverse,warp-ahead") return 3;
    std::fprintf(stderr,
                 "lora-cuda CUDA emulator: LORA_CUDA_EMU_SCHEDULE=%s is none of forward, reverse, warp-ahead, "
                 "reverse,warp-ahead\n",
                 s);
    std::abort();
  }();
  e.reverse = schedule & 1;
  e.warp_ahead = schedule & 2;
  return true;
}

void check_arg(int index, const void* p) {
  Exec& e = exec();
  if (!p || e.failed) return;
  std::string why;
  if (check_range(p, 0, e.device, &why) == 0) {
    const Alloc* a = find_live(p);
    if (a->device >= 0) e.args.push_back(a);
    return;
  }
  const Alloc* a = find_live(p);
  if (a && a->device < 0) return;  // pinned host memory is visible to kernels
  record(cudaErrorIllegalAddress,
         fmt("%s: argument %d is not memory of cuda:%d: %s", launch_str(e).c_str(), index + 1, e.device, why.c_str()));
}

void run_grid(void (*body)(void*), void* ctx) {
  Exec& e = exec();
  if (e.failed) return;
  e.body = body;
  e.ctx = ctx;
  g_block_dim = e.block;
  g_grid_dim = e.grid;
  e.thread = pthread_self();
  install_handlers();
  for (int t = 0; t < e.nt; ++t) {
    Lane& L = e.lanes[t];
    L.idx.x = static_cast<unsigned>(t) % e.block.x;
    L.idx.y = (static_cast<unsigned>(t) / e.block.x) % e.block.y;
    L.idx.z = static_cast<unsigned>(t) / (e.block.x * e.block.y);
    L.state = kUnstarted;
    L.stack = -1;
  }
  if (sigsetjmp(e.jmp, 1) != 0) {
    e.in_lane = 0;
    record_signal(e);
    reclaim_stacks();
    return;
  }
  for (unsigned bz = 0; bz < e.grid.z && !e.failed; ++bz)
    for (unsigned by = 0; by < e.grid.y && !e.failed; ++by)
      for (unsigned bx = 0; bx < e.grid.x && !e.failed; ++bx) {
        g_block_idx = uint3{bx, by, bz};
        reset_shared();
        run_block();
        check_shared();
        if (e.failed) reclaim_stacks();
      }
}

void end_launch() {
  Exec& e = exec();
  // Writes just before the start of an argument's allocation stay on its
  // accessible pages; look for them now, while the kernel can still be named.
  for (const Alloc* a : e.args) {
    if (e.failed) break;
    std::string why;
    if (!head_intact(*a, &why))
      record(cudaErrorIllegalAddress, launch_str(e) + ": " + why);
  }
  e.args.clear();
  gpu_mutex().unlock();
}

}  // namespace emu
