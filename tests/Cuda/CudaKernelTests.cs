using DistAlign.Engine.SafeTensors;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Gpu;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// The CUDA-only kernels (cuBLAS GEMM, the NVRTC log-prob kernel) against the CPU kernels. These cases need a
/// GPU: without one they are skipped with the reason (tools/gpu-check.sh runs the same checks, and more,
/// from a published build on GPU machines without a .NET SDK).
/// </summary>
[TestFixture("cuda")]
public class CudaKernelTests(string backend)
{
    private CudaAccelerator Accelerator => (CudaAccelerator)GpuBackend.Get(backend);

    [TestCase(false, false)]
    [TestCase(false, true)]
    [TestCase(true, false)]
    [TestCase(true, true)]
    public void CublasGemmMatchesTheCpuGemm(bool ta, bool tb)
    {
        var accelerator = Accelerator;
        int m = 67, n = 45, k = 129, lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
        var a = RandomFloats((ta ? k : m) * lda, 1);
        var b = RandomFloats((tb ? n : k) * ldb, 2);
        var c = RandomFloats(m * ldc, 3);
        var expected = (float[])c.Clone();
        Gemm.Multiply(ta ? Transpose.Yes : Transpose.No, tb ? Transpose.Yes : Transpose.No, m, n, k, 0.5f, a, lda, b, ldb, 0.25f, expected, ldc);
        using var gemm = new CublasGemm(accelerator);
        using var da = accelerator.Allocate1D(a);
        using var db = accelerator.Allocate1D(b);
        using var dc = accelerator.Allocate1D(c);
        gemm.Multiply(ta, tb, m, n, k, 0.5f, da.View, lda, db.View, ldb, 0.25f, dc.View, ldc);
        accelerator.Synchronize();
        AssertClose(dc.GetAsArray1D(), D(expected), 1e-4, 1e-4, "cuBLAS fp32 vs CPU GEMM");
    }

    [Test]
    public void NvrtcLogProbsMatchTheCpuKernelOnBFloat16Logits()
    {
        var accelerator = Accelerator;
        const int rows = 9, vocab = 50257;
        var bits = RandomFloats(rows * vocab, 4, 8).Select(HalfPrecision.ToBFloat16Bits).ToArray();
        var logits = bits.Select(HalfPrecision.FromBFloat16Bits).ToArray();
        var targets = Enumerable.Range(0, rows).Select(r => r == 4 ? -1 : r * 5000).ToArray();
        var (logProbs, lse) = (new float[rows], new float[rows]);
        TargetLogProbs.Forward(logits, targets, vocab, logProbs, lse);
        using var kernel = new NvrtcTargetLogProbs(accelerator, NvrtcKernelCache.CreateDefault());
        using var d16 = accelerator.Allocate1D(bits);
        using var dt = accelerator.Allocate1D(targets);
        using var dlp = accelerator.Allocate1D<float>(rows);
        using var dlse = accelerator.Allocate1D<float>(rows);
        kernel.Forward(d16.View, dt.View, vocab, dlp.View, dlse.View);
        accelerator.Synchronize();
        AssertClose(dlp.GetAsArray1D(), D(logProbs), 2e-4, 1e-5, "log-probs");
        AssertClose(dlse.GetAsArray1D(), D(lse), 2e-4, 1e-5, "logsumexp");
    }
}
