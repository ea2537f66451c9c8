// Host check of native/target_logprobs.cu through the CUDA emulator (tests/Cuda/cuda_emulator.h): runs both kernels
// (fp32 and bf16 logits) exactly as NvrtcTargetLogProbs launches them (one block of 512 threads per row) and compares
// log-sum-exp and log-probs with an fp64 reference computed from the same input values (for bf16, the rounded ones).
// Built and run by TargetLogProbsNativeTests.KernelsMatchAnFp64ReferenceInTheHostEmulator:
//   g++ -std=c++20 -O1 -pthread -include tests/Cuda/cuda_emulator.h -I native -x c++ tests/Cuda/target_logprobs_check.cpp
// Shapes: odd vocabularies (1, 7, 33, 1,001, GPT-2's 50,257), so most rows start off a 16-byte boundary and have a
// head and a tail outside the vector loop; rows whose maximum comes last or rises at every element; targets −1, 0
// and V − 1. Bound: |Δ| ≤ 2e-6·max(1, |reference|) for both outputs. Prints one line per case; exits 1 when any is over.
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

    template <typename T>
    bool check(const char* name, int rows, int vocab, const std::vector<float>& values, const std::vector<T>& logits,
               void (*kernel)(const T*, const int*, int, float*, float*))
    {
        std::vector<int> targets(rows);
        for (int r = 0; r < rows; r++) targets[r] = r == 0 ? -1 : r % 2 == 1 ? vocab - 1 : (r * 7919) % vocab;
        if (rows > 3) targets[3] = 0;
        std::vector<float> log_probs(rows, -7.0f), lse(rows, -7.0f);
        cuda_emulator::launch(dim3{ (unsigned int)rows, 1, 1 }, dim3{ Threads, 1, 1 },
                              [&] { kernel(logits.data(), targets.data(), vocab, log_probs.data(), lse.data()); });
        double worst = 0;
        for (int r = 0; r < rows; r++)
        {
            const float* x = values.data() + (size_t)r * vocab;
            double max = *std::max_element(x, x + vocab), sum = 0;
            for (int v = 0; v < vocab; v++) sum += std::exp((double)x[v] - max);
            double reference = max + std::log(sum);
            double reference_log_prob = targets[r] < 0 ? 0.0 : (double)x[targets[r]] - reference;
            worst = std::max(worst, std::fabs(lse[r] - reference) / std::max(1.0, std::fabs(reference)));
            worst = std::max(worst, std::fabs(log_probs[r] - reference_log_prob) / std::max(1.0, std::fabs(reference_log_prob)));
            if (targets[r] < 0 && log_probs[r] != 0.0f) worst = 1e30;   // an ignored position is exactly 0
        }
        bool ok = worst <= Bound;
        std::printf("%s %s rows %d, V %d: worst |Δ|/max(1, |ref|) %.2e (bound %.0e)\n", ok ? "ok  " : "FAIL", name, rows, vocab, worst, Bound);
        return ok;
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
        ok &= check<float>("fp32", rows, vocab, values, values, distalign_target_logprobs_f32);
        std::vector<unsigned short> halves(values.size());
        std::vector<float> rounded(values.size());
        for (size_t i = 0; i < values.size(); i++)
        {
            halves[i] = to_bf16(values[i]);
            rounded[i] = __uint_as_float((unsigned int)halves[i] << 16);
        }
        ok &= check<unsigned short>("bf16", rows, vocab, rounded, halves, distalign_target_logprobs_bf16);
    }
    return ok ? 0 : 1;
}
