using System.Numerics.Tensors;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// Log-probabilities of target tokens from logits, without ever materialising the normalised
/// distribution (cross-entropy's forward and backward).
/// Forward, per row n of logits [N, V]:
///   lse[n] = log Σ_v exp(logit[n, v])          (online: running max and running Σexp, one pass over memory)
///   logprob[n] = logit[n, target[n]] − lse[n]   (0 when target[n] = −1, an ignored position)
/// Backward: dlogit[n, v] = dlogprob[n]·(1[v = target[n]] − exp(logit[n, v] − lse[n])), written IN PLACE
/// over the logits buffer (so no second N×V buffer exists); rows with target −1 become zero.
/// Unlike the other ops, this backward overwrites rather than accumulates: the logits buffer becomes
/// d(logits) and is consumed by the LM-head GEMM backward.
/// </summary>
public static class TargetLogProbs
{
    /// <summary>Target id marking a position that contributes nothing (log-prob 0, gradient 0).</summary>
    public const int Ignored = -1;

    /// <summary>Vocabulary entries per chunk of the online pass: the chunk stays in L1 between its two reads.</summary>
    private const int Chunk = 1024;

    /// <summary>Writes logProbs[n] and the saved logSumExp[n] for every row of logits [N, V].</summary>
    public static unsafe void Forward(ReadOnlySpan<float> logits, ReadOnlySpan<int> targets, int vocab,
                                      Span<float> logProbs, Span<float> logSumExp)
    {
        int n = Validate(logits.Length, targets, vocab);
        ShapeCheck.Length(logProbs.Length, n, nameof(logProbs), "[N]");
        ShapeCheck.Length(logSumExp.Length, n, nameof(logSumExp), "[N]");
        fixed (float* pl = logits, pp = logProbs, ps = logSumExp)
        fixed (int* pt = targets)
        {
            float* xl = pl, xp = pp, xs = ps;
            int* xt = pt;
            CpuParallel.For(n, 1, (start, end) =>
            {
                Span<float> shifted = stackalloc float[Chunk];
                for (int i = start; i < end; i++)
                {
                    float* row = xl + (long)i * vocab;
                    float runningMax = float.NegativeInfinity;
                    double runningSum = 0.0;
                    for (int v0 = 0; v0 < vocab; v0 += Chunk)
                    {
                        int len = Math.Min(Chunk, vocab - v0);
                        var chunk = new ReadOnlySpan<float>(row + v0, len);
                        float chunkMax = TensorPrimitives.Max(chunk);
                        if (chunkMax > runningMax)
                        {
                            // Rescale what was summed under the old max (exp(−∞) = 0 on the first chunk).
                            runningSum *= Math.Exp((double)runningMax - chunkMax);
                            runningMax = chunkMax;
                        }
                        var s = shifted[..len];
                        TensorPrimitives.Subtract(chunk, runningMax, s);
                        TensorPrimitives.Exp(s, s);
                        runningSum += TensorPrimitives.Sum(s);
                    }
                    float lse = (float)(runningMax + Math.Log(runningSum));
                    xs[i] = lse;
                    int t = xt[i];
                    xp[i] = t == Ignored ? 0f : row[t] - lse;
                }
            });
        }
    }

    /// <summary>
    /// Overwrites <paramref name="logitsToGradient"/> (the forward's logits) with d(logits), given
    /// dLogProbs[n] = ∂L/∂logprob[n] and the forward's saved logSumExp.
    /// </summary>
    public static unsafe void Backward(Span<float> logitsToGradient, ReadOnlySpan<int> targets, int vocab,
                                       ReadOnlySpan<float> logSumExp, ReadOnlySpan<float> dLogProbs)
    {
        int n = Validate(logitsToGradient.Length, targets, vocab);
        ShapeCheck.Length(logSumExp.Length, n, nameof(logSumExp), "[N]");
        ShapeCheck.Length(dLogProbs.Length, n, nameof(dLogProbs), "[N]");
        fixed (float* pl = logitsToGradient, ps = logSumExp, pd = dLogProbs)
        fixed (int* pt = targets)
        {
            float* xl = pl, xs = ps, xd = pd;
            int* xt = pt;
            CpuParallel.For(n, 1, (start, end) =>
            {
                for (int i = start; i < end; i++)
                {
                    var row = new Span<float>(xl + (long)i * vocab, vocab);
                    int t = xt[i];
                    float g = xd[i];
                    if (t == Ignored || g == 0f)
                    {
                        row.Clear();
                        continue;
                    }
                    TensorPrimitives.Subtract(row, xs[i], row);   // logit − lse ≤ 0: exp cannot overflow
                    TensorPrimitives.Exp(row, row);               // softmax probabilities
                    TensorPrimitives.Multiply(row, -g, row);
                    row[t] += g;
                }
            });
        }
    }

    /// <summary>
    /// Cross-entropy loss = −mean of logProbs over non-ignored positions, and its gradient
    /// dLogProbs[n] = −1/count (0 at ignored positions). Returns 0 (and zero gradients) when every
    /// position is ignored. Summed serially in fp64, so deterministic.
    /// </summary>
    public static float CrossEntropyLoss(ReadOnlySpan<float> logProbs, ReadOnlySpan<int> targets, Span<float> dLogProbs)
    {
        ShapeCheck.Length(targets.Length, logProbs.Length, nameof(targets), "[N]");
        ShapeCheck.Length(dLogProbs.Length, logProbs.Length, nameof(dLogProbs), "[N]");
        int count = 0;
        double sum = 0.0;
        for (int i = 0; i < logProbs.Length; i++)
        {
            if (targets[i] == Ignored) continue;
            count++;
            sum += logProbs[i];
        }
        float g = count == 0 ? 0f : -1f / count;
        for (int i = 0; i < logProbs.Length; i++) dLogProbs[i] = targets[i] == Ignored ? 0f : g;
        return count == 0 ? 0f : (float)(-sum / count);
    }

    private static int Validate(int logitsLength, ReadOnlySpan<int> targets, int vocab)
    {
        ShapeCheck.Positive(vocab, nameof(vocab));
        int n = targets.Length;
        ShapeCheck.Length(logitsLength, (long)n * vocab, "logits", "[N, V]");
        for (int i = 0; i < n; i++)
            if (targets[i] != Ignored && (uint)targets[i] >= (uint)vocab)
                throw new ArgumentOutOfRangeException(nameof(targets), targets[i],
                    $"Target {targets[i]} at index {i} is neither {Ignored} (ignored) nor a token id in [0, {vocab}).");
        return n;
    }
}
