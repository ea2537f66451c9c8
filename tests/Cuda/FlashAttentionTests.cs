using System.Diagnostics;
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
    private static readonly string RepositoryRoot = FindRoot();

    private static string FindRoot()
    {
        for (var d = new DirectoryInfo(TestContext.CurrentContext.TestDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "DistAlign.sln"))) return d.FullName;
        throw new InvalidOperationException("repository root (DistAlign.sln) not found above the test directory");
    }

    [Test]
    public void KernelsMatchAnFp64ReferenceInTheHostEmulator()
    {
        string? gpp = new[] { "/usr/bin/g++", "/usr/local/bin/g++" }.FirstOrDefault(File.Exists);
        if (gpp is null) Assert.Ignore("g++ is not installed: the emulated run of native/flash_attention.cu did not happen");
        string executable = Path.Combine(Directory.CreateTempSubdirectory("distalign-flash-").FullName, "flash_attention_check");
        try
        {
            string tests = Path.Combine(RepositoryRoot, "tests", "Cuda");
            var (compileCode, compileOutput) = RunProcess(gpp, ["-std=c++20", "-O1", "-pthread", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas",
                "-include", Path.Combine(tests, "cuda_emulator.h"), "-I", Path.Combine(RepositoryRoot, "native"),
                "-x", "c++", Path.Combine(tests, "flash_attention_check.cpp"), "-o", executable]);
            Assert.That(compileCode, Is.Zero, $"g++ failed:\n{compileOutput}");
            var (code, output) = RunProcess(executable, []);
            TestContext.Out.WriteLine(output);
            Assert.That(code, Is.Zero, $"the emulated kernels are outside their bounds:\n{output}");
            Assert.That(output.Split('\n', StringSplitOptions.RemoveEmptyEntries), Has.Length.EqualTo(5).And.All.StartWith("ok"));
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(executable)!, recursive: true);
        }
    }

    private static (int Code, string Output) RunProcess(string file, string[] arguments)
    {
        var info = new ProcessStartInfo(file, arguments) { RedirectStandardError = true, RedirectStandardOutput = true };
        using var process = Process.Start(info)!;
        var error = process.StandardError.ReadToEndAsync();
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, output + error.Result);
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
