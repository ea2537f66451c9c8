using System.Globalization;
using System.Text;

namespace DistAlign.GpuCheck;

/// <summary>One GPU-vs-CPU comparison: the worst element relative to its tolerance atol + rtol·|reference|.</summary>
internal sealed record CheckResult(string Name, long Elements, double MaxAbsError, double WorstToTolerance, string Tolerance, string? Error = null)
{
    public bool Passed => Error is null && WorstToTolerance <= 1.0;
}

/// <summary>One timed kernel: median milliseconds and what that means in throughput.</summary>
internal sealed record BenchmarkResult(string Name, string Shape, double MedianMilliseconds, string Throughput, string VersusPeak);

/// <summary>How one NUnit test case ended.</summary>
internal enum TestOutcome { Passed, Failed, Skipped, Inconclusive, NotRun }

/// <summary>
/// One NUnit test case of the backend fixtures (<see cref="BackendFixtureRunner"/>): its full name, how it ended, NUnit's label
/// ("Ignored", "Error", "Cancelled", …; empty for a plain pass or failure), seconds and NUnit's message.
/// </summary>
internal sealed record TestCaseResult(string Name, TestOutcome Outcome, string Label, double Seconds, string Message)
{
    public const string TableHeader = "test\toutcome\tlabel\tseconds\tmessage";

    /// <summary>One tests.tsv row (tabs and line breaks in the message become spaces).</summary>
    public string ToTableRow() => string.Create(CultureInfo.InvariantCulture, $"{Name}\t{Outcome}\t{Label}\t{Seconds:F3}\t{OneLine(Message)}");

    /// <summary>The row written by <see cref="ToTableRow"/>, or null where <paramref name="row"/> is not one.</summary>
    public static TestCaseResult? FromTableRow(string row)
    {
        var f = row.Split('\t');
        return f.Length == 5 && Enum.TryParse<TestOutcome>(f[1], out var outcome) && double.TryParse(f[3], NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds)
            ? new TestCaseResult(f[0], outcome, f[2], seconds, f[4])
            : null;
    }

    public static string OneLine(string text) => string.Join(' ', text.Split(['\t', '\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
}

/// <summary>One section of a gpu-check run: its planned seconds, and once decided, the seconds it took or why it did not run.</summary>
internal sealed record SectionRecord(string Name, double EstimatedSeconds, double? Seconds, string Outcome);

/// <summary>
/// Collects results, prints them as they come, and writes summary.md, checks.tsv, benchmarks.tsv, tests.tsv and sections.tsv
/// (<see cref="Write"/>, called after every section, so a run stopped by a time limit keeps what it finished).
/// </summary>
internal sealed class Report(TextWriter log)
{
    private readonly Lock _lock = new();   // the test runner adds cases and writes the tables from NUnit's event thread

    public List<CheckResult> Checks { get; } = [];
    public List<BenchmarkResult> Benchmarks { get; } = [];
    public List<TestCaseResult> Tests { get; } = [];
    public List<SectionRecord> Sections { get; } = [];
    public List<string> Notes { get; } = [];
    public TextWriter Log { get; } = log;

    /// <summary>What the test cases are (set by whoever ran them), e.g. the fixtures' backend; null: no test section.</summary>
    public string? TestRun { get; set; }

    /// <summary>Failed checks and failed test cases.</summary>
    public int Failures
    {
        get { lock (_lock) return Checks.Count(c => !c.Passed) + Tests.Count(t => t.Outcome == TestOutcome.Failed); }
    }

    /// <summary>The plan's budget in seconds, for the sections table.</summary>
    public double? BudgetSeconds { get; set; }

    public void Add(CheckResult r)
    {
        lock (_lock) Checks.Add(r);
        Log.WriteLine(r.Error is not null
            ? $"FAIL  {r.Name}: {r.Error}"
            : $"{(r.Passed ? "ok  " : "FAIL")}  {r.Name}: {r.Elements} values, max |err| {r.MaxAbsError:E2}, worst err/tol {r.WorstToTolerance:F3} ({r.Tolerance})");
    }

    public void Add(BenchmarkResult r)
    {
        lock (_lock) Benchmarks.Add(r);
        Log.WriteLine($"bench {r.Name} [{r.Shape}]: {r.MedianMilliseconds:F3} ms, {r.Throughput}, {r.VersusPeak}");
    }

    public void Add(TestCaseResult r)
    {
        lock (_lock) Tests.Add(r);
        string outcome = r.Outcome switch
        {
            TestOutcome.Passed => "ok  ", TestOutcome.Failed => "FAIL", TestOutcome.Skipped => "skip", TestOutcome.Inconclusive => "inconclusive", _ => "not run",
        };
        Log.WriteLine(r.Outcome == TestOutcome.Passed ? $"test {outcome}  {r.Name} ({r.Seconds:F2} s)" : $"test {outcome}  {r.Name}: {(r.Label.Length > 0 ? r.Label + ": " : "")}{TestCaseResult.OneLine(r.Message)}");
    }

    /// <summary>Test cases another gpu-check process ran and already logged (its tests.tsv).</summary>
    public void AddWithoutLogging(IEnumerable<TestCaseResult> cases)
    {
        lock (_lock) Tests.AddRange(cases);
    }

    public void Note(string line)
    {
        lock (_lock) Notes.Add(line);
        Log.WriteLine(line);
    }

    /// <summary>Compares <paramref name="actual"/> with <paramref name="expected"/> element by element.</summary>
    public void Compare(string name, ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, double atol, double rtol)
    {
        if (actual.Length != expected.Length)
        {
            Add(new CheckResult(name, actual.Length, double.NaN, double.NaN, "", $"length {actual.Length} vs {expected.Length}"));
            return;
        }
        double maxAbs = 0, worst = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            double err = Math.Abs((double)actual[i] - expected[i]);
            if (double.IsNaN(err)) err = double.PositiveInfinity;
            maxAbs = Math.Max(maxAbs, err);
            if (err > 0) worst = Math.Max(worst, err / (atol + rtol * Math.Abs(expected[i])));   // exact (tolerance 0) gives 0, not 0/0
        }
        Add(new CheckResult(name, actual.Length, maxAbs, worst, $"atol {atol:G2}, rtol {rtol:G2}"));
    }

    /// <summary>
    /// Compares with a tolerance relative to the reference's scale: every |actual − expected| ≤ fraction·max|expected|
    /// (for bf16 tensor-core paths, whose error is a fraction of the operands' size, not of each element).
    /// </summary>
    public void CompareToScale(string name, ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, double fraction)
    {
        double scale = 0;
        foreach (float x in expected) scale = Math.Max(scale, Math.Abs(x));
        Compare(name, actual, expected, fraction * Math.Max(scale, 1e-30), 0);
    }

    /// <summary>
    /// Writes every table into <paramref name="directory"/>, each through a temporary file renamed over the old one, so a run
    /// killed while writing leaves the previous complete tables.
    /// </summary>
    public void Write(string directory, string header)
    {
        lock (_lock) WriteTables(directory, header);
    }

    /// <summary>Sets the section at <paramref name="index"/> (appending where it is new).</summary>
    public void Record(int index, SectionRecord section)
    {
        lock (_lock)
        {
            if (index == Sections.Count) Sections.Add(section);
            else Sections[index] = section;
        }
    }

    private void WriteTables(string directory, string header)
    {
        Directory.CreateDirectory(directory);
        var inv = CultureInfo.InvariantCulture;
        var checks = new StringBuilder("check\telements\tmax_abs_error\tworst_error_over_tolerance\ttolerance\tpassed\terror\n");
        foreach (var c in Checks)
            checks.Append(inv, $"{c.Name}\t{c.Elements}\t{c.MaxAbsError:E3}\t{c.WorstToTolerance:F4}\t{c.Tolerance}\t{c.Passed}\t{c.Error}\n");
        WriteFile(directory, "checks.tsv", checks.ToString());
        var benches = new StringBuilder("benchmark\tshape\tmedian_ms\tthroughput\tversus_peak\n");
        foreach (var b in Benchmarks) benches.Append(inv, $"{b.Name}\t{b.Shape}\t{b.MedianMilliseconds:F4}\t{b.Throughput}\t{b.VersusPeak}\n");
        WriteFile(directory, "benchmarks.tsv", benches.ToString());
        var tests = Tests.ToArray();
        var testRows = new StringBuilder(TestCaseResult.TableHeader).Append('\n');
        foreach (var t in tests) testRows.Append(t.ToTableRow()).Append('\n');
        WriteFile(directory, "tests.tsv", testRows.ToString());
        var sections = new StringBuilder("section\testimated_s\tseconds\toutcome\n");
        foreach (var x in Sections) sections.Append(inv, $"{x.Name}\t{x.EstimatedSeconds:F0}\t{x.Seconds:F1}\t{x.Outcome}\n");
        WriteFile(directory, "sections.tsv", sections.ToString());

        var md = new StringBuilder();
        md.AppendLine("# DistAlign GPU check").AppendLine().AppendLine(header).AppendLine();
        int passed = Checks.Count(c => c.Passed);
        md.AppendLine(inv, $"**Checks: {passed} passed, {Checks.Count - passed} failed** (GPU result vs the CPU kernels of `DistAlign.Kernels.Cpu`).").AppendLine();
        if (TestRun is not null) md.AppendLine(inv, $"**Tests: {TestCounts(tests)}** ({TestRun}).").AppendLine();
        if (Sections.Count > 0)
        {
            md.AppendLine(inv, $"Sections{(BudgetSeconds is double budget ? $" (budget {budget:F0} s from the start of the process)" : "")}:").AppendLine();
            md.AppendLine("| section | estimated s | took s | result |").AppendLine("|---|---:|---:|---|");
            foreach (var x in Sections) md.AppendLine(inv, $"| {x.Name} | {x.EstimatedSeconds:F0} | {x.Seconds:F1} | {x.Outcome} |");
            md.AppendLine();
        }
        if (Checks.Count > 0)
        {
            md.AppendLine("| check | values | max abs error | worst error / tolerance | tolerance | result |").AppendLine("|---|---:|---:|---:|---|---|");
            foreach (var c in Checks)
                md.AppendLine(inv, $"| {c.Name} | {c.Elements} | {c.MaxAbsError:E2} | {c.WorstToTolerance:F3} | {c.Tolerance} | {(c.Passed ? "pass" : "**FAIL** " + c.Error)} |");
            md.AppendLine();
        }
        if (tests.Length > 0) WriteTestTables(md, tests);
        if (Benchmarks.Count > 0)
        {
            md.AppendLine("| benchmark | shape | median ms | throughput | vs peak |").AppendLine("|---|---|---:|---|---|");
            foreach (var b in Benchmarks) md.AppendLine(inv, $"| {b.Name} | {b.Shape} | {b.MedianMilliseconds:F3} | {b.Throughput} | {b.VersusPeak} |");
            md.AppendLine();
        }
        foreach (var n in Notes) md.AppendLine("- " + n);
        WriteFile(directory, "summary.md", md.ToString());
    }

    /// <summary>"P passed, F failed, S skipped" (and inconclusive / not run where there are any).</summary>
    public static string TestCounts(IReadOnlyCollection<TestCaseResult> tests)
    {
        int Count(TestOutcome o) => tests.Count(t => t.Outcome == o);
        string text = $"{Count(TestOutcome.Passed)} passed, {Count(TestOutcome.Failed)} failed, {Count(TestOutcome.Skipped)} skipped";
        if (Count(TestOutcome.Inconclusive) > 0) text += $", {Count(TestOutcome.Inconclusive)} inconclusive";
        if (Count(TestOutcome.NotRun) > 0) text += $", {Count(TestOutcome.NotRun)} not run";
        return text;
    }

    /// <summary>Every case that did not pass: failures one by one with their messages, the rest grouped by message.</summary>
    private static void WriteTestTables(StringBuilder md, TestCaseResult[] tests)
    {
        static string Cell(string text) => TestCaseResult.OneLine(text).Replace("|", "\\|", StringComparison.Ordinal);
        static string Short(string name) => name.StartsWith("DistAlign.Tests.", StringComparison.Ordinal) ? name["DistAlign.Tests.".Length..] : name;
        var failed = tests.Where(t => t.Outcome == TestOutcome.Failed).ToList();
        if (failed.Count > 0)
        {
            md.AppendLine("| failed test | label | message |").AppendLine("|---|---|---|");
            foreach (var t in failed) md.AppendLine(CultureInfo.InvariantCulture, $"| {Cell(Short(t.Name))} | {t.Label} | {Cell(t.Message)} |");
            md.AppendLine();
        }
        var other = tests.Where(t => t.Outcome is not (TestOutcome.Passed or TestOutcome.Failed)).GroupBy(t => (t.Outcome, t.Label, t.Message)).ToList();
        if (other.Count > 0)
        {
            md.AppendLine("| not passed | label | cases | message | tests |").AppendLine("|---|---|---:|---|---|");
            foreach (var g in other)
                md.AppendLine(CultureInfo.InvariantCulture, $"| {g.Key.Outcome} | {g.Key.Label} | {g.Count()} | {Cell(g.Key.Message)} | {Cell(string.Join(", ", g.Select(t => Short(t.Name))))} |");
            md.AppendLine();
        }
    }

    private static void WriteFile(string directory, string name, string text)
    {
        string path = Path.Combine(directory, name), temporary = path + ".partial";
        File.WriteAllText(temporary, text);
        File.Move(temporary, path, overwrite: true);
    }
}
