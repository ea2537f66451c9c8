using System.Runtime.Intrinsics;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Tests.Kernels;

/// <summary>Which vector width the kernels run at, and that a CI pass ran the width it meant to.</summary>
public class CpuVectorsTests
{
    [Test]
    public void KernelsRunAtTheWidestAcceleratedWidth()
    {
        var expected = Vector512.IsHardwareAccelerated ? VectorWidth.Vector512
            : Vector256.IsHardwareAccelerated ? VectorWidth.Vector256
            : Vector128.IsHardwareAccelerated ? VectorWidth.Vector128 : VectorWidth.Scalar;
        Assert.That(CpuVectors.Width, Is.EqualTo(expected));
        Assert.That(CpuVectors.Accelerated[0], Is.EqualTo(expected));
        Assert.That(CpuVectors.Accelerated[^1], Is.EqualTo(VectorWidth.Scalar), "plain scalar code runs everywhere, and is tested everywhere");
        TestContext.Progress.WriteLine($"kernels: {CpuVectors.Describe()}; GEMM micro-kernel {Gemm.MicroKernel}");
    }

    /// <summary>.ci/run sets DISTALIGN_EXPECT_VECTOR_WIDTH for each pass (DOTNET_EnableAVX512=0 must give Vector256, …), so a
    /// runtime that ignored the switch would fail here instead of silently testing the native path twice.</summary>
    [Test]
    public void TheWidthThisRunWasMeantToTestIsTheOneInUse()
    {
        string? expected = Environment.GetEnvironmentVariable("DISTALIGN_EXPECT_VECTOR_WIDTH");
        if (string.IsNullOrEmpty(expected)) Assert.Ignore("DISTALIGN_EXPECT_VECTOR_WIDTH is not set (only .ci/run sets it)");
        Assert.That(CpuVectors.Width.ToString(), Is.EqualTo(expected));
    }

    [Test]
    public void AWidthThatIsNotAcceleratedIsRefusedAndUseRestoresTheWidth()
    {
        var before = CpuVectors.Width;
        using (CpuVectors.Use(VectorWidth.Scalar))
        {
            Assert.That(CpuVectors.Width, Is.EqualTo(VectorWidth.Scalar));
            Assert.That(Gemm.MicroKernel, Is.EqualTo("scalar 6×2"));
        }
        Assert.That(CpuVectors.Width, Is.EqualTo(before));
        if (!Vector512.IsHardwareAccelerated)
            Assert.That(() => CpuVectors.Use(VectorWidth.Vector512), Throws.TypeOf<NotSupportedException>().With.Message.Contains("emulated"));
    }
}
