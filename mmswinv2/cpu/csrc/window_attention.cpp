// The attention core of SwinV2's scaled cosine window attention, for CPU inference.
//
// For each window w and head h of a (windows, N, 3 * C) qkv projection:
//
//   q, k, v  = the head's columns of the projection, in the compute type A
//   q       *= scale[h] / max(|q|, 1e-12);   k /= max(|k|, 1e-12)        (per token)
//   logits   = q . k^T + bias[h] (+ mask pattern of the window's kind)
//   weights  = softmax(logits), rounded to v's type
//   out[w, :, h * d : (h + 1) * d] = weights @ v   (sums in A, rounded to the output type)
//
// which is what mmswinv2/models/attention.py computes op by op (WindowAttentionV2.attend),
// in the same order: A is fp32 for fp32 and bf16 projections (the model's logits are fp32
// under autocast too) and double for float64 ones. One (window, head) at a time, its q, k,
// logits and v stay in the core's caches instead of passing through memory as whole tensors,
// and the output is written straight into the (windows, N, C) layout the output projection
// reads. Products of bf16 numbers are exact in fp32, so `weights @ v` in fp32 FMAs is what a
// bf16 kernel computes, up to the order of the sums. The fp32 exp is at::vec's exp_u20
// (within 20 ulps), which gives 0 below fp32's normal range: no weight is subnormal.
//
// Built ahead of time by `python -m mmswinv2.cpu.build` with the vector instructions PyTorch
// uses on the CPU at hand (at::vec); parallel over (window, head) pairs in the calling
// thread's intra-op threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

// Norms are clamped here, as F.normalize clamps them.
constexpr double kNormEps = 1e-12;

int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

template <typename A>
A sum_of(const at::vec::Vectorized<A>& x) {
  using Vec = at::vec::Vectorized<A>;
  return at::vec::vec_reduce_all<A>([](Vec& a, Vec& b) { return a + b; }, x);
}

template <typename A>
A max_of(const at::vec::Vectorized<A>& x) {
  using Vec = at::vec::Vectorized<A>;
  return at::vec::vec_reduce_all<A>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, x);
}

// The first `count` values at `p` in the compute type A.
template <typename A, typename T>
at::vec::Vectorized<A> load(const T* p, int64_t count) {
  if constexpr (std::is_same_v<T, A>) {
    return at::vec::Vectorized<A>::loadu(p, count);
  } else {
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p, count)));
  }
}

// The first `count` values of `x` rounded to T, stored at `p`.
template <typename T, typename A>
void store(const at::vec::Vectorized<A>& x, T* p, int64_t count) {
  if constexpr (std::is_same_v<T, A>) {
    x.store(p, count);
  } else {
    at::vec::convert_from_float<T>(x, x).store(p, count);
  }
}

// `x` rounded to T (round to nearest even) and back to A.
template <typename T, typename A>
at::vec::Vectorized<A> rounded_to(const at::vec::Vectorized<A>& x) {
  if constexpr (std::is_same_v<T, A>) {
    return x;
  } else {
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::convert_from_float<T>(x, x)));
  }
}

// c[R x V lanes] = a[R x k] @ b[k x V lanes] (row strides lda, ldb, ldc) with the R * V
// accumulators in vector registers: per step of k, V loads of b and R broadcasts of a feed
// R * V fused multiply-adds.
template <typename A, int R, int V>
void gemm_tile(const A* a, int64_t lda, const A* b, int64_t ldb, A* c, int64_t ldc, int64_t k) {
  using Vec = at::vec::Vectorized<A>;
  constexpr int64_t L = Vec::size();
  Vec acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = Vec(A(0));
  for (int64_t t = 0; t < k; ++t) {
    Vec bt[V];
    for (int v = 0; v < V; ++v) bt[v] = Vec::loadu(b + t * ldb + v * L);
    for (int r = 0; r < R; ++r) {
      const Vec art(a[r * lda + t]);
      for (int v = 0; v < V; ++v) acc[r][v] = at::vec::fmadd(art, bt[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v].store(c + r * ldc + v * L);
}

// R rows of c = a @ b over `cols` columns (a multiple of the lanes), in tiles of <= 4 vectors.
template <typename A, int R>
void gemm_rows(const A* a, int64_t lda, const A* b, int64_t ldb, A* c, int64_t ldc, int64_t k,
               int64_t cols) {
  constexpr int64_t L = at::vec::Vectorized<A>::size();
  const int64_t vectors = cols / L;
  int64_t v = 0;
  for (; v + 4 <= vectors; v += 4) gemm_tile<A, R, 4>(a, lda, b + v * L, ldb, c + v * L, ldc, k);
  const int64_t o = v * L;
  switch (vectors - v) {
    case 3: gemm_tile<A, R, 3>(a, lda, b + o, ldb, c + o, ldc, k); break;
    case 2: gemm_tile<A, R, 2>(a, lda, b + o, ldb, c + o, ldc, k); break;
    case 1: gemm_tile<A, R, 1>(a, lda, b + o, ldb, c + o, ldc, k); break;
    default: break;
  }
}

// c[rows x cols] = a[rows x k] @ b[k x cols], `cols` a multiple of the lanes; R rows at a time.
template <typename A, int R>
void gemm(const A* a, int64_t lda, const A* b, int64_t ldb, A* c, int64_t ldc, int64_t rows,
          int64_t k, int64_t cols) {
  int64_t r = 0;
  for (; r + R <= rows; r += R)
    gemm_rows<A, R>(a + r * lda, lda, b, ldb, c + r * ldc, ldc, k, cols);
  for (; r < rows; ++r) gemm_rows<A, 1>(a + r * lda, lda, b, ldb, c + r * ldc, ldc, k, cols);
}

// body(begin, end) over ranges covering [0, tasks), in the calling thread's intra-op threads.
// With OpenMP directly rather than through at::parallel_for, whose lazy per-thread
// initialisation (an inline function's thread_local, of which this library has its own copy)
// would reset a thread's OpenMP thread count to PyTorch's process-wide default.
template <typename F>
void parallel(int64_t tasks, const F& body) {
#ifdef _OPENMP
#pragma omp parallel if (tasks > 1)
  {
    const int64_t threads = omp_get_num_threads(), chunk = (tasks + threads - 1) / threads;
    const int64_t begin = omp_get_thread_num() * chunk, end = std::min(tasks, begin + chunk);
    if (begin < end) body(begin, end);
  }
#else
  at::parallel_for(0, tasks, 1, body);
#endif
}

// The per-thread working set of one (window, head): N tokens, head dim d, rows padded to
// whole vectors (Np, dp) with zeros that the products never read into a result.
template <typename A>
struct Scratch {
  int64_t N, d, Np, dp;
  std::vector<A> q;       // N x d: normalised q times the scale
  std::vector<A> k;       // N x d: normalised k
  std::vector<A> kt;      // d x Np: k transposed
  std::vector<A> logits;  // N x Np: logits, then weights
  std::vector<A> v;       // N x dp
  std::vector<A> out;     // N x dp

  Scratch(int64_t N, int64_t d, int64_t lanes)
      : N(N), d(d), Np(round_up(N, lanes)), dp(round_up(d, lanes)), q(N * d), k(N * d),
        kt(d * Np, A(0)), logits(N * Np), v(N * dp, A(0)), out(N * dp) {}
};

// q (scaled), k and v of one head from one window's rows `src` (N rows of 3 * C) into `s`.
template <typename T, typename A>
void load_head(const T* src, int64_t C, A scale, Scratch<A>& s) {
  using Vec = at::vec::Vectorized<A>;
  constexpr int64_t L = Vec::size();
  const int64_t N = s.N, d = s.d;
  for (int64_t n = 0; n < N; ++n) {
    const T* row = src + n * 3 * C;
    A* q = s.q.data() + n * d;
    A* k = s.k.data() + n * d;
    Vec qq(A(0)), kk(A(0));
    for (int64_t j = 0; j < d; j += L) {
      const int64_t count = std::min(L, d - j);
      const Vec qj = load<A>(row + j, count), kj = load<A>(row + C + j, count);
      qj.store(q + j, count);
      kj.store(k + j, count);
      load<A>(row + 2 * C + j, count).store(s.v.data() + n * s.dp + j, count);
      qq = at::vec::fmadd(qj, qj, qq);
      kk = at::vec::fmadd(kj, kj, kk);
    }
    // as the model: q * (scale / |q|); k * (1 / |k|)
    const Vec q_factor(scale / std::max(std::sqrt(sum_of(qq)), A(kNormEps)));
    const Vec k_factor(A(1) / std::max(std::sqrt(sum_of(kk)), A(kNormEps)));
    for (int64_t j = 0; j < d; j += L) {
      const int64_t count = std::min(L, d - j);
      (Vec::loadu(q + j, count) * q_factor).store(q + j, count);
      (Vec::loadu(k + j, count) * k_factor).store(k + j, count);
    }
  }
  at::vec::transpose_mxn<A>(s.k.data(), d, s.kt.data(), s.Np, N, d);
}

// Asks for the cache lines of one head's q, k and v in one window's rows `src` ahead of their
// use: they are strided, so the hardware's prefetchers do not fetch them in time.
template <typename T>
void prefetch_head(const T* src, int64_t N, int64_t C, int64_t d) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t part = 0; part < 3; ++part)
      for (int64_t j = 0; j < d; j += kLine) __builtin_prefetch(src + n * 3 * C + part * C + j);
}

// Rows r0 .. r0 + R - 1 of the logits: + bias (+ mask), softmax, rounded to T. R rows side by
// side, so that their reductions and exps overlap.
template <typename T, typename A, int R>
void softmax_block(int64_t r0, const A* bias, const A* mask, Scratch<A>& s) {
  using Vec = at::vec::Vectorized<A>;
  constexpr int64_t L = Vec::size();
  const int64_t N = s.N;
  A* row[R];
  Vec largest[R], total[R];
  for (int r = 0; r < R; ++r) {
    row[r] = s.logits.data() + (r0 + r) * s.Np;
    largest[r] = Vec(-INFINITY);
    total[r] = Vec(A(0));
  }
  for (int64_t j = 0; j < N; j += L) {
    const int64_t count = std::min(L, N - j);
    for (int r = 0; r < R; ++r) {
      Vec x = Vec::loadu(row[r] + j, count) + Vec::loadu(bias + (r0 + r) * N + j, count);
      if (mask) x = x + Vec::loadu(mask + (r0 + r) * N + j, count);
      x.store(row[r] + j, count);
      largest[r] = at::vec::maximum(largest[r], Vec::set(largest[r], x, count));
    }
  }
  Vec shift[R];
  for (int r = 0; r < R; ++r) shift[r] = Vec(max_of(largest[r]));
  for (int64_t j = 0; j < N; j += L) {
    const int64_t count = std::min(L, N - j);
    for (int r = 0; r < R; ++r) {
      const Vec e = Vec::set(Vec(A(0)), (Vec::loadu(row[r] + j, count) - shift[r]).exp_u20(),
                             count);
      e.store(row[r] + j);
      total[r] = total[r] + e;
    }
  }
  Vec inverse[R];
  for (int r = 0; r < R; ++r) inverse[r] = Vec(A(1) / sum_of(total[r]));
  for (int64_t j = 0; j < N; j += L)
    for (int r = 0; r < R; ++r)
      rounded_to<T>(Vec::loadu(row[r] + j) * inverse[r]).store(row[r] + j);
}

template <typename T, typename A>
void softmax_rows(const A* bias, const A* mask, Scratch<A>& s) {
  int64_t r = 0;
  for (; r + 4 <= s.N; r += 4) softmax_block<T, A, 4>(r, bias, mask, s);
  for (; r < s.N; ++r) softmax_block<T, A, 1>(r, bias, mask, s);
}

template <typename T, typename A>
void attend(const at::Tensor& qkv, const at::Tensor& scale, const at::Tensor& bias,
            const at::Tensor& patterns, const at::Tensor& kinds, int64_t first_window,
            at::Tensor& out) {
  using Vec = at::vec::Vectorized<A>;
  const int64_t windows = qkv.size(0), N = qkv.size(1), C = qkv.size(2) / 3;
  const int64_t heads = bias.size(0), d = C / heads;
  const int64_t image_windows = kinds.numel();  // windows per image; 0 without a mask
  const T* src = qkv.const_data_ptr<T>();
  T* dst = out.mutable_data_ptr<T>();
  const A* scales = scale.const_data_ptr<A>();
  const A* biases = bias.const_data_ptr<A>();
  const A* masks = image_windows ? patterns.const_data_ptr<A>() : nullptr;
  const int64_t* kind_of = image_windows ? kinds.const_data_ptr<int64_t>() : nullptr;

  parallel(windows * heads, [&](int64_t begin, int64_t end) {
    Scratch<A> s(N, d, Vec::size());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t w = task / heads, h = task % heads;
      if (task + 1 < end)
        prefetch_head(src + (task + 1) / heads * N * 3 * C + (task + 1) % heads * d, N, C, d);
      load_head<T, A>(src + w * N * 3 * C + h * d, C, scales[h], s);
      gemm<A, 4>(s.q.data(), d, s.kt.data(), s.Np, s.logits.data(), s.Np, N, d, s.Np);
      const int64_t kind = kind_of ? kind_of[(first_window + w) % image_windows] : 0;
      softmax_rows<T, A>(biases + h * N * N, kind ? masks + kind * N * N : nullptr, s);
      gemm<A, 8>(s.logits.data(), s.Np, s.v.data(), s.dp, s.out.data(), s.dp, N, N, s.dp);
      T* o = dst + w * N * C + h * d;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < d; j += Vec::size())
          store<T>(Vec::loadu(s.out.data() + n * s.dp + j), o + n * C + j,
                   std::min<int64_t>(Vec::size(), d - j));
    }
  });
}

// qkv: (windows, N, 3 * C) float32, bfloat16 or float64; scale: (heads,), bias: (heads, N, N)
// and patterns: (kinds, N, N) in the compute type (float64 for a float64 qkv, else float32);
// kinds: (windows per image,) int64 index into patterns (0: no mask; both empty without a
// shift mask), window i of qkv being window (first_window + i) % kinds.numel() of its image.
// Returns (windows, N, C) of qkv's type.
at::Tensor window_attention(const at::Tensor& qkv, const at::Tensor& scale,
                            const at::Tensor& bias, const at::Tensor& patterns,
                            const at::Tensor& kinds, int64_t first_window) {
  TORCH_CHECK(qkv.dim() == 3 && qkv.size(2) % 3 == 0 && qkv.is_contiguous(),
              "window_attention: qkv must be a contiguous (windows, N, 3 * C) tensor, got ",
              qkv.sizes());
  const auto type = qkv.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kBFloat16 || type == at::kDouble,
              "window_attention: qkv must be float32, bfloat16 or float64, got ", type);
  const auto compute = type == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t N = qkv.size(1), C = qkv.size(2) / 3;
  TORCH_CHECK(bias.dim() == 3 && bias.size(1) == N && bias.size(2) == N &&
                  C % bias.size(0) == 0 && bias.scalar_type() == compute && bias.is_contiguous(),
              "window_attention: bias must be a contiguous ", compute,
              " (heads, N, N) tensor with N = ", N, " and heads dividing ", C, ", got ",
              bias.sizes(), " ", bias.scalar_type());
  TORCH_CHECK(scale.numel() == bias.size(0) && scale.scalar_type() == compute &&
                  scale.is_contiguous(),
              "window_attention: scale must hold one ", compute, " per head");
  if (kinds.numel()) {
    TORCH_CHECK(kinds.scalar_type() == at::kLong && kinds.is_contiguous() &&
                    patterns.dim() == 3 && patterns.size(1) == N && patterns.size(2) == N &&
                    patterns.scalar_type() == compute && patterns.is_contiguous(),
                "window_attention: patterns must be contiguous ", compute,
                " (kinds, N, N) and kinds contiguous int64");
    const int64_t* kind = kinds.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < kinds.numel(); ++i)
      TORCH_CHECK(kind[i] >= 0 && kind[i] < patterns.size(0),
                  "window_attention: kinds must index patterns, got ", kind[i]);
    TORCH_CHECK(first_window >= 0, "window_attention: first_window must be >= 0");
  }
  auto out = at::empty({qkv.size(0), N, C}, qkv.options());
  if (type == at::kFloat)
    attend<float, float>(qkv, scale, bias, patterns, kinds, first_window, out);
  else if (type == at::kBFloat16)
    attend<at::BFloat16, float>(qkv, scale, bias, patterns, kinds, first_window, out);
  else
    attend<double, double>(qkv, scale, bias, patterns, kinds, first_window, out);
  return out;
}

}  // namespace

TORCH_LIBRARY(mmswinv2, m) {
  m.def(
      "window_attention(Tensor qkv, Tensor scale, Tensor bias, Tensor patterns, Tensor kinds, "
      "int first_window) -> Tensor");
}

TORCH_LIBRARY_IMPL(mmswinv2, CPU, m) { m.impl("window_attention", &window_attention); }
