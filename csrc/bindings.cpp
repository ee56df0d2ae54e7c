// The one bindings file: registers the sora ops with the dispatcher (TORCH_LIBRARY), with CPU and
// (when built with CUDA) CUDA kernels and Meta (fake) implementations so torch.compile traces them.
//
//   torch.ops.sora.rope(x [N,H,D], cu_seqlens [B+1] int32, grid [B,3] int32, sections (dt,dh,dw),
//                       theta, inverse=False) -> [N,H,D]
//   torch.ops.sora.patchify(latents [N*P], cu_seqlens, grid, patch (pt,ph,pw), channels) -> [N,P]
//   torch.ops.sora.unpatchify(tokens [N,P], cu_seqlens, grid, patch, channels) -> [N*P]
//   torch.ops.sora.packing_index(cu_seqlens, grid, total) -> (sample_id [N] int64, pos [N,3] int64)
//
// `latents` is the concatenation of every sample's flattened [C, T'pt, H'ph, W'pw] latent; sample
// b starts at element cu_seqlens[b] * P, P = C*pt*ph*pw. The ops are plain functions of their
// inputs; the autograd.Function per op lives in sora/ops (rope backward = rope(inverse=True),
// patchify backward = unpatchify and vice versa).
//
// Every input is checked here (TORCH_CHECK naming the argument): dtype, device, contiguity,
// shapes, and the packing itself (cu_seqlens starts at 0, never decreases, each length equals its
// grid's product, the last entry equals the token count). On CPU the packing check is O(B) and
// always on. On CUDA it copies cu_seqlens and grid to the host (one synchronisation); set
// SORA_CSRC_CHECK_PACKING=0 to skip it (the caller validated the batch once; the kernels still
// never touch memory outside their tensors).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <Python.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>

#include "sora_kernels.h"

#ifdef SORA_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace sora {
namespace {

DType to_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kDouble:
      TORCH_CHECK(!t.is_cuda(), name, ": float64 is supported on CPU only; got a CUDA float64 tensor");
      return DType::F64;
    default:
      TORCH_CHECK(false, name, " must be float32, float16 or bfloat16 (or float64 on CPU); got ",
                  t.scalar_type());
  }
  return DType::F32;  // unreachable
}

void check_index_tensors(const at::Tensor& cu, const at::Tensor& grid, const at::Device& device) {
  TORCH_CHECK(cu.scalar_type() == at::kInt, "cu_seqlens must be int32; got ", cu.scalar_type());
  TORCH_CHECK(grid.scalar_type() == at::kInt, "grid must be int32; got ", grid.scalar_type());
  TORCH_CHECK(cu.dim() == 1 && cu.size(0) >= 2, "cu_seqlens must be 1-D [B+1] with B >= 1; got shape ",
              cu.sizes());
  const int64_t B = cu.size(0) - 1;
  TORCH_CHECK(grid.dim() == 2 && grid.size(0) == B && grid.size(1) == 3, "grid must be [B, 3] = [", B,
              ", 3] to match cu_seqlens [", B + 1, "]; got shape ", grid.sizes());
  TORCH_CHECK(cu.is_contiguous(), "cu_seqlens must be contiguous");
  TORCH_CHECK(grid.is_contiguous(), "grid must be contiguous");
  TORCH_CHECK(cu.device() == device, "cu_seqlens must be on ", device, " like the data; got ", cu.device());
  TORCH_CHECK(grid.device() == device, "grid must be on ", device, " like the data; got ", grid.device());
}

bool check_packing_on_cuda() {
  static const bool on = [] {
    const char* v = std::getenv("SORA_CSRC_CHECK_PACKING");
    return !(v && (std::strcmp(v, "0") == 0 || std::strcmp(v, "false") == 0));
  }();
  return on;
}

// Values of cu_seqlens / grid against each other and against the token count.
void check_packing_values(const at::Tensor& cu_in, const at::Tensor& grid_in, int64_t total) {
  if (cu_in.is_cuda() && !check_packing_on_cuda()) return;
  const at::Tensor cu = cu_in.is_cpu() ? cu_in : cu_in.to(at::kCPU);
  const at::Tensor grid = grid_in.is_cpu() ? grid_in : grid_in.to(at::kCPU);
  const int32_t* c = cu.data_ptr<int32_t>();
  const int32_t* g = grid.data_ptr<int32_t>();
  const int64_t B = cu.size(0) - 1;
  TORCH_CHECK(c[0] == 0, "cu_seqlens must start at 0; got cu_seqlens[0] = ", c[0]);
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(c[b + 1] >= c[b], "cu_seqlens must be non-decreasing; cu_seqlens[", b + 1, "] = ", c[b + 1],
                " < cu_seqlens[", b, "] = ", c[b]);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(g[3 * b] >= 0 && g[3 * b + 1] >= 0 && g[3 * b + 2] >= 0, "grid[", b,
                "] must be non-negative; got (", g[3 * b], ", ", g[3 * b + 1], ", ", g[3 * b + 2], ")");
    const int64_t prod = int64_t(g[3 * b]) * g[3 * b + 1] * g[3 * b + 2];
    TORCH_CHECK(prod == int64_t(c[b + 1]) - c[b], "sample ", b, ": cu_seqlens gives ", int64_t(c[b + 1]) - c[b],
                " tokens but grid (", g[3 * b], ", ", g[3 * b + 1], ", ", g[3 * b + 2], ") holds ", prod);
  }
  TORCH_CHECK(c[B] == total, "cu_seqlens ends at ", c[B], " but the input holds ", total, " tokens");
}

Packing packing_of(const at::Tensor& cu, const at::Tensor& grid, int64_t total) {
  return Packing{cu.data_ptr<int32_t>(), grid.data_ptr<int32_t>(), cu.size(0) - 1, total};
}

Rope rope_args(const at::Tensor& x, at::IntArrayRef sections, double theta, bool inverse) {
  TORCH_CHECK(x.dim() == 3, "x must be [N, H, D]; got shape ", x.sizes());
  TORCH_CHECK(x.is_contiguous(), "x must be contiguous (call .contiguous()); got strides ", x.strides());
  TORCH_CHECK(sections.size() == 3, "sections must be (dt, dh, dw); got ", sections);
  const int64_t D = x.size(2);
  TORCH_CHECK(sections[0] >= 0 && sections[1] >= 0 && sections[2] >= 0 && sections[0] % 2 == 0 &&
                  sections[1] % 2 == 0 && sections[2] % 2 == 0 && sections[0] + sections[1] + sections[2] == D,
              "sections ", sections, " must be even, non-negative and sum to the head dim of x (", D, ")");
  TORCH_CHECK(theta > 0, "theta must be positive; got ", theta);
  Rope r;
  r.heads = static_cast<int>(x.size(1));
  r.head_dim = static_cast<int>(D);
  for (int a = 0; a < 3; ++a) r.sec[a] = static_cast<int>(sections[a]);
  r.theta = static_cast<float>(theta);
  r.inverse = inverse;
  return r;
}

Patch patch_args(at::IntArrayRef patch, int64_t channels) {
  TORCH_CHECK(patch.size() == 3 && patch[0] > 0 && patch[1] > 0 && patch[2] > 0,
              "patch must be three positive sizes (pt, ph, pw); got ", patch);
  TORCH_CHECK(channels > 0, "channels must be positive; got ", channels);
  return Patch{static_cast<int>(channels), static_cast<int>(patch[0]), static_cast<int>(patch[1]),
               static_cast<int>(patch[2])};
}

int64_t patch_numel(const Patch& q) { return int64_t(q.channels) * q.pt * q.ph * q.pw; }

// ---- shared checks: return the parsed arguments -------------------------------------------------

struct RopeCall { Packing p; Rope r; DType dtype; };
RopeCall rope_checked(const at::Tensor& x, const at::Tensor& cu, const at::Tensor& grid,
                      at::IntArrayRef sections, double theta, bool inverse) {
  const DType dtype = to_dtype(x, "x");
  Rope r = rope_args(x, sections, theta, inverse);
  check_index_tensors(cu, grid, x.device());
  check_packing_values(cu, grid, x.size(0));
  return {packing_of(cu, grid, x.size(0)), r, dtype};
}

struct PatchCall { Packing p; Patch q; DType dtype; int64_t total; };
PatchCall patch_checked(const at::Tensor& src, bool tokens_in, const at::Tensor& cu, const at::Tensor& grid,
                        at::IntArrayRef patch, int64_t channels) {
  const char* name = tokens_in ? "tokens" : "latents";
  const DType dtype = to_dtype(src, name);
  Patch q = patch_args(patch, channels);
  const int64_t P = patch_numel(q);
  int64_t total;
  if (tokens_in) {
    TORCH_CHECK(src.dim() == 2 && src.size(1) == P, "tokens must be [N, C*pt*ph*pw] = [N, ", P, "]; got shape ",
                src.sizes());
    total = src.size(0);
  } else {
    TORCH_CHECK(src.dim() == 1 && src.numel() % P == 0,
                "latents must be 1-D (the samples' [C, T, H, W] latents flattened and concatenated) with a "
                "multiple of C*pt*ph*pw = ", P, " elements; got shape ", src.sizes());
    total = src.numel() / P;
  }
  TORCH_CHECK(src.is_contiguous(), name, " must be contiguous (call .contiguous())");
  check_index_tensors(cu, grid, src.device());
  check_packing_values(cu, grid, total);
  return {packing_of(cu, grid, total), q, dtype, total};
}

// ---- CPU ----------------------------------------------------------------------------------------

at::Tensor rope_cpu(const at::Tensor& x, const at::Tensor& cu, const at::Tensor& grid, at::IntArrayRef sections,
                    double theta, bool inverse) {
  RopeCall c = rope_checked(x, cu, grid, sections, theta, inverse);
  at::Tensor out = at::empty_like(x);
  cpu::rope(x.data_ptr(), out.data_ptr(), c.dtype, c.p, c.r);
  return out;
}

at::Tensor patchify_cpu(const at::Tensor& latents, const at::Tensor& cu, const at::Tensor& grid,
                        at::IntArrayRef patch, int64_t channels) {
  PatchCall c = patch_checked(latents, false, cu, grid, patch, channels);
  at::Tensor out = at::empty({c.total, patch_numel(c.q)}, latents.options());
  cpu::patchify(latents.data_ptr(), out.data_ptr(), c.dtype, c.p, c.q, false);
  return out;
}

at::Tensor unpatchify_cpu(const at::Tensor& tokens, const at::Tensor& cu, const at::Tensor& grid,
                          at::IntArrayRef patch, int64_t channels) {
  PatchCall c = patch_checked(tokens, true, cu, grid, patch, channels);
  at::Tensor out = at::empty({tokens.numel()}, tokens.options());
  cpu::patchify(tokens.data_ptr(), out.data_ptr(), c.dtype, c.p, c.q, true);
  return out;
}

std::tuple<at::Tensor, at::Tensor> packing_index_cpu(const at::Tensor& cu, const at::Tensor& grid, int64_t total) {
  TORCH_CHECK(total >= 0, "total must be non-negative; got ", total);
  check_index_tensors(cu, grid, cu.device());
  check_packing_values(cu, grid, total);
  at::Tensor sid = at::empty({total}, cu.options().dtype(at::kLong));
  at::Tensor pos = at::empty({total, 3}, cu.options().dtype(at::kLong));
  cpu::packing_index(packing_of(cu, grid, total), sid.data_ptr<int64_t>(), pos.data_ptr<int64_t>());
  return {sid, pos};
}

// ---- CUDA ---------------------------------------------------------------------------------------

#ifdef SORA_WITH_CUDA
void check_launch(int code, const char* op) {
  TORCH_CHECK(code == 0, "sora::", op, " CUDA launch failed: ", cuda::error_string(code));
}

void* current_stream() { return static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()); }

at::Tensor rope_cuda(const at::Tensor& x, const at::Tensor& cu, const at::Tensor& grid, at::IntArrayRef sections,
                     double theta, bool inverse) {
  const c10::cuda::CUDAGuard guard(x.device());
  RopeCall c = rope_checked(x, cu, grid, sections, theta, inverse);
  at::Tensor out = at::empty_like(x);
  check_launch(cuda::rope(x.data_ptr(), out.data_ptr(), c.dtype, c.p, c.r, current_stream()), "rope");
  return out;
}

at::Tensor patchify_cuda(const at::Tensor& latents, const at::Tensor& cu, const at::Tensor& grid,
                         at::IntArrayRef patch, int64_t channels) {
  const c10::cuda::CUDAGuard guard(latents.device());
  PatchCall c = patch_checked(latents, false, cu, grid, patch, channels);
  at::Tensor out = at::empty({c.total, patch_numel(c.q)}, latents.options());
  check_launch(cuda::patchify(latents.data_ptr(), out.data_ptr(), c.dtype, c.p, c.q, false, current_stream()),
               "patchify");
  return out;
}

at::Tensor unpatchify_cuda(const at::Tensor& tokens, const at::Tensor& cu, const at::Tensor& grid,
                           at::IntArrayRef patch, int64_t channels) {
  const c10::cuda::CUDAGuard guard(tokens.device());
  PatchCall c = patch_checked(tokens, true, cu, grid, patch, channels);
  at::Tensor out = at::empty({tokens.numel()}, tokens.options());
  check_launch(cuda::patchify(tokens.data_ptr(), out.data_ptr(), c.dtype, c.p, c.q, true, current_stream()),
               "unpatchify");
  return out;
}

std::tuple<at::Tensor, at::Tensor> packing_index_cuda(const at::Tensor& cu, const at::Tensor& grid, int64_t total) {
  const c10::cuda::CUDAGuard guard(cu.device());
  TORCH_CHECK(total >= 0, "total must be non-negative; got ", total);
  check_index_tensors(cu, grid, cu.device());
  check_packing_values(cu, grid, total);
  at::Tensor sid = at::empty({total}, cu.options().dtype(at::kLong));
  at::Tensor pos = at::empty({total, 3}, cu.options().dtype(at::kLong));
  check_launch(cuda::packing_index(packing_of(cu, grid, total), sid.data_ptr<int64_t>(), pos.data_ptr<int64_t>(),
                                   current_stream()),
               "packing_index");
  return {sid, pos};
}
#endif

// ---- Meta (fake): shapes only, for torch.compile / FakeTensor (sizes may be symbolic) -------------

at::Tensor rope_meta(const at::Tensor& x, const at::Tensor&, const at::Tensor&, at::IntArrayRef sections, double,
                     bool) {
  TORCH_CHECK(x.dim() == 3, "x must be [N, H, D]; got ", x.dim(), " dims");
  TORCH_CHECK(sections.size() == 3, "sections must be (dt, dh, dw); got ", sections);
  return at::empty_like(x);
}

at::Tensor patchify_meta(const at::Tensor& latents, const at::Tensor&, const at::Tensor&, at::IntArrayRef patch,
                         int64_t channels) {
  const int64_t P = patch_numel(patch_args(patch, channels));
  TORCH_CHECK(latents.dim() == 1, "latents must be 1-D; got ", latents.dim(), " dims");
  return at::empty_symint({latents.sym_numel() / P, c10::SymInt(P)}, latents.options());
}

at::Tensor unpatchify_meta(const at::Tensor& tokens, const at::Tensor&, const at::Tensor&, at::IntArrayRef patch,
                           int64_t channels) {
  patch_args(patch, channels);
  TORCH_CHECK(tokens.dim() == 2, "tokens must be [N, C*pt*ph*pw]; got ", tokens.dim(), " dims");
  return at::empty_symint({tokens.sym_numel()}, tokens.options());
}

std::tuple<at::Tensor, at::Tensor> packing_index_meta(const at::Tensor& cu, const at::Tensor&, c10::SymInt total) {
  return {at::empty_symint({total}, cu.options().dtype(at::kLong)),
          at::empty_symint({total, 3}, cu.options().dtype(at::kLong))};
}

}  // namespace
}  // namespace sora

TORCH_LIBRARY(sora, m) {
  m.def("rope(Tensor x, Tensor cu_seqlens, Tensor grid, int[] sections, float theta, bool inverse=False) -> Tensor");
  m.def("patchify(Tensor latents, Tensor cu_seqlens, Tensor grid, int[] patch, int channels) -> Tensor");
  m.def("unpatchify(Tensor tokens, Tensor cu_seqlens, Tensor grid, int[] patch, int channels) -> Tensor");
  m.def("packing_index(Tensor cu_seqlens, Tensor grid, SymInt total) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sora, CPU, m) {
  m.impl("rope", &sora::rope_cpu);
  m.impl("patchify", &sora::patchify_cpu);
  m.impl("unpatchify", &sora::unpatchify_cpu);
  m.impl("packing_index", &sora::packing_index_cpu);
}

#ifdef SORA_WITH_CUDA
TORCH_LIBRARY_IMPL(sora, CUDA, m) {
  m.impl("rope", &sora::rope_cuda);
  m.impl("patchify", &sora::patchify_cuda);
  m.impl("unpatchify", &sora::unpatchify_cuda);
  m.impl("packing_index", &sora::packing_index_cuda);
}
#endif

TORCH_LIBRARY_IMPL(sora, Meta, m) {
  m.impl("rope", &sora::rope_meta);
  m.impl("patchify", &sora::patchify_meta);
  m.impl("unpatchify", &sora::unpatchify_meta);
  m.impl("packing_index", &sora::packing_index_meta);
}

// A Python module so `import sora._C` loads the library (and runs the registrations above).
// Plain C API instead of pybind11: nothing is bound through Python besides two constants, and
// skipping torch/extension.h keeps the build fast on small machines. SORA_CUDA_ARCHS is a token
// such as 80_90a (setup.py), turned into the string "80_90a".
#if defined(SORA_WITH_CUDA) && defined(SORA_CUDA_ARCHS)
#define SORA_STR2(x) #x
#define SORA_STR(x) SORA_STR2(x)
static const char* kCudaArchs = SORA_STR(SORA_CUDA_ARCHS);
#else
static const char* kCudaArchs = "";
#endif

static struct PyModuleDef sora_c_module = {PyModuleDef_HEAD_INIT, "_C",
                                           "sora C++/CUDA kernels, registered as torch.ops.sora.*", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&sora_c_module);
  if (m == nullptr) return nullptr;
#ifdef SORA_WITH_CUDA
  PyModule_AddIntConstant(m, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(m, "WITH_CUDA", 0);
#endif
  PyModule_AddStringConstant(m, "CUDA_ARCHS", kCudaArchs);
  return m;
}
