// A minimal IExprBuilder for driving IPluginV3OneBuild::getOutputShapes outside TensorRT.
//
// TensorRT's IDimensionExpr / IExprBuilder are thin handles forwarding to an implementation object
// (apiv::VDimensionExpr / apiv::VExprBuilder, declared in NvInferImpl.h). The headers ask users
// not to derive from them because the ABI belongs to TensorRT; a test harness compiled against the
// same headers may, so here the implementation side is supplied for build-time constants only.
#ifndef VIVIM_TRT_HARNESS_CONST_EXPR_BUILDER_H
#define VIVIM_TRT_HARNESS_CONST_EXPR_BUILDER_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <deque>
#include <limits>
#include <memory>

namespace vivim_harness
{

class ConstantValue final : public nvinfer1::apiv::VDimensionExpr
{
public:
    explicit ConstantValue(int64_t value) : mValue(value) {}
    bool isConstant() const override { return true; }
    int64_t getConstantValue() const override { return mValue; }
    bool isSizeTensor() const override { return false; }

private:
    int64_t mValue;
};

class ConstantExpr final : public nvinfer1::IDimensionExpr
{
public:
    explicit ConstantExpr(int64_t value) : mValue(value) { mImpl = &mValue; }
    ~ConstantExpr() noexcept override = default;

private:
    ConstantValue mValue;
};

class ConstantBuilderImpl final : public nvinfer1::apiv::VExprBuilder
{
public:
    nvinfer1::IDimensionExpr const* constant(int64_t value) override
    {
        mOwned.push_back(std::make_unique<ConstantExpr>(value));
        return mOwned.back().get();
    }

    nvinfer1::IDimensionExpr const* operation(nvinfer1::DimensionOperation op, nvinfer1::IDimensionExpr const& first,
        nvinfer1::IDimensionExpr const& second) override
    {
        if (!first.isConstant() || !second.isConstant())
        {
            return nullptr;  // symbolic arithmetic is TensorRT's job; the plugin under test needs none
        }
        int64_t const a = first.getConstantValue();
        int64_t const b = second.getConstantValue();
        using Op = nvinfer1::DimensionOperation;
        switch (op)
        {
        case Op::kSUM: return constant(a + b);
        case Op::kPROD: return constant(a * b);
        case Op::kMAX: return constant(a > b ? a : b);
        case Op::kMIN: return constant(a < b ? a : b);
        case Op::kSUB: return constant(a - b);
        case Op::kEQUAL: return constant(a == b ? 1 : 0);
        case Op::kLESS: return constant(a < b ? 1 : 0);
        case Op::kFLOOR_DIV: return b == 0 ? nullptr : constant(a / b - ((a % b != 0) && ((a < 0) != (b < 0))));
        case Op::kCEIL_DIV: return b == 0 ? nullptr : constant(a / b + ((a % b != 0) && ((a < 0) == (b < 0))));
        }
        return nullptr;
    }

    nvinfer1::IDimensionExpr const* declareSizeTensor(
        int32_t /*outputIndex*/, nvinfer1::IDimensionExpr const& /*opt*/, nvinfer1::IDimensionExpr const& /*upper*/) override
    {
        return nullptr;
    }

private:
    std::deque<std::unique_ptr<ConstantExpr>> mOwned;
};

class ConstantExprBuilder final : public nvinfer1::IExprBuilder
{
public:
    ConstantExprBuilder() { mImpl = &mBuilder; }
    ~ConstantExprBuilder() noexcept override = default;

private:
    ConstantBuilderImpl mBuilder;
};

}  // namespace vivim_harness

#endif  // VIVIM_TRT_HARNESS_CONST_EXPR_BUILDER_H
