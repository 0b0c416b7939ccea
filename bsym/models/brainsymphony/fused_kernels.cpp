// Fused CPU kernels of BrainSymphony's attention (see fused.py).
//
// Factorised cell attention (Perceiver). For each query row n (sample
// b = n / rows_per_sample) the logits over the R x T cells are
//     s[r, t] = a_roi[n, r] + a_time[n, t] + sum_k q_cell[n, k] * x[b, r, t + k]
// with x the zero-padded series (B, R, T + K - 1). The forward pass returns the softmax's
// marginals over time (p_roi), over ROIs (p_time), its expectation of the cell windows
// (p_cell) and the log-sum-exp; the backward pass recomputes the logits from the
// log-sum-exp. Nothing of size R x T per row is ever stored: each logit is computed,
// exponentiated and accumulated in registers, so the cost is arithmetic, not memory
// traffic. Rows are spread over PyTorch's intra-op threads.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

template <int K>
struct Row {
  const float* a_roi;   // (R,)
  const float* a_time;  // (T,)
  const float* x;       // (R, T + K - 1) of this row's sample
  float q[K];
  int64_t R, T;

  float logit(float base, const float* xr, int64_t t) const {
    float s = base + a_time[t];
    for (int k = 0; k < K; ++k) s += q[k] * xr[t + k];
    return s;
  }
};

// Exponentials of ROI r's logits against ref into e (T,), their sum, sum e * x[r, t + k]
// into c, and the largest logit (to check that ref was high enough).
template <int K>
float roi_exp(const Row<K>& row, int64_t r, float ref, float* e, float* c, float* high) {
  const float* xr = row.x + r * (row.T + K - 1);
  const float base = row.a_roi[r];
  float sum = 0.f, top = row.logit(base, xr, 0);
  float cc[K] = {};
#pragma omp simd reduction(+ : sum, cc[:K]) reduction(max : top)
  for (int64_t t = 0; t < row.T; ++t) {
    const float s = row.logit(base, xr, t);
    top = std::max(top, s);
    const float v = std::exp(s - ref);
    e[t] = v;
    sum += v;
    for (int k = 0; k < K; ++k) cc[k] += v * xr[t + k];
  }
  for (int k = 0; k < K; ++k) c[k] = cc[k];
  *high = top;
  return sum;
}

// One pass per ROI against a running reference, raised (and the sums rescaled) when a
// ROI's largest logit exceeds it by more than kMargin; that ROI is then recomputed.
constexpr float kMargin = 8.0f;

template <int K>
void forward_rows(const torch::Tensor& a_roi, const torch::Tensor& a_time,
                  const torch::Tensor& q_cell, const torch::Tensor& xpad,
                  int64_t rows_per_sample, torch::Tensor& p_roi, torch::Tensor& p_time,
                  torch::Tensor& p_cell, torch::Tensor& lse) {
  const int64_t N = a_roi.size(0), R = a_roi.size(1), T = a_time.size(1), TP = T + K - 1;
  const float *A = a_roi.data_ptr<float>(), *AT = a_time.data_ptr<float>();
  const float *Q = q_cell.data_ptr<float>(), *X = xpad.data_ptr<float>();
  float *PR = p_roi.data_ptr<float>(), *PT = p_time.data_ptr<float>();
  float *PC = p_cell.data_ptr<float>(), *L = lse.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<float> e_buf(T), refs(R);
    float* e = e_buf.data();
    for (int64_t n = n0; n < n1; ++n) {
      Row<K> row{A + n * R, AT + n * T, X + (n / rows_per_sample) * R * TP, {}, R, T};
      for (int k = 0; k < K; ++k) row.q[k] = Q[n * K + k];
      float* time_sum = PT + n * T;
      float* roi_sum = PR + n * R;
      std::fill(time_sum, time_sum + T, 0.f);
      double total = 0.0, cells[K] = {};
      float ref = 0.f, high, c[K];
      for (int64_t r = 0; r < R; ++r) {
        float sum = roi_exp(row, r, ref, e, c, &high);
        if (r == 0 || high > ref + kMargin) {
          if (r > 0) {  // rescale what was summed under the old reference
            const float scale = std::exp(ref - high);
            total *= scale;
            for (int k = 0; k < K; ++k) cells[k] *= scale;
            for (int64_t t = 0; t < T; ++t) time_sum[t] *= scale;
          }
          ref = high;
          sum = roi_exp(row, r, ref, e, c, &high);
        }
#pragma omp simd
        for (int64_t t = 0; t < T; ++t) time_sum[t] += e[t];
        roi_sum[r] = sum;
        refs[r] = ref;
        total += sum;
        for (int k = 0; k < K; ++k) cells[k] += c[k];
      }
      const float inv = static_cast<float>(1.0 / total);
      for (int64_t r = 0; r < R; ++r) roi_sum[r] *= std::exp(refs[r] - ref) * inv;
      for (int64_t t = 0; t < T; ++t) time_sum[t] *= inv;
      for (int k = 0; k < K; ++k) PC[n * K + k] = static_cast<float>(cells[k] / total);
      L[n] = ref + static_cast<float>(std::log(total));
    }
  });
}

// Gradients from ds = p * (g_roi[r] + g_time[t] + g_cell . x[r, t:t+K]), p = exp(s - lse),
// g_roi already centred: d_roi = sum_t ds, d_time = sum_r ds, d_q_cell = sum ds x.
template <int K>
void backward_rows(const torch::Tensor& a_roi, const torch::Tensor& a_time,
                   const torch::Tensor& q_cell, const torch::Tensor& xpad,
                   const torch::Tensor& lse, const torch::Tensor& g_roi,
                   const torch::Tensor& g_time, const torch::Tensor& g_cell,
                   int64_t rows_per_sample, torch::Tensor& d_roi, torch::Tensor& d_time,
                   torch::Tensor& d_q) {
  const int64_t N = a_roi.size(0), R = a_roi.size(1), T = a_time.size(1), TP = T + K - 1;
  const float *A = a_roi.data_ptr<float>(), *AT = a_time.data_ptr<float>();
  const float *Q = q_cell.data_ptr<float>(), *X = xpad.data_ptr<float>();
  const float *L = lse.data_ptr<float>(), *GR = g_roi.data_ptr<float>();
  const float *GT = g_time.data_ptr<float>(), *GC = g_cell.data_ptr<float>();
  float *DR = d_roi.data_ptr<float>(), *DT = d_time.data_ptr<float>();
  float *DQ = d_q.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float *ar = A + n * R, *at = AT + n * T, *gr = GR + n * R, *gt = GT + n * T;
      const float* x = X + (n / rows_per_sample) * R * TP;
      float q[K], g[K];
      for (int k = 0; k < K; ++k) {
        q[k] = Q[n * K + k];
        g[k] = GC[n * K + k];
      }
      float* time_sum = DT + n * T;
      std::fill(time_sum, time_sum + T, 0.f);
      double cells[K] = {};
      for (int64_t r = 0; r < R; ++r) {
        const float* xr = x + r * TP;
        const float base = ar[r] - L[n], g_base = gr[r];
        float sum = 0.f;
        float c[K] = {};
#pragma omp simd reduction(+ : sum, c[:K])
        for (int64_t t = 0; t < T; ++t) {
          float s = base + at[t], d = g_base + gt[t];
          for (int k = 0; k < K; ++k) {
            s += q[k] * xr[t + k];
            d += g[k] * xr[t + k];
          }
          const float ds = std::exp(s) * d;
          sum += ds;
          time_sum[t] += ds;
          for (int k = 0; k < K; ++k) c[k] += ds * xr[t + k];
        }
        DR[n * R + r] = sum;
        for (int k = 0; k < K; ++k) cells[k] += c[k];
      }
      for (int k = 0; k < K; ++k) DQ[n * K + k] = static_cast<float>(cells[k]);
    }
  });
}

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(),
              name, " must be a contiguous float32 CPU tensor");
}

#define BSYM_DISPATCH_KERNEL(K, ...)                                            \
  switch (K) {                                                                  \
    case 1: { constexpr int KK = 1; __VA_ARGS__; break; }                      \
    case 3: { constexpr int KK = 3; __VA_ARGS__; break; }                      \
    case 5: { constexpr int KK = 5; __VA_ARGS__; break; }                      \
    case 7: { constexpr int KK = 7; __VA_ARGS__; break; }                      \
    case 9: { constexpr int KK = 9; __VA_ARGS__; break; }                      \
    default:                                                                    \
      TORCH_CHECK(false, "fused cell attention: kernels 1, 3, 5, 7 or 9, got ", K); \
  }

}  // namespace

std::vector<torch::Tensor> forward(torch::Tensor a_roi, torch::Tensor a_time,
                                   torch::Tensor q_cell, torch::Tensor xpad,
                                   int64_t rows_per_sample) {
  for (auto* t : {&a_roi, &a_time, &q_cell, &xpad}) check(*t, "every input");
  auto p_roi = torch::empty_like(a_roi), p_time = torch::empty_like(a_time);
  auto p_cell = torch::empty_like(q_cell);
  auto lse = torch::empty({a_roi.size(0)}, a_roi.options());
  BSYM_DISPATCH_KERNEL(q_cell.size(1), forward_rows<KK>(a_roi, a_time, q_cell, xpad,
                                                         rows_per_sample, p_roi, p_time,
                                                         p_cell, lse));
  return {p_roi, p_time, p_cell, lse};
}

std::vector<torch::Tensor> backward(torch::Tensor a_roi, torch::Tensor a_time,
                                    torch::Tensor q_cell, torch::Tensor xpad, torch::Tensor lse,
                                    torch::Tensor g_roi, torch::Tensor g_time,
                                    torch::Tensor g_cell, int64_t rows_per_sample) {
  for (auto* t : {&a_roi, &a_time, &q_cell, &xpad, &lse, &g_roi, &g_time, &g_cell})
    check(*t, "every input");
  auto d_roi = torch::empty_like(a_roi), d_time = torch::empty_like(a_time);
  auto d_q = torch::empty_like(q_cell);
  BSYM_DISPATCH_KERNEL(q_cell.size(1), backward_rows<KK>(a_roi, a_time, q_cell, xpad, lse,
                                                          g_roi, g_time, g_cell,
                                                          rows_per_sample, d_roi, d_time, d_q));
  return {d_roi, d_time, d_q};
}

// Signed attention (SC branch). For each row i of scores S = (q k^T) * w (per sample and
// head; w shared by the heads when it has one):
//     P[i, j] = sign(S[i, j]) exp(|S[i, j]| - m_i) / sum_j exp(|S[i, j]| - m_i),
// m_i = max_j |S[i, j]|, one pass over the row in cache instead of one per operation.

namespace {

struct RowLayout {
  int64_t n_rows, n, heads, w_heads;  // rows = B * H * N, row length N

  int64_t w_row(int64_t row) const {  // row of w for row (b, h, i) of the scores
    const int64_t i = row % n, bh = row / n, b = bh / heads, h = bh % heads;
    return (b * w_heads + (w_heads == 1 ? 0 : h)) * n + i;
  }
};

RowLayout layout(const torch::Tensor& scores, const torch::Tensor& w) {
  TORCH_CHECK(scores.dim() == 4 && w.dim() == 4 && w.size(0) == scores.size(0) &&
                  (w.size(1) == 1 || w.size(1) == scores.size(1)) &&
                  w.size(2) == scores.size(2) && w.size(3) == scores.size(3),
              "signed attention: scores (B, H, N, N) and w (B, 1 or H, N, N) expected");
  const int64_t n = scores.size(3);
  return {scores.numel() / n, n, scores.size(1), w.size(1)};
}

}  // namespace

// scores (q k^T, B x H x N x N) -> the signed weights P, in place.
void signed_weights_(torch::Tensor scores, torch::Tensor w) {
  check(scores, "scores");
  check(w, "w");
  const RowLayout rows = layout(scores, w);
  float* S = scores.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  at::parallel_for(0, rows.n_rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      float* s = S + row * rows.n;
      const float* wr = W + rows.w_row(row) * rows.n;
      float top = 0.f;
#pragma omp simd reduction(max : top)
      for (int64_t j = 0; j < rows.n; ++j) {
        s[j] *= wr[j];
        top = std::max(top, std::abs(s[j]));
      }
      float total = 0.f;
#pragma omp simd reduction(+ : total)
      for (int64_t j = 0; j < rows.n; ++j) total += std::exp(std::abs(s[j]) - top);
      const float inv = 1.f / total;
#pragma omp simd
      for (int64_t j = 0; j < rows.n; ++j) {
        const float v = s[j];
        const float e = std::exp(std::abs(v) - top) * inv;
        s[j] = v > 0.f ? e : (v < 0.f ? -e : 0.f);
      }
    }
  });
}

// grad_p (the gradient w.r.t. P) -> the gradient w.r.t. q k^T, in place:
// dS = |P| dP - P sum_j(dP_j P_j), times w.
void signed_grad_(torch::Tensor grad_p, torch::Tensor p, torch::Tensor w) {
  check(grad_p, "grad_p");
  check(p, "p");
  check(w, "w");
  const RowLayout rows = layout(grad_p, w);
  float* G = grad_p.data_ptr<float>();
  const float *P = p.data_ptr<float>(), *W = w.data_ptr<float>();
  at::parallel_for(0, rows.n_rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      float* g = G + row * rows.n;
      const float* pr = P + row * rows.n;
      const float* wr = W + rows.w_row(row) * rows.n;
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < rows.n; ++j) dot += g[j] * pr[j];
#pragma omp simd
      for (int64_t j = 0; j < rows.n; ++j)
        g[j] = (g[j] * std::abs(pr[j]) - pr[j] * dot) * wr[j];
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "marginals and log-sum-exp of the factorised cell softmax");
  m.def("backward", &backward, "gradients w.r.t. a_roi, a_time and q_cell");
  m.def("signed_weights_", &signed_weights_, "signed attention weights from q k^T, in place");
  m.def("signed_grad_", &signed_grad_, "gradient w.r.t. q k^T from that w.r.t. P, in place");
}
