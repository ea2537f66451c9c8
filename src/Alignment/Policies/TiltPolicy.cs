using System.Numerics.Tensors;
using DistAlign.Engine.Distributed;
using DistAlign.Engine.Random;
using DistAlign.Engine.SafeTensors;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Policies;

/// <summary>
/// A frozen GPT π0 with a trainable per-token logit offset b: π_b(v | ctx) = π0(v | ctx)·exp(b_v) / Z_b(ctx).
/// It is the policy class of the realizable known-target experiment (the paper's Assumptions 1 and 5): the target
/// π* ∝ π0·exp(w/τ) is exactly b = w/τ, and b = 0 is π0. Weight decay on b pulls it toward π0 (an L2 penalty).
/// With an adapter rank r > 0 it is the richer <b>head-LoRA</b> class: a rank-r update of the tied LM head on top,
/// π(v | ctx) ∝ π0(v | ctx)·exp(b_v + (h·A)·B_v), A ∈ ℝ^{C×r}, B ∈ ℝ^{V×r} (the head's weight becomes wteᵀ + A·Bᵀ), so
/// the tilt can depend on the context; B starts at 0, so the class starts at π_b and still holds π*.
/// </summary>
/// <remarks>
/// <code>
/// forward, per response token t with context features h_t (ln_f of the frozen backbone, from a FrozenFeatureCache):
///   u_t = h_t · A                             (rank r > 0 only; [tokens × C]·[C × r])
///   z_t = h_t · wteᵀ + b (+ u_t · Bᵀ)         (the tied LM head plus the offset; one GEMM over the batch, b as its bias)
///   ln π(y_t | ·) = z_t[y_t] − lse(z_t)       (TargetLogProbs)
///   H_t = lse(z_t) − Σ_v p_t,v z_t,v          (fp64, only when asked)
/// backward, given d_t = ∂L/∂ln π(y_t) and e_t = ∂L/∂H_t:
///   ∂L/∂z_t,v = d_t (1[v = y_t] − p_t,v) − e_t p_t,v (ln p_t,v + H_t)
///   ∂L/∂b = Σ_t ∂L/∂z_t,   ∂L/∂B = (∂L/∂z)ᵀ·u,   ∂L/∂A = hᵀ·((∂L/∂z)·B)
/// </code>
/// A training step therefore costs one [tokens × C]·[C × V] GEMM (two [tokens × r]·[r × V] more with an adapter) and
/// O(tokens·V) elementwise work: no transformer pass once the cache holds the batch's sequences. <see cref="Score"/>
/// keeps z of its batch ([tokens × V] floats) for <see cref="Backward"/>. Sampling is exact KV-cache decoding of the
/// backbone with the same logit change (<see cref="TiltedSampler"/>). The trained parameters are one flat vector
/// θ = [b; A; B] (row-major), so clipping and AdamW treat them as one. With a value head (PPO), V(s_t) = w·h_t + c is a
/// second linear head on the same frozen features, trained with θ.
/// </remarks>
public sealed class TiltPolicy : IValuePolicy
{
    /// <summary>The name of b in model files, checkpoints and error messages.</summary>
    public const string OffsetName = GptCheckpoint.LogitOffsetName;
    /// <summary>The names of the adapter's A [C, r] and B [V, r].</summary>
    public const string AdapterAName = GptCheckpoint.HeadAdapterAName, AdapterBName = GptCheckpoint.HeadAdapterBName;

    private readonly FrozenFeatureCache cache;
    private readonly AdamWSettings optimizer;
    private readonly float[] theta, gradient, m, v;   // θ = [b (V); A (C × r); B (V × r)]
    private float[] z = [], lse = [], entropies = [], features = [], dzEntropy = [], u = [], du = [];
    private int[] targets = [];
    private int lastTokens = -1;

    /// <param name="cache">the frozen backbone and its features (shared with snapshots and other heads)</param>
    /// <param name="optimizer">AdamW for θ; its weight decay is an L2 pull of θ toward 0, i.e. of the policy toward π0</param>
    /// <param name="initialOffset">b at the start (empty: 0, i.e. π0)</param>
    /// <param name="withValueHead">a linear value head on the frozen features (PPO's critic), starting at zero</param>
    /// <param name="adapterRank">r of the head adapter (0: none, the tilt class)</param>
    /// <param name="adapterSeed">A's initial draw, N(0, 1/C) per entry from this Philox stream (B starts at 0)</param>
    public TiltPolicy(FrozenFeatureCache cache, AdamWSettings optimizer, ReadOnlySpan<float> initialOffset = default, bool withValueHead = false,
                      int adapterRank = 0, ulong adapterSeed = 0)
    {
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(optimizer);
        ArgumentOutOfRangeException.ThrowIfNegative(adapterRank);
        this.cache = cache;
        this.optimizer = optimizer;
        int vocab = cache.Backbone.Config.VocabSize, c = cache.Channels;
        if (!initialOffset.IsEmpty && initialOffset.Length != vocab)
            throw new ArgumentException($"the offset needs one value per token ({vocab}), got {initialOffset.Length}");
        Vocab = vocab;
        AdapterRank = adapterRank;
        theta = new float[vocab + adapterRank * (c + vocab)];
        initialOffset.CopyTo(theta);
        if (adapterRank > 0)
        {
            var rng = new PhiloxStream(adapterSeed, 0);
            double scale = 1 / Math.Sqrt(c);
            var a = AdapterA;
            for (int i = 0; i < a.Length; i++) a[i] = (float)(scale * rng.NextNormal());
        }
        gradient = new float[theta.Length];
        m = new float[theta.Length];
        v = new float[theta.Length];
        if (withValueHead) ValueHead = new ScalarHead(c);
    }

    /// <summary>V(s_t) = w·h_t + c on the frozen features; null when built without one.</summary>
    public ScalarHead? ValueHead { get; }

    /// <summary>The frozen π0.</summary>
    public Gpt Backbone => cache.Backbone;
    /// <summary>The feature cache this policy scores through.</summary>
    public FrozenFeatureCache Cache => cache;
    /// <summary>r of the head adapter (0: the tilt class).</summary>
    public int AdapterRank { get; }
    /// <summary>θ = [b; A; B], everything this policy trains.</summary>
    public Span<float> Parameters => theta;
    /// <summary>b, one value per token.</summary>
    public Span<float> Offset => theta.AsSpan(0, Vocab);
    /// <summary>A [C × r], row-major (empty without an adapter).</summary>
    public Span<float> AdapterA => theta.AsSpan(Vocab, cache.Channels * AdapterRank);
    /// <summary>B [V × r], row-major (empty without an adapter).</summary>
    public Span<float> AdapterB => theta.AsSpan(Vocab + cache.Channels * AdapterRank);
    /// <summary>∂L/∂b accumulated since the last <see cref="ZeroGradients"/>.</summary>
    public ReadOnlySpan<float> OffsetGradient => gradient.AsSpan(0, Vocab);
    /// <summary>∂L/∂θ accumulated since the last <see cref="ZeroGradients"/>.</summary>
    public ReadOnlySpan<float> ParameterGradient => gradient;
    public AdamWSettings Optimizer => optimizer;
    private int Vocab { get; }

    public void Score(IReadOnlyList<PromptResponse> batch, Span<float> tokenLogProbs, Span<float> tokenEntropies = default)
    {
        int tokens = PolicyScores.TokenCount(batch);
        if (tokenLogProbs.Length != tokens) throw new ArgumentException($"the batch has {tokens} response tokens; the log-prob span has {tokenLogProbs.Length}");
        if (!tokenEntropies.IsEmpty && tokenEntropies.Length != tokens) throw new ArgumentException($"entropies need {tokens} entries, got {tokenEntropies.Length}");
        for (int s = 0; s < batch.Count; s++)
            if (batch[s].Response.Length == 0) throw new ArgumentException($"sequence {s}: the response is empty (there is nothing to score)");
        int c = cache.Channels, vocab = Vocab;
        lastTokens = tokens;
        if (tokens == 0) return;
        if (features.Length != tokens * c) features = new float[tokens * c];
        cache.Gather(batch, features);
        if (z.Length < tokens * vocab) z = new float[tokens * vocab];
        if (targets.Length < tokens) { targets = new int[tokens]; lse = new float[tokens]; entropies = new float[tokens]; }
        int at = 0;
        foreach (var s in batch) foreach (int y in s.Response) targets[at++] = y;

        var logits = z.AsSpan(0, tokens * vocab);
        var wte = Backbone.Parameters.Slice((int)Backbone.Layout.Wte, vocab * c);
        // z[t, v] = Σ_c h[t, c]·wte[v, c] + b[v]
        Gemm.Multiply(Transpose.No, Transpose.Yes, tokens, vocab, c, 1f, features, c, wte, c, 0f, logits, vocab, Offset);
        int r = AdapterRank;
        if (r > 0)
        {
            // u = h·A; z += u·Bᵀ
            if (u.Length < tokens * r) { u = new float[tokens * r]; du = new float[tokens * r]; }
            Gemm.Multiply(Transpose.No, Transpose.No, tokens, r, c, 1f, features, c, AdapterA, r, 0f, u.AsSpan(0, tokens * r), r);
            Gemm.Multiply(Transpose.No, Transpose.Yes, tokens, vocab, r, 1f, u, r, AdapterB, r, 1f, logits, vocab);
        }
        TargetLogProbs.Forward(logits, targets.AsSpan(0, tokens), vocab, tokenLogProbs, lse.AsSpan(0, tokens));
        if (!tokenEntropies.IsEmpty)
        {
            for (int t = 0; t < tokens; t++) entropies[t] = (float)Entropy(logits.Slice(t * vocab, vocab), lse[t]);
            entropies.AsSpan(0, tokens).CopyTo(tokenEntropies);
        }
    }

    /// <summary>H = lse − Σ_v p_v z_v, p_v = exp(z_v − lse), in fp64.</summary>
    private static double Entropy(ReadOnlySpan<float> logits, float logSumExp)
    {
        double weighted = 0;
        for (int v = 0; v < logits.Length; v++) weighted += Math.Exp(logits[v] - (double)logSumExp) * logits[v];
        return logSumExp - weighted;
    }

    public void Backward(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenEntropies = default)
    {
        if (lastTokens < 0) throw new InvalidOperationException("Backward needs a Score of the same batch first (each Score allows one Backward)");
        int tokens = lastTokens, vocab = Vocab;
        if (dTokenLogProbs.Length != tokens) throw new ArgumentException($"dTokenLogProbs must have one entry per response token ({tokens}), got {dTokenLogProbs.Length}");
        if (!dTokenEntropies.IsEmpty && dTokenEntropies.Length != tokens) throw new ArgumentException($"dTokenEntropies must be empty or have {tokens} entries");
        lastTokens = -1;
        if (tokens == 0) return;
        var logits = z.AsSpan(0, tokens * vocab);
        bool withEntropies = false;
        foreach (float e in dTokenEntropies) withEntropies |= e != 0;
        if (withEntropies)
        {
            // ∂H/∂z_v = −p_v (z_v − lse + H) = −p_v (ln p_v + H), taken before z is overwritten below
            if (dzEntropy.Length < tokens * vocab) dzEntropy = new float[tokens * vocab];
            for (int t = 0; t < tokens; t++)
            {
                var row = logits.Slice(t * vocab, vocab);
                var dRow = dzEntropy.AsSpan(t * vocab, vocab);
                double e = dTokenEntropies[t], h = entropies[t], l = lse[t];
                if (e == 0) { dRow.Clear(); continue; }
                for (int w = 0; w < vocab; w++)
                {
                    double logP = row[w] - l;
                    dRow[w] = (float)(-e * Math.Exp(logP) * (logP + h));
                }
            }
        }
        // z becomes ∂L/∂z = d_t (1[v = y_t] − p_t,v) (+ the entropy term)
        TargetLogProbs.Backward(logits, targets.AsSpan(0, tokens), vocab, lse.AsSpan(0, tokens), dTokenLogProbs);
        if (withEntropies) TensorPrimitives.Add(logits, dzEntropy.AsSpan(0, tokens * vocab), logits);
        // ∂L/∂b = Σ_t ∂L/∂z_t
        var gb = gradient.AsSpan(0, vocab);
        for (int t = 0; t < tokens; t++) TensorPrimitives.Add(gb, logits.Slice(t * vocab, vocab), gb);
        int r = AdapterRank, c = cache.Channels;
        if (r > 0)
        {
            var gA = gradient.AsSpan(vocab, c * r);
            var gB = gradient.AsSpan(vocab + c * r);
            // ∂L/∂B += (∂L/∂z)ᵀ·u;  ∂L/∂u = (∂L/∂z)·B;  ∂L/∂A += hᵀ·∂L/∂u
            Gemm.Multiply(Transpose.Yes, Transpose.No, vocab, r, tokens, 1f, logits, vocab, u, r, 1f, gB, r);
            Gemm.Multiply(Transpose.No, Transpose.No, tokens, r, vocab, 1f, logits, vocab, AdapterB, r, 0f, du.AsSpan(0, tokens * r), r);
            Gemm.Multiply(Transpose.Yes, Transpose.No, c, r, tokens, 1f, features, c, du, r, 1f, gA, r);
        }
    }

    public void ScoreWithValues(IReadOnlyList<PromptResponse> batch, Span<float> tokenLogProbs, Span<float> tokenValues, Span<float> tokenEntropies = default)
    {
        var head = ValueHead ?? throw new InvalidOperationException("this tilt policy was built without a value head");
        Score(batch, tokenLogProbs, tokenEntropies);
        int c = cache.Channels, tokens = lastTokens;
        if (tokenValues.Length != tokens) throw new ArgumentException($"the batch has {tokens} response tokens; tokenValues has {tokenValues.Length}");
        for (int t = 0; t < tokens; t++) tokenValues[t] = head.Forward(features.AsSpan(t * c, c));
    }

    public void BackwardWithValues(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenValues, ReadOnlySpan<float> dTokenEntropies = default)
    {
        var head = ValueHead ?? throw new InvalidOperationException("this tilt policy was built without a value head");
        int c = cache.Channels, tokens = lastTokens;
        if (tokens >= 0 && dTokenValues.Length != tokens) throw new ArgumentException($"dTokenValues must have {tokens} entries, got {dTokenValues.Length}");
        Backward(dTokenLogProbs, dTokenEntropies);
        var frozen = new float[c];   // ∂L/∂h goes nowhere: the backbone is frozen
        for (int t = 0; t < tokens; t++) head.Backward(features.AsSpan(t * c, c), dTokenValues[t], frozen);
    }

    public Continuation[] Sample(IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed) =>
        TiltedSampler.Sample(Backbone, Offset, prompts, options, seed, new HeadAdapter(AdapterRank, AdapterA, AdapterB));

    /// <summary>∂L/∂θ (and the value head's gradients) summed over the ranks of a data-parallel job.</summary>
    public void AllReduceGradients(IProcessGroup group, string purpose)
    {
        group.AllReduceSum(gradient, purpose);
        if (ValueHead is not null) group.AllReduceSum(ValueHead.Gradients, $"value head {purpose}");
    }

    /// <summary>SHA-256 fingerprint of θ (and of the value head).</summary>
    public ulong WeightsHash() =>
        ValueHead is null ? ReplicaCheck.Hash(theta) : ReplicaCheck.Combine(ReplicaCheck.Hash(theta), ReplicaCheck.Hash(ValueHead.Parameters));

    public void ZeroGradients()
    {
        Array.Clear(gradient);
        ValueHead?.ZeroGradients();
    }

    /// <summary>The global norm over ∂L/∂θ (and the value head's gradients), clipped as <see cref="GptPolicy"/> clips.</summary>
    public double ClipGradients(float maxNorm)
    {
        if (ValueHead is not null) return ValueHead.ClipWith(gradient, maxNorm);
        return maxNorm > 0 ? GradientNorm.ClipByGlobalNorm(gradient, maxNorm).Norm : GradientNorm.GlobalNorm(gradient);
    }

    public void OptimizerStep(int step, float learningRate)
    {
        AdamW.Step(theta, gradient, m, v, step, learningRate, optimizer.Beta1, optimizer.Beta2, optimizer.Epsilon, optimizer.WeightDecay);
        ValueHead?.OptimizerStep(step, learningRate, optimizer);
    }

    /// <summary>θ's tensors: b [V], and A [C, r] and B [V, r] with an adapter, each with its place in θ.</summary>
    private IEnumerable<(string Name, int Start, long[] Shape)> Tensors()
    {
        yield return (OffsetName, 0, [Vocab]);
        if (AdapterRank == 0) yield break;
        int c = cache.Channels;
        yield return (AdapterAName, Vocab, [c, AdapterRank]);
        yield return (AdapterBName, Vocab + c * AdapterRank, [Vocab, AdapterRank]);
    }

    private static int Length(long[] shape) => (int)shape.Aggregate(1L, (a, d) => a * d);

    /// <summary>θ as the tensors a model file holds beside the frozen backbone (<see cref="GptCheckpoint.SaveModel"/> marks the file
    /// as a tilt or head-LoRA model).</summary>
    public SafeTensor[] ModelTensors() =>
        [.. Tensors().Select(t => SafeTensor.FromFloats(t.Name, theta.AsSpan(t.Start, Length(t.Shape)), t.Shape))];

    /// <summary>θ's AdamW moments (<c>NAME.adam.m</c>, <c>NAME.adam.v</c> per tensor), for a training checkpoint's state file.</summary>
    public SafeTensor[] OptimizerStateTensors() =>
        [.. Tensors().SelectMany(t => new[]
        {
            SafeTensor.FromFloats(t.Name + ".adam.m", m.AsSpan(t.Start, Length(t.Shape))),
            SafeTensor.FromFloats(t.Name + ".adam.v", v.AsSpan(t.Start, Length(t.Shape))),
        })];

    /// <summary>Restores θ from a model file and its moments from a state file (as written by <see cref="ModelTensors"/> and
    /// <see cref="OptimizerStateTensors"/>); clears the gradient.</summary>
    public void ReadCheckpoint(SafeTensorsFile model, string modelPath, SafeTensorsFile state, string statePath)
    {
        foreach (var (name, start, shape) in Tensors())
        {
            int length = Length(shape);
            ScalarHead.ReadTensor(model, modelPath, name, shape, theta.AsSpan(start, length));
            ScalarHead.ReadTensor(state, statePath, name + ".adam.m", [length], m.AsSpan(start, length));
            ScalarHead.ReadTensor(state, statePath, name + ".adam.v", [length], v.AsSpan(start, length));
        }
        Array.Clear(gradient);
    }

    public NonFiniteElement? FirstNonFiniteGradient()
    {
        int adapterA = Vocab + cache.Channels * AdapterRank;
        for (int i = 0; i < gradient.Length; i++)
            if (!float.IsFinite(gradient[i]))
                return i < Vocab ? new NonFiniteElement(OffsetName, i, gradient[i])
                     : i < adapterA ? new NonFiniteElement(AdapterAName, i - Vocab, gradient[i])
                     : new NonFiniteElement(AdapterBName, i - adapterA, gradient[i]);
        return ValueHead?.FirstNonFiniteGradient("value_head.weight", "value_head.bias");
    }

    /// <summary>Same backbone and cache, a copy of θ (and of the value head), zero gradients and moments.</summary>
    public IPolicy Snapshot()
    {
        var copy = new TiltPolicy(cache, optimizer, default, ValueHead is not null, AdapterRank);
        theta.CopyTo(copy.theta, 0);
        ValueHead?.Parameters.CopyTo(copy.ValueHead!.Parameters, 0);
        return copy;
    }

    /// <summary>Copies θ, and the value head's weights when both have one.</summary>
    public void CopyWeightsFrom(IPolicy other)
    {
        if (other is not TiltPolicy tilt || tilt.Backbone != Backbone || tilt.AdapterRank != AdapterRank)
            throw new ArgumentException($"weights copy only from a TiltPolicy of the same adapter rank on the same backbone, not from a {other?.GetType().Name}");
        tilt.theta.CopyTo(theta, 0);
        if (ValueHead is not null && tilt.ValueHead is not null) tilt.ValueHead.Parameters.CopyTo(ValueHead.Parameters, 0);
    }

    /// <summary>The backbone and cache are shared, so there is nothing to release.</summary>
    public void Dispose() { }
}
