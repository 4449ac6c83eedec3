// Vivim selective scan: plain C launcher API shared by the PyTorch binding and the TensorRT plugin.
// No torch and no TensorRT headers here, only the CUDA runtime types.
//
// Semantics (mamba-ssm selective_scan_fn, forward only):
//   dt      = delta + delta_bias            (delta_bias optional)
//   dt      = softplus(dt) if delta_softplus
//   h_t     = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t      (h_{-1} = 0, per channel d and state n)
//   y_t     = sum_n C_t[n] * h_t[n] + D * u_t                  (D optional)
//   y_t    *= silu(z_t)                                        (z optional)
// Layouts (dense, contiguous, L fastest):
//   u, delta, z, out : [batch, dim, seqlen]          in `dtype`
//   A                : [dim, dstate]                  fp32
//   B, C             : [batch, n_groups, dstate, seqlen] in `dtype`; channel d uses group d / (dim / n_groups)
//   D, delta_bias    : [dim]                          fp32
// All arithmetic of the recurrence is fp32.
#ifndef VIVIM_SELECTIVE_SCAN_H
#define VIVIM_SELECTIVE_SCAN_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    VIVIM_DTYPE_F32 = 0,
    VIVIM_DTYPE_F16 = 1,
    VIVIM_DTYPE_BF16 = 2
} vivim_dtype_t;

typedef struct {
    int64_t batch;
    int64_t dim;       // channels D (must be divisible by n_groups)
    int64_t seqlen;    // L >= 1
    int64_t dstate;    // N, 1..64
    int64_t n_groups;  // G >= 1
    vivim_dtype_t dtype;  // type of u, delta, B, C, z and out
    int delta_softplus;   // 0 or 1

    const void* u;
    const void* delta;
    const float* A;
    const void* B;
    const void* C;
    const float* D;           // may be NULL
    const void* z;            // may be NULL
    const float* delta_bias;  // may be NULL
    void* out;
} vivim_scan_params_t;

// Bytes of scratch the forward needs for these sizes (0 is a valid answer). Host-only, no CUDA calls.
size_t vivim_selective_scan_workspace_size(int64_t batch, int64_t dim, int64_t seqlen, int64_t dstate,
                                           int64_t n_groups);

// Let this process's VIVIM_SCAN_* tuning variables of the forward (benchmarking only) change the chunking; call it
// before the first scan. Without it they are ignored, so the workspace size and the results depend on the sizes
// alone, wherever the process runs (a TensorRT engine sizes its workspace where it is built). The backward's
// VIVIM_SCAN_BWD_* are read on every backward call (training only: no engine runs it).
void vivim_selective_scan_read_tuning_env(void);

// Enqueue the forward scan on `stream`. No allocation, no synchronisation (CUDA-graph capturable).
// `workspace` must hold at least vivim_selective_scan_workspace_size(...) bytes (may be NULL if that is 0).
// Returns cudaSuccess, cudaErrorInvalidValue for bad arguments, or the launch error.
cudaError_t vivim_selective_scan_fwd(const vivim_scan_params_t* params, void* workspace,
                                     size_t workspace_bytes, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif  // VIVIM_SELECTIVE_SCAN_H
