using System.Diagnostics;
using System.Reflection;
using System.Runtime.Loader;
using NUnit;
using NUnit.Framework.Api;
using NUnit.Framework.Interfaces;
using NUnit.Framework.Internal;

namespace DistAlign.GpuCheck;

/// <summary>
/// The NUnit test cases of the backend fixtures of tests/ — every fixture constructed with the backend's name as its one
/// argument, <c>[TestFixture("cuda")]</c> or <c>[TestFixture("simulator")]</c> — run inside gpu-check by NUnit's own framework
/// (<see cref="NUnitTestAssemblyRunner"/>: NUnitLite is not in the package registry here, nunit.framework is), so the GPU
/// machine, which has no .NET SDK, runs them from the published bundle. One test thread (the fixtures share one device
/// context); each finished case goes to the report as it finishes, and what the time limit leaves unrun is listed as not run.
/// </summary>
internal sealed class BackendFixtureRunner(Assembly tests, Report report)
{
    /// <summary>The manifest resource name under which the single-file publish embeds DistAlign.Tests.dll (GpuCheck.csproj).</summary>
    public const string EmbeddedTestAssembly = "DistAlign.Tests.dll";

    /// <summary>
    /// DistAlign.Tests as <c>tools/gpu-check.sh --prepare</c> embeds it, loaded into the default context beside the bundle's
    /// own assemblies (its references resolve to them), or null with the reason where this build carries none.
    /// </summary>
    public static Assembly? LoadEmbeddedTestAssembly(out string reason)
    {
        using var stream = typeof(BackendFixtureRunner).Assembly.GetManifestResourceStream(EmbeddedTestAssembly);
        if (stream is null)
        {
            reason = "this gpu-check carries no test assembly: only the single-file publish (tools/gpu-check.sh --prepare) embeds DistAlign.Tests.dll";
            return null;
        }
        reason = "";
        return AssemblyLoadContext.Default.LoadFromStream(stream);
    }

    /// <summary>
    /// Runs every case of the fixtures built with <paramref name="backend"/> (and, with <paramref name="fixture"/>, whose full
    /// name contains it); stops after the case that is running when <paramref name="timeLimit"/> is reached. Calls
    /// <paramref name="caseFinished"/> after each case is added to the report. Returns the number of cases selected.
    /// </summary>
    public int Run(string backend, string? fixture, TimeSpan timeLimit, Action caseFinished)
    {
        var runner = new NUnitTestAssemblyRunner(new DefaultTestAssemblyBuilder());
        var settings = new Dictionary<string, object>
        {
            [FrameworkPackageSettings.NumberOfTestWorkers] = 0,   // no parallel workers: one thread of its own, so the wait below can time out
            [FrameworkPackageSettings.WorkDirectory] = Directory.GetCurrentDirectory(),
        };
        var loaded = runner.Load(tests, settings);
        if (loaded.RunState == RunState.NotRunnable)
            throw new InvalidOperationException($"NUnit could not load {tests.GetName().Name}: {loaded.Properties.Get(PropertyNames.SkipReason)}");
        var filter = new BackendFixtureFilter(backend, fixture);
        var selected = new List<string>();
        CollectCases(runner.ExploreTests(filter), selected);
        report.Log.WriteLine($"tests: {selected.Count} cases of {CountFixtures(runner.ExploreTests(filter))} [TestFixture(\"{backend}\")] fixtures" +
                             $"{(fixture is null ? "" : $" matching '{fixture}'")}, NUnit {typeof(NUnitTestAssemblyRunner).Assembly.GetName().Version}");
        var listener = new CaseListener(report, caseFinished);
        var watch = Stopwatch.StartNew();
        runner.RunAsync(listener, filter);
        if (!runner.WaitForCompletion((int)Math.Clamp(timeLimit.TotalMilliseconds, 0, int.MaxValue)))
        {
            report.Note($"tests stopped at the time limit ({timeLimit.TotalSeconds:F0} s) after the running case");
            // StopRun does nothing before NUnit's top-level work item runs (RunAsync starts it on a thread of its own), so a limit
            // reached that early, a zero one included, waits for it to start: stopped before then, the whole run went on.
            var spin = new SpinWait();
            while (!runner.IsTestRunning && !runner.IsTestComplete) spin.SpinOnce();
            runner.StopRun(force: false);   // NUnit cannot abort a running case on .NET: it finishes, nothing new starts
            runner.WaitForCompletion(Timeout.Infinite);
        }
        var finished = listener.Finished;
        foreach (string name in selected.Where(n => !finished.Contains(n)))
            report.Add(new TestCaseResult(name, TestOutcome.NotRun, "", 0,
                                          watch.Elapsed >= timeLimit ? $"not started: the time limit ({timeLimit.TotalSeconds:F0} s) was reached" : "NUnit reported no result"));
        caseFinished();
        return selected.Count;
    }

    private static void CollectCases(ITest test, List<string> names)
    {
        if (!test.IsSuite) names.Add(test.FullName);
        foreach (var child in test.Tests) CollectCases(child, names);
    }

    private static int CountFixtures(ITest test) =>
        (test.TestType == "TestFixture" ? 1 : 0) + test.Tests.Sum(CountFixtures);

    /// <summary>
    /// The fixtures whose constructor argument is exactly the backend's name (and whose full name contains the optional text),
    /// with everything under them; <see cref="TestFilter.Pass(ITest)"/> adds their parents (assembly, namespaces).
    /// </summary>
    private sealed class BackendFixtureFilter(string backend, string? fixture) : TestFilter
    {
        public override bool Match(ITest test) =>
            test.TestType == "TestFixture" && test.Arguments is [string argument] && argument == backend
            && (fixture is null || test.FullName.Contains(fixture, StringComparison.Ordinal));

        public override TNode AddToXml(TNode parentNode, bool recursive) => parentNode.AddElement("backend-fixtures", backend);
    }

    /// <summary>
    /// NUnit's events (on its event thread) into the report: every test case, plus a fixture whose one-time teardown failed
    /// after its cases passed (a one-time setup failure already fails or skips each case).
    /// </summary>
    private sealed class CaseListener(Report report, Action caseFinished) : ITestListener
    {
        private readonly HashSet<string> _finished = [];

        public HashSet<string> Finished
        {
            get { lock (_finished) return [.. _finished]; }
        }

        public void TestStarted(ITest test) { }

        public void TestFinished(ITestResult result)
        {
            bool teardownFailure = result.Test.IsSuite && result.ResultState.Site == FailureSite.TearDown && result.ResultState.Status == TestStatus.Failed;
            if (result.Test.IsSuite && !teardownFailure) return;
            lock (_finished) _finished.Add(result.Test.FullName);
            var outcome = result.ResultState.Status switch
            {
                TestStatus.Passed => TestOutcome.Passed,
                TestStatus.Skipped => TestOutcome.Skipped,
                TestStatus.Inconclusive => TestOutcome.Inconclusive,
                _ => TestOutcome.Failed,   // Failed, and Warning: a case that warns has not shown what it checks
            };
            string label = result.ResultState.Label;
            if (result.ResultState.Status == TestStatus.Warning) label = "Warning";
            string message = result.Message;
            if (outcome == TestOutcome.Failed && !string.IsNullOrEmpty(result.StackTrace))
                message += " at " + result.StackTrace.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault();
            report.Add(new TestCaseResult(result.Test.FullName + (teardownFailure ? " [one-time teardown]" : ""), outcome, label, result.Duration, message));
            caseFinished();
        }

        public void TestOutput(TestOutput output) { }

        public void SendMessage(TestMessage message) { }
    }
}
