using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// Target log-probabilities from logits [N, V], the GPU form of <see cref="Cpu.TargetLogProbs"/>.
/// Forward: one group per row; each thread keeps an online (running max, running Σexp(x − max)) over its
/// strided share of the row, then the group merges the pairs in a fixed shared-memory tree
/// ((m₁, s₁) ⊕ (m₂, s₂) = (m, s₁·e^(m₁−m) + s₂·e^(m₂−m))); lse = m + log s. Finite for any finite logits.
/// Backward: one thread per logit, overwriting the logits IN PLACE with
/// d = g·(1[v = target] − exp(x − lse)); rows with target −1 become 0 (as the CPU op: not accumulated).
/// Targets are not range-checked on the device (the CPU op checks them; the data pipeline must too).
/// Determinism: each row's merge tree depends only on V and the accelerator's group size.
/// </summary>
public sealed class GpuTargetLogProbs
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, int, ArrayView<float>, ArrayView<float>> _forward;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, int, ArrayView<float>, ArrayView<float>> _backward;
    private readonly Accelerator _accelerator;
    private readonly int _groupSize;

    public GpuTargetLogProbs(Accelerator accelerator)
    {
        _accelerator = accelerator;
        _groupSize = GpuLaunch.ReductionGroupSize(accelerator);
        _forward = accelerator.LoadKernel<ArrayView<float>, ArrayView<int>, int, ArrayView<float>, ArrayView<float>>(ForwardKernel);
        _backward = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, int, ArrayView<float>, ArrayView<float>>(BackwardKernel);
    }

    /// <summary>Writes logProbs [N] and the saved logSumExp [N]; targets [N] in [0, V) or −1 (ignored: log-prob 0).</summary>
    public void Forward(ArrayView<float> logits, ArrayView<int> targets, int vocab, ArrayView<float> logProbs, ArrayView<float> logSumExp)
    {
        int n = Rows(logits.Length, targets.Length, vocab);
        GpuLaunch.CheckLength(logProbs.Length, n, nameof(logProbs), "[N]");
        GpuLaunch.CheckLength(logSumExp.Length, n, nameof(logSumExp), "[N]");
        if (n > 0) _forward(_accelerator.DefaultStream, GpuLaunch.Rows(n, _groupSize), logits, targets, vocab, logProbs, logSumExp);
    }

    /// <summary>Overwrites logitsToGradient (the forward's logits) with d(logits), given dLogProbs [N] and the saved logSumExp.</summary>
    public void Backward(ArrayView<float> logitsToGradient, ArrayView<int> targets, int vocab, ArrayView<float> logSumExp, ArrayView<float> dLogProbs)
    {
        int n = Rows(logitsToGradient.Length, targets.Length, vocab);
        GpuLaunch.CheckLength(logSumExp.Length, n, nameof(logSumExp), "[N]");
        GpuLaunch.CheckLength(dLogProbs.Length, n, nameof(dLogProbs), "[N]");
        if (n > 0) _backward(_accelerator.DefaultStream, (int)logitsToGradient.Length, logitsToGradient, targets, vocab, logSumExp, dLogProbs);
    }

    private static int Rows(long logitsLength, long targetsLength, int vocab)
    {
        GpuLaunch.CheckPositive(vocab, nameof(vocab));
        GpuLaunch.CheckLength(logitsLength, targetsLength * vocab, "logits", "[N, V] with N = targets.Length");
        if (logitsLength > int.MaxValue) throw new ArgumentException("logits too large for 32-bit GPU indexing.", "logits");
        return (int)targetsLength;
    }

    [GpuKernel(true)]
    internal static void ForwardKernel(ArrayView<float> logits, ArrayView<int> targets, int vocab,
                                       ArrayView<float> logProbs, ArrayView<float> logSumExp)
    {
        var maxima = SharedMemory.Allocate<float>(GpuLaunch.MaxGroupSize);
        var sums = SharedMemory.Allocate<float>(GpuLaunch.MaxGroupSize);
        int row = Grid.IdxX, tid = Group.IdxX;
        long offset = (long)row * vocab;
        float max = float.NegativeInfinity, sum = 0f;
        for (int v = tid; v < vocab; v += Group.DimX)
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

    [GpuKernel(false)]
    internal static void BackwardKernel(Index1D i, ArrayView<float> logits, ArrayView<int> targets, int vocab,
                                        ArrayView<float> logSumExp, ArrayView<float> dLogProbs)
    {
        int row = i / vocab, v = i - row * vocab;
        int target = targets[row];
        if (target < 0)
        {
            logits[i] = 0f;
            return;
        }
        float g = dLogProbs[row];
        float d = -g * XMath.Exp(logits[i] - logSumExp[row]);
        logits[i] = v == target ? d + g : d;
    }
}
