using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// Target log-probabilities from logits [N, V], the GPU form of <see cref="Cpu.TargetLogProbs"/>.
/// The logits may be stored with a row stride (leading dimension) larger than V — row r starts at r·stride,
/// e.g. V rounded up to a multiple of 64 so that every row is 16-byte aligned for cuBLAS; only the V real
/// columns are read or written, so the padding columns are never touched.
/// Forward: one group per row; each thread keeps an online (running max, running Σexp(x − max)) over its
/// strided share of the row, then the group merges the pairs in a fixed shared-memory tree
/// ((m₁, s₁) ⊕ (m₂, s₂) = (m, s₁·e^(m₁−m) + s₂·e^(m₂−m))); lse = m + log s. Finite for any finite logits.
/// Backward: one thread per logit, overwriting the logits IN PLACE with
/// d = g·(1[v = target] − exp(x − lse)); rows with target −1 become 0 (as the CPU op: not accumulated).
/// <see cref="BackwardToBFloat16"/> writes d(logits) rounded to bf16 into a separate [N, rowStride] buffer instead, padding
/// columns included (as 0), for a bf16 GEMM that reads whole padded rows (the LM head's mixed-precision path).
/// Targets are not range-checked on the device (the CPU op checks them; the data pipeline must too).
/// Determinism: each row's merge tree depends only on V and the accelerator's group size.
/// </summary>
public sealed class GpuTargetLogProbs
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, int, int, ArrayView<float>, ArrayView<float>> forward;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, int, int, ArrayView<float>, ArrayView<float>> backward;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, int, int, ArrayView<float>, ArrayView<float>, ArrayView<ushort>>? backwardToBFloat16;
    private readonly Accelerator accelerator;
    private readonly int groupSize;

    public GpuTargetLogProbs(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        groupSize = GpuLaunch.ReductionGroupSize(accelerator);
        forward = accelerator.LoadKernel<ArrayView<float>, ArrayView<int>, int, int, ArrayView<float>, ArrayView<float>>(ForwardKernel);
        backward = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, int, int, ArrayView<float>, ArrayView<float>>(BackwardKernel);
    }

    /// <summary>Writes logProbs [N] and the saved logSumExp [N]; targets [N] in [0, V) or −1 (ignored: log-prob 0).</summary>
    public void Forward(ArrayView<float> logits, ArrayView<int> targets, int vocab, ArrayView<float> logProbs, ArrayView<float> logSumExp) =>
        Forward(logits, targets, vocab, vocab, logProbs, logSumExp);

    /// <summary>As <see cref="Forward(ArrayView{float}, ArrayView{int}, int, ArrayView{float}, ArrayView{float})"/> for logits
    /// [N, rowStride] of which the first <paramref name="vocab"/> columns are the logits (rowStride ≥ vocab; the rest is not read).</summary>
    public void Forward(ArrayView<float> logits, ArrayView<int> targets, int vocab, int rowStride, ArrayView<float> logProbs, ArrayView<float> logSumExp)
    {
        int n = Rows(logits.Length, targets.Length, vocab, rowStride);
        GpuLaunch.CheckLength(logProbs.Length, n, nameof(logProbs), "[N]");
        GpuLaunch.CheckLength(logSumExp.Length, n, nameof(logSumExp), "[N]");
        if (n > 0) forward(accelerator.DefaultStream, GpuLaunch.Rows(n, groupSize), logits, targets, vocab, rowStride, logProbs, logSumExp);
    }

    /// <summary>Overwrites logitsToGradient (the forward's logits) with d(logits), given dLogProbs [N] and the saved logSumExp.</summary>
    public void Backward(ArrayView<float> logitsToGradient, ArrayView<int> targets, int vocab, ArrayView<float> logSumExp, ArrayView<float> dLogProbs) =>
        Backward(logitsToGradient, targets, vocab, vocab, logSumExp, dLogProbs);

    /// <summary>As <see cref="Backward(ArrayView{float}, ArrayView{int}, int, ArrayView{float}, ArrayView{float})"/> for logits
    /// [N, rowStride]: overwrites the first <paramref name="vocab"/> columns of each row; the rest is neither read nor written.</summary>
    public void Backward(ArrayView<float> logitsToGradient, ArrayView<int> targets, int vocab, int rowStride, ArrayView<float> logSumExp, ArrayView<float> dLogProbs)
    {
        int n = Rows(logitsToGradient.Length, targets.Length, vocab, rowStride);
        GpuLaunch.CheckLength(logSumExp.Length, n, nameof(logSumExp), "[N]");
        GpuLaunch.CheckLength(dLogProbs.Length, n, nameof(dLogProbs), "[N]");
        if (n > 0) backward(accelerator.DefaultStream, n * vocab, logitsToGradient, targets, vocab, rowStride, logSumExp, dLogProbs);
    }

    /// <summary>
    /// d(logits) as bf16 bits into <paramref name="gradient"/> [N, rowStride] (the logits are not changed): every element
    /// is written, round-to-nearest-even of g·(1[v = target] − exp(x − lse)) at the V real columns and 0 at the padding
    /// columns and on rows with target −1, so a GEMM may read the whole padded rows (0 × anything finite = 0).
    /// The kernel is compiled on first use.
    /// </summary>
    public void BackwardToBFloat16(ArrayView<float> logits, ArrayView<int> targets, int vocab, int rowStride, ArrayView<float> logSumExp,
                                   ArrayView<float> dLogProbs, ArrayView<ushort> gradient)
    {
        int n = Rows(logits.Length, targets.Length, vocab, rowStride);
        GpuLaunch.CheckLength(logSumExp.Length, n, nameof(logSumExp), "[N]");
        GpuLaunch.CheckLength(dLogProbs.Length, n, nameof(dLogProbs), "[N]");
        GpuLaunch.CheckLength(gradient.Length, (long)n * rowStride, nameof(gradient), "[N, rowStride]");
        if (n == 0) return;
        backwardToBFloat16 ??= accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, int, int, ArrayView<float>, ArrayView<float>, ArrayView<ushort>>(BackwardToBFloat16Kernel);
        backwardToBFloat16(accelerator.DefaultStream, n * rowStride, logits, targets, vocab, rowStride, logSumExp, dLogProbs, gradient);
    }

    /// <summary>Checks logits [N, rowStride] with rowStride ≥ vocab against targets [N]; returns N.</summary>
    internal static int Rows(long logitsLength, long targetsLength, int vocab, int rowStride)
    {
        GpuLaunch.CheckPositive(vocab, nameof(vocab));
        if (rowStride < vocab)
            throw new ArgumentOutOfRangeException(nameof(rowStride), rowStride, $"the row stride must be at least the vocabulary size ({vocab}).");
        GpuLaunch.CheckLength(logitsLength, targetsLength * rowStride, "logits", "[N, rowStride] with N = targets.Length");
        if (logitsLength > int.MaxValue) throw new ArgumentException("logits too large for 32-bit GPU indexing.", "logits");
        return (int)targetsLength;
    }

    [GpuKernel(true)]
    internal static void ForwardKernel(ArrayView<float> logits, ArrayView<int> targets, int vocab, int rowStride,
                                       ArrayView<float> logProbs, ArrayView<float> logSumExp)
    {
        var maxima = SharedMemory.Allocate<float>(GpuLaunch.MaxGroupSize);
        var sums = SharedMemory.Allocate<float>(GpuLaunch.MaxGroupSize);
        int row = Grid.IdxX, tid = Group.IdxX;
        long offset = (long)row * rowStride;
        int step = Group.DimX, v = tid;
        float max = float.NegativeInfinity, sum = 0f;
        // Four values per iteration (each load coalesced across the group): their max, a rescale of the running sum when it
        // rises (rare once the row's large values are seen; exp(−∞) = 0 on the first), then four exps that do not depend on
        // each other or on a per-value branch. The element-by-element online form below takes the last few.
        for (; v + 3 * step < vocab; v += 4 * step)
        {
            float x0 = logits[offset + v], x1 = logits[offset + v + step], x2 = logits[offset + v + 2 * step], x3 = logits[offset + v + 3 * step];
            float m4 = IntrinsicMath.Max(IntrinsicMath.Max(x0, x1), IntrinsicMath.Max(x2, x3));
            if (m4 > max)
            {
                sum *= XMath.Exp(max - m4);
                max = m4;
            }
            sum += (XMath.Exp(x0 - max) + XMath.Exp(x1 - max)) + (XMath.Exp(x2 - max) + XMath.Exp(x3 - max));
        }
        for (; v < vocab; v += step)
        {
            float x = logits[offset + v];
            if (x > max)
            {
                sum = sum * XMath.Exp(max - x) + 1f;   // exp(−∞) = 0 on the first element
                max = x;
            }
            else
            {
                sum += XMath.Exp(x - max);
            }
        }
        maxima[tid] = max;
        sums[tid] = sum;
        Group.Barrier();
        for (int half = Group.DimX / 2; half > 0; half >>= 1)
        {
            if (tid < half)
            {
                float m1 = maxima[tid], m2 = maxima[tid + half];
                float m = IntrinsicMath.Max(m1, m2);
                // A thread that saw no element has (−∞, 0): skip its exp to avoid −∞ − (−∞).
                float s1 = m1 == float.NegativeInfinity ? 0f : sums[tid] * XMath.Exp(m1 - m);
                float s2 = m2 == float.NegativeInfinity ? 0f : sums[tid + half] * XMath.Exp(m2 - m);
                maxima[tid] = m;
                sums[tid] = s1 + s2;
            }
            Group.Barrier();
        }
        if (tid == 0)
        {
            float lse = maxima[0] + XMath.Log(sums[0]);
            int target = targets[row];
            logSumExp[row] = lse;
            logProbs[row] = target < 0 ? 0f : logits[offset + target] - lse;
        }
    }

    /// <summary>One thread per real logit (i over N·V); the logit sits at row·rowStride + v.</summary>
    [GpuKernel(false)]
    internal static void BackwardKernel(Index1D i, ArrayView<float> logits, ArrayView<int> targets, int vocab, int rowStride,
                                        ArrayView<float> logSumExp, ArrayView<float> dLogProbs)
    {
        int row = i / vocab, v = i - row * vocab;
        long at = (long)row * rowStride + v;
        int target = targets[row];
        if (target < 0)
        {
            logits[at] = 0f;
            return;
        }
        float g = dLogProbs[row];
        float d = -g * XMath.Exp(logits[at] - logSumExp[row]);
        logits[at] = v == target ? d + g : d;
    }

    /// <summary>One thread per element of the padded rows (i over N·rowStride): bf16 d(logits) at the real columns, 0 elsewhere.</summary>
    [GpuKernel(false)]
    internal static void BackwardToBFloat16Kernel(Index1D i, ArrayView<float> logits, ArrayView<int> targets, int vocab, int rowStride,
                                                  ArrayView<float> logSumExp, ArrayView<float> dLogProbs, ArrayView<ushort> gradient)
    {
        int row = i / rowStride, v = i - row * rowStride;
        int target = targets[row];
        if (v >= vocab || target < 0)
        {
            gradient[i] = 0;
            return;
        }
        float g = dLogProbs[row];
        float d = -g * XMath.Exp(logits[i] - logSumExp[row]);
        gradient[i] = GpuBFloat16.Round(v == target ? d + g : d);
    }
}
