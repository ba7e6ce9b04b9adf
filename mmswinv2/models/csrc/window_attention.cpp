// The attention core of SwinV2's scaled cosine window attention, for CPU inference.
//
// For each window w and head h of a (windows, N, 3 * C) qkv projection (fp32 or bf16):
//
//   q, k, v  = the head's columns of the projection, in fp32
//   q       *= scale[h] / max(|q|, 1e-12);   k /= max(|k|, 1e-12)        (per token)
//   logits   = q . k^T + bias[h] (+ mask pattern of the window's kind)    (fp32)
//   logits   = max(logits, rowmax + floor)                                (if floored)
//   weights  = softmax(logits), rounded to v's type
//   out[w, :, h * d : (h + 1) * d] = weights @ v   (fp32 sums, rounded to the output type)
//
// which is what mmswinv2/models/attention.py computes op by op, in the same order and types
// (see WindowAttentionV2._explicit), here for one (window, head) at a time: its q, k, logits
// and v stay in the core's caches between the steps instead of passing through memory as
// whole-piece tensors, and the output is written straight into the (windows, N, C) layout
// the output projection reads. Products of bf16 numbers are exact in fp32, so `weights @ v`
// in fp32 FMAs is what a bf16 kernel computes, up to the order of the sums. The exp is
// at::vec's exp_u20 (within 20 ulps), which gives 0 below fp32's normal range (e^-87.3):
// weights smaller than that come out 0, never subnormal.
//
// Built at first use by mmswinv2/models/cpu_kernel.py with the vector instructions that
// PyTorch itself uses on the CPU at hand (at::vec); parallel over (window, head) pairs in
// PyTorch's intra-op threads of the calling thread.
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

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();

// Norms are clamped here, as F.normalize clamps them (mmswinv2: NORMALIZE_EPS).
constexpr float kNormEps = 1e-12f;

int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

float sum_of(const Vec& x) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, x);
}

float max_of(const Vec& x) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); },
                                        x);
}

// The first `count` (<= kLanes) values at `p` as fp32.
template <typename T>
Vec load_float(const T* p, int64_t count) {
  if constexpr (std::is_same_v<T, float>) {
    return Vec::loadu(p, count);
  } else {
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p, count)));
  }
}

// The first `count` values of `x` rounded to T, stored at `p`.
template <typename T>
void store_as(const Vec& x, T* p, int64_t count) {
  if constexpr (std::is_same_v<T, float>) {
    x.store(p, count);
  } else {
    at::vec::convert_from_float<T>(x, x).store(p, count);
  }
}

// `x` rounded to T (round to nearest even) and back to fp32.
template <typename T>
Vec rounded_to(const Vec& x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::convert_from_float<T>(x, x)));
  }
}

// c[R x V * kLanes] = a[R x k] @ b[k x V * kLanes] (row strides lda, ldb, ldc), in fp32 with
// the R * V accumulators in vector registers: per step of k, V loads of b and R broadcasts of
// a feed R * V fused multiply-adds.
template <int R, int V>
void gemm_tile(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
               int64_t k) {
  Vec acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = Vec(0.f);
  for (int64_t t = 0; t < k; ++t) {
    Vec bt[V];
    for (int v = 0; v < V; ++v) bt[v] = Vec::loadu(b + t * ldb + v * kLanes);
    for (int r = 0; r < R; ++r) {
      const Vec art(a[r * lda + t]);
      for (int v = 0; v < V; ++v) acc[r][v] = at::vec::fmadd(art, bt[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v].store(c + r * ldc + v * kLanes);
}

// R rows of c = a @ b over `cols` columns (a multiple of kLanes), in tiles of up to 4 vectors.
template <int R>
void gemm_rows(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
               int64_t k, int64_t cols) {
  const int64_t vectors = cols / kLanes;
  int64_t v = 0;
  for (; v + 4 <= vectors; v += 4)
    gemm_tile<R, 4>(a, lda, b + v * kLanes, ldb, c + v * kLanes, ldc, k);
  const int64_t o = v * kLanes;
  switch (vectors - v) {
    case 3: gemm_tile<R, 3>(a, lda, b + o, ldb, c + o, ldc, k); break;
    case 2: gemm_tile<R, 2>(a, lda, b + o, ldb, c + o, ldc, k); break;
    case 1: gemm_tile<R, 1>(a, lda, b + o, ldb, c + o, ldc, k); break;
    default: break;
  }
}

// c[rows x cols] = a[rows x k] @ b[k x cols], `cols` a multiple of kLanes; R rows at a time.
template <int R>
void gemm(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
          int64_t rows, int64_t k, int64_t cols) {
  int64_t r = 0;
  for (; r + R <= rows; r += R) gemm_rows<R>(a + r * lda, lda, b, ldb, c + r * ldc, ldc, k, cols);
  for (; r < rows; ++r) gemm_rows<1>(a + r * lda, lda, b, ldb, c + r * ldc, ldc, k, cols);
}

// body(begin, end) over ranges covering [0, tasks), in the calling thread's intra-op threads.
// With OpenMP, directly rather than through at::parallel_for: its lazy per-thread
// initialisation (an inline function's thread_local, of which this library has its own copy)
// would, at the first call in each thread, reset that thread's thread count to PyTorch's
// process-wide default, undoing the one thread per stream that mmswinv2's streams set.
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
struct Scratch {
  int64_t N, d, Np, dp;
  std::vector<float> q;       // N x d: normalised q times the scale
  std::vector<float> k;       // N x d: normalised k
  std::vector<float> kt;      // d x Np: k transposed
  std::vector<float> logits;  // N x Np: logits, then weights
  std::vector<float> v;       // N x dp
  std::vector<float> out;     // N x dp

  Scratch(int64_t N, int64_t d)
      : N(N), d(d), Np(round_up(N, kLanes)), dp(round_up(d, kLanes)), q(N * d), k(N * d),
        kt(d * Np, 0.f), logits(N * Np), v(N * dp, 0.f), out(N * dp) {}
};

// q (scaled), k and v of head `h` of one window's rows `src` (N rows of 3 * C) into `s`.
template <typename T>
void load_head(const T* src, int64_t C, float scale, Scratch& s) {
  const int64_t N = s.N, d = s.d;
  for (int64_t n = 0; n < N; ++n) {
    const T* row = src + n * 3 * C;
    float* q = s.q.data() + n * d;
    float* k = s.k.data() + n * d;
    Vec qq(0.f), kk(0.f);
    for (int64_t j = 0; j < d; j += kLanes) {
      const int64_t count = std::min(kLanes, d - j);
      const Vec qj = load_float(row + j, count), kj = load_float(row + C + j, count);
      qj.store(q + j, count);
      kj.store(k + j, count);
      load_float(row + 2 * C + j, count).store(s.v.data() + n * s.dp + j, count);
      qq = at::vec::fmadd(qj, qj, qq);
      kk = at::vec::fmadd(kj, kj, kk);
    }
    // as mmswinv2's scaled_normalize: q * (scale / |q|); k * (1 / |k|)
    const Vec q_factor(scale / std::max(std::sqrt(sum_of(qq)), kNormEps));
    const Vec k_factor(1.f / std::max(std::sqrt(sum_of(kk)), kNormEps));
    for (int64_t j = 0; j < d; j += kLanes) {
      const int64_t count = std::min(kLanes, d - j);
      (Vec::loadu(q + j, count) * q_factor).store(q + j, count);
      (Vec::loadu(k + j, count) * k_factor).store(k + j, count);
    }
  }
  at::vec::transpose_mxn<float>(s.k.data(), d, s.kt.data(), s.Np, N, d);
}

// Asks for the cache lines of head `h`'s q, k and v in one window's rows `src` (N rows of
// 3 * C) ahead of their use: they are strided, 64 bytes (bf16) apart per row and head, so the
// hardware's prefetchers do not fetch them in time (the projection that made them has left
// most of them in L3 or memory).
template <typename T>
void prefetch_head(const T* src, int64_t N, int64_t C, int64_t d) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t part = 0; part < 3; ++part)
      for (int64_t j = 0; j < d; j += kLine) __builtin_prefetch(src + n * 3 * C + part * C + j);
}

// Rows r0 .. r0 + R - 1 of the logits: + bias (+ mask), floored if `floored`, softmax,
// rounded to T. R rows side by side, so that their reductions and exps overlap.
template <typename T, int R>
void softmax_block(int64_t r0, const float* bias, const float* mask, bool floored, float floor,
                   Scratch& s) {
  const int64_t N = s.N;
  float* row[R];
  Vec largest[R], total[R];
  for (int r = 0; r < R; ++r) {
    row[r] = s.logits.data() + (r0 + r) * s.Np;
    largest[r] = Vec(-INFINITY);
    total[r] = Vec(0.f);
  }
  for (int64_t j = 0; j < N; j += kLanes) {
    const int64_t count = std::min(kLanes, N - j);
    for (int r = 0; r < R; ++r) {
      Vec x = Vec::loadu(row[r] + j, count) + Vec::loadu(bias + (r0 + r) * N + j, count);
      if (mask) x = x + Vec::loadu(mask + (r0 + r) * N + j, count);
      x.store(row[r] + j, count);
      largest[r] = at::vec::maximum(largest[r], Vec::set(largest[r], x, count));
    }
  }
  Vec shift[R], lowest[R];
  for (int r = 0; r < R; ++r) {
    const float top = max_of(largest[r]);
    shift[r] = Vec(top);
    lowest[r] = Vec(top + floor);
  }
  for (int64_t j = 0; j < N; j += kLanes) {
    const int64_t count = std::min(kLanes, N - j);
    for (int r = 0; r < R; ++r) {
      Vec x = Vec::loadu(row[r] + j, count);
      if (floored) x = at::vec::maximum(x, lowest[r]);
      const Vec e = Vec::set(Vec(0.f), (x - shift[r]).exp_u20(), count);
      e.store(row[r] + j);
      total[r] = total[r] + e;
    }
  }
  Vec inverse[R];
  for (int r = 0; r < R; ++r) inverse[r] = Vec(1.f / sum_of(total[r]));
  for (int64_t j = 0; j < N; j += kLanes)
    for (int r = 0; r < R; ++r)
      rounded_to<T>(Vec::loadu(row[r] + j) * inverse[r]).store(row[r] + j);
}

// Every row of the logits, as softmax_block.
template <typename T>
void softmax_rows(const float* bias, const float* mask, bool floored, float floor, Scratch& s) {
  int64_t r = 0;
  for (; r + 4 <= s.N; r += 4) softmax_block<T, 4>(r, bias, mask, floored, floor, s);
  for (; r < s.N; ++r) softmax_block<T, 1>(r, bias, mask, floored, floor, s);
}

template <typename T>
void attend(const at::Tensor& qkv, const at::Tensor& scale, const at::Tensor& bias,
            const at::Tensor& patterns, const at::Tensor& kinds, int64_t first_window,
            int64_t floor_mode, double floor, at::Tensor& out) {
  const int64_t windows = qkv.size(0), N = qkv.size(1), C = qkv.size(2) / 3;
  const int64_t heads = bias.size(0), d = C / heads;
  const int64_t images_windows = kinds.numel();  // windows per image; 0 without a mask
  const T* src = qkv.const_data_ptr<T>();
  T* dst = out.mutable_data_ptr<T>();
  const float* scales = scale.const_data_ptr<float>();
  const float* biases = bias.const_data_ptr<float>();
  const float* masks = images_windows ? patterns.const_data_ptr<float>() : nullptr;
  const int64_t* kind_of = images_windows ? kinds.const_data_ptr<int64_t>() : nullptr;

  parallel(windows * heads, [&](int64_t begin, int64_t end) {
    Scratch s(N, d);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t w = task / heads, h = task % heads;
      if (task + 1 < end)
        prefetch_head(src + (task + 1) / heads * N * 3 * C + (task + 1) % heads * d, N, C, d);
      load_head(src + w * N * 3 * C + h * d, C, scales[h], s);
      gemm<4>(s.q.data(), d, s.kt.data(), s.Np, s.logits.data(), s.Np, N, d, s.Np);
      const int64_t kind = kind_of ? kind_of[(first_window + w) % images_windows] : 0;
      const bool floored = floor_mode == 2 || (floor_mode == 1 && kind != 0);
      softmax_rows<T>(biases + h * N * N, kind ? masks + kind * N * N : nullptr, floored,
                      static_cast<float>(floor), s);
      gemm<8>(s.logits.data(), s.Np, s.v.data(), s.dp, s.out.data(), s.dp, N, N, s.dp);
      T* o = dst + w * N * C + h * d;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < d; j += kLanes)
          store_as(Vec::loadu(s.out.data() + n * s.dp + j), o + n * C + j,
                   std::min(kLanes, d - j));
    }
  });
}

// qkv: (windows, N, 3 * C) fp32 or bf16; scale: (heads,) fp32; bias: (heads, N, N) fp32;
// patterns: (kinds, N, N) fp32 masks, kinds: (windows per image,) int64 index into patterns
// (0: no mask; both empty without a shift mask), window i of qkv being window
// (first_window + i) % kinds.numel() of its image; floor_mode 0: no floor, 1: the masked
// windows' rows, 2: every row. Returns (windows, N, C) of qkv's type.
at::Tensor window_attention(const at::Tensor& qkv, const at::Tensor& scale,
                            const at::Tensor& bias, const at::Tensor& patterns,
                            const at::Tensor& kinds, int64_t first_window, int64_t floor_mode,
                            double floor) {
  TORCH_CHECK(qkv.dim() == 3 && qkv.size(2) % 3 == 0 && qkv.is_contiguous(),
              "window_attention: qkv must be a contiguous (windows, N, 3 * C) tensor, got ",
              qkv.sizes());
  TORCH_CHECK(qkv.scalar_type() == at::kFloat || qkv.scalar_type() == at::kBFloat16,
              "window_attention: qkv must be float32 or bfloat16, got ", qkv.scalar_type());
  const int64_t N = qkv.size(1), C = qkv.size(2) / 3;
  TORCH_CHECK(bias.dim() == 3 && bias.size(1) == N && bias.size(2) == N &&
                  C % bias.size(0) == 0 && bias.scalar_type() == at::kFloat &&
                  bias.is_contiguous(),
              "window_attention: bias must be a contiguous float32 (heads, N, N) tensor with N = ",
              N, " and heads dividing ", C, ", got ", bias.sizes(), " ", bias.scalar_type());
  TORCH_CHECK(scale.numel() == bias.size(0) && scale.scalar_type() == at::kFloat &&
                  scale.is_contiguous(),
              "window_attention: scale must hold one float32 per head");
  TORCH_CHECK(floor_mode >= 0 && floor_mode <= 2, "window_attention: floor_mode must be 0-2");
  if (kinds.numel()) {
    TORCH_CHECK(kinds.scalar_type() == at::kLong && kinds.is_contiguous() &&
                    patterns.dim() == 3 && patterns.size(1) == N && patterns.size(2) == N &&
                    patterns.scalar_type() == at::kFloat && patterns.is_contiguous(),
                "window_attention: patterns must be contiguous float32 (kinds, N, N) and kinds "
                "contiguous int64");
    const int64_t* kind = kinds.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < kinds.numel(); ++i)
      TORCH_CHECK(kind[i] >= 0 && kind[i] < patterns.size(0),
                  "window_attention: kinds must index patterns, got ", kind[i]);
    TORCH_CHECK(first_window >= 0, "window_attention: first_window must be >= 0");
  }
  auto out = at::empty({qkv.size(0), N, C}, qkv.options());
  if (qkv.scalar_type() == at::kFloat)
    attend<float>(qkv, scale, bias, patterns, kinds, first_window, floor_mode, floor, out);
  else
    attend<at::BFloat16>(qkv, scale, bias, patterns, kinds, first_window, floor_mode, floor,
                         out);
  return out;
}

}  // namespace

TORCH_LIBRARY(mmswinv2, m) {
  m.def(
      "window_attention(Tensor qkv, Tensor scale, Tensor bias, Tensor patterns, Tensor kinds, "
      "int first_window, int floor_mode, float floor) -> Tensor");
}

TORCH_LIBRARY_IMPL(mmswinv2, CPU, m) { m.impl("window_attention", &window_attention); }
