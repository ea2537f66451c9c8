using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// Log-probabilities of target tokens from logits, without ever materialising the normalised
/// distribution (cross-entropy's forward and backward).
/// Forward, per row n of logits [N, V]:
///   lse[n] = log Σ_v exp(logit[n, v])          (online: running max and running Σexp, one pass over memory)
///   logprob[n] = logit[n, target[n]] − lse[n]   (0 when target[n] = −1, an ignored position)
/// Backward: dlogit[n, v] = dlogprob[n]·(1[v = target[n]] − exp(logit[n, v] − lse[n])), written IN PLACE
/// over the logits buffer (so no second N×V buffer exists); rows with target −1 become zero.
/// exp is <see cref="VectorExp"/> (fp32, ≤ 1 ulp; the forward's sum uses <see cref="ExpOfNonPositive{TVector}"/>'s cheaper forms for terms of a sum), at the widest accelerated width; rows are whole units of parallel work, so results are
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

    /// <summary>log Σ exp(row) at the widest accelerated width (see <see cref="LogSumExp{TVector}"/>).</summary>
    private static unsafe float LogSumExp(float* row, int vocab) => CpuVectors.Width switch
    {
        VectorWidth.Vector512 => LogSumExp<Vector512Lanes>(row, vocab),
        VectorWidth.Vector256 => LogSumExp<Vector256Lanes>(row, vocab),
        VectorWidth.Vector128 => LogSumExp<Vector128Lanes>(row, vocab),
        _ => LogSumExp<ScalarLanes>(row, vocab),
    };

    /// <summary>
    /// log Σ exp(row) in one pass over memory, chunk by chunk (<see cref="Chunk"/> entries): Σ exp(x − m) relative to the
    /// running max m, the chunk's own max found by the same loop (one maxps per vector on the logits it has loaded anyway).
    /// A chunk whose max exceeds m is summed relative to the old m all the same — its terms are then exp of up to
    /// <see cref="Headroom"/>, within every path's range and within the exp contract's |x|·1.5·10⁻⁸ allowance — and the
    /// running sum is rescaled by exp(m − new max) after it. Only a chunk whose max jumps by more than that (or is +∞) is
    /// summed again, relative to its own max; and while m is still −∞ (the first chunk, or a row of −∞ so far) the chunk's
    /// max is found first by a separate pass. A separate max pass per chunk, as this loop had before, cost a second sweep
    /// over each chunk in L1. A chunk's partial last vector is the Count entries ending at the chunk's end (inside the
    /// row, since V ≥ Count): harmless for the max, masked for the sum.
    /// </summary>
    private static unsafe float LogSumExp<TVector>(float* row, int vocab) where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count;
        // One token: lse is the logit itself; return it exactly rather than through log(exp(0)).
        if (vocab == 1) return row[0];
        if (vocab < width) return ShortLogSumExp<TVector>(row, vocab);
        float runningMax = float.NegativeInfinity;
        double runningSum = 0.0;
        for (int v0 = 0; v0 < vocab; v0 += Chunk)
        {
            int len = Math.Min(Chunk, vocab - v0);
            float* chunk = row + v0;
            if (float.IsNegativeInfinity(runningMax))
            {
                // Everything so far was −∞ (exp(−∞) = 0: nothing summed to rescale). A chunk of −∞ only adds nothing: summed
                // under a max of −∞ it would be −∞ − (−∞) = NaN, so a row masked with −∞ up front stays finite.
                runningMax = ChunkMax<TVector>(chunk, len);
                if (!float.IsNegativeInfinity(runningMax)) runningSum = ChunkSumOfExps<TVector>(chunk, len, runningMax, out _);
                continue;
            }
            double sum = ChunkSumOfExps<TVector>(chunk, len, runningMax, out float chunkMax);
            if (chunkMax - runningMax > Headroom)
            {
                // Terms beyond the headroom: rescale what came before and sum this chunk again under its own max.
                runningSum *= Math.Exp((double)runningMax - chunkMax);
                runningMax = chunkMax;
                sum = ChunkSumOfExps<TVector>(chunk, len, runningMax, out _);
            }
            runningSum += sum;
            if (chunkMax > runningMax)
            {
                // Summed under the old max (within the headroom): rescaled with everything before it.
                runningSum *= Math.Exp((double)runningMax - chunkMax);
                runningMax = chunkMax;
            }
        }
        return (float)(runningMax + Math.Log(runningSum));
    }

    /// <summary>How far above the running max a chunk's terms may go before the chunk is summed again under its own max: exp(4)·2⁶⁴ per term leaves the fp32 lane sums far from overflow, and the exp's error allowance at x = 4 is 6·10⁻⁸.</summary>
    private const float Headroom = 4f;

    /// <summary>The max of one chunk of ≥ Count entries (two running maxima: one chain of maxps would wait on each one's latency).</summary>
    private static unsafe float ChunkMax<TVector>(float* chunk, int len) where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count, full = len - len % width, j = 0;
        TVector max = TVector.Create(float.NegativeInfinity), max1 = max;
        for (; j + 2 * width <= full; j += 2 * width)
        {
            max = TVector.MaxNative(max, TVector.Load(chunk + j));
            max1 = TVector.MaxNative(max1, TVector.Load(chunk + j + width));
        }
        if (j < full) max = TVector.MaxNative(max, TVector.Load(chunk + j));
        if (len > full) max1 = TVector.MaxNative(max1, TVector.Load(chunk + len - width));
        return TVector.MaxAcross(TVector.MaxNative(max, max1));
    }

    /// <summary>Σ exp(x − max) over one chunk, and the chunk's max: the table forms where the width is Vector512 (AVX-512) or Vector256 (AVX2 + FMA), the generic form elsewhere.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe double ChunkSumOfExps<TVector>(float* chunk, int len, float max, out float chunkMax) where TVector : unmanaged, IFloatVector<TVector> =>
        typeof(TVector) == typeof(Vector512Lanes) && Avx512F.IsSupported ? SumOfExps(chunk, len, max, out chunkMax)
        : typeof(TVector) == typeof(Vector256Lanes) && Avx2.IsSupported && Fma.IsSupported ? SumOfExps256(chunk, len, max, out chunkMax)
        : SumOfExps<TVector>(chunk, len, max, out chunkMax);

    /// <summary><see cref="ChunkSumOfExps{TVector}"/> at the width the kernels use now (for benchmarks).</summary>
    internal static unsafe double ChunkSumOfExps(float* chunk, int len, float max, out float chunkMax)
    {
        switch (CpuVectors.Width)
        {
            case VectorWidth.Vector512: return ChunkSumOfExps<Vector512Lanes>(chunk, len, max, out chunkMax);
            case VectorWidth.Vector256: return ChunkSumOfExps<Vector256Lanes>(chunk, len, max, out chunkMax);
            case VectorWidth.Vector128: return ChunkSumOfExps<Vector128Lanes>(chunk, len, max, out chunkMax);
            default: return ChunkSumOfExps<ScalarLanes>(chunk, len, max, out chunkMax);
        }
    }

    /// <summary>
    /// Σ exp(x − max) over one chunk of ≥ 16 entries, with AVX-512: <see cref="ExpTerm"/> with its constants held in
    /// registers (the JIT does not hoist a Vector512.Create out of a loop; reloading eight constants per vector cost
    /// ≈ 25 % here), each term added by the FMA that forms it, and the next two chunks prefetched meanwhile (without it,
    /// memory sat idle during each chunk's exps; the second, into L2, took another ≈ 5 %). Measured at N = 256, V = 50257 on 2 threads against a copy of the same
    /// bytes (min-of-40 harness): 0.65–0.7 of its bandwidth before these three changes, about 1.0 after.
    /// Every <see cref="LaneSums.AddsPerLane"/> iterations the four accumulators go to an fp64 total.
    /// A partial last vector is loaded as the 16 entries ending at the chunk's end, masked to its new lanes.
    /// </summary>
    internal static unsafe double SumOfExps(float* chunk, int len, float max, out float chunkMax)
    {
        var shift = Vector512.Create(max);
        var floor = Vector512.Create(TermFloor);
        var log2E = Vector512.Create(Log2E);
        var shifter = Vector512.Create(SixteenthsShifter);
        var table = TwoToTheSixteenths;
        var c1 = Vector512.Create(Exp2C1);
        var c2 = Vector512.Create(Exp2C2);
        var c3 = Vector512.Create(Exp2C3);
        // Four accumulators of 16 lanes, so the FMAs do not chain on one another.
        Vector512<float> sum0 = Vector512<float>.Zero, sum1 = sum0, sum2 = sum0, sum3 = sum0;
        Vector512<float> max0 = Vector512.Create(float.NegativeInfinity), max1 = max0;
        double total = 0.0;
        int full = len & ~15, rest = len - full, j = 0, adds = 0;
        for (; j + 64 <= full; j += 64)
        {
            // The next chunk's lines into L1 and the one after's into L2 (the rest of this row, or the next row: a thread's
            // rows are contiguous), so memory keeps streaming while this chunk is computed.
            PrefetchAhead<Vector512Lanes>(chunk + len + j);
            var x0 = Vector512.Load(chunk + j);
            var x1 = Vector512.Load(chunk + j + 16);
            var x2 = Vector512.Load(chunk + j + 32);
            var x3 = Vector512.Load(chunk + j + 48);
            max0 = Vector512.MaxNative(max0, Vector512.MaxNative(x0, x2));
            max1 = Vector512.MaxNative(max1, Vector512.MaxNative(x1, x3));
            var scale0 = ExpTerm(x0 - shift, floor, log2E, shifter, table, c1, c2, c3, out var p0);
            var scale1 = ExpTerm(x1 - shift, floor, log2E, shifter, table, c1, c2, c3, out var p1);
            var scale2 = ExpTerm(x2 - shift, floor, log2E, shifter, table, c1, c2, c3, out var p2);
            var scale3 = ExpTerm(x3 - shift, floor, log2E, shifter, table, c1, c2, c3, out var p3);
            sum0 = Vector512.FusedMultiplyAdd(scale0, p0, sum0);
            sum1 = Vector512.FusedMultiplyAdd(scale1, p1, sum1);
            sum2 = Vector512.FusedMultiplyAdd(scale2, p2, sum2);
            sum3 = Vector512.FusedMultiplyAdd(scale3, p3, sum3);
            if (++adds == LaneSums.AddsPerLane)
            {
                total += Vector512Lanes.SumAsDouble(new Vector512Lanes((sum0 + sum1) + (sum2 + sum3)));
                sum0 = sum1 = sum2 = sum3 = Vector512<float>.Zero;
                adds = 0;
            }
        }
        for (; j < full; j += 16)
        {
            var x = Vector512.Load(chunk + j);
            max0 = Vector512.MaxNative(max0, x);
            var scale = ExpTerm(x - shift, floor, log2E, shifter, table, c1, c2, c3, out var p);
            sum0 = Vector512.FusedMultiplyAdd(scale, p, sum0);
        }
        if (rest > 0)
        {
            var x = Vector512.Load(chunk + len - 16);
            max1 = Vector512.MaxNative(max1, x);
            var scale = ExpTerm(x - shift, floor, log2E, shifter, table, c1, c2, c3, out var p);
            var isNew = Vector512.GreaterThanOrEqual(Vector512<int>.Indices, Vector512.Create(16 - rest)).AsSingle();
            sum1 += Vector512.ConditionalSelect(isNew, scale * p, Vector512<float>.Zero);
        }
        chunkMax = Vector512Lanes.MaxAcross(new Vector512Lanes(Vector512.MaxNative(max0, max1)));
        return total + Vector512Lanes.SumAsDouble(new Vector512Lanes((sum0 + sum1) + (sum2 + sum3)));
    }

    /// <summary>
    /// <see cref="SumOfExps"/> with AVX2 + FMA: <see cref="ExpTerm256"/> (an 8-entry table, no vscalefps), four accumulators of 8
    /// lanes each added by the FMA that forms the term, the next chunk prefetched into L1 and the one after into L2, as at
    /// 16 lanes. The terms carry a factor 2⁶⁴ (the scale is built by integer adds, which need a normal result for
    /// x ≥ −110), removed from the fp64 total. Against <see cref="SumOfExps{TVector}"/> at 8 lanes (10 multiplies or FMAs per
    /// vector, and no prefetch) this does 6, plus a permute, a shift and an integer add on the other ports. Each term is added
    /// to its accumulator as soon as it is formed: AVX2 has 16 vector registers, and with the four terms formed first the JIT
    /// spilled eight of them to the stack every iteration (≈ 9 % slower, single thread, chunk in L1).
    /// </summary>
    internal static unsafe double SumOfExps256(float* chunk, int len, float max, out float chunkMax)
    {
        var shift = Vector256.Create(max);
        var floor = Vector256.Create(TermFloor);
        var log2E = Vector256.Create(Log2E);
        var shifter = Vector256.Create(VectorExp.EighthsShifter);
        var table = TwoToTheEighthsTimesTwoTo64;
        var c1 = Vector256.Create(Exp2Eighths1);
        var c2 = Vector256.Create(Exp2Eighths2);
        var c3 = Vector256.Create(Exp2Eighths3);
        Vector256<float> sum0 = Vector256<float>.Zero, sum1 = sum0, sum2 = sum0, sum3 = sum0;
        Vector256<float> max0 = Vector256.Create(float.NegativeInfinity), max1 = max0;
        double total = 0.0;
        int full = len & ~7, rest = len - full, j = 0, adds = 0;
        for (; j + 32 <= full; j += 32)
        {
            PrefetchAhead<Vector256Lanes>(chunk + len + j);
            var x0 = Vector256.Load(chunk + j);
            max0 = Vector256.MaxNative(max0, x0);
            var scale0 = ExpTerm256(x0 - shift, floor, log2E, shifter, table, c1, c2, c3, out var p0);
            sum0 = Fma.MultiplyAdd(scale0, p0, sum0);
            var x1 = Vector256.Load(chunk + j + 8);
            max1 = Vector256.MaxNative(max1, x1);
            var scale1 = ExpTerm256(x1 - shift, floor, log2E, shifter, table, c1, c2, c3, out var p1);
            sum1 = Fma.MultiplyAdd(scale1, p1, sum1);
            var x2 = Vector256.Load(chunk + j + 16);
            max0 = Vector256.MaxNative(max0, x2);
            var scale2 = ExpTerm256(x2 - shift, floor, log2E, shifter, table, c1, c2, c3, out var p2);
            sum2 = Fma.MultiplyAdd(scale2, p2, sum2);
            var x3 = Vector256.Load(chunk + j + 24);
            max1 = Vector256.MaxNative(max1, x3);
            var scale3 = ExpTerm256(x3 - shift, floor, log2E, shifter, table, c1, c2, c3, out var p3);
            sum3 = Fma.MultiplyAdd(scale3, p3, sum3);
            if (++adds == LaneSums.AddsPerLane)
            {
                total += Vector256Lanes.SumAsDouble(new Vector256Lanes((sum0 + sum1) + (sum2 + sum3)));
                sum0 = sum1 = sum2 = sum3 = Vector256<float>.Zero;
                adds = 0;
            }
        }
        for (; j < full; j += 8)
        {
            var x = Vector256.Load(chunk + j);
            max0 = Vector256.MaxNative(max0, x);
            var scale = ExpTerm256(x - shift, floor, log2E, shifter, table, c1, c2, c3, out var p);
            sum0 = Fma.MultiplyAdd(scale, p, sum0);
        }
        if (rest > 0)
        {
            var x = Vector256.Load(chunk + len - 8);
            max1 = Vector256.MaxNative(max1, x);
            var scale = ExpTerm256(x - shift, floor, log2E, shifter, table, c1, c2, c3, out var p);
            var isNew = Vector256.GreaterThanOrEqual(Vector256<int>.Indices, Vector256.Create(8 - rest)).AsSingle();
            sum1 += Vector256.ConditionalSelect(isNew, scale * p, Vector256<float>.Zero);
        }
        chunkMax = Vector256Lanes.MaxAcross(new Vector256Lanes(Vector256.MaxNative(max0, max1)));
        return (total + Vector256Lanes.SumAsDouble(new Vector256Lanes((sum0 + sum1) + (sum2 + sum3)))) * TwoToMinus64;
    }

    /// <summary>
    /// <see cref="SumOfExps"/> at any width: <see cref="ExpTermTimesTwoTo64{TVector}"/> per entry (14 vector ops, no table
    /// lookup, exact without FMA), four accumulators, at most <see cref="LaneSums.AddsPerLane"/> adds per lane before fp64.
    /// </summary>
    internal static unsafe double SumOfExps<TVector>(float* chunk, int len, float max, out float chunkMax) where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count;
        var shift = TVector.Create(max);
        var floor = TVector.Create(TermFloor);
        var log2E = TVector.Create(Log2E);
        var shifter = TVector.Create(ExponentShifter);
        TVector sum0 = TVector.Zero, sum1 = sum0, sum2 = sum0, sum3 = sum0;
        TVector max0 = TVector.Create(float.NegativeInfinity), max1 = max0;
        double total = 0.0;
        int full = len - len % width, rest = len - full, j = 0, adds = 0;
        for (; j + 4 * width <= full; j += 4 * width)
        {
            if (Sse.IsSupported) PrefetchAhead<TVector>(chunk + len + j);
            var x0 = TVector.Load(chunk + j);
            var x1 = TVector.Load(chunk + j + width);
            var x2 = TVector.Load(chunk + j + 2 * width);
            var x3 = TVector.Load(chunk + j + 3 * width);
            max0 = TVector.MaxNative(max0, TVector.MaxNative(x0, x2));
            max1 = TVector.MaxNative(max1, TVector.MaxNative(x1, x3));
            sum0 += ExpTermTimesTwoTo64(x0 - shift, floor, log2E, shifter);
            sum1 += ExpTermTimesTwoTo64(x1 - shift, floor, log2E, shifter);
            sum2 += ExpTermTimesTwoTo64(x2 - shift, floor, log2E, shifter);
            sum3 += ExpTermTimesTwoTo64(x3 - shift, floor, log2E, shifter);
            if (++adds == LaneSums.AddsPerLane)
            {
                total += TVector.SumAsDouble((sum0 + sum1) + (sum2 + sum3));
                sum0 = sum1 = sum2 = sum3 = TVector.Zero;
                adds = 0;
            }
        }
        for (; j < full; j += width)
        {
            var x = TVector.Load(chunk + j);
            max0 = TVector.MaxNative(max0, x);
            sum0 += ExpTermTimesTwoTo64(x - shift, floor, log2E, shifter);
        }
        if (rest > 0)
        {
            var x = TVector.Load(chunk + len - width);
            max1 = TVector.MaxNative(max1, x);
            var term = ExpTermTimesTwoTo64(x - shift, floor, log2E, shifter);
            sum1 += TVector.Select(TVector.LastLanes(rest), term, TVector.Zero);
        }
        chunkMax = TVector.MaxAcross(TVector.MaxNative(max0, max1));
        return (total + TVector.SumAsDouble((sum0 + sum1) + (sum2 + sum3))) * TwoToMinus64;
    }

    /// <summary>
    /// The lines of the next 4·Count entries into L1 (<paramref name="next"/>: the same offset in the next chunk) and of the
    /// chunk after into L2, for a Σexp loop that takes 4·Count entries per iteration: one line per 16 floats, so four at 16
    /// lanes, two at 8, one at 4. A prefetch past the buffer's end is harmless: it never faults.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void PrefetchAhead<TVector>(float* next) where TVector : unmanaged, IFloatVector<TVector>
    {
        Sse.Prefetch0(next);
        Sse.Prefetch1(next + Chunk);
        if (TVector.Count >= 8)   // constant per instantiation: the JIT keeps only the branches that apply
        {
            Sse.Prefetch0(next + 16);
            Sse.Prefetch1(next + Chunk + 16);
        }
        if (TVector.Count >= 16)
        {
            Sse.Prefetch0(next + 32);
            Sse.Prefetch1(next + Chunk + 32);
            Sse.Prefetch0(next + 48);
            Sse.Prefetch1(next + Chunk + 48);
        }
    }

    private const float TermFloor = -110f;                 // exp(−110) = 1.7e-48: 0 in fp32, and −∞ becomes finite
    private const float Log2E = 1.44269504088896341f;
    private const float SixteenthsShifter = 786432f;        // 1.5·2¹⁹: adding it rounds t to a multiple of 1/16
    private const float Exp2C1 = 0.6931472f, Exp2C2 = 0.24023429f, Exp2C3 = 0.055502135f;
    private const float Ln2High = 0.693359375f, Ln2Low = -2.12194440e-4f;
    /// <summary>2^r ≈ 1 + r·(c1 + r·(c2 + r·c3)) on |r| ≤ 1/16: fitted here for minimax relative error (2.5·10⁻⁸; ≤ 6·10⁻⁸ more evaluated in fp32).</summary>
    private const float Exp2Eighths1 = 0.69314724f, Exp2Eighths2 = 0.24025762f, Exp2Eighths3 = 0.055496834f;
    /// <summary>1.5·2²³ + 127 + 64: adding it to t = x·log₂e rounds t to an integer n and leaves n + 191 in the low mantissa bits.</summary>
    private const float ExponentShifter = 12583103f;
    private const double TwoToMinus64 = 5.42101086242752217e-20;

    /// <summary>
    /// For j = 0 … 7: the bits of 2^(j/8)·2⁶⁴ rounded to the nearest float, minus j·2²⁰ (what the shifted bits of s add to
    /// them, see <see cref="ExpTerm256"/>), as an integer in each lane: one register, indexed by vpermps.
    /// </summary>
    private static readonly Vector256<float> TwoToTheEighthsTimesTwoTo64 = Vector256.Create(Enumerable.Range(0, 8)
        .Select(j => BitConverter.SingleToInt32Bits((float)Math.Pow(2, 64 + j / 8.0)) - (j << 20)).ToArray()).AsSingle();

    /// <summary>2^(j/16) for j = 0 … 15, each rounded to the nearest float: one register, indexed by vpermps.</summary>
    private static readonly Vector512<float> TwoToTheSixteenths =
        Vector512.Create(Enumerable.Range(0, 16).Select(j => (float)Math.Pow(2, j / 16.0)).ToArray());

    /// <summary>
    /// exp(x) for x ≤ 0 (and −∞, NaN) as a term of a sum: the forward's hot loop, where exp is what bounds the kernel
    /// (a logit is 4 bytes to load against a dozen vector ops), so each op dropped shows. The contract, the same on every
    /// path: relative error ≤ 1.85·10⁻⁷ + |x|·1.5·10⁻⁸ where the result is a normal float (x ≥ −87.3), and up to x = 4
    /// (<see cref="Headroom"/>: a chunk summed under a running max its own max exceeds); below −87.3, absolute error ≤ 2⁻¹²⁶
    /// (the terms are added to a sum ≥ 1, the max's own term); exp(0) = 1, exp(−∞) = 0, NaN → NaN.
    /// AVX-512: <see cref="ExpTerm"/> (16-entry table, 10 ops); AVX2 + FMA: <see cref="ExpTerm256"/> (8-entry table); other widths:
    /// <see cref="ExpTermTimesTwoTo64{TVector}"/>; the last two scaled back by 2⁻⁶⁴.
    /// </summary>
    internal static TVector ExpOfNonPositive<TVector>(TVector x) where TVector : unmanaged, IFloatVector<TVector>
    {
        if (typeof(TVector) == typeof(Vector512Lanes) && Avx512F.IsSupported)
        {
            var lanes = Unsafe.As<TVector, Vector512Lanes>(ref x).Value;
            var scale = ExpTerm(lanes, Vector512.Create(TermFloor), Vector512.Create(Log2E), Vector512.Create(SixteenthsShifter),
                TwoToTheSixteenths, Vector512.Create(Exp2C1), Vector512.Create(Exp2C2), Vector512.Create(Exp2C3), out var p);
            var term = new Vector512Lanes(scale * p);
            return Unsafe.As<Vector512Lanes, TVector>(ref term);
        }
        if (typeof(TVector) == typeof(Vector256Lanes) && Avx2.IsSupported && Fma.IsSupported)
        {
            var lanes = Unsafe.As<TVector, Vector256Lanes>(ref x).Value;
            var scale = ExpTerm256(lanes, Vector256.Create(TermFloor), Vector256.Create(Log2E), Vector256.Create(VectorExp.EighthsShifter),
                TwoToTheEighthsTimesTwoTo64, Vector256.Create(Exp2Eighths1), Vector256.Create(Exp2Eighths2),
                Vector256.Create(Exp2Eighths3), out var p);
            var term = new Vector256Lanes(scale * p * Vector256.Create((float)TwoToMinus64));
            return Unsafe.As<Vector256Lanes, TVector>(ref term);
        }
        return ExpTermTimesTwoTo64(x, TVector.Create(TermFloor), TVector.Create(Log2E), TVector.Create(ExponentShifter))
               * TVector.Create((float)TwoToMinus64);
    }

    /// <summary>
    /// exp(x)·2⁶⁴ for x ≤ 0, at any width, in 13 vector ops with no table and no FMA needed for exactness: x is clamped at −110
    /// (−∞ becomes finite; NaN stays NaN, maxps returning its second operand); s = x·log₂e + (1.5·2²³ + 191) rounds t = x·log₂e
    /// to an integer n and holds n + 191 in its low bits, so shifting s's bits left by 23 gives the float 2^(n + 64), a normal
    /// number for every n ≥ −159 (that is why the sum carries 2⁶⁴: 2ⁿ alone would leave the normal range below x ≈ −87.3);
    /// r = x − n·ln 2 by Cody–Waite (ln 2 in two parts, n·Ln2High exact), e^r by <see cref="VectorExp"/>'s degree-6
    /// polynomial (3·10⁻⁹). Error: the polynomial and about four roundings, ≤ 3·10⁻⁷ relative; the result times 2⁻⁶⁴ is exp(x)
    /// (in fp32 that product rounds once more, into the denormals where x &lt; −87.3).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TVector ExpTermTimesTwoTo64<TVector>(TVector x, TVector floor, TVector log2E, TVector shifter)
        where TVector : unmanaged, IFloatVector<TVector>
    {
        var clamped = TVector.MaxNative(floor, x);
        var s = TVector.MultiplyAdd(clamped, log2E, shifter);
        var n = s - shifter;
        var r = TVector.MultiplyAdd(n, TVector.Create(-Ln2Low), TVector.MultiplyAdd(n, TVector.Create(-Ln2High), clamped));
        var one = TVector.Create(1f);
        var q = TVector.MultiplyAdd(TVector.Create(1.3814611593e-3f), r, TVector.Create(8.3687100559e-3f));
        q = TVector.MultiplyAdd(q, r, TVector.Create(4.1668388993e-2f));
        q = TVector.MultiplyAdd(q, r, TVector.Create(1.6666521132e-1f));
        q = TVector.MultiplyAdd(q, r, TVector.Create(4.9999994040e-1f));
        q = TVector.MultiplyAdd(q, r, one);
        q = TVector.MultiplyAdd(q, r, one);
        return q * TVector.ShiftBitsLeft(s, 23);
    }

    /// <summary>
    /// exp(x) = scale · p for x ≤ 0, in base 2 with a 16-entry table (AVX-512; the constants are parameters so that a
    /// loop keeps them in registers). t = x·log₂e is rounded to a multiple of 1/16 by adding 1.5·2¹⁹ (s = fma(x, log₂e,
    /// 1.5·2¹⁹), whose low 4 mantissa bits are then the table index j and k = s − 1.5·2¹⁹ = n + j/16 exactly);
    /// r = fma(x, log₂e, −k) ∈ [−1/32, 1/32] with one rounding; scale = 2^(j/16) (vpermps) · 2ⁿ (vscalefps, which takes
    /// ⌊k⌋ = n and rounds results below the smallest normal correctly, to denormals, then 0); p = 2^r by a degree-3
    /// polynomial (coefficients fitted here for minimax relative error, 1.6·10⁻⁹). 10 vector ops with the subtraction of
    /// the max and the FMA that adds the term, against 12 for the degree-5 polynomial on [−½, ½] that this replaced (and
    /// 14 for <see cref="ExpTermTimesTwoTo64{TVector}"/>). Error of scale·p: table entry, p and the product each rounded once
    /// (≤ 3·2⁻²⁴ ≈ 1.8·10⁻⁷ relative) plus log₂e rounded to fp32 (|x|·1.4·10⁻⁸): ≤ 1.85·10⁻⁷ + |x|·1.5·10⁻⁸ (tested).
    /// In a log-sum-exp, where x = logit − max and the max's own term is 1, that is ≈ 2·10⁻⁷ absolute in ln Σ (tested
    /// against fp64 on flat, spread and one-hot rows). x is clamped at −110 first, so −∞ gives exactly 0; NaN stays NaN
    /// (MaxNative(floor, x) compiles to vmaxps, which returns its second operand, x, when either is NaN). x up to
    /// <see cref="Headroom"/> keeps the same bound; beyond it is outside the contract.
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

    /// <summary>
    /// exp(x)·2⁶⁴ = scale · p for x ≤ 0 with AVX2 + FMA, <see cref="ExpTerm"/>'s method at 8 lanes: t = x·log₂e is rounded to a
    /// multiple of 1/8 by adding 1.5·2²⁰ (s = fma(x, log₂e, 1.5·2²⁰), mantissa bits 2²² + 8k, so its low 3 bits are the table
    /// index j and k = s − 1.5·2²⁰ = n + j/8 exactly); r = fma(x, log₂e, −k) ∈ [−1/16, 1/16]; p = 2^r by a degree-3 polynomial;
    /// scale = 2^(j/8)·2^(n + 64) without vscalefps: s's bits shifted left by 20 are n·2²³ + j·2²⁰ (mod 2³²), and added as
    /// integers to the table entry (the bits of 2^(j/8)·2⁶⁴ less j·2²⁰) they give the bits of 2^(j/8)·2⁶⁴ with n added to its
    /// exponent — a normal float for every n ≥ −190, so for x ≥ −110, where the clamp puts −∞. 6 multiplies or FMAs with the
    /// one that adds the term, a permute, a shift and an integer add. Error of scale · p (rounded once): table entry
    /// (3.2·10⁻⁸), p (2.5·10⁻⁸ fit + 6·10⁻⁸ rounding), the product (6·10⁻⁸), log₂e in fp32 (|x|·1.4·10⁻⁸): within
    /// <see cref="ExpOfNonPositive{TVector}"/>'s contract — checked here on every float x in [−87.3, 0] against fp64 exp: at worst
    /// 0.89 of the bound (x = −75.26); the degree-4 polynomial it replaces cost one more FMA per 8 terms (≈ 10 %).
    /// NaN stays NaN (vmaxps returns x when x is NaN; the integer add leaves a NaN scale NaN or finite, and p is NaN).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> ExpTerm256(Vector256<float> x, Vector256<float> floor, Vector256<float> log2E,
        Vector256<float> shifter, Vector256<float> table, Vector256<float> c1, Vector256<float> c2, Vector256<float> c3,
        out Vector256<float> p)
    {
        var clamped = Vector256.MaxNative(floor, x);
        var s = Fma.MultiplyAdd(clamped, log2E, shifter);
        var k = s - shifter;
        var r = Fma.MultiplySubtract(clamped, log2E, k);
        p = Fma.MultiplyAdd(Fma.MultiplyAdd(Fma.MultiplyAdd(c3, r, c2), r, c1), r, Vector256<float>.One);
        return (Avx2.PermuteVar8x32(table, s.AsInt32()).AsInt32() + (s.AsInt32() << 20)).AsSingle();
    }

    /// <summary>V in [2, Count): one padded vector (−∞ padding: neutral for max, exp(−∞) = 0).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static unsafe float ShortLogSumExp<TVector>(float* row, int vocab) where TVector : unmanaged, IFloatVector<TVector>
    {
        var v = VectorTail.Load<TVector>(row, vocab, float.NegativeInfinity);
        float max = row[0];
        for (int k = 1; k < vocab; k++) max = MathF.Max(max, row[k]);
        return (float)(max + Math.Log(TVector.SumAsDouble(VectorExp.Exp(v - TVector.Create(max)))));
    }

    /// <summary>−g·exp(x − lse) over a row, in place, at the widest accelerated width.</summary>
    private static unsafe void SoftmaxGradientRow(float* p, int vocab, float lse, float g)
    {
        switch (CpuVectors.Width)
        {
            case VectorWidth.Vector512: SoftmaxGradientRow<Vector512Lanes>(p, vocab, lse, g); break;
            case VectorWidth.Vector256: SoftmaxGradientRow<Vector256Lanes>(p, vocab, lse, g); break;
            case VectorWidth.Vector128: SoftmaxGradientRow<Vector128Lanes>(p, vocab, lse, g); break;
            default: SoftmaxGradientRow<ScalarLanes>(p, vocab, lse, g); break;
        }
    }

    /// <summary>−g·exp(x − lse) over a row of length V, in place (for V ≥ Count the last vector is precomputed, see Gelu).</summary>
    private static unsafe void SoftmaxGradientRow<TVector>(float* p, int vocab, float lse, float g) where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count;
        var shift = TVector.Create(lse);
        var minusG = TVector.Create(-g);
        if (vocab < width)
        {
            VectorTail.Store(VectorExp.Exp(VectorTail.Load<TVector>(p, vocab, 0f) - shift) * minusG, p, vocab);
            return;
        }
        var last = VectorExp.Exp(TVector.Load(p + vocab - width) - shift) * minusG;
        for (int j = 0; j <= vocab - width; j += width) (VectorExp.Exp(TVector.Load(p + j) - shift) * minusG).Store(p + j);
        last.Store(p + vocab - width);
    }

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
                    SoftmaxGradientRow(p, vocab, xs[i], g);
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
