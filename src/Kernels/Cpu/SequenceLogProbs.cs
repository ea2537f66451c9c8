namespace DistAlign.Kernels.Cpu;

/// <summary>
/// The fused LM head: target-token log-probabilities (and optionally per-token entropies) straight from
/// the final hidden states, one chunk of rows at a time, so the N×V logits never exist at once.
/// </summary>
/// <remarks>
/// Shapes: hidden h [N, C]; LM head E [V, C] (the tied token embedding); targets [N] (−1 = no target).
/// Forward, per chunk of rows:
///   logits = h·Eᵀ                                 (GEMM, chunk × V, the only V-sized buffer)
///   lse_n = log Σ_v exp(logit_nv)                 (online max / sum-exp, <see cref="TargetLogProbs"/>)
///   logprob_n = logit_n,target − lse_n            (0 where target = −1)
///   entropy_n = −Σ_v p_nv ln p_nv = lse_n − Σ_v p_nv·logit_nv   (optional; 0 where target = −1)
/// Backward, given a_n = ∂L/∂logprob_n and optional b_n = ∂L/∂entropy_n, per chunk (logits recomputed):
///   ∂L/∂logit_nv = a_n·(1[v = target_n] − p_nv) − b_n·p_nv·(ln p_nv + entropy_n)
///   written in place over the chunk's logits, then  ∂h += dlogits·E  and  ∂E += dlogitsᵀ·h  (GEMMs).
/// <see cref="ForwardBackward"/> does both with one logits GEMM per chunk, for losses whose gradient is
/// known before the forward (SFT, pretraining). Policy and reference log-probs computed by this kernel with
/// equal weights agree bit for bit: the same code, the same order.
/// The backward accumulates (+=) into ∂h and ∂E.
/// </remarks>
public static class SequenceLogProbs
{
    /// <summary>
    /// Rows of logits per chunk: about 64 MiB of logits (16 Mi floats), between 1 and 1024 rows. The chunk
    /// is the reduction length of the ∂E GEMM, so it must not be small: at V = 50,257 a 20-row chunk ran
    /// that GEMM at a fifth of the speed of a 333-row one.
    /// </summary>
    public static int ChunkRows(int vocab) => Math.Clamp((16 << 20) / Math.Max(1, vocab), 1, 1024);

    /// <summary>Floats of scratch the chunked passes need for <paramref name="rows"/> tokens.</summary>
    public static long ScratchLength(int rows, int vocab) => (long)Math.Min(Math.Max(rows, 1), ChunkRows(vocab)) * vocab;

    /// <summary>Per-token log-probs, saved log-sum-exp and (when <paramref name="entropy"/> is non-empty) entropies.</summary>
    public static void Forward(ReadOnlySpan<float> hidden, ReadOnlySpan<float> lmHead, ReadOnlySpan<int> targets, int channels, int vocab,
                               Span<float> scratch, Span<float> logProbs, Span<float> logSumExp, Span<float> entropy)
    {
        int chunk = Validate(hidden, lmHead, targets, channels, vocab, scratch, logSumExp.Length, entropy.Length);
        ShapeCheck.Length(logProbs.Length, targets.Length, nameof(logProbs), "[N]");
        for (int start = 0; start < targets.Length; start += chunk)
        {
            int rows = Math.Min(chunk, targets.Length - start);
            var logits = Logits(hidden, lmHead, channels, vocab, scratch, start, rows);
            ForwardChunk(logits, targets.Slice(start, rows), vocab, logProbs.Slice(start, rows), logSumExp.Slice(start, rows),
                         entropy.IsEmpty ? default : entropy.Slice(start, rows));
        }
    }

    /// <summary>
    /// Accumulates ∂h and ∂E for ∂L/∂logprob (and ∂L/∂entropy when non-empty); recomputes each chunk's logits.
    /// <paramref name="logSumExp"/> and <paramref name="entropy"/> are the forward's.
    /// </summary>
    public static void Backward(ReadOnlySpan<float> hidden, ReadOnlySpan<float> lmHead, ReadOnlySpan<int> targets, int channels, int vocab,
                                ReadOnlySpan<float> logSumExp, ReadOnlySpan<float> entropy, ReadOnlySpan<float> dLogProbs, ReadOnlySpan<float> dEntropy,
                                Span<float> scratch, Span<float> dHidden, Span<float> dLmHead)
    {
        int chunk = Validate(hidden, lmHead, targets, channels, vocab, scratch, logSumExp.Length, entropy.Length);
        ValidateBackward(targets.Length, channels, vocab, entropy.Length, dLogProbs, dEntropy, dHidden, dLmHead);
        for (int start = 0; start < targets.Length; start += chunk)
        {
            int rows = Math.Min(chunk, targets.Length - start);
            var logits = Logits(hidden, lmHead, channels, vocab, scratch, start, rows);
            BackwardChunk(logits, hidden, lmHead, targets, channels, vocab, start, rows, logSumExp, entropy, dLogProbs, dEntropy, dHidden, dLmHead);
        }
    }

    /// <summary>Forward and backward with one logits GEMM per chunk, for gradients known in advance.</summary>
    public static void ForwardBackward(ReadOnlySpan<float> hidden, ReadOnlySpan<float> lmHead, ReadOnlySpan<int> targets, int channels, int vocab,
                                       ReadOnlySpan<float> dLogProbs, ReadOnlySpan<float> dEntropy,
                                       Span<float> scratch, Span<float> logProbs, Span<float> logSumExp, Span<float> entropy,
                                       Span<float> dHidden, Span<float> dLmHead)
    {
        int chunk = Validate(hidden, lmHead, targets, channels, vocab, scratch, logSumExp.Length, entropy.Length);
        ShapeCheck.Length(logProbs.Length, targets.Length, nameof(logProbs), "[N]");
        ValidateBackward(targets.Length, channels, vocab, entropy.Length, dLogProbs, dEntropy, dHidden, dLmHead);
        for (int start = 0; start < targets.Length; start += chunk)
        {
            int rows = Math.Min(chunk, targets.Length - start);
            var logits = Logits(hidden, lmHead, channels, vocab, scratch, start, rows);
            ForwardChunk(logits, targets.Slice(start, rows), vocab, logProbs.Slice(start, rows), logSumExp.Slice(start, rows),
                         entropy.IsEmpty ? default : entropy.Slice(start, rows));
            BackwardChunk(logits, hidden, lmHead, targets, channels, vocab, start, rows, logSumExp, entropy, dLogProbs, dEntropy, dHidden, dLmHead);
        }
    }

    /// <summary>Checks the shared arguments; returns the chunk size in rows.</summary>
    private static int Validate(ReadOnlySpan<float> hidden, ReadOnlySpan<float> lmHead, ReadOnlySpan<int> targets, int c, int v,
                                Span<float> scratch, int logSumExpLength, int entropyLength)
    {
        ShapeCheck.Positive(c, "channels");
        ShapeCheck.Positive(v, "vocab");
        int n = targets.Length;
        ShapeCheck.Length(hidden.Length, (long)n * c, nameof(hidden), "[N, C]");
        ShapeCheck.Length(lmHead.Length, (long)v * c, nameof(lmHead), "[V, C]");
        ShapeCheck.Length(logSumExpLength, n, "logSumExp", "[N]");
        if (entropyLength != 0) ShapeCheck.Length(entropyLength, n, "entropy", "[N] or empty");
        if (n > 0 && scratch.Length < ScratchLength(n, v))
            throw new ArgumentException($"scratch needs {ScratchLength(n, v)} floats for N = {n}, V = {v}; got {scratch.Length}");
        return ChunkRows(v);
    }

    private static void ValidateBackward(int n, int c, int v, int entropyLength, ReadOnlySpan<float> dLogProbs, ReadOnlySpan<float> dEntropy,
                                         Span<float> dHidden, Span<float> dLmHead)
    {
        ShapeCheck.Length(dLogProbs.Length, n, nameof(dLogProbs), "[N]");
        if (!dEntropy.IsEmpty)
        {
            if (entropyLength == 0) throw new ArgumentException("dEntropy needs the forward's entropies: pass a non-empty entropy span");
            ShapeCheck.Length(dEntropy.Length, n, nameof(dEntropy), "[N] or empty");
        }
        ShapeCheck.Length(dHidden.Length, (long)n * c, nameof(dHidden), "[N, C]");
        ShapeCheck.Length(dLmHead.Length, (long)v * c, nameof(dLmHead), "[V, C]");
    }

    /// <summary>logits[rows, V] = h[start … start+rows)·Eᵀ into the scratch.</summary>
    private static Span<float> Logits(ReadOnlySpan<float> hidden, ReadOnlySpan<float> lmHead, int c, int v, Span<float> scratch, int start, int rows)
    {
        var logits = scratch[..(rows * v)];
        Gemm.Multiply(Transpose.No, Transpose.Yes, rows, v, c, 1f, hidden.Slice(start * c, rows * c), c, lmHead, c, 0f, logits, v);
        return logits;
    }

    private static void ForwardChunk(ReadOnlySpan<float> logits, ReadOnlySpan<int> targets, int v, Span<float> logProbs, Span<float> lse, Span<float> entropy)
    {
        TargetLogProbs.Forward(logits, targets, v, logProbs, lse);
        if (!entropy.IsEmpty) Entropy(logits, targets, v, lse, entropy);
    }

    /// <summary>Turns the chunk's logits into d(logits) in place and feeds them into the two GEMMs.</summary>
    private static void BackwardChunk(Span<float> logits, ReadOnlySpan<float> hidden, ReadOnlySpan<float> lmHead, ReadOnlySpan<int> targets,
                                      int c, int v, int start, int rows, ReadOnlySpan<float> lse, ReadOnlySpan<float> entropy,
                                      ReadOnlySpan<float> dLogProbs, ReadOnlySpan<float> dEntropy, Span<float> dHidden, Span<float> dLmHead)
    {
        var t = targets.Slice(start, rows);
        if (dEntropy.IsEmpty) TargetLogProbs.Backward(logits, t, v, lse.Slice(start, rows), dLogProbs.Slice(start, rows));
        else LogitGradientWithEntropy(logits, t, v, lse.Slice(start, rows), entropy.Slice(start, rows), dLogProbs.Slice(start, rows), dEntropy.Slice(start, rows));
        Gemm.Multiply(Transpose.No, Transpose.No, rows, c, v, 1f, logits, v, lmHead, c, 1f, dHidden.Slice(start * c, rows * c), c);
        Gemm.Multiply(Transpose.Yes, Transpose.No, v, c, rows, 1f, logits, v, hidden.Slice(start * c, rows * c), c, 1f, dLmHead, c);
    }

    /// <summary>entropy_n = lse_n − Σ_v p_nv·logit_nv (0 for ignored rows). Parallel over rows.</summary>
    private static unsafe void Entropy(ReadOnlySpan<float> logits, ReadOnlySpan<int> targets, int v, ReadOnlySpan<float> lse, Span<float> entropy)
    {
        fixed (float* pl = logits, ps = lse, pe = entropy)
        fixed (int* pt = targets)
        {
            float* xl = pl, xs = ps, xe = pe;
            int* xt = pt;
            CpuParallel.For(targets.Length, 1, (start, end) =>
            {
                for (int i = start; i < end; i++)
                {
                    if (xt[i] == TargetLogProbs.Ignored) { xe[i] = 0f; continue; }
                    float* row = xl + (long)i * v;
                    float m = xs[i];
                    double expected = 0;
                    for (int k = 0; k < v; k++) expected += Math.Exp(row[k] - m) * row[k];
                    xe[i] = (float)(m - expected);
                }
            });
        }
    }

    /// <summary>In place: logit ← a·(1[v = target] − p) − b·p·(ln p + entropy).</summary>
    private static unsafe void LogitGradientWithEntropy(Span<float> logits, ReadOnlySpan<int> targets, int v, ReadOnlySpan<float> lse,
                                                        ReadOnlySpan<float> entropy, ReadOnlySpan<float> dLogProbs, ReadOnlySpan<float> dEntropy)
    {
        fixed (float* pl = logits, ps = lse, pe = entropy, pa = dLogProbs, pb = dEntropy)
        fixed (int* pt = targets)
        {
            float* xl = pl, xs = ps, xe = pe, xa = pa, xb = pb;
            int* xt = pt;
            CpuParallel.For(targets.Length, 1, (start, end) =>
            {
                for (int i = start; i < end; i++)
                {
                    float* row = xl + (long)i * v;
                    int target = xt[i];
                    if (target == TargetLogProbs.Ignored)
                    {
                        new Span<float>(row, v).Clear();
                        continue;
                    }
                    float m = xs[i], a = xa[i], b = xb[i], h = xe[i];
                    for (int k = 0; k < v; k++)
                    {
                        float logP = row[k] - m;
                        float p = MathF.Exp(logP);
                        row[k] = -a * p - b * p * (logP + h);
                    }
                    row[target] += a;
                }
            });
        }
    }

    /// <summary>
    /// Per-sequence sums of per-token values and token counts: sums[s] = Σ values[n] over tokens n with
    /// sequence[n] = s and a target (target ≠ −1); tokens with sequence −1 belong to no sequence. Sums in
    /// fp64, tokens in order, so the result is deterministic.
    /// </summary>
    public static void SumBySequence(ReadOnlySpan<float> values, ReadOnlySpan<int> sequence, ReadOnlySpan<int> targets, Span<float> sums, Span<int> counts)
    {
        ShapeCheck.Length(sequence.Length, values.Length, nameof(sequence), "[N]");
        ShapeCheck.Length(targets.Length, values.Length, nameof(targets), "[N]");
        ShapeCheck.Length(counts.Length, sums.Length, nameof(counts), "[S]");
        Span<double> total = sums.Length <= 512 ? stackalloc double[sums.Length] : new double[sums.Length];
        counts.Clear();
        for (int i = 0; i < values.Length; i++)
        {
            int s = sequence[i];
            if (s < 0 || targets[i] == TargetLogProbs.Ignored) continue;
            if (s >= sums.Length) throw new ArgumentOutOfRangeException(nameof(sequence), $"token {i} belongs to sequence {s}, but only {sums.Length} sequences were given");
            total[s] += values[i];
            counts[s]++;
        }
        for (int s = 0; s < sums.Length; s++) sums[s] = (float)total[s];
    }

    /// <summary>
    /// The backward of <see cref="SumBySequence"/>: dValues[n] += dSums[sequence[n]] for every counted token
    /// (plus, when <paramref name="dMeans"/> is non-empty, dMeans[s]/counts[s] for per-token means).
    /// </summary>
    public static void ScatterBySequence(ReadOnlySpan<float> dSums, ReadOnlySpan<float> dMeans, ReadOnlySpan<int> counts,
                                         ReadOnlySpan<int> sequence, ReadOnlySpan<int> targets, Span<float> dValues)
    {
        ShapeCheck.Length(sequence.Length, dValues.Length, nameof(sequence), "[N]");
        ShapeCheck.Length(targets.Length, dValues.Length, nameof(targets), "[N]");
        for (int i = 0; i < dValues.Length; i++)
        {
            int s = sequence[i];
            if (s < 0 || targets[i] == TargetLogProbs.Ignored) continue;
            float d = dSums.IsEmpty ? 0f : dSums[s];
            if (!dMeans.IsEmpty && counts[s] > 0) d += dMeans[s] / counts[s];
            dValues[i] += d;
        }
    }
}
