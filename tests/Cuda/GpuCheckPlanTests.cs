using DistAlign.GpuCheck;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// gpu-check's budget and tables (<see cref="SectionPlan"/>, <see cref="Report"/>): the plan leaves out the slowest sections
/// until the rest fit, drops at run time what no longer fits, keeps running after a section that throws, and writes every
/// table before the first section and after each one; tests.tsv rows survive the trip through the file that the parent
/// gpu-check reads back from its test process.
/// </summary>
public class GpuCheckPlanTests
{
    [Test]
    public void ThePlanDropsTheSlowestSectionsFirstAndTheLaterOneAmongEquals()
    {
        Assert.That(SectionPlan.Dropped([10, 20, 30], 60), Is.Empty, "fits exactly");
        Assert.That(SectionPlan.Dropped([10, 50, 30, 5], 60), Is.EquivalentTo(new[] { 1 }), "the 50 s section goes, 45 s remain");
        Assert.That(SectionPlan.Dropped([10, 50, 30, 5], 40), Is.EquivalentTo(new[] { 1, 2 }), "then the 30 s one");
        Assert.That(SectionPlan.Dropped([30, 30, 30], 60), Is.EquivalentTo(new[] { 2 }), "the later of equals");
        Assert.That(SectionPlan.Dropped([30, 30, 30], 0), Is.EquivalentTo(new[] { 0, 1, 2 }));
    }

    [Test]
    public void SectionsRunInOrderWithinTheBudgetAndTheTablesAreWrittenAfterEachOne()
    {
        double elapsed = 50;   // of a 150 s budget: 100 s left
        var report = new Report(TextWriter.Null);
        var ran = new List<string>();
        var writes = new List<string>();
        var plan = new SectionPlan(report, 150, () => elapsed,
                                   () => writes.Add(string.Join(", ", report.Sections.Select(s => $"{s.Name}: {s.Outcome}"))));
        plan.Run(
        [
            new("a", 30, _ => { ran.Add("a"); elapsed += 45; }),                  // overruns its estimate: 55 s left
            new("b", 70, _ => ran.Add("b")),                                         // 165 s in all > 100: the plan drops b, 95 s remain
            new("c", 20, _ => { ran.Add("c"); elapsed += 20; throw new InvalidOperationException("broken device"); }),   // 35 s left
            new("d", 40, _ => ran.Add("d")),                                         // no longer fits: dropped at run time
            new("e", 5, _ => ran.Add("e"), StopsAtItsTimeLimit: true),              // needs 60 s to be worth starting
        ]);
        Assert.That(ran, Is.EqualTo(new[] { "a", "c" }));
        var outcomes = report.Sections.Select(s => s.Outcome).ToList();
        const string planned = "dropped by the plan: the sections add up to 165 s and 100 s of the budget were left; the slowest go first";
        Assert.That(outcomes, Is.EqualTo(new[]
        {
            "done", planned, "done, 1 failed",
            "dropped at run time: 35 s of the budget left, 40 s needed",
            "dropped at run time: 35 s of the budget left, 60 s needed",
        }));
        Assert.That(report.Sections[0].Seconds, Is.Not.Null);
        Assert.That(report.Sections[1].Seconds, Is.Null);
        Assert.That(report.Checks.Single().Name, Is.EqualTo("c"));
        Assert.That(report.Checks.Single().Error, Is.EqualTo("InvalidOperationException: broken device"));
        Assert.That(report.Notes, Has.Some.EqualTo("budget 150 s: the plan leaves out b (the slowest sections, to fit 165 s of estimates into 100 s; " +
                                                   "each runs at the end if it fits what is left then)"));
        Assert.That(writes[0], Does.StartWith($"a: planned, b: {planned}, c: planned"), "the plan is written before anything runs");
        Assert.That(writes[1], Does.StartWith("a: started, not finished"), "a section killed while it runs is marked as such");
        Assert.That(writes[2], Does.StartWith($"a: done, b: {planned}, c: planned"), "a's result is written before c starts");
        Assert.That(writes[^1], Does.EndWith("e: dropped at run time: 35 s of the budget left, 60 s needed"));
    }

    [Test]
    public void ASectionThePlanLeftOutRunsAtTheEndWhenTheOthersTookLessThanTheirEstimates()
    {
        var report = new Report(TextWriter.Null);
        var ran = new List<string>();
        double elapsed = 0;
        new SectionPlan(report, 100, () => elapsed, () => { }).Run(
        [
            new("a", 60, _ => { ran.Add("a"); elapsed += 20; }),
            new("b", 70, _ => ran.Add("b")),   // 130 s > 100: left out by the plan; 80 s are left after a
            new("c", 90, _ => ran.Add("c")),   // left out too; 80 s are not enough for it at the end
        ]);
        Assert.That(ran, Is.EqualTo(new[] { "a", "b" }));
        Assert.That(report.Sections[1].Outcome, Is.EqualTo("done after the planned sections (80 s were left; the plan had dropped it)"));
        Assert.That(report.Sections[2].Outcome, Does.StartWith("dropped by the plan: the sections add up to 220 s and 100 s of the budget were left"));
    }

    [Test]
    public void ATimeLimitedSectionStartsWithWhateverIsLeft()
    {
        var report = new Report(TextWriter.Null);
        double limit = 0;
        new SectionPlan(report, 420, () => 300, () => { }).Run([new("tests", 150, l => limit = l.TotalSeconds, StopsAtItsTimeLimit: true)]);
        Assert.That(report.Sections.Single().Outcome, Does.StartWith("dropped by the plan"), "its estimate does not fit 120 s, so the plan drops it");

        report = new Report(TextWriter.Null);
        new SectionPlan(report, 420, () => 300, () => { }).Run([new("tests", 100, l => limit = l.TotalSeconds, StopsAtItsTimeLimit: true)]);
        Assert.That(limit, Is.EqualTo(120), "it is handed the seconds left");
        Assert.That(report.Sections.Single().Outcome, Is.EqualTo("done"));
    }

    [Test]
    public void TestRowsSurviveTheTableAndTheSummaryNamesEveryCaseThatDidNotPass()
    {
        var report = new Report(TextWriter.Null) { TestRun = "fixtures of a test" };
        report.Add(new TestCaseResult("DistAlign.Tests.X(\"cuda\").Passes", TestOutcome.Passed, "", 0.25, ""));
        report.Add(new TestCaseResult("DistAlign.Tests.X(\"cuda\").Fails(1)", TestOutcome.Failed, "Error", 1.5, "Expected: 1\n  But was:\t2 | 3"));
        report.Add(new TestCaseResult("DistAlign.Tests.X(\"cuda\").Skips(1)", TestOutcome.Skipped, "Ignored", 0, "no CUDA device"));
        report.Add(new TestCaseResult("DistAlign.Tests.X(\"cuda\").Skips(2)", TestOutcome.Skipped, "Ignored", 0, "no CUDA device"));
        report.Add(new TestCaseResult("DistAlign.Tests.X(\"cuda\").Late", TestOutcome.NotRun, "", 0, "not started: the time limit (60 s) was reached"));
        string directory = Directory.CreateTempSubdirectory("distalign-gpu-check-report-").FullName;
        try
        {
            report.Write(directory, "header");
            var rows = File.ReadAllLines(Path.Combine(directory, "tests.tsv"));
            Assert.That(rows[0], Is.EqualTo(TestCaseResult.TableHeader));
            var back = rows.Skip(1).Select(TestCaseResult.FromTableRow).ToList();
            Assert.That(back, Has.Count.EqualTo(5).And.All.Not.Null);
            Assert.That(back[1], Is.EqualTo(report.Tests[1] with { Message = "Expected: 1 But was: 2 | 3" }), "one line, tabs gone");
            Assert.That(back[0], Is.EqualTo(report.Tests[0]));
            Assert.That(TestCaseResult.FromTableRow("not\ta row"), Is.Null);

            string summary = File.ReadAllText(Path.Combine(directory, "summary.md"));
            Assert.That(summary, Does.Contain("**Tests: 1 passed, 1 failed, 2 skipped, 1 not run** (fixtures of a test)."));
            Assert.That(summary, Does.Contain("| X(\"cuda\").Fails(1) | Error | Expected: 1 But was: 2 \\| 3 |"));
            Assert.That(summary, Does.Contain("| Skipped | Ignored | 2 | no CUDA device | X(\"cuda\").Skips(1), X(\"cuda\").Skips(2) |"));
            Assert.That(summary, Does.Contain("| NotRun |  | 1 | not started: the time limit (60 s) was reached | X(\"cuda\").Late |"));
            Assert.That(Directory.GetFiles(directory).Select(Path.GetFileName),
                        Is.EquivalentTo(new[] { "summary.md", "checks.tsv", "benchmarks.tsv", "tests.tsv", "sections.tsv" }), "no temporary file left");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}
