using DistAlign.Engine.Random;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Policies;

/// <summary>
/// π(y | x) = softmax(α[x, ·])[y]: a table of logits over <see cref="Responses"/> single-token responses for
/// each of <see cref="Contexts"/> contexts. A prompt is the one token [x] and a response the one token [y].
/// Every objective runs on it unchanged, and its optima have closed forms, so it is how the objectives are
/// checked — and it is the policy class of the paper's Figure 1. As an <see cref="IValuePolicy"/> it also holds a
/// value V[x] per context (the state before the single response token), trained with the same AdamW.
/// </summary>
public sealed class TabularPolicy : IValuePolicy
{
    // parameters = [α (X·Y) | V (X)]; the same layout for gradients and moments.
    private readonly float[] parameters, gradients, m, v;
    private readonly List<(int Context, int Response)> lastBatch = [];
    private readonly AdamWSettingsForTable settings;

    public int Contexts { get; }
    public int Responses { get; }

    /// <summary>The logits α [X, Y], row-major (read/write).</summary>
    public Span<float> Logits => parameters.AsSpan(0, Contexts * Responses);

    /// <summary>The values V [X] (read/write).</summary>
    public Span<float> Values => parameters.AsSpan(Contexts * Responses, Contexts);

    /// <summary>The accumulated gradient ∂L/∂α [X, Y] (tests read it).</summary>
    internal ReadOnlySpan<float> GradientsForTests => gradients.AsSpan(0, Contexts * Responses);

    /// <summary>The accumulated gradient ∂L/∂V [X] (tests read it).</summary>
    internal ReadOnlySpan<float> ValueGradientsForTests => gradients.AsSpan(Contexts * Responses, Contexts);

    public TabularPolicy(int contexts, int responses, float beta1 = 0.9f, float beta2 = 0.999f)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(contexts, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(responses, 1);
        Contexts = contexts;
        Responses = responses;
        parameters = new float[contexts * responses + contexts];
        gradients = new float[parameters.Length];
        m = new float[parameters.Length];
        v = new float[parameters.Length];
        settings = new AdamWSettingsForTable(beta1, beta2);
    }

    private sealed record AdamWSettingsForTable(float Beta1, float Beta2);

    /// <summary>π(· | x) as probabilities (fp64).</summary>
    public double[] Probabilities(int context)
    {
        var row = parameters.AsSpan(context * Responses, Responses);
        double max = double.NegativeInfinity, z = 0;
        foreach (float l in row) max = Math.Max(max, l);
        var p = new double[Responses];
        for (int y = 0; y < Responses; y++) z += p[y] = Math.Exp(row[y] - max);
        for (int y = 0; y < Responses; y++) p[y] /= z;
        return p;
    }

    public void Score(IReadOnlyList<PromptResponse> batch, Span<float> tokenLogProbs, Span<float> tokenEntropies = default)
    {
        if (tokenLogProbs.Length != batch.Count) throw new ArgumentException($"a tabular batch of {batch.Count} has {batch.Count} response tokens; got a span of {tokenLogProbs.Length}");
        if (!tokenEntropies.IsEmpty && tokenEntropies.Length != batch.Count) throw new ArgumentException("tokenEntropies must be empty or one per sequence");
        lastBatch.Clear();
        for (int i = 0; i < batch.Count; i++)
        {
            var (x, y) = Decode(batch[i], i);
            lastBatch.Add((x, y));
            var p = Probabilities(x);
            tokenLogProbs[i] = (float)Math.Log(p[y]);
            if (!tokenEntropies.IsEmpty)
            {
                double h = 0;
                foreach (double pk in p) if (pk > 0) h -= pk * Math.Log(pk);
                tokenEntropies[i] = (float)h;
            }
        }
        lastHadEntropies = !tokenEntropies.IsEmpty;
    }

    private bool lastHadEntropies;

    /// <summary>∂L/∂α[x,k] += a·(1[k = y] − p_k) − b·p_k·(ln p_k + H(π(·|x))).</summary>
    public void Backward(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenEntropies = default)
    {
        if (dTokenLogProbs.Length != lastBatch.Count) throw new ArgumentException($"dTokenLogProbs must match the last Score's {lastBatch.Count} tokens");
        if (!dTokenEntropies.IsEmpty && !lastHadEntropies) throw new InvalidOperationException("an entropy gradient needs a Score that computed entropies");
        for (int i = 0; i < lastBatch.Count; i++)
        {
            var (x, y) = lastBatch[i];
            var p = Probabilities(x);
            double a = dTokenLogProbs[i], b = dTokenEntropies.IsEmpty ? 0 : dTokenEntropies[i];
            double h = 0;
            if (b != 0) foreach (double pk in p) if (pk > 0) h -= pk * Math.Log(pk);
            var g = gradients.AsSpan(x * Responses, Responses);
            for (int k = 0; k < Responses; k++)
            {
                double d = -a * p[k];
                if (b != 0 && p[k] > 0) d -= b * p[k] * (Math.Log(p[k]) + h);
                g[k] += (float)d;
            }
            g[y] += (float)a;
        }
    }

    public Continuation[] Sample(IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed)
    {
        var result = new Continuation[prompts.Count];
        for (int r = 0; r < prompts.Count; r++)
        {
            if (prompts[r].Length != 1 || (uint)prompts[r][0] >= (uint)Contexts)
                throw new ArgumentException($"prompt {r}: a tabular prompt is one context id in [0, {Contexts})");
            int x = prompts[r][0];
            var p = Probabilities(x);
            double u = new PhiloxStream(seed, (ulong)r).NextFloat(), acc = 0;
            int y = Responses - 1;
            for (int k = 0; k < Responses; k++)
            {
                acc += p[k];
                if (u < acc) { y = k; break; }
            }
            result[r] = new Continuation([y], [(float)Math.Log(p[y])], Ended: false);
        }
        return result;
    }

    public void ZeroGradients() => Array.Clear(gradients);

    public Transformer.Model.NonFiniteElement? FirstNonFiniteGradient()
    {
        int i = Array.FindIndex(gradients, g => !float.IsFinite(g));
        return i < 0 ? null : new Transformer.Model.NonFiniteElement("logits", i, gradients[i]);
    }

    public double ClipGradients(float maxNorm) =>
        maxNorm > 0 ? GradientNorm.ClipByGlobalNorm(gradients, maxNorm).Norm : GradientNorm.GlobalNorm(gradients);

    public void OptimizerStep(int step, float learningRate) =>
        AdamW.Step(parameters, gradients, m, v, step, learningRate, settings.Beta1, settings.Beta2, 1e-8f, 0f);

    public IPolicy Snapshot()
    {
        var copy = new TabularPolicy(Contexts, Responses, settings.Beta1, settings.Beta2);
        parameters.CopyTo(copy.parameters, 0);
        return copy;
    }

    public void CopyWeightsFrom(IPolicy other)
    {
        if (other is not TabularPolicy t || t.Contexts != Contexts || t.Responses != Responses)
            throw new ArgumentException($"can only copy from a {Contexts}×{Responses} tabular policy");
        t.parameters.CopyTo(parameters, 0);
    }

    public void ScoreWithValues(IReadOnlyList<PromptResponse> batch, Span<float> tokenLogProbs, Span<float> tokenValues, Span<float> tokenEntropies = default)
    {
        if (tokenValues.Length != batch.Count) throw new ArgumentException($"a tabular batch of {batch.Count} has {batch.Count} response tokens; got {tokenValues.Length} values");
        Score(batch, tokenLogProbs, tokenEntropies);
        for (int i = 0; i < batch.Count; i++) tokenValues[i] = Values[lastBatch[i].Context];
    }

    /// <summary>As <see cref="Backward"/>, plus ∂L/∂V[x] += ∂L/∂V of each token in context x.</summary>
    public void BackwardWithValues(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenValues, ReadOnlySpan<float> dTokenEntropies = default)
    {
        if (dTokenValues.Length != lastBatch.Count) throw new ArgumentException($"dTokenValues must match the last Score's {lastBatch.Count} tokens");
        Backward(dTokenLogProbs, dTokenEntropies);
        int offset = Contexts * Responses;
        for (int i = 0; i < lastBatch.Count; i++) gradients[offset + lastBatch[i].Context] += dTokenValues[i];
    }

    private (int X, int Y) Decode(PromptResponse s, int index)
    {
        if (s.Prompt.Length != 1 || (uint)s.Prompt[0] >= (uint)Contexts)
            throw new ArgumentException($"sequence {index}: a tabular prompt is one context id in [0, {Contexts})");
        if (s.Response.Length != 1 || (uint)s.Response[0] >= (uint)Responses)
            throw new ArgumentException($"sequence {index}: a tabular response is one response id in [0, {Responses})");
        return (s.Prompt[0], s.Response[0]);
    }

    public void Dispose() { }
}
