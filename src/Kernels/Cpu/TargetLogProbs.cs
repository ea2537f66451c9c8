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
/// exp is <see cref="VectorExp"/> (fp32, ≤ 2 ulp; the forward's sum uses <see cref="ExpTerm"/>, a cheaper form for terms of a sum); rows are whole units of parallel work, so results are
/// bit-identical for any thread count.
/// Unlike the other ops, this backward overwrites rather than accumulates: the logits buffer becomes
/// d(logits) and is consumed by the LM-head GEMM backward.
/// </summary>
public static class TargetLogProbs
{
    /// <summary>Target id marking a position that contributes nothing (log-prob 0, gradient 0).</summary>
    public const int Ignored = -1;

    /// <summary>Vocabulary entries per chunk of the online pass: the chunk (8 KB) stays in L1 between its two reads (max, then Σexp).</summary>
    private const int Chunk = 2048;

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
    /// sum rescaled by exp(old max − new max) whenever the max grows. A chunk's partial last vector is the 16
    /// entries ending at the chunk's end (inside the row, since V ≥ 16): harmless for the max, masked for the sum.
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
            // Two running maxima: one chain of vmaxps would wait on each one's latency.
            Vector512<float> max = Vector512.Create(float.NegativeInfinity), max1 = max;
            int j = 0;
            for (; j + 32 <= full; j += 32)
            {
                max = Vector512.MaxNative(max, Vector512.Load(chunk + j));
                max1 = Vector512.MaxNative(max1, Vector512.Load(chunk + j + 16));
            }
            if (j < full) max = Vector512.MaxNative(max, Vector512.Load(chunk + j));
            if (rest > 0) max1 = Vector512.MaxNative(max1, Vector512.Load(chunk + len - 16));
            max = Vector512.MaxNative(max, max1);
            float chunkMax = max[0];
            for (int k = 1; k < 16; k++) chunkMax = MathF.Max(chunkMax, max[k]);
            if (chunkMax > runningMax)
            {
                // Rescale what was summed under the old max (exp(−∞) = 0 on the first chunk).
                runningSum *= Math.Exp((double)runningMax - chunkMax);
                runningMax = chunkMax;
            }
            runningSum += Avx512F.IsSupported
                ? SumOfExps(chunk, len, runningMax)
                : PortableSumOfExps(chunk, len, runningMax);
        }
        return (float)(runningMax + Math.Log(runningSum));
    }

    /// <summary>
    /// Σ exp(x − max) over one chunk of ≥ 16 entries, with AVX-512: <see cref="ExpTerm"/> with its constants held in
    /// registers (the JIT does not hoist a Vector512.Create out of a loop; reloading eight constants per vector cost
    /// ≈ 25 % here), each term added by the FMA that forms it, and the next two chunks prefetched meanwhile (without it,
    /// memory sat idle during each chunk's exps; the second, into L2, took another ≈ 5 %). Measured at N = 256, V = 50257 on 2 threads against a copy of the same
    /// bytes (min-of-40 harness): 0.65–0.7 of its bandwidth before these three changes, about 1.0 after.
    /// A partial last vector is loaded as the 16 entries ending at the chunk's end, masked to its new lanes.
    /// </summary>
    internal static unsafe float SumOfExps(float* chunk, int len, float max)
    {
        var shift = Vector512.Create(max);
        var floor = Vector512.Create(TermFloor);
        var log2E = Vector512.Create(Log2E);
        var shifter = Vector512.Create(SixteenthsShifter);
        var table = TwoToTheSixteenths;
        var c1 = Vector512.Create(Exp2C1);
        var c2 = Vector512.Create(Exp2C2);
        var c3 = Vector512.Create(Exp2C3);
        // Four accumulators of 16 lanes: each lane adds 32 terms of a chunk (a lane holding a large term loses each small
        // one's low bits, so fewer adds per lane keep the sum closer), and the FMAs do not chain on one another.
        Vector512<float> sum0 = Vector512<float>.Zero, sum1 = sum0, sum2 = sum0, sum3 = sum0;
        int full = len & ~15, rest = len - full, j = 0;
        for (; j + 64 <= full; j += 64)
        {
            // The next chunk's lines into L1 and the one after's into L2 (the rest of this row, or the next row: a thread's
            // rows are contiguous), so memory keeps streaming while this chunk is computed. A prefetch past the buffer's
            // end is harmless: it never faults.
            float* next = chunk + len + j, afterNext = next + Chunk;
            Sse.Prefetch0(next);
            Sse.Prefetch0(next + 16);
            Sse.Prefetch0(next + 32);
            Sse.Prefetch0(next + 48);
            Sse.Prefetch1(afterNext);
            Sse.Prefetch1(afterNext + 16);
            Sse.Prefetch1(afterNext + 32);
            Sse.Prefetch1(afterNext + 48);
            var scale0 = ExpTerm(Vector512.Load(chunk + j) - shift, floor, log2E, shifter, table, c1, c2, c3, out var p0);
            var scale1 = ExpTerm(Vector512.Load(chunk + j + 16) - shift, floor, log2E, shifter, table, c1, c2, c3, out var p1);
            var scale2 = ExpTerm(Vector512.Load(chunk + j + 32) - shift, floor, log2E, shifter, table, c1, c2, c3, out var p2);
            var scale3 = ExpTerm(Vector512.Load(chunk + j + 48) - shift, floor, log2E, shifter, table, c1, c2, c3, out var p3);
            sum0 = Vector512.FusedMultiplyAdd(scale0, p0, sum0);
            sum1 = Vector512.FusedMultiplyAdd(scale1, p1, sum1);
            sum2 = Vector512.FusedMultiplyAdd(scale2, p2, sum2);
            sum3 = Vector512.FusedMultiplyAdd(scale3, p3, sum3);
        }
        for (; j < full; j += 16)
        {
            var scale = ExpTerm(Vector512.Load(chunk + j) - shift, floor, log2E, shifter, table, c1, c2, c3, out var p);
            sum0 = Vector512.FusedMultiplyAdd(scale, p, sum0);
        }
        if (rest > 0)
        {
            var scale = ExpTerm(Vector512.Load(chunk + len - 16) - shift, floor, log2E, shifter, table, c1, c2, c3, out var p);
            var isNew = Vector512.GreaterThanOrEqual(Vector512<int>.Indices, Vector512.Create(16 - rest)).AsSingle();
            sum1 += Vector512.ConditionalSelect(isNew, scale * p, Vector512<float>.Zero);
        }
        return Vector512.Sum((sum0 + sum1) + (sum2 + sum3));
    }

    /// <summary><see cref="SumOfExps"/> without AVX-512: <see cref="VectorExp.Exp"/> per term.</summary>
    private static unsafe float PortableSumOfExps(float* chunk, int len, float max)
    {
        var shift = Vector512.Create(max);
        var sum = Vector512<float>.Zero;
        int full = len & ~15, rest = len - full;
        for (int j = 0; j < full; j += 16) sum += VectorExp.Exp(Vector512.Load(chunk + j) - shift);
        if (rest > 0)
        {
            var isNew = Vector512.GreaterThanOrEqual(Vector512<int>.Indices, Vector512.Create(16 - rest)).AsSingle();
            sum += Vector512.ConditionalSelect(isNew, VectorExp.Exp(Vector512.Load(chunk + len - 16) - shift), Vector512<float>.Zero);
        }
        return Vector512.Sum(sum);
    }

    private const float TermFloor = -110f;                 // exp(−110) = 1.7e-48: 0 in fp32, and −∞ becomes finite
    private const float Log2E = 1.44269504088896341f;
    private const float SixteenthsShifter = 786432f;        // 1.5·2¹⁹: adding it rounds t to a multiple of 1/16
    private const float Exp2C1 = 0.6931472f, Exp2C2 = 0.24023429f, Exp2C3 = 0.055502135f;

    /// <summary>2^(j/16) for j = 0 … 15, each rounded to the nearest float: one register, indexed by vpermps.</summary>
    private static readonly Vector512<float> TwoToTheSixteenths =
        Vector512.Create(Enumerable.Range(0, 16).Select(j => (float)Math.Pow(2, j / 16.0)).ToArray());

    /// <summary>
    /// exp(x) for x ≤ 0 (and −∞, NaN) as a term of a sum: the forward's hot loop, where exp is what bounds the kernel
    /// (a logit is 4 bytes to load against a dozen vector ops), so each op dropped shows. Returns the term as
    /// <c>scale · p</c> (see <see cref="ExpTerm"/>), which the sum adds with one FMA. Without AVX-512 this is
    /// <see cref="VectorExp.Exp"/>.
    /// </summary>
    internal static Vector512<float> ExpOfNonPositive(Vector512<float> x)
    {
        if (!Avx512F.IsSupported) return VectorExp.Exp(x);
        var scale = ExpTerm(x, Vector512.Create(TermFloor), Vector512.Create(Log2E), Vector512.Create(SixteenthsShifter),
            TwoToTheSixteenths, Vector512.Create(Exp2C1), Vector512.Create(Exp2C2), Vector512.Create(Exp2C3), out var p);
        return scale * p;
    }

    /// <summary>
    /// exp(x) = scale · p for x ≤ 0, in base 2 with a 16-entry table (AVX-512; the constants are parameters so that a
    /// loop keeps them in registers). t = x·log₂e is rounded to a multiple of 1/16 by adding 1.5·2¹⁹ (s = fma(x, log₂e,
    /// 1.5·2¹⁹), whose low 4 mantissa bits are then the table index j and k = s − 1.5·2¹⁹ = n + j/16 exactly);
    /// r = fma(x, log₂e, −k) ∈ [−1/32, 1/32] with one rounding; scale = 2^(j/16) (vpermps) · 2ⁿ (vscalefps, which takes
    /// ⌊k⌋ = n and rounds results below the smallest normal correctly, to denormals, then 0); p = 2^r by a degree-3
    /// polynomial (coefficients fitted here for minimax relative error, 1.6·10⁻⁹). 10 vector ops with the subtraction of
    /// the max and the FMA that adds the term, against 12 for the degree-5 polynomial on [−½, ½] that this replaced (and
    /// about 19 for <see cref="VectorExp.Exp"/>). Error of scale·p: table entry, p and the product each rounded once
    /// (≤ 3·2⁻²⁴ ≈ 1.8·10⁻⁷ relative) plus log₂e rounded to fp32 (|x|·1.4·10⁻⁸): ≤ 1.85·10⁻⁷ + |x|·1.5·10⁻⁸ (tested).
    /// In a log-sum-exp, where x = logit − max and the max's own term is 1, that is ≈ 2·10⁻⁷ absolute in ln Σ (tested
    /// against fp64 on flat, spread and one-hot rows). x is clamped at −110 first, so −∞ gives exactly 0; NaN stays NaN
    /// (MaxNative(floor, x) compiles to vmaxps, which returns its second operand, x, when either is NaN). A positive x
    /// is outside the contract.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> ExpTerm(Vector512<float> x, Vector512<float> floor, Vector512<float> log2E,
        Vector512<float> shifter, Vector512<float> table, Vector512<float> c1, Vector512<float> c2, Vector512<float> c3,
        out Vector512<float> p)
    {
        var clamped = Vector512.MaxNative(floor, x);
        var s = Vector512.FusedMultiplyAdd(clamped, log2E, shifter);
        var k = s - shifter;
        var r = Avx512F.FusedMultiplySubtract(clamped, log2E, k);
        p = Vector512.FusedMultiplyAdd(Vector512.FusedMultiplyAdd(Vector512.FusedMultiplyAdd(c3, r, c2), r, c1), r, Vector512<float>.One);
        return Avx512F.Scale(Avx512F.PermuteVar16x32(table, s.AsInt32()), k);
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
