using System.Diagnostics;
using DistAlign.Engine.Cuda;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// The gpu-check console (what tools/gpu-check.sh runs on a GPU machine) on this machine: without a driver it
/// says so and writes its summary; with a stand-in libcuda (tests/Cuda/fake_libcuda.c, built with gcc) the
/// driver bindings run for real in a child process: status names from cuInit, zero devices, and the device
/// query (name, compute capability, SMs, memory) of one fake device.
/// </summary>
[NonParallelizable]
public class GpuCheckTests
{
    private string _directory = "";

    [SetUp]
    public void MakeFolder() => _directory = Directory.CreateTempSubdirectory("distalign-gpu-check-").FullName;

    [TearDown]
    public void RemoveFolder() => Directory.Delete(_directory, recursive: true);

    [Test]
    public void WithoutADeviceItReportsNoCudaDeviceAndWritesTheSummary()
    {
        if (CudaDriver.Probe().IsUsable) Assert.Ignore("a usable CUDA device is present; this test checks a machine without one");
        var log = new StringWriter();
        string outDir = Path.Combine(_directory, "out");
        int code = DistAlign.GpuCheck.Program.Run(["--out", outDir], log);
        Assert.That(code, Is.EqualTo(DistAlign.GpuCheck.Program.NoDevice));
        Assert.That(log.ToString(), Does.Contain("no CUDA device: no CUDA driver found: tried libcuda.so.1, libcuda.so"));
        string summary = File.ReadAllText(Path.Combine(outDir, "summary.md"));
        Assert.That(summary, Does.Contain("Nothing was run on a GPU.").And.Contain("no CUDA device: no CUDA driver found"));
        Assert.That(File.ReadAllLines(Path.Combine(outDir, "checks.tsv")), Has.Length.EqualTo(1), "header only: no check ran");
        Assert.That(DistAlign.GpuCheck.Program.Run(["--bogus"], log), Is.EqualTo(2));
    }

    private (int Code, string Output) RunWithFakeDriver(string mode)
    {
        string library = Path.Combine(_directory, "libcuda.so.1");
        if (!File.Exists(library))
        {
            string? gcc = new[] { "/usr/bin/gcc", "/usr/bin/cc" }.FirstOrDefault(File.Exists);
            if (gcc is null) Assert.Ignore("gcc is not installed: the fake-driver tests of the CUDA bindings did not run");
            string source = Path.Combine(TestContext.CurrentContext.TestDirectory, "..", "..", "..", "Cuda", "fake_libcuda.c");
            using var build = Process.Start(new ProcessStartInfo(gcc, ["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", library, source]) { RedirectStandardError = true })!;
            string errors = build.StandardError.ReadToEnd();
            build.WaitForExit();
            Assert.That(build.ExitCode, Is.Zero, errors);
        }
        var info = new ProcessStartInfo(Path.Combine(TestContext.CurrentContext.TestDirectory, "gpu-check"), ["--out", Path.Combine(_directory, mode), "--skip-bench"])
        {
            RedirectStandardOutput = true, RedirectStandardError = true,
        };
        info.Environment[CudaLibrary.SearchPathVariable] = _directory;
        info.Environment["FAKE_CUDA"] = mode;
        using var process = Process.Start(info)!;
        var stderr = process.StandardError.ReadToEndAsync();
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, output + stderr.Result);
    }

    [Test]
    public void AFailingCuInitIsReportedWithItsStatusName()
    {
        var (code, output) = RunWithFakeDriver("init-fails");
        Assert.That(code, Is.EqualTo(DistAlign.GpuCheck.Program.NoDevice), output);
        Assert.That(output, Does.Contain($"CUDA driver: loaded {Path.Combine(_directory, "libcuda.so.1")}"));
        Assert.That(output, Does.Contain("no CUDA device: CUDA_ERROR_NO_DEVICE (100) in cuInit"));
    }

    [Test]
    public void ADriverWithNoDevicesIsReported()
    {
        var (code, output) = RunWithFakeDriver("none");
        Assert.That(code, Is.EqualTo(DistAlign.GpuCheck.Program.NoDevice), output);
        Assert.That(output, Does.Contain("no CUDA device: the CUDA driver reports 0 devices"));
    }

    [Test]
    public void TheDeviceQueryGoesThroughTheBindings()
    {
        var (code, output) = RunWithFakeDriver("one");
        Assert.That(output, Does.Contain("Device: DistAlign Fake GPU (sm_90, 141 GiB, 132 SMs); driver 13.0; cuBLAS missing"), output);
        // ILGPU binds libcuda itself (not through our search path), finds no device, and the run fails cleanly.
        Assert.That(code, Is.EqualTo(1), output);
        Assert.That(output, Does.Contain("ILGPU found no CUDA device"));
        Assert.That(output, Does.Contain("0 passed, 1 failed"));
    }
}
