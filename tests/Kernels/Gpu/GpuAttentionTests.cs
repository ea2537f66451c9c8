using DistAlign.Tests.Reference;
using ILGPU;
using static DistAlign.Tests.Kernels.Gpu.GpuTest;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels.Gpu;

/// <summary>
/// Attention on the CPU simulator against <see cref="ReferenceAttention"/> (tolerances as the CPU tests:
/// att 1e-6 + 1e-4·|ref|, out and dqkv 1e-5 + 1e-4·|ref|): the whole-op kernels, and the GPU training path
/// (QKᵀ and A·V as strided-batched GEMMs around the masked softmax kernels).
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuAttentionTests(string backend) : GpuFixture(backend)
{
    [TestCase(1, 1, 4, 1, false)]
    [TestCase(2, 5, 6, 3, false)]
    [TestCase(1, 5, 3, 3, false)]    // hs = 1
    [TestCase(1, 17, 13, 1, false)]
    [TestCase(2, 17, 12, 3, true)]
    [TestCase(1, 5, 9, 3, true)]
    public void WholeOpForwardAndAccumulatingBackwardMatchReference(int b, int t, int c, int nh, bool segmented)
    {
        var qkv = RandomFloats(b * t * 3 * c, 1);
        int[] seg = segmented ? Segments(b, t, 7) : [];
        var dout = RandomFloats(b * t * c, 2);
        var before = RandomFloats(qkv.Length, 3);
        var r = ReferenceAttention.Forward(D(qkv), seg, b, t, nh);
        var expected = Plus(before, ReferenceAttention.Backward(D(dout), D(qkv), seg, b, t, nh));

        float[] Run()
        {
            using var dq = Up(qkv);
            using var ds = Up(seg);
            using var datt = Up(new float[b * nh * t * t]);
            using var dout0 = Up(new float[b * t * c]);
            using var dg = Up(dout);
            using var dqkv = Up(before);
            Ops.Attention.Forward(V(dq, qkv), V(ds, seg), b, t, nh, V(datt, b * nh * t * t), V(dout0, b * t * c));
            var att = Down(datt, b * nh * t * t);
            AssertClose(att, r.Att, 1e-6, 1e-4, "att");
            AssertClose(Down(dout0, b * t * c), r.Out, 1e-5, 1e-4, "out");
            Ops.Attention.Backward(V(dg, dout), V(dq, qkv), V(datt, att.Length), V(dout0, b * t * c), b, t, nh, V(dqkv, qkv.Length));
            var grad = Down(dqkv, qkv.Length);
            AssertClose(grad, expected, 1e-5, 1e-4, "dqkv (accumulated)");
            return [.. att, .. grad];
        }
        AssertBitIdentical(Run(), Run(), "attention rerun");
    }

    /// <summary>
    /// B = 0 or T = 0: nothing is launched and nothing written. The empty views sit on one-element buffers holding a
    /// sentinel, and device kernels do not check bounds, so a launch that ran anyway would overwrite one.
    /// </summary>
    [Test]
    public void EmptyBatchIsANoOp()
    {
        const float sentinel = 7f;
        using var qkv = Up(new[] { sentinel });
        using var seg = Up(new[] { -3 });
        using var att = Up(new[] { sentinel });
        using var o = Up(new[] { sentinel });
        using var dout = Up(new[] { sentinel });
        using var dqkv = Up(new[] { sentinel });
        foreach (var (b, t) in new[] { (0, 5), (3, 0) })
        {
            Ops.Attention.Forward(V(qkv, 0), V(seg, 0), b, t, 2, V(att, 0), V(o, 0));
            Ops.Attention.Backward(V(dout, 0), V(qkv, 0), V(att, 0), V(o, 0), b, t, 2, V(dqkv, 0));
            Ops.Attention.SoftmaxForward(V(qkv, 0), V(seg, 0), b, t, 2, 1f, V(att, 0));
            Ops.Attention.SoftmaxBackward(V(dout, 0), V(att, 0), b, t, 2, 1f, V(dqkv, 0));
        }
        foreach (var (buffer, name) in new[] { (qkv, "qkv"), (att, "att"), (o, "out"), (dout, "dout"), (dqkv, "dqkv") })
            Assert.That(Down(buffer, 1), Is.EqualTo(new[] { sentinel }), $"{name} untouched");
        Assert.That(Down(seg, 1), Is.EqualTo(new[] { -3 }), "segment ids untouched");
    }

    /// <summary>
    /// T = 1 (B = 1), the shortest non-empty batch, against the fp64 reference with the fixture's tolerances: the token
    /// attends only to itself, so att = 1 and out = v exactly (the softmax of one score is exp(0)/1), dv gains dout and dq,
    /// dk nothing. Both the whole-op kernels and the softmax kernels of the GEMM path (whose score gradient must be 0).
    /// </summary>
    [TestCase(4, 1)]
    [TestCase(6, 3)]   // hs = 2, three heads
    public void SingleTokenMatchesReference(int c, int nh)
    {
        const int b = 1, t = 1;
        var qkv = RandomFloats(b * t * 3 * c, 1);
        var dout = RandomFloats(b * t * c, 2);
        var before = RandomFloats(qkv.Length, 3);
        var r = ReferenceAttention.Forward(D(qkv), null, b, t, nh);
        var expected = Plus(before, ReferenceAttention.Backward(D(dout), D(qkv), null, b, t, nh));

        using var dq = Up(qkv);
        using var ds = Up(Array.Empty<int>());
        using var datt = Up(new float[nh]);
        using var dout0 = Up(new float[c]);
        using var dg = Up(dout);
        using var dqkv = Up(before);
        Ops.Attention.Forward(V(dq, qkv), V(ds, 0), b, t, nh, V(datt, nh), V(dout0, c));
        var att = Down(datt, nh);
        var o = Down(dout0, c);
        AssertClose(att, r.Att, 1e-6, 1e-4, "att");
        AssertClose(o, r.Out, 1e-5, 1e-4, "out");
        Assert.That(att, Is.All.EqualTo(1f), "a token's only allowed key has probability exactly 1");
        AssertBitIdentical(qkv[(2 * c)..], o, "out = v");
        Ops.Attention.Backward(V(dg, dout), V(dq, qkv), V(datt, nh), V(dout0, c), b, t, nh, V(dqkv, qkv.Length));
        AssertClose(Down(dqkv, qkv.Length), expected, 1e-5, 1e-4, "dqkv (accumulated)");

        // The softmax kernels alone: one raw score per head gives probability 1 and a score gradient of exactly 0.
        var scores = RandomFloats(nh, 4, 10.0);
        using var dscores = Up(scores);
        using var probs = Up(new float[nh]);
        using var dprobs = Up(RandomFloats(nh, 5));
        Ops.Attention.SoftmaxForward(V(dscores, nh), V(ds, 0), b, t, nh, 0.5f, V(probs, nh));
        AssertClose(Down(probs, nh), r.Att, 1e-6, 1e-4, "softmax probabilities");
        Ops.Attention.SoftmaxBackward(V(dprobs, nh), V(probs, nh), b, t, nh, 0.5f, V(dscores, nh));
        Assert.That(Down(dscores, nh), Is.All.EqualTo(0f), "score gradient a·(da − a·da)·scale with a = 1");
    }

    /// <summary>
    /// The GPU training path without cuBLAS: per batch row, S = QKᵀ and O = A·V as strided-batched GEMMs over
    /// heads (row stride 3C inside qkv, head stride hs), the masked softmax kernels in between, and the
    /// backward as dA = dO·Vᵀ, dV += Aᵀ·dO, dS = softmax backward, dQ += dS·K, dK += dSᵀ·Q.
    /// </summary>
    [TestCase(1, 1, 4, 1, false)]
    [TestCase(2, 5, 6, 3, false)]
    [TestCase(1, 17, 13, 1, false)]
    [TestCase(2, 17, 12, 3, true)]
    public void GemmSoftmaxPathMatchesReference(int b, int t, int c, int nh, bool segmented)
    {
        int hs = c / nh, c3 = 3 * c, tt = t * t;
        float scale = 1f / MathF.Sqrt(hs);
        var qkv = RandomFloats(b * t * c3, 1);
        int[] seg = segmented ? Segments(b, t, 7) : [];
        var dout = RandomFloats(b * t * c, 2);
        var before = RandomFloats(qkv.Length, 3);
        var r = ReferenceAttention.Forward(D(qkv), seg, b, t, nh);
        var expected = Plus(before, ReferenceAttention.Backward(D(dout), D(qkv), seg, b, t, nh));

        var gemm = Ops.Gemm;
        using var dq = Up(qkv);
        using var ds = Up(seg);
        using var scores = Up(new float[b * nh * tt]);
        using var probs = Up(new float[b * nh * tt]);
        using var o = Up(new float[b * t * c]);
        using var dg = Up(dout);
        using var dqkv = Up(before);
        ArrayView<float> Q(int bi, int part) => dq.View.From((long)bi * t * c3 + part * c);
        ArrayView<float> G(int bi, int part) => dqkv.View.From((long)bi * t * c3 + part * c);
        for (int bi = 0; bi < b; bi++)   // S = Q·Kᵀ per head
            gemm.MultiplyStridedBatched(false, true, t, t, hs, 1f, Q(bi, 0), c3, hs, Q(bi, 1), c3, hs,
                                        0f, scores.View.From((long)bi * nh * tt), t, tt, nh);
        Ops.Attention.SoftmaxForward(V(scores, b * nh * tt), V(ds, seg), b, t, nh, scale, V(probs, b * nh * tt));
        AssertClose(Down(probs, b * nh * tt), r.Att, 1e-6, 1e-4, "att");
        for (int bi = 0; bi < b; bi++)   // O = A·V
            gemm.MultiplyStridedBatched(false, false, t, hs, t, 1f, probs.View.From((long)bi * nh * tt), t, tt, Q(bi, 2), c3, hs,
                                        0f, o.View.From((long)bi * t * c), c, hs, nh);
        AssertClose(Down(o, b * t * c), r.Out, 1e-5, 1e-4, "out");

        using var dA = Up(new float[b * nh * tt]);
        for (int bi = 0; bi < b; bi++)
        {
            var dO = dg.View.From((long)bi * t * c);
            var a = probs.View.From((long)bi * nh * tt);
            gemm.MultiplyStridedBatched(false, true, t, t, hs, 1f, dO, c, hs, Q(bi, 2), c3, hs,     // dA = dO·Vᵀ
                                        0f, dA.View.From((long)bi * nh * tt), t, tt, nh);
            gemm.MultiplyStridedBatched(true, false, t, hs, t, 1f, a, t, tt, dO, c, hs,              // dV += Aᵀ·dO
                                        1f, G(bi, 2), c3, hs, nh);
        }
        Ops.Attention.SoftmaxBackward(V(dA, b * nh * tt), V(probs, b * nh * tt), b, t, nh, scale, V(dA, b * nh * tt));   // in place
        for (int bi = 0; bi < b; bi++)
        {
            var dS = dA.View.From((long)bi * nh * tt);
            gemm.MultiplyStridedBatched(false, false, t, hs, t, 1f, dS, t, tt, Q(bi, 1), c3, hs, 1f, G(bi, 0), c3, hs, nh);   // dQ += dS·K
            gemm.MultiplyStridedBatched(true, false, t, hs, t, 1f, dS, t, tt, Q(bi, 0), c3, hs, 1f, G(bi, 1), c3, hs, nh);    // dK += dSᵀ·Q
        }
        AssertClose(Down(dqkv, qkv.Length), expected, 1e-5, 1e-4, "dqkv (accumulated)");
    }

    [Test]
    public void SoftmaxZeroesEveryDisallowedEntryAndRowsSumToOne()
    {
        const int b = 1, t = 12, nh = 2;
        int[] seg = [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2];
        var scores = RandomFloats(b * nh * t * t, 1, 30.0);   // large scores: the max subtraction matters
        using var dscores = Up(scores);
        using var ds = Up(seg);
        Ops.Attention.SoftmaxForward(V(dscores, scores), V(ds, seg), b, t, nh, 0.5f, V(dscores, scores));   // in place
        var a = Down(dscores, scores.Length);
        for (int h = 0; h < nh; h++)
            for (int tq = 0; tq < t; tq++)
            {
                double sum = 0;
                for (int s = 0; s < t; s++)
                {
                    float p = a[(h * t + tq) * t + s];
                    if (!ReferenceAttention.Allowed(seg, 0, t, tq, s)) Assert.That(p, Is.EqualTo(0f), $"h {h} t {tq} s {s}");
                    sum += p;
                }
                Assert.That(sum, Is.EqualTo(1.0).Within(1e-5), $"row h {h} t {tq}");
            }

        // Bit-identical reruns of both softmax kernels (out of place this time).
        var dprob = RandomFloats(scores.Length, 2);
        float[] Run()
        {
            using var input = Up(scores);
            using var probs = Up(new float[scores.Length]);
            using var grad = Up(dprob);
            Ops.Attention.SoftmaxForward(V(input, scores), V(ds, seg), b, t, nh, 0.5f, V(probs, scores.Length));
            Ops.Attention.SoftmaxBackward(V(grad, dprob), V(probs, scores.Length), b, t, nh, 0.5f, V(input, scores));
            return [.. Down(probs, scores.Length), .. Down(input, scores.Length)];
        }
        var first = Run();
        AssertBitIdentical(a, first[..scores.Length], "in-place and out-of-place softmax agree");
        AssertBitIdentical(first, Run(), "softmax rerun");
    }
}
