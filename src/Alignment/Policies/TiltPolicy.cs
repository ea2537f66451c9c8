using System.Numerics.Tensors;
using DistAlign.Engine.SafeTensors;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Alignment.Policies;

/// <summary>
/// A frozen GPT π0 with a trainable per-token logit offset b: π_b(v | ctx) = π0(v | ctx)·exp(b_v) / Z_b(ctx).
/// It is the policy class of the realizable known-target experiment (the paper's Assumptions 1 and 5): the target
/// π* ∝ π0·exp(w/τ) is exactly b = w/τ, and b = 0 is π0. Weight decay on b pulls it toward π0 (an L2 penalty).
/// </summary>
/// <remarks>
/// <code>
/// forward, per response token t with context features h_t (ln_f of the frozen backbone, from a FrozenFeatureCache):
///   z_t = h_t · wteᵀ + b                     (the tied LM head plus the offset; one GEMM over the batch, b as its bias)
///   ln π_b(y_t | ·) = z_t[y_t] − lse(z_t)     (TargetLogProbs)
///   H_t = lse(z_t) − Σ_v p_t,v z_t,v          (fp64, only when asked)
/// backward, given d_t = ∂L/∂ln π_b(y_t) and e_t = ∂L/∂H_t:
///   ∂L/∂b_v = Σ_t d_t (1[v = y_t] − p_t,v) − Σ_t e_t p_t,v (ln p_t,v + H_t)
/// </code>
/// A training step therefore costs one [tokens × C]·[C × V] GEMM and O(tokens·V) elementwise work: no transformer pass
/// once the cache holds the batch's sequences. <see cref="Score"/> keeps z of its batch ([tokens × V] floats) for
/// <see cref="Backward"/>. Sampling is exact KV-cache decoding of the backbone with b added (<see cref="TiltedSampler"/>).
/// With a value head (PPO), V(s_t) = w·h_t + c is a second linear head on the same frozen features, trained with b.
/// </remarks>
public sealed class TiltPolicy : IValuePolicy
{
    /// <summary>The name of b in model files, checkpoints and error messages.</summary>
    public const string OffsetName = GptCheckpoint.LogitOffsetName;
    /// <summary>The names of b's AdamW moments in a training checkpoint's state file.</summary>
    public const string OffsetAdamMName = OffsetName + ".adam.m", OffsetAdamVName = OffsetName + ".adam.v";

    private readonly FrozenFeatureCache cache;
    private readonly AdamWSettings optimizer;
    private readonly float[] offset, gradient, m, v;
    private float[] z = [], lse = [], entropies = [], features = [];
    private int[] targets = [];
    private int lastTokens = -1;

    /// <param name="cache">the frozen backbone and its features (shared with snapshots and other heads)</param>
    /// <param name="optimizer">AdamW for b; its weight decay is an L2 pull of b toward 0, i.e. of π_b toward π0</param>
    /// <param name="initialOffset">b at the start (empty: 0, i.e. π0)</param>
    /// <param name="withValueHead">a linear value head on the frozen features (PPO's critic), starting at zero</param>
    public TiltPolicy(FrozenFeatureCache cache, AdamWSettings optimizer, ReadOnlySpan<float> initialOffset = default, bool withValueHead = false)
    {
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(optimizer);
        this.cache = cache;
        this.optimizer = optimizer;
        int vocab = cache.Backbone.Config.VocabSize;
        if (!initialOffset.IsEmpty && initialOffset.Length != vocab)
            throw new ArgumentException($"the offset needs one value per token ({vocab}), got {initialOffset.Length}");
        offset = new float[vocab];
        initialOffset.CopyTo(offset);
        gradient = new float[vocab];
        m = new float[vocab];
        v = new float[vocab];
        if (withValueHead) ValueHead = new ScalarHead(cache.Channels);
    }

    /// <summary>V(s_t) = w·h_t + c on the frozen features; null when built without one.</summary>
    public ScalarHead? ValueHead { get; }

    /// <summary>The frozen π0.</summary>
    public Gpt Backbone => cache.Backbone;
    /// <summary>The feature cache this policy scores through.</summary>
    public FrozenFeatureCache Cache => cache;
    /// <summary>b, one value per token.</summary>
    public Span<float> Offset => offset;
    /// <summary>∂L/∂b accumulated since the last <see cref="ZeroGradients"/>.</summary>
    public ReadOnlySpan<float> OffsetGradient => gradient;
    public AdamWSettings Optimizer => optimizer;
    private int Vocab => offset.Length;

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
        Gemm.Multiply(Transpose.No, Transpose.Yes, tokens, vocab, c, 1f, features, c, wte, c, 0f, logits, vocab, offset);
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
        if (!dTokenEntropies.IsEmpty)
        {
            // ∂H/∂z_v = −p_v (z_v − lse + H) = −p_v (ln p_v + H), before z is overwritten below
            for (int t = 0; t < tokens; t++)
            {
                if (dTokenEntropies[t] == 0) continue;
                double e = dTokenEntropies[t], h = entropies[t], l = lse[t];
                var row = logits.Slice(t * vocab, vocab);
                for (int u = 0; u < vocab; u++)
                {
                    double logP = row[u] - l;
                    gradient[u] += (float)(-e * Math.Exp(logP) * (logP + h));
                }
            }
        }
        // z becomes ∂L/∂z = d_t (1[v = y_t] − p_t,v); ∂L/∂b = Σ_t ∂L/∂z_t
        TargetLogProbs.Backward(logits, targets.AsSpan(0, tokens), vocab, lse.AsSpan(0, tokens), dTokenLogProbs);
        for (int t = 0; t < tokens; t++) TensorPrimitives.Add(gradient, logits.Slice(t * vocab, vocab), gradient);
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
        TiltedSampler.Sample(Backbone, offset, prompts, options, seed);

    public void ZeroGradients()
    {
        Array.Clear(gradient);
        ValueHead?.ZeroGradients();
    }

    /// <summary>The global norm over ∂L/∂b (and the value head's gradients), clipped as <see cref="GptPolicy"/> clips.</summary>
    public double ClipGradients(float maxNorm)
    {
        if (ValueHead is not null) return ValueHead.ClipWith(gradient, maxNorm);
        return maxNorm > 0 ? GradientNorm.ClipByGlobalNorm(gradient, maxNorm).Norm : GradientNorm.GlobalNorm(gradient);
    }

    public void OptimizerStep(int step, float learningRate)
    {
        AdamW.Step(offset, gradient, m, v, step, learningRate, optimizer.Beta1, optimizer.Beta2, optimizer.Epsilon, optimizer.WeightDecay);
        ValueHead?.OptimizerStep(step, learningRate, optimizer);
    }

    /// <summary>b as the tensor a model file holds beside the frozen backbone (<see cref="GptCheckpoint.SaveModel"/> marks the file as a tilt model).</summary>
    public SafeTensor OffsetTensor() => SafeTensor.FromFloats(OffsetName, offset, [offset.Length]);

    /// <summary>b's AdamW moments, for a training checkpoint's state file.</summary>
    public SafeTensor[] OptimizerStateTensors() => [SafeTensor.FromFloats(OffsetAdamMName, m), SafeTensor.FromFloats(OffsetAdamVName, v)];

    /// <summary>Restores b from a model file and its moments from a state file (as written by <see cref="OffsetTensor"/> and
    /// <see cref="OptimizerStateTensors"/>); clears the gradient.</summary>
    public void ReadCheckpoint(SafeTensorsFile model, string modelPath, SafeTensorsFile state, string statePath)
    {
        ScalarHead.ReadTensor(model, modelPath, OffsetName, [Vocab], offset);
        ScalarHead.ReadTensor(state, statePath, OffsetAdamMName, [Vocab], m);
        ScalarHead.ReadTensor(state, statePath, OffsetAdamVName, [Vocab], v);
        Array.Clear(gradient);
    }

    public NonFiniteElement? FirstNonFiniteGradient()
    {
        for (int i = 0; i < gradient.Length; i++)
            if (!float.IsFinite(gradient[i])) return new NonFiniteElement(OffsetName, i, gradient[i]);
        return ValueHead?.FirstNonFiniteGradient("value_head.weight", "value_head.bias");
    }

    /// <summary>Same backbone and cache, a copy of b (and of the value head), zero gradients and moments.</summary>
    public IPolicy Snapshot()
    {
        var copy = new TiltPolicy(cache, optimizer, offset, ValueHead is not null);
        ValueHead?.Parameters.CopyTo(copy.ValueHead!.Parameters, 0);
        return copy;
    }

    /// <summary>Copies b, and the value head's weights when both have one.</summary>
    public void CopyWeightsFrom(IPolicy other)
    {
        if (other is not TiltPolicy tilt || tilt.Backbone != Backbone)
            throw new ArgumentException($"weights copy only from a TiltPolicy on the same backbone, not from a {other?.GetType().Name}");
        tilt.offset.CopyTo(offset, 0);
        if (ValueHead is not null && tilt.ValueHead is not null) tilt.ValueHead.Parameters.CopyTo(ValueHead.Parameters, 0);
    }

    /// <summary>The backbone and cache are shared, so there is nothing to release.</summary>
    public void Dispose() { }
}
