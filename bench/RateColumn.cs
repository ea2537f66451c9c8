using System.Reflection;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace DistAlign.Bench;

/// <summary>
/// A column of (amount per call / median time), the amount read off an attribute of the benchmark method (bytes, FLOPs,
/// exps) — or, <paramref name="relativeToBaseline"/>, that rate divided by the same rate of the class's Baseline row
/// with the same parameters in the same run (the copy, or the compute limit). Rows without the attribute show NA.
/// </summary>
public abstract class RateColumn(bool relativeToBaseline, int priority) : IColumn
{
    public abstract string Id { get; }
    public abstract string ColumnName { get; }
    public abstract string Legend { get; }
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => priority + (relativeToBaseline ? 1 : 0);
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    protected bool RelativeToBaseline => relativeToBaseline;

    /// <summary>The amount one call of <paramref name="method"/> does (0 when not stated).</summary>
    protected abstract double AmountPerCall(MethodInfo method);

    /// <summary>The amount one call of a case does: <see cref="AmountPerCall(MethodInfo)"/> unless a column needs the case's parameters.</summary>
    protected virtual double AmountPerCall(BenchmarkCase benchmarkCase) => AmountPerCall(benchmarkCase.Descriptor.WorkloadMethod);

    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style) => GetValue(summary, benchmarkCase);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase)
    {
        double? rate = Rate(summary, benchmarkCase);
        if (rate is null) return "NA";
        if (!relativeToBaseline) return rate.Value.ToString("F1");
        var baseline = summary.BenchmarksCases.FirstOrDefault(c =>
            c.Descriptor.Type == benchmarkCase.Descriptor.Type && c.Descriptor.Baseline &&
            c.Parameters.DisplayInfo == benchmarkCase.Parameters.DisplayInfo);
        double? baselineRate = baseline is null ? null : Rate(summary, baseline);
        return baselineRate is null or 0 ? "NA" : (rate.Value / baselineRate.Value).ToString("F2");
    }

    private double? Rate(Summary summary, BenchmarkCase benchmarkCase)
    {
        var stats = summary[benchmarkCase]?.ResultStatistics;
        double amount = AmountPerCall(benchmarkCase);
        if (stats is null || amount == 0) return null;
        return amount / stats.Median;   // per nanosecond = 10⁹ per second (bytes: GB/s)
    }

    public override string ToString() => ColumnName;
}
