#include "reference_scan.h"

#include <algorithm>
#include <cmath>
#include <thread>

namespace vivim_harness
{
namespace
{

// One (batch, channel) row: plain sequential recurrence over time, all in double.
void scanRow(ScanProblem const& p, int64_t b, int64_t d, std::vector<double>& out)
{
    int64_t const L = p.seqlen;
    int64_t const N = p.dstate;
    int64_t const group = d / (p.dim / p.groups);
    int64_t const row = (b * p.dim + d) * L;
    int64_t const bcBase = (b * p.groups + group) * N * L;
    std::vector<double> h(static_cast<size_t>(N), 0.0);
    for (int64_t t = 0; t < L; ++t)
    {
        double dt = p.delta[row + t] + p.deltaBias[d];
        if (p.deltaSoftplus)
        {
            dt = std::log1p(std::exp(dt));
        }
        double const x = p.u[row + t];
        double y = 0.0;
        for (int64_t n = 0; n < N; ++n)
        {
            double const decay = std::exp(dt * p.A[d * N + n]);
            h[n] = decay * h[n] + dt * p.B[bcBase + n * L + t] * x;
            y += p.C[bcBase + n * L + t] * h[n];
        }
        y += p.D[d] * x;
        double const gate = p.z[row + t];
        y *= gate / (1.0 + std::exp(-gate));  // silu(z)
        out[row + t] = y;
    }
}

}  // namespace

std::vector<double> referenceSelectiveScan(ScanProblem const& p)
{
    std::vector<double> out(static_cast<size_t>(p.batch * p.dim * p.seqlen), 0.0);
    int64_t const rows = p.batch * p.dim;
    int64_t const workers = std::max<int64_t>(1, std::min<int64_t>(rows, std::thread::hardware_concurrency()));
    std::vector<std::thread> pool;
    for (int64_t w = 0; w < workers; ++w)
    {
        pool.emplace_back([&, w] {
            for (int64_t r = w; r < rows; r += workers)
            {
                scanRow(p, r / p.dim, r % p.dim, out);
            }
        });
    }
    for (auto& thread : pool)
    {
        thread.join();
    }
    return out;
}

}  // namespace vivim_harness
