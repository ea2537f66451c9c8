using DistAlign.Cli;
using DistAlign.Tests.Cli;

namespace DistAlign.Tests.Alignment.Experiments;

/// <summary><c>distalign experiment tabular</c> end to end (tiny), and its usage errors.</summary>
public class TabularCliTests : CliTestBase
{
    [Test]
    public void TheTabularCommandWritesItsFilesAndPrintsTheTable()
    {
        string dir = Path.Combine(TestDirectory, "tab");
        int code = Program.Main(["experiment", "tabular", "--out", dir, "--seeds", "2", "--n-min", "5", "--n-max", "64",
                                 "--steps", "10", "--methods", "pmle,RLHF", "--threads", "1"]);
        Assert.That(code, Is.EqualTo(0), Error.ToString());
        foreach (var file in DistAlign.Alignment.Experiments.TabularReport.Files) Assert.That(File.Exists(Path.Combine(dir, file)), file);
        string output = Output.ToString();
        Assert.That(output, Does.Contain("PMLE β=0").And.Contain("slope").And.Contain("kl_vs_n.png"));
        Assert.That(File.ReadAllText(Path.Combine(dir, "summary.csv")), Does.Contain("RLHF,64,").And.Not.Contains("DPO"));
    }

    [TestCase("--n-min", "31")]
    [TestCase("--n-min", "100")]
    [TestCase("--seeds", "0")]
    [TestCase("--sampler", "beta")]
    [TestCase("--methods", "ppo")]
    [TestCase("--gamma", "-1")]
    public void BadOptionsAreUsageErrors(string flag, string value)
    {
        int code = Program.Main(["experiment", "tabular", "--out", Path.Combine(TestDirectory, "x"), flag, value]);
        Assert.That(code, Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.StartWith("distalign: "));
        Assert.That(Directory.Exists(Path.Combine(TestDirectory, "x")), Is.False);
    }

    [Test]
    public void NMinAboveNMaxIsAUsageError()
    {
        int code = Program.Main(["experiment", "tabular", "--n-min", "10", "--n-max", "6"]);
        Assert.That(code, Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("--n-min"));
    }
}
