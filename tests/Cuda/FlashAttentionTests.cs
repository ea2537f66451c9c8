using DistAlign.Kernels.Gpu;
using ILGPU.Runtime.Cuda;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// native/flash_attention.cu (<see cref="NvrtcFlashAttention"/>): without a GPU, its four kernels run in the host
/// CUDA emulator (tests/Cuda/cuda_emulator.h: one host thread per CUDA thread, mma.sync computed from the
/// 32 lanes' fragments) against an fp64 attention forward and backward (tests/Cuda/flash_attention_check.cpp);
/// on CUDA, the launcher against the CPU <see cref="DistAlign.Kernels.Cpu.Attention"/> (skipped with the reason where there is no GPU).
/// Bounds: bf16 products (8-bit significands) with fp32 accumulation, 1.5 % of the output's scale and 3 % of
/// the gradient's.
/// </summary>
public class FlashAttentionTests
{
    [Test]
    public void KernelsMatchAnFp64ReferenceInTheHostEmulator()
    {
        var (code, output) = HostEmulator.CompileAndRun("flash_attention_check.cpp");
        TestContext.Out.WriteLine(output);
        Assert.That(code, Is.Zero, $"the emulated kernels are outside their bounds:\n{output}");
        Assert.That(output.Split('\n', StringSplitOptions.RemoveEmptyEntries), Has.Length.EqualTo(5).And.All.StartWith("ok"));
    }

    [Test]
    public void SupportsHeadSize64Only()
    {
        Assert.That(NvrtcFlashAttention.Supports(768, 12), Is.True);
        Assert.That(NvrtcFlashAttention.Supports(64, 1), Is.True);
        Assert.That(NvrtcFlashAttention.Supports(12, 2), Is.False);
        Assert.That(NvrtcFlashAttention.Supports(256, 2), Is.False, "head size 128");
        Assert.That(NvrtcFlashAttention.Supports(0, 0), Is.False);
    }

    [Test]
    public void MatchesTheCpuAttentionOnCuda()
    {
        var accelerator = (CudaAccelerator)GpuBackend.Get("cuda");
        var report = new DistAlign.GpuCheck.Report(TextWriter.Null);
        new DistAlign.GpuCheck.FlashAttentionChecks(accelerator, report, quick: true).RunChecks();
        AssertAllPassed(report);
    }

    [Test]
    public void GpuGptWithFlashAttentionAndBFloat16OperandsMatchesTheCpuModelOnCuda()
    {
        var accelerator = GpuBackend.Get("cuda");
        var report = new DistAlign.GpuCheck.Report(TextWriter.Null);
        new DistAlign.GpuCheck.GptChecks(accelerator, report).CompareFlashWithTheCpuModel();
        AssertAllPassed(report);
    }

    /// <summary>The gpu-check's own comparisons (tools/GpuCheck), so the test and the GPU machine check hold the same code.</summary>
    private static void AssertAllPassed(DistAlign.GpuCheck.Report report)
    {
        Assert.That(report.Checks, Is.Not.Empty);
        Assert.That(report.Checks.Where(c => !c.Passed).Select(c => $"{c.Name}: {c.Error ?? $"worst err/tol {c.WorstToTolerance:F3}"}"), Is.Empty);
    }
}
