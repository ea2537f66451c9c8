using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// Log-probabilities of target tokens from logits, without ever materialising the normalised
/// distribution (cross-entropy's forward and backward).
/// Forward, per row n of logits [N, V]:
///   lse[n] = log Σ_v exp(logit[n, v])          (online: running max and running Σexp, one pass over memory)
///   logprob[n] = logit[n, target[n]] − lse[n]   (0 when target[n] = −1, an ignored position)
/// Backward: dlogit[n, v] = dlogprob[n]·(1[v = target[n]] − exp(logit[n, v] − lse[n])), written IN PLACE
/// over the logits buffer (so no second N×V buffer exists); rows with target −1 become zero.
/// exp is <see cref="VectorExp"/> (fp32, ≤ 2 ulp; the forward's sum uses <see cref="ExpOfNonPositive"/>, a cheaper form for terms of a sum); rows are whole units of parallel work, so results are
/// bit-identical for any thread count.
/// Unlike the other ops, this backward overwrites rather than accumulates: the logits buffer becomes
/// d(logits) and is consumed by the LM-head GEMM backward.
/// </summary>
public static class TargetLogProbs
{
    /// <summary>Target id marking a position that contributes nothing (log-prob 0, gradient 0).</summary>
    public const int Ignored = -1;

    /// <summary>Vocabulary entries per chunk of the online pass: the chunk stays in L1 between its two reads (max, then Σexp).</summary>
    private const int Chunk = 1024;

    /// <summary>Writes logProbs[n] and the saved logSumExp[n] for every row of logits [N, V].</summary>
    public static unsafe void Forward(ReadOnlySpan<float> logits, ReadOnlySpan<int> targets, int vocab,
                                      Span<float> logProbs, Span<float> logSumExp)
    {
        int n = Validate(logits.Length, targets, vocab);
        ShapeCheck.Length(logProbs.Length, n, nameof(logProbs), "[N]");
        ShapeCheck.Length(logSumExp.Length, n, nameof(logSumExp), "[N]");
        fixed (float* pl = logits, pp = logProbs, ps = logSumExp)
        fixed (int* pt = targets)
        {
            float* xl = pl, xp = pp, xs = ps;
            int* xt = pt;
            CpuParallel.For(n, 1, (start, end) =>
            {
                for (int i = start; i < end; i++)
                {
                    float* row = xl + (long)i * vocab;
                    float lse = LogSumExp(row, vocab);
                    xs[i] = lse;
                    int t = xt[i];
                    xp[i] = t == Ignored ? 0f : row[t] - lse;
                }
            });
        }
    }

    /// <summary>
    /// log Σ exp(row) in one pass over memory: per chunk of <see cref="Chunk"/> entries, the chunk's max
    /// (fast hardware max), then — while the chunk is still in L1 — Σ exp(x − running max), the running
    /// sum rescaled by exp(old max − new max) whenever the max grows. Partial vectors are padded with −∞
    /// (neutral for max, exp(−∞) = 0 for the sum).
    /// </summary>
    private static unsafe float LogSumExp(float* row, int vocab)
    {
        // One token: lse is the logit itself; return it exactly rather than through log(exp(0)).
        if (vocab == 1) return row[0];
        if (vocab < 16) return ShortLogSumExp(row, vocab);
        float runningMax = float.NegativeInfinity;
        double runningSum = 0.0;
        for (int v0 = 0; v0 < vocab; v0 += Chunk)
        {
            int len = Math.Min(Chunk, vocab - v0);
            float* chunk = row + v0;
            int full = len & ~15, rest = len - full;
            // A partial last vector is loaded as the 16 entries ending at the chunk's end (still inside
            // the row, since V ≥ 16): harmless for the max, masked to its new lanes for the sum.
            var max = Vector512.Create(float.NegativeInfinity);
            for (int j = 0; j < full; j += 16) max = Vector512.MaxNative(max, Vector512.Load(chunk + j));
            if (rest > 0) max = Vector512.MaxNative(max, Vector512.Load(chunk + len - 16));
            float chunkMax = max[0];
            for (int k = 1; k < 16; k++) chunkMax = MathF.Max(chunkMax, max[k]);
            if (chunkMax > runningMax)
            {
                // Rescale what was summed under the old max (exp(−∞) = 0 on the first chunk).
                runningSum *= Math.Exp((double)runningMax - chunkMax);
                runningMax = chunkMax;
            }
            var shift = Vector512.Create(runningMax);
            var sum = Vector512<float>.Zero;
            // Two accumulators: each exp is ≈ 10 independent ops, but the adds would chain.
            var sum1 = Vector512<float>.Zero;
            int j2 = 0;
            for (; j2 + 32 <= full; j2 += 32)
            {
                sum += ExpOfNonPositive(Vector512.Load(chunk + j2) - shift);
                sum1 += ExpOfNonPositive(Vector512.Load(chunk + j2 + 16) - shift);
            }
            if (j2 < full) sum += ExpOfNonPositive(Vector512.Load(chunk + j2) - shift);
            sum += sum1;
            if (rest > 0)
            {
                var isNew = Vector512.GreaterThanOrEqual(Vector512<int>.Indices, Vector512.Create(16 - rest)).AsSingle();
                sum += Vector512.ConditionalSelect(isNew, ExpOfNonPositive(Vector512.Load(chunk + len - 16) - shift), Vector512<float>.Zero);
            }
            runningSum += Vector512.Sum(sum);
        }
        return (float)(runningMax + Math.Log(runningSum));
    }

    /// <summary>
    /// exp(x) for x ≤ 0 (and −∞, NaN) as a term of a sum: the forward's hot loop, where exp is what bounds the kernel
    /// (a logit is 4 bytes to load against a dozen vector ops), so each op dropped shows. With AVX-512, in base 2:
    /// t = x·log₂e, n = round(t), f = t − n ∈ [−½, ½] (exact), 2^f by a degree-5 polynomial in Horner form
    /// (coefficients fitted here for minimax relative error: 9·10⁻⁸, 1.5·10⁻⁷ evaluated in fp32), and 2ⁿ applied by
    /// vscalefps (<see cref="Avx512F.Scale(Vector512{float}, Vector512{float})"/>), which also rounds results below the
    /// smallest normal correctly (to denormals, then 0). That is 10 vector ops, against about 19 for the general
    /// <see cref="VectorExp.Exp"/>, whose Cody–Waite reduction (two FMAs with ln 2 split in two) keeps every exp within
    /// 2 ulp. Here the rounding of t costs a relative error of up to |x|·7.4·10⁻⁸ instead, so a term's relative
    /// error is ≤ 2.5·10⁻⁷ + |x|·8·10⁻⁸ (tested). In a log-sum-exp, where x = logit − max and the max's own term is 1,
    /// the terms that carry weight have small |x|, and the error of the sum stays a few 10⁻⁷ relative (a few 10⁻⁷ absolute
    /// in ln Σ; tested against fp64 on flat, spread and one-hot rows). t is clamped at −160 first, so −∞ gives exactly 0
    /// (2⁻¹⁶⁰ rounds to 0); NaN stays NaN (MaxNative(bound, t) compiles to vmaxps, which returns its second operand, t,
    /// when either is NaN). A positive x is outside the contract. Without AVX-512 this is <see cref="VectorExp.Exp"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> ExpOfNonPositive(Vector512<float> x)
    {
        if (!Avx512F.IsSupported) return VectorExp.Exp(x);
        var t = Vector512.MaxNative(Vector512.Create(-160f), x * Vector512.Create(1.44269504088896341f));
        var n = Vector512.Round(t);
        var f = t - n;
        var p = Vector512.FusedMultiplyAdd(Vector512.Create(1.3264724985e-3f), f, Vector512.Create(9.6715129912e-3f));
        p = Vector512.FusedMultiplyAdd(p, f, Vector512.Create(5.5507335812e-2f));
        p = Vector512.FusedMultiplyAdd(p, f, Vector512.Create(2.4022242427e-1f));
        p = Vector512.FusedMultiplyAdd(p, f, Vector512.Create(6.9314700365e-1f));
        p = Vector512.FusedMultiplyAdd(p, f, Vector512<float>.One);
        return Avx512F.Scale(p, n);
    }

    /// <summary>V in [2, 16): one padded vector (−∞ padding: neutral for max, exp(−∞) = 0).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static unsafe float ShortLogSumExp(float* row, int vocab)
    {
        var v = VectorTail.Load(row, vocab, float.NegativeInfinity);
        float max = row[0];
        for (int k = 1; k < vocab; k++) max = MathF.Max(max, row[k]);
        return (float)(max + Math.Log(Vector512.Sum(VectorExp.Exp(v - Vector512.Create(max)))));
    }

    /// <summary>−g·exp(x − lse) over a row of length V ≥ 16, in place (last vector precomputed, see Gelu).</summary>
    private static unsafe void SoftmaxGradientRow(float* p, int vocab, float lse, float g)
    {
        var shift = Vector512.Create(lse);
        var minusG = Vector512.Create(-g);
        var last = VectorExp.Exp(Vector512.Load(p + vocab - 16) - shift) * minusG;
        for (int j = 0; j <= vocab - 16; j += 16) (VectorExp.Exp(Vector512.Load(p + j) - shift) * minusG).Store(p + j);
        last.Store(p + vocab - 16);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static unsafe void ShortSoftmaxGradientRow(float* p, int vocab, float lse, float g) =>
        VectorTail.Store(VectorExp.Exp(VectorTail.Load(p, vocab, 0f) - Vector512.Create(lse)) * Vector512.Create(-g), p, vocab);

    /// <summary>
    /// Overwrites <paramref name="logitsToGradient"/> (the forward's logits) with d(logits), given
    /// dLogProbs[n] = ∂L/∂logprob[n] and the forward's saved logSumExp.
    /// </summary>
    public static unsafe void Backward(Span<float> logitsToGradient, ReadOnlySpan<int> targets, int vocab,
                                       ReadOnlySpan<float> logSumExp, ReadOnlySpan<float> dLogProbs)
    {
        int n = Validate(logitsToGradient.Length, targets, vocab);
        ShapeCheck.Length(logSumExp.Length, n, nameof(logSumExp), "[N]");
        ShapeCheck.Length(dLogProbs.Length, n, nameof(dLogProbs), "[N]");
        fixed (float* pl = logitsToGradient, ps = logSumExp, pd = dLogProbs)
        fixed (int* pt = targets)
        {
            float* xl = pl, xs = ps, xd = pd;
            int* xt = pt;
            CpuParallel.For(n, 1, (start, end) =>
            {
                for (int i = start; i < end; i++)
                {
                    var row = new Span<float>(xl + (long)i * vocab, vocab);
                    int t = xt[i];
                    float g = xd[i];
                    if (t == Ignored || g == 0f || vocab == 1)   // V = 1: p = 1, so the gradient is exactly 0
                    {
                        row.Clear();
                        continue;
                    }
                    // −g·softmax in one fused pass: logit − lse ≤ 0, so exp cannot overflow.
                    float* p = xl + (long)i * vocab;
                    if (vocab >= 16) SoftmaxGradientRow(p, vocab, xs[i], g);
                    else ShortSoftmaxGradientRow(p, vocab, xs[i], g);
                    row[t] += g;
                }
            });
        }
    }

    /// <summary>
    /// Cross-entropy loss = −mean of logProbs over non-ignored positions, and its gradient
    /// dLogProbs[n] = −1/count (0 at ignored positions). Returns 0 (and zero gradients) when every
    /// position is ignored. Summed serially in fp64, so deterministic.
    /// </summary>
    public static float CrossEntropyLoss(ReadOnlySpan<float> logProbs, ReadOnlySpan<int> targets, Span<float> dLogProbs)
    {
        ShapeCheck.Length(targets.Length, logProbs.Length, nameof(targets), "[N]");
        ShapeCheck.Length(dLogProbs.Length, logProbs.Length, nameof(dLogProbs), "[N]");
        int count = 0;
        double sum = 0.0;
        for (int i = 0; i < logProbs.Length; i++)
        {
            if (targets[i] == Ignored) continue;
            count++;
            sum += logProbs[i];
        }
        float g = count == 0 ? 0f : -1f / count;
        for (int i = 0; i < logProbs.Length; i++) dLogProbs[i] = targets[i] == Ignored ? 0f : g;
        return count == 0 ? 0f : (float)(-sum / count);
    }

    private static int Validate(int logitsLength, ReadOnlySpan<int> targets, int vocab)
    {
        ShapeCheck.Positive(vocab, nameof(vocab));
        int n = targets.Length;
        ShapeCheck.Length(logitsLength, (long)n * vocab, "logits", "[N, V]");
        for (int i = 0; i < n; i++)
            if (targets[i] != Ignored && (uint)targets[i] >= (uint)vocab)
                throw new ArgumentOutOfRangeException(nameof(targets), targets[i],
                    $"Target {targets[i]} at index {i} is neither {Ignored} (ignored) nor a token id in [0, {vocab}).");
        return n;
    }
}
