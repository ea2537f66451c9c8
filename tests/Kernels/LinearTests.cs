using DistAlign.Kernels.Cpu;
using DistAlign.Tests.Reference;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels;

/// <summary>
/// <see cref="Linear"/> forward against the fp64 reference, backward against central finite differences of
/// the fp64 scalar loss L = Σ g⊙y (so ∂L/∂y = g), and the += semantics of the backward.
/// </summary>
[NonParallelizable]
public class LinearTests
{
    [TestCase(1, 1, 1, true)]
    [TestCase(7, 13, 17, true)]
    [TestCase(33, 65, 31, false)]
    [TestCase(64, 96, 130, true)]
    public void ForwardMatchesReference(int rows, int inDim, int outDim, bool withBias)
    {
        float[] x = RandomFloats(rows * inDim, 1), w = RandomFloats(inDim * outDim, 2, 0.1);
        float[] b = withBias ? RandomFloats(outDim, 3) : [];
        var y = new float[rows * outDim];
        Array.Fill(y, float.NaN); // forward overwrites

        Linear.Forward(x, w, b, y, rows, inDim, outDim);

        double[] expected = ReferenceGemm.LinearForward(ToDouble(x), ToDouble(w), ToDouble(b), rows, inDim, outDim);
        // |x|~1, |w|~0.1: sums of inDim terms of size ~0.1; fp32 error ≲ 1e-6·√inDim relative to that.
        AssertClose(y, expected, atol: 1e-5, rtol: 1e-5, "y");
    }

    [TestCase(5, 7, 6, true)]
    [TestCase(3, 4, 9, false)]
    public void BackwardMatchesFiniteDifferences(int rows, int inDim, int outDim, bool withBias)
    {
        float[] x = RandomFloats(rows * inDim, 11), w = RandomFloats(inDim * outDim, 12, 0.5);
        float[] b = withBias ? RandomFloats(outDim, 13) : [];
        float[] g = RandomFloats(rows * outDim, 14); // ∂L/∂y

        var dx = new float[x.Length];
        var dw = new float[w.Length];
        var db = new float[b.Length];
        Linear.Backward(g, x, w, dx, dw, db, rows, inDim, outDim);

        double[] xd = ToDouble(x), wd = ToDouble(w), bd = ToDouble(b), gd = ToDouble(g);
        double Loss()
        {
            double[] y = ReferenceGemm.LinearForward(xd, wd, bd, rows, inDim, outDim);
            double l = 0;
            for (int i = 0; i < y.Length; i++) l += gd[i] * y[i];
            return l;
        }
        // L is linear in each variable, so central differences in fp64 are exact up to ~1e-9; the
        // tolerance covers the fp32 backward (sums of ≤ 9 terms of size ~1).
        AssertClose(dx, FiniteDifferenceGradient(Loss, xd), atol: 1e-5, rtol: 1e-5, "dInput");
        AssertClose(dw, FiniteDifferenceGradient(Loss, wd), atol: 1e-5, rtol: 1e-5, "dWeight");
        if (withBias) AssertClose(db, FiniteDifferenceGradient(Loss, bd), atol: 1e-5, rtol: 1e-5, "dBias");
    }

    [Test]
    public void BackwardAccumulatesIntoGradients()
    {
        const int rows = 9, inDim = 11, outDim = 35;
        float[] x = RandomFloats(rows * inDim, 21), w = RandomFloats(inDim * outDim, 22), g = RandomFloats(rows * outDim, 23);
        var dx = new float[x.Length];
        var dw = new float[w.Length];
        var db = new float[outDim];
        Linear.Backward(g, x, w, dx, dw, db, rows, inDim, outDim);

        float[] dx2 = RandomFloats(x.Length, 24), dw2 = RandomFloats(w.Length, 25), db2 = RandomFloats(outDim, 26);
        float[] dx0 = (float[])dx2.Clone(), dw0 = (float[])dw2.Clone(), db0 = (float[])db2.Clone();
        Linear.Backward(g, x, w, dx2, dw2, db2, rows, inDim, outDim);

        AssertClose(dx2, Sum(dx0, dx), 1e-5, 1e-6, "dInput += ");
        AssertClose(dw2, Sum(dw0, dw), 1e-5, 1e-6, "dWeight += ");
        AssertClose(db2, Sum(db0, db), 1e-5, 1e-6, "dBias += ");
    }

    /// <summary>dBias is a column sum over many rows: exact order per column, so thread count cannot change it.</summary>
    [Test]
    public void BiasGradientIsColumnSumIndependentOfThreads()
    {
        const int rows = 300, inDim = 8, outDim = 1000;
        float[] x = RandomFloats(rows * inDim, 31), w = RandomFloats(inDim * outDim, 32), g = RandomFloats(rows * outDim, 33);
        int saved = CpuParallel.Threads;
        try
        {
            float[] Run(int threads)
            {
                CpuParallel.Threads = threads;
                var db = new float[outDim];
                Linear.Backward(g, x, w, new float[x.Length], new float[w.Length], db, rows, inDim, outDim);
                return db;
            }
            float[] one = Run(1);
            Assert.That(Run(2), Is.EqualTo(one));
            var expected = new double[outDim];
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < outDim; j++) expected[j] += g[r * outDim + j];
            AssertClose(one, expected, atol: 1e-4, rtol: 1e-5, "dBias");
        }
        finally
        {
            CpuParallel.Threads = saved;
        }
    }

    [Test]
    public void ShortSpansThrow()
    {
        Assert.That(() => Linear.Forward(new float[6], new float[6], [], new float[5], 2, 3, 3),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("output"));
        Assert.That(() => Linear.Backward(new float[6], new float[6], new float[9], new float[6], new float[9], new float[2], 2, 3, 3),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("dBias"));
    }

    private static double[] Sum(float[] a, float[] b)
    {
        var s = new double[a.Length];
        for (int i = 0; i < a.Length; i++) s[i] = (double)a[i] + b[i];
        return s;
    }
}
