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
// an accumulated (+=) output counts as read + written). Sizes: C = 768 (GPT-2 small); the [N, C] kernels (LayerNorm,
// residual) run at two token counts: N = 8192 (B·T = 8·1024), whose working set (50–100 MB) is well past the 32 MiB L3,
// so kernel and copy stream from memory (what the ≥ 0.7 goal is about), and N = 2048 (B·T = 4·512), whose 12–25 MB
// stay in the L3, so the copy runs at cache bandwidth (shown as well: there these kernels are bound by their own loads
// and arithmetic, not by memory). The GELU hidden layer (N = 2048, 4C: 50–100 MB), AdamW (448 MB) and the 51 MB of
// logits come from memory.

/// <summary>Sizes shared by the bandwidth benchmarks.</summary>
internal static class BandwidthSizes
{
    public const int Tokens = 2048;
    public const int Channels = 768;
    public const long TokenChannels = (long)Tokens * Channels;
    public const long HiddenChannels = 4 * TokenChannels;          // GELU runs on the 4C MLP hidden layer
    public const int CachedTokens = 2048;                            // [N, C] working sets that fit the L3
    public const int StreamedTokens = 8192;                          // [N, C] working sets several times the L3
    public const int AdamWParameters = 16 * 1024 * 1024;            // 16M, not 124M, so a run stays short
    public const int LogitRows = 4 * 64;                            // B·T = 256
    public const int Vocabulary = 50257;
}

/// <summary>
/// Benchmark buffers that start on a 64-byte boundary, as every tensor in the engine's arenas does
/// (MemoryPlan.Alignment): a managed float[] starts 16 bytes into a line, so each Vector512 load and store
/// would straddle two cache lines, which costs the kernels about 20–30 % on this CPU and is not how the
/// model calls them. A pinned array is over-allocated and viewed from its first aligned element.
/// </summary>
internal static class AlignedBuffers
{
    public const int Alignment = 64;

    /// <summary>A zeroed, 64-byte aligned view of <paramref name="length"/> floats.</summary>
    public static unsafe ArraySegment<float> Zeros(long length)
    {
        var array = GC.AllocateArray<float>(checked((int)length + Alignment / sizeof(float)), pinned: true);
        fixed (float* p = array)
        {
            int offset = (int)((Alignment - (long)p % Alignment) % Alignment) / sizeof(float);
            return new ArraySegment<float>(array, offset, (int)length);
        }
    }

    /// <summary>As <see cref="Zeros"/>, filled with the same uniform values in [−1, 1) as <c>LayerNormForwardBandwidth.Filled</c>.</summary>
    public static ArraySegment<float> Filled(long length)
    {
        var view = Zeros(length);
        LayerNormForwardBandwidth.Filled(length).CopyTo(view.AsSpan());
        return view;
    }
}

/// <summary>
/// Bytes a benchmark method reads plus writes per call, for <see cref="BandwidthColumn"/>: <paramref name="bytes"/>, plus
/// <paramref name="bytesPerToken"/> × the case's <c>Tokens</c> parameter for the classes that run at several token counts.
/// </summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class BytesMovedAttribute(long bytes, long bytesPerToken = 0) : Attribute
{
    public long Bytes { get; } = bytes;
    public long BytesPerToken { get; } = bytesPerToken;

    /// <summary>The bytes of a call with <paramref name="tokens"/> tokens.</summary>
    public long For(int tokens) => Bytes + BytesPerToken * tokens;
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

    protected override double AmountPerCall(BenchmarkCase benchmarkCase)
    {
        var bytes = benchmarkCase.Descriptor.WorkloadMethod.GetCustomAttribute<BytesMovedAttribute>();
        if (bytes is null) return 0;
        return benchmarkCase.Parameters.Items.FirstOrDefault(p => p.Name == nameof(TokenBandwidthBenchmark.Tokens))?.Value is int tokens
            ? bytes.For(tokens) : bytes.Bytes;
    }
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
    private ArraySegment<float> copySource = [], copyDestination = [];

    protected void SetUpCopy(long bytesMoved)
    {
        copySource = AlignedBuffers.Zeros(bytesMoved / 8);
        copyDestination = AlignedBuffers.Zeros(bytesMoved / 8);
        copySource.AsSpan().Fill(1f);
    }

    protected void Copy()
    {
        ArraySegment<float> source = copySource, destination = copyDestination;
        CpuParallel.For(source.Count, 1 << 15, (start, end) =>
            source.AsSpan(start, end - start).CopyTo(destination.AsSpan(start, end - start)));
    }
}

/// <summary>A bandwidth benchmark over [N, C] tensors, run at a token count N that fits the L3 and at one that does not.</summary>
public abstract class TokenBandwidthBenchmark : BandwidthBenchmark
{
    [Params(BandwidthSizes.StreamedTokens, BandwidthSizes.CachedTokens)]
    public int Tokens { get; set; }

    /// <summary>N·C, the length of an [N, C] tensor.</summary>
    protected long TokenChannels => (long)Tokens * BandwidthSizes.Channels;

    /// <summary>The bytes the method <paramref name="name"/> states for this case's <see cref="Tokens"/>.</summary>
    protected long BytesOf(string name) => GetType().GetMethod(name)!.GetCustomAttribute<BytesMovedAttribute>()!.For(Tokens);
}

[Config(typeof(BandwidthConfig))]
public class LayerNormForwardBandwidth : TokenBandwidthBenchmark
{
    // Reads x [N, C], w, b [C]; writes out [N, C], mean, rstd [N].
    private const long FixedBytes = 4 * 2L * BandwidthSizes.Channels, BytesPerToken = 4 * (2L * BandwidthSizes.Channels + 2);
    private ArraySegment<float> x = [], w = [], b = [], o = [], mean = [], rstd = [];

    [GlobalSetup]
    public void Setup()
    {
        x = AlignedBuffers.Filled(TokenChannels); o = AlignedBuffers.Zeros(x.Count);
        w = AlignedBuffers.Filled(BandwidthSizes.Channels); b = AlignedBuffers.Filled(BandwidthSizes.Channels);
        mean = AlignedBuffers.Zeros(Tokens); rstd = AlignedBuffers.Zeros(Tokens);
        SetUpCopy(BytesOf(nameof(LayerNormForward)));
    }

    [Benchmark(Baseline = true), BytesMoved(FixedBytes, BytesPerToken)] public void MemoryCopy() => Copy();
    [Benchmark, BytesMoved(FixedBytes, BytesPerToken)] public void LayerNormForward() => LayerNorm.Forward(x, w, b, o, mean, rstd);

    internal static float[] Filled(long n)
    {
        var a = new float[n];
        var rng = new Random(1);
        for (int i = 0; i < a.Length; i++) a[i] = (float)(rng.NextDouble() * 2 - 1);
        return a;
    }
}

[Config(typeof(BandwidthConfig))]
public class LayerNormBackwardBandwidth : TokenBandwidthBenchmark
{
    // Reads dout, x [N, C], w [C], mean, rstd [N]; dx [N, C] and dw, db [C] are read and written (+=).
    // (One sweep: each row's dout and x are read from memory once and found in L1 by the second pass over the row.)
    private const long FixedBytes = 4 * 5L * BandwidthSizes.Channels, BytesPerToken = 4 * (4L * BandwidthSizes.Channels + 2);
    private ArraySegment<float> dout = [], x = [], w = [], mean = [], rstd = [], dx = [], dw = [], db = [];

    [GlobalSetup]
    public void Setup()
    {
        x = AlignedBuffers.Filled(TokenChannels);
        dout = AlignedBuffers.Filled(TokenChannels);
        w = AlignedBuffers.Filled(BandwidthSizes.Channels);
        mean = AlignedBuffers.Zeros(Tokens); rstd = AlignedBuffers.Zeros(Tokens);
        LayerNorm.Forward(x, w, w, AlignedBuffers.Zeros(x.Count), mean, rstd);
        dx = AlignedBuffers.Zeros(x.Count); dw = AlignedBuffers.Zeros(w.Count); db = AlignedBuffers.Zeros(w.Count);
        SetUpCopy(BytesOf(nameof(LayerNormBackward)));
    }

    [Benchmark(Baseline = true), BytesMoved(FixedBytes, BytesPerToken)] public void MemoryCopy() => Copy();
    [Benchmark, BytesMoved(FixedBytes, BytesPerToken)] public void LayerNormBackward() => LayerNorm.Backward(dout, x, w, mean, rstd, dx, dw, db);
}

[Config(typeof(BandwidthConfig))]
public class GeluForwardBandwidth : BandwidthBenchmark
{
    // Reads x [N, 4C]; writes out [N, 4C].
    private const long Bytes = 4 * 2 * BandwidthSizes.HiddenChannels;
    private ArraySegment<float> x = [], o = [];

    [GlobalSetup]
    public void Setup()
    {
        x = AlignedBuffers.Filled(BandwidthSizes.HiddenChannels);
        o = AlignedBuffers.Zeros(x.Count);
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
    private ArraySegment<float> dout = [], x = [], dx = [];

    [GlobalSetup]
    public void Setup()
    {
        x = AlignedBuffers.Filled(BandwidthSizes.HiddenChannels);
        dout = AlignedBuffers.Filled(BandwidthSizes.HiddenChannels);
        dx = AlignedBuffers.Zeros(x.Count);
        SetUpCopy(Bytes);
    }

    [Benchmark(Baseline = true), BytesMoved(Bytes)] public void MemoryCopy() => Copy();
    [Benchmark, BytesMoved(Bytes)] public void GeluBackward() => Gelu.Backward(dout, x, dx);
}

[Config(typeof(BandwidthConfig))]
public class ResidualForwardBandwidth : TokenBandwidthBenchmark
{
    // Reads a, b [N, C]; writes out [N, C].
    private const long BytesPerToken = 4 * 3L * BandwidthSizes.Channels;
    private ArraySegment<float> a = [], b = [], o = [];

    [GlobalSetup]
    public void Setup()
    {
        a = AlignedBuffers.Filled(TokenChannels);
        b = AlignedBuffers.Filled(TokenChannels);
        o = AlignedBuffers.Zeros(a.Count);
        SetUpCopy(BytesOf(nameof(ResidualForward)));
    }

    [Benchmark(Baseline = true), BytesMoved(0, BytesPerToken)] public void MemoryCopy() => Copy();
    [Benchmark, BytesMoved(0, BytesPerToken)] public void ResidualForward() => Residual.Forward(a, b, o);
}

[Config(typeof(BandwidthConfig))]
public class AdamWBandwidth : BandwidthBenchmark
{
    // Reads p, g, m, v; writes p, m, v: 28 bytes per parameter, over 16M parameters (448 MB per step).
    private const long Bytes = 4L * 7 * BandwidthSizes.AdamWParameters;
    private ArraySegment<float> p = [], g = [], m = [], v = [];

    [GlobalSetup]
    public void Setup()
    {
        p = AlignedBuffers.Filled(BandwidthSizes.AdamWParameters);
        g = AlignedBuffers.Filled(BandwidthSizes.AdamWParameters);
        m = AlignedBuffers.Zeros(p.Count); v = AlignedBuffers.Zeros(p.Count);
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
    private ArraySegment<float> logits = [], logProbs = [], logSumExp = [];
    private int[] targets = [];

    [GlobalSetup]
    public void Setup()
    {
        logits = AlignedBuffers.Filled((long)BandwidthSizes.LogitRows * BandwidthSizes.Vocabulary);
        targets = Enumerable.Range(0, BandwidthSizes.LogitRows).Select(i => i * 197 % BandwidthSizes.Vocabulary).ToArray();
        logProbs = AlignedBuffers.Zeros(BandwidthSizes.LogitRows); logSumExp = AlignedBuffers.Zeros(BandwidthSizes.LogitRows);
        SetUpCopy(Bytes);
    }

    [Benchmark(Baseline = true), BytesMoved(Bytes)] public void MemoryCopy() => Copy();
    [Benchmark, BytesMoved(Bytes)] public void TargetLogProbsForward() =>
        TargetLogProbs.Forward(logits, targets, BandwidthSizes.Vocabulary, logProbs, logSumExp);
}
