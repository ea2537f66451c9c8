// Host check of native/target_logprobs.cu through the CUDA emulator (tests/Cuda/cuda_emulator.h): runs the forward kernels
// (fp32 and bf16 logits) and the bf16 backward exactly as NvrtcTargetLogProbs launches them (one block of 512 threads per
// row) and compares log-sum-exp and log-probs with an fp64 reference computed from the same input values (for bf16, the
// rounded ones), and d(logits) with the fp64 g·(1[v = t] − exp(x − lse)) at the real columns, exact zeros elsewhere.
// Built and run by TargetLogProbsNativeTests.KernelsMatchAnFp64ReferenceInTheHostEmulator:
//   g++ -std=c++20 -O1 -pthread -include tests/Cuda/cuda_emulator.h -I native -x c++ tests/Cuda/target_logprobs_check.cpp
// Shapes: odd vocabularies (1, 7, 33, 1,001, GPT-2's 50,257), rows V apart (most start off a 16-byte boundary and have a
// head and a tail outside the vector loop) and rows padded to a multiple of 64 as the LM head pads them (the padding
// holds garbage the forward must not read); rows whose maximum comes last or rises at every element; targets −1, 0 and
// V − 1. Bounds: |Δ| ≤ 2e-6·max(1, |reference|) for the forward; for d(logits), bf16 rounding: |Δ| ≤ 2⁻⁸·|ref| + 1e-9.
// Prints one line per case; exits 1 when any is over.
#include "target_logprobs.cu"
#include <algorithm>
#include <cstdio>
#include <random>

namespace
{
    constexpr int Threads = 512;   // NvrtcTargetLogProbs.ThreadsPerRow
    constexpr double Bound = 2e-6;

    unsigned short to_bf16(float x)   // round to nearest even, as GpuBFloat16 rounds
    {
        unsigned int bits = __float_as_uint(x);
        bits += 0x7FFFu + ((bits >> 16) & 1u);
        return (unsigned short)(bits >> 16);
    }

    // Row r: uniform in [−8, 8], except row 1 (its maximum, 20, is the last element) and row 2 (rising by 0.01 at every
    // element: the running maximum changes each time).
    std::vector<float> logits_for(int rows, int vocab, unsigned int seed)
    {
        std::mt19937 random(seed);
        std::uniform_real_distribution<float> uniform(-8.0f, 8.0f);
        std::vector<float> x((size_t)rows * vocab);
        for (auto& v : x) v = uniform(random);
        if (rows > 1) x[(size_t)1 * vocab + vocab - 1] = 20.0f;
        if (rows > 2)
            for (int v = 0; v < vocab; v++) x[(size_t)2 * vocab + v] = -5.0f + 0.01f * (float)v;
        return x;
    }

    std::vector<int> targets_for(int rows, int vocab)
    {
        std::vector<int> targets(rows);
        for (int r = 0; r < rows; r++) targets[r] = r == 0 ? -1 : r % 2 == 1 ? vocab - 1 : (r * 7919) % vocab;
        if (rows > 3) targets[3] = 0;
        return targets;
    }

    // values / logits: [rows, stride], the first vocab columns of each row real, the rest garbage (1e30 or NaN bits).
    template <typename T>
    bool check(const char* name, int rows, int vocab, int stride, const std::vector<float>& values, const std::vector<T>& logits,
               void (*kernel)(const T*, const int*, int, int, float*, float*))
    {
        auto targets = targets_for(rows, vocab);
        std::vector<float> log_probs(rows, -7.0f), lse(rows, -7.0f);
        cuda_emulator::launch(dim3{ (unsigned int)rows, 1, 1 }, dim3{ Threads, 1, 1 },
                              [&] { kernel(logits.data(), targets.data(), vocab, stride, log_probs.data(), lse.data()); });
        double worst = 0;
        for (int r = 0; r < rows; r++)
        {
            const float* x = values.data() + (size_t)r * stride;
            double max = *std::max_element(x, x + vocab), sum = 0;
            for (int v = 0; v < vocab; v++) sum += std::exp((double)x[v] - max);
            double reference = max + std::log(sum);
            double reference_log_prob = targets[r] < 0 ? 0.0 : (double)x[targets[r]] - reference;
            worst = std::max(worst, std::fabs(lse[r] - reference) / std::max(1.0, std::fabs(reference)));
            worst = std::max(worst, std::fabs(log_probs[r] - reference_log_prob) / std::max(1.0, std::fabs(reference_log_prob)));
            if (targets[r] < 0 && log_probs[r] != 0.0f) worst = 1e30;   // an ignored position is exactly 0
        }
        bool ok = worst <= Bound;
        std::printf("%s %s rows %d, V %d, stride %d: worst |Δ|/max(1, |ref|) %.2e (bound %.0e)\n", ok ? "ok  " : "FAIL", name, rows, vocab, stride, worst, Bound);
        return ok;
    }

    // The bf16 backward on fp32 logits [rows, stride] (stride % 4 == 0), given the fp64 log-sum-exp as the forward saves it.
    bool check_backward(int rows, int vocab, int stride, const std::vector<float>& values)
    {
        auto targets = targets_for(rows, vocab);
        std::vector<float> lse(rows), d_log_probs(rows);
        for (int r = 0; r < rows; r++)
        {
            const float* x = values.data() + (size_t)r * stride;
            double max = *std::max_element(x, x + vocab), sum = 0;
            for (int v = 0; v < vocab; v++) sum += std::exp((double)x[v] - max);
            lse[r] = (float)(max + std::log(sum));
            d_log_probs[r] = r % 2 == 0 ? -1.5f : 0.75f;
        }
        std::vector<uint2> gradient((size_t)rows * stride / 4, uint2{ 0xDEADBEEFu, 0xDEADBEEFu });
        cuda_emulator::launch(dim3{ (unsigned int)rows, 1, 1 }, dim3{ Threads, 1, 1 },
                              [&] { distalign_target_logprobs_backward_bf16(values.data(), targets.data(), vocab, stride, lse.data(), d_log_probs.data(), gradient.data()); });
        double worst = 0;
        for (int r = 0; r < rows; r++)
            for (int v = 0; v < stride; v++)
            {
                const uint2& word = gradient[((size_t)r * stride + v) / 4];
                unsigned int half = v % 4 < 2 ? word.x : word.y, bits = v % 2 == 0 ? half & 0xFFFFu : half >> 16;
                double actual = __uint_as_float(bits << 16), reference = 0;
                if (v < vocab && targets[r] >= 0)
                    reference = d_log_probs[r] * ((v == targets[r] ? 1.0 : 0.0) - std::exp((double)values[(size_t)r * stride + v] - lse[r]));
                double error = std::fabs(actual - reference) / (std::fabs(reference) / 256.0 + 1e-9);
                if ((v >= vocab || targets[r] < 0) && bits != 0) error = 1e30;   // padding and ignored rows: exact zeros
                worst = std::max(worst, error);
            }
        bool ok = worst <= 1.0;
        std::printf("%s bf16 d(logits) rows %d, V %d, stride %d: worst |Δ|/(2^-8·|ref| + 1e-9) %.3f (bound 1)\n", ok ? "ok  " : "FAIL", rows, vocab, stride, worst);
        return ok;
    }

    // Pads [rows, vocab] to [rows, stride] with garbage after each row's vocab columns.
    template <typename T>
    std::vector<T> padded(const std::vector<T>& dense, int rows, int vocab, int stride, T garbage)
    {
        std::vector<T> out((size_t)rows * stride, garbage);
        for (int r = 0; r < rows; r++) std::copy(dense.begin() + (size_t)r * vocab, dense.begin() + (size_t)(r + 1) * vocab, out.begin() + (size_t)r * stride);
        return out;
    }
}

int main()
{
    bool ok = true;
    const int shapes[][2] = { { 3, 1 }, { 3, 7 }, { 4, 33 }, { 5, 1001 }, { 3, 50257 } };
    unsigned int seed = 1;
    for (const auto& shape : shapes)
    {
        int rows = shape[0], vocab = shape[1];
        auto values = logits_for(rows, vocab, seed++);
        ok &= check<float>("fp32", rows, vocab, vocab, values, values, distalign_target_logprobs_f32);
        std::vector<unsigned short> halves(values.size());
        std::vector<float> rounded(values.size());
        for (size_t i = 0; i < values.size(); i++)
        {
            halves[i] = to_bf16(values[i]);
            rounded[i] = __uint_as_float((unsigned int)halves[i] << 16);
        }
        ok &= check<unsigned short>("bf16", rows, vocab, vocab, rounded, halves, distalign_target_logprobs_bf16);
        // rows padded to a multiple of 64, as the LM head lays its logits out; the padding is garbage
        const int stride = (vocab + 63) / 64 * 64;
        auto padded_values = padded(values, rows, vocab, stride, 1e30f);
        ok &= check<float>("fp32", rows, vocab, stride, padded_values, padded_values, distalign_target_logprobs_f32);
        ok &= check<unsigned short>("bf16", rows, vocab, stride, padded(rounded, rows, vocab, stride, 1e30f),
                                    padded(halves, rows, vocab, stride, (unsigned short)0x7FC0u), distalign_target_logprobs_bf16);
        ok &= check_backward(rows, vocab, stride, padded(values, rows, vocab, stride, __uint_as_float(0x7FC00000u)));
    }
    return ok ? 0 : 1;
}
