using System.Diagnostics;
using FsCheck;
using Microsoft.FSharp.Core;

namespace DistAlign.Tests.Reliability;

/// <summary>
/// Runs one parser on many inputs and enforces the contract of issue #10: every input gives a result or one of the
/// parser's documented exceptions (anything else fails, with the input); no input takes longer than
/// <see cref="SlowInput"/> (a hang shows up as a failure, not as a stuck suite); and the bytes allocated while handling
/// an input stay below <see cref="AllocationAllowance"/> + <see cref="AllocationPerInputByte"/> × its length, so a
/// size or count read from the file can never make the parser allocate in proportion to it.
/// </summary>
internal sealed class FuzzHarness(string name, Func<Exception, string?> documentedRule, long allocationAllowance = FuzzHarness.AllocationAllowance)
{
    /// <summary>Default fixed allowance per input for parser state (dictionaries, JSON reader buffers, strings).</summary>
    public const long AllocationAllowance = 256 * 1024;
    /// <summary>Allowed allocation per input byte (UTF-16 strings, lists, tensors widened to float).</summary>
    public const long AllocationPerInputByte = 64;
    public static readonly TimeSpan SlowInput = TimeSpan.FromSeconds(5);

    private readonly Dictionary<string, int> outcomes = new(StringComparer.Ordinal);
    private readonly Stopwatch clock = new();
    private long maxAllocated;
    private int maxAllocatedInputLength;
    private double slowestMs;

    public int Inputs { get; private set; }
    public int Accepted { get; private set; }
    public int Rejected => Inputs - Accepted;
    public IReadOnlyDictionary<string, int> Outcomes => outcomes;

    /// <summary>Runs <paramref name="parse"/> on <paramref name="input"/> and checks the contract.</summary>
    public void Check(byte[] input, Action<byte[]> parse, string? describe = null)
    {
        Inputs++;
        var watch = Stopwatch.StartNew();
        long before = GC.GetAllocatedBytesForCurrentThread();
        string outcome;
        clock.Start();
        try
        {
            parse(input);
            Accepted++;
            outcome = "accepted";
        }
        catch (Exception e)
        {
            outcome = documentedRule(e) ?? throw new AssertionException(
                $"{name}: {e.GetType().Name} is not a documented outcome for input {describe ?? Show(input)}\n{e}");
        }
        finally
        {
            clock.Stop();
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        double ms = watch.Elapsed.TotalMilliseconds;
        outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + 1;
        if (allocated > maxAllocated)
        {
            maxAllocated = allocated;
            maxAllocatedInputLength = input.Length;
        }
        slowestMs = Math.Max(slowestMs, ms);
        long bound = allocationAllowance + AllocationPerInputByte * input.Length;
        if (allocated > bound)
            throw new AssertionException($"{name}: {allocated:N0} bytes allocated for a {input.Length:N0}-byte input (bound {bound:N0}; outcome {outcome}): {describe ?? Show(input)}");
        if (watch.Elapsed > SlowInput)
            throw new AssertionException($"{name}: {ms:F0} ms for one {input.Length:N0}-byte input (outcome {outcome}): {describe ?? Show(input)}");
    }

    /// <summary>One line for the test log and docs/reliability.md.</summary>
    public string Summary() => (
        $"{name}: {Inputs:N0} inputs in {clock.Elapsed.TotalSeconds:F1} s, {Accepted:N0} accepted, {Rejected:N0} rejected; " +
        $"most allocated {maxAllocated:N0} B (input of {maxAllocatedInputLength:N0} B), slowest input {slowestMs:F1} ms; outcomes: " +
        string.Join(", ", outcomes.OrderByDescending(kv => kv.Value).Select(kv => $"{kv.Key} {kv.Value}")));

    public static string Show(byte[] input) =>
        input.Length <= 512 ? Convert.ToHexString(input) : Convert.ToHexString(input, 0, 512) + $"… ({input.Length} bytes)";
}

/// <summary>How many inputs a fuzz test tries: a fixed count in the suite, more for the documented long run.</summary>
internal static class FuzzBudget
{
    /// <summary>Inputs per long-run test: <c>DISTALIGN_FUZZ_INPUTS</c> (default 200,000).</summary>
    public static int LongInputs => int.TryParse(Environment.GetEnvironmentVariable("DISTALIGN_FUZZ_INPUTS"), out int n) && n > 0 ? n : 200_000;

    /// <summary>Seed of the long run: <c>DISTALIGN_FUZZ_SEED</c> (default: a fresh one, printed so a failure can be replayed).</summary>
    public static int LongSeed => int.TryParse(Environment.GetEnvironmentVariable("DISTALIGN_FUZZ_SEED"), out int s) ? s : Environment.TickCount;

    /// <summary>An FsCheck configuration that runs <paramref name="count"/> cases from a fixed seed and throws on failure.</summary>
    public static Config FsCheckConfig(int count, int seed) =>
        Config.QuickThrowOnFailure.WithMaxTest(count).WithQuietOnSuccess(true).WithEndSize(64)
            .WithReplay(FSharpOption<Replay>.Some(new Replay(new Rnd((ulong)seed, 0x9E3779B97F4A7C15UL), FSharpOption<int>.None)));
}
