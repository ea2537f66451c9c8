using System.Reflection;
using DistAlign.Kernels.Cpu;
using ILGPU;
using ILGPU.Runtime;

// ILGPU generates its kernel launchers in a dynamic assembly named ILGPURuntime; it must see the internal
// kernel argument types (PairViews, PairwiseLossConstants). InternalsVisibleTo allows repeats, so another
// file declaring the same is harmless.
[assembly: System.Runtime.CompilerServices.InternalsVisibleTo("ILGPURuntime")]

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// Device views of the inputs of <see cref="GpuPairwiseBradleyTerryLoss"/>, with the meaning and shapes of
/// <see cref="PairwiseLossBatch"/>. Views a variant does not read may be left empty (default).
/// </summary>
public readonly struct GpuPairwiseLossBatch
{
    /// <summary>ln π per sequence [S]; every variant but the reward model.</summary>
    public ArrayView<float> Logps { get; init; }
    /// <summary>Reference (DPO family, IPO) or anchor (REBEL) log-probs [S].</summary>
    public ArrayView<float> RefLogps { get; init; }
    /// <summary>Response-token counts [S], each ≥ 1 (IPO).</summary>
    public ArrayView<int> TokenCounts { get; init; }
    /// <summary>Rewards [S]: REBEL's R̂, or the reward model's scores (differentiated into dRewards).</summary>
    public ArrayView<float> Rewards { get; init; }
    /// <summary>Chosen (a₁) sequence index per pair [P].</summary>
    public ArrayView<int> Chosen { get; init; }
    /// <summary>Rejected (a₂) sequence index per pair [P].</summary>
    public ArrayView<int> Rejected { get; init; }
    /// <summary>Soft labels p ∈ [0, 1] per pair [P] (distillation).</summary>
    public ArrayView<float> Labels { get; init; }
}

/// <summary>
/// The pairwise Bradley–Terry loss family of <see cref="PairwiseBradleyTerryLoss"/> (same contract, same math,
/// same metrics) on ILGPU views. Three kernels, all deterministic and free of float atomics:
/// <list type="number">
/// <item>per pair (one thread each): validates the pair, evaluates it in fp64 with the CPU kernel's own
/// per-pair code (<c>PairwiseBradleyTerryMath</c>), writes the fp32 loss, the fp32 gradient contributions
/// (∂L_pair/∂x)/P for the two sequences, and the pair's fp64 metric contributions;</item>
/// <item>per metric (one thread each): sums its contributions over the pairs in pair order, in fp64;</item>
/// <item>per sequence (one thread each, after the host has checked the validation flags): walks the pairs in
/// order and adds the contributions that name it — chosen first, then rejected — to its gradient entry,
/// the same fp32 additions in the same order as the CPU kernel (O(S·P) work; P is at most thousands).</item>
/// </list>
/// On ILGPU's CPU accelerator the results are bit-identical to the CPU kernel. On a CUDA device the fp64
/// exp/log are ILGPU's own device implementations, so values may differ from the CPU's in the last fp64 bits
/// (fp32 outputs within an ulp or so).
/// Invalid indices, labels outside [0, 1] and token counts below 1 are found on the device and reported as
/// <see cref="ArgumentException"/>s before any gradient is written (pair losses of that call are then
/// unspecified). Holds scratch buffers grown to the largest P seen; not thread-safe.
/// </summary>
public sealed class GpuPairwiseBradleyTerryLoss : IDisposable
{
    /// <summary>Validation flag slots: each holds the smallest failing pair index, or int.MaxValue.</summary>
    private const int ErrorChosen = 0, ErrorRejected = 1, ErrorLabel = 2, ErrorTokens = 3, ErrorCount = 4;

    /// <summary>Which inputs the per-pair kernel reads (from the settings).</summary>
    private const int ReadsLogps = 1, ReadsReference = 2, ReadsTokens = 4, ReadsRewards = 8, ReadsLabels = 16;

    /// <summary>The views the per-pair kernel reads and writes.</summary>
    internal struct PairViews
    {
        public ArrayView<float> Logps, RefLogps, Rewards, Labels;
        public ArrayView<int> TokenCounts, Chosen, Rejected;
        public ArrayView<float> PairLosses, GradChosen, GradRejected;
        public ArrayView<double> MetricRows;
        public ArrayView<int> Errors;
        public int Sequences;
        public int Reads;
        public double InvPairs;
    }

    private readonly Accelerator accelerator;
    private readonly Action<Index1D, PairViews, PairwiseLossConstants> pairKernel;
    private readonly Action<Index1D, ArrayView<double>, int, ArrayView<double>> reduceKernel;
    private readonly Action<Index1D, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, ArrayView<float>> scatterKernel;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> dummyFloat;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> dummyInt;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> errors;
    private readonly MemoryBuffer1D<double, Stride1D.Dense> sums;
    private readonly int[] hostErrors = new int[ErrorCount];
    private readonly int[] noErrors = [int.MaxValue, int.MaxValue, int.MaxValue, int.MaxValue];
    private readonly double[] hostSums = new double[PairwiseLossSlot.Count];
    private MemoryBuffer1D<float, Stride1D.Dense>? gradChosen, gradRejected;
    private MemoryBuffer1D<double, Stride1D.Dense>? metricRows;
    private int capacity;

    /// <summary>Compiles (loads) the three kernels on <paramref name="accelerator"/> and allocates the small fixed buffers.</summary>
    public GpuPairwiseBradleyTerryLoss(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        pairKernel = accelerator.LoadAutoGroupedStreamKernel<Index1D, PairViews, PairwiseLossConstants>(PairKernel);
        reduceKernel = accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<double>, int, ArrayView<double>>(ReduceKernel);
        scatterKernel = accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, ArrayView<float>>(ScatterKernel);
        dummyFloat = accelerator.Allocate1D<float>(1);
        dummyInt = accelerator.Allocate1D<int>(1);
        errors = accelerator.Allocate1D<int>(ErrorCount);
        sums = accelerator.Allocate1D<double>(PairwiseLossSlot.Count);
    }

    /// <summary>The kernel methods, for compile-only checks (PTX for sm_90 without a GPU).</summary>
    internal static IEnumerable<MethodInfo> KernelMethods()
    {
        const BindingFlags flags = BindingFlags.NonPublic | BindingFlags.Static;
        yield return typeof(GpuPairwiseBradleyTerryLoss).GetMethod(nameof(PairKernel), flags)!;
        yield return typeof(GpuPairwiseBradleyTerryLoss).GetMethod(nameof(ReduceKernel), flags)!;
        yield return typeof(GpuPairwiseBradleyTerryLoss).GetMethod(nameof(ScatterKernel), flags)!;
    }

    /// <summary>Per-pair losses and metrics; nothing is differentiated. See <see cref="PairwiseBradleyTerryLoss.Forward"/>.</summary>
    public PairwiseLossMetrics Forward(in PairwiseLossSettings settings, in GpuPairwiseLossBatch batch, ArrayView<float> pairLosses)
        => Run(settings, batch, pairLosses, default, default, withGradient: false);

    /// <summary>
    /// Per-pair losses, metrics, and += ∂(mean loss)/∂(per-sequence input) into <paramref name="dLogps"/> (or
    /// <paramref name="dRewards"/> for the reward model). See <see cref="PairwiseBradleyTerryLoss.ForwardBackward"/>.
    /// Returns once the metrics are on the host; the gradient scatter is queued on the accelerator's default
    /// stream after them.
    /// </summary>
    public PairwiseLossMetrics ForwardBackward(in PairwiseLossSettings settings, in GpuPairwiseLossBatch batch,
                                               ArrayView<float> pairLosses, ArrayView<float> dLogps, ArrayView<float> dRewards)
        => Run(settings, batch, pairLosses, dLogps, dRewards, withGradient: true);

    private PairwiseLossMetrics Run(in PairwiseLossSettings settings, in GpuPairwiseLossBatch batch,
                                    ArrayView<float> pairLosses, ArrayView<float> dLogps, ArrayView<float> dRewards, bool withGradient)
    {
        settings.Validate();
        int pairs = CheckedLength(batch.Chosen.Length, "chosen");
        Require(batch.Rejected.Length, pairs, "rejected", "[P], one per chosen index");
        int sequences = CheckedLength(settings.UsesLogps ? batch.Logps.Length : batch.Rewards.Length, settings.UsesLogps ? "logps" : "rewards");
        int reads = 0;
        if (settings.UsesLogps) reads |= ReadsLogps;
        if (settings.UsesReference) { Require(batch.RefLogps.Length, sequences, "refLogps", $"[S] reference log-probs, required by {settings.Variant}"); reads |= ReadsReference; }
        if (settings.UsesRewards) { Require(batch.Rewards.Length, sequences, "rewards", $"[S] rewards, required by {settings.Variant}"); reads |= ReadsRewards; }
        if (settings.Variant == PairwiseLossVariant.Ipo) { Require(batch.TokenCounts.Length, sequences, "tokenCounts", "[S] response-token counts, required by IPO"); reads |= ReadsTokens; }
        if (settings.Variant == PairwiseLossVariant.Distillation) { Require(batch.Labels.Length, pairs, "labels", "[P] soft labels, required by distillation"); reads |= ReadsLabels; }
        Require(pairLosses.Length, pairs, nameof(pairLosses), "[P]");
        ArrayView<float> gradient = default;
        if (withGradient)
        {
            gradient = settings.DifferentiatesRewards ? dRewards : dLogps;
            Require(gradient.Length, sequences, settings.DifferentiatesRewards ? nameof(dRewards) : nameof(dLogps), "[S]");
        }
        if (pairs == 0) return PairwiseLossMetrics.FromSums(settings.Variant, 0, hostSums);

        EnsureCapacity(pairs);
        var views = new PairViews
        {
            Logps = OrDummy(batch.Logps), RefLogps = OrDummy(batch.RefLogps), Rewards = OrDummy(batch.Rewards),
            Labels = OrDummy(batch.Labels), TokenCounts = OrDummy(batch.TokenCounts),
            Chosen = batch.Chosen, Rejected = batch.Rejected, PairLosses = pairLosses,
            GradChosen = gradChosen!.View.SubView(0, pairs), GradRejected = gradRejected!.View.SubView(0, pairs),
            MetricRows = metricRows!.View.SubView(0, (long)pairs * PairwiseLossSlot.Count),
            Errors = errors.View, Sequences = sequences, Reads = reads, InvPairs = 1.0 / pairs,
        };
        errors.View.CopyFromCPU(noErrors);
        pairKernel(pairs, views, PairwiseLossConstants.From(settings));
        reduceKernel(PairwiseLossSlot.Count, views.MetricRows, pairs, sums.View);
        errors.View.CopyToCPU(hostErrors);
        sums.View.CopyToCPU(hostSums);
        ThrowOnInvalidPair();
        if (withGradient)
            scatterKernel(sequences, batch.Chosen, batch.Rejected, views.GradChosen, views.GradRejected, pairs, gradient);
        return PairwiseLossMetrics.FromSums(settings.Variant, pairs, hostSums);
    }

    private void ThrowOnInvalidPair()
    {
        if (hostErrors[ErrorChosen] != int.MaxValue)
            throw new ArgumentOutOfRangeException("chosen", $"Pair {hostErrors[ErrorChosen]}: the chosen index is outside the sequences [0, S).");
        if (hostErrors[ErrorRejected] != int.MaxValue)
            throw new ArgumentOutOfRangeException("rejected", $"Pair {hostErrors[ErrorRejected]}: the rejected index is outside the sequences [0, S).");
        if (hostErrors[ErrorLabel] != int.MaxValue)
            throw new ArgumentOutOfRangeException("labels", $"Pair {hostErrors[ErrorLabel]} has a soft label outside [0, 1] (or NaN); a probability must lie in [0, 1].");
        if (hostErrors[ErrorTokens] != int.MaxValue)
            throw new ArgumentOutOfRangeException("tokenCounts", $"Pair {hostErrors[ErrorTokens]} names a sequence whose token count is below 1; IPO divides by it.");
    }

    private ArrayView<float> OrDummy(ArrayView<float> view) => view.Length > 0 ? view : dummyFloat.View;
    private ArrayView<int> OrDummy(ArrayView<int> view) => view.Length > 0 ? view : dummyInt.View;

    private void EnsureCapacity(int pairs)
    {
        if (pairs <= this.capacity) return;
        int capacity = Math.Max(pairs, 2 * this.capacity);
        gradChosen?.Dispose();
        gradRejected?.Dispose();
        metricRows?.Dispose();
        gradChosen = accelerator.Allocate1D<float>(capacity);
        gradRejected = accelerator.Allocate1D<float>(capacity);
        metricRows = accelerator.Allocate1D<double>((long)capacity * PairwiseLossSlot.Count);
        this.capacity = capacity;
    }

    private static int CheckedLength(long length, string name)
    {
        if (length > int.MaxValue)
            throw new ArgumentException($"{name} has {length} elements; at most {int.MaxValue} are supported.", name);
        return (int)length;
    }

    private static void Require(long actual, long expected, string name, string shape)
    {
        if (actual != expected)
            throw new ArgumentException($"{name} has {actual} elements but the op needs {expected} ({shape}).", name);
    }

    /// <summary>One thread per pair: validate, evaluate in fp64, write loss, scaled gradient contributions and metric contributions.</summary>
    [GpuKernel(false)]
    internal static void PairKernel(Index1D pair, PairViews v, PairwiseLossConstants k)
    {
        int i = pair;
        int c = v.Chosen[i], r = v.Rejected[i];
        bool bad = false;
        if ((uint)c >= (uint)v.Sequences) { Atomic.Min(ref v.Errors[ErrorChosen], i); bad = true; }
        if ((uint)r >= (uint)v.Sequences) { Atomic.Min(ref v.Errors[ErrorRejected], i); bad = true; }
        double label = 0.0;
        if ((v.Reads & ReadsLabels) != 0)
        {
            label = v.Labels[i];
            if (!(label >= 0.0 && label <= 1.0)) { Atomic.Min(ref v.Errors[ErrorLabel], i); bad = true; }
        }
        double nC = 1.0, nR = 1.0;
        if (!bad && (v.Reads & ReadsTokens) != 0)
        {
            nC = v.TokenCounts[c];
            nR = v.TokenCounts[r];
            if (nC < 1.0 || nR < 1.0) { Atomic.Min(ref v.Errors[ErrorTokens], i); bad = true; }
        }
        long row = (long)i * PairwiseLossSlot.Count;
        if (bad)
        {
            v.PairLosses[i] = 0f;
            v.GradChosen[i] = 0f;
            v.GradRejected[i] = 0f;
            for (int slot = 0; slot < PairwiseLossSlot.Count; slot++) v.MetricRows[row + slot] = 0.0;
            return;
        }
        double logpC = 0.0, logpR = 0.0, refC = 0.0, refR = 0.0, rewC = 0.0, rewR = 0.0;
        if ((v.Reads & ReadsLogps) != 0) { logpC = v.Logps[c]; logpR = v.Logps[r]; }
        if ((v.Reads & ReadsReference) != 0) { refC = v.RefLogps[c]; refR = v.RefLogps[r]; }
        if ((v.Reads & ReadsRewards) != 0) { rewC = v.Rewards[c]; rewR = v.Rewards[r]; }
        var t = PairwiseBradleyTerryMath.Evaluate(k, logpC, logpR, refC, refR, nC, nR, rewC, rewR, label);
        v.PairLosses[i] = (float)t.Loss;
        v.GradChosen[i] = (float)(t.DChosen * v.InvPairs);
        v.GradRejected[i] = (float)(t.DRejected * v.InvPairs);
        v.MetricRows[row + PairwiseLossSlot.Loss] = t.Loss;
        v.MetricRows[row + PairwiseLossSlot.RewardChosen] = t.RewardChosen;
        v.MetricRows[row + PairwiseLossSlot.RewardRejected] = t.RewardRejected;
        v.MetricRows[row + PairwiseLossSlot.RewardMargin] = t.RewardMargin;
        v.MetricRows[row + PairwiseLossSlot.Correct] = t.Correct;
        v.MetricRows[row + PairwiseLossSlot.LogpChosen] = t.LogpChosen;
        v.MetricRows[row + PairwiseLossSlot.LogpRejected] = t.LogpRejected;
        v.MetricRows[row + PairwiseLossSlot.Logit] = t.Logit;
        v.MetricRows[row + PairwiseLossSlot.BernoulliKl] = t.BernoulliKl;
        v.MetricRows[row + PairwiseLossSlot.ScoreMargin] = t.ScoreMargin;
        v.MetricRows[row + PairwiseLossSlot.MeanReward] = t.MeanReward;
        v.MetricRows[row + PairwiseLossSlot.SquaredResidual] = t.SquaredResidual;
    }

    /// <summary>One thread per metric slot: Σ over pairs, in pair order, in fp64 (the CPU kernel's order).</summary>
    [GpuKernel(false)]
    internal static void ReduceKernel(Index1D slot, ArrayView<double> metricRows, int pairs, ArrayView<double> sums)
    {
        double sum = 0.0;
        for (int i = 0; i < pairs; i++) sum += metricRows[(long)i * PairwiseLossSlot.Count + slot];
        sums[slot] = sum;
    }

    /// <summary>One thread per sequence: adds, in pair order and chosen before rejected, every contribution naming it.</summary>
    [GpuKernel(false)]
    internal static void ScatterKernel(Index1D sequence, ArrayView<int> chosen, ArrayView<int> rejected,
                                       ArrayView<float> gradChosen, ArrayView<float> gradRejected, int pairs, ArrayView<float> gradient)
    {
        int s = sequence;
        float acc = gradient[s];
        for (int i = 0; i < pairs; i++)
        {
            if (chosen[i] == s) acc += gradChosen[i];
            if (rejected[i] == s) acc += gradRejected[i];
        }
        gradient[s] = acc;
    }

    public void Dispose()
    {
        gradChosen?.Dispose();
        gradRejected?.Dispose();
        metricRows?.Dispose();
        sums.Dispose();
        errors.Dispose();
        dummyInt.Dispose();
        dummyFloat.Dispose();
    }
}
