// Host check of native/flash_attention.cu through the CUDA emulator (tests/Cuda/cuda_emulator.h): runs the
// forward, delta and both backward kernels exactly as launched on a GPU and compares them with an fp64
// attention forward and backward (causal, segment-masked) at odd shapes. Built and run by
// NativeSourceTests.FlashAttentionKernelsMatchAnFp64ReferenceInTheEmulator:
//   g++ -std=c++20 -O1 -pthread -include tests/Cuda/cuda_emulator.h -I native -x c++ tests/Cuda/flash_attention_check.cpp
// Prints one line per case and exits 1 when any error is over its bound.
#include "flash_attention.cu"
#include <algorithm>
#include <cstdio>
#include <random>

namespace
{
    struct Case
    {
        int B, T, NH;
        bool segments;
    };

    struct Errors
    {
        double out = 0, lse = 0, dq = 0, dk = 0, dv = 0;
    };

    // max |a − b| over max(max |b|, 0.1): errors relative to the tensor's scale (bf16 inputs give about 2⁻⁸ of
    // it); the floor keeps a tensor that is exactly zero (dq, dk at T = 1: one visible key, so dS = 0) judged
    // against the inputs' scale (O(1)) rather than against nothing.
    double relative(const std::vector<double>& reference, const std::vector<float>& actual, double offset = 0)
    {
        double worst = 0, scale = 0.1;
        for (size_t i = 0; i < reference.size(); i++)
        {
            scale = std::max(scale, std::fabs(reference[i]));
            worst = std::max(worst, std::fabs((double)actual[i] - offset - reference[i]));
        }
        return worst / scale;
    }

    Errors run(const Case& c, unsigned int seed)
    {
        const int B = c.B, T = c.T, NH = c.NH, hs = FA_HEAD, C = NH * hs;
        const float scale = 1.0f / std::sqrt((float)hs);
        std::mt19937 random(seed);
        std::uniform_real_distribution<float> uniform(-1.5f, 1.5f);
        std::vector<float> qkv((size_t)B * T * 3 * C), dout((size_t)B * T * C);
        for (auto& x : qkv) x = uniform(random);
        for (auto& x : dout) x = uniform(random);
        std::vector<int> segments((size_t)B * T);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) segments[(size_t)b * T + t] = c.segments ? (t < T * (b + 1) / (B + 2) ? 5 : 9) : 0;

        std::vector<float> out((size_t)B * T * C, -7.0f), lse((size_t)B * NH * T, -7.0f), delta((size_t)B * NH * T, -7.0f);
        const float initial_dqkv = 0.5f;   // the backward accumulates
        std::vector<float> dqkv(qkv.size(), initial_dqkv);
        const int has_segments = c.segments ? 1 : 0;
        const int Tp = (T + FA_TILE - 1) / FA_TILE * FA_TILE;
        const unsigned int tiles = (unsigned int)(Tp / FA_TILE);
        const dim3 grid{ tiles, (unsigned int)NH, (unsigned int)B }, block{ FA_THREADS, 1, 1 };
        // bf16 scratch as NvrtcFlashAttention lays it out: q, k, v, dout per head, [B, NH, Tp, 64].
        const size_t head_elements = (size_t)B * NH * Tp * FA_HEAD;
        std::vector<bf16_bits> q_rows(head_elements, 1), k_rows(head_elements, 1), v_rows(head_elements, 1), dout_rows(head_elements, 1);
        auto convert = [&](const float* source, long stride, int col0, bf16_bits* rows_out) {
            cuda_emulator::launch(grid, block, [&] { distalign_flash_attention_convert(source, stride, col0, T, Tp, NH, rows_out); });
        };
        convert(qkv.data(), 3L * C, 0, q_rows.data());
        convert(qkv.data(), 3L * C, C, k_rows.data());
        convert(qkv.data(), 3L * C, 2 * C, v_rows.data());
        cuda_emulator::launch(grid, block, [&] {
            distalign_flash_attention_forward(q_rows.data(), k_rows.data(), v_rows.data(), segments.data(), has_segments, T, Tp, C, NH, scale,
                                              out.data(), lse.data());
        });
        cuda_emulator::launch(dim3{ (unsigned int)((T * NH + 3) / 4), (unsigned int)B, 1 }, block, [&] {
            distalign_flash_attention_backward_delta(dout.data(), out.data(), T, C, NH, delta.data());
        });
        convert(dout.data(), C, 0, dout_rows.data());
        cuda_emulator::launch(grid, block, [&] {
            distalign_flash_attention_backward_kv(q_rows.data(), k_rows.data(), v_rows.data(), dout_rows.data(),
                                                  segments.data(), has_segments, lse.data(), delta.data(), T, Tp, C, NH, scale, dqkv.data());
        });
        cuda_emulator::launch(grid, block, [&] {
            distalign_flash_attention_backward_q(q_rows.data(), k_rows.data(), v_rows.data(), dout_rows.data(),
                                                 segments.data(), has_segments, lse.data(), delta.data(), T, Tp, C, NH, scale, dqkv.data());
        });

        // fp64 reference.
        std::vector<double> ref_out(out.size()), ref_lse(lse.size()), ref_dqkv(qkv.size(), 0.0);
        std::vector<double> ref_out_q(dqkv.size(), 0.0), ref_dk(dqkv.size(), 0.0), ref_dv(dqkv.size(), 0.0);
        auto at = [&](int b, int t, int column) { return (size_t)(b * T + t) * 3 * C + column; };
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++)
                for (int i = 0; i < T; i++)
                {
                    std::vector<double> p(T, 0.0);
                    double max = -1e300;
                    for (int j = 0; j <= i; j++)
                    {
                        if (c.segments && segments[(size_t)b * T + j] != segments[(size_t)b * T + i]) continue;
                        double s = 0;
                        for (int d = 0; d < hs; d++) s += (double)qkv[at(b, i, h * hs + d)] * qkv[at(b, j, C + h * hs + d)];
                        p[j] = s * scale;
                        max = std::max(max, p[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j <= i; j++)
                    {
                        bool visible = !c.segments || segments[(size_t)b * T + j] == segments[(size_t)b * T + i];
                        p[j] = visible ? std::exp(p[j] - max) : 0.0;
                        sum += p[j];
                    }
                    for (int j = 0; j <= i; j++) p[j] /= sum;
                    ref_lse[((size_t)b * NH + h) * T + i] = max + std::log(sum);
                    const float* dO = &dout[(size_t)(b * T + i) * C + h * hs];
                    for (int d = 0; d < hs; d++)
                    {
                        double o = 0;
                        for (int j = 0; j <= i; j++) o += p[j] * qkv[at(b, j, 2 * C + h * hs + d)];
                        ref_out[(size_t)(b * T + i) * C + h * hs + d] = o;
                    }
                    std::vector<double> dp(T, 0.0);
                    double D = 0;
                    for (int j = 0; j <= i; j++)
                    {
                        for (int d = 0; d < hs; d++) dp[j] += (double)dO[d] * qkv[at(b, j, 2 * C + h * hs + d)];
                        D += p[j] * dp[j];
                    }
                    for (int j = 0; j <= i; j++)
                    {
                        double ds = p[j] * (dp[j] - D);
                        for (int d = 0; d < hs; d++)
                        {
                            ref_dqkv[at(b, i, h * hs + d)] += scale * ds * qkv[at(b, j, C + h * hs + d)];
                            ref_dqkv[at(b, j, C + h * hs + d)] += scale * ds * qkv[at(b, i, h * hs + d)];
                            ref_dqkv[at(b, j, 2 * C + h * hs + d)] += p[j] * dO[d];
                        }
                    }
                }

        // Split the gradient into its q, k and v thirds so each is judged against its own scale.
        std::vector<double> rq, rk, rv;
        std::vector<float> aq, ak, av;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                for (int column = 0; column < 3 * C; column++)
                {
                    size_t index = at(b, t, column);
                    auto& r = column < C ? rq : column < 2 * C ? rk : rv;
                    auto& a = column < C ? aq : column < 2 * C ? ak : av;
                    r.push_back(ref_dqkv[index]);
                    a.push_back(dqkv[index]);
                }
        Errors e;
        e.out = relative(ref_out, out);
        for (size_t i = 0; i < lse.size(); i++) e.lse = std::max(e.lse, std::fabs(lse[i] - ref_lse[i]));
        e.dq = relative(rq, aq, initial_dqkv);
        e.dk = relative(rk, ak, initial_dqkv);
        e.dv = relative(rv, av, initial_dqkv);
        return e;
    }
}

int main()
{
    const Case cases[] = { { 2, 77, 2, true }, { 1, 1, 1, false }, { 1, 64, 3, false }, { 1, 130, 1, true }, { 1, 17, 2, false } };
    const double bound = 1.5e-2;   // bf16 inputs (8-bit significand) with fp32 accumulation
    int failures = 0;
    unsigned int seed = 1;
    for (const auto& c : cases)
    {
        Errors e = run(c, seed++);
        bool ok = e.out <= bound && e.lse <= bound && e.dq <= 2 * bound && e.dk <= 2 * bound && e.dv <= 2 * bound;
        failures += ok ? 0 : 1;
        std::printf("%s B=%d T=%d NH=%d segments=%d: out %.2e, lse %.2e, dq %.2e, dk %.2e, dv %.2e (relative to max |ref|; bound %.1e, grads %.1e)\n",
                    ok ? "ok  " : "FAIL", c.B, c.T, c.NH, c.segments ? 1 : 0, e.out, e.lse, e.dq, e.dk, e.dv, bound, 2 * bound);
    }
    return failures == 0 ? 0 : 1;
}
