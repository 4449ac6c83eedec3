// PyTorch binding of the Vivim selective-scan kernels (forward, and the backward for training).
// Thin: checks shapes and dtypes, allocates the outputs and the scratch workspace with torch's caching allocator,
// launches on torch's current stream. Built on first use by vivim/ops/_cuda_ext.py (torch.utils.cpp_extension.load).
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdarg>
#include <cstdio>

#include "vivim/selective_scan.h"
#include "vivim/selective_scan_bwd.h"

namespace {

// Errors are reported without C++ exceptions and without iostreams: the function formats a message with
// snprintf, returns an undefined tensor (None in Python), and the Python wrapper raises. (On one build host,
// where nvcc used a newer GCC than the one torch was built with, both a thrown c10::Error and c10::str's
// ostringstream crashed the interpreter; plain C formatting avoids both.)
thread_local char g_last_error[512];

at::Tensor fail_msg(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
at::Tensor fail_msg(const char* fmt, ...) {
    const int head = snprintf(g_last_error, sizeof(g_last_error), "vivim selective_scan (CUDA): ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_last_error + head, sizeof(g_last_error) - head, fmt, ap);
    va_end(ap);
    return at::Tensor();
}

// "(2, 3, 4)" into a caller buffer (no iostreams).
const char* shape_str(at::IntArrayRef sizes, char (&buf)[96]) {
    int k = snprintf(buf, sizeof(buf), "(");
    for (size_t i = 0; i < sizes.size() && k < (int)sizeof(buf) - 24; ++i)
        k += snprintf(buf + k, sizeof(buf) - k, i ? ", %lld" : "%lld", (long long)sizes[i]);
    snprintf(buf + k, sizeof(buf) - k, ")");
    return buf;
}

#define VIVIM_CHECK(cond, ...)              \
    do {                                    \
        if (!(cond)) return fail_msg(__VA_ARGS__); \
    } while (0)

bool to_vivim_dtype(at::ScalarType t, vivim_dtype_t* out) {
    switch (t) {
        case at::kFloat: *out = VIVIM_DTYPE_F32; return true;
        case at::kHalf: *out = VIVIM_DTYPE_F16; return true;
        case at::kBFloat16: *out = VIVIM_DTYPE_BF16; return true;
        default: return false;
    }
}

// An optional fp32 vector of length `dim` on u's device; `ok` false (message recorded) when it is not.
at::Tensor fp32_vector(const c10::optional<at::Tensor>& t, int64_t dim, const char* name, const at::Tensor& u,
                       bool* ok) {
    *ok = true;
    if (!t.has_value() || !t->defined()) return at::Tensor();
    if (!(t->is_cuda() && t->device() == u.device())) {
        *ok = false;
        return fail_msg("%s must be on the same CUDA device as u", name);
    }
    if (t->dim() != 1 || t->numel() != dim) {  // (D,) exactly, as the reference requires: no (1, D)
        *ok = false;
        char sb[96];
        return fail_msg("%s must have shape (%lld), got %s", name, (long long)dim, shape_str(t->sizes(), sb));
    }
    return t->to(at::kFloat).contiguous();
}

// The forward's arguments, which both calls' parameter structs hold under the same names: checked, contiguous
// tensors, B and C as (batch, G, N, L); D, z and delta_bias undefined when absent.
template <class Params>
void set_scan_inputs(Params& p, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                     const at::Tensor& C, const at::Tensor& Dv, const at::Tensor& z, const at::Tensor& bias,
                     vivim_dtype_t dtype, bool delta_softplus) {
    p.batch = u.size(0);
    p.dim = u.size(1);
    p.seqlen = u.size(2);
    p.dstate = A.size(1);
    p.n_groups = B.size(1);
    p.dtype = dtype;
    p.delta_softplus = delta_softplus ? 1 : 0;
    p.u = u.data_ptr();
    p.delta = delta.data_ptr();
    p.A = A.data_ptr<float>();
    p.B = B.data_ptr();
    p.C = C.data_ptr();
    p.D = Dv.defined() ? Dv.data_ptr<float>() : nullptr;
    p.z = z.defined() ? z.data_ptr() : nullptr;
    p.delta_bias = bias.defined() ? bias.data_ptr<float>() : nullptr;
}

at::Tensor selective_scan_fwd(const at::Tensor& u_in, const at::Tensor& delta_in, const at::Tensor& A_in,
                              const at::Tensor& B_in, const at::Tensor& C_in, const c10::optional<at::Tensor>& D_in,
                              const c10::optional<at::Tensor>& z_in, const c10::optional<at::Tensor>& bias_in,
                              bool delta_softplus, const c10::optional<at::Tensor>& out_in,
                              const c10::optional<at::Tensor>& workspace_in) {
    g_last_error[0] = '\0';
    char sa[96], sb[96];
    VIVIM_CHECK(u_in.defined() && u_in.is_cuda(), "u must be a CUDA tensor");
    VIVIM_CHECK(u_in.dim() == 3, "u must be (batch, dim, seqlen), got %s", shape_str(u_in.sizes(), sa));
    const c10::cuda::CUDAGuard guard(u_in.device());
    const auto dtype = u_in.scalar_type();
    vivim_dtype_t vdt;
    VIVIM_CHECK(to_vivim_dtype(dtype, &vdt), "u must be float32, float16 or bfloat16, got %s", c10::toString(dtype));
    const int64_t batch = u_in.size(0), dim = u_in.size(1), seqlen = u_in.size(2);
    VIVIM_CHECK(batch >= 1 && dim >= 1 && seqlen >= 1, "u must not be empty, got %s", shape_str(u_in.sizes(), sa));
    for (const at::Tensor* t : {&delta_in, &B_in, &C_in}) {
        VIVIM_CHECK(t->defined() && t->is_cuda() && t->device() == u_in.device(),
                    "delta, B and C must be on u's CUDA device");
        VIVIM_CHECK(t->scalar_type() == dtype, "delta, B and C must have u's dtype %s, got %s", c10::toString(dtype),
                    c10::toString(t->scalar_type()));
    }
    VIVIM_CHECK(delta_in.sizes() == u_in.sizes(), "delta must have u's shape %s, got %s", shape_str(u_in.sizes(), sa),
                shape_str(delta_in.sizes(), sb));
    VIVIM_CHECK(A_in.defined() && A_in.is_cuda() && A_in.device() == u_in.device(), "A must be on u's CUDA device");
    VIVIM_CHECK(A_in.dim() == 2 && A_in.size(0) == dim, "A must be (dim, dstate) with dim %lld, got %s",
                (long long)dim, shape_str(A_in.sizes(), sa));
    const int64_t dstate = A_in.size(1);
    VIVIM_CHECK(dstate >= 1 && dstate <= 64, "dstate must be in 1..64, got %lld", (long long)dstate);
    VIVIM_CHECK(B_in.dim() == 3 || B_in.dim() == 4, "B must be (batch, N, L) or (batch, G, N, L), got %s",
                shape_str(B_in.sizes(), sa));
    VIVIM_CHECK(C_in.dim() == B_in.dim(), "B and C must have the same layout");
    const int64_t groups = B_in.dim() == 4 ? B_in.size(1) : 1;
    VIVIM_CHECK(groups >= 1 && dim % groups == 0, "dim %lld must be divisible by the number of groups %lld",
                (long long)dim, (long long)groups);
    at::Tensor B = B_in.dim() == 3 ? B_in.unsqueeze(1) : B_in;
    at::Tensor C = C_in.dim() == 3 ? C_in.unsqueeze(1) : C_in;
    const std::vector<int64_t> bc_shape{batch, groups, dstate, seqlen};
    VIVIM_CHECK(B.sizes() == at::IntArrayRef(bc_shape), "B must be (batch, G, N, L) = %s, got %s",
                shape_str(bc_shape, sa), shape_str(B_in.sizes(), sb));
    VIVIM_CHECK(C.sizes() == at::IntArrayRef(bc_shape), "C must be (batch, G, N, L) = %s, got %s",
                shape_str(bc_shape, sa), shape_str(C_in.sizes(), sb));
    at::Tensor z;
    if (z_in.has_value() && z_in->defined()) {
        VIVIM_CHECK(z_in->is_cuda() && z_in->device() == u_in.device() && z_in->scalar_type() == dtype,
                    "z must be on u's CUDA device with u's dtype");
        VIVIM_CHECK(z_in->sizes() == u_in.sizes(), "z must have u's shape %s", shape_str(u_in.sizes(), sa));
        z = z_in->contiguous();
    }
    bool ok = true;
    at::Tensor Dv = fp32_vector(D_in, dim, "D", u_in, &ok);
    if (!ok) return at::Tensor();
    at::Tensor bias = fp32_vector(bias_in, dim, "delta_bias", u_in, &ok);
    if (!ok) return at::Tensor();

    at::Tensor u = u_in.contiguous();
    at::Tensor delta = delta_in.contiguous();
    at::Tensor A = A_in.to(at::kFloat).contiguous();
    B = B.contiguous();
    C = C.contiguous();

    // `out` and `workspace` may be given by the caller (tests poison them; graphs keep them static).
    at::Tensor out;
    if (out_in.has_value() && out_in->defined()) {
        out = *out_in;
        VIVIM_CHECK(out.is_cuda() && out.device() == u.device() && out.scalar_type() == dtype && out.is_contiguous() &&
                        out.sizes() == u.sizes(),
                    "out must be a contiguous tensor like u");
    } else {
        out = at::empty_like(u, at::MemoryFormat::Contiguous);
    }
    const size_t ws = vivim_selective_scan_workspace_size(batch, dim, seqlen, dstate, groups);
    at::Tensor workspace;
    if (workspace_in.has_value() && workspace_in->defined()) {
        workspace = *workspace_in;
        VIVIM_CHECK(workspace.is_cuda() && workspace.device() == u.device() && workspace.is_contiguous() &&
                        (size_t)workspace.nbytes() >= ws,
                    "workspace must be a contiguous CUDA buffer of at least %zu bytes", ws);
    } else if (ws > 0) {
        workspace = at::empty({(int64_t)ws}, u.options().dtype(at::kByte));
    }

    vivim_scan_params_t p{};
    set_scan_inputs(p, u, delta, A, B, C, Dv, z, bias, vdt, delta_softplus);
    p.out = out.data_ptr();
    const cudaError_t err = vivim_selective_scan_fwd(&p, workspace.defined() ? workspace.data_ptr() : nullptr, ws,
                                                     c10::cuda::getCurrentCUDAStream().stream());
    VIVIM_CHECK(err == cudaSuccess, "launch failed: %s", cudaGetErrorString(err));
    return out;
}

// Backward, dstate <= 16: u, delta, B and C as (batch, G, N, L), z and dout contiguous in one dtype (fp32, fp16 or
// bf16) on one CUDA device; A, D and delta_bias contiguous fp32. Returns [du, ddelta, dz, dA, dB, dC, dD,
// ddelta_bias] (du, ddelta, dz in u's dtype, the rest fp32; dz, dD, ddelta_bias None without their input), or an
// empty list (message recorded).
std::vector<at::Tensor> selective_scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                           const at::Tensor& B, const at::Tensor& C, const at::Tensor& dout,
                                           const c10::optional<at::Tensor>& D_in, const c10::optional<at::Tensor>& z_in,
                                           const c10::optional<at::Tensor>& bias_in, bool delta_softplus) {
    g_last_error[0] = '\0';
    const std::vector<at::Tensor> none;
    char sa[96];
    vivim_dtype_t vdt;
    if (!(u.defined() && u.is_cuda() && to_vivim_dtype(u.scalar_type(), &vdt))) {
        fail_msg("backward: u must be a float32, float16 or bfloat16 CUDA tensor");
        return none;
    }
    const at::Tensor z = z_in.has_value() ? *z_in : at::Tensor();
    const at::Tensor Dv = D_in.has_value() ? *D_in : at::Tensor();
    const at::Tensor bias = bias_in.has_value() ? *bias_in : at::Tensor();
    auto on_device = [&](const at::Tensor& t, at::ScalarType type) {
        return t.is_cuda() && t.device() == u.device() && t.scalar_type() == type && t.is_contiguous();
    };
    for (const at::Tensor* t : {&u, &delta, &B, &C, &dout, &z}) {
        if (t->defined() && !on_device(*t, u.scalar_type())) {
            fail_msg("backward: u, delta, B, C, z and dout must be contiguous, of one dtype, on one CUDA device");
            return none;
        }
    }
    for (const at::Tensor* t : {&A, &Dv, &bias}) {
        if (t->defined() && !on_device(*t, at::kFloat)) {
            fail_msg("backward: A, D and delta_bias must be contiguous float32 tensors on u's device");
            return none;
        }
    }
    if (u.dim() != 3 || delta.sizes() != u.sizes() || dout.sizes() != u.sizes() ||
        (z.defined() && z.sizes() != u.sizes()) || B.dim() != 4 || C.sizes() != B.sizes() || A.dim() != 2 ||
        A.size(0) != u.size(1) || B.size(0) != u.size(0) || B.size(2) != A.size(1) || B.size(3) != u.size(2) ||
        B.size(1) < 1 || u.size(1) % B.size(1) != 0 || (Dv.defined() && Dv.numel() != u.size(1)) ||
        (bias.defined() && bias.numel() != u.size(1))) {
        fail_msg("backward: inconsistent shapes (u %s)", shape_str(u.sizes(), sa));
        return none;
    }
    const c10::cuda::CUDAGuard guard(u.device());
    const int64_t batch = u.size(0), dim = u.size(1), seqlen = u.size(2);
    const auto f32 = u.options().dtype(at::kFloat);
    at::Tensor du = at::empty_like(u), ddelta = at::empty_like(u);
    at::Tensor dz = z.defined() ? at::empty_like(u) : at::Tensor();
    at::Tensor dA = at::zeros(A.sizes(), f32), dB = at::zeros(B.sizes(), f32), dC = at::zeros(C.sizes(), f32);
    at::Tensor dD = Dv.defined() ? at::zeros({dim}, f32) : at::Tensor();
    at::Tensor dbias = bias.defined() ? at::zeros({dim}, f32) : at::Tensor();
    const size_t ws = vivim_selective_scan_bwd_workspace_size(batch, dim, seqlen);
    at::Tensor workspace = at::empty({(int64_t)ws}, u.options().dtype(at::kByte));
    vivim_scan_bwd_params_t p{};
    set_scan_inputs(p, u, delta, A, B, C, Dv, z, bias, vdt, delta_softplus);
    p.dout = dout.data_ptr();
    p.du = du.data_ptr();
    p.ddelta = ddelta.data_ptr();
    p.dz = dz.defined() ? dz.data_ptr() : nullptr;
    p.dA = dA.data_ptr<float>();
    p.dB = dB.data_ptr<float>();
    p.dC = dC.data_ptr<float>();
    p.dD = dD.defined() ? dD.data_ptr<float>() : nullptr;
    p.ddelta_bias = dbias.defined() ? dbias.data_ptr<float>() : nullptr;
    const cudaError_t err = vivim_selective_scan_bwd(&p, workspace.data_ptr(), ws,
                                                     c10::cuda::getCurrentCUDAStream().stream());
    if (err != cudaSuccess) {
        fail_msg("backward launch failed: %s", cudaGetErrorString(err));
        return none;
    }
    return {du, ddelta, dz, dA, dB, dC, dD, dbias};
}

const char* last_error() { return g_last_error; }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "Vivim selective scan, CUDA forward and the scan core's backward";
    vivim_selective_scan_read_tuning_env();  // benchmarks tune the chunking through VIVIM_SCAN_* (the plugin never does)
    m.def("fwd", &selective_scan_fwd, "selective scan forward (CUDA)", py::arg("u"), py::arg("delta"), py::arg("A"),
          py::arg("B"), py::arg("C"), py::arg("D") = py::none(), py::arg("z") = py::none(),
          py::arg("delta_bias") = py::none(), py::arg("delta_softplus") = false, py::arg("out") = py::none(),
          py::arg("workspace") = py::none());
    m.def("bwd", &selective_scan_bwd, "selective scan backward, dstate <= 16 (CUDA)", py::arg("u"), py::arg("delta"),
          py::arg("A"), py::arg("B"), py::arg("C"), py::arg("dout"), py::arg("D") = py::none(),
          py::arg("z") = py::none(), py::arg("delta_bias") = py::none(), py::arg("delta_softplus") = false);
    m.def("last_error", &last_error, "message of the last failed fwd or bwd call on this thread");
    m.def("workspace_size", &vivim_selective_scan_workspace_size, "scratch bytes for (batch, dim, seqlen, dstate, groups)");
}
