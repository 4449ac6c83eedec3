// Vivim selective scan, backward of the scan core (see selective_scan_bwd.h for the contract).
//
// A block owns 16 channels of one group and one batch element; thread (channel c, state n), 16 states padded
// (N <= 16; the padded states have A = B = C = 0 and stay zero). It walks the whole sequence in 32-token segments:
//   kernel 1 (states): forward, storing the state entering every segment in the workspace;
//   kernel 2 (grads):  segments last to first; per segment it recomputes the 32 decays and entering states into
//                      registers from the stored state, then walks the tokens backwards with the adjoint
//                      G_t = C_t dy_t + exp(dt_{t+1} A) G_{t+1}:
//                        dA += G dt a h_{t-1},  ddt = sum_n G (B u + A a h_{t-1}),  du = sum_n G dt B,
//                        dB += G dt u,  dC += dy h_t     (dB, dC summed over the block's channels, then atomics).
// Sequential in time per (batch, channel): training batches give the parallelism (batch x channels x 16 threads).
#include "vivim/selective_scan_bwd.h"

#include <cuda_runtime.h>

namespace {

constexpr int kCh = 16;    // channels per block
constexpr int kN = 16;     // states per channel (padded)
constexpr int kSeg = 32;   // tokens per segment (one stored state per segment)
constexpr int kHalf = 16;  // tokens whose dB/dC contributions are reduced together
constexpr int kThreads = kCh * kN;
constexpr int kPad = kSeg + 1;  // row stride of the staged tiles: lanes reading 16 rows hit 16 banks

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

// Rows [0, rows) of a row-major [*, L] array, tokens [t0, t0 + kSeg), into s; zeros outside (identity steps).
__device__ inline void stage(float (*s)[kPad], const float* __restrict__ rows_base, int rows, int64_t L, int64_t t0) {
    for (int e = threadIdx.x; e < kCh * kSeg; e += kThreads) {
        const int r = e / kSeg, k = e % kSeg;
        const int64_t t = t0 + k;
        s[r][k] = (r < rows && t < L) ? rows_base[(int64_t)r * L + t] : 0.f;
    }
}

__global__ void __launch_bounds__(kThreads) bwd_states_kernel(const vivim_scan_bwd_params_t p, float* __restrict__ states) {
    __shared__ float s_u[kCh][kPad], s_dt[kCh][kPad], s_B[kN][kPad];
    const Tile tl = tile_of(p);
    const int c = threadIdx.x / kN, n = threadIdx.x % kN;
    const int64_t L = p.seqlen, nseg = (L + kSeg - 1) / kSeg, d = tl.d0 + c;
    const float A = (c < tl.nch && n < p.dstate) ? p.A[d * p.dstate + n] : 0.f;
    const float* u = p.u + (tl.b * p.dim + tl.d0) * L;
    const float* dt = p.dt + (tl.b * p.dim + tl.d0) * L;
    const float* B = p.B + (tl.b * p.n_groups + tl.g) * p.dstate * L;
    float* my_states = states + (tl.b * p.dim + d) * nseg * kN + n;
    float h = 0.f;
    for (int64_t seg = 0; seg < nseg; ++seg) {
        if (c < tl.nch) my_states[seg * kN] = h;
        stage(s_u, u, tl.nch, L, seg * kSeg);
        stage(s_dt, dt, tl.nch, L, seg * kSeg);
        stage(s_B, B, (int)p.dstate, L, seg * kSeg);
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < kSeg; ++k) {
            const float dtk = s_dt[c][k];
            h = __expf(dtk * A) * h + dtk * s_B[n][k] * s_u[c][k];
        }
        __syncthreads();
    }
}

__global__ void __launch_bounds__(kThreads) bwd_grads_kernel(const vivim_scan_bwd_params_t p,
                                                            const float* __restrict__ states) {
    __shared__ float s_u[kCh][kPad], s_dt[kCh][kPad], s_dy[kCh][kPad], s_B[kN][kPad], s_C[kN][kPad];
    __shared__ float s_gB[kHalf][kThreads], s_gC[kHalf][kThreads];  // [token][channel * kN + state]
    const Tile tl = tile_of(p);
    const int c = threadIdx.x / kN, n = threadIdx.x % kN;
    const bool valid = c < tl.nch && n < p.dstate;
    const int64_t L = p.seqlen, nseg = (L + kSeg - 1) / kSeg, d = tl.d0 + c;
    const float A = valid ? p.A[d * p.dstate + n] : 0.f;
    const int64_t row = (tl.b * p.dim + tl.d0) * L;  // first channel's row in u, dt, dy, du, ddt
    const int64_t bc = (tl.b * p.n_groups + tl.g) * p.dstate * L;
    const float* my_states = states + (tl.b * p.dim + d) * nseg * kN + n;
    float* du = p.du + row + (int64_t)c * L;
    float* ddt = p.ddt + row + (int64_t)c * L;
    const bool writes_row = n == 0 && c < tl.nch;

    float carry = 0.f;  // exp(dt_{t+1} A) G_{t+1}: the adjoint arriving from the later tokens
    float dA = 0.f;
    for (int64_t seg = nseg - 1; seg >= 0; --seg) {
        const int64_t t0 = seg * kSeg;
        stage(s_u, p.u + row, tl.nch, L, t0);
        stage(s_dt, p.dt + row, tl.nch, L, t0);
        stage(s_dy, p.dy + row, tl.nch, L, t0);
        stage(s_B, p.B + bc, (int)p.dstate, L, t0);
        stage(s_C, p.C + bc, (int)p.dstate, L, t0);
        __syncthreads();
        // the segment's decays and the state before each token, in registers
        float a[kSeg], h_prev[kSeg];
        float h = c < tl.nch ? my_states[seg * kN] : 0.f;
#pragma unroll
        for (int k = 0; k < kSeg; ++k) {
            const float dtk = s_dt[c][k];
            a[k] = __expf(dtk * A);
            h_prev[k] = h;
            h = a[k] * h + dtk * s_B[n][k] * s_u[c][k];
        }
#pragma unroll
        for (int half = 1; half >= 0; --half) {
#pragma unroll
            for (int j = kHalf - 1; j >= 0; --j) {
                const int k = half * kHalf + j;
                const float dtk = s_dt[c][k], uk = s_u[c][k], Bk = s_B[n][k], dyk = s_dy[c][k];
                const float G = s_C[n][k] * dyk + carry;
                const float h_k = a[k] * h_prev[k] + dtk * Bk * uk;
                s_gB[j][threadIdx.x] = G * dtk * uk;
                s_gC[j][threadIdx.x] = dyk * h_k;
                const float decay_grad = G * a[k] * h_prev[k];  // dL/d(dt A)
                dA += decay_grad * dtk;
                float gu = G * dtk * Bk;
                float gdt = G * Bk * uk + decay_grad * A;
                carry = a[k] * G;
#pragma unroll
                for (int off = kN / 2; off > 0; off >>= 1) {  // sum over the channel's 16 lanes
                    gu += __shfl_xor_sync(0xffffffffu, gu, off);
                    gdt += __shfl_xor_sync(0xffffffffu, gdt, off);
                }
                const int64_t t = t0 + k;
                if (writes_row && t < L) {
                    du[t] = gu;
                    ddt[t] = gdt;
                }
            }
            __syncthreads();
            {  // dB, dC of these 16 tokens: sum over the block's channels, one atomic per (state, token)
                const int j = threadIdx.x / kN, s = threadIdx.x % kN;
                const int64_t t = t0 + half * kHalf + j;
                if (s < p.dstate && t < L) {
                    float sum_b = 0.f, sum_c = 0.f;
                    for (int cc = 0; cc < tl.nch; ++cc) {
                        sum_b += s_gB[j][cc * kN + s];
                        sum_c += s_gC[j][cc * kN + s];
                    }
                    atomicAdd(p.dB + bc + (int64_t)s * L + t, sum_b);
                    atomicAdd(p.dC + bc + (int64_t)s * L + t, sum_c);
                }
            }
            __syncthreads();
        }
    }
    if (valid) atomicAdd(p.dA + d * p.dstate + n, dA);
}

}  // namespace

extern "C" size_t vivim_selective_scan_bwd_workspace_size(int64_t batch, int64_t dim, int64_t seqlen) {
    if (batch < 1 || dim < 1 || seqlen < 1) return 0;
    const int64_t nseg = (seqlen + kSeg - 1) / kSeg;
    return (size_t)(batch * dim * nseg * kN) * sizeof(float);
}

extern "C" cudaError_t vivim_selective_scan_bwd(const vivim_scan_bwd_params_t* p, void* workspace,
                                                size_t workspace_bytes, cudaStream_t stream) {
    if (p == nullptr || p->batch < 1 || p->dim < 1 || p->seqlen < 1 || p->dstate < 1 || p->dstate > kN ||
        p->n_groups < 1 || p->dim % p->n_groups != 0 || p->batch > 65535)
        return cudaErrorInvalidValue;
    if (!p->u || !p->dt || !p->A || !p->B || !p->C || !p->dy || !p->du || !p->ddt || !p->dA || !p->dB || !p->dC)
        return cudaErrorInvalidValue;
    if (workspace == nullptr ||
        workspace_bytes < vivim_selective_scan_bwd_workspace_size(p->batch, p->dim, p->seqlen))
        return cudaErrorInvalidValue;
    const int64_t per_group = p->dim / p->n_groups;
    const int64_t blocks = p->n_groups * ((per_group + kCh - 1) / kCh);
    if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
    const dim3 grid((unsigned)blocks, (unsigned)p->batch);
    float* states = static_cast<float*>(workspace);
    bwd_states_kernel<<<grid, kThreads, 0, stream>>>(*p, states);
    bwd_grads_kernel<<<grid, kThreads, 0, stream>>>(*p, states);
    return cudaGetLastError();
}
