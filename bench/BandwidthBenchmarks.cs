using System.Reflection;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using DistAlign.Kernels.Cpu;

namespace DistAlign.Bench;

// Memory-bound CPU kernels, each measured against a plain copy that moves the same number of bytes in the
// same run (the copy's Baseline row). Run: dotnet run -c Release --project bench -- --filter '*Bandwidth*'
// GB/s = bytes per call (stated on each kernel, [BytesMoved]) / median time; "vs copy" = that / the copy's GB/s.
// Byte counts are the compulsory traffic of the op (each input read once, each output written once;
// an accumulated (+=) output counts as read + written). Sizes: N = 2048 tokens (B·T = 4·512), C = 768 (GPT-2 small).
// Note: at these sizes some working sets (≤ ~25 MB) partly fit the 32 MiB L3, for the copy as for the kernel.

/// <summary>Sizes shared by the bandwidth benchmarks.</summary>
internal static class BandwidthSizes
{
    public const int Tokens = 2048;
    public const int Channels = 768;
    public const long TokenChannels = (long)Tokens * Channels;
    public const long HiddenChannels = 4 * TokenChannels;          // GELU runs on the 4C MLP hidden layer
    public const int AdamWParameters = 16 * 1024 * 1024;            // 16M, not 124M, so a run stays short
    public const int LogitRows = 4 * 64;                            // B·T = 256
    public const int Vocabulary = 50257;
}

/// <summary>Bytes a benchmark method reads plus writes per call, for <see cref="BandwidthColumn"/>.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class BytesMovedAttribute(long bytes) : Attribute
{
    public long Bytes { get; } = bytes;
}

/// <summary>Two columns: GB/s of each row, and that as a fraction of the copy baseline's GB/s in the same class.</summary>
public sealed class BandwidthColumn(bool relativeToCopy) : RateColumn(relativeToCopy, 0)
{
    public override string Id => RelativeToBaseline ? "BandwidthVsCopy" : "BandwidthGBps";
    public override string ColumnName => RelativeToBaseline ? "vs copy" : "GB/s";
    public override string Legend => RelativeToBaseline
        ? "Kernel GB/s divided by the GB/s of a memory copy of the same bytes, same run"
        : "Bytes read + written per call (see [BytesMoved]) / median time";
    protected override double AmountPerCall(MethodInfo method) => method.GetCustomAttribute<BytesMovedAttribute>()?.Bytes ?? 0;
}

/// <summary>A short in-process job (a few minutes for all classes) plus the bandwidth columns.</summary>
public sealed class BandwidthConfig : ManualConfig
{
    public BandwidthConfig()
    {
        AddJob(Job.Default.WithToolchain(InProcessEmitToolchain.Instance)
            .WithLaunchCount(1).WithWarmupCount(3).WithIterationCount(9).WithId("Short"));
        AddColumn(new BandwidthColumn(false), new BandwidthColumn(true));
    }
}

/// <summary>
/// Base: a copy of <c>bytes/2</c> into <c>bytes/2</c>, i.e. the same bytes moved as the kernel, split over
/// the same threads as the kernels (CpuParallel.For, each range a Span.CopyTo), so the ratio compares
/// like with like. Note a copy's stores also cost a read-for-ownership of the destination lines, which
/// kernels that read-modify-write their outputs (AdamW, the += backwards) do not pay again: those can
/// exceed 1.0.
/// </summary>
public abstract class BandwidthBenchmark
{
    private float[] copySource = [], copyDestination = [];

    protected void SetUpCopy(long bytesMoved)
    {
        copySource = new float[bytesMoved / 8];
        copyDestination = new float[bytesMoved / 8];
        copySource.AsSpan().Fill(1f);
        copyDestination.AsSpan().Fill(0f);
    }

    protected void Copy()
    {
        float[] source = copySource, destination = copyDestination;
        CpuParallel.For(source.Length, 1 << 15, (start, end) =>
            source.AsSpan(start, end - start).CopyTo(destination.AsSpan(start, end - start)));
    }
}

[Config(typeof(BandwidthConfig))]
public class LayerNormForwardBandwidth : BandwidthBenchmark
{
    // Reads x [N, C], w, b [C]; writes out [N, C], mean, rstd [N].
    private const long Bytes = 4 * (2 * BandwidthSizes.TokenChannels + 2L * BandwidthSizes.Channels + 2L * BandwidthSizes.Tokens);
    private float[] x = [], w = [], b = [], o = [], mean = [], rstd = [];

    [GlobalSetup]
    public void Setup()
    {
        x = Filled(BandwidthSizes.TokenChannels); o = new float[x.Length];
        w = Filled(BandwidthSizes.Channels); b = Filled(BandwidthSizes.Channels);
        mean = new float[BandwidthSizes.Tokens]; rstd = new float[BandwidthSizes.Tokens];
        SetUpCopy(Bytes);
    }

    [Benchmark(Baseline = true), BytesMoved(Bytes)] public void MemoryCopy() => Copy();
    [Benchmark, BytesMoved(Bytes)] public void LayerNormForward() => LayerNorm.Forward(x, w, b, o, mean, rstd);

    internal static float[] Filled(long n)
    {
        var a = new float[n];
        var rng = new Random(1);
        for (int i = 0; i < a.Length; i++) a[i] = (float)(rng.NextDouble() * 2 - 1);
        return a;
    }
}

[Config(typeof(BandwidthConfig))]
public class LayerNormBackwardBandwidth : BandwidthBenchmark
{
    // Reads dout, x [N, C], w [C], mean, rstd [N]; dx [N, C] and dw, db [C] are read and written (+=).
    // (The kernel re-reads dout and x for the dw/db pass: its real traffic is 2·N·C·4 bytes more than counted.)
    private const long Bytes = 4 * (4 * BandwidthSizes.TokenChannels + 5L * BandwidthSizes.Channels + 2L * BandwidthSizes.Tokens);
    private float[] dout = [], x = [], w = [], mean = [], rstd = [], dx = [], dw = [], db = [];

    [GlobalSetup]
    public void Setup()
    {
        x = LayerNormForwardBandwidth.Filled(BandwidthSizes.TokenChannels);
        dout = LayerNormForwardBandwidth.Filled(BandwidthSizes.TokenChannels);
        w = LayerNormForwardBandwidth.Filled(BandwidthSizes.Channels);
        mean = new float[BandwidthSizes.Tokens]; rstd = new float[BandwidthSizes.Tokens];
        LayerNorm.Forward(x, w, w, new float[x.Length], mean, rstd);
        dx = new float[x.Length]; dw = new float[w.Length]; db = new float[w.Length];
        SetUpCopy(Bytes);
    }

    [Benchmark(Baseline = true), BytesMoved(Bytes)] public void MemoryCopy() => Copy();
    [Benchmark, BytesMoved(Bytes)] public void LayerNormBackward() => LayerNorm.Backward(dout, x, w, mean, rstd, dx, dw, db);
}

[Config(typeof(BandwidthConfig))]
public class GeluForwardBandwidth : BandwidthBenchmark
{
    // Reads x [N, 4C]; writes out [N, 4C].
    private const long Bytes = 4 * 2 * BandwidthSizes.HiddenChannels;
    private float[] x = [], o = [];

    [GlobalSetup]
    public void Setup()
    {
        x = LayerNormForwardBandwidth.Filled(BandwidthSizes.HiddenChannels);
        o = new float[x.Length];
        SetUpCopy(Bytes);
    }

    [Benchmark(Baseline = true), BytesMoved(Bytes)] public void MemoryCopy() => Copy();
    [Benchmark, BytesMoved(Bytes)] public void GeluForward() => Gelu.Forward(x, o);
}

[Config(typeof(BandwidthConfig))]
public class GeluBackwardBandwidth : BandwidthBenchmark
{
    // Reads dout, x [N, 4C]; dx [N, 4C] is read and written (+=).
    private const long Bytes = 4 * 4 * BandwidthSizes.HiddenChannels;
    private float[] dout = [], x = [], dx = [];

    [GlobalSetup]
    public void Setup()
    {
        x = LayerNormForwardBandwidth.Filled(BandwidthSizes.HiddenChannels);
        dout = LayerNormForwardBandwidth.Filled(BandwidthSizes.HiddenChannels);
        dx = new float[x.Length];
        SetUpCopy(Bytes);
    }

    [Benchmark(Baseline = true), BytesMoved(Bytes)] public void MemoryCopy() => Copy();
    [Benchmark, BytesMoved(Bytes)] public void GeluBackward() => Gelu.Backward(dout, x, dx);
}

[Config(typeof(BandwidthConfig))]
public class ResidualForwardBandwidth : BandwidthBenchmark
{
    // Reads a, b [N, C]; writes out [N, C].
    private const long Bytes = 4 * 3 * BandwidthSizes.TokenChannels;
    private float[] a = [], b = [], o = [];

    [GlobalSetup]
    public void Setup()
    {
        a = LayerNormForwardBandwidth.Filled(BandwidthSizes.TokenChannels);
        b = LayerNormForwardBandwidth.Filled(BandwidthSizes.TokenChannels);
        o = new float[a.Length];
        SetUpCopy(Bytes);
    }

    [Benchmark(Baseline = true), BytesMoved(Bytes)] public void MemoryCopy() => Copy();
    [Benchmark, BytesMoved(Bytes)] public void ResidualForward() => Residual.Forward(a, b, o);
}

[Config(typeof(BandwidthConfig))]
public class AdamWBandwidth : BandwidthBenchmark
{
    // Reads p, g, m, v; writes p, m, v: 28 bytes per parameter, over 16M parameters (448 MB per step).
    private const long Bytes = 4L * 7 * BandwidthSizes.AdamWParameters;
    private float[] p = [], g = [], m = [], v = [];

    [GlobalSetup]
    public void Setup()
    {
        p = LayerNormForwardBandwidth.Filled(BandwidthSizes.AdamWParameters);
        g = LayerNormForwardBandwidth.Filled(BandwidthSizes.AdamWParameters);
        m = new float[p.Length]; v = new float[p.Length];
        SetUpCopy(Bytes);
    }

    [Benchmark(Baseline = true), BytesMoved(Bytes)] public void MemoryCopy() => Copy();
    [Benchmark, BytesMoved(Bytes)] public void AdamWStep() => AdamW.Step(p, g, m, v, 10, 1e-4f, weightDecay: 0.1f);
}

[Config(typeof(BandwidthConfig))]
public class TargetLogProbsForwardBandwidth : BandwidthBenchmark
{
    // Reads logits [N, V] (N = 256, V = 50257: 51 MB) and targets [N]; writes logprob, logsumexp [N].
    private const long Bytes = 4L * BandwidthSizes.LogitRows * BandwidthSizes.Vocabulary + 4L * 3 * BandwidthSizes.LogitRows;
    private float[] logits = [], logProbs = [], logSumExp = [];
    private int[] targets = [];

    [GlobalSetup]
    public void Setup()
    {
        logits = LayerNormForwardBandwidth.Filled((long)BandwidthSizes.LogitRows * BandwidthSizes.Vocabulary);
        targets = Enumerable.Range(0, BandwidthSizes.LogitRows).Select(i => i * 197 % BandwidthSizes.Vocabulary).ToArray();
        logProbs = new float[BandwidthSizes.LogitRows]; logSumExp = new float[BandwidthSizes.LogitRows];
        SetUpCopy(Bytes);
    }

    [Benchmark(Baseline = true), BytesMoved(Bytes)] public void MemoryCopy() => Copy();
    [Benchmark, BytesMoved(Bytes)] public void TargetLogProbsForward() =>
        TargetLogProbs.Forward(logits, targets, BandwidthSizes.Vocabulary, logProbs, logSumExp);
}
