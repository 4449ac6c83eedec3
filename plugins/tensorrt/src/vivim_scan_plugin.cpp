// IPluginV3 glue for the Vivim selective scan: shape/type negotiation, serialisation, and an
// enqueue that maps TensorRT tensors onto vivim_selective_scan_fwd (no allocation, no sync).
#include "vivim_scan_plugin.h"

#include "vivim/selective_scan.h"

#include <algorithm>
#include <exception>
#include <new>

namespace vivim
{
namespace trt
{
namespace
{

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

std::string prefixed(std::string const& message)
{
    return std::string(kPluginName) + ": " + message;
}

char const* const kTensorNames[kNbInputs + kNbOutputs]
    = {"u", "delta", "A", "Bm", "Cm", "Dskip", "z", "dt_bias", "y"};
int32_t const kTensorRanks[kNbInputs + kNbOutputs] = {3, 3, 2, 4, 4, 1, 3, 1, 3};

// (tensor position, axis) pairs that must all hold the same extent.
struct Axis
{
    int32_t tensor;
    int32_t axis;
};
struct ExtentGroup
{
    char const* symbol;
    std::vector<Axis> members;
};

std::vector<ExtentGroup> const& extentGroups()
{
    int32_t const y = kNbInputs;  // output position in the combined list
    static std::vector<ExtentGroup> const groups = {
        {"batch", {{kU, 0}, {kDelta, 0}, {kB, 0}, {kC, 0}, {kZ, 0}, {y, 0}}},
        {"D", {{kU, 1}, {kDelta, 1}, {kA, 0}, {kDSkip, 0}, {kZ, 1}, {kDtBias, 0}, {y, 1}}},
        {"L", {{kU, 2}, {kDelta, 2}, {kB, 3}, {kC, 3}, {kZ, 2}, {y, 2}}},
        {"N", {{kA, 1}, {kB, 2}, {kC, 2}}},
        {"G", {{kB, 1}, {kC, 1}}},
    };
    return groups;
}

bool isActivationType(DataType type)
{
    return type == DataType::kHALF || type == DataType::kFLOAT || type == DataType::kBF16;
}

bool toKernelDtype(DataType type, vivim_dtype_t& out)
{
    switch (type)
    {
    case DataType::kFLOAT: out = VIVIM_DTYPE_F32; return true;
    case DataType::kHALF: out = VIVIM_DTYPE_F16; return true;
    case DataType::kBF16: out = VIVIM_DTYPE_BF16; return true;
    default: return false;
    }
}

// ONNX INT attributes arrive as kINT32; other front ends may hand over kINT64 (or narrower) scalars.
bool readIntegerField(PluginField const& field, int64_t& value)
{
    if (field.data == nullptr || field.length != 1)
    {
        return false;
    }
    switch (field.type)
    {
    case PluginFieldType::kINT8: value = *static_cast<int8_t const*>(field.data); return true;
    case PluginFieldType::kINT16: value = *static_cast<int16_t const*>(field.data); return true;
    case PluginFieldType::kINT32: value = *static_cast<int32_t const*>(field.data); return true;
    case PluginFieldType::kINT64: value = *static_cast<int64_t const*>(field.data); return true;
    default: return false;
    }
}

}  // namespace

std::string checkShapes(Dims const* const* dims, int32_t nbInputs, int32_t nbOutputs)
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        return "expects " + std::to_string(kNbInputs) + " inputs and " + std::to_string(kNbOutputs)
            + " output, got " + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs);
    }
    for (int32_t i = 0; i < kNbInputs + kNbOutputs; ++i)
    {
        if (dims[i]->nbDims != kTensorRanks[i])
        {
            return std::string("tensor ") + kTensorNames[i] + " must have rank " + std::to_string(kTensorRanks[i])
                + ", got " + std::to_string(dims[i]->nbDims);
        }
    }
    int64_t known[5] = {-1, -1, -1, -1, -1};  // batch, D, L, N, G as far as the dims tell
    auto const& groups = extentGroups();
    for (size_t g = 0; g < groups.size(); ++g)
    {
        Axis first{-1, -1};
        for (Axis const& member : groups[g].members)
        {
            int64_t const extent = dims[member.tensor]->d[member.axis];
            if (extent < 0)
            {
                continue;  // dynamic at build time
            }
            if (known[g] < 0)
            {
                known[g] = extent;
                first = member;
            }
            else if (extent != known[g])
            {
                return std::string(groups[g].symbol) + " mismatch: " + kTensorNames[first.tensor] + " has "
                    + std::to_string(known[g]) + " but " + kTensorNames[member.tensor] + " has "
                    + std::to_string(extent);
            }
        }
    }
    int64_t const batch = known[0];
    int64_t const dim = known[1];
    int64_t const dstate = known[3];
    int64_t const groupsCount = known[4];
    if (batch > kMaxBatch)
    {
        return "batch = " + std::to_string(batch) + " exceeds the kernel's " + std::to_string(kMaxBatch)
            + " (one grid dimension per batch element)";
    }
    if (dstate >= 0 && (dstate < 1 || dstate > kMaxDstate))
    {
        return "state size N = " + std::to_string(dstate) + " is outside 1.." + std::to_string(kMaxDstate);
    }
    if (groupsCount == 0)
    {
        return "number of groups G must be >= 1";
    }
    if (dim >= 0 && groupsCount > 0 && dim % groupsCount != 0)
    {
        return "D = " + std::to_string(dim) + " is not divisible by the number of groups G = "
            + std::to_string(groupsCount) + " (D % G must be 0)";
    }
    return {};
}

// ---------------------------------------------------------------------------------------------
// SelectiveScanPlugin

SelectiveScanPlugin::SelectiveScanPlugin(int32_t deltaSoftplus) noexcept
    : mDeltaSoftplus(deltaSoftplus)
{
}

SelectiveScanPlugin::SelectiveScanPlugin(SelectiveScanPlugin const& other) noexcept
    : IPluginV3(other)
    , IPluginV3OneCore(other)
    , IPluginV3OneBuild(other)
    , IPluginV3OneRuntime(other)
    , mDeltaSoftplus(other.mDeltaSoftplus)
{
    // mSerialFields is rebuilt on demand: never copy pointers into another object.
}

nvinfer1::IPluginCapability* SelectiveScanPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* SelectiveScanPlugin::clone() noexcept
{
    // The plugin holds no device state, so a copy is fully initialised.
    return new (std::nothrow) SelectiveScanPlugin(*this);
}

int32_t SelectiveScanPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
        {
            logError(prefixed(checkShapes(nullptr, nbInputs, nbOutputs)));
            return -1;
        }
        // Check both the declared dims (with -1 for dynamic axes) and the profile's upper bounds.
        Dims const* declared[kNbInputs + kNbOutputs];
        Dims const* upper[kNbInputs + kNbOutputs];
        for (int32_t i = 0; i < kNbInputs; ++i)
        {
            declared[i] = &in[i].desc.dims;
            upper[i] = &in[i].max;
        }
        declared[kNbInputs] = &out[0].desc.dims;
        upper[kNbInputs] = &out[0].max;
        std::string reason = checkShapes(declared, nbInputs, nbOutputs);
        if (reason.empty())
        {
            reason = checkShapes(upper, nbInputs, nbOutputs);
        }
        // getWorkspaceSize sizes the scratch at the profile's largest batch and L; the kernel's need is not monotonic
        // in D, N or G (the chunking changes with them), so those must be fixed (in Vivim they come from weights).
        struct StaticAxis
        {
            int32_t tensor, axis;
            char const* symbol;
        };
        for (StaticAxis const& a : {StaticAxis{kU, 1, "D"}, StaticAxis{kA, 1, "N"}, StaticAxis{kB, 1, "G"}})
        {
            if (reason.empty() && in[a.tensor].min.d[a.axis] != in[a.tensor].max.d[a.axis])
            {
                reason = std::string(a.symbol) + " must be static, but the profile gives " + kTensorNames[a.tensor]
                    + " a range " + std::to_string(in[a.tensor].min.d[a.axis]) + ".."
                    + std::to_string(in[a.tensor].max.d[a.axis]);
            }
        }
        if (!reason.empty())
        {
            logError(prefixed(reason));
            return -1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(prefixed(e.what()));
    }
    return -1;
}

int32_t SelectiveScanPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
    {
        logError(prefixed("getOutputDataTypes expects 8 inputs and 1 output"));
        return -1;
    }
    outputTypes[0] = inputTypes[kU];  // y has the activation type of u
    return 0;
}

int32_t SelectiveScanPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || inputs[kU].nbDims != 3)
    {
        logError(prefixed("getOutputShapes expects 8 inputs with u of rank 3 and 1 output"));
        return -1;
    }
    outputs[0] = inputs[kU];  // y[B, D, L] = shape of u
    return 0;
}

bool SelectiveScanPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0 || pos >= kNbInputs + kNbOutputs)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case kA:
    case kDSkip:
    case kDtBias: return desc.type == DataType::kFLOAT;  // parameters stay fp32 in every precision
    case kU: return isActivationType(desc.type);
    default:
        // delta, Bm, Cm, z and y share u's type (TensorRT asks positions in order, so u is settled).
        return isActivationType(inOut[kU].desc.type) && desc.type == inOut[kU].desc.type;
    }
}

size_t SelectiveScanPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    if (nbInputs != kNbInputs)
    {
        return 0;
    }
    // D, N and G come from weights (static); batch and L may span a profile range.
    int64_t const dim = std::max<int64_t>(inputs[kU].max.d[1], 0);
    int64_t const dstate = std::max<int64_t>(inputs[kA].max.d[1], 0);
    int64_t const groups = std::max<int64_t>(inputs[kB].max.d[1], 1);
    int64_t const maxBatch = std::max<int64_t>(inputs[kU].max.d[0], 1);
    int64_t const maxLen = std::max<int64_t>(inputs[kU].max.d[2], 1);
    // The size query bounds every chunking the kernel may pick and is non-decreasing in batch and L
    // (plugins/selective_scan/test/workspace_check.cpp checks both): the profile's largest shape covers the
    // rest. It ignores the VIVIM_SCAN_* tuning variables here, so the engine's need is the same wherever it runs.
    return vivim_selective_scan_workspace_size(maxBatch, dim, maxLen, dstate, groups);
}

int32_t SelectiveScanPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (nbInputs != kNbInputs || nbOutputs != kNbOutputs)
        {
            logError(prefixed(checkShapes(nullptr, nbInputs, nbOutputs)));
            return -1;
        }
        Dims const* dims[kNbInputs + kNbOutputs];
        for (int32_t i = 0; i < kNbInputs; ++i)
        {
            dims[i] = &in[i].dims;
        }
        dims[kNbInputs] = &out[0].dims;
        std::string const reason = checkShapes(dims, nbInputs, nbOutputs);
        if (!reason.empty())
        {
            logError(prefixed(reason));
            return -1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(prefixed(e.what()));
    }
    return -1;
}

int32_t SelectiveScanPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    vivim_scan_params_t params{};
    if (!toKernelDtype(inputDesc[kU].type, params.dtype))
    {
        logError(prefixed("unsupported activation data type at enqueue"));
        return -1;
    }
    Dims const& u = inputDesc[kU].dims;
    params.batch = u.d[0];
    params.dim = u.d[1];
    params.seqlen = u.d[2];
    params.dstate = inputDesc[kA].dims.d[1];
    params.n_groups = inputDesc[kB].dims.d[1];
    params.delta_softplus = mDeltaSoftplus;
    if (params.batch == 0 || params.dim == 0 || params.seqlen == 0 || outputDesc[0].dims.d[0] == 0)
    {
        return 0;  // empty tensor: nothing to write
    }
    params.u = inputs[kU];
    params.delta = inputs[kDelta];
    params.A = static_cast<float const*>(inputs[kA]);
    params.B = inputs[kB];
    params.C = inputs[kC];
    params.D = static_cast<float const*>(inputs[kDSkip]);
    params.z = inputs[kZ];
    params.delta_bias = static_cast<float const*>(inputs[kDtBias]);
    params.out = outputs[0];

    // Size of the scratch the kernel needs for these dims; getWorkspaceSize reserved at least this much.
    size_t const workspaceBytes = vivim_selective_scan_workspace_size(
        params.batch, params.dim, params.seqlen, params.dstate, params.n_groups);
    cudaError_t const status = vivim_selective_scan_fwd(&params, workspace, workspaceBytes, stream);
    if (status != cudaSuccess)
    {
        try
        {
            logError(prefixed(std::string("kernel launch failed: ") + cudaGetErrorName(status) + " ("
                + cudaGetErrorString(status) + ")"));
        }
        catch (...)
        {
        }
        return -1;
    }
    return 0;
}

nvinfer1::IPluginV3* SelectiveScanPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone();  // no per-context resources
}

PluginFieldCollection const* SelectiveScanPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mSerialFields.assign(1, PluginField(kFieldDeltaSoftplus, &mDeltaSoftplus, PluginFieldType::kINT32, 1));
        mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
        mSerialCollection.fields = mSerialFields.data();
        return &mSerialCollection;
    }
    catch (std::exception const& e)
    {
        logError(prefixed(e.what()));
    }
    return nullptr;
}

// ---------------------------------------------------------------------------------------------
// SelectiveScanPluginCreator

SelectiveScanPluginCreator::SelectiveScanPluginCreator() noexcept
{
    try
    {
        mFields.emplace_back(kFieldDeltaSoftplus, nullptr, PluginFieldType::kINT32, 1);
    }
    catch (...)
    {
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

nvinfer1::IPluginV3* SelectiveScanPluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    try
    {
        // Build and runtime phases read the same fields (runtime ones come from getFieldsToSerialize).
        int64_t deltaSoftplus = 0;  // mamba-ssm's default when the attribute is absent
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            if (field.name == nullptr)
            {
                continue;
            }
            std::string const fieldName(field.name);
            if (fieldName == kFieldDeltaSoftplus)
            {
                if (!readIntegerField(field, deltaSoftplus))
                {
                    logError(prefixed("field delta_softplus must be one integer (INT8/16/32/64)"));
                    return nullptr;
                }
                if (deltaSoftplus != 0 && deltaSoftplus != 1)
                {
                    logError(prefixed("field delta_softplus must be 0 or 1, got " + std::to_string(deltaSoftplus)));
                    return nullptr;
                }
            }
            else
            {
                logWarning(prefixed("ignoring unknown field " + fieldName));
            }
        }
        return new SelectiveScanPlugin(static_cast<int32_t>(deltaSoftplus));
    }
    catch (std::exception const& e)
    {
        logError(prefixed(e.what()));
    }
    return nullptr;
}

}  // namespace trt
}  // namespace vivim
