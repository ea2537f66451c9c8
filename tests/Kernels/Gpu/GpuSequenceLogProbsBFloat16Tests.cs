using DistAlign.Engine.SafeTensors;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Gpu;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using static DistAlign.Tests.Kernels.Gpu.GpuTest;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels.Gpu;

/// <summary>
/// A bf16-operand GEMM for ILGPU's CPU simulator, standing in for cuBLAS's: it widens the bf16 operands to fp32
/// (exact) and multiplies with <see cref="GpuTiledGemm"/> (exact bf16 products, fp32 sums: the numerics of cuBLAS's
/// CUDA_R_16BF inputs with CUBLAS_COMPUTE_32F, up to the summation order), and records every call's shape, so the
/// LM head's padded bf16 bookkeeping runs and is checked without a GPU. A NaN anywhere it reads reaches C (0 × NaN = NaN).
/// </summary>
internal sealed class WideningBFloat16Gemm(Accelerator accelerator) : IGemm, IBFloat16Gemm
{
    private readonly GpuTiledGemm _tiled = new(accelerator);
    private readonly GpuBFloat16 _convert = new(accelerator);

    /// <summary>One GEMM call: row-major shapes and leading dimensions, β, and whether the operands were bf16.</summary>
    public sealed record Call(bool BFloat16, bool TransposeA, bool TransposeB, int M, int N, int K, int Lda, int Ldb, int Ldc, float Beta);

    public List<Call> Calls { get; } = [];

    public bool RoundsOperandsToBFloat16 => true;

    public void Multiply(bool transposeA, bool transposeB, int m, int n, int k, float alpha, ArrayView<float> a, int lda, ArrayView<float> b, int ldb,
                         float beta, ArrayView<float> c, int ldc, ArrayView<float> bias = default)
    {
        Calls.Add(new(false, transposeA, transposeB, m, n, k, lda, ldb, ldc, beta));
        _tiled.Multiply(transposeA, transposeB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias);
    }

    public void MultiplyStridedBatched(bool transposeA, bool transposeB, int m, int n, int k, float alpha, ArrayView<float> a, int lda, long strideA,
                                       ArrayView<float> b, int ldb, long strideB, float beta, ArrayView<float> c, int ldc, long strideC, int batchCount) =>
        _tiled.MultiplyStridedBatched(transposeA, transposeB, m, n, k, alpha, a, lda, strideA, b, ldb, strideB, beta, c, ldc, strideC, batchCount);

    public void MultiplyBFloat16(bool transposeA, bool transposeB, int m, int n, int k, float alpha, ArrayView<ushort> a, int lda,
                                 ArrayView<ushort> b, int ldb, float beta, ArrayView<float> c, int ldc)
    {
        Calls.Add(new(true, transposeA, transposeB, m, n, k, lda, ldb, ldc, beta));
        using var wideA = accelerator.Allocate1D<float>(Math.Max(a.Length, 1));
        using var wideB = accelerator.Allocate1D<float>(Math.Max(b.Length, 1));
        var fa = wideA.View.SubView(0, a.Length);
        var fb = wideB.View.SubView(0, b.Length);
        _convert.ToFloat(a, fa);
        _convert.ToFloat(b, fb);
        _tiled.Multiply(transposeA, transposeB, m, n, k, alpha, fa, lda, fb, ldb, beta, c, ldc);
        accelerator.Synchronize();   // before the widened copies are freed
    }
}

/// <summary>
/// <see cref="GpuSequenceLogProbs"/> with bf16 operands and the vocabulary padded to Vp (<see cref="GpuSequenceLogProbs.UsesBFloat16Operands"/>):
/// on the simulator through <see cref="WideningBFloat16Gemm"/>, on CUDA through <see cref="CublasGemm"/> with
/// <see cref="GemmPrecision.BFloat16"/> (skipped with the reason where there is no CUDA device).
/// Checked against: the fp32 CPU kernel within bf16 tolerances (log-probs, log-sum-exp, entropies 2e-2 absolute with logits
/// ~N(0, 2.8²), where the largest error measured on the simulator is 1.2e-2; ∂h and ∂E within 3 % (measured ≤ 0.5 %) of the largest |∂| the CPU kernel adds to each tensor, the tensors pre-filled so β = 1 is
/// checked too); a CPU emulation of the bf16 path (h and E rounded to bf16, fp32 logits, d(logits) rounded to bf16, CPU GEMMs)
/// tightly (1e-4 on log-probs; 0.2 % of the largest |∂|: only fp32 summation order and the odd d(logits) rounded across a
/// bf16 tie differ), which a wrong stride, size, operand or padding would break by O(1); the padding contract (the forward
/// GEMM writes the padding columns of the NaN-filled scratch as exact zeros; NaN-filled owned buffers change nothing);
/// fused = forward then backward, bit for bit; and (simulator) the GEMM shapes: n = Vp forward, k = Vp for ∂h, m = V for ∂E.
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuSequenceLogProbsBFloat16Tests(string backend) : GpuFixture(backend)
{
    private IGemm? _gemm;
    private GpuSequenceLogProbs? _op;

    /// <summary>The bf16 GEMM of this backend and the op on it (kernels compiled once per fixture).</summary>
    private GpuSequenceLogProbs Op
    {
        get
        {
            if (_op is not null) return _op;
            _gemm = GpuTest.Accelerator is CudaAccelerator cuda ? new CublasGemm(cuda, GemmPrecision.BFloat16) : new WideningBFloat16Gemm(GpuTest.Accelerator);
            return _op = new GpuSequenceLogProbs(GpuTest.Accelerator, _gemm, Ops.TargetLogProbs);
        }
    }

    [OneTimeTearDown]
    public void FreeTheGemm()
    {
        _op?.Dispose();
        (_gemm as IDisposable)?.Dispose();
    }

    private sealed record Result(float[] LogProbs, float[] Lse, float[] Entropy, float[] DHidden, float[] DLmHead, float[] Scratch);

    /// <summary>The public ops (chunk from the scratch length, stride Vp) from a NaN-filled scratch; fused or forward then backward.</summary>
    private static Result Run(GpuSequenceLogProbs op, float[] h, float[] e, int[] targets, int c, int v, bool fused, float[] a, float[]? b,
                              float[] dh0, float[] de0, long scratchLength)
    {
        var mode = fused ? GpuSequenceLogProbsTests.Mode.Fused : GpuSequenceLogProbsTests.Mode.Separate;
        var (r, scratch) = GpuSequenceLogProbsTests.RunWithScratch(op, h, e, targets, c, v, mode, withEntropy: b is not null, a, b, dh0, de0,
                                                                    chunkRows: 0, rowStride: 0, scratchLength);
        return new Result(r.LogProbs, r.Lse, r.Entropy, r.DHidden, r.DLmHead, scratch);
    }

    private static (float[] H, float[] E, int[] Targets) Inputs(int n, int c, int v, double tableScale, int seed)
    {
        var h = RandomFloats(n * c, seed, 1.0);
        var e = RandomFloats(v * c, seed + 100, tableScale);
        var rng = new Random(seed);
        var targets = Enumerable.Range(0, n).Select(i => i % 4 == 3 ? TargetLogProbs.Ignored : rng.Next(v)).ToArray();
        return (h, e, targets);
    }

    // N = 13 rows in 3 chunks of 5 (a short last one), C = 16, V = 77 (odd) padded to Vp = 128; logits ~ N(0, 2.8²).
    // Small: the simulator runs one OS thread per GPU thread.
    private const int N = 13, C = 16, Vocab = 77, Vp = 128, ChunkRows = 5, Chunks = 3;
    private const double TableScale = 0.7;
    private static long SmallScratch => GpuSequenceLogProbs.ScratchLength(N, Vocab, (long)ChunkRows * Vp);

    [Test]
    public void TheGemmChoosesThePath()
    {
        Assert.That(Op.UsesBFloat16Operands, Is.True, "a GEMM that rounds its inputs to bf16 anyway");
        Assert.That(Ops.SequenceLogProbs.UsesBFloat16Operands, Is.False, $"{Ops.Gemm.GetType().Name} with fp32 operands");
        if (GpuTest.Accelerator is CudaAccelerator cuda)
        {
            foreach (var precision in new[] { GemmPrecision.Float32, GemmPrecision.Tf32 })
            {
                using var gemm = new CublasGemm(cuda, precision);
                Assert.That(gemm.RoundsOperandsToBFloat16, Is.False, $"{precision}");
            }
        }
        Assert.That(GpuSequenceLogProbs.ChunkRows(N, Vocab, SmallScratch), Is.EqualTo(ChunkRows));
        Assert.That((N + ChunkRows - 1) / ChunkRows, Is.EqualTo(Chunks));
        Assert.That(GpuSequenceLogProbs.RowStride(Vocab), Is.EqualTo(Vp));
    }

    [TestCase(true, true)]
    [TestCase(false, false)]
    public void MatchesTheCpuKernelWithinBFloat16Tolerances(bool fused, bool withEntropy)
    {
        var (h, e, targets) = Inputs(N, C, Vocab, TableScale, seed: 5);
        var a = RandomFloats(N, 6);
        var b = withEntropy ? RandomFloats(N, 7) : null;
        var dh0 = RandomFloats(N * C, 8, 0.5);
        var de0 = RandomFloats(Vocab * C, 9, 0.5);
        var r = Run(Op, h, e, targets, C, Vocab, fused, a, b, dh0, de0, SmallScratch);

        var (lp, lse, ent) = (new float[N], new float[N], new float[N]);
        var (dh, de) = ((float[])dh0.Clone(), (float[])de0.Clone());
        var cpuScratch = new float[SequenceLogProbs.ScratchLength(N, Vocab)];
        SequenceLogProbs.Forward(h, e, targets, C, Vocab, cpuScratch, lp, lse, ent);
        SequenceLogProbs.Backward(h, e, targets, C, Vocab, lse, ent, a, b ?? default, cpuScratch, dh, de);
        AssertClose(r.LogProbs, D(lp), 2e-2, 0, "log-probs");
        AssertClose(r.Lse, D(lse), 2e-2, 0, "log-sum-exp");
        if (withEntropy) AssertClose(r.Entropy, D(ent), 2e-2, 0, "entropy");
        AssertWithinShareOfLargest(r.DHidden, dh, dh0, 0.03, "d hidden");
        AssertWithinShareOfLargest(r.DLmHead, de, de0, 0.03, "d lm head");
    }

    [Test]
    public void MatchesACpuEmulationOfTheBFloat16Path()
    {
        const bool fused = false;
        var (h, e, targets) = Inputs(N, C, Vocab, TableScale, seed: 15);
        var a = RandomFloats(N, 16);
        var dh0 = RandomFloats(N * C, 17, 0.5);
        var de0 = RandomFloats(Vocab * C, 18, 0.5);
        var r = Run(Op, h, e, targets, C, Vocab, fused, a, null, dh0, de0, SmallScratch);

        // The path on the CPU: bf16 h and E, fp32 logits [N, V], fp32 d(logits) rounded to bf16, fp32 GEMMs (+= into the fp32 gradients).
        float[] Rounded(float[] x) => x.Select(v => HalfPrecision.FromBFloat16Bits(HalfPrecision.ToBFloat16Bits(v))).ToArray();
        var (hr, er) = (Rounded(h), Rounded(e));
        var logits = new float[N * Vocab];
        Gemm.Multiply(Transpose.No, Transpose.Yes, N, Vocab, C, 1f, hr, C, er, C, 0f, logits, Vocab);
        var (lp, lse) = (new float[N], new float[N]);
        TargetLogProbs.Forward(logits, targets, Vocab, lp, lse);
        TargetLogProbs.Backward(logits, targets, Vocab, lse, a);
        var dLogits = Rounded(logits);
        var (dh, de) = ((float[])dh0.Clone(), (float[])de0.Clone());
        Gemm.Multiply(Transpose.No, Transpose.No, N, C, Vocab, 1f, dLogits, Vocab, er, C, 1f, dh, C);
        Gemm.Multiply(Transpose.Yes, Transpose.No, Vocab, C, N, 1f, dLogits, Vocab, hr, C, 1f, de, C);
        AssertClose(r.LogProbs, D(lp), 1e-4, 1e-5, "log-probs");
        AssertClose(r.Lse, D(lse), 1e-4, 1e-5, "log-sum-exp");
        AssertWithinShareOfLargest(r.DHidden, dh, dh0, 2e-3, "d hidden");
        AssertWithinShareOfLargest(r.DLmHead, de, de0, 2e-3, "d lm head");
    }

    [TestCase(true, true)]     // the d(logits) of GradientToBFloat16Kernel
    [TestCase(false, false)]   // those of GpuTargetLogProbs.BackwardToBFloat16
    public void TheForwardGemmWritesThePaddingAsZerosAndNothingReadsStaleValues(bool fused, bool withEntropy)
    {
        var (h, e, targets) = Inputs(N, C, Vocab, TableScale, seed: 25);
        var a = RandomFloats(N, 26);
        var b = withEntropy ? RandomFloats(N, 27) : null;
        var dh0 = RandomFloats(N * C, 28);
        var de0 = RandomFloats(Vocab * C, 29);
        var clean = Run(Op, h, e, targets, C, Vocab, fused, a, b, dh0, de0, SmallScratch);
        Op.FillOwnedBuffers(0xFF);   // bf16 0xFFFF is NaN: a table row, hidden row or d(logits) not rewritten would reach a result
        var poisoned = Run(Op, h, e, targets, C, Vocab, fused, a, b, dh0, de0, SmallScratch);
        foreach (var (values, what) in new[] { (poisoned.LogProbs, "log-probs"), (poisoned.Entropy, "entropy"), (poisoned.DHidden, "d hidden"), (poisoned.DLmHead, "d lm head") })
            AssertAllFinite(values, what);
        AssertBitIdentical(clean.LogProbs, poisoned.LogProbs, "log-probs after NaN-filled owned buffers");
        AssertBitIdentical(clean.Entropy, poisoned.Entropy, "entropy after NaN-filled owned buffers");
        AssertBitIdentical(clean.DHidden, poisoned.DHidden, "d hidden after NaN-filled owned buffers");
        AssertBitIdentical(clean.DLmHead, poisoned.DLmHead, "d lm head after NaN-filled owned buffers");

        // The scratch started all NaN; every column of the chunk's rows is written by the forward GEMM (n = Vp), the
        // padding ones as exact zeros (zero table rows), and no backward pass overwrites the fp32 logits.
        var s = poisoned.Scratch;
        Assert.That(s.Length, Is.EqualTo(ChunkRows * Vp));
        for (int row = 0; row < ChunkRows; row++)
            for (int col = 0; col < Vp; col++)
            {
                float x = s[row * Vp + col];
                if (col >= Vocab) Assert.That(x == 0f, $"scratch row {row}, padding column {col}: {x} (expected ±0)");
                else Assert.That(float.IsFinite(x), $"scratch row {row}, column {col}: {x}");
            }
    }

    [Test]
    public void ForwardBackwardEqualsForwardThenBackward()
    {
        var (h, e, targets) = Inputs(N, C, Vocab, TableScale, seed: 35);
        var a = RandomFloats(N, 36);
        var b = RandomFloats(N, 37);
        var dh0 = RandomFloats(N * C, 38);
        var de0 = RandomFloats(Vocab * C, 39);
        var fused = Run(Op, h, e, targets, C, Vocab, true, a, b, dh0, de0, SmallScratch);
        var separate = Run(Op, h, e, targets, C, Vocab, false, a, b, dh0, de0, SmallScratch);
        AssertBitIdentical(separate.LogProbs, fused.LogProbs, "log-probs");
        AssertBitIdentical(separate.Lse, fused.Lse, "log-sum-exp");
        AssertBitIdentical(separate.Entropy, fused.Entropy, "entropy");
        AssertBitIdentical(separate.DHidden, fused.DHidden, "d hidden");
        AssertBitIdentical(separate.DLmHead, fused.DLmHead, "d lm head");
    }

    [Test]
    public void TheGemmsRunOnThePaddedVocabulary()
    {
        if (GpuTest.Accelerator is CudaAccelerator) Assert.Ignore("the GEMM calls are recorded by the simulator's test double only");
        var op = Op;
        var gemm = (WideningBFloat16Gemm)_gemm!;
        var (h, e, targets) = Inputs(N, C, Vocab, TableScale, seed: 45);
        gemm.Calls.Clear();
        Run(op, h, e, targets, C, Vocab, true, RandomFloats(N, 46), null, new float[N * C], new float[Vocab * C], SmallScratch);
        var expected = new List<WideningBFloat16Gemm.Call>();
        for (int start = 0; start < N; start += ChunkRows)
        {
            int rows = Math.Min(ChunkRows, N - start);
            expected.Add(new(true, false, true, rows, Vp, C, C, C, Vp, 0f));      // logits [rows, Vp] = h·Eᵀ against the padded table
            expected.Add(new(true, false, false, rows, C, Vp, Vp, C, C, 1f));     // ∂h += d(logits)·E, k = Vp (padding 0 × 0)
            expected.Add(new(true, true, false, Vocab, C, rows, Vp, C, C, 1f));   // ∂E += d(logits)ᵀ·h, m = V: the real rows of ∂E only
        }
        Assert.That(gemm.Calls, Is.EqualTo(expected));
    }

    [Test]
    public void TheProfilerHearsEachStepInOrder()
    {
        var (h, e, targets) = Inputs(N, C, Vocab, TableScale, seed: 55);
        var steps = new List<string>();
        Op.Profiler = steps.Add;
        try
        {
            Run(Op, h, e, targets, C, Vocab, true, RandomFloats(N, 56), null, new float[N * C], new float[Vocab * C], SmallScratch);
        }
        finally
        {
            Op.Profiler = null;
        }
        var perChunk = new[] { "lm head convert", "lm head gemm fwd", "lm head softmax fwd", "lm head softmax bwd", "lm head gemm dh", "lm head gemm dE" };
        var expected = new List<string> { "lm head convert" };   // the table, once per call
        for (int chunk = 0; chunk < Chunks; chunk++) expected.AddRange(perChunk);
        Assert.That(steps, Is.EqualTo(expected));
    }

    [Test]
    public void TheBFloat16DLogitsAreTheFp32OnesRoundedWithZeroPadding([Values] bool withEntropy)
    {
        // The two one-pass bf16 d(logits) kernels against their in-place fp32 forms on the same inputs: bit for bit
        // round-to-nearest-even of the fp32 value at the real columns, 0 at the padding columns and on the ignored row
        // (the bf16 buffer starts all NaN, the fp32 logits' padding is NaN too: never read).
        const int rows = 6, v = 37, stride = 64;
        var logits = RandomFloats(rows * stride, 61, 3.0);
        for (int r = 0; r < rows; r++)
            for (int col = v; col < stride; col++) logits[r * stride + col] = float.NaN;
        var targets = new[] { 3, TargetLogProbs.Ignored, 0, 36, 17, 5 };
        var lse = new float[rows];
        var entropy = new float[rows];
        for (int r = 0; r < rows; r++)
        {
            var x = logits.AsSpan(r * stride, v).ToArray().Select(f => (double)f).ToArray();
            double max = x.Max(), l = max + Math.Log(x.Sum(y => Math.Exp(y - max)));
            lse[r] = (float)l;
            entropy[r] = (float)-x.Sum(y => Math.Exp(y - l) * (y - l));
        }
        var a = RandomFloats(rows, 62);
        var b = RandomFloats(rows, 63);
        using var inPlace = Up(logits);
        using var source = Up(logits);
        using var bits = Up(Enumerable.Repeat((ushort)0xFFFF, rows * stride).ToArray());
        using var dt = Up(targets);
        using var dl = Up(lse);
        using var de = Up(entropy);
        using var da = Up(a);
        using var db = Up(b);
        if (withEntropy)
        {
            var fp32 = GpuTest.Accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, int, int, ArrayView<float>,
                ArrayView<float>, ArrayView<float>, ArrayView<float>>(GpuSequenceLogProbs.GradientKernel);
            var bf16 = GpuTest.Accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<int>, int, int, ArrayView<float>,
                ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<ushort>>(GpuSequenceLogProbs.GradientToBFloat16Kernel);
            fp32(rows * v, inPlace.View, dt.View, v, stride, dl.View, de.View, da.View, db.View);
            bf16(rows * stride, source.View, dt.View, v, stride, dl.View, de.View, da.View, db.View, bits.View);
        }
        else
        {
            Ops.TargetLogProbs.Backward(inPlace.View, dt.View, v, stride, dl.View, da.View);
            Ops.TargetLogProbs.BackwardToBFloat16(source.View, dt.View, v, stride, dl.View, da.View, bits.View);
        }
        var gradient = Down(inPlace, rows * stride);
        var actual = Down(bits, rows * stride);
        for (int r = 0; r < rows; r++)
            for (int col = 0; col < stride; col++)
            {
                ushort expected = col >= v ? (ushort)0 : HalfPrecision.ToBFloat16Bits(gradient[r * stride + col]);
                Assert.That(actual[r * stride + col], Is.EqualTo(expected), $"row {r} (target {targets[r]}), column {col}");
            }
        Assert.That(Down(source, rows * stride), Is.EqualTo(logits), "the bf16 kernels leave the logits alone");
        Assert.Throws<ArgumentException>(() => Ops.TargetLogProbs.BackwardToBFloat16(source.View, dt.View, v, stride, dl.View, da.View,
                                                                                      bits.View.SubView(0, rows * stride - 1)), "gradient [N, rowStride]");
    }

    /// <summary>|actual − expected| ≤ share · max |expected − before| element-wise: the tolerance scales with what the op added.</summary>
    private static void AssertWithinShareOfLargest(float[] actual, float[] expected, float[] before, double share, string what)
    {
        double largest = 0;
        for (int i = 0; i < expected.Length; i++) largest = Math.Max(largest, Math.Abs(expected[i] - before[i]));
        Assert.That(largest, Is.GreaterThan(0.05), $"{what}: the op must add something sizeable for the check to mean anything");
        AssertClose(actual, D(expected), share * largest, 0, $"{what} (tolerance {share:P1} of the largest |∂| = {largest:G3})");
    }
}
