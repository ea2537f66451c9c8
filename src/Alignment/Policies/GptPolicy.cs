using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Alignment.Policies;

/// <summary>
/// A <see cref="Gpt"/> as a policy. A batch of (prompt, response) sequences is packed into rows of the
/// model's context length, several sequences per row back to back (each its own segment, positions
/// restarting at 0, attention never crossing), in order, first fit: no padding inside a row, and only
/// response tokens carry targets. Built with a value head (<see cref="IValuePolicy"/>), it reads V(s_t) off the
/// same forward's final hidden state at the position that predicts token t, and its gradient joins the LM head's
/// in one transformer backward.
/// </summary>
public sealed class GptPolicy : IGptValueModel
{
    private readonly AdamWSettings optimizer;
    private readonly bool ownsModel;
    private GptBatch? batch;
    private int[] tokenPosition = [];   // flat response token → position in the packed batch
    private float[] positionLogProbs = [], positionEntropies = [], dPosition = [], dPositionEntropy = [];
    private bool lastHadEntropies;

    private float[] valueFeatures = [], dFeatures = [];   // h at each response token's position [tokens, C]; ∂L/∂h [N, C]

    /// <summary>The GPT trained in place (also what checkpoints save).</summary>
    public Gpt Model { get; }

    /// <summary>Nothing to do: <see cref="Model"/> is the trained model.</summary>
    public void CopyToHost() { }

    /// <summary>Nothing to do: <see cref="Model"/> is the trained model.</summary>
    public void CopyFromHost() { }

    /// <summary>The value head, or null when built without one.</summary>
    public ScalarHead? ValueHead { get; }

    public GptPolicy(Gpt model, AdamWSettings optimizer, bool ownsModel = false, bool withValueHead = false)
    {
        Model = model;
        this.optimizer = optimizer;
        this.ownsModel = ownsModel;
        if (withValueHead) ValueHead = new ScalarHead(model.Config.Channels);
    }

    /// <summary>
    /// Packs sequences into rows of length T = the model's context (see <see cref="PackSequences"/>): only
    /// response tokens carry targets, and the last response token is only a target.
    /// </summary>
    private GptBatch Pack(IReadOnlyList<PromptResponse> sequences)
    {
        int total = PolicyScores.TokenCount(sequences);
        if (tokenPosition.Length != total) tokenPosition = new int[total];
        batch = PackSequences(sequences, Model.Config.MaxSequenceLength, batch, includeLastResponseToken: false, tokenPosition, default);
        return batch;
    }

    /// <summary>
    /// Packs (prompt, response) sequences into rows of length <paramref name="context"/>, several sequences per
    /// row back to back (each its own segment, positions restarting at 0, attention never crossing), in order,
    /// first fit: no padding inside a row. Rows are rounded up to a power of two so the model sees few distinct
    /// batch shapes (each shape keeps its own activation arena); unused positions are each their own segment.
    /// <list type="bullet">
    /// <item><paramref name="includeLastResponseToken"/> = false (a policy): sequence s takes |prompt| + |response| − 1
    /// positions, the last response token is only a target, and response tokens are the targets;
    /// <paramref name="tokenPosition"/>[flat response token] = its position in the batch.</item>
    /// <item>true (a reward model): sequence s takes |prompt| + |response| positions and no position has a target;
    /// <paramref name="lastPosition"/>[s] = the position of its last response token.</item>
    /// </list>
    /// Either output span may be empty when not wanted. <paramref name="reuse"/> is returned refilled when its shape fits.
    /// </summary>
    internal static GptBatch PackSequences(IReadOnlyList<PromptResponse> sequences, int context, GptBatch? reuse,
                                           bool includeLastResponseToken, Span<int> tokenPosition, Span<int> lastPosition)
    {
        int t = context;
        int extra = includeLastResponseToken ? 0 : 1;
        string lengthRule = includeLastResponseToken ? "prompt ({0}) + response ({1})" : "prompt ({0}) + response ({1}) − 1";
        var rowOf = new int[sequences.Count];
        var offsetOf = new int[sequences.Count];
        int row = 0, used = 0;
        for (int s = 0; s < sequences.Count; s++)
        {
            var (prompt, response) = sequences[s];
            if (prompt.Length == 0) throw new ArgumentException($"sequence {s}: the prompt needs at least one token (e.g. <|endoftext|>)");
            if (response.Length == 0) throw new ArgumentException($"sequence {s}: the response is empty");
            int need = prompt.Length + response.Length - extra;
            if (need > t)
                throw new ArgumentException($"sequence {s}: {string.Format(System.Globalization.CultureInfo.InvariantCulture, lengthRule, prompt.Length, response.Length)} = {need} tokens exceed the context of {t}");
            if (used + need > t) { row++; used = 0; }
            rowOf[s] = row;
            offsetOf[s] = used;
            used += need;
        }
        int rows = (int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)Math.Max(1, row + 1));
        var batch = reuse is not null && reuse.Rows == rows && reuse.Length == t ? reuse : new GptBatch(rows, t);
        batch.Clear();
        // Unused positions: each its own segment at position 0, so nothing real attends to them.
        for (int i = 0; i < batch.TokenCount; i++) { batch.Segments[i] = -1 - i; batch.Positions[i] = 0; }
        int flat = 0;
        for (int s = 0; s < sequences.Count; s++)
        {
            var (prompt, response) = sequences[s];
            int start = rowOf[s] * t + offsetOf[s];
            int need = prompt.Length + response.Length - extra;
            for (int i = 0; i < need; i++)
            {
                batch.Tokens[start + i] = i < prompt.Length ? prompt[i] : response[i - prompt.Length];
                batch.Positions[start + i] = i;
                batch.Segments[start + i] = s;
            }
            if (!lastPosition.IsEmpty) lastPosition[s] = start + need - 1;
            if (includeLastResponseToken) continue;
            for (int i = 0; i < response.Length; i++)
            {
                int at = start + prompt.Length - 1 + i;
                batch.Targets[at] = response[i];
                if (!tokenPosition.IsEmpty) tokenPosition[flat] = at;
                flat++;
            }
        }
        return batch;
    }

    public void Score(IReadOnlyList<PromptResponse> sequences, Span<float> tokenLogProbs, Span<float> tokenEntropies = default)
    {
        var b = Pack(sequences);
        if (tokenLogProbs.Length != tokenPosition.Length)
            throw new ArgumentException($"the batch has {tokenPosition.Length} response tokens; tokenLogProbs has {tokenLogProbs.Length}");
        if (positionLogProbs.Length != b.TokenCount)
        {
            positionLogProbs = new float[b.TokenCount];
            positionEntropies = new float[b.TokenCount];
            dPosition = new float[b.TokenCount];
            dPositionEntropy = new float[b.TokenCount];
        }
        lastHadEntropies = !tokenEntropies.IsEmpty;
        Model.Forward(b, positionLogProbs, lastHadEntropies ? positionEntropies : default);
        for (int i = 0; i < tokenPosition.Length; i++)
        {
            tokenLogProbs[i] = positionLogProbs[tokenPosition[i]];
            if (lastHadEntropies) tokenEntropies[i] = positionEntropies[tokenPosition[i]];
        }
    }

    public void Backward(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenEntropies = default) =>
        Backward(dTokenLogProbs, dTokenEntropies, default);

    private void Backward(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenEntropies, ReadOnlySpan<float> dFeatures)
    {
        if (batch is null) throw new InvalidOperationException("Backward needs a Score first");
        if (dTokenLogProbs.Length != tokenPosition.Length) throw new ArgumentException($"dTokenLogProbs must have {tokenPosition.Length} entries");
        Array.Clear(dPosition);
        Array.Clear(dPositionEntropy);
        for (int i = 0; i < tokenPosition.Length; i++)
        {
            dPosition[tokenPosition[i]] = dTokenLogProbs[i];
            if (!dTokenEntropies.IsEmpty) dPositionEntropy[tokenPosition[i]] = dTokenEntropies[i];
        }
        Model.Backward(batch, dPosition, dTokenEntropies.IsEmpty ? default : dPositionEntropy, dFeatures);
    }

    public void ScoreWithValues(IReadOnlyList<PromptResponse> sequences, Span<float> tokenLogProbs, Span<float> tokenValues, Span<float> tokenEntropies = default)
    {
        var head = ValueHead ?? throw new InvalidOperationException("this GPT policy was built without a value head");
        Score(sequences, tokenLogProbs, tokenEntropies);
        int c = Model.Config.Channels, tokens = tokenPosition.Length;
        if (tokenValues.Length != tokens) throw new ArgumentException($"the batch has {tokens} response tokens; tokenValues has {tokenValues.Length}");
        if (valueFeatures.Length != tokens * c) valueFeatures = new float[tokens * c];
        var h = Model.LastFeatures(batch!);
        for (int i = 0; i < tokens; i++)
        {
            var hi = h.Slice(tokenPosition[i] * c, c);
            hi.CopyTo(valueFeatures.AsSpan(i * c, c));
            tokenValues[i] = head.Forward(hi);
        }
    }

    public void BackwardWithValues(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenValues, ReadOnlySpan<float> dTokenEntropies = default)
    {
        var head = ValueHead ?? throw new InvalidOperationException("this GPT policy was built without a value head");
        if (batch is null) throw new InvalidOperationException("Backward needs a Score first");
        Backward(dTokenLogProbs, dTokenEntropies, ValueFeatureGradient(head, dTokenValues));
    }

    /// <summary>
    /// V(s_t) per response token from the backbone and the value head alone (no LM head): a separate value model.
    /// <see cref="BackwardValuesOnly"/> refers to this batch.
    /// </summary>
    public void ScoreValuesOnly(IReadOnlyList<PromptResponse> sequences, Span<float> tokenValues)
    {
        var head = ValueHead ?? throw new InvalidOperationException("this GPT policy was built without a value head");
        var b = Pack(sequences);
        int c = Model.Config.Channels, tokens = tokenPosition.Length;
        if (tokenValues.Length != tokens) throw new ArgumentException($"the batch has {tokens} response tokens; tokenValues has {tokenValues.Length}");
        if (valueFeatures.Length != tokens * c) valueFeatures = new float[tokens * c];
        var h = Model.ForwardFeatures(b);
        for (int i = 0; i < tokens; i++)
        {
            var hi = h.Slice(tokenPosition[i] * c, c);
            hi.CopyTo(valueFeatures.AsSpan(i * c, c));
            tokenValues[i] = head.Forward(hi);
        }
    }

    /// <summary>Accumulates the gradient of a loss given ∂L/∂V per response token of the last <see cref="ScoreValuesOnly"/>.</summary>
    public void BackwardValuesOnly(ReadOnlySpan<float> dTokenValues)
    {
        var head = ValueHead ?? throw new InvalidOperationException("this GPT policy was built without a value head");
        if (batch is null) throw new InvalidOperationException("BackwardValuesOnly needs a ScoreValuesOnly first");
        Model.BackwardFeatures(batch, ValueFeatureGradient(head, dTokenValues));
    }

    private float[] ValueFeatureGradient(ScalarHead head, ReadOnlySpan<float> dTokenValues)
    {
        int c = Model.Config.Channels, tokens = tokenPosition.Length;
        if (dTokenValues.Length != tokens) throw new ArgumentException($"dTokenValues must have {tokens} entries");
        if (valueFeatures.Length != tokens * c) throw new InvalidOperationException("a value backward needs a value forward on the batch first");
        if (dFeatures.Length != batch!.TokenCount * c) dFeatures = new float[batch.TokenCount * c];
        else Array.Clear(dFeatures);
        for (int i = 0; i < tokens; i++)
            head.Backward(valueFeatures.AsSpan(i * c, c), dTokenValues[i], dFeatures.AsSpan(tokenPosition[i] * c, c));
        return dFeatures;
    }

    public Continuation[] Sample(IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed) => Sampler.Generate(Model, prompts, options, seed);

    public void ZeroGradients()
    {
        Model.ZeroGradients();
        ValueHead?.ZeroGradients();
    }

    public double ClipGradients(float maxNorm)
    {
        if (ValueHead is not null) return ValueHead.ClipWith(Model.Gradients, maxNorm);
        return maxNorm > 0 ? GradientNorm.ClipByGlobalNorm(Model.Gradients, maxNorm).Norm : GradientNorm.GlobalNorm(Model.Gradients);
    }

    public void OptimizerStep(int step, float learningRate)
    {
        AdamWOptimizer.Step(Model, step, learningRate, optimizer);
        ValueHead?.OptimizerStep(step, learningRate, optimizer);
    }

    public NonFiniteElement? FirstNonFiniteGradient()
    {
        return NonFiniteElement.FindFirst(Model.Layout, Model.Gradients) ?? ValueHead?.FirstNonFiniteGradient("value_head.weight", "value_head.bias");
    }

    /// <summary>A copy of the weights (and of the value head, when there is one) with zero gradients and moments.</summary>
    public IPolicy Snapshot()
    {
        var copy = new Gpt(Model.Config);
        Model.Parameters.CopyTo(copy.Parameters);
        var policy = new GptPolicy(copy, optimizer, ownsModel: true, withValueHead: ValueHead is not null);
        ValueHead?.Parameters.CopyTo(policy.ValueHead!.Parameters, 0);
        return policy;
    }

    /// <summary>Copies the GPT's weights, and the value head's when both have one.</summary>
    public void CopyWeightsFrom(IPolicy other)
    {
        if (other is not GptPolicy g || g.Model.Config != Model.Config)
            throw new ArgumentException($"can only copy from a GPT policy of the same config ({Model.Config})");
        g.Model.Parameters.CopyTo(Model.Parameters);
        if (ValueHead is not null && g.ValueHead is not null) g.ValueHead.Parameters.CopyTo(ValueHead.Parameters, 0);
    }

    public void Dispose()
    {
        if (ownsModel) Model.Dispose();
    }
}
