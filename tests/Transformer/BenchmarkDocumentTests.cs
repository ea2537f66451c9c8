using DistAlign.Alignment.Benchmarks;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Transformer;

/// <summary>docs/benchmarks.md per ISA: a run replaces its own section and keeps the other ISA's and the earlier measurements.</summary>
public class BenchmarkDocumentTests
{
    private const string Header = "# Benchmarks\n\nOne section per view of the CPU.";

    [Test]
    public void AnAvx2RunKeepsTheAvx512SectionAndTheEarlierMeasurements()
    {
        string first = BenchmarkDocument.Merge(null, Header, "AVX-512", "## AVX-512\n\nView of the CPU: **native AVX-512**.\n\n### GEMM\n\n| a | 1.10 |");
        Assert.That(first, Does.Contain("## AVX2\n\nNot measured yet"), "the other standard ISA gets a placeholder");
        Assert.That(first.IndexOf("## AVX-512", StringComparison.Ordinal), Is.LessThan(first.IndexOf("## AVX2", StringComparison.Ordinal)));

        string withEarlier = first + "\n" + BenchmarkDocument.EarlierHeading + "\n\n### 2026-11 run\n\nold figures\n";
        string second = BenchmarkDocument.Merge(withEarlier, Header, "AVX2", "## AVX2\n\nView of the CPU: **native AVX2**.\n\n| a | 0.95 |");
        var (sections, _) = BenchmarkDocument.Sections(second);
        Assert.That(sections.Keys, Is.EqualTo(new[] { "AVX-512", "AVX2" }));
        Assert.That(sections["AVX-512"], Does.Contain("| a | 1.10 |"), "the AVX-512 section is kept as it was");
        Assert.That(sections["AVX2"], Does.Contain("native AVX2").And.Contain("| a | 0.95 |").And.Not.Contain("Not measured yet"));
        Assert.That(second, Does.EndWith(BenchmarkDocument.EarlierHeading + "\n\n### 2026-11 run\n\nold figures\n"));

        // the next AVX-512 run replaces only its own section
        string third = BenchmarkDocument.Merge(second, Header, "AVX-512", "## AVX-512\n\nView of the CPU: **native AVX-512**.\n\n| a | 1.20 |");
        (sections, _) = BenchmarkDocument.Sections(third);
        Assert.That(sections["AVX-512"], Does.Contain("| a | 1.20 |").And.Not.Contain("1.10"));
        Assert.That(sections["AVX2"], Does.Contain("| a | 0.95 |"));
        Assert.That(third.Split(BenchmarkDocument.EarlierHeading).Length, Is.EqualTo(2), "one earlier-measurements tail");
    }

    [Test]
    public void ADocumentFromBeforeTheSectionsKeepsItsEarlierMeasurements()
    {
        string old = "# Benchmarks\n\n## Machine\n\n- old machine\n\n" + BenchmarkDocument.EarlierHeading + "\n\n### Older\n\nkept\n";
        string merged = BenchmarkDocument.Merge(old, Header, "AVX-512", "## AVX-512\n\nnew");
        Assert.That(merged, Does.StartWith(Header));
        Assert.That(merged, Does.Contain("### Older\n\nkept").And.Not.Contain("old machine"));

        string older = "# Benchmarks\n\n## GEMM\n\nfigures\n";
        merged = BenchmarkDocument.Merge(older, Header, "AVX2", "## AVX2\n\nnew");
        Assert.That(merged, Does.Contain("Recorded before the report generator existed").And.Contain("### GEMM\n\nfigures"));
    }

    [Test]
    public void AnotherIsaFollowsTheStandardOnes()
    {
        string doc = BenchmarkDocument.Merge(null, Header, "Vector128", "## Vector128\n\nnew");
        var (sections, _) = BenchmarkDocument.Sections(doc);
        Assert.That(sections.Keys, Is.EqualTo(new[] { "AVX-512", "AVX2", "Vector128" }));
    }
}
