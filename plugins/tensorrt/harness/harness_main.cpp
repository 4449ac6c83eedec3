// Drives the built plugin library exactly through the entry points TensorRT uses, without TensorRT:
// dlopen -> setLoggerFinder/getCreators -> IPluginCreatorV3One -> IPluginV3 capability interfaces,
// then enqueue on the GPU against a float64 CPU reference.
//
//   vivim_trt_plugin_harness [--plugin PATH] [--require-gpu] [--skip-gpu] [--seed N]
//
// Prints one PASS/FAIL line per check and a SUMMARY line; exits non-zero on any failure.
#include "const_expr_builder.h"
#include "reference_scan.h"

#include "vivim/selective_scan.h"

#include <NvInferRuntime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#ifndef VIVIM_TRT_PLUGIN_DEFAULT_PATH
#define VIVIM_TRT_PLUGIN_DEFAULT_PATH "libvivim_trt_plugin.so"
#endif

using namespace nvinfer1;

namespace
{

using vivim_harness::ConstantExprBuilder;
using vivim_harness::ScanProblem;

int gPassed = 0;
int gFailed = 0;

bool report(bool ok, std::string const& what, std::string const& detail = "")
{
    std::printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", what.c_str(), detail.empty() ? "" : ": ", detail.c_str());
    std::fflush(stdout);
    (ok ? gPassed : gFailed)++;
    return ok;
}

// ---------------------------------------------------------------------------------------------
// What TensorRT would hand the library: a logger finder and a resource context.

class RecordingLogger final : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            std::printf("  [plugin log] %s\n", msg);
            mMessages.emplace_back(msg);
        }
    }
    void clear() { mMessages.clear(); }
    bool saw(std::string const& fragment) const
    {
        return std::any_of(mMessages.begin(), mMessages.end(),
            [&](std::string const& m) { return m.find(fragment) != std::string::npos; });
    }

private:
    std::vector<std::string> mMessages;
};

class HarnessLoggerFinder final : public ILoggerFinder
{
public:
    ILogger* findLogger() override { return &mLogger; }
    RecordingLogger& logger() { return mLogger; }

private:
    RecordingLogger mLogger;
};

class NullResourceContext final : public IPluginResourceContext
{
public:
    IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
    IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
};

HarnessLoggerFinder gLoggerFinder;

// ---------------------------------------------------------------------------------------------
// Tensor descriptions following the node contract.

constexpr int32_t kNbIn = 8;
constexpr int32_t kNbIO = 9;

struct Shape
{
    int64_t batch, dim, len, dstate, groups;
};

Dims makeDims(std::initializer_list<int64_t> extents)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(extents.size());
    int32_t i = 0;
    for (int64_t e : extents)
    {
        d.d[i++] = e;
    }
    return d;
}

std::array<Dims, kNbIO> contractDims(Shape const& s)
{
    return {makeDims({s.batch, s.dim, s.len}), makeDims({s.batch, s.dim, s.len}), makeDims({s.dim, s.dstate}),
        makeDims({s.batch, s.groups, s.dstate, s.len}), makeDims({s.batch, s.groups, s.dstate, s.len}),
        makeDims({s.dim}), makeDims({s.batch, s.dim, s.len}), makeDims({s.dim}), makeDims({s.batch, s.dim, s.len})};
}

bool isParameterPosition(int32_t pos)
{
    return pos == 2 || pos == 5 || pos == 7;
}

std::array<DataType, kNbIO> contractTypes(DataType act)
{
    std::array<DataType, kNbIO> types{};
    for (int32_t i = 0; i < kNbIO; ++i)
    {
        types[i] = isParameterPosition(i) ? DataType::kFLOAT : act;
    }
    return types;
}

std::array<DynamicPluginTensorDesc, kNbIO> dynamicDescs(Shape const& s, DataType act)
{
    auto const dims = contractDims(s);
    auto const types = contractTypes(act);
    std::array<DynamicPluginTensorDesc, kNbIO> descs{};
    for (int32_t i = 0; i < kNbIO; ++i)
    {
        descs[i].desc.dims = dims[i];
        descs[i].desc.type = types[i];
        descs[i].desc.format = TensorFormat::kLINEAR;
        descs[i].min = descs[i].opt = descs[i].max = dims[i];
    }
    return descs;
}

std::array<PluginTensorDesc, kNbIO> runtimeDescs(Shape const& s, DataType act)
{
    auto const dyn = dynamicDescs(s, act);
    std::array<PluginTensorDesc, kNbIO> descs{};
    for (int32_t i = 0; i < kNbIO; ++i)
    {
        descs[i] = dyn[i].desc;
    }
    return descs;
}

char const* typeName(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return "fp32";
    case DataType::kHALF: return "fp16";
    case DataType::kBF16: return "bf16";
    default: return "other";
    }
}

// ---------------------------------------------------------------------------------------------
// Plugin creation and capability access.

template <typename Interface>
Interface* capability(IPluginV3* plugin, PluginCapabilityType type)
{
    return plugin == nullptr ? nullptr : static_cast<Interface*>(plugin->getCapabilityInterface(type));
}

struct PluginDeleter
{
    void operator()(IPluginV3* p) const { delete p; }
};
using PluginPtr = std::unique_ptr<IPluginV3, PluginDeleter>;

PluginPtr createWithField(IPluginCreatorV3One* creator, PluginFieldType type, int64_t value, TensorRTPhase phase)
{
    alignas(8) unsigned char storage[8] = {};
    switch (type)
    {
    case PluginFieldType::kINT8: { int8_t v = static_cast<int8_t>(value); std::memcpy(storage, &v, sizeof v); break; }
    case PluginFieldType::kINT16: { int16_t v = static_cast<int16_t>(value); std::memcpy(storage, &v, sizeof v); break; }
    case PluginFieldType::kINT32: { int32_t v = static_cast<int32_t>(value); std::memcpy(storage, &v, sizeof v); break; }
    case PluginFieldType::kINT64: std::memcpy(storage, &value, sizeof value); break;
    case PluginFieldType::kFLOAT32: { float v = static_cast<float>(value); std::memcpy(storage, &v, sizeof v); break; }
    default: break;
    }
    PluginField field("delta_softplus", storage, type, 1);
    PluginFieldCollection fc{1, &field};
    return PluginPtr(creator->createPlugin("vivim_scan_under_test", &fc, phase));
}

// Serialised delta_softplus as the plugin reports it, or -1.
int64_t serialisedSoftplus(IPluginV3* plugin)
{
    auto* runtime = capability<IPluginV3OneRuntime>(plugin, PluginCapabilityType::kRUNTIME);
    if (runtime == nullptr)
    {
        return -1;
    }
    PluginFieldCollection const* fc = runtime->getFieldsToSerialize();
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (f.name != nullptr && std::string(f.name) == "delta_softplus" && f.length == 1 && f.data != nullptr)
        {
            if (f.type == PluginFieldType::kINT32)
            {
                return *static_cast<int32_t const*>(f.data);
            }
            if (f.type == PluginFieldType::kINT64)
            {
                return *static_cast<int64_t const*>(f.data);
            }
        }
    }
    return -1;
}

// What an engine does: copy every serialised field into storage it owns, drop the build plugin,
// and later recreate the plugin at kRUNTIME from the copies.
struct SerialisedFields
{
    std::vector<std::string> names;
    std::vector<std::vector<unsigned char>> payloads;
    std::vector<PluginField> fields;
    PluginFieldCollection collection{};
};

size_t fieldElementSize(PluginFieldType type)
{
    switch (type)
    {
    case PluginFieldType::kINT8:
    case PluginFieldType::kCHAR: return 1;
    case PluginFieldType::kINT16:
    case PluginFieldType::kFLOAT16:
    case PluginFieldType::kBF16: return 2;
    case PluginFieldType::kINT32:
    case PluginFieldType::kFLOAT32: return 4;
    case PluginFieldType::kINT64:
    case PluginFieldType::kFLOAT64: return 8;
    default: return 0;
    }
}

bool serialise(IPluginV3* plugin, SerialisedFields& out)
{
    auto* runtime = capability<IPluginV3OneRuntime>(plugin, PluginCapabilityType::kRUNTIME);
    PluginFieldCollection const* fc = runtime == nullptr ? nullptr : runtime->getFieldsToSerialize();
    if (fc == nullptr)
    {
        return false;
    }
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        size_t const bytes = fieldElementSize(f.type) * static_cast<size_t>(f.length);
        if (f.name == nullptr || bytes == 0 || f.data == nullptr)
        {
            return false;
        }
        out.names.emplace_back(f.name);
        auto const* begin = static_cast<unsigned char const*>(f.data);
        out.payloads.emplace_back(begin, begin + bytes);
    }
    for (size_t i = 0; i < out.names.size(); ++i)
    {
        out.fields.emplace_back(out.names[i].c_str(), out.payloads[i].data(), fc->fields[i].type, fc->fields[i].length);
    }
    out.collection.nbFields = static_cast<int32_t>(out.fields.size());
    out.collection.fields = out.fields.data();
    return true;
}

// ---------------------------------------------------------------------------------------------
// Interface checks (no GPU needed).

void checkCreatorIdentity(IPluginCreatorV3One* creator)
{
    report(std::string(creator->getPluginName()) == "VivimSelectiveScan", "creator name is VivimSelectiveScan");
    report(std::string(creator->getPluginVersion()) == "1", "creator version is \"1\"");
    report(std::string(creator->getPluginNamespace()) == "vivim", "creator namespace is \"vivim\"");
    PluginFieldCollection const* names = creator->getFieldNames();
    bool found = false;
    for (int32_t i = 0; names != nullptr && i < names->nbFields; ++i)
    {
        found = found
            || (std::string(names->fields[i].name) == "delta_softplus" && names->fields[i].type == PluginFieldType::kINT32);
    }
    report(found && names->nbFields == 1, "getFieldNames declares exactly delta_softplus (kINT32)");
}

void checkFieldParsing(IPluginCreatorV3One* creator)
{
    struct Variant
    {
        PluginFieldType type;
        char const* label;
        int64_t value;
    };
    Variant const variants[] = {{PluginFieldType::kINT32, "INT32", 1}, {PluginFieldType::kINT32, "INT32", 0},
        {PluginFieldType::kINT64, "INT64", 1}, {PluginFieldType::kINT64, "INT64", 0},
        {PluginFieldType::kINT8, "INT8", 1}, {PluginFieldType::kINT16, "INT16", 1}};
    for (Variant const& v : variants)
    {
        PluginPtr plugin = createWithField(creator, v.type, v.value, TensorRTPhase::kBUILD);
        report(plugin != nullptr && serialisedSoftplus(plugin.get()) == v.value,
            std::string("createPlugin from ") + v.label + " delta_softplus=" + std::to_string(v.value));
    }
    RecordingLogger& log = gLoggerFinder.logger();
    log.clear();
    PluginPtr bad = createWithField(creator, PluginFieldType::kINT32, 2, TensorRTPhase::kBUILD);
    report(bad == nullptr && log.saw("delta_softplus"), "createPlugin rejects delta_softplus=2 and logs through the finder");
    log.clear();
    bad = createWithField(creator, PluginFieldType::kFLOAT32, 1, TensorRTPhase::kBUILD);
    report(bad == nullptr && log.saw("delta_softplus"), "createPlugin rejects a kFLOAT32 delta_softplus");
    PluginFieldCollection empty{0, nullptr};
    PluginPtr defaulted(creator->createPlugin("no_fields", &empty, TensorRTPhase::kBUILD));
    report(defaulted != nullptr && serialisedSoftplus(defaulted.get()) == 0, "missing delta_softplus defaults to 0");
}

void checkCapabilities(IPluginV3* plugin)
{
    InterfaceInfo const info = plugin->getInterfaceInfo();
    report(std::string(info.kind) == "PLUGIN" && info.major == 1, "plugin interface is PLUGIN 1.x");
    auto* core = capability<IPluginV3OneCore>(plugin, PluginCapabilityType::kCORE);
    auto* build = capability<IPluginV3OneBuild>(plugin, PluginCapabilityType::kBUILD);
    auto* runtime = capability<IPluginV3OneRuntime>(plugin, PluginCapabilityType::kRUNTIME);
    report(core != nullptr && std::string(core->getInterfaceInfo().kind) == "PLUGIN_V3ONE_CORE",
        "kCORE capability is PLUGIN_V3ONE_CORE");
    report(build != nullptr && std::string(build->getInterfaceInfo().kind) == "PLUGIN_V3ONE_BUILD",
        "kBUILD capability is PLUGIN_V3ONE_BUILD");
    report(runtime != nullptr && std::string(runtime->getInterfaceInfo().kind) == "PLUGIN_V3ONE_RUNTIME",
        "kRUNTIME capability is PLUGIN_V3ONE_RUNTIME");
    if (core != nullptr)
    {
        report(std::string(core->getPluginName()) == "VivimSelectiveScan"
                && std::string(core->getPluginVersion()) == "1" && std::string(core->getPluginNamespace()) == "vivim",
            "plugin name/version/namespace match the creator");
    }
}

void checkOutputs(IPluginV3OneBuild* build)
{
    report(build->getNbOutputs() == 1, "getNbOutputs == 1");
    for (DataType act : {DataType::kHALF, DataType::kFLOAT, DataType::kBF16})
    {
        auto const in = contractTypes(act);
        DataType out = DataType::kINT32;
        int32_t const rc = build->getOutputDataTypes(&out, 1, in.data(), kNbIn);
        report(rc == 0 && out == act, std::string("getOutputDataTypes: ") + typeName(act) + " in -> same type out");
    }

    Shape const s{2, 96, 777, 16, 3};
    ConstantExprBuilder builder;
    auto const dims = contractDims(s);
    std::array<DimsExprs, kNbIn> inputs{};
    for (int32_t i = 0; i < kNbIn; ++i)
    {
        inputs[i].nbDims = dims[i].nbDims;
        for (int32_t a = 0; a < dims[i].nbDims; ++a)
        {
            inputs[i].d[a] = builder.constant(dims[i].d[a]);
        }
    }
    DimsExprs out{};
    int32_t const rc = build->getOutputShapes(inputs.data(), kNbIn, nullptr, 0, &out, 1, builder);
    bool ok = rc == 0 && out.nbDims == 3;
    for (int32_t a = 0; ok && a < 3; ++a)
    {
        ok = out.d[a] != nullptr && out.d[a]->isConstant() && out.d[a]->getConstantValue() == dims[0].d[a];
    }
    report(ok, "getOutputShapes: y dims == u dims [2, 96, 777]");
}

bool acceptsAll(IPluginV3OneBuild* build, std::array<DynamicPluginTensorDesc, kNbIO> descs, int32_t& firstRejected)
{
    for (int32_t pos = 0; pos < kNbIO; ++pos)
    {
        if (!build->supportsFormatCombination(pos, descs.data(), kNbIn, 1))
        {
            firstRejected = pos;
            return false;
        }
    }
    firstRejected = -1;
    return true;
}

void checkFormats(IPluginV3OneBuild* build)
{
    Shape const s{1, 48, 64, 8, 3};
    for (DataType act : {DataType::kHALF, DataType::kFLOAT, DataType::kBF16})
    {
        int32_t rejected = -1;
        report(acceptsAll(build, dynamicDescs(s, act), rejected),
            std::string("supportsFormatCombination accepts all-") + typeName(act) + " activations with fp32 A/D/dt_bias",
            rejected >= 0 ? "rejected position " + std::to_string(rejected) : "");
    }
    struct Rejection
    {
        char const* what;
        DataType act;
        int32_t pos;
        DataType type;
        TensorFormat format;
    };
    Rejection const rejections[] = {
        {"u in INT8", DataType::kHALF, 0, DataType::kINT8, TensorFormat::kLINEAR},
        {"u in INT32", DataType::kHALF, 0, DataType::kINT32, TensorFormat::kLINEAR},
        {"delta fp32 while u fp16", DataType::kHALF, 1, DataType::kFLOAT, TensorFormat::kLINEAR},
        {"A in fp16", DataType::kHALF, 2, DataType::kHALF, TensorFormat::kLINEAR},
        {"Bm in fp16 while u bf16", DataType::kBF16, 3, DataType::kHALF, TensorFormat::kLINEAR},
        {"Cm in CHW2 format", DataType::kHALF, 4, DataType::kHALF, TensorFormat::kCHW2},
        {"Dskip in fp16", DataType::kHALF, 5, DataType::kHALF, TensorFormat::kLINEAR},
        {"z fp16 while u fp32", DataType::kFLOAT, 6, DataType::kHALF, TensorFormat::kLINEAR},
        {"dt_bias in bf16", DataType::kBF16, 7, DataType::kBF16, TensorFormat::kLINEAR},
        {"output fp32 while u fp16", DataType::kHALF, 8, DataType::kFLOAT, TensorFormat::kLINEAR},
    };
    for (Rejection const& r : rejections)
    {
        auto descs = dynamicDescs(s, r.act);
        descs[r.pos].desc.type = r.type;
        descs[r.pos].desc.format = r.format;
        report(!build->supportsFormatCombination(r.pos, descs.data(), kNbIn, 1),
            std::string("supportsFormatCombination rejects ") + r.what);
    }
}

void checkConfigure(IPluginV3OneBuild* build)
{
    RecordingLogger& log = gLoggerFinder.logger();
    auto good = dynamicDescs({2, 96, 300, 16, 3}, DataType::kHALF);
    report(build->configurePlugin(good.data(), kNbIn, good.data() + kNbIn, 1) == 0, "configurePlugin accepts a valid shape");

    // Dynamic batch and L: desc dims carry -1, the profile gives the range.
    auto dynamic = dynamicDescs({4, 96, 4096, 16, 3}, DataType::kHALF);
    int32_t const lAxis[kNbIO] = {2, 2, -1, 3, 3, -1, 2, -1, 2};
    for (int32_t i = 0; i < kNbIO; ++i)
    {
        if (lAxis[i] >= 0)
        {
            dynamic[i].desc.dims.d[lAxis[i]] = -1;
            dynamic[i].min.d[lAxis[i]] = 1;
            dynamic[i].opt.d[lAxis[i]] = 64;  // opt below max: a workspace sized at opt would be caught below
            dynamic[i].desc.dims.d[0] = -1;  // every tensor with an L axis also has the batch axis first
            dynamic[i].min.d[0] = dynamic[i].opt.d[0] = 1;
        }
    }
    report(build->configurePlugin(dynamic.data(), kNbIn, dynamic.data() + kNbIn, 1) == 0,
        "configurePlugin accepts a dynamic profile (batch 1..4, L 1..4096)");
    auto tooLong = dynamic;  // a profile whose largest batch exceeds the kernel's grid limit
    for (int32_t i = 0; i < kNbIO; ++i)
    {
        if (lAxis[i] >= 0)
        {
            tooLong[i].max.d[0] = 70000;
        }
    }
    log.clear();
    report(build->configurePlugin(tooLong.data(), kNbIn, tooLong.data() + kNbIn, 1) != 0 && log.saw("batch = 70000"),
        "configurePlugin rejects a profile whose largest batch exceeds the kernel's limit");
    for (auto const& [tensor, axis, symbol] : {std::tuple<int32_t, int32_t, char const*>{0, 1, "D must be static"},
             std::tuple<int32_t, int32_t, char const*>{2, 1, "N must be static"},
             std::tuple<int32_t, int32_t, char const*>{3, 1, "G must be static"}})
    {
        auto ranged = good;
        ranged[tensor].min.d[axis] = 1;  // a range on an axis the workspace size is not monotonic in
        log.clear();
        report(build->configurePlugin(ranged.data(), kNbIn, ranged.data() + kNbIn, 1) != 0 && log.saw(symbol),
            std::string("configurePlugin rejects a profile where ") + symbol);
    }

    struct Bad
    {
        char const* what;
        Shape shape;
        char const* fragment;
    };
    Bad const bads[] = {
        {"D % G != 0 (D=100, G=3)", {1, 100, 64, 16, 3}, "D % G"},
        {"N = 65 > 64", {1, 96, 64, 65, 3}, "N = 65"},
        {"N = 0", {1, 96, 64, 0, 3}, "N = 0"},
        {"batch 65536 (the kernel's grid limit)", {65536, 96, 64, 16, 3}, "batch = 65536"},
    };
    for (Bad const& b : bads)
    {
        auto descs = dynamicDescs(b.shape, DataType::kHALF);
        log.clear();
        int32_t const rc = build->configurePlugin(descs.data(), kNbIn, descs.data() + kNbIn, 1);
        report(rc != 0 && log.saw(b.fragment), std::string("configurePlugin rejects ") + b.what + " with a logged reason");
    }
    auto wrongRank = good;
    wrongRank[2].desc.dims = wrongRank[2].max = makeDims({96, 16, 1});
    log.clear();
    report(build->configurePlugin(wrongRank.data(), kNbIn, wrongRank.data() + kNbIn, 1) != 0 && log.saw("rank"),
        "configurePlugin rejects A of rank 3");
    auto wrongLen = good;
    wrongLen[3].desc.dims.d[3] = wrongLen[3].max.d[3] = 299;
    log.clear();
    report(build->configurePlugin(wrongLen.data(), kNbIn, wrongLen.data() + kNbIn, 1) != 0 && log.saw("L mismatch"),
        "configurePlugin rejects Bm with a different L");
    auto wrongGroups = good;
    wrongGroups[4].desc.dims.d[1] = wrongGroups[4].max.d[1] = 1;
    log.clear();
    report(build->configurePlugin(wrongGroups.data(), kNbIn, wrongGroups.data() + kNbIn, 1) != 0 && log.saw("G mismatch"),
        "configurePlugin rejects Bm/Cm with different G");

    // Workspace: at least what the kernel asks for at every L of the profile.
    size_t const reported = build->getWorkspaceSize(dynamic.data(), kNbIn, dynamic.data() + kNbIn, 1);
    size_t needed = 0;
    for (int64_t batch = 1; batch <= 4; ++batch)
    {
        for (int64_t len = 1; len <= 4096; ++len)
        {
            needed = std::max(needed, vivim_selective_scan_workspace_size(batch, 96, len, 16, 3));
        }
    }
    report(reported >= needed, "getWorkspaceSize covers the kernel's need over the profile",
        std::to_string(reported) + " >= " + std::to_string(needed) + " bytes");
}

void checkRoundTrip(IPluginCreatorV3One* creator)
{
    for (int64_t softplus : {0, 1})
    {
        PluginPtr build = createWithField(creator, PluginFieldType::kINT64, softplus, TensorRTPhase::kBUILD);
        SerialisedFields stored;
        bool const serialised = build != nullptr && serialise(build.get(), stored);
        build.reset();  // the engine keeps only the copied fields
        PluginPtr runtime(serialised ? creator->createPlugin("vivim_scan_runtime", &stored.collection, TensorRTPhase::kRUNTIME)
                                     : nullptr);
        report(runtime != nullptr && serialisedSoftplus(runtime.get()) == softplus,
            "getFieldsToSerialize -> createPlugin(kRUNTIME) round trip, delta_softplus=" + std::to_string(softplus));
        if (runtime == nullptr)
        {
            continue;
        }
        report(capability<IPluginV3OneCore>(runtime.get(), PluginCapabilityType::kCORE) != nullptr
                && capability<IPluginV3OneRuntime>(runtime.get(), PluginCapabilityType::kRUNTIME) != nullptr,
            "runtime plugin exposes kCORE and kRUNTIME");
        NullResourceContext context;
        auto* rt = capability<IPluginV3OneRuntime>(runtime.get(), PluginCapabilityType::kRUNTIME);
        PluginPtr attached(rt->attachToContext(&context));
        report(attached != nullptr && attached.get() != runtime.get() && serialisedSoftplus(attached.get()) == softplus,
            "attachToContext returns a distinct clone with the same fields");
        PluginPtr cloned(runtime->clone());
        runtime.reset();  // a clone must not depend on its source
        report(cloned != nullptr && serialisedSoftplus(cloned.get()) == softplus, "clone() outlives its source");
    }
}

// ---------------------------------------------------------------------------------------------
// GPU: enqueue against the float64 reference.

#define CUDA_OK(expr, what)                                                                                            \
    do                                                                                                                 \
    {                                                                                                                  \
        cudaError_t const _status = (expr);                                                                            \
        if (_status != cudaSuccess)                                                                                    \
        {                                                                                                              \
            report(false, what, std::string(#expr) + " -> " + cudaGetErrorString(_status));                            \
            return;                                                                                                    \
        }                                                                                                              \
    } while (0)

struct DeviceBuffer
{
    void* ptr = nullptr;
    size_t bytes = 0;
    DeviceBuffer() = default;
    DeviceBuffer(DeviceBuffer const&) = delete;
    DeviceBuffer& operator=(DeviceBuffer const&) = delete;
    ~DeviceBuffer()
    {
        if (ptr != nullptr)
        {
            cudaFree(ptr);
        }
    }
    cudaError_t allocate(size_t n)
    {
        bytes = n;
        return n == 0 ? cudaSuccess : cudaMalloc(&ptr, n);
    }
};

size_t typeSize(DataType t)
{
    return t == DataType::kFLOAT ? 4 : 2;
}

// Round `values` to `type` in place (so the reference sees what the device sees) and pack them.
std::vector<unsigned char> pack(std::vector<double>& values, DataType type)
{
    std::vector<unsigned char> bytes(values.size() * typeSize(type));
    for (size_t i = 0; i < values.size(); ++i)
    {
        float const f = static_cast<float>(values[i]);
        if (type == DataType::kFLOAT)
        {
            std::memcpy(&bytes[i * 4], &f, 4);
            values[i] = f;
        }
        else if (type == DataType::kHALF)
        {
            __half const h = __float2half_rn(f);
            std::memcpy(&bytes[i * 2], &h, 2);
            values[i] = __half2float(h);
        }
        else
        {
            __nv_bfloat16 const h = __float2bfloat16_rn(f);
            std::memcpy(&bytes[i * 2], &h, 2);
            values[i] = __bfloat162float(h);
        }
    }
    return bytes;
}

std::vector<double> unpack(std::vector<unsigned char> const& bytes, DataType type)
{
    size_t const n = bytes.size() / typeSize(type);
    std::vector<double> values(n);
    for (size_t i = 0; i < n; ++i)
    {
        if (type == DataType::kFLOAT)
        {
            float f;
            std::memcpy(&f, &bytes[i * 4], 4);
            values[i] = f;
        }
        else if (type == DataType::kHALF)
        {
            __half h;
            std::memcpy(&h, &bytes[i * 2], 2);
            values[i] = __half2float(h);
        }
        else
        {
            __nv_bfloat16 h;
            std::memcpy(&h, &bytes[i * 2], 2);
            values[i] = __bfloat162float(h);
        }
    }
    return values;
}

struct GpuCase
{
    Shape shape;
    DataType type;
    int deltaSoftplus;
    bool captureGraph;
    char const* label;
};

ScanProblem randomProblem(GpuCase const& c, std::mt19937_64& rng)
{
    ScanProblem p;
    p.batch = c.shape.batch;
    p.dim = c.shape.dim;
    p.seqlen = c.shape.len;
    p.dstate = c.shape.dstate;
    p.groups = c.shape.groups;
    p.deltaSoftplus = c.deltaSoftplus != 0;
    std::normal_distribution<double> normal(0.0, 1.0);
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    auto fill = [&](std::vector<double>& v, size_t n, auto&& draw) {
        v.resize(n);
        for (double& x : v)
        {
            x = draw();
        }
    };
    size_t const act = static_cast<size_t>(p.batch * p.dim * p.seqlen);
    size_t const bc = static_cast<size_t>(p.batch * p.groups * p.dstate * p.seqlen);
    fill(p.u, act, [&] { return normal(rng); });
    fill(p.z, act, [&] { return normal(rng); });
    fill(p.B, bc, [&] { return normal(rng); });
    fill(p.C, bc, [&] { return normal(rng); });
    fill(p.D, static_cast<size_t>(p.dim), [&] { return normal(rng); });
    fill(p.A, static_cast<size_t>(p.dim * p.dstate), [&] { return -(0.05 + 1.95 * unit(rng)); });
    if (p.deltaSoftplus)
    {
        // Mamba-style: softplus(raw + bias) lands in roughly 0.01..0.5.
        fill(p.delta, act, [&] { return 0.5 * normal(rng); });
        fill(p.deltaBias, static_cast<size_t>(p.dim), [&] { return -4.0 + 3.0 * unit(rng); });
    }
    else
    {
        fill(p.delta, act, [&] { return 0.2 * unit(rng); });
        fill(p.deltaBias, static_cast<size_t>(p.dim), [&] { return 0.05 * unit(rng); });
    }
    return p;
}

double tolerance(DataType t)
{
    return t == DataType::kFLOAT ? 1e-4 : (t == DataType::kHALF ? 5e-3 : 1e-2);
}

// Worst |y - ref| / (|ref| + rms(ref)); infinity when y has a non-finite value (poison left behind).
double scaledError(std::vector<double> const& y, std::vector<double> const& ref, double& maxAbs)
{
    double sumSq = 0.0;
    for (double r : ref)
    {
        sumSq += r * r;
    }
    double const rms = std::sqrt(sumSq / std::max<size_t>(ref.size(), 1)) + 1e-30;
    double worst = 0.0;
    maxAbs = 0.0;
    for (size_t i = 0; i < y.size(); ++i)
    {
        if (!std::isfinite(y[i]))
        {
            return INFINITY;
        }
        double const err = std::fabs(y[i] - ref[i]);
        maxAbs = std::max(maxAbs, err);
        worst = std::max(worst, err / (std::fabs(ref[i]) + rms));
    }
    return worst;
}

void runGpuCase(IPluginCreatorV3One* creator, GpuCase const& c, uint64_t seed)
{
    Shape const& s = c.shape;
    char name[256];
    std::snprintf(name, sizeof name, "enqueue %s [B=%lld D=%lld L=%lld N=%lld G=%lld %s softplus=%d]", c.label,
        static_cast<long long>(s.batch), static_cast<long long>(s.dim), static_cast<long long>(s.len),
        static_cast<long long>(s.dstate), static_cast<long long>(s.groups), typeName(c.type), c.deltaSoftplus);
    std::mt19937_64 rng(seed);
    ScanProblem problem = randomProblem(c, rng);

    // Host tensors in contract order; packing rounds the double copies to the device types.
    std::vector<double>* hostValues[kNbIn]
        = {&problem.u, &problem.delta, &problem.A, &problem.B, &problem.C, &problem.D, &problem.z, &problem.deltaBias};
    auto const types = contractTypes(c.type);
    std::vector<std::vector<unsigned char>> packed(kNbIn);
    for (int32_t i = 0; i < kNbIn; ++i)
    {
        packed[i] = pack(*hostValues[i], types[i]);
    }
    auto const t0 = std::chrono::steady_clock::now();
    std::vector<double> const reference = vivim_harness::referenceSelectiveScan(problem);
    double const refSeconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    // The plugin as an engine would run it: build-phase object configured, fields serialised,
    // runtime object recreated and attached to an execution context.
    PluginFieldType const fieldType = (seed % 2 == 0) ? PluginFieldType::kINT32 : PluginFieldType::kINT64;
    PluginPtr build = createWithField(creator, fieldType, c.deltaSoftplus, TensorRTPhase::kBUILD);
    auto* buildCap = capability<IPluginV3OneBuild>(build.get(), PluginCapabilityType::kBUILD);
    auto dyn = dynamicDescs(s, c.type);
    if (buildCap == nullptr || buildCap->configurePlugin(dyn.data(), kNbIn, dyn.data() + kNbIn, 1) != 0)
    {
        report(false, name, "build-phase plugin could not be created/configured");
        return;
    }
    size_t const workspaceBytes = buildCap->getWorkspaceSize(dyn.data(), kNbIn, dyn.data() + kNbIn, 1);
    SerialisedFields stored;
    if (!serialise(build.get(), stored))
    {
        report(false, name, "getFieldsToSerialize failed");
        return;
    }
    PluginPtr runtime(creator->createPlugin("vivim_scan_runtime", &stored.collection, TensorRTPhase::kRUNTIME));
    NullResourceContext context;
    auto* rtCap = capability<IPluginV3OneRuntime>(runtime.get(), PluginCapabilityType::kRUNTIME);
    PluginPtr attached(rtCap != nullptr ? rtCap->attachToContext(&context) : nullptr);
    auto* exec = capability<IPluginV3OneRuntime>(attached.get(), PluginCapabilityType::kRUNTIME);
    auto const descs = runtimeDescs(s, c.type);
    if (exec == nullptr || exec->onShapeChange(descs.data(), kNbIn, descs.data() + kNbIn, 1) != 0)
    {
        report(false, name, "runtime plugin could not be created/attached/shaped");
        return;
    }

    DeviceBuffer inputs[kNbIn];
    DeviceBuffer output;
    DeviceBuffer workspace;
    for (int32_t i = 0; i < kNbIn; ++i)
    {
        CUDA_OK(inputs[i].allocate(packed[i].size()), name);
        CUDA_OK(cudaMemcpy(inputs[i].ptr, packed[i].data(), packed[i].size(), cudaMemcpyHostToDevice), name);
    }
    size_t const outBytes = reference.size() * typeSize(c.type);
    CUDA_OK(output.allocate(outBytes), name);
    CUDA_OK(workspace.allocate(workspaceBytes), name);
    cudaStream_t stream = nullptr;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), name);
    std::unique_ptr<CUstream_st, void (*)(cudaStream_t)> streamGuard(stream, [](cudaStream_t st) { cudaStreamDestroy(st); });

    void const* inPtrs[kNbIn];
    for (int32_t i = 0; i < kNbIn; ++i)
    {
        inPtrs[i] = inputs[i].ptr;
    }
    void* outPtrs[1] = {output.ptr};
    // NaN poison in the output and garbage in the workspace: TensorRT gives neither zeroed.
    auto poison = [&]() -> cudaError_t {
        cudaError_t st = cudaMemsetAsync(output.ptr, 0xFF, outBytes, stream);
        if (st == cudaSuccess && workspaceBytes > 0)
        {
            st = cudaMemsetAsync(workspace.ptr, 0xA5, workspaceBytes, stream);
        }
        return st;
    };
    auto fetch = [&](std::vector<unsigned char>& host) -> cudaError_t {
        host.resize(outBytes);
        return cudaMemcpy(host.data(), output.ptr, outBytes, cudaMemcpyDeviceToHost);
    };

    CUDA_OK(poison(), name);
    int32_t const rc = exec->enqueue(descs.data(), descs.data() + kNbIn, inPtrs, outPtrs, workspace.ptr, stream);
    CUDA_OK(cudaStreamSynchronize(stream), name);
    CUDA_OK(cudaGetLastError(), name);
    std::vector<unsigned char> first;
    CUDA_OK(fetch(first), name);
    double maxAbs = 0.0;
    double const err = scaledError(unpack(first, c.type), reference, maxAbs);
    char detail[256];
    std::snprintf(detail, sizeof detail, "rc=%d scaled_err=%.3g (tol %.1g) max_abs_err=%.3g workspace=%zu B ref_cpu=%.2fs",
        rc, err, tolerance(c.type), maxAbs, workspaceBytes, refSeconds);
    report(rc == 0 && err <= tolerance(c.type), name, detail);

    // Same inputs, same bits.
    CUDA_OK(poison(), name);
    exec->enqueue(descs.data(), descs.data() + kNbIn, inPtrs, outPtrs, workspace.ptr, stream);
    CUDA_OK(cudaStreamSynchronize(stream), name);
    std::vector<unsigned char> second;
    CUDA_OK(fetch(second), name);
    report(second == first, std::string(c.label) + ": repeated enqueue gives identical bits");

    // Latency (informational): mean over 20 enqueues after warm-up.
    cudaEvent_t start = nullptr;
    cudaEvent_t stop = nullptr;
    CUDA_OK(cudaEventCreate(&start), name);
    CUDA_OK(cudaEventCreate(&stop), name);
    int const iters = 20;
    CUDA_OK(cudaEventRecord(start, stream), name);
    for (int i = 0; i < iters; ++i)
    {
        exec->enqueue(descs.data(), descs.data() + kNbIn, inPtrs, outPtrs, workspace.ptr, stream);
    }
    CUDA_OK(cudaEventRecord(stop, stream), name);
    CUDA_OK(cudaEventSynchronize(stop), name);
    float ms = 0.f;
    CUDA_OK(cudaEventElapsedTime(&ms, start, stop), name);
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    std::printf("INFO %s: %.1f us per enqueue (mean of %d)\n", c.label, 1000.0 * ms / iters, iters);

    if (c.captureGraph)
    {
        // Global capture mode turns any synchronising or allocating call inside enqueue into an error.
        CUDA_OK(poison(), name);
        CUDA_OK(cudaStreamSynchronize(stream), name);
        cudaGraph_t graph = nullptr;
        cudaGraphExec_t graphExec = nullptr;
        CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), name);
        int32_t const captureRc
            = exec->enqueue(descs.data(), descs.data() + kNbIn, inPtrs, outPtrs, workspace.ptr, stream);
        cudaError_t const endStatus = cudaStreamEndCapture(stream, &graph);
        bool ok = captureRc == 0 && endStatus == cudaSuccess && graph != nullptr;
        ok = ok && cudaGraphInstantiate(&graphExec, graph, 0) == cudaSuccess;
        ok = ok && cudaGraphLaunch(graphExec, stream) == cudaSuccess;
        ok = ok && cudaStreamSynchronize(stream) == cudaSuccess;
        std::vector<unsigned char> replayed;
        ok = ok && fetch(replayed) == cudaSuccess && replayed == first;
        if (graphExec != nullptr)
        {
            cudaGraphExecDestroy(graphExec);
        }
        if (graph != nullptr)
        {
            cudaGraphDestroy(graph);
        }
        cudaGetLastError();
        report(ok, std::string(c.label) + ": enqueue captured in a CUDA graph replays to identical bits");
    }
}

void runGpuChecks(IPluginCreatorV3One* creator, uint64_t seed, bool requireGpu)
{
    int count = 0;
    cudaError_t const status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess || count == 0)
    {
        std::string const why = status != cudaSuccess ? cudaGetErrorString(status) : "no CUDA device";
        if (requireGpu)
        {
            report(false, "GPU available (--require-gpu)", why);
        }
        else
        {
            std::printf("SKIP GPU enqueue checks: %s\n", why.c_str());
        }
        return;
    }
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, 0);
    int runtimeVersion = 0;
    int driverVersion = 0;
    cudaRuntimeGetVersion(&runtimeVersion);
    cudaDriverGetVersion(&driverVersion);
    std::printf("INFO GPU %s (sm_%d%d), CUDA runtime %d, driver %d, seed %llu\n", prop.name, prop.major, prop.minor,
        runtimeVersion, driverVersion, static_cast<unsigned long long>(seed));

    GpuCase const cases[] = {
        {{1, 384, 20480, 16, 3}, DataType::kHALF, 1, false, "stage-1 fused 3-branch fp16"},
        {{1, 128, 20480, 16, 1}, DataType::kFLOAT, 1, false, "stage-1 single branch fp32"},
        {{2, 48, 7, 8, 3}, DataType::kFLOAT, 0, true, "short L=7 fp32 G=3"},
        {{3, 30, 7, 64, 3}, DataType::kHALF, 1, true, "short L=7 fp16 N=64"},
        {{1, 3072, 320, 16, 3}, DataType::kHALF, 1, true, "stage-4 fused 3-branch fp16"},
        {{1, 96, 2049, 32, 3}, DataType::kBF16, 1, false, "L=2049 bf16"},
        {{2, 6, 1, 4, 3}, DataType::kFLOAT, 1, false, "L=1 fp32"},
    };
    uint64_t caseSeed = seed;
    for (GpuCase const& c : cases)
    {
        runGpuCase(creator, c, caseSeed++);
    }
}

}  // namespace

int main(int argc, char** argv)
{
    std::string pluginPath = VIVIM_TRT_PLUGIN_DEFAULT_PATH;
    bool requireGpu = false;
    bool skipGpu = false;
    uint64_t seed = std::random_device{}();
    for (int i = 1; i < argc; ++i)
    {
        std::string const arg = argv[i];
        if (arg == "--plugin" && i + 1 < argc)
        {
            pluginPath = argv[++i];
        }
        else if (arg == "--require-gpu")
        {
            requireGpu = true;
        }
        else if (arg == "--skip-gpu")
        {
            skipGpu = true;
        }
        else if (arg == "--seed" && i + 1 < argc)
        {
            seed = std::stoull(argv[++i]);
        }
        else
        {
            std::fprintf(stderr, "usage: %s [--plugin PATH] [--require-gpu] [--skip-gpu] [--seed N]\n", argv[0]);
            return 2;
        }
    }
    std::printf("INFO harness compiled against TensorRT headers %d.%d.%d; plugin %s\n", NV_TENSORRT_MAJOR,
        NV_TENSORRT_MINOR, NV_TENSORRT_PATCH, pluginPath.c_str());

    void* library = dlopen(pluginPath.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!report(library != nullptr, "dlopen plugin library", library == nullptr ? dlerror() : ""))
    {
        std::printf("SUMMARY %d passed, %d failed\n", gPassed, gFailed);
        return 1;
    }
    using GetCreatorsFn = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinderFn = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreatorsFn>(dlsym(library, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinderFn>(dlsym(library, "setLoggerFinder"));
    report(getCreators != nullptr, "library exports getCreators");
    report(setLoggerFinder != nullptr, "library exports setLoggerFinder");
    report(dlsym(library, "vivim_selective_scan_fwd") == nullptr, "kernel C API stays private to the library");
    if (getCreators == nullptr || setLoggerFinder == nullptr)
    {
        std::printf("SUMMARY %d passed, %d failed\n", gPassed, gFailed);
        return 1;
    }
    setLoggerFinder(&gLoggerFinder);

    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    IPluginCreatorV3One* creator = nullptr;
    for (int32_t i = 0; creators != nullptr && i < nbCreators; ++i)
    {
        InterfaceInfo const info = creators[i]->getInterfaceInfo();
        if (std::string(info.kind) == "PLUGIN CREATOR_V3ONE" && info.major == 1)
        {
            auto* candidate = static_cast<IPluginCreatorV3One*>(creators[i]);
            if (std::string(candidate->getPluginName()) == "VivimSelectiveScan")
            {
                creator = candidate;
            }
        }
    }
    report(creator != nullptr, "getCreators lists a PLUGIN CREATOR_V3ONE for VivimSelectiveScan",
        "creators: " + std::to_string(nbCreators));
    if (creator != nullptr)
    {
        checkCreatorIdentity(creator);
        checkFieldParsing(creator);
        PluginPtr plugin = createWithField(creator, PluginFieldType::kINT32, 1, TensorRTPhase::kBUILD);
        if (report(plugin != nullptr, "createPlugin(kBUILD)"))
        {
            checkCapabilities(plugin.get());
            auto* build = capability<IPluginV3OneBuild>(plugin.get(), PluginCapabilityType::kBUILD);
            if (build != nullptr)
            {
                checkOutputs(build);
                checkFormats(build);
                checkConfigure(build);
            }
        }
        checkRoundTrip(creator);
        if (!skipGpu)
        {
            runGpuChecks(creator, seed, requireGpu);
        }
    }
    setLoggerFinder(nullptr);
    std::printf("SUMMARY %d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
