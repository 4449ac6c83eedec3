// Vivim selective scan, backward (see selective_scan_bwd.h for the contract).
//
// A block owns 16 channels of one group, one batch element and one part of the sequence; thread (channel c,
// state n), 16 states padded (N <= 16; the padded states have A = B = C = 0 and stay zero). A part is a run of
// whole 32-token segments. Up to three kernels:
//   part sums (only when the sequence is split): per part, from a zero state and a zero adjoint, the product of
//                      its decays, its end state and the adjoint it sends to the part before it;
//   states:            forward over the part's segments from the state folded from the parts before it, storing
//                      the state entering every segment in the workspace;
//   grads:             the part's segments last to first, from the adjoint folded from the parts after it; per
//                      segment it recomputes the 32 decays and entering states into registers from the stored
//                      state, then walks the tokens backwards with the adjoint G_t = C_t dy_t + exp(dt_{t+1} A) G_{t+1}:
//                        dA += G dt a h_{t-1},  ddt = sum_n G (B u + A a h_{t-1}),  du = sum_n G dt B,
//                        dB += G dt u,  dC += dy h_t     (dB, dC summed over the block's channels, then atomics;
//                                                         du, ddt over each channel's states, per 16-token half).
// du and the first term of ddt share sum_n G B (du = dt sum_n G B, ddt = u sum_n G B + sum_n G a h_{t-1} A).
// The elementwise chain rides along: staging computes dt = softplus(delta + bias), dt u and dy = dout silu(z) from
// the raw inputs (so no fp32 copies of them exist), with the forward's fast softplus, sigmoid and exp2
// (scan_math.cuh), so that the gradients are those of the values the forward computed; and the thread that writes a
// token's du, ddelta and dz (after summing the states' partials through shared memory) applies D, the softplus
// derivative and the gate's derivative there (the gate's needs y, summed over the states like du).
// Why parts: batch x channels / 16 blocks is too few to fill a GPU at Vivim's long stages (8 x 384 channels are
// 192 blocks, each walking 20480 tokens); splitting the sequence costs one more exp2 per element (the part sums)
// and buys as many times the blocks.
#include "vivim/selective_scan_bwd.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdlib>

#include "launch.cuh"
#include "scan_math.cuh"

namespace {

using namespace vivim_scan_math;  // the forward's softplus, sigmoid, exp2 (gradients at its exact values), to_f, from_f

constexpr int kCh = 16;    // channels per block
constexpr int kN = 16;     // states per channel (padded)
constexpr int kSeg = 32;   // tokens per segment (one stored state per segment)
constexpr int kHalf = 16;  // tokens whose dB/dC contributions are reduced together
constexpr int kThreads = kCh * kN;
constexpr int kPad = kSeg + 1;  // row stride of the staged tiles: lanes reading 16 rows hit 16 banks
// Splitting costs a pass (the part sums), so only grids of fewer than kSplitBelow blocks split, into enough parts
// for about kTargetBlocks blocks. Measured on an H200 at Vivim's training shapes (batch 8, G = 3;
// benchmarks/kernel_notes.md): 192 and 384 blocks gain 22% and 12% of the backward's time from ~4096 blocks; 960
// and 1536 lose 10-21% from the splits tried (2 and 4 parts).
constexpr int64_t kSplitBelow = 512;
constexpr int64_t kTargetBlocks = 4096;
constexpr int64_t kMaxParts = 64;  // each block folds the other parts' sums: keep that O(parts) walk short

// How the sequence splits into parts; a function of the sizes alone, so the workspace query and the launch agree.
struct Split {
    int64_t nseg;          // 32-token segments
    int64_t seg_per_part;  // segments per part (the last part may have fewer)
    int64_t parts;
};

// Per (batch, channel, part, state), fp32: what a part does to a state and to an adjoint passing through it.
struct PartSums {
    float* decay;  // product of the part's decays
    float* h;      // its end state from a zero entering state
    float* g;      // the adjoint it sends left from a zero adjoint entering on the right
};

struct Tile {
    int64_t b, g, d0;  // batch element, group, first channel
    int nch;           // channels of this block (the last tile of a group may be partial)
};

__device__ inline Tile tile_of(const vivim_scan_bwd_params_t& p) {
    const int64_t per_group = p.dim / p.n_groups;
    const int64_t tiles_per_group = (per_group + kCh - 1) / kCh;
    Tile t;
    t.g = blockIdx.x / tiles_per_group;
    const int64_t c0 = (blockIdx.x % tiles_per_group) * kCh;
    t.d0 = t.g * per_group + c0;
    t.nch = (int)(per_group - c0 < kCh ? per_group - c0 : kCh);
    t.b = blockIdx.y;
    return t;
}

// One past the last segment of part q.
__device__ inline int64_t part_end(const Split& sp, int64_t q) {
    const int64_t end = (q + 1) * sp.seg_per_part;
    return end < sp.nseg ? end : sp.nseg;
}

// Index of (batch b, channel d, part q, state n) in a PartSums array.
__device__ inline int64_t sums_at(const vivim_scan_bwd_params_t& p, const Tile& tl, int64_t d, int64_t q,
                                  int64_t parts, int n) {
    return ((tl.b * p.dim + d) * parts + q) * kN + n;
}

// Calls f(r, k, i) for every (row r < kCh, token k < kSeg) of a staged tile; i is the element's offset in a
// row-major [rows, L] array, or -1 outside it (the tile is then zero there: an identity step).
template <typename F>
__device__ inline void for_tile(int rows, int64_t L, int64_t t0, F&& f) {
    for (int e = threadIdx.x; e < kCh * kSeg; e += kThreads) {
        const int r = e / kSeg, k = e % kSeg;
        const int64_t t = t0 + k;
        f(r, k, r < rows && t < L ? (int64_t)r * L + t : (int64_t)-1);
    }
}

// The group's B or C rows.
template <typename T>
__device__ inline void stage_states(float (*s)[kPad], const void* src, const vivim_scan_bwd_params_t& p,
                                    const Tile& tl, int64_t t0) {
    const T* x = static_cast<const T*>(src) + (tl.b * p.n_groups + tl.g) * p.dstate * p.seqlen;
    for_tile((int)p.dstate, p.seqlen, t0, [&](int r, int k, int64_t i) { s[r][k] = i >= 0 ? to_f(x[i]) : 0.f; });
}

// The tile's channel rows (tokens [t0, t0 + kSeg)): dt = softplus(delta + delta_bias) (each optional) and dt * u;
// when given, u itself and d dt / d delta (1 without softplus).
template <typename T>
__device__ inline void stage_dt_u(float (*s_dt)[kPad], float (*s_dtu)[kPad], float (*s_u)[kPad], float (*s_sig)[kPad],
                                  const vivim_scan_bwd_params_t& p, const Tile& tl, int64_t t0) {
    const int64_t row = (tl.b * p.dim + tl.d0) * p.seqlen;
    const T* delta = static_cast<const T*>(p.delta) + row;
    const T* u = static_cast<const T*>(p.u) + row;
    for_tile(tl.nch, p.seqlen, t0, [&](int r, int k, int64_t i) {
        float dt = 0.f, sig = 0.f, uu = 0.f;
        if (i >= 0) {
            const float x = to_f(delta[i]) + (p.delta_bias != nullptr ? p.delta_bias[tl.d0 + r] : 0.f);
            uu = to_f(u[i]);
            dt = x;
            sig = 1.f;
            if (p.delta_softplus) {
                float e;  // 2^(-|x| log2 e) in (0, 1]: no overflow either side
                dt = softplus_fast(x, e);
                sig = (x >= 0.f ? 1.f : e) * fast_rcp(1.f + e);
            }
        }
        s_dt[r][k] = dt;
        s_dtu[r][k] = dt * uu;
        if (s_u != nullptr) s_u[r][k] = uu;
        if (s_sig != nullptr) s_sig[r][k] = sig;
    });
}

// dy = dout * silu(z) (dout without z) and, when s_dzf is given, dout * silu'(z), so that dz = dzf * y.
template <typename T>
__device__ inline void stage_dy(float (*s_dy)[kPad], float (*s_dzf)[kPad], const vivim_scan_bwd_params_t& p,
                                const Tile& tl, int64_t t0) {
    const int64_t row = (tl.b * p.dim + tl.d0) * p.seqlen;
    const T* dout = static_cast<const T*>(p.dout) + row;
    const T* z = p.z != nullptr ? static_cast<const T*>(p.z) + row : nullptr;
    for_tile(tl.nch, p.seqlen, t0, [&](int r, int k, int64_t i) {
        float g = 0.f, dzf = 0.f;
        if (i >= 0) {
            g = to_f(dout[i]);
            if (z != nullptr) {
                const float zz = to_f(z[i]);
                const float sg = sigmoid_fast(zz);  // the power's overflow gives sg = 0, silu = 0: right
                dzf = g * sg * (1.f + zz * (1.f - sg));
                g *= zz * sg;
            }
        }
        s_dy[r][k] = g;
        if (s_dzf != nullptr) s_dzf[r][k] = dzf;
    });
}

template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_part_sums_kernel(const vivim_scan_bwd_params_t p, const Split sp,
                                                                 const PartSums sums) {
    __shared__ float s_dt[kCh][kPad], s_dtu[kCh][kPad], s_dy[kCh][kPad], s_B[kN][kPad], s_C[kN][kPad];
    const Tile tl = tile_of(p);
    const int c = threadIdx.x / kN, n = threadIdx.x % kN;
    const int64_t d = tl.d0 + c, part = blockIdx.z;
    const int64_t s0 = part * sp.seg_per_part, s1 = part_end(sp, part);  // this block's segments
    const float A2 = (c < tl.nch && n < p.dstate) ? p.A[d * p.dstate + n] * kLog2e : 0.f;  // exp(dt A) = 2^(dt A2)
    float h = 0.f, decay = 1.f, g = 0.f;
    for (int64_t seg = s0; seg < s1; ++seg) {
        stage_dt_u<T>(s_dt, s_dtu, nullptr, nullptr, p, tl, seg * kSeg);
        stage_dy<T>(s_dy, nullptr, p, tl, seg * kSeg);
        stage_states<T>(s_B, p.B, p, tl, seg * kSeg);
        stage_states<T>(s_C, p.C, p, tl, seg * kSeg);
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < kSeg; ++k) {
            const float dtk = s_dt[c][k];
            const float a = fast_exp2(dtk * A2);
            h = a * h + s_dtu[c][k] * s_B[n][k];
            decay *= a;  // the adjoint of token t reaches the part's start through the decays of tokens s0..t
            g += decay * (s_C[n][k] * s_dy[c][k]);
        }
        __syncthreads();
    }
    if (c < tl.nch) {
        const int64_t i = sums_at(p, tl, d, part, sp.parts, n);
        sums.decay[i] = decay;
        sums.h[i] = h;
        sums.g[i] = g;
    }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_states_kernel(const vivim_scan_bwd_params_t p, const Split sp,
                                                              const PartSums sums, float* __restrict__ states) {
    __shared__ float s_dt[kCh][kPad], s_dtu[kCh][kPad], s_B[kN][kPad];
    const Tile tl = tile_of(p);
    const int c = threadIdx.x / kN, n = threadIdx.x % kN;
    const int64_t d = tl.d0 + c, part = blockIdx.z;
    const int64_t s0 = part * sp.seg_per_part, s1 = part_end(sp, part);  // this block's segments
    const float A2 = (c < tl.nch && n < p.dstate) ? p.A[d * p.dstate + n] * kLog2e : 0.f;  // exp(dt A) = 2^(dt A2)
    float* my_states = states + (tl.b * p.dim + d) * sp.nseg * kN + n;
    float h = 0.f;  // the state entering the part: the earlier parts' sums folded in order
    if (c < tl.nch) {
        for (int64_t q = 0; q < part; ++q) {
            const int64_t i = sums_at(p, tl, d, q, sp.parts, n);
            h = sums.decay[i] * h + sums.h[i];
        }
    }
    for (int64_t seg = s0; seg < s1; ++seg) {
        if (c < tl.nch) my_states[seg * kN] = h;
        stage_dt_u<T>(s_dt, s_dtu, nullptr, nullptr, p, tl, seg * kSeg);
        stage_states<T>(s_B, p.B, p, tl, seg * kSeg);
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < kSeg; ++k) {
            const float dtk = s_dt[c][k];
            h = fast_exp2(dtk * A2) * h + s_dtu[c][k] * s_B[n][k];
        }
        __syncthreads();
    }
}

// The grads kernel's shared memory (99 KB: dynamic). Per-state partials of a 16-token half go through it twice: dB
// and dC summed over the block's channels; G B, G a h A and y over each channel's states (rows padded by one float
// so that the 16 tokens of a channel, read by 16 lanes, fall in 16 banks). du = dt sum_n G B and ddt = u sum_n G B +
// sum_n G a h A share the first sum.
constexpr int kRow = kThreads + 1;
struct GradsSmem {
    float u[kCh][kPad], dt[kCh][kPad], dtu[kCh][kPad], dy[kCh][kPad], sig[kCh][kPad], dzf[kCh][kPad];
    float B[kN][kPad], C[kN][kPad];
    float gB[kHalf][kThreads], gC[kHalf][kThreads];  // [token][channel * kN + state]
    float gGB[kHalf][kRow], gdA[kHalf][kRow], y[kHalf][kRow];
};

// Sums over 16 channels or states are split into kLanes interleaved partial sums, added at the end.
constexpr int kLanes = 4;
__device__ __forceinline__ float sum_lanes(const float (&x)[kLanes]) { return (x[0] + x[1]) + (x[2] + x[3]); }

template <typename T>
__global__ void __launch_bounds__(kThreads, 2) bwd_grads_kernel(const vivim_scan_bwd_params_t p, const Split sp,
                                                             const PartSums sums, const float* __restrict__ states) {
    extern __shared__ float4 smem_raw[];
    GradsSmem& sm = *reinterpret_cast<GradsSmem*>(smem_raw);
    const Tile tl = tile_of(p);
    // thread (channel c, state n); in the output step the same thread writes token n of its half for channel c
    const int c = threadIdx.x / kN, n = threadIdx.x % kN;
    const bool valid = c < tl.nch && n < p.dstate;
    const int64_t L = p.seqlen, d = tl.d0 + c, part = blockIdx.z;
    const int64_t s0 = part * sp.seg_per_part, s1 = part_end(sp, part);  // this block's segments
    const float A = valid ? p.A[d * p.dstate + n] : 0.f;
    const float A2 = A * kLog2e;  // exp(dt A) = 2^(dt A2), as the forward computes it
    const float Dc = (c < tl.nch && p.D != nullptr) ? p.D[d] : 0.f;
    const bool gated = p.z != nullptr;
    const int64_t row = (tl.b * p.dim + d) * L;  // this thread's channel row in u, delta, z, dout, du, ddelta, dz
    const int64_t bc = (tl.b * p.n_groups + tl.g) * p.dstate * L;
    const float* my_states = states + (tl.b * p.dim + d) * sp.nseg * kN + n;
    T* du = static_cast<T*>(p.du) + row;
    T* ddelta = static_cast<T*>(p.ddelta) + row;
    T* dz = gated ? static_cast<T*>(p.dz) + row : nullptr;

    float carry = 0.f;  // exp(dt_{t+1} A) G_{t+1}: the adjoint arriving from the later tokens
    if (c < tl.nch) {   // entering the part: the later parts' sums folded from the last one back
        for (int64_t q = sp.parts - 1; q > part; --q) {
            const int64_t i = sums_at(p, tl, d, q, sp.parts, n);
            carry = sums.decay[i] * carry + sums.g[i];
        }
    }
    float dA = 0.f, dD = 0.f, dbias = 0.f;
    for (int64_t seg = s1 - 1; seg >= s0; --seg) {
        const int64_t t0 = seg * kSeg;
        stage_dt_u<T>(sm.dt, sm.dtu, sm.u, sm.sig, p, tl, t0);
        stage_dy<T>(sm.dy, gated ? sm.dzf : nullptr, p, tl, t0);
        stage_states<T>(sm.B, p.B, p, tl, t0);
        stage_states<T>(sm.C, p.C, p, tl, t0);
        __syncthreads();
        // the segment's decays and the state before each token, in registers (h_prev[k + 1] is the state after k)
        float a[kSeg], h_prev[kSeg];
        float h = c < tl.nch ? my_states[seg * kN] : 0.f;
#pragma unroll
        for (int k = 0; k < kSeg; ++k) {
            a[k] = fast_exp2(sm.dt[c][k] * A2);
            h_prev[k] = h;
            h = a[k] * h + sm.dtu[c][k] * sm.B[n][k];
        }
        const float h_last = h;
#pragma unroll
        for (int half = 1; half >= 0; --half) {
#pragma unroll
            for (int j = kHalf - 1; j >= 0; --j) {
                const int k = half * kHalf + j;
                const float Ck = sm.C[n][k], dyk = sm.dy[c][k];
                const float G = Ck * dyk + carry;
                const float h_k = k + 1 < kSeg ? h_prev[k + 1] : h_last;
                const float decay_grad = G * a[k] * h_prev[k];  // dL/d(dt A)
                dA += decay_grad * sm.dt[c][k];
                sm.gB[j][threadIdx.x] = G * sm.dtu[c][k];
                sm.gC[j][threadIdx.x] = dyk * h_k;
                sm.gGB[j][threadIdx.x] = G * sm.B[n][k];
                sm.gdA[j][threadIdx.x] = decay_grad * A;
                if (gated) sm.y[j][threadIdx.x] = Ck * h_k;  // this state's part of y (for the gate)
                carry = a[k] * G;
            }
            __syncthreads();
            {  // dB, dC of these 16 tokens: sum over the block's channels, one atomic per (state, token)
                const int j = threadIdx.x / kN, s = threadIdx.x % kN;
                const int64_t t = t0 + half * kHalf + j;
                if (s < p.dstate && t < L) {
                    float sum_b[kLanes] = {}, sum_c[kLanes] = {};  // independent chains: latency, not issue, bounds
#pragma unroll
                    for (int cc = 0; cc < kCh; ++cc) {
                        if (cc < tl.nch) {  // a partial tile's missing channels are not summed (a 0 * inf there)
                            sum_b[cc % kLanes] += sm.gB[j][cc * kN + s];
                            sum_c[cc % kLanes] += sm.gC[j][cc * kN + s];
                        }
                    }
                    atomicAdd(p.dB + bc + (int64_t)s * L + t, sum_lanes(sum_b));
                    atomicAdd(p.dC + bc + (int64_t)s * L + t, sum_lanes(sum_c));
                }
            }
            {  // du, ddelta, dz of token n of this half for channel c: sums over the channel's states
                const int k = half * kHalf + n;
                const int64_t t = t0 + k;
                if (c < tl.nch && t < L) {
                    float gb_l[kLanes] = {}, gda_l[kLanes] = {}, y_l[kLanes] = {};
#pragma unroll
                    for (int m = 0; m < kN; ++m) {
                        gb_l[m % kLanes] += sm.gGB[n][c * kN + m];
                        gda_l[m % kLanes] += sm.gdA[n][c * kN + m];
                        if (gated) y_l[m % kLanes] += sm.y[n][c * kN + m];
                    }
                    const float gb = sum_lanes(gb_l), gda = sum_lanes(gda_l), y = sum_lanes(y_l);
                    const float dyk = sm.dy[c][k], uk = sm.u[c][k];
                    const float dd = (uk * gb + gda) * sm.sig[c][k];
                    du[t] = from_f<T>(sm.dt[c][k] * gb + Dc * dyk);
                    ddelta[t] = from_f<T>(dd);
                    if (gated) dz[t] = from_f<T>(sm.dzf[c][k] * (y + Dc * uk));
                    dD += dyk * uk;
                    dbias += dd;
                }
            }
            __syncthreads();
        }
    }
    if (valid) atomicAdd(p.dA + d * p.dstate + n, dA);
#pragma unroll
    for (int off = kN / 2; off > 0; off >>= 1) {  // dD, ddelta_bias: each lane summed its own tokens
        dD += __shfl_xor_sync(0xffffffffu, dD, off);
        dbias += __shfl_xor_sync(0xffffffffu, dbias, off);
    }
    if (n == 0 && c < tl.nch && p.dD != nullptr) atomicAdd(p.dD + d, dD);
    if (n == 0 && c < tl.nch && p.ddelta_bias != nullptr) atomicAdd(p.ddelta_bias + d, dbias);
}

template <typename T>
cudaError_t launch(const vivim_scan_bwd_params_t& p, const Split& sp, const PartSums& sums, float* states, dim3 grid,
                   cudaStream_t stream) {
    constexpr int grads_smem = (int)sizeof(GradsSmem);
    const cudaError_t e = cudaFuncSetAttribute(bwd_grads_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               grads_smem);
    if (e != cudaSuccess) {  // a device without 99 KB of shared memory per block
        (void)cudaGetLastError();  // reported through the return value; leave no error behind for the next check
        return e;
    }
    using vivim_scan_launch::launch;  // each launch's own status (not an earlier caller's error)
    const dim3 block(kThreads);
    cudaError_t launched = cudaSuccess;
    if (sp.parts > 1) launched = launch(bwd_part_sums_kernel<T>, grid, block, 0, stream, false, p, sp, sums);
    if (launched == cudaSuccess) launched = launch(bwd_states_kernel<T>, grid, block, 0, stream, false, p, sp, sums, states);
    if (launched == cudaSuccess)
        launched = launch(bwd_grads_kernel<T>, grid, block, (size_t)grads_smem, stream, false, p, sp, sums, states);
    return launched;
}

// VIVIM_SCAN_BWD_TARGET_BLOCKS (tuning: split any grid towards N blocks) and VIVIM_SCAN_BWD_PARTS (an exact part
// count, for tests and tuning) are read on every call, so a test can compare splits in one process.
static int64_t env_int(const char* name, int64_t lo, int64_t hi) {
    const char* e = getenv(name);
    const long long v = e != nullptr ? strtoll(e, nullptr, 10) : 0;
    return v >= lo && v <= hi ? (int64_t)v : 0;
}

static Split make_split(int64_t batch, int64_t dim, int64_t seqlen) {
    Split sp;
    sp.nseg = (seqlen + kSeg - 1) / kSeg;
    const int64_t target = env_int("VIVIM_SCAN_BWD_TARGET_BLOCKS", 1, 1 << 20);
    const int64_t blocks = batch * ((dim + kCh - 1) / kCh);  // a lower bound: groups only add partial tiles
    int64_t want = env_int("VIVIM_SCAN_BWD_PARTS", 1, kMaxParts);
    if (want == 0 && (target > 0 || blocks < kSplitBelow))
        want = ((target > 0 ? target : kTargetBlocks) + blocks - 1) / blocks;
    if (want > kMaxParts) want = kMaxParts;
    if (want > sp.nseg) want = sp.nseg;
    if (want < 1) want = 1;
    sp.seg_per_part = (sp.nseg + want - 1) / want;
    sp.parts = (sp.nseg + sp.seg_per_part - 1) / sp.seg_per_part;  // no empty part
    return sp;
}

static size_t states_bytes(int64_t batch, int64_t dim, const Split& sp) {
    return (size_t)(batch * dim * sp.nseg * kN) * sizeof(float);
}

static size_t sums_floats(int64_t batch, int64_t dim, const Split& sp) {
    return sp.parts > 1 ? (size_t)(batch * dim * sp.parts * kN) : 0;
}

}  // namespace

extern "C" size_t vivim_selective_scan_bwd_workspace_size(int64_t batch, int64_t dim, int64_t seqlen) {
    if (batch < 1 || dim < 1 || seqlen < 1) return 0;
    const Split sp = make_split(batch, dim, seqlen);
    return states_bytes(batch, dim, sp) + 3 * sums_floats(batch, dim, sp) * sizeof(float);
}

extern "C" cudaError_t vivim_selective_scan_bwd(const vivim_scan_bwd_params_t* p, void* workspace,
                                                size_t workspace_bytes, cudaStream_t stream) {
    if (p == nullptr || p->batch < 1 || p->dim < 1 || p->seqlen < 1 || p->dstate < 1 || p->dstate > kN ||
        p->n_groups < 1 || p->dim % p->n_groups != 0 || p->batch > 65535 ||
        (p->delta_softplus != 0 && p->delta_softplus != 1))
        return cudaErrorInvalidValue;
    if (!p->u || !p->delta || !p->A || !p->B || !p->C || !p->dout || !p->du || !p->ddelta || !p->dA || !p->dB ||
        !p->dC)
        return cudaErrorInvalidValue;
    // each optional input comes with its gradient, and only then
    if ((p->z == nullptr) != (p->dz == nullptr) || (p->D == nullptr) != (p->dD == nullptr) ||
        (p->delta_bias == nullptr) != (p->ddelta_bias == nullptr))
        return cudaErrorInvalidValue;
    if (workspace == nullptr ||
        workspace_bytes < vivim_selective_scan_bwd_workspace_size(p->batch, p->dim, p->seqlen))
        return cudaErrorInvalidValue;
    const int64_t per_group = p->dim / p->n_groups;
    const int64_t blocks = p->n_groups * ((per_group + kCh - 1) / kCh);
    if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
    const Split sp = make_split(p->batch, p->dim, p->seqlen);
    const dim3 grid((unsigned)blocks, (unsigned)p->batch, (unsigned)sp.parts);
    float* states = static_cast<float*>(workspace);
    float* sums_base = reinterpret_cast<float*>(static_cast<char*>(workspace) + states_bytes(p->batch, p->dim, sp));
    const size_t nsums = sums_floats(p->batch, p->dim, sp);
    const PartSums sums{sums_base, sums_base + nsums, sums_base + 2 * nsums};
    switch (p->dtype) {
        case VIVIM_DTYPE_F32: return launch<float>(*p, sp, sums, states, grid, stream);
        case VIVIM_DTYPE_F16: return launch<__half>(*p, sp, sums, states, grid, stream);
        case VIVIM_DTYPE_BF16: return launch<__nv_bfloat16>(*p, sp, sums, states, grid, stream);
        default: return cudaErrorInvalidValue;
    }
}
