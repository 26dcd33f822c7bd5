// The CUDA emulator's runtime: runs one kernel launch on the calling OS thread.
//
// Blocks run one after another in a seeded random order. A block's threads are fibers (stacks
// allocated once per OS thread and reused). The block scheduler works in rounds: it resumes every
// runnable thread in a random order, each running until its next __syncthreads, warp collective or
// exit; then it completes every warp collective whose lanes have all arrived (exchanging values),
// and when every non-exited thread waits at the same __syncthreads it releases the barrier. When
// nothing can move, the launch fails with a deadlock report naming where the threads wait.
//
// C ABI: nli_emu_launch (bottom of the file). No C++ exception leaves it.
#include "emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <exception>
#include <map>
#include <memory>
#include <new>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

// Fibers switch with a few instructions of assembly on x86-64, with ucontext elsewhere (or when
// NLI_EMU_USE_UCONTEXT is defined, to test that path).
#if defined(__x86_64__) && !defined(NLI_EMU_USE_UCONTEXT)
#define NLI_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

__thread nli_emu::ThreadRegs* nli_emu_thread = nullptr;
__thread nli_emu::BlockRegs* nli_emu_block = nullptr;

extern "C" const nli_emu::KernelEntry nli_emu_kernels_main[];
// The emulator's own test kernels (kernels/emu/tests/) are linked into test executables only
// (build.rs passes their object file to test links): weak, so elsewhere the table is null.
extern "C" const nli_emu::KernelEntry nli_emu_kernels_test[] __attribute__((weak));
extern "C" void nli_emu_fiber_entry();

#if defined(NLI_EMU_ASM_SWITCH)
// void nli_emu_ctx_switch(void** save_sp, void* load_sp): saves the callee-saved registers on the
// current stack, stores the stack pointer in *save_sp, switches to load_sp and restores from there.
extern "C" void nli_emu_ctx_switch(void** save_sp, void* load_sp) __attribute__((visibility("hidden")));
asm(R"(
  .text
  .p2align 4
  .globl nli_emu_ctx_switch
  .hidden nli_emu_ctx_switch
  .type nli_emu_ctx_switch,@function
nli_emu_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size nli_emu_ctx_switch, .-nli_emu_ctx_switch
)");
#endif

namespace nli_emu {
namespace {

constexpr std::size_t kStackBytes = 256 * 1024;
constexpr std::size_t kMaxBlocks = std::size_t(1) << 31;
constexpr std::size_t kShuffledBlocks = std::size_t(1) << 20;

enum class St : unsigned char { Ready, Barrier, Warp, Exited };

struct Thread {
  ThreadRegs regs{};
  unsigned linear = 0;
  St st = St::Ready;
  // The sync point it waits at.
  int op = 0;
  unsigned mask = 0;
  unsigned long long value = 0;
  int size = 0;
  int param = 0;
  int width = 32;
  const char* file = "";
  int line = 0;
  unsigned long long result = 0;
  // Its fiber.
  char* stack_lo = nullptr;
#if defined(NLI_EMU_ASM_SWITCH)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

const char* warp_op_name(int op) {
  switch (op) {
    case kSyncwarp: return "__syncwarp";
    case kShflIdx: return "__shfl_sync";
    case kShflUp: return "__shfl_up_sync";
    case kShflDown: return "__shfl_down_sync";
    case kShflXor: return "__shfl_xor_sync";
    case kBallot: return "__ballot_sync";
    case kAny: return "__any_sync";
    case kAll: return "__all_sync";
    case kReduceAdd: return "__reduce_add_sync";
    case kReduceMin: return "__reduce_min_sync";
    case kReduceMax: return "__reduce_max_sync";
    case kReduceAnd: return "__reduce_and_sync";
    case kReduceOr: return "__reduce_or_sync";
    case kMmaBf16: return "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";
    default: return "__reduce_xor_sync";
  }
}

const char* barrier_name(int op) {
  switch (op) {
    case kBarCount: return "__syncthreads_count";
    case kBarAnd: return "__syncthreads_and";
    case kBarOr: return "__syncthreads_or";
    default: return "__syncthreads";
  }
}

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

std::string where(const Thread& t) { return fmt("%s:%d", t.file, t.line); }

struct Rng {
  unsigned long long s;
  unsigned long long next() {
    unsigned long long z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  std::size_t below(std::size_t n) { return (std::size_t)(((unsigned __int128)next() * n) >> 64); }
  template <class T>
  void shuffle(std::vector<T>& v) {
    for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }
};

struct Launch {
  const KernelEntry* kernel = nullptr;
  void** args = nullptr;
  dim3 grid, block;
  unsigned shared_bytes = 0;
  unsigned long long seed = 0;
};

// Raised inside the runtime (on the scheduler's stack) to end a launch with an error code.
struct LaunchError {
  int code;
  std::string msg;
};

// Per OS thread: fiber stacks, the scheduler's context, dynamic shared memory.
class Runner {
 public:
  ~Runner() {
    for (auto& t : threads_)
      if (t->stack_lo) munmap(t->stack_lo - guard(), kStackBytes + guard());
    std::free(dyn_);
  }

  void run(const Launch& L);

  // Called by fibers.
  Thread* cur = nullptr;
  const Launch* launch = nullptr;
  std::string fiber_error;  // set by a fiber that failed (fail(), C++ exception)
  void yield(Thread* t) {
#if defined(NLI_EMU_ASM_SWITCH)
    nli_emu_ctx_switch(&t->sp, sched_sp_);
#else
    swapcontext(&t->uc, &sched_uc_);
#endif
  }
  unsigned live_mask(unsigned warp) const { return full_[warp] & ~exited_[warp]; }
  // Moves `t` to a wait state (or exit), keeping the per-warp masks and counts.
  void enter(Thread* t, St s) {
    const unsigned w = t->regs.warp, bit = 1u << t->regs.lane;
    if (s == St::Barrier) ++at_barrier_;
    if (s == St::Warp) {
      ++at_warp_;
      arrived_[w] |= bit;
    }
    if (s == St::Exited) {
      ++exited_n_;
      exited_[w] |= bit;
    }
    if ((s == St::Warp || s == St::Exited) && !touched_flag_[w]) {
      touched_flag_[w] = 1;
      touched_.push_back(w);
    }
    t->st = s;
  }
  long long tick = 0;

 private:
  static std::size_t guard() { return (std::size_t)sysconf(_SC_PAGESIZE); }
  void ensure_threads(unsigned n);
  void start_fiber(Thread* t);
  void resume(Thread* t) {
    cur = t;
    nli_emu_thread = &t->regs;
#if defined(NLI_EMU_ASM_SWITCH)
    nli_emu_ctx_switch(&sched_sp_, t->sp);
#else
    swapcontext(&sched_uc_, &t->uc);
#endif
    cur = nullptr;
  }
  void run_block(const uint3& bid, unsigned long long seed);
  void resolve_warps(std::vector<unsigned>& ready);
  void complete_warp_group(unsigned warp, unsigned group);
  void mma_bf16(Thread* const* lanes, unsigned group, const Thread& first);
  void release_barrier(std::vector<unsigned>& ready);
  std::string block_name() const {
    return fmt("block (%u,%u,%u)", regs_.bid.x, regs_.bid.y, regs_.bid.z);
  }
  std::string thread_name(const Thread& t) const {
    return fmt("thread (%u,%u,%u) of %s", t.regs.tid.x, t.regs.tid.y, t.regs.tid.z, block_name().c_str());
  }

  void make_ready(Thread* t) {
    if (t->st == St::Warp) {
      --at_warp_;
      arrived_[t->regs.warp] &= ~(1u << t->regs.lane);
    } else if (t->st == St::Barrier) {
      --at_barrier_;
    }
    t->st = St::Ready;
  }

  std::vector<std::unique_ptr<Thread>> threads_;
  unsigned n_ = 0;
  // Per warp: existing lanes, exited lanes, lanes waiting in a warp collective; the warps whose
  // masks changed since the last resolution.
  std::vector<unsigned> full_, exited_, arrived_, touched_;
  std::vector<unsigned char> touched_flag_;
  unsigned at_barrier_ = 0, at_warp_ = 0, exited_n_ = 0;
  BlockRegs regs_{};
  unsigned long long gen_ = 0;
  unsigned char* dyn_ = nullptr;
  std::size_t dyn_cap_ = 0;
#if defined(NLI_EMU_ASM_SWITCH)
  void* sched_sp_ = nullptr;
#else
  ucontext_t sched_uc_;
#endif
};

__thread Runner* tl_runner = nullptr;  // cached: function-local thread_local needs a guard check

Runner& runner() {
  if (!tl_runner) {
    static thread_local Runner r;  // destroyed (stacks unmapped) when the OS thread exits
    tl_runner = &r;
  }
  return *tl_runner;
}

void Runner::ensure_threads(unsigned n) {
  while (threads_.size() < n) {
    auto t = std::make_unique<Thread>();
    void* mem = mmap(nullptr, kStackBytes + guard(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) throw LaunchError{5, "out of memory for fiber stacks"};
    // A guard page below the stack turns an overflow into a fault instead of silent corruption.
    mprotect(mem, guard(), PROT_NONE);
    t->stack_lo = static_cast<char*>(mem) + guard();
    t->regs.lane = (unsigned)threads_.size() % 32;
    t->regs.warp = (unsigned)threads_.size() / 32;
    t->linear = (unsigned)threads_.size();
    threads_.push_back(std::move(t));
  }
}

void Runner::start_fiber(Thread* t) {
#if defined(NLI_EMU_ASM_SWITCH)
  // Top of stack: a zero "return address" for the entry function, the entry function as the
  // address `ret` jumps to, and six zeroed callee-saved registers that nli_emu_ctx_switch pops.
  auto top = reinterpret_cast<std::uintptr_t>(t->stack_lo + kStackBytes) & ~std::uintptr_t(15);
  auto* sp = reinterpret_cast<std::uintptr_t*>(top);
  *--sp = 0;
  *--sp = reinterpret_cast<std::uintptr_t>(&nli_emu_fiber_entry);
  for (int i = 0; i < 6; ++i) *--sp = 0;
  t->sp = sp;
#else
  getcontext(&t->uc);
  t->uc.uc_stack.ss_sp = t->stack_lo;
  t->uc.uc_stack.ss_size = kStackBytes;
  t->uc.uc_link = nullptr;
  makecontext(&t->uc, &nli_emu_fiber_entry, 0);
#endif
}

void Runner::run(const Launch& L) {
  launch = &L;
  const unsigned n = L.block.x * L.block.y * L.block.z;
  ensure_threads(n);
  n_ = n;
  if (dyn_cap_ < L.shared_bytes) {
    std::free(dyn_);
    dyn_ = nullptr;
    dyn_cap_ = 0;
    std::size_t cap = ((std::size_t)L.shared_bytes + 255) & ~std::size_t(255);
    dyn_ = static_cast<unsigned char*>(std::aligned_alloc(256, cap));
    if (!dyn_) throw LaunchError{5, "out of memory for dynamic shared memory"};
    dyn_cap_ = cap;
  }
  regs_.gdim = L.grid;
  regs_.bdim = L.block;
  regs_.dyn_shared = dyn_;
  regs_.dyn_bytes = L.shared_bytes;
  nli_emu_block = &regs_;

  const std::size_t nblocks = (std::size_t)L.grid.x * L.grid.y * L.grid.z;
  // Blocks in a random order: a full shuffle for ordinary grids, a random rotation and stride
  // (coprime to the count) for huge ones.
  Rng rng{L.seed};
  std::vector<unsigned> order;
  std::size_t offset = 0, stride = 1;
  if (nblocks <= kShuffledBlocks) {
    order.resize(nblocks);
    for (std::size_t i = 0; i < nblocks; ++i) order[i] = (unsigned)i;
    rng.shuffle(order);
  } else {
    offset = rng.below(nblocks);
    stride = 1 + rng.below(nblocks - 1);
    while (std::gcd(stride, nblocks) != 1) ++stride;
  }
  for (std::size_t i = 0; i < nblocks; ++i) {
    const unsigned b = order.empty() ? (unsigned)((offset + (unsigned __int128)i * stride) % nblocks) : order[i];
    uint3 bid{b % L.grid.x, (b / L.grid.x) % L.grid.y, b / (L.grid.x * L.grid.y)};
    run_block(bid, Rng{L.seed ^ (0xA0761D6478BD642Full * (b + 1ull))}.next());
  }
}

void Runner::run_block(const uint3& bid, unsigned long long seed) {
  regs_.bid = bid;
  regs_.gen = ++gen_;
  if (regs_.dyn_bytes) std::memset(dyn_, 0xFF, regs_.dyn_bytes);
  const dim3 bd = regs_.bdim;
  std::vector<unsigned> ready(n_);
  for (unsigned i = 0; i < n_; ++i) {
    Thread* t = threads_[i].get();
    t->regs.tid = uint3{i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
    t->st = St::Ready;
    start_fiber(t);
    ready[i] = i;
  }
  const unsigned nwarps = (n_ + 31) / 32;
  full_.assign(nwarps, 0xffffffffu);
  if (n_ % 32) full_[nwarps - 1] = (1u << (n_ % 32)) - 1;
  exited_.assign(nwarps, 0);
  arrived_.assign(nwarps, 0);
  touched_flag_.assign(nwarps, 0);
  touched_.clear();
  at_barrier_ = at_warp_ = exited_n_ = 0;
  Rng rng{seed};
  fiber_error.clear();
  for (;;) {
    rng.shuffle(ready);
    for (unsigned i : ready) {
      resume(threads_[i].get());
      if (!fiber_error.empty()) throw LaunchError{4, fiber_error};
    }
    ready.clear();
    resolve_warps(ready);
    if (!ready.empty()) continue;
    release_barrier(ready);
    if (ready.empty()) return;  // every thread exited
  }
}

void Runner::resolve_warps(std::vector<unsigned>& ready) {
  for (unsigned w : touched_) {
    touched_flag_[w] = 0;
    unsigned arrived = arrived_[w];
    if (!arrived) continue;
    const unsigned live = live_mask(w);
    unsigned pending = arrived;
    while (pending) {
      const unsigned lead = (unsigned)__builtin_ctz(pending);
      const Thread& t = *threads_[w * 32 + lead];
      if (!((t.mask >> lead) & 1u))
        throw LaunchError{4, fmt("%s: %s at %s with mask 0x%08x, which does not include the calling lane %u",
                                 thread_name(t).c_str(), warp_op_name(t.op), where(t).c_str(), t.mask, lead)};
      const unsigned group = t.mask & live;
      if ((group & arrived) != group) {  // some lane of the mask is elsewhere: wait for it
        pending &= ~(1u << lead);
        continue;
      }
      for (unsigned g = group; g; g &= g - 1) {
        const Thread& o = *threads_[w * 32 + __builtin_ctz(g)];
        if ((o.mask & live) != group || o.op != t.op || o.size != t.size)
          throw LaunchError{
              4, fmt("%s: mismatched warp collective: lane %u is in %s at %s (mask 0x%08x) while lane %u is in "
                     "%s at %s (mask 0x%08x)",
                     block_name().c_str(), lead, warp_op_name(t.op), where(t).c_str(), t.mask,
                     o.regs.lane, warp_op_name(o.op), where(o).c_str(), o.mask)};
      }
      complete_warp_group(w, group);
      for (unsigned g = group; g; g &= g - 1) {
        unsigned i = w * 32 + (unsigned)__builtin_ctz(g);
        make_ready(threads_[i].get());
        ready.push_back(i);
      }
      pending &= ~group;
      arrived &= ~group;
    }
  }
  touched_.clear();
}

void Runner::complete_warp_group(unsigned w, unsigned group) {
  Thread* lanes[32] = {};
  for (unsigned g = group; g; g &= g - 1) {
    unsigned l = (unsigned)__builtin_ctz(g);
    lanes[l] = threads_[w * 32 + l].get();
  }
  const Thread& first = *lanes[__builtin_ctz(group)];
  const int op = first.op;
  if (op == kSyncwarp) return;
  const unsigned long long poison = first.size == 8 ? ~0ull : 0xFFFFFFFFull;
  if (op == kMmaBf16) {
    mma_bf16(lanes, group, first);
    return;
  }
  if (op >= kShflIdx && op <= kShflXor) {
    for (unsigned g = group; g; g &= g - 1) {
      Thread& t = *lanes[__builtin_ctz(g)];
      const int lane = (int)t.regs.lane, width = t.width;
      if (width < 1 || width > 32 || (width & (width - 1)))
        throw LaunchError{4, fmt("%s: %s at %s with width %d (must be a power of two up to 32)",
                                 thread_name(t).c_str(), warp_op_name(op), where(t).c_str(), width)};
      const int lo = lane & ~(width - 1), hi = lo + width - 1;
      int src = lane;
      bool in_range = true;
      switch (op) {
        case kShflIdx: src = lo + (t.param & (width - 1)); break;
        case kShflUp: src = lane - t.param; in_range = src >= lo; break;
        case kShflDown: src = lane + t.param; in_range = src <= hi; break;
        default: src = lane ^ t.param; in_range = src >= lo && src <= hi; break;
      }
      if (!in_range || src < 0 || src > 31) t.result = t.value;
      else if ((group >> src) & 1u) t.result = lanes[src]->value;
      else t.result = poison;  // an inactive source lane: undefined on the GPU
    }
    return;
  }
  unsigned long long acc = 0;
  unsigned ballot = 0;
  const bool is_signed = first.param != 0;
  bool init = false;
  for (unsigned g = group; g; g &= g - 1) {
    const Thread& t = *lanes[__builtin_ctz(g)];
    const unsigned v = (unsigned)t.value;
    if (v) ballot |= 1u << t.regs.lane;
    if (!init) {
      acc = v;
      init = true;
      continue;
    }
    const unsigned a = (unsigned)acc;
    switch (op) {
      case kReduceAdd: acc = a + v; break;
      case kReduceMin: acc = is_signed ? (unsigned)std::min((int)a, (int)v) : std::min(a, v); break;
      case kReduceMax: acc = is_signed ? (unsigned)std::max((int)a, (int)v) : std::max(a, v); break;
      case kReduceAnd: acc = a & v; break;
      case kReduceOr: acc = a | v; break;
      case kReduceXor: acc = a ^ v; break;
      default: break;
    }
  }
  unsigned long long result = acc;
  if (op == kBallot) result = ballot;
  if (op == kAny) result = ballot != 0;
  if (op == kAll) result = ballot == group;
  for (unsigned g = group; g; g &= g - 1) lanes[__builtin_ctz(g)]->result = result;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 over the 32 lanes of a warp, with the
// per-lane fragment layout of the PTX ISA (groupID g = lane >> 2, t = lane % 4):
//   A (16x16, row): reg r of lane holds A[g + 8*(r & 1)][2t + 8*(r >> 1) + {0,1}] (low half first);
//   B (16x8, col):  reg r holds B[2t + 8*r + {0,1}][g];
//   C, D (16x8):    element e holds [g + 8*(e >> 1)][2t + (e & 1)].
// Each lane's value is a pointer to its MmaOperands (on its fiber stack, alive while it waits).
// D = A·B + C: products of bf16 are exact, the 16 products and C are summed in double, k
// ascending, and rounded to f32 once (the GPU's internal accumulation may differ in the last bit).
void Runner::mma_bf16(Thread* const* lanes, unsigned group, const Thread& first) {
  if (group != 0xFFFFFFFFu)
    throw LaunchError{4, fmt("%s: %s at %s with lanes 0x%08x: the instruction needs all 32 lanes of the warp "
                             "(.aligned: every lane executes the same mma)",
                             block_name().c_str(), warp_op_name(kMmaBf16), where(first).c_str(), group)};
  float a[16][16], b[16][8], c[16][8];
  auto lo = [](unsigned v) { return bf16_to_f32((unsigned short)(v & 0xFFFFu)); };
  auto hi = [](unsigned v) { return bf16_to_f32((unsigned short)(v >> 16)); };
  for (unsigned lane = 0; lane < 32; ++lane) {
    const auto* o = reinterpret_cast<const MmaOperands*>(lanes[lane]->value);
    const unsigned g = lane >> 2, t = lane & 3;
    for (unsigned r = 0; r < 4; ++r) {
      const unsigned row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
      a[row][col] = lo(o->a[r]);
      a[row][col + 1] = hi(o->a[r]);
    }
    for (unsigned r = 0; r < 2; ++r) {
      b[2 * t + 8 * r][g] = lo(o->b[r]);
      b[2 * t + 8 * r + 1][g] = hi(o->b[r]);
    }
    for (unsigned e = 0; e < 4; ++e) c[g + 8 * (e >> 1)][2 * t + (e & 1)] = o->c[e];
  }
  for (unsigned lane = 0; lane < 32; ++lane) {
    auto* o = reinterpret_cast<MmaOperands*>(lanes[lane]->value);
    const unsigned g = lane >> 2, t = lane & 3;
    for (unsigned e = 0; e < 4; ++e) {
      const unsigned row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
      double acc = c[row][col];
      for (unsigned k = 0; k < 16; ++k) acc += (double)a[row][k] * (double)b[k][col];
      o->d[e] = (float)acc;
    }
    lanes[lane]->result = 0;
  }
}

void Runner::release_barrier(std::vector<unsigned>& ready) {
  if (exited_n_ == n_) return;
  if (at_warp_ == 0) {
    const Thread* at = nullptr;
    for (unsigned i = 0; i < n_ && !at; ++i)
      if (threads_[i]->st == St::Barrier) at = threads_[i].get();
    // Everyone waits at a barrier: it must be the same one.
    int count = 0;
    bool all = true;
    for (unsigned i = 0; i < n_; ++i) {
      const Thread& t = *threads_[i];
      if (t.st == St::Exited) continue;
      if (t.line != at->line || t.op != at->op || (t.file != at->file && std::strcmp(t.file, at->file) != 0))
        throw LaunchError{4, fmt("%s: divergent barriers: thread (%u,%u,%u) waits at %s (%s) while thread "
                                 "(%u,%u,%u) waits at %s (%s); __syncthreads must be reached by the whole "
                                 "block at the same place",
                                 block_name().c_str(), at->regs.tid.x, at->regs.tid.y, at->regs.tid.z,
                                 barrier_name(at->op), where(*at).c_str(), t.regs.tid.x, t.regs.tid.y,
                                 t.regs.tid.z, barrier_name(t.op), where(t).c_str())};
      count += t.value != 0;
      all = all && t.value != 0;
    }
    const unsigned long long result = at->op == kBarCount ? (unsigned long long)count
                                      : at->op == kBarAnd ? (unsigned long long)all
                                                          : (unsigned long long)(count > 0);
    for (unsigned i = 0; i < n_; ++i) {
      Thread& t = *threads_[i];
      if (t.st == St::Exited) continue;
      t.result = result;
      make_ready(&t);
      ready.push_back(i);
    }
    return;
  }
  // Nothing can move: describe where the threads wait.
  std::map<std::tuple<int, int, std::string, int>, std::pair<unsigned, const Thread*>> sites;
  unsigned exited = 0;
  for (unsigned i = 0; i < n_; ++i) {
    const Thread& t = *threads_[i];
    if (t.st == St::Exited) {
      ++exited;
      continue;
    }
    auto& e = sites[std::make_tuple((int)t.st, t.op, std::string(t.file), t.line)];
    if (e.first++ == 0) e.second = &t;
  }
  std::string msg = fmt("deadlock in %s of %u threads:", block_name().c_str(), n_);
  for (const auto& kv : sites) {
    const Thread& t = *kv.second.second;
    const bool warp = t.st == St::Warp;
    msg += fmt(" %u thread(s) (first (%u,%u,%u)) wait in %s at %s%s;", kv.second.first, t.regs.tid.x,
               t.regs.tid.y, t.regs.tid.z, warp ? warp_op_name(t.op) : barrier_name(t.op), where(t).c_str(),
               warp ? fmt(" (mask 0x%08x)", t.mask).c_str() : "");
  }
  if (exited) msg += fmt(" %u thread(s) exited;", exited);
  msg += " a warp collective waits for lanes of its mask that wait elsewhere, or a barrier for threads"
         " inside a warp collective";
  throw LaunchError{3, msg};
}

// Runs inside a fiber: parks the current thread at a sync point until the scheduler completes it.
unsigned long long park(St st, int op, unsigned mask, unsigned long long value, int size, int param, int width,
                        const char* file, int line) {
  Runner& r = runner();
  Thread* t = r.cur;
  if (!t) return value;  // not inside a launch: nothing to synchronise with
  r.enter(t, st);
  t->op = op;
  t->mask = mask;
  t->value = value;
  t->size = size;
  t->param = param;
  t->width = width;
  t->file = file ? file : "?";
  t->line = line;
  r.yield(t);
  return t->result;
}

}  // namespace

}  // namespace nli_emu

extern "C" void nli_emu_fiber_entry() {
  using namespace nli_emu;
  Runner& r = runner();
  Thread* t = r.cur;
  try {
    r.launch->kernel->fn(r.launch->args);
  } catch (const std::exception& e) {
    r.fiber_error = fmt("a C++ exception escaped the kernel: %s", e.what());
  } catch (...) {
    r.fiber_error = "a C++ exception escaped the kernel";
  }
  r.enter(t, St::Exited);
  for (;;) r.yield(t);  // never resumed after exit
}

namespace nli_emu {

int barrier(int op, int pred, const char* file, int line) {
  return (int)park(St::Barrier, op, 0, pred != 0, 4, 0, 32, file, line);
}

unsigned long long warp_collective(int op, unsigned mask, unsigned long long value, int size, int param, int width,
                                   const char* file, int line) {
  return park(St::Warp, op, mask, value, size, param, width, file, line);
}

unsigned activemask() {
  Runner& r = runner();
  return r.cur ? r.live_mask(r.cur->regs.warp) : 0u;
}

void fail(const char* what, const char* file, int line) {
  Runner& r = runner();
  Thread* t = r.cur;
  if (!t) throw LaunchError{4, fmt("%s at %s:%d outside a kernel launch", what, file, line)};
  if (r.fiber_error.empty())
    r.fiber_error = fmt("thread (%u,%u,%u) of block (%u,%u,%u): %s at %s:%d", t->regs.tid.x, t->regs.tid.y,
                        t->regs.tid.z, nli_emu_block->bid.x, nli_emu_block->bid.y, nli_emu_block->bid.z, what,
                        file, line);
  r.enter(t, St::Exited);
  for (;;) r.yield(t);
}

long long clock_tick() { return ++runner().tick; }

}  // namespace nli_emu

namespace {
const nli_emu::KernelEntry* find_kernel(const char* name) {
  for (const nli_emu::KernelEntry* table : {nli_emu_kernels_main, nli_emu_kernels_test})
    for (const nli_emu::KernelEntry* k = table; k && k->name; ++k)
      if (std::strcmp(k->name, name) == 0) return k;
  return nullptr;
}

int report(char* err, std::size_t errlen, int code, const std::string& msg) {
  if (err && errlen) std::snprintf(err, errlen, "%s", msg.c_str());
  return code;
}
}  // namespace

// Runs kernel `name` on grid x block threads with `shared_bytes` of dynamic shared memory.
// `args[i]` points to argument i's value (as cuLaunchKernel takes them). `seed` picks the block
// order and every block's thread schedule. Returns 0, or an error code with a message in `err`:
// 1 unknown kernel, 2 bad launch (shape, argument count), 3 deadlock, 4 kernel fault (divergent
// barrier, bad warp collective, __trap, assert, C++ exception), 5 out of memory / internal error.
extern "C" int nli_emu_launch(const char* name, const unsigned grid[3], const unsigned block[3],
                              unsigned shared_bytes, void** args, int nargs, unsigned long long seed, char* err,
                              std::size_t errlen) {
  using nli_emu::fmt;
  try {
    if (!name || !grid || !block) return report(err, errlen, 2, "null launch parameter");
    const nli_emu::KernelEntry* k = find_kernel(name);
    if (!k) return report(err, errlen, 1, fmt("no kernel named `%s` in the emulator", name));
    if (nargs != k->nargs || (nargs > 0 && !args))
      return report(err, errlen, 2, fmt("kernel `%s` takes %d arguments, launch passed %d", name, k->nargs, nargs));
    const unsigned long long threads = (unsigned long long)block[0] * block[1] * block[2];
    const unsigned long long blocks = (unsigned long long)grid[0] * grid[1] * grid[2];
    if (threads == 0 || threads > 1024 || block[2] > 64 || blocks == 0 || grid[1] > 65535 || grid[2] > 65535 ||
        grid[0] > 0x7fffffffu)
      return report(err, errlen, 2,
                    fmt("kernel `%s`: bad launch shape grid (%u,%u,%u) block (%u,%u,%u)", name, grid[0], grid[1],
                        grid[2], block[0], block[1], block[2]));
    if (blocks > nli_emu::kMaxBlocks)
      return report(err, errlen, 2,
                    fmt("kernel `%s`: %llu blocks is more than the emulator runs (%zu)", name, blocks,
                        nli_emu::kMaxBlocks));
    nli_emu::Launch L;
    L.kernel = k;
    L.args = args;
    L.grid = dim3(grid[0], grid[1], grid[2]);
    L.block = dim3(block[0], block[1], block[2]);
    L.shared_bytes = shared_bytes;
    L.seed = seed;
    nli_emu::runner().run(L);
    return 0;
  } catch (const nli_emu::LaunchError& e) {
    return report(err, errlen, e.code, e.msg);
  } catch (const std::bad_alloc&) {
    return report(err, errlen, 5, "out of memory");
  } catch (const std::exception& e) {
    return report(err, errlen, 5, std::string("internal error: ") + e.what());
  } catch (...) {
    return report(err, errlen, 5, "internal error");
  }
}
