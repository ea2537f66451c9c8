using System.Diagnostics;
using System.Globalization;

namespace DistAlign.GpuCheck;

/// <summary>
/// One part of a gpu-check run. <paramref name="EstimatedSeconds"/>: what it takes on the machine it is meant for (an H100/H200
/// class GPU; the simulator's sections: this repository's 2-core CI machine), wall time including its CPU reference. A section
/// that <paramref name="StopsAtItsTimeLimit"/> is handed the seconds it may take and keeps to them (the test runner), so it
/// starts whenever <see cref="SectionPlan.ShortestUsefulSeconds"/> are left; any other needs its whole estimate.
/// </summary>
internal sealed record Section(string Name, double EstimatedSeconds, Action<TimeSpan> Run, bool StopsAtItsTimeLimit = false);

/// <summary>
/// Runs sections within a budget of wall-clock seconds counted from the start of the process. Before the first, the plan
/// leaves out the slowest sections (largest estimate first; the later one first among equals) until the rest fit; before each,
/// a section whose estimate no longer fits what is left is dropped too (estimates can be wrong); after the last, a section the
/// plan left out runs if it fits what is left then (estimates can be pessimistic). Every decision, and the
/// seconds each section took, goes to the report's sections table, and the tables are written after every section (and
/// before the first), so a run killed by an outer time limit keeps every finished section's results.
/// </summary>
internal sealed class SectionPlan(Report report, double budgetSeconds, Func<double> elapsedSeconds, Action writeTables)
{
    /// <summary>A section that keeps to its time limit is not started with less than this left.</summary>
    public const double ShortestUsefulSeconds = 60;

    /// <summary>Plans against the seconds since <paramref name="started"/> (the start of the process).</summary>
    public SectionPlan(Report report, double budgetSeconds, DateTime started, Action writeTables)
        : this(report, budgetSeconds, () => (DateTime.Now - started).TotalSeconds, writeTables) { }

    private double LeftSeconds => budgetSeconds - elapsedSeconds();

    /// <summary>
    /// The indices of the sections to leave out so that the others' estimates add up to at most <paramref name="seconds"/>:
    /// the slowest first, the later one first among equals.
    /// </summary>
    public static IReadOnlySet<int> Dropped(IReadOnlyList<double> estimates, double seconds)
    {
        var dropped = new HashSet<int>();
        double planned = estimates.Sum();
        foreach (int i in Enumerable.Range(0, estimates.Count).OrderByDescending(i => estimates[i]).ThenByDescending(i => i))
        {
            if (planned <= seconds) break;
            dropped.Add(i);
            planned -= estimates[i];
        }
        return dropped;
    }

    public void Run(IReadOnlyList<Section> sections)
    {
        var inv = CultureInfo.InvariantCulture;
        report.BudgetSeconds = budgetSeconds;
        double available = LeftSeconds, total = sections.Sum(s => s.EstimatedSeconds);
        var dropped = Dropped([.. sections.Select(s => s.EstimatedSeconds)], available);
        for (int i = 0; i < sections.Count; i++)
            report.Record(i, new SectionRecord(sections[i].Name, sections[i].EstimatedSeconds, null, dropped.Contains(i)
                ? string.Create(inv, $"dropped by the plan: the sections add up to {total:F0} s and {available:F0} s of the budget were left; the slowest go first")
                : "planned"));
        if (dropped.Count > 0)
            report.Note(string.Create(inv, $"budget {budgetSeconds:F0} s: the plan leaves out {string.Join(", ", dropped.Order().Select(i => sections[i].Name))} " +
                                          $"(the slowest sections, to fit {total:F0} s of estimates into {available:F0} s; each runs at the end if it fits what is left then)"));
        writeTables();
        for (int i = 0; i < sections.Count; i++)
        {
            if (dropped.Contains(i)) continue;
            var section = sections[i];
            double left = LeftSeconds;
            if (section.StopsAtItsTimeLimit ? left < ShortestUsefulSeconds : section.EstimatedSeconds > left)
            {
                string why = string.Create(inv, $"dropped at run time: {Math.Max(left, 0):F0} s of the budget left, {(section.StopsAtItsTimeLimit ? ShortestUsefulSeconds : section.EstimatedSeconds):F0} s needed");
                report.Record(i, new SectionRecord(section.Name, section.EstimatedSeconds, null, why));
                report.Note($"{section.Name}: {why}");
                writeTables();
                continue;
            }
            RunSection(i, section, left, "done");
        }
        // Estimates can be pessimistic: what the plan left out still runs, in order, where it fits what is left now.
        foreach (int i in dropped.Order())
        {
            double left = LeftSeconds;
            if (sections[i].EstimatedSeconds <= left)
                RunSection(i, sections[i], left, string.Create(inv, $"done after the planned sections ({left:F0} s were left; the plan had dropped it)"));
        }
    }

    private void RunSection(int index, Section section, double left, string done)
    {
        report.Record(index, new SectionRecord(section.Name, section.EstimatedSeconds, null, "started, not finished"));
        writeTables();
        report.Log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"== {section.Name} (estimated {section.EstimatedSeconds:F0} s, {left:F0} s of the budget left)"));
        int failedBefore = report.Failures;
        var watch = Stopwatch.StartNew();
        try { section.Run(TimeSpan.FromSeconds(left)); }
        catch (Exception e)
        {
            report.Add(new CheckResult(section.Name, 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}"));
            report.Log.WriteLine(e);
        }
        int failed = report.Failures - failedBefore;
        report.Record(index, new SectionRecord(section.Name, section.EstimatedSeconds, watch.Elapsed.TotalSeconds, failed == 0 ? done : $"{done}, {failed} failed"));
        writeTables();
    }
}
