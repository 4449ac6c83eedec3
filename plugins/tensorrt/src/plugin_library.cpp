// Entry points TensorRT looks up when it loads the library dynamically
// (IPluginRegistry::loadLibrary, trt.get_plugin_registry().load_library, trtexec --dynamicPlugins).
// There is deliberately no REGISTER_TENSORRT_PLUGIN: that macro needs libnvinfer at link time,
// while this library must link against the CUDA runtime only.
#include "vivim_scan_plugin.h"

#include <atomic>
#include <cstdio>

#if defined(_WIN32)
#define VIVIM_TRT_EXPORT __declspec(dllexport)
#else
#define VIVIM_TRT_EXPORT __attribute__((visibility("default")))
#endif

namespace vivim
{
namespace trt
{
namespace
{

std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept
{
    nvinfer1::ILoggerFinder* finder = gLoggerFinder.load();
    nvinfer1::ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(severity, message.c_str());
    }
    else
    {
        std::fprintf(stderr, "%s\n", message.c_str());
    }
}

}  // namespace

void logError(std::string const& message) noexcept
{
    logMessage(nvinfer1::ILogger::Severity::kERROR, message);
}

void logWarning(std::string const& message) noexcept
{
    logMessage(nvinfer1::ILogger::Severity::kWARNING, message);
}

}  // namespace trt
}  // namespace vivim

extern "C" VIVIM_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    vivim::trt::gLoggerFinder.store(finder);
}

extern "C" VIVIM_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static vivim::trt::SelectiveScanPluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}
