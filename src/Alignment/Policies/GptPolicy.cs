using DistAlign.Engine.Distributed;
using DistAlign.Transformer.Devices;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Alignment.Policies;

/// <summary>
/// A GPT as a policy, on any engine (<see cref="IGptEngine"/> from a <see cref="GptDevice"/>: the CPU <see cref="Gpt"/>,
/// or a GPU model with cuBLAS GEMMs). A batch of (prompt, response) sequences is packed into rows of the model's context
/// length, several sequences per row back to back (each its own segment, positions restarting at 0, attention never
/// crossing), in order, first fit: no padding inside a row, and only response tokens carry targets. Scores, gradients,
/// clipping and AdamW run on the engine.
/// </summary>
/// <remarks>
/// <list type="bullet">
/// <item><b>Host model</b>: <see cref="Model"/> is what checkpoints save. On the CPU it is the engine itself, trained in
/// place; on a device it is the mirror of the device copy, refreshed by <see cref="CopyToHost"/> only when the device
/// weights changed since the last refresh.</item>
/// <item><b>Value head</b> (PPO, built with <c>withValueHead</c>): a <see cref="ScalarHead"/> on the host reads V(s_t) off the
/// same forward's final hidden state h at the position that predicts token t (the engine copies those rows to the host);
/// its gradient ∂L/∂h_t = ∂L/∂V_t·w goes back as rows at those positions and joins the LM head's in one transformer
/// backward. The clip's global norm covers the engine's gradients and the head's, and AdamW steps both.</item>
/// <item><b>Sampling</b> decodes on the engine (<see cref="IGptEngine.CreateDecoder"/>); the draws are made on the host from
/// the same Philox streams whatever the engine, so samples agree wherever the logits do.</item>
/// </list>
/// </remarks>
public sealed class GptPolicy : IValuePolicy
{
    private readonly AdamWSettings optimizer;
    private readonly bool ownsModel;
    private GptBatch? batch;
    private int[] tokenPosition = [];   // flat response token → position in the packed batch
    private float[] positionLogProbs = [], positionEntropies = [], dPosition = [], dPositionEntropy = [];
    // value head: h at each response token's position [tokens, C]; ∂L/∂h at those positions [tokens, C]
    private float[] valueFeatures = [], dValueRows = [];
    // The engine's state changes at every optimizer step and weight copy; the host model holds it when the versions agree.
    private long engineVersion, hostStateVersion;

    /// <summary>The host model: the one trained (CPU) or the mirror of the device copy (current after <see cref="CopyToHost"/>); checkpoints save it.</summary>
    public Gpt Model { get; }

    /// <summary>The engine that trains: <see cref="Model"/> itself on the CPU.</summary>
    public IGptEngine Engine { get; }

    /// <summary>Where <see cref="Engine"/> runs; snapshots are built there too.</summary>
    public GptDevice Device { get; }

    /// <summary>The value head (on the host), or null when built without one.</summary>
    public ScalarHead? ValueHead { get; }

    /// <param name="model">the host model: the weights trained in place on the CPU; on a device the initial weights, and from then on the mirror</param>
    /// <param name="optimizer">AdamW's hyper-parameters</param>
    /// <param name="ownsModel">dispose <paramref name="model"/> with the policy</param>
    /// <param name="withValueHead">add a PPO value head (zero-initialised, on the host)</param>
    /// <param name="device">where to train (default the CPU); the policy disposes the engine it gets there</param>
    public GptPolicy(Gpt model, AdamWSettings optimizer, bool ownsModel = false, bool withValueHead = false, GptDevice? device = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(optimizer);
        Model = model;
        this.optimizer = optimizer;
        this.ownsModel = ownsModel;
        Device = device ?? GptDevice.Cpu;
        if (withValueHead) ValueHead = new ScalarHead(model.Config.Channels);
        Engine = Device.EngineFor(model);
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

    /// <summary>
    /// ln π per response token and, when <paramref name="tokenEntropies"/> is non-empty, the entropy of π(· | prefix) there,
    /// from one engine forward over the packed batch.
    /// </summary>
    public void Score(IReadOnlyList<PromptResponse> sequences, Span<float> tokenLogProbs, Span<float> tokenEntropies = default)
    {
        var b = Pack(sequences);
        if (tokenLogProbs.Length != tokenPosition.Length)
            throw new ArgumentException($"the batch has {tokenPosition.Length} response tokens; tokenLogProbs has {tokenLogProbs.Length}");
        if (!tokenEntropies.IsEmpty && tokenEntropies.Length != tokenPosition.Length)
            throw new ArgumentException($"the batch has {tokenPosition.Length} response tokens; tokenEntropies has {tokenEntropies.Length}");
        if (positionLogProbs.Length != b.TokenCount)
        {
            positionLogProbs = new float[b.TokenCount];
            positionEntropies = new float[b.TokenCount];
            dPosition = new float[b.TokenCount];
            dPositionEntropy = new float[b.TokenCount];
        }
        bool withEntropies = !tokenEntropies.IsEmpty;
        Engine.Forward(b, positionLogProbs, withEntropies ? positionEntropies : default);
        for (int i = 0; i < tokenPosition.Length; i++)
        {
            tokenLogProbs[i] = positionLogProbs[tokenPosition[i]];
            if (withEntropies) tokenEntropies[i] = positionEntropies[tokenPosition[i]];
        }
    }

    /// <summary>Scatters ∂L/∂ln π (and ∂L/∂H, when given) to the packed positions and runs the engine's backward (accumulates).</summary>
    public void Backward(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenEntropies = default)
    {
        var b = batch ?? throw new InvalidOperationException("Backward needs a Score first");
        ScatterToPositions(dTokenLogProbs, dTokenEntropies);
        Engine.Backward(b, dPosition, dTokenEntropies.IsEmpty ? default : dPositionEntropy);
    }

    // dPosition (and dPositionEntropy when dTokenEntropies is given) ← the per-token gradients at their packed positions, 0 elsewhere.
    private void ScatterToPositions(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenEntropies)
    {
        if (dTokenLogProbs.Length != tokenPosition.Length) throw new ArgumentException($"dTokenLogProbs must have {tokenPosition.Length} entries");
        if (!dTokenEntropies.IsEmpty && dTokenEntropies.Length != tokenPosition.Length)
            throw new ArgumentException($"dTokenEntropies must be empty or have {tokenPosition.Length} entries");
        Array.Clear(dPosition);
        for (int i = 0; i < tokenPosition.Length; i++) dPosition[tokenPosition[i]] = dTokenLogProbs[i];
        if (dTokenEntropies.IsEmpty) return;
        Array.Clear(dPositionEntropy);
        for (int i = 0; i < tokenPosition.Length; i++) dPositionEntropy[tokenPosition[i]] = dTokenEntropies[i];
    }

    /// <summary>As <see cref="Score"/>, also V(s_t) = w·h_t + b per response token, h_t the final features at the position that predicts token t.</summary>
    public void ScoreWithValues(IReadOnlyList<PromptResponse> sequences, Span<float> tokenLogProbs, Span<float> tokenValues, Span<float> tokenEntropies = default)
    {
        var head = RequireValueHead();
        Score(sequences, tokenLogProbs, tokenEntropies);
        ReadValues(head, tokenValues);
    }

    /// <summary>
    /// As <see cref="Backward"/>, with the value head's gradient: ∂L/∂w, ∂L/∂b on the host and ∂L/∂h_t = ∂L/∂V_t·w at each
    /// scored position, added to the LM head's ∂L/∂h before one transformer backward.
    /// </summary>
    public void BackwardWithValues(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenValues, ReadOnlySpan<float> dTokenEntropies = default)
    {
        var head = RequireValueHead();
        var b = batch ?? throw new InvalidOperationException("Backward needs a Score first");
        var rows = ValueFeatureGradient(head, dTokenValues);
        ScatterToPositions(dTokenLogProbs, dTokenEntropies);
        Engine.Backward(b, dPosition, dTokenEntropies.IsEmpty ? default : dPositionEntropy, tokenPosition, rows);
    }

    /// <summary>
    /// V(s_t) per response token from the backbone and the value head alone (no LM head): a separate value model.
    /// <see cref="BackwardValuesOnly"/> refers to this batch.
    /// </summary>
    public void ScoreValuesOnly(IReadOnlyList<PromptResponse> sequences, Span<float> tokenValues)
    {
        var head = RequireValueHead();
        Engine.ForwardFeatures(Pack(sequences));
        ReadValues(head, tokenValues);
    }

    /// <summary>Accumulates the gradient of a loss given ∂L/∂V per response token of the last <see cref="ScoreValuesOnly"/>.</summary>
    public void BackwardValuesOnly(ReadOnlySpan<float> dTokenValues)
    {
        var head = RequireValueHead();
        var b = batch ?? throw new InvalidOperationException("BackwardValuesOnly needs a ScoreValuesOnly first");
        Engine.BackwardFeatureRows(b, tokenPosition, ValueFeatureGradient(head, dTokenValues));
    }

    private ScalarHead RequireValueHead() => ValueHead ?? throw new InvalidOperationException("this GPT policy was built without a value head");

    // valueFeatures [tokens, C] = h at each response token's position; tokenValues[t] = w·h_t + b.
    private void ReadValues(ScalarHead head, Span<float> tokenValues)
    {
        int c = Model.Config.Channels, tokens = tokenPosition.Length;
        if (tokenValues.Length != tokens) throw new ArgumentException($"the batch has {tokens} response tokens; tokenValues has {tokenValues.Length}");
        if (valueFeatures.Length != tokens * c) valueFeatures = new float[tokens * c];
        Engine.CopyFeaturesToHost(tokenPosition, valueFeatures);
        for (int i = 0; i < tokens; i++) tokenValues[i] = head.Forward(valueFeatures.AsSpan(i * c, c));
    }

    // backward of V_t = w·h_t + b: ∂w += Σ_t ∂V_t·h_t, ∂b += Σ_t ∂V_t (on the head); returns ∂L/∂h_t = ∂V_t·w per scored token [tokens, C].
    private float[] ValueFeatureGradient(ScalarHead head, ReadOnlySpan<float> dTokenValues)
    {
        int c = Model.Config.Channels, tokens = tokenPosition.Length;
        if (dTokenValues.Length != tokens) throw new ArgumentException($"dTokenValues must have {tokens} entries");
        if (valueFeatures.Length != tokens * c) throw new InvalidOperationException("a value backward needs a value forward on the batch first");
        if (dValueRows.Length != tokens * c) dValueRows = new float[tokens * c];
        else Array.Clear(dValueRows);
        for (int i = 0; i < tokens; i++) head.Backward(valueFeatures.AsSpan(i * c, c), dTokenValues[i], dValueRows.AsSpan(i * c, c));
        return dValueRows;
    }

    /// <summary>Draws on the engine's KV-cache decoder; no weights are copied.</summary>
    public Continuation[] Sample(IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed) => Sampler.Generate(Engine, prompts, options, seed);

    public void ZeroGradients()
    {
        Engine.ZeroGradients();
        ValueHead?.ZeroGradients();
    }

    /// <summary>
    /// The global gradient norm, and clipping to <paramref name="maxNorm"/> when &gt; 0. With a value head, the norm covers the
    /// engine's gradients and the head's (<see cref="ScalarHead.ClipWith(double, float, out float)"/>: one factor scales both).
    /// </summary>
    public double ClipGradients(float maxNorm)
    {
        if (ValueHead is null) return Engine.ClipGradients(maxNorm).Norm;
        double norm = ValueHead.ClipWith(Engine.GradientSumOfSquares(), maxNorm, out float scale);
        if (scale != 1f) Engine.ScaleGradients(scale);
        return norm;
    }

    /// <summary>One AdamW step of the engine (weight decay on the matrices only) and of the value head.</summary>
    public void OptimizerStep(int step, float learningRate)
    {
        Engine.AdamWStep(step, learningRate, optimizer);
        ValueHead?.OptimizerStep(step, learningRate, optimizer);
        engineVersion++;
    }

    /// <summary>The engine's gradients (MPI, or NCCL on a device) and the value head's (host) summed over the ranks.</summary>
    public void AllReduceGradients(IProcessGroup group, string purpose)
    {
        Engine.AllReduceGradients(group, purpose);
        if (ValueHead is not null) group.AllReduceSum(ValueHead.Gradients, $"value head {purpose}");
    }

    /// <summary>SHA-256 fingerprint of the engine's parameters and the value head's.</summary>
    public ulong WeightsHash()
    {
        ulong hash = DataParallelSettings.HashOf(Engine);
        return ValueHead is null ? hash : ReplicaCheck.Combine(hash, ReplicaCheck.Hash(ValueHead.Parameters));
    }

    public NonFiniteElement? FirstNonFiniteGradient() =>
        Engine.FirstNonFiniteGradient() ?? ValueHead?.FirstNonFiniteGradient("value_head.weight", "value_head.bias");

    /// <summary>A new policy on the same device with a copy of the weights (and of the value head, when there is one), zero gradients and moments.</summary>
    public IPolicy Snapshot()
    {
        var copy = new Gpt(Model.Config);
        try
        {
            Engine.CopyParametersToHost(copy.Parameters);
            var policy = new GptPolicy(copy, optimizer, ownsModel: true, withValueHead: ValueHead is not null, Device);
            ValueHead?.Parameters.CopyTo(policy.ValueHead!.Parameters, 0);
            return policy;
        }
        catch
        {
            copy.Dispose();
            throw;
        }
    }

    /// <summary>Copies the weights (not gradients or moments) from a GPT policy of the same config, and the value head's when both have one.</summary>
    public void CopyWeightsFrom(IPolicy other)
    {
        if (other is not GptPolicy g || g.Model.Config != Model.Config)
            throw new ArgumentException($"can only copy from a GPT policy of the same config ({Model.Config})");
        if (ReferenceEquals(g, this)) return;
        Engine.CopyParametersFrom(g.Engine);
        if (ValueHead is not null && g.ValueHead is not null) g.ValueHead.Parameters.CopyTo(ValueHead.Parameters, 0);
        engineVersion++;
    }

    /// <summary>Makes <see cref="Model"/> hold the current weights, gradients and AdamW moments (a download on a device, when they changed).</summary>
    public void CopyToHost()
    {
        if (hostStateVersion == engineVersion) return;
        Engine.CopyStateTo(Model);
        hostStateVersion = engineVersion;
    }

    /// <summary>After <see cref="Model"/>'s weights and moments were overwritten (a checkpoint restore), makes training continue from them.</summary>
    public void CopyFromHost()
    {
        Engine.CopyStateFrom(Model);
        engineVersion++;
        hostStateVersion = engineVersion;
    }

    public void Dispose()
    {
        GptDevice.Release(Engine, Model);
        if (ownsModel) Model.Dispose();
    }
}
