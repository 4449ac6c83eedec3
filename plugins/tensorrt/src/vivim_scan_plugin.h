// TensorRT IPluginV3 wrapper around the Vivim selective-scan kernel (plugins/selective_scan).
//
// One source tree for TensorRT 10.3 (JetPack 6) and 11.x: only NvInferRuntime.h is included
// (10.3 declares IPluginV3 there, 11.x pulls it in from NvInferPluginBase.h), and only inline
// header code is used, so the library needs no libnvinfer at link time.
//
// Node contract (ARCHITECTURE.md, "ONNX"): 8 inputs
//   0 u[B,D,L] T   1 delta[B,D,L] T   2 A[D,N] fp32   3 Bm[B,G,N,L] T   4 Cm[B,G,N,L] T
//   5 Dskip[D] fp32   6 z[B,D,L] T   7 dt_bias[D] fp32        -> 0 y[B,D,L] T,   T in {fp16, bf16, fp32}
#ifndef VIVIM_TRT_SCAN_PLUGIN_H
#define VIVIM_TRT_SCAN_PLUGIN_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace vivim
{
namespace trt
{

// Identity shared by the plugin, its creator and the ONNX node attributes.
constexpr char const* kPluginName = "VivimSelectiveScan";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "vivim";

// Input positions of the node contract.
enum InputIndex : int32_t
{
    kU = 0,
    kDelta = 1,
    kA = 2,
    kB = 3,
    kC = 4,
    kDSkip = 5,
    kZ = 6,
    kDtBias = 7,
    kNbInputs = 8,
};
constexpr int32_t kNbOutputs = 1;
constexpr int64_t kMaxDstate = 64;     // limit of the kernel (selective_scan.h)
constexpr int64_t kMaxBatch = 65535;   // the kernel launches one grid row per batch element

// The one serialised field, declared once: the creator advertises it, createPlugin parses it and
// getFieldsToSerialize writes it.
constexpr char const* kFieldDeltaSoftplus = "delta_softplus";

// Report through the TensorRT logger handed to setLoggerFinder, or stderr when there is none.
void logError(std::string const& message) noexcept;
void logWarning(std::string const& message) noexcept;

class SelectiveScanPlugin final : public nvinfer1::IPluginV3,
                                  public nvinfer1::IPluginV3OneCore,
                                  public nvinfer1::IPluginV3OneBuild,
                                  public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit SelectiveScanPlugin(int32_t deltaSoftplus) noexcept;
    SelectiveScanPlugin(SelectiveScanPlugin const& other) noexcept;
    SelectiveScanPlugin& operator=(SelectiveScanPlugin const&) = delete;
    ~SelectiveScanPlugin() noexcept override = default;

    int32_t deltaSoftplus() const noexcept { return mDeltaSoftplus; }

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override { return kPluginName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override { return kNbOutputs; }
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    int32_t mDeltaSoftplus;
    // Storage that getFieldsToSerialize points into; it must outlive the call.
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

class SelectiveScanPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    SelectiveScanPluginCreator() noexcept;

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mFieldCollection; }
    char const* getPluginName() const noexcept override { return kPluginName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

// Shape rule shared by configurePlugin, onShapeChange and enqueue. `dims` holds the 8 input dims
// and the output dims; a -1 extent (unknown at build time) is skipped. Returns "" when consistent,
// else a one-line reason.
std::string checkShapes(nvinfer1::Dims const* const* dims, int32_t nbInputs, int32_t nbOutputs);

}  // namespace trt
}  // namespace vivim

#endif  // VIVIM_TRT_SCAN_PLUGIN_H
