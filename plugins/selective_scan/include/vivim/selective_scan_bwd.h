// Vivim selective scan, backward (training only: the TensorRT plugin does not use it). Plain C launcher API.
//
// The caller (vivim/ops/cuda_backward.py) reduces the full op to its scan core, all fp32:
//   h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t,   y_t = sum_n C_t[n] * h_t[n]
// with dt already through delta_bias and softplus. Given dy = dL/dy it returns
//   du, ddt : [batch, dim, seqlen]            (overwritten)
//   dA      : [dim, dstate]                   (accumulated: zero it first)
//   dB, dC  : [batch, n_groups, dstate, seqlen] (accumulated: zero it first)
// D, the z gate and the softplus chain are elementwise and stay with the caller.
// Gradients summed over channels (dB, dC) and over batch and time (dA) use fp32 atomics: the last bits may differ
// from run to run. dstate <= 16.
#ifndef VIVIM_SELECTIVE_SCAN_BWD_H
#define VIVIM_SELECTIVE_SCAN_BWD_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int64_t batch;
    int64_t dim;       // channels D, divisible by n_groups
    int64_t seqlen;    // L >= 1
    int64_t dstate;    // N, 1..16
    int64_t n_groups;  // G >= 1

    const float* u;   // [batch, dim, seqlen]
    const float* dt;  // [batch, dim, seqlen]
    const float* A;   // [dim, dstate]
    const float* B;   // [batch, n_groups, dstate, seqlen]
    const float* C;   // [batch, n_groups, dstate, seqlen]
    const float* dy;  // [batch, dim, seqlen]
    float* du;
    float* ddt;
    float* dA;
    float* dB;
    float* dC;
} vivim_scan_bwd_params_t;

// Bytes of scratch the backward needs (the states at every 32nd token). Host-only.
size_t vivim_selective_scan_bwd_workspace_size(int64_t batch, int64_t dim, int64_t seqlen);

// Enqueue the backward on `stream`; no allocation, no synchronisation. cudaErrorInvalidValue for bad arguments
// (dstate > 16 among them: the caller runs larger N as slices of 16 states, which are independent).
cudaError_t vivim_selective_scan_bwd(const vivim_scan_bwd_params_t* params, void* workspace, size_t workspace_bytes,
                                     cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif  // VIVIM_SELECTIVE_SCAN_BWD_H
