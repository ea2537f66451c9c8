using DistAlign.Engine.Cuda;
using DistAlign.GpuCheck;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// gpu-check's test runner (<see cref="BackendFixtureRunner"/>) driven over this very assembly, as the published bundle drives
/// its embedded copy: NUnit's framework API runs exactly the fixtures built with the backend's name, reports every case, lists
/// what a time limit left unrun, and skips the CUDA cases with the reason where there is no device. The bundle itself is
/// checked by tools/gpu-check.sh --prepare, which runs it with --tests.
/// </summary>
[NonParallelizable]
public class BackendFixtureRunnerTests
{
    private const string OneFixture = "Kernels.Gpu.GpuReductionTests(";

    private static BackendFixtureRunner Runner(Report report) => new(typeof(BackendFixtureRunnerTests).Assembly, report);

    [Test]
    public void TheSimulatorCasesOfAFixtureRunAndPassAndEachIsReportedAsItFinishes()
    {
        var report = new Report(TextWriter.Null);
        int writes = 0;
        int selected = Runner(report).Run("simulator", OneFixture, TimeSpan.FromMinutes(5), () => writes++);
        Assert.That(selected, Is.GreaterThan(10));
        Assert.That(report.Tests, Has.Count.EqualTo(selected));
        Assert.That(report.Tests.Select(t => t.Name), Has.All.StartWith("DistAlign.Tests.Kernels.Gpu.GpuReductionTests(\"simulator\")."));
        Assert.That(report.Tests.Select(t => t.Outcome), Has.All.EqualTo(TestOutcome.Passed), string.Join("; ", report.Tests.Select(t => t.Message)));
        Assert.That(writes, Is.EqualTo(selected + 1), "after every case, and once at the end");
    }

    [Test]
    public void WithoutADeviceEveryCudaCaseIsSkippedWithTheReason()
    {
        if (CudaDriver.Probe().IsUsable) Assert.Ignore("a usable CUDA device is present; this test checks a machine without one");
        var report = new Report(TextWriter.Null);
        int selected = Runner(report).Run("cuda", null, TimeSpan.FromMinutes(5), () => { });
        Assert.That(selected, Is.GreaterThan(200), "every [TestFixture(\"cuda\")] case of tests/");
        Assert.That(report.Tests, Has.Count.EqualTo(selected));
        Assert.That(report.Tests.Select(t => t.Name), Has.All.Contains("(\"cuda\")."));
        Assert.That(report.Tests.Select(t => t.Name), Has.Some.StartWith("DistAlign.Tests.Cuda.CudaKernelTests(\"cuda\")."), "the CUDA-only fixture too");
        Assert.That(report.Tests.Select(t => t.Outcome), Has.All.EqualTo(TestOutcome.Skipped));
        Assert.That(report.Tests.Select(t => t.Message), Has.All.StartWith("CUDA case skipped, no CUDA device: "));
    }

    [Test]
    public void CasesLeftAtTheTimeLimitAreListedAsNotRun()
    {
        var report = new Report(TextWriter.Null);
        int selected = Runner(report).Run("simulator", OneFixture, TimeSpan.Zero, () => { });
        Assert.That(report.Tests, Has.Count.EqualTo(selected));
        var notRun = report.Tests.Where(t => t.Outcome == TestOutcome.NotRun).ToList();
        Assert.That(notRun, Has.Count.GreaterThanOrEqualTo(selected - 1), "at most the case running at the limit finishes");
        Assert.That(notRun.Select(t => t.Message), Has.All.EqualTo("not started: the time limit (0 s) was reached"));
        Assert.That(report.Notes, Has.Some.StartWith("tests stopped at the time limit"));
    }

    [Test]
    public void TheTestsModeNeedsTheBundleThatCarriesTheTestAssembly()
    {
        string directory = Directory.CreateTempSubdirectory("distalign-gpu-check-tests-").FullName;
        try
        {
            var log = new StringWriter();
            Assert.That(DistAlign.GpuCheck.Program.Run(["--tests", "--out", directory], log), Is.EqualTo(2));
            Assert.That(File.ReadAllText(Path.Combine(directory, "summary.md")),
                        Does.Contain("this gpu-check carries no test assembly: only the single-file publish (tools/gpu-check.sh --prepare) embeds DistAlign.Tests.dll"));
            Assert.That(DistAlign.GpuCheck.Program.Run(["--backend", "simulator"], log), Is.EqualTo(2), "--backend goes with --tests");
            Assert.That(DistAlign.GpuCheck.Program.Run(["--tests", "--backend", "rocm"], log), Is.EqualTo(2));
            Assert.That(DistAlign.GpuCheck.Program.Run(["--budget", "soon"], log), Is.EqualTo(2));
            Assert.That(DistAlign.GpuCheck.Program.Run(["--budget", "-5"], log), Is.EqualTo(2));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}
