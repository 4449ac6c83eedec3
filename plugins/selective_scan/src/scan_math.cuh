// Fast elementwise math shared by the forward (selective_scan.cu) and the backward (selective_scan_bwd.cu), so
// that the backward differentiates at exactly the dt and gate values the forward computed, and the element
// conversions both kernels use (fp32 inside, the call's dtype at the edges).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace vivim_scan_math {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// One special-function-unit instruction; relative error ~2^-22, enough for the fp32 contract.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float fast_rcp(float x) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// softplus(x) = max(x, 0) + ln2 * log2(1 + 2^(-|x| log2 e)): two special-function instructions and four fp32
// ops. Absolute error ~1e-7 (1 + e rounds to fp32 when e is tiny, where softplus ~ e is itself tiny).
// `e` receives 2^(-|x| log2 e), from which the backward forms the derivative sigmoid(x).
__device__ __forceinline__ float softplus_fast(float x, float& e) {
    e = fast_exp2(-fabsf(x) * kLog2e);
    float l;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(l) : "f"(1.f + e));
    return fmaf(l, kLn2, fmaxf(x, 0.f));
}
__device__ __forceinline__ float softplus_fast(float x) {
    float e;
    return softplus_fast(x, e);
}

// sigmoid(z) = 1 / (1 + 2^(-z log2 e)) with two special-function instructions and no range fix-ups: for very
// negative z the power overflows to +inf and rcp gives 0, the right limit; relative error ~2^-21 for |z| up to ~20
// (the rounding of -z log2 e grows with |z|, where sigmoid is ~0 or ~1).
__device__ __forceinline__ float sigmoid_fast(float z) { return fast_rcp(1.f + fast_exp2(-z * kLog2e)); }

__device__ __forceinline__ float silu(float z) { return z * sigmoid_fast(z); }

}  // namespace vivim_scan_math
