// Float64 CPU reference of the selective scan (mamba-ssm selective_scan_ref semantics), written
// independently of the CUDA kernel so the harness can judge the plugin's output.
#ifndef VIVIM_TRT_HARNESS_REFERENCE_SCAN_H
#define VIVIM_TRT_HARNESS_REFERENCE_SCAN_H

#include <cstdint>
#include <vector>

namespace vivim_harness
{

struct ScanProblem
{
    int64_t batch = 1;
    int64_t dim = 1;     // D
    int64_t seqlen = 1;  // L
    int64_t dstate = 1;  // N
    int64_t groups = 1;  // G
    bool deltaSoftplus = false;
    // Values exactly as the device sees them (already rounded to the activation type).
    std::vector<double> u, delta, A, B, C, D, z, deltaBias;
};

// out[b, d, t] for all b, d, t; uses several threads for the long cases.
std::vector<double> referenceSelectiveScan(ScanProblem const& p);

}  // namespace vivim_harness

#endif  // VIVIM_TRT_HARNESS_REFERENCE_SCAN_H
