using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Cpu.Simd;
using DistAlign.Tests.Reference;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels;

/// <summary>
/// <see cref="Gemm.Multiply"/> against the fp64 <see cref="ReferenceGemm"/>. Tolerance, per element:
/// |C − C_ref| ≤ 2e-6·√(k+1)·scale, where scale = |α|·Σ_p|a_ip·b_pj| + |β·c_ij| + |bias_j| (fp32 rounding
/// of a k-term sum grows like √k·ε·scale with ε ≈ 6e-8; the bound leaves a margin of ~30×).
/// </summary>
[NonParallelizable] // tests set the global CpuParallel.Threads and the kernels' vector width
public class GemmTests
{
    private int savedThreads;

    [SetUp]
    public void SaveSettings() => savedThreads = CpuParallel.Threads;

    [TearDown]
    public void RestoreSettings()
    {
        CpuParallel.Threads = savedThreads;
    }

    private static readonly (int M, int N, int K)[] OddShapes =
    [
        (1, 1, 1), (1, 33, 7), (3, 7, 13), (17, 31, 33), (13, 65, 1), (65, 97, 130), (130, 13, 97), (31, 130, 17),
        (97, 1, 65),
        // m ≤ 8: the few-rows kernel (4- and 8-row register blocks; rows past m repeat the last one and are dropped).
        (2, 100, 64), (4, 16, 17), (5, 47, 19), (6, 31, 1), (7, 70, 33), (8, 33, 40),
    ];

    private static IEnumerable<TestCaseData> AllCases()
    {
        foreach (var (m, n, k) in OddShapes)
            foreach (var ta in new[] { Transpose.No, Transpose.Yes })
                foreach (var tb in new[] { Transpose.No, Transpose.Yes })
                    foreach (var width in CpuVectors.Accelerated)
                        yield return new TestCaseData(ta, tb, m, n, k, width)
                            .SetName($"MatchesReference_{ta}{tb}_{m}x{n}x{k}_{width}");
    }

    [TestCaseSource(nameof(AllCases))]
    public void MatchesReference(Transpose ta, Transpose tb, int m, int n, int k, VectorWidth width) =>
        VectorWidths.At(width, () => CheckAgainstReference(ta, tb, m, n, k, alpha: 0.75f, beta: -0.5f, withBias: true, seed: m * 1000 + n * 10 + k));

    private static IEnumerable<TestCaseData> BlockCases()
    {
        foreach (var width in CpuVectors.Accelerated)
        {
            foreach (var ta in new[] { Transpose.No, Transpose.Yes })
                foreach (var tb in new[] { Transpose.No, Transpose.Yes })
                    yield return new TestCaseData(ta, tb, width);
        }
    }

    /// <summary>Crosses every blocking boundary: several K blocks (β and bias must apply once), MC and NC blocks.</summary>
    [TestCaseSource(nameof(BlockCases))]
    public void MatchesReferenceAcrossBlocks(Transpose ta, Transpose tb, VectorWidth width) =>
        VectorWidths.At(width, () => CheckAgainstReference(ta, tb, 205, 800, 801, alpha: 1f, beta: 1f, withBias: true, seed: 7));

    [TestCase(1f, 0f, false)]
    [TestCase(-2f, 0f, true)]
    [TestCase(1f, 1f, false)]
    [TestCase(0.5f, 2f, true)]
    public void AlphaBetaAndBias(float alpha, float beta, bool withBias) =>
        CheckAgainstReference(Transpose.No, Transpose.No, 33, 65, 97, alpha, beta, withBias, seed: 3);

    [Test]
    public void BetaZeroDoesNotReadC([Values] Transpose ta, [Values] Transpose tb)
    {
        const int m = 13, n = 37, k = 19;
        float[] a = RandomFloats(m * k, 1), b = RandomFloats(k * n, 2);
        var c = new float[m * n];
        Array.Fill(c, float.NaN);
        Gemm.Multiply(ta, tb, m, n, k, 1f, a, ta == Transpose.No ? k : m, b, tb == Transpose.No ? n : k, 0f, c, n);
        Assert.That(c, Has.All.Matches<float>(float.IsFinite));
    }

    [Test]
    public void BetaOneAccumulates()
    {
        const int m = 29, n = 45, k = 31;
        float[] a = RandomFloats(m * k, 1), b = RandomFloats(k * n, 2);
        var once = new float[m * n];
        Gemm.Multiply(Transpose.No, Transpose.No, m, n, k, 1f, a, k, b, n, 0f, once, n);
        var twice = (float[])once.Clone();
        Gemm.Multiply(Transpose.No, Transpose.No, m, n, k, 1f, a, k, b, n, 1f, twice, n);
        for (int i = 0; i < once.Length; i++)
            Assert.That(twice[i], Is.EqualTo(2 * once[i]).Within(1e-5 * (1 + Math.Abs(once[i]))), $"element {i}");
    }

    [Test]
    public void AlphaZeroOnlyScalesC()
    {
        const int m = 5, n = 6, k = 7;
        var a = new float[m * k];
        var b = new float[k * n];
        Array.Fill(a, float.NaN); // not referenced when α = 0 (BLAS semantics)
        float[] c = RandomFloats(m * n, 3), bias = RandomFloats(n, 4);
        float[] expected = new float[m * n];
        for (int i = 0; i < m * n; i++) expected[i] = 3f * c[i] + bias[i % n];
        Gemm.Multiply(Transpose.No, Transpose.No, m, n, k, 0f, a, k, b, n, 3f, c, n, bias);
        Assert.That(c, Is.EqualTo(expected).Within(1e-6f));
    }

    [Test]
    public void KZeroGivesBetaCPlusBias([Values(0f, 1f, -2f)] float beta)
    {
        const int m = 4, n = 19;
        float[] c = RandomFloats(m * n, 5), bias = RandomFloats(n, 6);
        var expected = new float[m * n];
        for (int i = 0; i < m * n; i++) expected[i] = (beta == 0 ? 0 : beta * c[i]) + bias[i % n];
        if (beta == 0) Array.Fill(c, float.NaN);
        Gemm.Multiply(Transpose.No, Transpose.No, m, n, 0, 1f, [], 1, [], n, beta, c, n, bias);
        Assert.That(c, Is.EqualTo(expected).Within(1e-6f));
    }

    [Test]
    public void EmptyMOrNTouchesNothing()
    {
        Gemm.Multiply(Transpose.No, Transpose.No, 0, 5, 3, 1f, [], 3, new float[15], 5, 0f, [], 5);
        var c = new float[] { 42f };
        Gemm.Multiply(Transpose.No, Transpose.No, 1, 0, 3, 1f, new float[3], 3, [], 1, 0f, c, 1);
        Assert.That(c[0], Is.EqualTo(42f));
    }

    /// <summary>The K loop order per element is fixed, so the result must not depend on the thread count.</summary>
    [TestCase(Transpose.No, Transpose.No, 301, 517, 450)]   // split over rows
    [TestCase(Transpose.Yes, Transpose.Yes, 301, 517, 450)]
    [TestCase(Transpose.No, Transpose.Yes, 20, 1500, 100)]  // few rows: split over columns
    [TestCase(Transpose.Yes, Transpose.No, 40, 900, 800)]
    public void BitIdenticalForOneTwoAndThreeThreads(Transpose ta, Transpose tb, int m, int n, int k)
    {
        CheckThreadCountIndependence(ta, tb, m, n, k);
    }

    private static IEnumerable<TestCaseData> SmallRowsThreadCases() =>
        from width in CpuVectors.Accelerated
        from shape in new[] { (Transpose.No, 6, 1001, 70), (Transpose.Yes, 7, 999, 70), (Transpose.Yes, 3, 517, 45) }
        select new TestCaseData(shape.Item1, shape.Item2, shape.Item3, shape.Item4, width)
            .SetName($"SmallRowsBitIdenticalForOneTwoAndThreeThreads_N{shape.Item1}_{shape.Item2}x{shape.Item3}x{shape.Item4}_{width}");

    /// <summary>The m ≤ 8 kernel splits columns between threads: the same, at every width.</summary>
    [TestCaseSource(nameof(SmallRowsThreadCases))]
    public void SmallRowsBitIdenticalForOneTwoAndThreeThreads(Transpose tb, int m, int n, int k, VectorWidth width) =>
        VectorWidths.At(width, () => CheckThreadCountIndependence(Transpose.No, tb, m, n, k));

    private static void CheckThreadCountIndependence(Transpose ta, Transpose tb, int m, int n, int k)
    {
        float[] a = RandomFloats(m * k, 1), b = RandomFloats(k * n, 2), bias = RandomFloats(n, 3), c0 = RandomFloats(m * n, 4);
        int lda = ta == Transpose.No ? k : m, ldb = tb == Transpose.No ? n : k;
        float[] Run(int threads)
        {
            CpuParallel.Threads = threads;
            var c = (float[])c0.Clone();
            Gemm.Multiply(ta, tb, m, n, k, 1.25f, a, lda, b, ldb, 0.5f, c, n, bias);
            return c;
        }
        float[] one = Run(1);
        Assert.That(Run(2), Is.EqualTo(one), "2 threads");
        Assert.That(Run(3), Is.EqualTo(one), "3 threads");
    }

    [Test]
    public void BadArgumentsThrowWithTheirNames()
    {
        var a = new float[12];
        var b = new float[12];
        var c = new float[9];
        void Call(int m, int n, int k, int lda, int ldb, int ldc, float[]? bias = null, float[]? cc = null) =>
            Gemm.Multiply(Transpose.No, Transpose.No, m, n, k, 1f, a, lda, b, ldb, 0f, cc ?? c, ldc, bias);

        Assert.That(() => Call(-1, 3, 4, 4, 3, 3), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("m"));
        Assert.That(() => Call(3, 3, -4, 4, 3, 3), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("k"));
        Assert.That(() => Call(3, 3, 4, 3, 3, 3), Throws.ArgumentException.With.Property("ParamName").EqualTo("lda"));
        Assert.That(() => Call(3, 3, 4, 4, 2, 3), Throws.ArgumentException.With.Property("ParamName").EqualTo("ldb"));
        Assert.That(() => Call(3, 3, 4, 4, 3, 2), Throws.ArgumentException.With.Property("ParamName").EqualTo("ldc"));
        Assert.That(() => Call(4, 3, 4, 4, 3, 3), Throws.ArgumentException.With.Property("ParamName").EqualTo("a"));
        Assert.That(() => Call(3, 3, 5, 5, 3, 3), Throws.ArgumentException.With.Property("ParamName").EqualTo("a"));
        Assert.That(() => Call(3, 3, 4, 4, 3, 4), Throws.ArgumentException.With.Property("ParamName").EqualTo("c"));
        Assert.That(() => Call(3, 3, 4, 4, 3, 3, bias: new float[2]), Throws.ArgumentException.With.Property("ParamName").EqualTo("bias"));
        Assert.That(() => Call(3, 3, 4, 4, 3, 3), Throws.Nothing);
    }

    private static void CheckAgainstReference(Transpose ta, Transpose tb, int m, int n, int k, float alpha, float beta,
        bool withBias, int seed)
    {
        bool aT = ta == Transpose.Yes, bT = tb == Transpose.Yes;
        // Leading dimensions longer than the rows, to catch code that assumes dense storage.
        int lda = (aT ? m : k) + 3, ldb = (bT ? k : n) + 5, ldc = n + 2;
        float[] a = RandomFloats((aT ? k : m) * lda, seed);
        float[] b = RandomFloats((bT ? n : k) * ldb, seed + 1);
        float[] c = RandomFloats(m * ldc, seed + 2);
        float[] bias = withBias ? RandomFloats(n, seed + 3) : [];
        if (beta == 0) Array.Fill(c, float.NaN);
        var (expected, scale) = ReferenceGemm.Multiply(aT, bT, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias);
        float[] before = (float[])c.Clone();

        Gemm.Multiply(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias);

        double tolerance = 2e-6 * Math.Sqrt(k + 1);
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double err = Math.Abs(c[i * ldc + j] - expected[i * n + j]);
                if (!(err <= tolerance * scale[i * n + j] + 1e-30))
                    Assert.Fail($"C[{i},{j}] = {c[i * ldc + j]:R}, reference {expected[i * n + j]:R}: " +
                                $"|err| {err:E2} > {tolerance:E1}·scale {scale[i * n + j]:E2}");
            }
            for (int j = n; j < ldc; j++)
                Assert.That(BitConverter.SingleToInt32Bits(c[i * ldc + j]), Is.EqualTo(BitConverter.SingleToInt32Bits(before[i * ldc + j])),
                    $"C[{i},{j}] lies beyond n (in the leading-dimension padding) but was written");
        }
    }
}
