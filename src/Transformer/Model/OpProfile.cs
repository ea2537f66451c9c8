using System.Diagnostics;

namespace DistAlign.Transformer.Model;

/// <summary>
/// Wall time per kind of op, accumulated over the calls a model makes while it is attached (the
/// per-op breakdown of the step benchmark). <see cref="Lap"/> charges the time since the previous lap
/// to an op; a lap costs two timestamp reads, so leaving a profile attached does not skew the step.
/// </summary>
public sealed class OpProfile
{
    private readonly Dictionary<string, long> ticks = new(StringComparer.Ordinal);
    private long last = Stopwatch.GetTimestamp();

    /// <summary>Starts a new lap without charging the time since the last one to anything.</summary>
    public void Restart() => last = Stopwatch.GetTimestamp();

    /// <summary>Charges the time since the previous lap (or <see cref="Restart"/>) to <paramref name="op"/>.</summary>
    public void Lap(string op)
    {
        long now = Stopwatch.GetTimestamp();
        ticks[op] = ticks.GetValueOrDefault(op) + (now - last);
        last = now;
    }

    /// <summary>Adds time measured elsewhere (e.g. the optimizer step) to <paramref name="op"/>.</summary>
    public void Charge(string op, double milliseconds) =>
        ticks[op] = ticks.GetValueOrDefault(op) + (long)(milliseconds * Stopwatch.Frequency / 1000.0);

    public void Clear() => ticks.Clear();

    /// <summary>Milliseconds per op, largest first.</summary>
    public IReadOnlyList<(string Op, double Milliseconds)> Totals() =>
        ticks.Select(kv => (kv.Key, kv.Value * 1000.0 / Stopwatch.Frequency)).OrderByDescending(x => x.Item2).ToList();
}
