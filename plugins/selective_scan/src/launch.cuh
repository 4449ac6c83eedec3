// One way to launch the scan's kernels (forward, resident pass, backward): cudaLaunchKernelEx, whose return value
// is this launch's own status. `kernel<<<...>>>` followed by cudaGetLastError() would also report, and clear, an
// error some earlier unrelated call of the caller left behind, and blame it on the scan. A failed launch's own error
// is cleared once returned, so the caller's next error check (PyTorch's, TensorRT's) does not meet it again.
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace vivim_scan_launch {

// `pdl`: programmatic dependent launch (sm_90+): the kernel may start while its predecessor in the stream drains;
// it must griddepcontrol.wait before reading what the predecessor wrote.
template <typename... KArgs, typename... Args>
inline cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                          Args&&... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    const cudaError_t launched = cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
    if (launched != cudaSuccess) (void)cudaGetLastError();  // reported here: not left for the caller's next check
    return launched;
}

}  // namespace vivim_scan_launch
