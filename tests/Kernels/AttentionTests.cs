using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Cpu.Simd;
using DistAlign.Tests.Reference;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels;

/// <summary>The CPU attention against the fp64 <see cref="ReferenceAttention"/>, at every accelerated vector width (same tolerances).</summary>
[NonParallelizable] // tests set the kernels' vector width
public class AttentionTests
{
    private static int[] Segments(int b, int t, int seed)
    {
        // Packed rows: segments of random length 1..6, ids increasing along the row.
        var rng = new Random(seed);
        var seg = new int[b * t];
        for (int r = 0; r < b; r++)
        {
            int id = 0, left = rng.Next(1, 7);
            for (int i = 0; i < t; i++)
            {
                if (left-- == 0) { id++; left = rng.Next(1, 7) - 1; }
                seg[r * t + i] = id;
            }
        }
        return seg;
    }

    [TestCase(false)]
    [TestCase(true)]
    public void ReferenceBackwardMatchesFiniteDifferences(bool segmented)
    {
        const int b = 2, t = 5, c = 6, nh = 2;
        var qkv = D(RandomFloats(b * t * 3 * c, 1));
        var g = D(RandomFloats(b * t * c, 2));
        int[]? seg = segmented ? [0, 0, 1, 1, 1, 0, 1, 1, 2, 2] : null;
        double Loss() => Dot(g, ReferenceAttention.Forward(qkv, seg, b, t, nh).Out);
        AssertClose(ReferenceAttention.Backward(g, qkv, seg, b, t, nh), FiniteDifferenceGradient(Loss, qkv), 1e-6, 1e-6, "dqkv");
    }

    private static IEnumerable<TestCaseData> Shapes() => VectorWidths.Each(
        [1, 1, 4, 1, false],
        [2, 5, 6, 3, false],
        [1, 5, 3, 3, false],    // hs = 1
        [1, 17, 13, 1, false],
        [2, 17, 65, 1, false],  // hs = 65: vectors and a scalar tail
        [1, 16, 128, 2, false], // hs = 64
        [1, 23, 128, 2, false], // hs = 64, T not a multiple of the 4-query block or of 8 or 16 keys
        [2, 17, 12, 3, true],
        [2, 33, 128, 2, true],  // hs = 64 fast path with segments
        [1, 33, 77, 1, true]);

    [TestCaseSource(nameof(Shapes))]
    public void ForwardAndAccumulatingBackwardMatchReference(int b, int t, int c, int nh, bool segmented, VectorWidth width) => VectorWidths.At(width, () =>
    {
        var qkv = RandomFloats(b * t * 3 * c, 1);
        int[] seg = segmented ? Segments(b, t, 7) : [];
        var att = new float[b * nh * t * t];
        var o = new float[b * t * c];
        Attention.Forward(qkv, seg, b, t, nh, att, o);
        var r = ReferenceAttention.Forward(D(qkv), seg, b, t, nh);
        AssertClose(att, r.Att, 1e-6, 1e-4, "att");
        AssertClose(o, r.Out, 1e-5, 1e-4, "out");

        var dout = RandomFloats(b * t * c, 2);
        var dqkv = RandomFloats(qkv.Length, 3);
        var expected = Plus(dqkv, ReferenceAttention.Backward(D(dout), D(qkv), seg, b, t, nh));
        Attention.Backward(dout, qkv, att, o, b, t, nh, dqkv);
        AssertClose(dqkv, expected, 1e-5, 1e-4, "dqkv (accumulated)");
    });

    [Test]
    public void EmptyBatchIsANoOp()
    {
        // B = 0 or T = 0: the buffers are empty by contract, so the op must accept them and write nothing. The views are
        // empty slices of sentinel-filled arrays, and the kernels work through raw pointers, so a stray write would show.
        const float sentinel = 7f;
        var buffer = Enumerable.Repeat(sentinel, 8).ToArray();
        var ids = new[] { -3, -3 };
        foreach (var (b, t) in new[] { (0, 5), (3, 0) })
        {
            Assert.That(() => Attention.Forward(buffer.AsSpan(0, 0), ids.AsSpan(1, 0), b, t, 2, buffer.AsSpan(2, 0), buffer.AsSpan(4, 0)),
                Throws.Nothing, $"forward, B = {b}, T = {t}");
            Assert.That(() => Attention.Backward(buffer.AsSpan(1, 0), buffer.AsSpan(2, 0), buffer.AsSpan(3, 0), buffer.AsSpan(5, 0), b, t, 2,
                buffer.AsSpan(6, 0)), Throws.Nothing, $"backward, B = {b}, T = {t}");
        }
        Assert.That(buffer, Is.All.EqualTo(sentinel), "nothing written");
        Assert.That(ids, Is.All.EqualTo(-3), "segment ids untouched");

        // An empty batch is still checked, not waved through: data where B·T = 0, or no heads, is an error.
        Assert.That(() => Attention.Forward(new float[6], [], 0, 5, 2, [], []),
            Throws.ArgumentException.With.Message.Contains("qkv must be empty"));
        Assert.That(() => Attention.Backward([], [], [], [], 3, 0, 0, []), Throws.InstanceOf<ArgumentException>(), "NH = 0");
    }

    /// <summary>
    /// T = 1 (B = 1): the one token attends only to itself, so att = 1 and out = v exactly (softmax of one score is
    /// exp(0)/1), the backward adds dout to dv, and dq, dk get nothing (dz = a·(da − a·da) = 0); checked against the fp64
    /// reference with the tolerances of <see cref="ForwardAndAccumulatingBackwardMatchReference"/>, plus the exact values.
    /// </summary>
    private static IEnumerable<TestCaseData> BothPaths() => VectorWidths.Each(
        [4, 1],      // hs = 4: one query at a time
        [128, 2]);   // hs = 64 fast path

    [TestCaseSource(nameof(BothPaths))]
    public void SingleTokenAttendsOnlyToItself(int c, int nh, VectorWidth width) => VectorWidths.At(width, () =>
    {
        const int b = 1, t = 1;
        var qkv = RandomFloats(b * t * 3 * c, 1);
        var att = new float[b * nh * t * t];
        var o = new float[b * t * c];
        Attention.Forward(qkv, [], b, t, nh, att, o);
        var r = ReferenceAttention.Forward(D(qkv), null, b, t, nh);
        AssertClose(att, r.Att, 1e-6, 1e-4, "att");
        AssertClose(o, r.Out, 1e-5, 1e-4, "out");
        Assert.That(att, Is.All.EqualTo(1f), "a token's only allowed key has probability exactly 1");
        AssertBitIdentical(qkv[(2 * c)..], o, "out = v");

        var dout = RandomFloats(b * t * c, 2);
        var dqkv = RandomFloats(qkv.Length, 3);
        var expected = Plus(dqkv, ReferenceAttention.Backward(D(dout), D(qkv), null, b, t, nh));
        Attention.Backward(dout, qkv, att, o, b, t, nh, dqkv);
        AssertClose(dqkv, expected, 1e-5, 1e-4, "dqkv (accumulated)");
    });

    [TestCaseSource(typeof(VectorWidths), nameof(VectorWidths.Accelerated))]
    public void SegmentsNeverSeeEachOther(VectorWidth width) => VectorWidths.At(width, () =>
    {
        const int b = 1, t = 12, c = 8, nh = 2;
        int[] seg = [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2];
        var qkv = RandomFloats(b * t * 3 * c, 1);
        var att = new float[b * nh * t * t];
        var o = new float[b * t * c];
        Attention.Forward(qkv, seg, b, t, nh, att, o);
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < t; i++)
                for (int s = 0; s < t; s++)
                    if (seg[s] != seg[i] || s > i)
                        Assert.That(att[(h * t + i) * t + s], Is.EqualTo(0f), $"att[h={h}, t={i}, s={s}]");

        // Change q, k and v of a token in segment 0: segments 1 and 2 must be bit-identical.
        var changed = (float[])qkv.Clone();
        for (int j = 0; j < 3 * c; j++) changed[2 * 3 * c + j] += 5f;
        var o2 = new float[o.Length];
        Attention.Forward(changed, seg, b, t, nh, new float[att.Length], o2);
        AssertBitIdentical(o[(5 * c)..], o2[(5 * c)..], "outputs of segments 1 and 2");
        Assert.That(o2[(2 * c)..(5 * c)], Is.Not.EqualTo(o[(2 * c)..(5 * c)]), "segment 0 does change");
    });

    /// <summary>
    /// Scores of order 1e5 (q, k ~ N(0, 300²)): forward and backward against the fp64 reference, on both head-size paths.
    /// Tolerances, from the size of the scores:
    /// <list type="bullet">
    /// <item>A score z = q·k/√hs ~ 1e5 carries an fp32 rounding error of about 2⁻²⁴·1e5 ≈ 6e-3. Where two allowed scores
    /// were within a few units of each other that error would move their probabilities by up to ¼·2·6e-3 ≈ 3e-3 (∂a/∂z =
    /// a(1 − a) ≤ ¼) and out by 3e-3·|v| ≈ 1: a tolerance that says little. So the test first checks, on the reference,
    /// that every row's best score leads the next by more than 104: then e^(−gap) is below half fp32's least subnormal, the
    /// fp32 softmax is exactly one-hot, and a(1 − a) ≤ e^(−104) makes the 6e-3 score error irrelevant. What is left is
    /// rounding of the probabilities themselves: att within 1e-7 (≈ 2⁻²⁴ ≈ 6e-8, one rounding of a value ≤ 1), out within
    /// 1e-6 + 2⁻²³·|ref| (out = 1·v_argmax: at most a rounding or two of |v|), both far below the ordinary 1e-6 / 1e-5 + 1e-4·|ref|.</item>
    /// <item>dv += a·dout is a sum of a few dout rows (a ∈ {0, 1}), no larger than in the ordinary tests: the ordinary
    /// 1e-5 + 1e-4·|ref|.</item>
    /// <item>dq, dk: the reference contribution is a(1 − a)·… ≤ e^(−104)·…, i.e. 0, so they must come back as they went in.
    /// The kernel forms dz = a·(da − dout·out)·scale, where da = dout·v_s and dout·out = dout·v_s are two fp32 dot products
    /// of terms |dout_i·v_i| ~ 300. One query at a time they are the same sum, so dz = 0 exactly; on the hs = 64 path they
    /// are summed in different orders and differ by their rounding, at worst hs·2⁻²⁴·Σ|dout_i·v_i| each but in practice
    /// about 2⁻²⁴·Σ|dout_i·v_i| (the roundings take both signs). dz·k then moves dq (and dz·q moves dk) by that times
    /// scale·|k|, with |k| up to ~1e3. The test allows 4·2⁻²⁴·max Σ|dout_i·v_i|·scale·max|q, k| (two sums, 2× margin),
    /// computed from the data: 0.18 for hs = 4 and 0.54 for hs = 64, against observed errors of 0 and 0.149 (the same on
    /// the Vector512, AVX2 and Vector128 paths). A backward that kept the a·da term without cancelling it would be off
    /// by |da|·scale·|k| ~ 1e5, so the check still tells a right backward from a wrong one.</item>
    /// </list>
    /// </summary>
    [TestCaseSource(nameof(BothPaths))]
    public void LargeScoresMatchTheReference(int c, int nh, VectorWidth width) => VectorWidths.At(width, () =>
    {
        const int b = 1, t = 9;
        int hs = c / nh;
        var qkv = RandomFloats(b * t * 3 * c, 1, 300.0);   // scores of order 1e5
        var r = ReferenceAttention.Forward(D(qkv), null, b, t, nh);
        Assert.That(SmallestLeadOfTheBestScore(qkv, b, t, nh), Is.GreaterThan(104.0), "the regime the tolerances assume: every softmax row one-hot in fp32");

        var att = new float[b * nh * t * t];
        var o = new float[b * t * c];
        Attention.Forward(qkv, [], b, t, nh, att, o);
        AssertClose(att, r.Att, 1e-7, 0, "att");
        AssertClose(o, r.Out, 1e-6, 1.0 / (1 << 23), "out");

        var dout = RandomFloats(b * t * c, 2);
        var before = RandomFloats(qkv.Length, 3);
        var dqkv = (float[])before.Clone();
        var expected = Plus(before, ReferenceAttention.Backward(D(dout), D(qkv), null, b, t, nh));
        Attention.Backward(dout, qkv, att, o, b, t, nh, dqkv);
        double largestDotTerms = 0;   // max over queries and allowed keys of Σ_i |dout_i·v_i| within a head
        for (int h = 0; h < nh; h++)
            for (int tq = 0; tq < t; tq++)
                for (int s = 0; s <= tq; s++)
                {
                    double sum = 0;
                    for (int i = 0; i < hs; i++) sum += Math.Abs((double)dout[tq * c + h * hs + i] * qkv[s * 3 * c + 2 * c + h * hs + i]);
                    largestDotTerms = Math.Max(largestDotTerms, sum);
                }
        double largestQk = Enumerable.Range(0, qkv.Length).Where(i => i % (3 * c) < 2 * c).Max(i => Math.Abs(qkv[i]));
        double qkTolerance = 4 * Math.Pow(2, -24) * largestDotTerms * (1 / Math.Sqrt(hs)) * largestQk;
        var (qk, v) = SplitQkFromV(dqkv, c);
        var (qkExpected, vExpected) = SplitQkFromV(expected, c);
        AssertClose(qk, qkExpected, qkTolerance, 0, $"dq, dk (accumulated; allowed {qkTolerance:G2})");
        AssertClose(v, vExpected, 1e-5, 1e-4, "dv (accumulated)");
    });

    /// <summary>The smallest gap, over rows (b, h, t) with at least two allowed keys, between the best fp64 score and the next.</summary>
    private static double SmallestLeadOfTheBestScore(float[] qkv, int b, int t, int nh)
    {
        int c = qkv.Length / (3 * b * t), hs = c / nh;
        double smallest = double.PositiveInfinity;
        for (int bi = 0; bi < b; bi++)
            for (int h = 0; h < nh; h++)
                for (int tq = 1; tq < t; tq++)
                {
                    var z = new double[tq + 1];
                    for (int s = 0; s <= tq; s++)
                        for (int i = 0; i < hs; i++)
                            z[s] += (double)qkv[(bi * t + tq) * 3 * c + h * hs + i] * qkv[(bi * t + s) * 3 * c + c + h * hs + i] / Math.Sqrt(hs);
                    Array.Sort(z);
                    smallest = Math.Min(smallest, z[^1] - z[^2]);
                }
        return smallest;
    }

    /// <summary>The q and k parts of a [.., 3C] qkv-shaped array, and its v part, each in order.</summary>
    private static (T[] Qk, T[] V) SplitQkFromV<T>(T[] qkvShaped, int c)
    {
        var qk = new List<T>();
        var v = new List<T>();
        for (int i = 0; i < qkvShaped.Length; i++) (i % (3 * c) < 2 * c ? qk : v).Add(qkvShaped[i]);
        return ([.. qk], [.. v]);
    }

    private static IEnumerable<TestCaseData> ThreadCountShapes() => VectorWidths.Each(
        [12],
        [192]);   // hs = 64 fast path

    [TestCaseSource(nameof(ThreadCountShapes))]
    public void ResultsDoNotDependOnThreadCount(int c, VectorWidth width) => VectorWidths.At(width, () =>
    {
        const int b = 2, t = 31, nh = 3;
        var qkv = RandomFloats(b * t * 3 * c, 1);
        var seg = Segments(b, t, 3);
        var dout = RandomFloats(b * t * c, 2);
        float[]? first = null;
        foreach (int threads in new[] { 1, 2, 3 })
            WithThreads(threads, () =>
            {
                var att = new float[b * nh * t * t];
                var o = new float[b * t * c];
                var dqkv = new float[qkv.Length];
                Attention.Forward(qkv, seg, b, t, nh, att, o);
                Attention.Backward(dout, qkv, att, o, b, t, nh, dqkv);
                var all = att.Concat(o).Concat(dqkv).ToArray();
                if (first == null) first = all; else AssertBitIdentical(first, all, $"{threads} threads");
            });
    });

    [Test]
    public void ChannelsNotDivisibleByHeadsAreRejected() =>
        Assert.That(() => Attention.Forward(new float[2 * 3 * 5], [], 1, 2, 2, new float[8], new float[10]),
            Throws.ArgumentException.With.Message.Contains("multiple of NH"));
}
