using System.Reflection;
using System.Runtime.Intrinsics;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Filters;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using DistAlign.Engine.Native;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Bench;

// Compute-bound CPU kernels, each measured against a compute limit timed in the same run (the class's
// Baseline row): attention against a register-resident FMA loop (the machine's fp32 peak as the JIT reaches
// it), the fused LM-head log-probs against OpenBLAS's sgemm of the same logits shape, TargetLogProbs'
// forward against the throughput of the same vector exp. Run (OPENBLAS_CORETYPE=SkylakeX only where the CPU has
// avx512f; elsewhere leave it unset — see OpenBlasCoreType):
//   OPENBLAS_CORETYPE=SkylakeX dotnet run -c Release --project bench -- --filter '*Compute*'
// Rate = work per call ([Work] on each method: FLOPs, or exps) / median time; "vs limit" = that / the
// baseline's rate.

/// <summary>Work one call of a benchmark method does (FLOPs, or exp evaluations), for <see cref="WorkRateColumn"/>.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class WorkAttribute(double amount) : Attribute
{
    public double Amount { get; } = amount;
}

/// <summary>Work per call / median time (10⁹ per second), or that divided by the class baseline's rate in the same run.</summary>
public sealed class WorkRateColumn(string unit, bool relativeToLimit) : RateColumn(relativeToLimit, 2)
{
    public override string Id => RelativeToBaseline ? "WorkVsLimit" : "WorkRate";
    public override string ColumnName => RelativeToBaseline ? "vs limit" : unit;
    public override string Legend => RelativeToBaseline
        ? $"{unit} of this row divided by the {unit} of the class's baseline (the limit) in the same run"
        : $"Work per call ([Work]) / median time, {unit}";
    protected override double AmountPerCall(MethodInfo method) => method.GetCustomAttribute<WorkAttribute>()?.Amount ?? 0;
}

/// <summary>Short in-process job with a GFLOP/s rate, GB/s where a method states its bytes, and the ratio to the limit.</summary>
public class FlopsConfig : ManualConfig
{
    public FlopsConfig() : this("GFLOP/s") { }

    protected FlopsConfig(string unit)
    {
        AddJob(Job.Default.WithToolchain(InProcessEmitToolchain.Instance)
            .WithLaunchCount(1).WithWarmupCount(3).WithIterationCount(9).WithId("Short"));
        AddColumn(StatisticColumn.Median, new WorkRateColumn(unit, false), new WorkRateColumn(unit, true), new BandwidthColumn(false));
        AddFilter(new SimpleFilter(bc => OpenBlas.IsAvailable || bc.Descriptor.WorkloadMethod.GetCustomAttribute<NeedsOpenBlasAttribute>() is null));
    }
}

/// <summary>As <see cref="FlopsConfig"/>, the rate in 10⁹ exp evaluations per second.</summary>
public sealed class ExpConfig : FlopsConfig
{
    public ExpConfig() : base("G exp/s") { }
}

/// <summary>A method that calls OpenBLAS: filtered out (its ratio column then reads NA) where the library is missing.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class NeedsOpenBlasAttribute : Attribute;

/// <summary>Sizes of the compute-bound suites.</summary>
internal static class ComputeSizes
{
    // Attention: one GPT-2-small layer at context 256, batch 4.
    public const int Batch = 4, SeqLen = 256, Heads = 12, Channels = 768;
    // Causal: each (b, h) has T(T+1)/2 allowed (t, s) pairs; the forward does two hs-long dot products per
    // pair (q·k and a·v), 2·hs FLOPs each: 2·B·C·T(T+1) in all. The backward does four (da = g·v, dv, dq,
    // dk): twice that. (The softmax's exps are not counted.)
    public const double AttentionForwardFlops = 2.0 * Batch * Channels * SeqLen * (SeqLen + 1);
    public const double AttentionBackwardFlops = 2 * AttentionForwardFlops;

    // Fused LM head + log-probs: N tokens, GPT-2's C and V. Forward = one logits GEMM (2·N·V·C); the
    // backward recomputes the logits and runs the two gradient GEMMs (3 × 2·N·V·C).
    public const int Tokens = 256, Vocabulary = 50257;
    public const double LogitsGemmFlops = 2.0 * Tokens * Vocabulary * Channels;
}

/// <summary>
/// Causal attention forward and backward (the register-blocked hs = 64 path) against the machine's fp32 FMA
/// peak: 8 independent FMA chains per thread of the widest vector .NET accelerates here (Vector512, or Vector256 in the
/// AVX2 view, <c>DOTNET_EnableAVX512=0</c>), nothing loaded, on the same threads.
/// </summary>
[Config(typeof(FlopsConfig))]
public class AttentionCompute
{
    /// <summary>Blocks of the peak loop (split over the threads), FMAs per chain per block.</summary>
    private const int PeakBlocks = 64, PeakIterations = 8192;
    private const double PeakFlops = (double)PeakBlocks * PeakIterations * 8 * 16 * 2;

    private float[] qkv = [], attention = [], output = [], dOutput = [], dQkv = [];
    private float peakSink;

    [GlobalSetup]
    public void Setup()
    {
        int tokens = ComputeSizes.Batch * ComputeSizes.SeqLen;
        qkv = LayerNormForwardBandwidth.Filled((long)tokens * 3 * ComputeSizes.Channels);
        attention = new float[(long)ComputeSizes.Batch * ComputeSizes.Heads * ComputeSizes.SeqLen * ComputeSizes.SeqLen];
        output = new float[(long)tokens * ComputeSizes.Channels];
        dOutput = LayerNormForwardBandwidth.Filled(output.Length);
        dQkv = new float[qkv.Length];
        Forward();
    }

    [Benchmark(Baseline = true), Work(PeakFlops)]
    public void FmaPeak()
    {
        float[] sums = new float[PeakBlocks];
        CpuParallel.For(PeakBlocks, 1, (b0, b1) =>
        {
            for (int b = b0; b < b1; b++) sums[b] = PeakBlock(b);
        });
        peakSink = sums.Sum();
    }

    /// <summary>
    /// 8 independent FMA chains (Zen 4 and Intel cores need ≥ 8 in flight to cover the latency on two pipes) of the widest
    /// accelerated vector: the same FLOPs per block at every width (twice the iterations at half the width), so
    /// <see cref="PeakFlops"/> holds. A Vector512 loop where Vector512 is not accelerated would time its software fallback.
    /// Below Vector512, MultiplyAddEstimate: one FMA where the CPU's FMA is enabled, a multiply and an add where it is not.
    /// </summary>
    private static float PeakBlock(int seed) =>
        Vector512.IsHardwareAccelerated ? PeakBlock<RegisterTile512, Vector512<float>, Vector512Lanes>(seed)
        : Vector256.IsHardwareAccelerated ? PeakBlock<RegisterTile256, Vector256<float>, Vector256Lanes>(seed)
        : Vector128.IsHardwareAccelerated ? PeakBlock<RegisterTile128, Vector128<float>, Vector128Lanes>(seed)
        : PeakBlock<RegisterTileScalar, float, ScalarLanes>(seed);

    /// <summary>Eight independent FMA chains, as many FLOPs per call at every width (16 / Count times the iterations).</summary>
    private static float PeakBlock<TTile, TVector, TLanes>(int seed)
        where TTile : IRegisterTile<TVector, TLanes> where TVector : unmanaged where TLanes : unmanaged, IFloatVector<TLanes>
    {
        var m = TTile.Broadcast(0.999f);
        var a = TTile.Broadcast(1e-3f * seed);
        var one = TTile.Broadcast(1f);
        TVector x0 = one, x1 = TTile.MultiplyAdd(one, one, a), x2 = TTile.MultiplyAdd(x1, one, a), x3 = TTile.MultiplyAdd(x2, one, a);
        TVector x4 = TTile.MultiplyAdd(x3, one, a), x5 = TTile.MultiplyAdd(x4, one, a), x6 = TTile.MultiplyAdd(x5, one, a), x7 = TTile.MultiplyAdd(x6, one, a);
        for (int i = 0; i < 16 / TTile.Count * PeakIterations; i++)
        {
            x0 = TTile.MultiplyAdd(x0, m, a); x1 = TTile.MultiplyAdd(x1, m, a);
            x2 = TTile.MultiplyAdd(x2, m, a); x3 = TTile.MultiplyAdd(x3, m, a);
            x4 = TTile.MultiplyAdd(x4, m, a); x5 = TTile.MultiplyAdd(x5, m, a);
            x6 = TTile.MultiplyAdd(x6, m, a); x7 = TTile.MultiplyAdd(x7, m, a);
        }
        TLanes sum = TTile.Lanes(x0) + TTile.Lanes(x1) + TTile.Lanes(x2) + TTile.Lanes(x3) + TTile.Lanes(x4) + TTile.Lanes(x5) + TTile.Lanes(x6) + TTile.Lanes(x7);
        return TLanes.Sum(sum);
    }

    [Benchmark, Work(ComputeSizes.AttentionForwardFlops)]
    public void Forward() =>
        Attention.Forward(qkv, [], ComputeSizes.Batch, ComputeSizes.SeqLen, ComputeSizes.Heads, attention, output);

    [Benchmark, Work(ComputeSizes.AttentionBackwardFlops)]
    public void Backward() =>
        Attention.Backward(dOutput, qkv, attention, output, ComputeSizes.Batch, ComputeSizes.SeqLen, ComputeSizes.Heads, dQkv);

    [GlobalCleanup]
    public void Cleanup() => GC.KeepAlive(peakSink);
}

/// <summary>
/// The fused LM head + log-probs (<see cref="SequenceLogProbs"/>: chunked logits GEMM, online log-sum-exp,
/// in-place d(logits) into the two gradient GEMMs) against OpenBLAS's sgemm of the same logits GEMM
/// (N × V × C, B transposed as the tied head is stored [V, C]), on the same threads. GB/s counts hidden and
/// the head read once (and, for the backward, dhidden and dhead read and written).
/// </summary>
[Config(typeof(FlopsConfig))]
public class SequenceLogProbsCompute
{
    private const long ForwardBytes = 4L * (ComputeSizes.Tokens * ComputeSizes.Channels + (long)ComputeSizes.Vocabulary * ComputeSizes.Channels + 3 * ComputeSizes.Tokens);
    private const long BackwardBytes = ForwardBytes + 4L * 2 * (ComputeSizes.Tokens * ComputeSizes.Channels + (long)ComputeSizes.Vocabulary * ComputeSizes.Channels);

    private float[] hidden = [], head = [], scratch = [], logProbs = [], logSumExp = [], dLogProbs = [], dHidden = [], dHead = [], logits = [];
    private int[] targets = [];

    [GlobalSetup]
    public void Setup()
    {
        int n = ComputeSizes.Tokens, c = ComputeSizes.Channels, v = ComputeSizes.Vocabulary;
        hidden = LayerNormForwardBandwidth.Filled((long)n * c);
        head = LayerNormForwardBandwidth.Filled((long)v * c);
        for (int i = 0; i < head.Length; i++) head[i] *= 0.05f;
        targets = Enumerable.Range(0, n).Select(i => i * 197 % v).ToArray();
        scratch = new float[SequenceLogProbs.ScratchLength(n, v)];
        logProbs = new float[n]; logSumExp = new float[n];
        dLogProbs = Enumerable.Repeat(-1f / n, n).ToArray();
        dHidden = new float[hidden.Length]; dHead = new float[head.Length];
        logits = new float[(long)n * v];
        if (OpenBlas.IsAvailable) OpenBlas.SetThreads(CpuParallel.Threads);
        Forward();
    }

    [Benchmark(Baseline = true), Work(ComputeSizes.LogitsGemmFlops), NeedsOpenBlas]
    public void OpenBlasLogitsGemm() =>
        OpenBlas.Sgemm(false, true, ComputeSizes.Tokens, ComputeSizes.Vocabulary, ComputeSizes.Channels, 1f,
            hidden, ComputeSizes.Channels, head, ComputeSizes.Channels, 0f, logits, ComputeSizes.Vocabulary);

    [Benchmark, Work(ComputeSizes.LogitsGemmFlops), BytesMoved(ForwardBytes)]
    public void Forward() =>
        SequenceLogProbs.Forward(hidden, head, targets, ComputeSizes.Channels, ComputeSizes.Vocabulary, scratch, logProbs, logSumExp, []);

    [Benchmark, Work(3 * ComputeSizes.LogitsGemmFlops), BytesMoved(BackwardBytes)]
    public void Backward() =>
        SequenceLogProbs.Backward(hidden, head, targets, ComputeSizes.Channels, ComputeSizes.Vocabulary, logSumExp, [], dLogProbs, [],
            scratch, dHidden, dHead);
}

/// <summary>
/// TargetLogProbs' forward does a vector exp per logit it reads (per vector: load, the chunk's running maxps, subtract, the
/// exp with the FMA that adds it): its limit is the throughput of the kernel's own Σ exp loop
/// (<see cref="TargetLogProbs.ChunkSumOfExps(float*, int, float, out float)"/>, the same instructions, the chunk's max included)
/// over as many elements of an L1-resident block, on the same threads: what the kernel would take if reading 51 MB were free
/// (and each row's first-chunk max pass). Work = exps per call (N·V).
/// </summary>
[Config(typeof(ExpConfig))]
public class TargetLogProbsExpCompute
{
    private const double Exps = (double)BandwidthSizes.LogitRows * BandwidthSizes.Vocabulary;
    private const int Block = 1024;
    private ArraySegment<float> logits = [];
    private float[] logProbs = [], logSumExp = [], block = [];
    private int[] targets = [];
    private float sink;

    [GlobalSetup]
    public void Setup()
    {
        logits = AlignedBuffers.Filled((long)BandwidthSizes.LogitRows * BandwidthSizes.Vocabulary);   // as the bandwidth suite's
        targets = Enumerable.Range(0, BandwidthSizes.LogitRows).Select(i => i * 197 % BandwidthSizes.Vocabulary).ToArray();
        logProbs = new float[BandwidthSizes.LogitRows]; logSumExp = new float[BandwidthSizes.LogitRows];
        block = LayerNormForwardBandwidth.Filled(Block).Select(x => x - 1f).ToArray();   // in [−2, 0)
    }

    [Benchmark(Baseline = true), Work(Exps)]
    public unsafe void ExpThroughput()
    {
        // As many exps as the kernel (V per row, rows the kernel's unit of parallel work), each row summing the
        // L1-resident block over and over with the kernel's own Σ exp loop (TargetLogProbs.ChunkSumOfExps, chunks of at
        // most Block): the exp, the sum and the loop's prefetches, but no memory traffic, no max pass, no log.
        float[] sums = new float[BandwidthSizes.LogitRows];
        fixed (float* pb = block)
        {
            float* xb = pb;
            CpuParallel.For(BandwidthSizes.LogitRows, 1, (r0, r1) =>
            {
                for (int r = r0; r < r1; r++)
                {
                    float sum = 0f;
                    for (int done = 0; done < BandwidthSizes.Vocabulary; done += Block)
                        sum += (float)TargetLogProbs.ChunkSumOfExps(xb, Math.Min(Block, BandwidthSizes.Vocabulary - done), 0f, out _);
                    sums[r] = sum;
                }
            });
        }
        sink = sums.Sum();
    }

    [Benchmark, Work(Exps)]
    public void TargetLogProbsForward() =>
        TargetLogProbs.Forward(logits, targets, BandwidthSizes.Vocabulary, logProbs, logSumExp);

    [GlobalCleanup]
    public void Cleanup() => GC.KeepAlive(sink);
}

/// <summary>As <see cref="FlopsConfig"/>, the rate in 10⁹ elements per second.</summary>
public sealed class ElementsConfig : FlopsConfig
{
    public ElementsConfig() : base("G elem/s") { }
}

/// <summary>
/// GELU on the MLP's hidden layer ([N, 4C] as the bandwidth suite's, from memory) against the same kernel over as many
/// elements of an L1-resident block per thread: what it would take if its loads and stores were free. A ratio near 1
/// says the kernel is bound by its arithmetic (an exp and a divide per element, ~20 vector operations), not by memory,
/// so its ratio to a memory copy in the bandwidth table is set by the core's floating-point throughput.
/// </summary>
public abstract class GeluCompute
{
    private const int Block = 2048;   // in + out: 16 KB per thread, in L1
    protected const double Elements = BandwidthSizes.HiddenChannels;
    protected ArraySegment<float> x = [], o = [];
    private float[][] blocks = [], outs = [];

    [GlobalSetup]
    public void Setup()
    {
        x = AlignedBuffers.Filled(BandwidthSizes.HiddenChannels);
        o = AlignedBuffers.Zeros(x.Count);
        SetUpKernelInputs();
        blocks = [.. Enumerable.Range(0, CpuParallel.Threads).Select(_ => LayerNormForwardBandwidth.Filled(Block))];
        outs = [.. Enumerable.Range(0, CpuParallel.Threads).Select(_ => new float[Block])];
    }

    /// <summary>Inputs one direction needs beyond x and o (the backward's dout).</summary>
    protected virtual void SetUpKernelInputs() { }

    /// <summary>Runs <paramref name="kernel"/>(block, out) on each thread's L1-resident block until the threads together did <see cref="Elements"/>.</summary>
    protected void InL1(Action<float[], float[]> kernel)
    {
        int threads = blocks.Length;
        long perThread = (long)Elements / threads / Block;
        CpuParallel.For(threads, 1, (t0, t1) =>
        {
            for (int t = t0; t < t1; t++)
                for (long rep = 0; rep < perThread; rep++) kernel(blocks[t], outs[t]);   // one block per call: below Gelu's parallel grain, runs on this thread
        });
    }
}

[Config(typeof(ElementsConfig))]
public class GeluForwardCompute : GeluCompute
{
    [Benchmark(Baseline = true), Work(Elements)] public void GeluForwardInL1() => InL1((input, output) => Gelu.Forward(input, output));
    [Benchmark, Work(Elements), BytesMoved(4 * 2 * BandwidthSizes.HiddenChannels)] public void GeluForward() => Gelu.Forward(x, o);
}

[Config(typeof(ElementsConfig))]
public class GeluBackwardCompute : GeluCompute
{
    private ArraySegment<float> dout = [];

    protected override void SetUpKernelInputs() => dout = AlignedBuffers.Filled(BandwidthSizes.HiddenChannels);

    [Benchmark(Baseline = true), Work(Elements)] public void GeluBackwardInL1() => InL1((input, dInput) => Gelu.Backward(input, input, dInput));
    [Benchmark, Work(Elements), BytesMoved(4 * 4 * BandwidthSizes.HiddenChannels)] public void GeluBackward() => Gelu.Backward(dout, x, o);
}

/// <summary>
/// The Bradley–Terry pairwise loss (DPO sigmoid, forward + gradient) against the transcendental work it cannot avoid,
/// measured in the same run: per pair a softplus and a sigmoid are two fp64 exps and one fp64 log, so the limit
/// (<see cref="ExpLogThroughput"/>) evaluates exactly that — 2 Math.Exp and 1 Math.Log per pair, on the same
/// threads, over the same number of pairs, with nothing else. Bytes are not the point (a pair reads 24 bytes and does
/// ~40 ns of math), which is why this is not in the bandwidth table. Rates in millions of pairs per second. The kernel
/// walks the pairs on one thread in fp64 (training sees 8–64 pairs a step: microseconds), the limit on all of them.
/// </summary>
[Config(typeof(PairsConfig))]
public class BradleyTerryLossCompute
{
    private const int Pairs = 1 << 18;
    private const double MillionPairs = 1000.0 * Pairs;   // [Work] per call, so the rate column reads 10⁶ pairs per second
    private float[] logps = [], refLogps = [], losses = [], dLogps = [];
    private double[] margins = [];
    private int[] chosen = [], rejected = [];
    private double sink;

    [GlobalSetup]
    public void Setup()
    {
        logps = LayerNormForwardBandwidth.Filled(2 * Pairs).Select(x => x * 40f - 60f).ToArray();
        refLogps = LayerNormForwardBandwidth.Filled(2 * Pairs).Select(x => x * 40f - 61f).ToArray();
        chosen = Enumerable.Range(0, Pairs).Select(i => 2 * i).ToArray();
        rejected = Enumerable.Range(0, Pairs).Select(i => 2 * i + 1).ToArray();
        losses = new float[Pairs];
        dLogps = new float[2 * Pairs];
        margins = Enumerable.Range(0, Pairs).Select(i => 0.1 * ((logps[2 * i] - refLogps[2 * i]) - (logps[2 * i + 1] - refLogps[2 * i + 1]))).ToArray();
    }

    [Benchmark(Baseline = true), Work(MillionPairs)]
    public void ExpLogThroughput()
    {
        var partial = new double[CpuParallel.Threads];
        int chunk = (Pairs + partial.Length - 1) / partial.Length;
        CpuParallel.For(partial.Length, 1, (t0, t1) =>
        {
            for (int t = t0; t < t1; t++)
            {
                double acc = 0;
                for (int i = t * chunk; i < Math.Min(Pairs, (t + 1) * chunk); i++)
                {
                    double z = margins[i], e = Math.Exp(-Math.Abs(z));
                    acc += Math.Log(1.0 + e) + Math.Exp(-Math.Abs(z) - 1.0);   // 2 exp + 1 log per pair, as softplus + sigmoid
                }
                partial[t] = acc;
            }
        });
        sink = partial.Sum();
    }

    [Benchmark, Work(MillionPairs)]
    public void DpoSigmoidForwardBackward() =>
        PairwiseBradleyTerryLoss.ForwardBackward(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: 0.1),
            new PairwiseLossBatch { Logps = logps, RefLogps = refLogps, Chosen = chosen, Rejected = rejected }, losses, dLogps, []);
}

/// <summary>As <see cref="FlopsConfig"/>, the rate in 10⁶ pairs per second.</summary>
public sealed class PairsConfig : FlopsConfig
{
    public PairsConfig() : base("M pairs/s") { }
}
