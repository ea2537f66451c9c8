using DistAlign.Kernels.Cpu;
using DistAlign.Tests.Reference;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels;

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

    [TestCase(1, 1, 4, 1, false)]
    [TestCase(2, 5, 6, 3, false)]
    [TestCase(1, 5, 3, 3, false)]    // hs = 1
    [TestCase(1, 17, 13, 1, false)]
    [TestCase(2, 17, 65, 1, false)]
    [TestCase(1, 16, 128, 2, false)] // hs = 64
    [TestCase(2, 17, 12, 3, true)]
    [TestCase(2, 33, 128, 2, true)] // hs = 64 fast path with segments
    [TestCase(1, 33, 77, 1, true)]
    public void ForwardAndAccumulatingBackwardMatchReference(int b, int t, int c, int nh, bool segmented)
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
    }

    [Test]
    public void EmptyBatchIsANoOp()
    {
        Attention.Forward([], [], 0, 5, 2, [], []);
        Attention.Backward([], [], [], [], 3, 0, 2, []);
    }

    [Test]
    public void SegmentsNeverSeeEachOther()
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
    }

    [Test]
    public void LargeScoresStayFinite()
    {
        const int b = 1, t = 9, c = 4, nh = 1;
        var qkv = RandomFloats(b * t * 3 * c, 1, 300.0);   // scores of order 1e5
        var att = new float[t * t];
        var o = new float[t * c];
        Attention.Forward(qkv, [], b, t, nh, att, o);
        AssertAllFinite(att, "att");
        AssertAllFinite(o, "out");
        var dqkv = new float[qkv.Length];
        Attention.Backward(RandomFloats(t * c, 2), qkv, att, o, b, t, nh, dqkv);
        AssertAllFinite(dqkv, "dqkv");
    }

    [TestCase(12)]
    [TestCase(192)]   // hs = 64 fast path
    public void ResultsDoNotDependOnThreadCount(int c)
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
    }

    [Test]
    public void ChannelsNotDivisibleByHeadsAreRejected() =>
        Assert.That(() => Attention.Forward(new float[2 * 3 * 5], [], 1, 2, 2, new float[8], new float[10]),
            Throws.ArgumentException.With.Message.Contains("multiple of NH"));
}
