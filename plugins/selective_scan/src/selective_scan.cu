// Vivim selective scan, forward: chunked along the sequence so that batch 1 with a long L fills the GPU.
//
// The recurrence h_t = a_t * h_{t-1} + b_t (per channel d and state n) is linear, so a chunk of tokens
// [t0, t1) acts on its incoming state as h_out = P * h_in + h_loc, where P = exp(A * sum(dt)) and h_loc is
// the chunk's end state started from zero. Three kernels:
//   1. chunk pass, FINAL=false: each block scans one chunk for a tile of channels from a zero state and
//      writes h_loc and sum(dt) into the workspace.
//   2. carry pass: per (batch, channel, state), a short scan over the chunks turns h_loc into the true
//      state entering each chunk (in place).
//   3. chunk pass, FINAL=true: each block rescans its chunk from that state and writes y.
// A problem with a single chunk runs kernel 3 alone from a zero state (no workspace). Small problems with short
// sequences (L <= 512, N <= 16, batch * dim * L <= 1.5 M, 1 M when L > 320) take the resident pass instead
// (resident_pass.cuh).
//
// Each channel is handled by K = N/8 lanes of one warp, 8 states per lane in registers; y of a token is the sum
// of the K lanes' partial sums, added from shared memory by the lane that writes the token. B_t and C_t (shared
// by every channel of a group) are staged per 16-token tile in shared memory and read as 16-byte broadcasts; each
// lane stages its slice of its channel's row with 16-byte loads. Softplus runs once (kernel 1 caches dt for
// kernel 3), the next tile's loads are in flight during the current one, and a tile costs one block barrier;
// problems with at most 8 chunks skip the carry pass (kernel 3 folds the chunk states itself).
// Kernels 2 and 3 use programmatic dependent launch on sm_90+ (they overlap their launch and first staging with
// the kernel before them). The cost is dominated by the exp2 per (channel, state, token) on the special-function
// unit, twice (kernels 1 and 3). Measured numbers and the analysis: benchmarks/kernel_notes.md.
//
// No allocation, no synchronisation with the host: CUDA-graph capturable. Deterministic (no atomics); the
// chunking depends only on the problem sizes, so results do not depend on the GPU model.
#include "vivim/selective_scan.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <utility>

#include "launch.cuh"
#include "scan_math.cuh"

namespace vivim_scan {

constexpr int kTileTokens = 16;      // tokens staged per shared-memory tile; chunk lengths are multiples of it
constexpr int kMaxChannels = 128;    // channels per block (= threads per block)
constexpr int kTargetBlocks = 1024;  // enough blocks to fill a large GPU several times over, evenly
constexpr int kMaxChunks = 512;     // bounds the workspace and the carry pass (n_chunks <= want <= 512)
using namespace vivim_scan_math;  // fast_exp2, softplus_fast, silu, kLog2e, to_f, from_f
using vivim_scan_launch::launch;

// ---------------------------------------------------------------------------------------------------
// Launch geometry, shared by the workspace-size query and the launcher so they always agree.
struct Geometry {
    int channels_per_block;   // CPB: a multiple of 32 / K, at most 64
    int64_t tiles_per_group;  // ceil(dim_per_group / CPB)
    int64_t chunk_len;        // multiple of kTileTokens
    int64_t n_chunks;
};

// The VIVIM_SCAN_* tuning variables are read only in a process that opted in with
// vivim_selective_scan_read_tuning_env() (the PyTorch binding does, for the benchmarks). A TensorRT plugin does not:
// an engine's workspace was sized where it was built, and the environment of the process that runs it must not
// change the chunking (a larger target needs more scratch than was reserved).
static std::atomic<bool> g_read_tuning_env{false};
static const char* tuning_env(const char* name) {
    return g_read_tuning_env.load(std::memory_order_relaxed) ? getenv(name) : nullptr;
}

// Blocks the chunking aims at (enough to fill a large GPU a few times over, evenly). VIVIM_SCAN_TARGET_BLOCKS
// overrides it (for tuning).
static int64_t target_blocks() {
    static const int64_t from_env = [] {
        const char* e = tuning_env("VIVIM_SCAN_TARGET_BLOCKS");
        const long v = e != nullptr ? strtol(e, nullptr, 10) : 0;
        return (int64_t)(v >= 1 && v <= 65536 ? v : 0);
    }();
    return from_env > 0 ? from_env : kTargetBlocks;
}

// Channels per block at most (64, the shared-memory tiles' size; VIVIM_SCAN_CPB=16|32 for tuning), and the largest
// chunk count for which kernel 3 folds the chunk states itself instead of a carry pass (VIVIM_SCAN_FOLD_MAX, tuning).
static int64_t channel_cap() {
    static const int64_t v = [] {
        const char* e = tuning_env("VIVIM_SCAN_CPB");
        const long x = e != nullptr ? strtol(e, nullptr, 10) : 0;
        return (int64_t)(x == 16 || x == 32 ? x : 64);
    }();
    return v;
}
static int64_t fold_max() {
    static const int64_t v = [] {
        const char* e = tuning_env("VIVIM_SCAN_FOLD_MAX");
        const long x = e != nullptr ? strtol(e, nullptr, 10) : -1;
        return (int64_t)(x >= 0 && x <= 512 ? x : 8);
    }();
    return v;
}

// Lanes per channel: 8 states per lane.
static int lanes_per_channel(int64_t dstate) {
    return dstate <= 8 ? 1 : dstate <= 16 ? 2 : dstate <= 32 ? 4 : 8;
}

static Geometry make_geometry(int64_t batch, int64_t dim, int64_t seqlen, int64_t dstate, int64_t n_groups) {
    Geometry g;
    const int64_t lanes = lanes_per_channel(dstate);
    int64_t max_channels = kMaxChannels / lanes;
    if (max_channels > channel_cap()) max_channels = channel_cap();
    const int64_t quantum = lanes >= 32 ? 1 : 32 / lanes;  // keep whole warps
    const int64_t per_group = dim / n_groups;
    const int64_t dt = ((per_group + quantum - 1) / quantum) * quantum;
    g.channels_per_block = (int)(dt < max_channels ? dt : max_channels);
    g.tiles_per_group = (per_group + g.channels_per_block - 1) / g.channels_per_block;
    const int64_t target = target_blocks();
    const int64_t max_chunks = (seqlen + kTileTokens - 1) / kTileTokens;
    // When even one-tile chunks leave the grid under half the target (short sequences), halve the channel tiles
    // once (64 -> 32): measured faster at Vivim's last stage (D 1024, L 320), slower below 32.
    if (g.channels_per_block == 64 &&
        batch * n_groups * g.tiles_per_group * (max_chunks < kMaxChunks ? max_chunks : kMaxChunks) < target / 2) {
        g.channels_per_block = 32;
        g.tiles_per_group = (per_group + 31) / 32;
    }
    const int64_t channel_blocks = batch * n_groups * g.tiles_per_group;
    int64_t want = (target + channel_blocks - 1) / channel_blocks;  // chunks wanted
    if (want > max_chunks) want = max_chunks;
    if (want > kMaxChunks) want = kMaxChunks;
    if (want < 1) want = 1;
    int64_t len = (seqlen + want - 1) / want;
    len = ((len + kTileTokens - 1) / kTileTokens) * kTileTokens;
    g.chunk_len = len;
    g.n_chunks = (seqlen + len - 1) / len;
    return g;
}

// Programmatic dependent launch (sm_90+): a kernel launched with the PDL attribute may start while its
// predecessor in the stream still runs; it must wait here before reading what the predecessor wrote. Without
// the attribute, or below sm_90, these are no-ops.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// 16 consecutive tokens of one row <-> 16 floats in registers. `vec`: the row segment is 16-byte aligned and
// complete, so 16-byte loads/stores are used; otherwise element by element, padding with zeros.
union Pack4 {
    uint4 q;
    unsigned int w[4];
};

__device__ __forceinline__ unsigned int pack2(float a, float b, __half) {
    __half2 h = __floats2half2_rn(a, b);
    unsigned int w;
    memcpy(&w, &h, 4);
    return w;
}
__device__ __forceinline__ unsigned int pack2(float a, float b, __nv_bfloat16) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    unsigned int w;
    memcpy(&w, &h, 4);
    return w;
}

template <typename T>
__device__ __forceinline__ void store_row16(T* __restrict__ p, int nt, bool vec, const float (&v)[16]) {
    if (vec && nt == kTileTokens) {
        if constexpr (sizeof(T) == 4) {
#pragma unroll
            for (int k = 0; k < 4; ++k)
                reinterpret_cast<float4*>(p)[k] = make_float4(v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]);
        } else {
#pragma unroll
            for (int k = 0; k < 2; ++k) {
                Pack4 pk;
#pragma unroll
                for (int j = 0; j < 4; ++j) pk.w[j] = pack2(v[8 * k + 2 * j], v[8 * k + 2 * j + 1], T());
                reinterpret_cast<uint4*>(p)[k] = pk.q;
            }
        }
    } else {
#pragma unroll
        for (int k = 0; k < kTileTokens; ++k)
            if (k < nt) p[k] = from_f<T>(v[k]);
    }
}

// M consecutive tokens (M = 16 / lanes per channel) of one row; 16-byte accesses when M elements fill whole
// 16-byte words and the row segment is aligned, else element by element (padding with zeros).
template <typename T, int M>
__device__ __forceinline__ void store_rowM(T* __restrict__ p, int nvalid, bool vec, const float (&v)[M]) {
    if constexpr (M == kTileTokens) {
        store_row16(p, nvalid, vec, v);
    } else {
        if constexpr ((M * sizeof(T)) % 16 == 0) {
            if (vec && nvalid >= M) {
                constexpr int kWords = M * sizeof(T) / 16;
#pragma unroll
                for (int w = 0; w < kWords; ++w) {
                    if constexpr (sizeof(T) == 4) {
                        reinterpret_cast<float4*>(p)[w] = make_float4(v[4 * w], v[4 * w + 1], v[4 * w + 2], v[4 * w + 3]);
                    } else {
                        Pack4 pk;
#pragma unroll
                        for (int j = 0; j < 4; ++j) pk.w[j] = pack2(v[8 * w + 2 * j], v[8 * w + 2 * j + 1], T());
                        reinterpret_cast<uint4*>(p)[w] = pk.q;
                    }
                }
                return;
            }
        }
#pragma unroll
        for (int k = 0; k < M; ++k)
            if (k < nvalid) p[k] = from_f<T>(v[k]);
    }
}

struct KernelArgs {
    const void* u;
    const void* delta;
    const float* A;
    const void* B;
    const void* C;
    const float* D;
    const void* z;
    const float* delta_bias;
    void* out;
    int64_t dim, seqlen, n_groups, per_group, tiles_per_group, chunk_len, n_chunks;
    int dstate;
    int softplus;
    int vec;              // every row segment of a full tile is 16-byte aligned
    float* chunk_dt_sum;  // [batch, n_chunks, dim]
    float* chunk_state;   // [batch, n_chunks, dim, dstate]
    float* dt_cache;      // [batch, dim, seqlen] softplus'd dt from kernel 1, or null
    int vec_dt;           // dt_cache rows allow 16-byte accesses
    int fold;             // kernel 3 folds the chunk states itself (no carry pass)
    int res_channels;     // resident pass: channels per block
    int res_lanes;        // resident pass: lanes per channel, ceil(seqlen / 4)
    int res_tiles;        // resident pass: blocks per group, ceil(per_group / res_channels)
};

// ---------------------------------------------------------------------------------------------------
// Kernels 1 and 3: each channel is handled by K = N/8 lanes of one warp, 8 states per lane.
constexpr int kStatesPerLane = 8;

// Kernel 2, the chunk-carry pass: each thread owns up to 16 consecutive chunks of one (channel, state) pair,
// loads them once into registers (one memory round trip), and the segments of a pair are combined through
// shared memory. block = (16 pairs, S segments), S = ceil(n_chunks / 16) <= 32.
constexpr int kCarryPerThread = 16;
constexpr int kCarryPairs = 16;  // x: pairs per block; y: up to kMaxChunks / 16 = 32 segments

__global__ void __launch_bounds__(kCarryPairs * kMaxChunks / kCarryPerThread)
carry_pass(const KernelArgs p, int64_t n_pairs) {
    __shared__ float s_h[kMaxChunks / kCarryPerThread][kCarryPairs];
    __shared__ float s_sum[kMaxChunks / kCarryPerThread][kCarryPairs];
    pdl_allow_dependents();  // kernel 3 may launch and stage its first tile; it waits for us before reading
    pdl_wait();              // kernel 1's chunk states are complete and visible
    const int64_t q = (int64_t)blockIdx.x * kCarryPairs + threadIdx.x;
    const int s = threadIdx.y;
    const int S = blockDim.y;
    const bool valid = q < n_pairs;
    const int64_t qq = valid ? q : 0;
    const int64_t n = qq % p.dstate;
    const int64_t d = (qq / p.dstate) % p.dim;
    const int64_t b = qq / (p.dstate * p.dim);
    const float a2 = p.A[d * p.dstate + n] * kLog2e;
    const int64_t c_begin = (int64_t)s * kCarryPerThread;
    const int64_t sum_stride = p.dim;
    const int64_t state_stride = p.dim * p.dstate;
    const float* __restrict__ sums = p.chunk_dt_sum + (b * p.n_chunks) * p.dim + d;
    float* __restrict__ states = p.chunk_state + (b * p.n_chunks) * state_stride + d * p.dstate + n;

    // Each chunk's decay exp2(a * sum dt) is computed up front (independent), so the two walks below are chains
    // of one FMA per chunk.
    float dec[kCarryPerThread], st[kCarryPerThread];
    float sacc = 0.f;
#pragma unroll
    for (int k = 0; k < kCarryPerThread; ++k) {
        const bool in = valid && c_begin + k < p.n_chunks - 1;  // the last chunk's slot is never written
        const float sc = in ? sums[(c_begin + k) * sum_stride] : 0.f;
        st[k] = in ? states[(c_begin + k) * state_stride] : 0.f;
        dec[k] = fast_exp2(a2 * sc);  // padded entries: (decay 1, input 0), the identity
        sacc += sc;
    }
    float hacc = 0.f;
#pragma unroll
    for (int k = 0; k < kCarryPerThread; ++k) hacc = fmaf(dec[k], hacc, st[k]);
    s_h[s][threadIdx.x] = hacc;
    s_sum[s][threadIdx.x] = fast_exp2(a2 * sacc);  // the segment's decay
    __syncthreads();
    if (s == 0) {
        float run = 0.f;
        for (int k = 0; k < S; ++k) {
            const float hk = s_h[k][threadIdx.x];
            s_h[k][threadIdx.x] = run;  // state entering segment k
            run = fmaf(s_sum[k][threadIdx.x], run, hk);
        }
    }
    __syncthreads();
    float hin = s_h[s][threadIdx.x];
#pragma unroll
    for (int k = 0; k < kCarryPerThread; ++k) {
        if (valid && c_begin + k < p.n_chunks) states[(c_begin + k) * state_stride] = hin;
        hin = fmaf(dec[k], hin, st[k]);
    }
}

// ---------------------------------------------------------------------------------------------------
// Little work per (channel, state, token) and no wait on memory inside the tile loop:
//  - softplus runs once: kernel 1 writes dt (fp32) to the workspace and kernel 3 reads it back (a problem with
//    a single chunk runs kernel 3 alone and computes dt itself);
//  - staging stores (dt, dt*u) as one 8-byte word, so the inner loop is exp2 + three fp32 ops per state (+ one FMA
//    for y); softplus is the two-instruction form (softplus_fast);
//  - kernel 3: each lane leaves its partial y of every token in shared memory (no shuffle in the token loop); the
//    lane that writes a token adds the K partials, beside the (D*u, silu(z)) it staged there (no extra barrier);
//  - problems with at most 8 chunks skip the carry pass: kernel 3 folds the chunk end states itself;
//  - the next tile's global loads are issued before the current tile is computed (raw values in registers),
//    and shared tiles are double-buffered, so each 16-token tile costs one block barrier.
// B and C rows are staged by all threads, two tokens each. Blocks hold at most 64 channels (shared memory).
constexpr int kMaxBlockChannels = 64;
__host__ __device__ constexpr int block_threads(int K) {
    return (kMaxChannels / K < kMaxBlockChannels ? kMaxChannels / K : kMaxBlockChannels) * K;
}

// M consecutive elements of one row, as raw words in registers (loaded now, converted later).
template <typename T, int M>
struct RowRaw {
    static constexpr int kWords = M * (int)sizeof(T) / 4;  // M >= 2, so whole 32-bit words
    unsigned int w[kWords];
};

template <typename T, int M>
__device__ __forceinline__ void load_raw(const T* __restrict__ p, int nvalid, bool vec, RowRaw<T, M>& r) {
    constexpr int W = RowRaw<T, M>::kWords;
    if (vec && nvalid >= M) {
        if constexpr (W % 4 == 0) {
#pragma unroll
            for (int q = 0; q < W / 4; ++q) {
                const uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + q);
                r.w[4 * q] = v.x, r.w[4 * q + 1] = v.y, r.w[4 * q + 2] = v.z, r.w[4 * q + 3] = v.w;
            }
        } else if constexpr (W == 2) {
            const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
            r.w[0] = v.x, r.w[1] = v.y;
        } else {
            r.w[0] = __ldg(reinterpret_cast<const unsigned int*>(p));
        }
        return;
    }
    T e[M];
#pragma unroll
    for (int k = 0; k < M; ++k) e[k] = k < nvalid ? p[k] : from_f<T>(0.f);
    memcpy(r.w, e, sizeof(e));
}

template <typename T, int M>
__device__ __forceinline__ void zero_raw(RowRaw<T, M>& r) {
#pragma unroll
    for (int q = 0; q < RowRaw<T, M>::kWords; ++q) r.w[q] = 0u;  // +0.0 in every type
}

template <typename T, int M>
__device__ __forceinline__ void unpack_raw(const RowRaw<T, M>& r, float (&v)[M]) {
    T e[M];
    memcpy(e, r.w, sizeof(e));
#pragma unroll
    for (int k = 0; k < M; ++k) {
        v[k] = to_f(e[k]);
    }
}

// silu(z) of M raw gate values, or 1 where the call has no gate.
template <typename T, int M>
__device__ __forceinline__ void gate_of(const RowRaw<T, M>& raw, bool has_z, float (&gate)[M]) {
    if (has_z) {
        unpack_raw<T, M>(raw, gate);
#pragma unroll
        for (int k = 0; k < M; ++k) gate[k] = silu(gate[k]);
    } else {
#pragma unroll
        for (int k = 0; k < M; ++k) gate[k] = 1.f;
    }
}

// What one lane loads for one tile: its channel's row slices, and its share of the group's B (and C) rows.
template <typename T, int M, int BC_ITEMS, bool FINAL>
struct TileRaw {
    RowRaw<T, M> u;
    RowRaw<T, M> delta;    // raw delta (used when dt is not cached)
    RowRaw<float, M> dt;   // cached dt (kernel 3 of a multi-chunk problem)
    RowRaw<T, M> z;
    RowRaw<T, 2> b[BC_ITEMS];
    RowRaw<T, 2> c[FINAL ? BC_ITEMS : 1];
};

template <typename T, int K, bool FINAL>
__global__ void __launch_bounds__(block_threads(K), FINAL ? (sizeof(T) == 4 ? 4 : 5) : 6)
chunk_pass(const KernelArgs p) {
    constexpr int NPT = kStatesPerLane;
    constexpr int NMAX = K * NPT;
    constexpr int M = kTileTokens / K;  // tokens of a row each lane stages and writes
    constexpr int kRow = NMAX + 4;      // +4 words keeps rows 16-byte aligned for the broadcast reads
    constexpr int THREADS = block_threads(K);  // block size at most
    constexpr int CPB_MAX = THREADS / K;
    constexpr int BC_PAIRS = NMAX * kTileTokens / 2;  // (row, token pair) items of a B tile
    constexpr int BC_ITEMS = (BC_PAIRS + THREADS - 1) / THREADS;
    __shared__ __align__(16) float s_B[2][kTileTokens][kRow];
    __shared__ __align__(16) float s_C[FINAL ? 2 : 1][FINAL ? kTileTokens : 1][kRow];
    __shared__ float2 s_dt[2][kTileTokens][CPB_MAX];  // (dt, dt * u)
    // kernel 3: each lane's own (D*u, silu(z)) for the tokens it writes (written and read back by that lane only,
    // so one buffer is enough), and every lane's partial y of each token (read back by the writing lane of its
    // channel, in the same warp, after __syncwarp; rewritten only after the next tile's barrier)
    __shared__ float2 s_dg[FINAL ? kTileTokens : 1][CPB_MAX];
    __shared__ __align__(16) float s_part[FINAL ? kTileTokens : 1][FINAL ? THREADS : 1];

    if (!FINAL) pdl_allow_dependents();  // the carry pass may launch now; it waits for our results itself
    if (!FINAL && blockIdx.y == p.n_chunks - 1) return;  // the last chunk's end state is never needed
    const int tid = threadIdx.x;
    const int CPB = blockDim.x / K;
    const int c = tid / K;
    const int j = tid % K;
    const int64_t group = blockIdx.x / p.tiles_per_group;
    const int64_t d0 = group * p.per_group + (blockIdx.x % p.tiles_per_group) * CPB;
    const int64_t d_end_group = (group + 1) * p.per_group;
    const int n_ch = (int)((d_end_group - d0) < CPB ? (d_end_group - d0) : CPB);
    const int64_t chunk = blockIdx.y;
    const int64_t b = blockIdx.z;
    const int64_t t_begin = chunk * p.chunk_len;
    int64_t t_end = t_begin + p.chunk_len;
    if (t_end > p.seqlen) t_end = p.seqlen;
    const bool vec = p.vec != 0;
    // kernel 1 computed dt already (for every chunk but the last, which it skips)
    const bool use_cache = FINAL && p.dt_cache != nullptr && chunk < p.n_chunks - 1;

    const bool active = c < n_ch;
    const int64_t d = d0 + (active ? c : 0);
    const int64_t row_off = (b * p.dim + d) * p.seqlen;
    const T* u_row = static_cast<const T*>(p.u) + row_off;
    const T* delta_row = static_cast<const T*>(p.delta) + row_off;
    const T* z_row = (FINAL && p.z != nullptr) ? static_cast<const T*>(p.z) + row_off : nullptr;
    T* out_row = FINAL ? static_cast<T*>(p.out) + row_off : nullptr;
    float* dt_row = p.dt_cache != nullptr ? p.dt_cache + row_off : nullptr;
    const T* Bg = static_cast<const T*>(p.B) + (b * p.n_groups + group) * p.dstate * p.seqlen;
    const T* Cg = static_cast<const T*>(p.C) + (b * p.n_groups + group) * p.dstate * p.seqlen;
    const int n0 = j * NPT;
    const int k0 = j * M;  // this lane's token slice of a tile

    float A2[NPT];
    float h[NPT];
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
        A2[i] = (active && n0 + i < p.dstate) ? p.A[d * p.dstate + n0 + i] * kLog2e : 0.f;
        h[i] = 0.f;
    }
    const float bias = (p.delta_bias != nullptr && active) ? p.delta_bias[d] : 0.f;
    const float Dd = (FINAL && p.D != nullptr && active) ? p.D[d] : 0.f;
    float dt_sum = 0.f;

    auto tile_len = [&](int64_t t0) { return (int)((t_end - t0) < kTileTokens ? (t_end - t0) : kTileTokens); };
    // B/C item `item`: row n, tokens kk and kk + 1 of a tile. Loaded raw into registers, later staged.
    auto load_bc = [&](int item, int64_t t0, RowRaw<T, 2>& rb, RowRaw<T, 2>& rc) {
        const int n = item / (kTileTokens / 2), kk = 2 * (item % (kTileTokens / 2));
        if (item < BC_PAIRS && n < p.dstate) {
            load_raw<T, 2>(Bg + n * p.seqlen + t0 + kk, tile_len(t0) - kk, vec, rb);
            if (FINAL) load_raw<T, 2>(Cg + n * p.seqlen + t0 + kk, tile_len(t0) - kk, vec, rc);
        } else {  // rows beyond N: zeros
            zero_raw<T, 2>(rb);
            if (FINAL) zero_raw<T, 2>(rc);
        }
    };
    auto stage_bc = [&](int item, int sbuf, const RowRaw<T, 2>& rb, const RowRaw<T, 2>& rc) {
        if (item >= BC_PAIRS) return;
        const int n = item / (kTileTokens / 2), kk = 2 * (item % (kTileTokens / 2));
        float v[2];
        unpack_raw<T, 2>(rb, v);
        s_B[sbuf][kk][n] = v[0];
        s_B[sbuf][kk + 1][n] = v[1];
        if (FINAL) {
            unpack_raw<T, 2>(rc, v);
            s_C[FINAL ? sbuf : 0][FINAL ? kk : 0][n] = v[0];
            s_C[FINAL ? sbuf : 0][FINAL ? kk + 1 : 0][n] = v[1];
        }
    };
    // Loads of one tile into registers. `dt_ready`: the cached dt may be read (kernel 3 reads it only after
    // the PDL wait, as kernel 1 wrote it).
    TileRaw<T, M, BC_ITEMS, FINAL> raw;
    auto load_dt = [&](int64_t t0) { load_raw<float, M>(dt_row + t0 + k0, tile_len(t0) - k0, p.vec_dt != 0, raw.dt); };
    auto load_tile = [&](int64_t t0, bool dt_ready) {
        const int nt = tile_len(t0);
        if (active) {
            load_raw<T, M>(u_row + t0 + k0, nt - k0, vec, raw.u);
            if (use_cache) {
                if (dt_ready) load_dt(t0);
            } else {
                load_raw<T, M>(delta_row + t0 + k0, nt - k0, vec, raw.delta);
            }
            if (FINAL && z_row != nullptr) load_raw<T, M>(z_row + t0 + k0, nt - k0, vec, raw.z);
        }
#pragma unroll
        for (int it = 0; it < BC_ITEMS; ++it) load_bc(tid + it * (int)blockDim.x, t0, raw.b[it], raw.c[FINAL ? it : 0]);
    };

    load_tile(t_begin, !FINAL);
    if (FINAL) {
        pdl_wait();  // the carry pass (and kernel 1 before it) are complete and visible from here on
        if (use_cache && active) load_dt(t_begin);
        if (chunk > 0 && active) {
            if (p.fold) {
                // Few chunks: fold the end states of chunks 0..chunk-1 (kernel 1) in order, h <- exp(A s) h + h_loc.
                for (int64_t q = 0; q < chunk; ++q) {
                    const int64_t cd = (b * p.n_chunks + q) * p.dim + d;
                    const float sq = p.chunk_dt_sum[cd];
                    const float* hq = p.chunk_state + cd * p.dstate;
#pragma unroll
                    for (int i = 0; i < NPT; ++i)
                        if (n0 + i < p.dstate) h[i] = fmaf(fast_exp2(A2[i] * sq), h[i], hq[n0 + i]);
                }
            } else {
                const float* hin = p.chunk_state + ((b * p.n_chunks + chunk) * p.dim + d) * p.dstate;
#pragma unroll
                for (int i = 0; i < NPT; ++i)
                    if (n0 + i < p.dstate) h[i] = hin[n0 + i];
            }
        }
    }

    int buf = 0;
    for (int64_t t0 = t_begin; t0 < t_end; t0 += kTileTokens) {
        const int nt = tile_len(t0);
        // 1. Registers -> shared tile `buf` (dt, dt*u; B, C; kernel 3: D*u and the gate).
        {
            float uv[M], dv[M];
            if (active) {
                unpack_raw<T, M>(raw.u, uv);
                if (use_cache) {
                    unpack_raw<float, M>(raw.dt, dv);
                } else {
                    unpack_raw<T, M>(raw.delta, dv);
#pragma unroll
                    for (int k = 0; k < M; ++k) {
                        float x = dv[k] + bias;
                        if (p.softplus) x = softplus_fast(x);
                        dv[k] = x;
                    }
                }
            } else {
#pragma unroll
                for (int k = 0; k < M; ++k) uv[k] = dv[k] = 0.f;
            }
#pragma unroll
            for (int k = 0; k < M; ++k) {
                const float x = k0 + k < nt ? dv[k] : 0.f;  // padded tokens: dt = 0 leaves the state unchanged
                dv[k] = x;
                dt_sum += x;
                s_dt[buf][k0 + k][c] = make_float2(x, x * uv[k]);
            }
            if (!FINAL && dt_row != nullptr && active) store_rowM<float, M>(dt_row + t0 + k0, nt - k0, p.vec_dt != 0, dv);
            if (FINAL) {
                float gate[M];
                gate_of<T, M>(raw.z, z_row != nullptr && active, gate);  // uniform but for inactive lanes
#pragma unroll
                for (int k = 0; k < M; ++k) s_dg[FINAL ? k0 + k : 0][c] = make_float2(Dd * uv[k], gate[k]);
            }
#pragma unroll
            for (int it = 0; it < BC_ITEMS; ++it) stage_bc(tid + it * (int)blockDim.x, buf, raw.b[it], raw.c[FINAL ? it : 0]);
        }
        // Items beyond the prefetched ones (blocks smaller than the largest): loaded and staged here.
        for (int item = tid + BC_ITEMS * (int)blockDim.x; item < BC_PAIRS; item += blockDim.x) {
            RowRaw<T, 2> rb, rc;
            load_bc(item, t0, rb, rc);
            stage_bc(item, buf, rb, rc);
        }
        // 2. The next tile's loads go out now and land while this tile is computed.
        if (t0 + kTileTokens < t_end) load_tile(t0 + kTileTokens, true);
        __syncthreads();  // tile `buf` complete; every thread is past the tile that last used buf ^ 1
        // 3. The recurrence over the 16 tokens (padded tokens are identity steps); kernel 3 leaves each lane's
        //    partial y of every token in s_part.
#pragma unroll 4
        for (int k = 0; k < kTileTokens; ++k) {
            const float2 dd = s_dt[buf][k][c];
            const float dtv = dd.x, dtu = dd.y;
            float y = 0.f;
#pragma unroll
            for (int i = 0; i < NPT; i += 4) {
                const float4 bq = *reinterpret_cast<const float4*>(&s_B[buf][k][n0 + i]);
                h[i + 0] = fmaf(fast_exp2(dtv * A2[i + 0]), h[i + 0], dtu * bq.x);
                h[i + 1] = fmaf(fast_exp2(dtv * A2[i + 1]), h[i + 1], dtu * bq.y);
                h[i + 2] = fmaf(fast_exp2(dtv * A2[i + 2]), h[i + 2], dtu * bq.z);
                h[i + 3] = fmaf(fast_exp2(dtv * A2[i + 3]), h[i + 3], dtu * bq.w);
                if (FINAL) {
                    const float4 cq = *reinterpret_cast<const float4*>(&s_C[FINAL ? buf : 0][FINAL ? k : 0][n0 + i]);
                    y = fmaf(cq.x, h[i + 0], y);
                    y = fmaf(cq.y, h[i + 1], y);
                    y = fmaf(cq.z, h[i + 2], y);
                    y = fmaf(cq.w, h[i + 3], y);
                }
            }
            if (FINAL) s_part[FINAL ? k : 0][FINAL ? tid : 0] = y;
        }
        // 4. Kernel 3: this lane's output slice; y of a token = the sum of its channel's K partials.
        if (FINAL) {
            if constexpr (K > 1) __syncwarp();  // the channel's K lanes are in this warp
            if (active) {
                float yv[M];
#pragma unroll
                for (int k = 0; k < M; ++k) {
                    const float* part = &s_part[FINAL ? k0 + k : 0][FINAL ? c * K : 0];
                    float y;
                    if constexpr (K == 1) {
                        y = part[0];
                    } else if constexpr (K == 2) {
                        const float2 v = *reinterpret_cast<const float2*>(part);
                        y = v.x + v.y;
                    } else {
                        y = 0.f;
#pragma unroll
                        for (int q = 0; q < K; q += 4) {
                            const float4 v = *reinterpret_cast<const float4*>(part + q);
                            y += (v.x + v.y) + (v.z + v.w);
                        }
                    }
                    const float2 dg = s_dg[FINAL ? k0 + k : 0][c];
                    yv[k] = (y + dg.x) * dg.y;
                }
                store_rowM<T, M>(out_row + t0 + k0, nt - k0, vec, yv);
            }
        }
        buf ^= 1;
    }
    if (!FINAL) {
#pragma unroll
        for (int off = K / 2; off > 0; off >>= 1) dt_sum += __shfl_xor_sync(0xffffffffu, dt_sum, off);
        if (active) {
            const int64_t cd = (b * p.n_chunks + chunk) * p.dim + d;
            if (j == 0) p.chunk_dt_sum[cd] = dt_sum;
            float* hout = p.chunk_state + cd * p.dstate;
#pragma unroll
            for (int i = 0; i < NPT; ++i)
                if (n0 + i < p.dstate) hout[n0 + i] = h[i];
        }
    }
}

// The current device, or -1 (also for ids past the 64 slots of the caches below).
static int current_device() {
    int dev = 0;
    return cudaGetDevice(&dev) == cudaSuccess && dev >= 0 && dev < 64 ? dev : -1;
}

// Attribute A of device `dev` (from current_device()), queried once and cached; `fallback` when it is unknown or
// the query fails. A host call, allowed while a stream is being captured.
template <cudaDeviceAttr A>
static int device_attribute(int dev, int fallback) {
    if (dev < 0) return fallback;
    static int value_of[64] = {0};  // 0 = not queried yet, -1 = failed; benign race (same value written)
    if (value_of[dev] == 0) {
        int v = 0;
        value_of[dev] = cudaDeviceGetAttribute(&v, A, dev) == cudaSuccess && v > 0 ? v : -1;
    }
    return value_of[dev] > 0 ? value_of[dev] : fallback;
}

#include "resident_pass.cuh"  // one kernel, one exp2 per element, for short sequences (L <= 512, N <= 16)

// Programmatic dependent launch for kernels 2 and 3 (they overlap their launch, prologue and first staging
// with their predecessor) on sm_90+; VIVIM_SCAN_PDL=0 turns it off.
static bool pdl_enabled() {
    static const bool env_on = [] {
        const char* e = tuning_env("VIVIM_SCAN_PDL");
        return !(e != nullptr && e[0] == '0');
    }();
    return env_on && device_attribute<cudaDevAttrComputeCapabilityMajor>(current_device(), 0) >= 9;
}

// Kernels 1-3 for K lanes per channel.
template <typename T, int K>
static cudaError_t launch_k(const KernelArgs& a, const Geometry& g, int64_t batch, cudaStream_t stream) {
    const dim3 block((unsigned)(g.channels_per_block * K));
    const dim3 grid((unsigned)(a.n_groups * g.tiles_per_group), (unsigned)g.n_chunks, (unsigned)batch);
    if (g.n_chunks > 1) {
        const bool pdl = pdl_enabled();
        cudaError_t e = launch(chunk_pass<T, K, false>, grid, block, 0, stream, false, a);
        if (e != cudaSuccess) return e;
        if (a.fold) return launch(chunk_pass<T, K, true>, grid, block, 0, stream, pdl, a);
        const int64_t pairs = batch * a.dim * a.dstate;
        const unsigned segs = (unsigned)((g.n_chunks + kCarryPerThread - 1) / kCarryPerThread);
        const dim3 cblock(kCarryPairs, segs);
        const dim3 cgrid((unsigned)((pairs + kCarryPairs - 1) / kCarryPairs));
        e = launch(carry_pass, cgrid, cblock, 0, stream, pdl, a, pairs);
        if (e != cudaSuccess) return e;
        return launch(chunk_pass<T, K, true>, grid, block, 0, stream, pdl, a);
    }
    KernelArgs single = a;
    single.dt_cache = nullptr;  // one chunk: kernel 3 alone computes dt itself
    return launch(chunk_pass<T, K, true>, grid, block, 0, stream, false, single);
}

template <typename T>
static cudaError_t launch_lanes(const KernelArgs& a, const Geometry& g, int64_t batch, cudaStream_t stream) {
    switch (lanes_per_channel(a.dstate)) {
        case 1: return launch_k<T, 1>(a, g, batch, stream);
        case 2: return launch_k<T, 2>(a, g, batch, stream);
        case 4: return launch_k<T, 4>(a, g, batch, stream);
        default: return launch_k<T, 8>(a, g, batch, stream);
    }
}

// Workspace layout: [chunk dt sums | pad to 256 B | chunk states | pad | dt cache].
static size_t dt_cache_bytes(int64_t batch, int64_t dim, int64_t seqlen) {
    return (size_t)batch * (size_t)dim * (size_t)seqlen * sizeof(float) + 256;
}

static size_t workspace_bytes_for(int64_t batch, int64_t dim, int64_t seqlen, int64_t dstate, const Geometry& g) {
    if (g.n_chunks <= 1) return 0;
    const size_t floats = (size_t)batch * (size_t)g.n_chunks * (size_t)dim * (size_t)(dstate + 1);
    return floats * sizeof(float) + 256 + dt_cache_bytes(batch, dim, seqlen);
}

// What the size query answers: an upper bound of workspace_bytes_for() over every chunking the launcher may
// pick (any channel tiling, any target), non-decreasing in batch and in seqlen, so a caller such as a
// TensorRT plugin can size its scratch once at a profile's largest shape. Why it bounds: n_chunks <= min(
// ceil(L/16), kMaxChunks) and n_chunks <= want = ceil(T / (batch * tiles)), so batch * n_chunks <=
// min(batch * ceil(L/16), ceil(T / tiles) + batch), with T the largest target and tiles the fewest channel
// tiles any tiling could have (blocks of at most 128 channels; they hold at most 64).
static size_t workspace_bound(int64_t batch, int64_t dim, int64_t seqlen, int64_t dstate, int64_t n_groups) {
    int64_t max_chunks = (seqlen + kTileTokens - 1) / kTileTokens;
    if (max_chunks > kMaxChunks) max_chunks = kMaxChunks;
    if (max_chunks <= 1) return 0;  // a single chunk needs no scratch
    const int64_t per_group = dim / n_groups;
    const int64_t tiles = n_groups * ((per_group + kMaxChannels - 1) / kMaxChannels);
    const int64_t target = target_blocks();
    const int64_t by_length = batch * max_chunks;
    const int64_t by_target = (target + tiles - 1) / tiles + batch;
    const int64_t slots = by_length < by_target ? by_length : by_target;
    return (size_t)slots * (size_t)dim * (size_t)(dstate + 1) * sizeof(float) + 256 + dt_cache_bytes(batch, dim, seqlen);
}

}  // namespace vivim_scan

extern "C" void vivim_selective_scan_read_tuning_env(void) {
    vivim_scan::g_read_tuning_env.store(true, std::memory_order_relaxed);
}

extern "C" size_t vivim_selective_scan_workspace_size(int64_t batch, int64_t dim, int64_t seqlen, int64_t dstate,
                                                      int64_t n_groups) {
    if (batch < 1 || dim < 1 || seqlen < 1 || dstate < 1 || dstate > 64 || n_groups < 1 || dim % n_groups != 0)
        return 0;
    return vivim_scan::workspace_bound(batch, dim, seqlen, dstate, n_groups);
}

extern "C" cudaError_t vivim_selective_scan_fwd(const vivim_scan_params_t* params, void* workspace,
                                                size_t workspace_bytes, cudaStream_t stream) {
    using namespace vivim_scan;
    if (params == nullptr) return cudaErrorInvalidValue;
    const vivim_scan_params_t& q = *params;
    if (q.batch < 1 || q.dim < 1 || q.seqlen < 1 || q.dstate < 1 || q.dstate > 64 || q.n_groups < 1 ||
        q.dim % q.n_groups != 0)
        return cudaErrorInvalidValue;
    if (q.batch > 65535 || q.dim / q.n_groups > (int64_t)1 << 40) return cudaErrorInvalidValue;
    if (!q.u || !q.delta || !q.A || !q.B || !q.C || !q.out) return cudaErrorInvalidValue;
    if (q.dtype != VIVIM_DTYPE_F32 && q.dtype != VIVIM_DTYPE_F16 && q.dtype != VIVIM_DTYPE_BF16)
        return cudaErrorInvalidValue;
    ResidentPlan plan;
    const bool resident = resident_fits(q.batch, q.dim, q.seqlen, q.dstate, q.n_groups, &plan);
    const Geometry g = make_geometry(q.batch, q.dim, q.seqlen, q.dstate, q.n_groups);
    if (q.n_groups * g.tiles_per_group > 0x7fffffff) return cudaErrorInvalidValue;
    const size_t need = resident ? 0 : workspace_bytes_for(q.batch, q.dim, q.seqlen, q.dstate, g);
    if (need > 0 && (workspace == nullptr || workspace_bytes < need)) return cudaErrorInvalidValue;

    KernelArgs a;
    a.u = q.u;
    a.delta = q.delta;
    a.A = q.A;
    a.B = q.B;
    a.C = q.C;
    a.D = q.D;
    a.z = q.z;
    a.delta_bias = q.delta_bias;
    a.out = q.out;
    a.dim = q.dim;
    a.seqlen = q.seqlen;
    a.n_groups = q.n_groups;
    a.per_group = q.dim / q.n_groups;
    a.tiles_per_group = g.tiles_per_group;
    a.chunk_len = g.chunk_len;
    a.n_chunks = g.n_chunks;
    a.dstate = (int)q.dstate;
    a.softplus = q.delta_softplus ? 1 : 0;
    {
        // 16-byte row-segment accesses need every base 16-byte aligned and rows a multiple of 16 bytes long.
        const size_t es = q.dtype == VIVIM_DTYPE_F32 ? 4 : 2;
        auto al = [](const void* ptr) { return ptr == nullptr || (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; };
        a.vec = ((size_t)q.seqlen * es) % 16 == 0 && al(q.u) && al(q.delta) && al(q.B) && al(q.C) && al(q.z) &&
                al(q.out);
    }
    a.chunk_dt_sum = nullptr;
    a.chunk_state = nullptr;
    a.dt_cache = nullptr;
    a.vec_dt = 0;
    a.fold = g.n_chunks <= fold_max() ? 1 : 0;
    if (need > 0) {
        // Layout: [dt sums | pad to 256 B | states | pad | dt cache]; the caller's pointer may have any alignment >= 4.
        float* base = static_cast<float*>(workspace);
        a.chunk_dt_sum = base;
        const size_t sums = (size_t)q.batch * (size_t)g.n_chunks * (size_t)q.dim;
        uintptr_t st = reinterpret_cast<uintptr_t>(base + sums);
        st = (st + 255) & ~(uintptr_t)255;
        a.chunk_state = reinterpret_cast<float*>(st);
        const size_t states = (size_t)q.batch * (size_t)g.n_chunks * (size_t)q.dim * (size_t)q.dstate;
        uintptr_t dc = reinterpret_cast<uintptr_t>(a.chunk_state + states);
        dc = (dc + 255) & ~(uintptr_t)255;
        a.dt_cache = reinterpret_cast<float*>(dc);
        a.vec_dt = q.seqlen % 4 == 0 ? 1 : 0;
    }
    if (resident) {
        switch (q.dtype) {
            case VIVIM_DTYPE_F32: return launch_resident<float>(a, plan, q.batch, stream);
            case VIVIM_DTYPE_F16: return launch_resident<__half>(a, plan, q.batch, stream);
            default: return launch_resident<__nv_bfloat16>(a, plan, q.batch, stream);
        }
    }
    switch (q.dtype) {
        case VIVIM_DTYPE_F32: return launch_lanes<float>(a, g, q.batch, stream);
        case VIVIM_DTYPE_F16: return launch_lanes<__half>(a, g, q.batch, stream);
        default: return launch_lanes<__nv_bfloat16>(a, g, q.batch, stream);
    }
}
