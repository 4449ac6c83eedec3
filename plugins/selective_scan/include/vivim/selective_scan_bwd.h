// Vivim selective scan, backward (training only: the TensorRT plugin does not use it). Plain C launcher API.
//
// The gradients of the forward in selective_scan.h, for dstate <= 16, in one call: the elementwise chain around
// the recurrence (delta_bias and softplus, the D skip, the silu(z) gate) is computed in the kernels' staging and
// output steps, the recurrence in fp32:
//   dt_t = softplus(delta_t + delta_bias)  (or without either),   h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,
//   y_t  = sum_n C_t[n] h_t[n] + D u_t,    out_t = y_t silu(z_t)  (or y_t without z).
// Given dout = dL/dout:
//   du, ddelta, dz : [batch, dim, seqlen] in `dtype`          (overwritten; dz only with z)
//   dA             : [dim, dstate] fp32                       (accumulated: zero it first)
//   dB, dC         : [batch, n_groups, dstate, seqlen] fp32   (accumulated: zero it first)
//   dD, ddelta_bias: [dim] fp32                               (accumulated, only with D / delta_bias)
// Inputs use the forward's layouts and types (u, delta, B, C, z and dout in `dtype`; A, D, delta_bias fp32; dense,
// L fastest). Sums over channels (dB, dC) and over batch and time (dA, dD, ddelta_bias) use fp32 atomics: the last
// bits may differ from run to run. A caller with dstate > 16 runs slices of 16 states (they are independent) with
// the chain done outside: fp32, no delta_bias, no softplus, no D, no z, dout = the gradient of y.
#ifndef VIVIM_SELECTIVE_SCAN_BWD_H
#define VIVIM_SELECTIVE_SCAN_BWD_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#include "vivim/selective_scan.h"  // vivim_dtype_t

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int64_t batch;
    int64_t dim;          // channels D, divisible by n_groups
    int64_t seqlen;       // L >= 1
    int64_t dstate;       // N, 1..16
    int64_t n_groups;     // G >= 1
    vivim_dtype_t dtype;  // of u, delta, B, C, z, dout, du, ddelta and dz
    int delta_softplus;   // 0 or 1

    const void* u;
    const void* delta;
    const float* A;
    const void* B;
    const void* C;
    const float* D;           // may be NULL
    const void* z;            // may be NULL
    const float* delta_bias;  // may be NULL
    const void* dout;

    void* du;
    void* ddelta;
    void* dz;  // NULL exactly when z is
    float* dA;
    float* dB;
    float* dC;
    float* dD;           // NULL exactly when D is
    float* ddelta_bias;  // NULL exactly when delta_bias is
} vivim_scan_bwd_params_t;

// Bytes of scratch the backward needs: the states at every 32nd token, and, when the sequence is split into parts
// so that few (batch, channel) tiles still fill the GPU, three floats per (batch, channel, part, state). Host-only;
// a function of the sizes (and of VIVIM_SCAN_BWD_PARTS / VIVIM_SCAN_BWD_TARGET_BLOCKS, tuning knobs read per call).
size_t vivim_selective_scan_bwd_workspace_size(int64_t batch, int64_t dim, int64_t seqlen);

// Enqueue the backward on `stream`; no allocation, no synchronisation. cudaErrorInvalidValue for bad arguments
// (dstate > 16 among them). Needs 99 KB of shared memory per block (sm_80 and newer; the call sets the kernel's
// limit); on a device with less it returns the error of that setting.
cudaError_t vivim_selective_scan_bwd(const vivim_scan_bwd_params_t* params, void* workspace, size_t workspace_bytes,
                                     cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif  // VIVIM_SELECTIVE_SCAN_BWD_H
