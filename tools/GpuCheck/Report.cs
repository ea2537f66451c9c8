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

/// <summary>One section of a gpu-check run: its planned seconds, and once decided, the seconds it took or why it did not run.</summary>
internal sealed record SectionRecord(string Name, double EstimatedSeconds, double? Seconds, string Outcome);

/// <summary>
/// Collects results, prints them as they come, and writes summary.md, checks.tsv, benchmarks.tsv and sections.tsv
/// (<see cref="Write"/>, called after every section, so a run stopped by a time limit keeps what it finished).
/// </summary>
internal sealed class Report(TextWriter log)
{
    private readonly Lock _lock = new();

    public List<CheckResult> Checks { get; } = [];
    public List<BenchmarkResult> Benchmarks { get; } = [];
    public List<SectionRecord> Sections { get; } = [];
    public List<string> Notes { get; } = [];
    public TextWriter Log { get; } = log;

    /// <summary>Failed checks.</summary>
    public int Failures
    {
        get { lock (_lock) return Checks.Count(c => !c.Passed); }
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
        var sections = new StringBuilder("section\testimated_s\tseconds\toutcome\n");
        foreach (var x in Sections) sections.Append(inv, $"{x.Name}\t{x.EstimatedSeconds:F0}\t{x.Seconds:F1}\t{x.Outcome}\n");
        WriteFile(directory, "sections.tsv", sections.ToString());

        var md = new StringBuilder();
        md.AppendLine("# DistAlign GPU check").AppendLine().AppendLine(header).AppendLine();
        int passed = Checks.Count(c => c.Passed);
        md.AppendLine(inv, $"**Checks: {passed} passed, {Checks.Count - passed} failed** (GPU result vs the CPU kernels of `DistAlign.Kernels.Cpu`).").AppendLine();
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
        if (Benchmarks.Count > 0)
        {
            md.AppendLine("| benchmark | shape | median ms | throughput | vs peak |").AppendLine("|---|---|---:|---|---|");
            foreach (var b in Benchmarks) md.AppendLine(inv, $"| {b.Name} | {b.Shape} | {b.MedianMilliseconds:F3} | {b.Throughput} | {b.VersusPeak} |");
            md.AppendLine();
        }
        foreach (var n in Notes) md.AppendLine("- " + n);
        WriteFile(directory, "summary.md", md.ToString());
    }

    private static void WriteFile(string directory, string name, string text)
    {
        string path = Path.Combine(directory, name), temporary = path + ".partial";
        File.WriteAllText(temporary, text);
        File.Move(temporary, path, overwrite: true);
    }
}
