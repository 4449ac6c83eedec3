// The resident pass: for short sequences (L <= 512, N <= 16) a block keeps whole sequences of its channels on
// chip, so each decay exp2(dt * A) is computed once, in one kernel without workspace. The chunked passes of
// selective_scan.cu compute it twice (a chunk's local scan, then its rescan from the true state) over three
// launches, which dominate at Vivim's last stage.
//
// A lane owns 4 consecutive tokens and all N states of one channel; a block holds the segments of a few channels
// of one group back to back (lane l: channel l / lanes, segment l % lanes), and first stages the group's B and C
// rows in shared memory as fp32 (converted once per block, read as 16-byte words). Three steps:
//   1. The lane scans its 4 tokens from a zero state. Per (token, state) it keeps in registers the weight
//      W = C_t[n] * (product of the decays since its first token): how the state entering the segment reaches
//      y_t. It publishes the segment's (decay, end state) per state; a channel's last segment publishes (0, 0),
//      so that no fold crosses into the next channel.
//   2. The segments are folded in sequence order (deterministic): in each warp, lane (state n, part q) walks
//      state n over the warp's part q of NS segments through shared memory, the parts are combined in order by
//      shuffles, then each warp folds the aggregates of the warps before it (one block barrier).
//   3. y_t += sum_n W_t[n] * h_in[n], one FMA per (token, state) and no exp2; then D * u and the silu(z) gate.
// Measured against the chunked passes: benchmarks/kernel_notes.md (sixth and seventh sessions).
// Included by selective_scan.cu inside namespace vivim_scan (uses its loaders, KernelArgs and fast math).

constexpr int kResTokens = 4;       // tokens per lane
constexpr int kResMaxLanes = 320;   // blocks of at most 10 warps, two per SM (<= 96 registers per thread)
constexpr int64_t kResMaxLen = 512; // B and C of a whole sequence are staged in shared memory (fp32)
constexpr int kResRow = 33;         // a warp's fold buffer row (one state): 32 segments + 1 to spread the banks

// B/C staging row length (floats): a multiple of 8 tokens, so 16-byte staging items never cross rows.
__host__ __device__ constexpr int64_t resident_bc_row(int64_t seqlen) { return ((seqlen + 7) / 8) * 8; }

// Dynamic shared memory: B and C rows of the block's group as fp32 [2][NS][row], A * log2(e) of the block's channels
// [channels][NS], then each warp's [state][segment] (decay, state) rows, then the warps' aggregates.
__host__ __device__ constexpr size_t resident_smem_bytes(int64_t seqlen, int channels, int n_warps, int ns) {
    return ((size_t)2 * ns * resident_bc_row(seqlen) + (size_t)channels * ns) * sizeof(float) +
           (size_t)n_warps * (size_t)ns * (size_t)(kResRow + 1) * sizeof(float2);
}

// Two blocks per SM: 2 x 320 threads x 96 registers. One block per SM (128 registers, no spills) took 9.2 us at
// stage 4 against 7.3 us with two (a few bytes of spills): the second block hides the first one's serial phases.
template <typename T, int NS>
__global__ void __launch_bounds__(kResMaxLanes, 2) resident_pass(const KernelArgs p) {
    extern __shared__ __align__(16) float s_resf[];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n_warps = blockDim.x >> 5;
    const int64_t bc_row = resident_bc_row(p.seqlen);
    float* s_bc = s_resf;  // [2][NS][bc_row]: B rows, then C rows
    float* s_a2 = s_resf + 2 * NS * bc_row;  // [channels][NS]
    float2* s_fold = reinterpret_cast<float2*>(s_a2 + p.res_channels * NS);  // 8-byte aligned: even offsets
    float2* s_seg = s_fold + warp * NS * kResRow;
    float2* s_agg = s_fold + n_warps * NS * kResRow;
    // The block's channels are consecutive channels of one group (32-bit index math: it runs once per thread, and
    // 64-bit divisions are long instruction sequences).
    const unsigned group = blockIdx.x / (unsigned)p.res_tiles;
    const unsigned tile = blockIdx.x - group * (unsigned)p.res_tiles;
    const int c = (int)(threadIdx.x / (unsigned)p.res_lanes);  // channel of the block
    const int c_in_block = c < p.res_channels ? c : 0;
    const int seg = (int)threadIdx.x - c * p.res_lanes;
    const int64_t in_group = (int64_t)tile * p.res_channels + c;
    const bool active = c < p.res_channels && in_group < p.per_group;
    const int64_t d = group * p.per_group + (active ? in_group : 0);
    const int64_t b = blockIdx.y;
    const int64_t row_off = (b * p.dim + d) * p.seqlen;
    const int64_t t0 = (int64_t)seg * kResTokens;
    const int64_t left = active ? p.seqlen - t0 : 0;
    const int nv = (int)(left < kResTokens ? (left > 0 ? left : 0) : kResTokens);  // valid tokens of this lane
    const bool vec = p.vec != 0;

    RowRaw<T, kResTokens> rz, ru, rd;  // this lane's row slices, loaded first
    if (p.z != nullptr) load_raw<T, kResTokens>(static_cast<const T*>(p.z) + row_off + t0, nv, vec, rz);
    load_raw<T, kResTokens>(static_cast<const T*>(p.u) + row_off + t0, nv, vec, ru);
    load_raw<T, kResTokens>(static_cast<const T*>(p.delta) + row_off + t0, nv, vec, rd);

    // Stage the group's B and C rows as fp32, converted once per block: items of 16 bytes (8 tokens of a 2-byte
    // type, 4 of fp32), up to 4 per thread loaded before any is stored. Rows past N and tokens past L are zeros.
    {
        // Thread -> (a fixed 16-byte column of the rows, rows r0, r0 + step, ...): divisions once per thread,
        // 32-bit offsets from two base pointers.
        constexpr int V = 16 / (int)sizeof(T);
        const int per_row = (int)bc_row / V;  // <= 64 (2-byte types) or 128 (fp32)
        const int step = (int)blockDim.x / per_row;
        const int r0 = (int)threadIdx.x / per_row;
        const int tok = ((int)threadIdx.x - r0 * per_row) * V;
        const int nvb = (int)(p.seqlen - tok < V ? p.seqlen - tok : V);
        const int L32 = (int)p.seqlen;  // <= kResMaxLen
        const int64_t gbase = (b * p.n_groups + group) * p.dstate * p.seqlen + tok;
        const T* Bt = static_cast<const T*>(p.B) + gbase;
        const T* Ct = static_cast<const T*>(p.C) + gbase;
        float* dst0 = s_bc + tok;
        if (r0 < step) {  // threads past step * per_row stay out (step >= 1: a block has at least per_row threads)
            for (int rb = r0; rb < 2 * NS; rb += 4 * step) {
                RowRaw<T, V> raw[4];
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int r = rb + q * step;
                    const int n = r < NS ? r : r - NS;
                    if (r < 2 * NS && n < p.dstate)
                        load_raw<T, V>((r < NS ? Bt : Ct) + n * L32, nvb, vec, raw[q]);
                    else
                        zero_raw<T, V>(raw[q]);
                }
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int r = rb + q * step;
                    if (r >= 2 * NS) break;
                    float v[V];
                    unpack_raw<T, V>(raw[q], v);
                    float* dst = dst0 + r * (int)bc_row;
#pragma unroll
                    for (int k = 0; k < V; k += 4)
                        *reinterpret_cast<float4*>(dst + k) = make_float4(v[k], v[k + 1], v[k + 2], v[k + 3]);
                }
            }
        }
    }

    float dt[kResTokens], dtu[kResTokens], y[kResTokens];
    {
        float uv[kResTokens];
        unpack_raw<T, kResTokens>(ru, uv);
        unpack_raw<T, kResTokens>(rd, dt);
        const float bias = p.delta_bias != nullptr ? p.delta_bias[d] : 0.f;
        const float Dd = p.D != nullptr ? p.D[d] : 0.f;
#pragma unroll
        for (int k = 0; k < kResTokens; ++k) {
            float x = dt[k] + bias;
            if (p.softplus) x = softplus_fast(x);
            dt[k] = k < nv ? x : 0.f;  // tokens past the end: dt = 0, an identity step
            dtu[k] = dt[k] * uv[k];
            y[k] = Dd * uv[k];
        }
    }
    for (int i = threadIdx.x; i < p.res_channels * NS; i += blockDim.x) {  // A * log2(e); 0 for padded states
        const int64_t di = group * p.per_group + (int64_t)tile * p.res_channels + i / NS;
        const int n = i % NS;
        s_a2[i] = n < p.dstate && di < (group + 1) * p.per_group ? p.A[di * p.dstate + n] * kLog2e : 0.f;
    }
    // The last segment of a channel publishes (0, 0): the fold then enters the next channel's first segment with
    // a zero state and never crosses channels (nothing needs a channel's end state).
    const bool last_seg = seg == p.res_lanes - 1;
    __syncthreads();  // B and C staged

    // 1. Zero-state scan of the lane's segment, one state at a time.
    float W[NS][kResTokens];
#pragma unroll
    for (int n = 0; n < NS; ++n) {
        const float4 bq = *reinterpret_cast<const float4*>(s_bc + n * bc_row + t0);
        const float4 cq = *reinterpret_cast<const float4*>(s_bc + (NS + n) * bc_row + t0);
        const float bv[kResTokens] = {bq.x, bq.y, bq.z, bq.w};
        const float cv[kResTokens] = {cq.x, cq.y, cq.z, cq.w};
        const float a2 = s_a2[c_in_block * NS + n];
        float h = 0.f, P = 1.f;
#pragma unroll
        for (int k = 0; k < kResTokens; ++k) {
            const float dA = fast_exp2(dt[k] * a2);
            h = fmaf(dA, h, dtu[k] * bv[k]);
            P *= dA;
            y[k] = fmaf(cv[k], h, y[k]);
            W[n][k] = cv[k] * P;
        }
        s_seg[n * kResRow + lane] = last_seg ? make_float2(0.f, 0.f) : make_float2(P, h);
    }

    // 2. Fold, in sequence order. Each warp's 32 segments are cut into 32 / NS parts of NS segments; lane
    //    (state n, part q) walks state n over part q, leaving in place the (decay, state) from the part's start (or
    //    from its channel's start) to each segment's start. The parts are combined in order through shuffles, and
    //    each warp then folds the aggregates of the warps before it (one block barrier). A zero decay is a cut: it
    //    selects instead of multiplying, so an inf or NaN state in one channel cannot reach the next one through
    //    0 * inf (the results are the same otherwise). All 32 lanes walk: NS steps each instead of 32 for NS lanes.
    const int fn = lane % NS;  // the fold's state
    const int fq = lane / NS;  // the fold's part: segments fq * NS .. fq * NS + NS - 1 of the warp
    __syncwarp();
    float Pp = 1.f, hp = 0.f;
    {
        float2* row = s_seg + fn * kResRow + fq * NS;
#pragma unroll
        for (int s = 0; s < NS; ++s) {
            const float2 v = row[s];
            row[s] = make_float2(Pp, hp);
            const bool cut = v.x == 0.f;
            hp = cut ? v.y : fmaf(v.x, hp, v.y);
            Pp = cut ? 0.f : Pp * v.x;
        }
    }
    // The parts before this one, folded in order: (decay, state) from the warp's start to this part's start.
    float Ppre = 1.f, hpre = 0.f;
#pragma unroll
    for (int r = 0; r < 32 / NS - 1; ++r) {
        const float Pr = __shfl_sync(0xffffffffu, Pp, fn + r * NS);
        const float hr = __shfl_sync(0xffffffffu, hp, fn + r * NS);
        if (r < fq) {
            hpre = Pr == 0.f ? hr : fmaf(Pr, hpre, hr);
            Ppre = Pr == 0.f ? 0.f : Ppre * Pr;
        }
    }
    if (fq == 32 / NS - 1)
        s_agg[warp * NS + fn] = Pp == 0.f ? make_float2(0.f, hp) : make_float2(Ppre * Pp, fmaf(Pp, hpre, hp));
    __syncthreads();
    float carry = 0.f;  // state fn entering this warp
#pragma unroll 4
    for (int w = 0; w < warp; ++w) {
        const float2 v = s_agg[w * NS + fn];
        carry = v.x == 0.f ? v.y : fmaf(v.x, carry, v.y);
    }
    const float part_in = Ppre == 0.f ? hpre : fmaf(Ppre, carry, hpre);  // state fn entering part fq

    // 3. Output: the entering state reaches y through the weights; no exp2 here. A lane whose channel starts in
    //    its part takes no carry (the carry belongs to an earlier channel).
    const bool own_carry = seg > lane % NS;
    const int part_lane = lane & ~(NS - 1);  // lane (state 0, this lane's part)
#pragma unroll
    for (int n = 0; n < NS; ++n) {
        float cn = __shfl_sync(0xffffffffu, part_in, part_lane + n);
        if (!own_carry) cn = 0.f;
        const float2 pr = s_seg[n * kResRow + lane];
        const float hin = fmaf(pr.x, cn, pr.y);
#pragma unroll
        for (int k = 0; k < kResTokens; ++k) y[k] = fmaf(W[n][k], hin, y[k]);
    }
    if (nv == 0) return;
    float gate[kResTokens];
    gate_of<T, kResTokens>(rz, p.z != nullptr, gate);
#pragma unroll
    for (int k = 0; k < kResTokens; ++k) y[k] *= gate[k];
    T* out = static_cast<T*>(p.out) + row_off + t0;
    if constexpr (sizeof(T) == 2) {  // 4 tokens = one 8-byte store (store_rowM has 16-byte words only)
        if (vec && nv == kResTokens) {
            *reinterpret_cast<uint2*>(out) = make_uint2(pack2(y[0], y[1], T()), pack2(y[2], y[3], T()));
            return;
        }
    }
    store_rowM<T, kResTokens>(out, nv, vec, y);
}

// Channels per block: as many as fit 320 lanes, within one group (B and C are staged once per block: at stage 4,
// 4 channels per block took 7.3 us against 10.3 at 2). VIVIM_SCAN_RES_CPB=n overrides it (tuning).
static int resident_channels(int64_t lanes, int64_t per_group) {
    static const int from_env = [] {
        const char* e = tuning_env("VIVIM_SCAN_RES_CPB");
        const long v = e != nullptr ? strtol(e, nullptr, 10) : 0;
        return (int)(v >= 1 && v <= kResMaxLanes ? v : 0);
    }();
    int most = (int)(kResMaxLanes / lanes);  // >= 2: lanes <= 128
    if (most > per_group) most = (int)per_group;
    return from_env > 0 && from_env < most ? from_env : most;
}

// Launch geometry of the resident pass (L <= kResMaxLen, so lanes <= 128 and blocks <= 320 threads).
struct ResidentPlan {
    int lanes, channels, n_warps, ns;
    int64_t tiles;  // blocks per group
    size_t smem;
};
static ResidentPlan plan_resident(int64_t seqlen, int64_t dstate, int64_t per_group) {
    ResidentPlan r;
    r.lanes = (int)((seqlen + kResTokens - 1) / kResTokens);
    r.channels = resident_channels(r.lanes, per_group);
    r.n_warps = (r.channels * r.lanes + 31) / 32;
    r.ns = dstate <= 8 ? 8 : 16;
    r.tiles = (per_group + r.channels - 1) / r.channels;
    r.smem = resident_smem_bytes(seqlen, r.channels, r.n_warps, r.ns);
    return r;
}

// Dynamic shared memory a block may opt in to on device `dev` (at least the default 48 KB). Up to ~100 KB is needed
// (L = 512, N = 16); a smaller device takes the chunked passes.
static int resident_smem_limit(int dev) {
    const int v = device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(dev, 48 * 1024);
    return v > 48 * 1024 ? v : 48 * 1024;
}

// Whether a problem takes the resident pass (and its plan): N <= 16, L <= 512, at most resident_max_work(L) tokens
// (batch * dim * L), and its shared memory fits the device. Past that size the GPU is full either way and the chunked passes' lower
// instruction count per element wins (measured on an H200: at L <= 320, 4 x 1024 x 320 took 24.0 vs 30.4 us and
// 8 x 1024 x 320 ties; at L = 512, 1 x 2048 x 512 took 23.6 vs 25.4 us and 4 x 1024 x 512 45 vs 42 us; see
// benchmarks/kernel_notes.md). Size-only on a given GPU generation. VIVIM_SCAN_RESIDENT=0 turns the pass off, =1
// takes it wherever it fits regardless of size (tuning, and tests of both paths).
static int64_t resident_max_work(int64_t seqlen) { return seqlen <= 320 ? (int64_t)3 << 19 : (int64_t)1 << 20; }
static int resident_mode() {
    static const int mode = [] {
        const char* e = tuning_env("VIVIM_SCAN_RESIDENT");
        return e == nullptr ? -1 : e[0] == '0' ? 0 : e[0] == '1' ? 1 : -1;
    }();
    return mode;
}
static bool resident_fits(int64_t batch, int64_t dim, int64_t seqlen, int64_t dstate, int64_t n_groups,
                          ResidentPlan* plan) {
    const int mode = resident_mode();
    if (mode == 0 || dstate > 16 || seqlen > kResMaxLen || dim > 0x7fffffff) return false;
    if (mode != 1 && batch * dim * seqlen > resident_max_work(seqlen)) return false;
    *plan = plan_resident(seqlen, dstate, dim / n_groups);
    return plan->smem <= (size_t)resident_smem_limit(current_device());
}

template <typename T>
static cudaError_t launch_resident(KernelArgs a, const ResidentPlan& r, int64_t batch, cudaStream_t stream) {
    a.res_lanes = r.lanes;
    a.res_channels = r.channels;
    a.res_tiles = (int)r.tiles;
    void (*kernel)(KernelArgs) = r.ns == 8 ? resident_pass<T, 8> : resident_pass<T, 16>;
    if (r.smem > 48 * 1024) {
        // Opt in once per device and kernel, to the device's limit: raising only, so concurrent callers never
        // lower it under each other. resident_fits() checked the plan against that limit.
        const int dev = current_device();
        if (dev < 0) return cudaErrorInvalidDevice;
        static bool raised[2][64] = {};  // benign race: the same call twice
        if (!raised[r.ns == 16][dev]) {
            const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                       resident_smem_limit(dev));
            if (e != cudaSuccess) return e;
            raised[r.ns == 16][dev] = true;
        }
    }
    const dim3 grid((unsigned)(a.n_groups * r.tiles), (unsigned)batch);
    return launch(kernel, grid, dim3(32u * (unsigned)r.n_warps), (size_t)r.smem, stream, false, a);
}
