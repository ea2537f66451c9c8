using DistAlign.Engine.Distributed;
using DistAlign.Engine.Memory;
using DistAlign.Kernels.Cpu;

namespace DistAlign.Transformer.Model;

/// <summary>
/// A GPT-2 model on the CPU: parameters, gradients and AdamW moments each in one flat planned buffer
/// (same <see cref="ParameterLayout"/> for all four), activations in one arena sized for B × T before the
/// first step. The forward and backward are flat lists of kernel calls, the backward mirroring the
/// forward, as in llm.c.
/// </summary>
/// <remarks>
/// The CPU engine of <see cref="IGptEngine"/>, and the host model every engine's checkpoints go through. The model
/// computes per-token log-probabilities of targets, never a loss: every objective (pretraining, SFT, the preference
/// losses) turns log-probs into a loss and hands back d(loss)/d(log-prob).
/// </remarks>
public sealed class Gpt : IGptEngine
{
    public const string ParametersArena = "parameters";
    public const string GradientsArena = "gradients";
    public const string MomentsArena = "adam_moments";

    private readonly MemoryArenas weights;
    private readonly Dictionary<(int Rows, int Length), MemoryArenas> activationsByShape = new();
    private readonly long? memoryBudgetBytes;

    public GptConfig Config { get; }

    /// <summary>When set, every op call charges its wall time to it (the step benchmark's breakdown).</summary>
    public OpProfile? Profile { get; set; }
    public ParameterLayout Layout { get; }

    /// <summary>All parameters, flat, in <see cref="Layout"/> order.</summary>
    public Span<float> Parameters => weights[ParametersArena].Span<float>("all")[..(int)Layout.TotalElements];
    /// <summary>Gradients of the parameters, same layout; backward passes accumulate into it.</summary>
    public Span<float> Gradients => weights[GradientsArena].Span<float>("all");
    /// <summary>AdamW first moments, same layout; with <see cref="OptimizerShard"/>, this rank's chunk only.</summary>
    public Span<float> AdamM => weights[MomentsArena].Span<float>("m");
    /// <summary>AdamW second moments, same layout; with <see cref="OptimizerShard"/>, this rank's chunk only.</summary>
    public Span<float> AdamV => weights[MomentsArena].Span<float>("v");

    /// <summary>ZeRO-1: the chunk of the AdamW state this rank keeps; null when the model keeps all of it.</summary>
    public OptimizerShard? OptimizerShard { get; }

    /// <summary>Allocates a model (all parameters zero; see <see cref="InitializeGpt2"/>).</summary>
    /// <param name="memoryBudgetBytes">when given, a model plus activations that need more is refused
    /// before anything is allocated, with the bytes needed and the largest arena</param>
    /// <param name="shardOptimizerOver">ZeRO-1: keep the AdamW moments of this rank's chunk only, and all-gather the
    /// parameters after each AdamW step over these ranks (null or one rank: no sharding)</param>
    public Gpt(GptConfig config, long? memoryBudgetBytes = null, IProcessGroup? shardOptimizerOver = null)
    {
        Config = config.Validate();
        Layout = ParameterLayout.For(config);
        this.memoryBudgetBytes = memoryBudgetBytes;
        if (shardOptimizerOver is { Size: > 1 }) OptimizerShard = new OptimizerShard(shardOptimizerOver, Layout.TotalElements);
        var plan = new MemoryPlanBuilder();
        PlanWeights(plan, Layout, shardOptimizerOver?.Size ?? 1);
        var built = plan.Build();
        if (memoryBudgetBytes is long budget) built.EnsureFits(budget);
        weights = MemoryArenas.Allocate(built);
    }

    // With ZeRO-1 over N ranks the parameter buffer is padded to N equal chunks and the moments hold one chunk.
    private static void PlanWeights(MemoryPlanBuilder plan, ParameterLayout layout, int optimizerShards)
    {
        long total = layout.TotalElements, chunk = (total + optimizerShards - 1) / optimizerShards;
        plan.Arena(ParametersArena).Add<float>("all", chunk * optimizerShards);
        plan.Arena(GradientsArena).Add<float>("all", total);
        plan.Arena(MomentsArena).Add<float>("m", chunk).Add<float>("v", chunk);
    }

    /// <summary>
    /// The memory a model of this size needs to train on batches of <paramref name="rows"/> ×
    /// <paramref name="length"/>: parameters, gradients, AdamW moments and activations; per rank, with the moments
    /// sharded over <paramref name="optimizerShards"/> ranks (ZeRO-1).
    /// </summary>
    public static MemoryPlan PlanTraining(GptConfig config, int rows, int length, int optimizerShards = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(optimizerShards);
        var plan = new MemoryPlanBuilder();
        PlanWeights(plan, ParameterLayout.For(config), optimizerShards);
        GptActivations.Plan(plan.Arena(GptActivations.Arena), config, rows, length);
        return plan.Build();
    }

    /// <summary>
    /// GPT-2's initialisation: weights N(0, 0.02²) from the Philox stream of <paramref name="seed"/>,
    /// residual projections (attn.c_proj, mlp.c_proj) scaled by 1/√(2L), biases 0, LayerNorm weights 1.
    /// Element i of tensor k always gets the same number whatever the thread count.
    /// </summary>
    public void InitializeGpt2(ulong seed)
    {
        var p = Parameters;
        var philox = new Engine.Random.Philox(seed);
        ulong stream = 0;
        foreach (var t in Layout.Tensors)
        {
            var span = p.Slice((int)t.Offset, (int)t.Length);
            stream++;
            if (t.Name.EndsWith(".bias", StringComparison.Ordinal)) span.Clear();
            else if (t.Name.Contains("ln_", StringComparison.Ordinal)) span.Fill(1f);
            else
            {
                bool residualProjection = t.Name.EndsWith("c_proj.weight", StringComparison.Ordinal);
                float std = residualProjection ? 0.02f / MathF.Sqrt(2f * Config.Layers) : 0.02f;
                philox.FillNormal(span, stream, 0, 0f, std);
            }
        }
    }

    /// <summary>Zeroes the gradient buffer (the backward accumulates into it).</summary>
    public void ZeroGradients() => Gradients.Clear();

    /// <summary>Batch shapes whose activation arenas are kept; the least recently used beyond this is freed.</summary>
    public const int ActivationShapesKept = 4;

    private readonly List<(int Rows, int Length)> shapesByRecency = [];

    private Arena Activations(int rows, int length)
    {
        var shape = (rows, length);
        if (!activationsByShape.TryGetValue(shape, out var arenas))
        {
            if (shapesByRecency.Count == ActivationShapesKept)
            {
                var oldest = shapesByRecency[0];
                shapesByRecency.RemoveAt(0);
                activationsByShape[oldest].Dispose();
                activationsByShape.Remove(oldest);
            }
            var plan = new MemoryPlanBuilder();
            GptActivations.Plan(plan.Arena(GptActivations.Arena), Config, rows, length);
            var built = plan.Build();
            if (memoryBudgetBytes is long budget)
            {
                long weightBytes = weights.Plan.TotalBytes + activationsByShape.Values.Sum(a => a.Plan.TotalBytes);
                built.EnsureFits(budget - weightBytes);
            }
            arenas = MemoryArenas.Allocate(built);
            activationsByShape[shape] = arenas;
        }
        else shapesByRecency.Remove(shape);
        shapesByRecency.Add(shape);
        return arenas[GptActivations.Arena];
    }

    /// <summary>
    /// Forward pass: fills <paramref name="logProbs"/>[i] = ln π(target_i | tokens of its segment up to i)
    /// for every position with a target, 0 where the target is −1, and, when <paramref name="entropy"/> is
    /// non-empty, the entropy of π(· | prefix) at those positions. Keeps the activations the backward needs.
    /// </summary>
    public void Forward(GptBatch batch, Span<float> logProbs, Span<float> entropy = default)
    {
        var acts = Prepare(batch, logProbs, default, backward: false);
        if (!entropy.IsEmpty && entropy.Length != batch.TokenCount)
            throw new ArgumentException($"entropy must be empty or have one entry per position ({batch.TokenCount}), got {entropy.Length}");
        TransformerForward(batch, acts);
        entropyOfLastForward = !entropy.IsEmpty;
        lastForwardShape = (batch.Rows, batch.Length);
        SequenceLogProbs.Forward(acts.Span<float>("lnf"), Wte, batch.Targets, Config.Channels, Config.VocabSize, acts.Span<float>("logits_chunk"),
            acts.Span<float>("logprobs"), acts.Span<float>("logsumexp"), entropyOfLastForward ? acts.Span<float>("entropy") : default);
        Profile?.Lap("lm head fwd");
        acts.Span<float>("logprobs").CopyTo(logProbs);
        if (entropyOfLastForward) acts.Span<float>("entropy").CopyTo(entropy);
    }

    /// <summary>
    /// Forward and backward in one pass for a gradient that is known before the forward (pretraining and
    /// SFT: d(loss)/d(log-prob_i) = −1/targets for every target). Accumulates into <see cref="Gradients"/>.
    /// Each chunk of logits is computed once and turned into its gradient in place.
    /// </summary>
    public void ForwardBackward(GptBatch batch, ReadOnlySpan<float> dLogProbs, Span<float> logProbs)
    {
        var acts = Prepare(batch, logProbs, dLogProbs, backward: true);
        TransformerForward(batch, acts);
        entropyOfLastForward = false;
        lastForwardShape = (batch.Rows, batch.Length);
        var dLnf = acts.Span<float>("d_ln");
        dLnf.Clear();
        SequenceLogProbs.ForwardBackward(acts.Span<float>("lnf"), Wte, batch.Targets, Config.Channels, Config.VocabSize, dLogProbs, default,
            acts.Span<float>("logits_chunk"), acts.Span<float>("logprobs"), acts.Span<float>("logsumexp"), default, dLnf, WteGradient);
        Profile?.Lap("lm head fwd+bwd");
        TransformerBackward(batch, acts);
        acts.Span<float>("logprobs").CopyTo(logProbs);
    }

    /// <summary>
    /// Backward for a gradient that depends on the forward's outputs (the preference objectives): call after
    /// <see cref="Forward"/> on the same batch; recomputes the LM head's logits chunk by chunk. A non-empty
    /// <paramref name="dEntropy"/> needs the entropies from that forward.
    /// </summary>
    public void Backward(GptBatch batch, ReadOnlySpan<float> dLogProbs, ReadOnlySpan<float> dEntropy = default) =>
        Backward(batch, dLogProbs, dEntropy, dFeatures: default);

    /// <summary>
    /// <see cref="Backward(GptBatch, ReadOnlySpan{float}, ReadOnlySpan{float})"/> with a second head's gradient
    /// <paramref name="dFeatures"/> [N, C] on the final hidden states (<see cref="LastFeatures"/>: a value head on the
    /// same backbone), added to the LM head's before the one transformer backward.
    /// </summary>
    public void Backward(GptBatch batch, ReadOnlySpan<float> dLogProbs, ReadOnlySpan<float> dEntropy, ReadOnlySpan<float> dFeatures)
    {
        if (!dFeatures.IsEmpty && dFeatures.Length != batch.TokenCount * Config.Channels)
            throw new ArgumentException($"dFeatures must be empty or [N, C] = [{batch.TokenCount}, {Config.Channels}], got {dFeatures.Length}");
        if (dLogProbs.Length != batch.TokenCount)
            throw new ArgumentException($"dLogProbs must have one entry per position ({batch.TokenCount}), got {dLogProbs.Length}");
        if (!dEntropy.IsEmpty && !entropyOfLastForward)
            throw new InvalidOperationException("an entropy gradient needs a Forward that computed entropies on this batch");
        var acts = Activations(batch.Rows, batch.Length);
        Profile?.Restart();
        var dLnf = acts.Span<float>("d_ln");
        dLnf.Clear();
        SequenceLogProbs.Backward(acts.Span<float>("lnf"), Wte, batch.Targets, Config.Channels, Config.VocabSize, acts.Span<float>("logsumexp"),
            entropyOfLastForward ? acts.Span<float>("entropy") : default, dLogProbs, dEntropy, acts.Span<float>("logits_chunk"), dLnf, WteGradient);
        if (!dFeatures.IsEmpty) System.Numerics.Tensors.TensorPrimitives.Add(dLnf, dFeatures, dLnf);
        Profile?.Lap("lm head bwd");
        TransformerBackward(batch, acts);
    }

    /// <summary>The dense <see cref="Backward(GptBatch, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float})"/> of rows at positions.</summary>
    public void Backward(GptBatch batch, ReadOnlySpan<float> dLogProbs, ReadOnlySpan<float> dEntropy,
                         ReadOnlySpan<int> featurePositions, ReadOnlySpan<float> dFeatureRows) =>
        Backward(batch, dLogProbs, dEntropy, ScatterRows(batch, featurePositions, dFeatureRows));

    private float[] denseFeatureGradient = [];   // ∂L/∂h [N, C] of the row-wise backwards

    // denseFeatureGradient [N, C] ← 0, then row positions[s] ← dRows[s, :] (positions distinct, inside the batch).
    private float[] ScatterRows(GptBatch batch, ReadOnlySpan<int> positions, ReadOnlySpan<float> dRows)
    {
        int c = Config.Channels, n = batch.TokenCount;
        if (dRows.Length != positions.Length * c)
            throw new ArgumentException($"dRows must be [S, C] = [{positions.Length}, {c}], got {dRows.Length}");
        if (denseFeatureGradient.Length != n * c) denseFeatureGradient = new float[n * c];
        else Array.Clear(denseFeatureGradient);
        for (int i = 0; i < positions.Length; i++)
        {
            if ((uint)positions[i] >= (uint)n)
                throw new ArgumentOutOfRangeException(nameof(positions), $"position {i} is {positions[i]}, outside the batch's {n} positions (B·T)");
            dRows.Slice(i * c, c).CopyTo(denseFeatureGradient.AsSpan(positions[i] * c, c));
        }
        return denseFeatureGradient;
    }

    private bool entropyOfLastForward;

    /// <summary>
    /// h = ln_f(x) [N, C] of the last <see cref="Forward"/> (or <see cref="ForwardFeatures"/>) on a batch of this shape:
    /// what a second head on the backbone reads. Valid until the next forward of a batch of the same shape.
    /// </summary>
    public ReadOnlySpan<float> LastFeatures(GptBatch batch) => Activations(batch.Rows, batch.Length).Span<float>("lnf");

    /// <summary>
    /// The backbone alone, for heads other than the tied LM head (a reward model's scalar head):
    /// runs the transformer forward and returns h = ln_f(x), the final hidden states [N, C] (N = B·T,
    /// row-major, position i at [i·C, i·C + C)). Targets are ignored. The span points into the activation
    /// arena: it is valid until the next forward of a batch of the same shape. Keeps what
    /// <see cref="BackwardFeatures"/> needs; an LM-head <see cref="Backward(GptBatch, ReadOnlySpan{float}, ReadOnlySpan{float})"/> needs a <see cref="Forward"/> instead.
    /// </summary>
    public ReadOnlySpan<float> ForwardFeatures(GptBatch batch)
    {
        batch.Validate(Config);
        var acts = Activations(batch.Rows, batch.Length);
        Profile?.Restart();
        TransformerForward(batch, acts);
        entropyOfLastForward = false;
        lastForwardShape = (batch.Rows, batch.Length);
        return acts.Span<float>("lnf");
    }

    void IGptEngine.ForwardFeatures(GptBatch batch) => ForwardFeatures(batch);

    private (int Rows, int Length)? lastForwardShape;   // the batch shape whose "lnf" CopyFeaturesToHost reads

    /// <summary>destination [S, C] = h[positions[s], :] of the last forward (<see cref="ForwardFeatures"/> or <see cref="Forward"/>).</summary>
    public void CopyFeaturesToHost(ReadOnlySpan<int> positions, Span<float> destination)
    {
        if (lastForwardShape is not var (rows, length)) throw new InvalidOperationException("CopyFeaturesToHost needs a forward first");
        int c = Config.Channels, n = rows * length;
        if (destination.Length != positions.Length * c)
            throw new ArgumentException($"destination must be [S, C] = [{positions.Length}, {c}], got {destination.Length}");
        var h = activationsByShape[(rows, length)][GptActivations.Arena].Span<float>("lnf");
        for (int i = 0; i < positions.Length; i++)
        {
            if ((uint)positions[i] >= (uint)n)
                throw new ArgumentOutOfRangeException(nameof(positions), $"position {i} is {positions[i]}, outside the forward's {n} positions (B·T)");
            h.Slice(positions[i] * c, c).CopyTo(destination.Slice(i * c, c));
        }
    }

    /// <summary><see cref="BackwardFeatures"/> for a ∂L/∂h that is dRows[s, :] at row positions[s] (distinct) and 0 elsewhere.</summary>
    public void BackwardFeatureRows(GptBatch batch, ReadOnlySpan<int> positions, ReadOnlySpan<float> dRows) =>
        BackwardFeatures(batch, ScatterRows(batch, positions, dRows));

    /// <summary>
    /// Backward of <see cref="ForwardFeatures"/>: given ∂L/∂h [N, C] for the batch of the last forward,
    /// ACCUMULATES (+=) ∂L/∂θ into <see cref="Gradients"/> through the transformer backward. No LM head is
    /// involved: wte gets gradient only through the embedding lookup.
    /// </summary>
    public void BackwardFeatures(GptBatch batch, ReadOnlySpan<float> dFeatures)
    {
        if (dFeatures.Length != batch.TokenCount * Config.Channels)
            throw new ArgumentException($"dFeatures must be [N, C] = [{batch.TokenCount}, {Config.Channels}] ({batch.TokenCount * Config.Channels} floats), got {dFeatures.Length}");
        var acts = Activations(batch.Rows, batch.Length);
        Profile?.Restart();
        dFeatures.CopyTo(acts.Span<float>("d_ln"));
        TransformerBackward(batch, acts);
    }

    private ReadOnlySpan<float> Wte => P(Parameters, Layout.Wte, Config.VocabSize * Config.Channels);
    private Span<float> WteGradient => G(Gradients, Layout.Wte, Config.VocabSize * Config.Channels);

    private Arena Prepare(GptBatch batch, Span<float> logProbs, ReadOnlySpan<float> dLogProbs, bool backward)
    {
        batch.Validate(Config);
        int n = batch.TokenCount;
        if (logProbs.Length != n) throw new ArgumentException($"logProbs must have one entry per position ({n}), got {logProbs.Length}");
        if (backward && dLogProbs.Length != n) throw new ArgumentException($"dLogProbs must have one entry per position ({n}), got {dLogProbs.Length}");
        var acts = Activations(batch.Rows, batch.Length);
        Profile?.Restart();
        return acts;
    }

    // ---------------------------------------------------------------------------------------------
    // forward: x = wte[tokens] + wpe[positions];
    //   for each block: x = x + attn_proj(attention(ln_1(x)));  x = x + mlp_proj(gelu(mlp_fc(ln_2(x))))
    //   h = ln_f(x); logits = h · wteᵀ (tied head)
    // ---------------------------------------------------------------------------------------------
    private void TransformerForward(GptBatch batch, Arena acts)
    {
        int b = batch.Rows, t = batch.Length, n = b * t, c = Config.Channels, nh = Config.Heads;
        ReadOnlySpan<float> p = Parameters;
        var encoded = acts.Span<float>("encoded");
        Embedding.Forward(batch.Tokens, batch.Positions, P(p, Layout.Wte, Config.VocabSize * c), P(p, Layout.Wpe, Config.MaxSequenceLength * c), c, encoded);
        Profile?.Lap("embedding fwd");

        ReadOnlySpan<float> residual = encoded;
        var projection = acts.Span<float>("projection");
        for (int l = 0; l < Config.Layers; l++)
        {
            var o = Layout.Blocks[l];
            string a = $"h.{l}.";
            var ln1 = acts.Span<float>(a + "ln1");
            var qkv = acts.Span<float>(a + "qkv");
            var att = acts.Span<float>(a + "att");
            var atty = acts.Span<float>(a + "atty");
            var residual2 = acts.Span<float>(a + "residual2");
            var ln2 = acts.Span<float>(a + "ln2");
            var fch = acts.Span<float>(a + "fch");
            var fchGelu = acts.Span<float>(a + "fch_gelu");
            var residual3 = acts.Span<float>(a + "residual3");

            LayerNorm.Forward(residual, P(p, o.Ln1Weight, c), P(p, o.Ln1Bias, c), ln1, acts.Span<float>(a + "ln1_mean"), acts.Span<float>(a + "ln1_rstd"));
            Profile?.Lap("layernorm fwd");
            Linear.Forward(ln1, P(p, o.AttnWeight, c * 3 * c), P(p, o.AttnBias, 3 * c), qkv, n, c, 3 * c);
            Profile?.Lap("matmul fwd");
            Attention.Forward(qkv, batch.Segments, b, t, nh, att, atty);
            Profile?.Lap("attention fwd");
            Linear.Forward(atty, P(p, o.AttnProjWeight, c * c), P(p, o.AttnProjBias, c), projection, n, c, c);
            Profile?.Lap("matmul fwd");
            Residual.Forward(residual, projection, residual2);
            Profile?.Lap("residual fwd");
            LayerNorm.Forward(residual2, P(p, o.Ln2Weight, c), P(p, o.Ln2Bias, c), ln2, acts.Span<float>(a + "ln2_mean"), acts.Span<float>(a + "ln2_rstd"));
            Profile?.Lap("layernorm fwd");
            Linear.Forward(ln2, P(p, o.FcWeight, c * 4 * c), P(p, o.FcBias, 4 * c), fch, n, c, 4 * c);
            Profile?.Lap("matmul fwd");
            Gelu.Forward(fch, fchGelu);
            Profile?.Lap("gelu fwd");
            Linear.Forward(fchGelu, P(p, o.FcProjWeight, 4 * c * c), P(p, o.FcProjBias, c), projection, n, 4 * c, c);
            Profile?.Lap("matmul fwd");
            Residual.Forward(residual2, projection, residual3);
            Profile?.Lap("residual fwd");
            residual = residual3;
        }
        LayerNorm.Forward(residual, P(p, Layout.LnFWeight, c), P(p, Layout.LnFBias, c),
            acts.Span<float>("lnf"), acts.Span<float>("lnf_mean"), acts.Span<float>("lnf_rstd"));
        Profile?.Lap("layernorm fwd");
    }

    // ---------------------------------------------------------------------------------------------
    // backward: the forward's calls in reverse. d_residual carries d(loss)/d(residual stream); each
    // LayerNorm backward adds into it, which is exactly the residual connection's backward.
    // ---------------------------------------------------------------------------------------------
    private void TransformerBackward(GptBatch batch, Arena acts)
    {
        int b = batch.Rows, t = batch.Length, n = b * t, c = Config.Channels, nh = Config.Heads;
        ReadOnlySpan<float> p = Parameters;
        Span<float> g = Gradients;
        var dResidual = acts.Span<float>("d_residual");
        var dLn = acts.Span<float>("d_ln");
        var dAtty = acts.Span<float>("d_atty");
        var dQkv = acts.Span<float>("d_qkv");
        var dFch = acts.Span<float>("d_fch");
        var dFchGelu = acts.Span<float>("d_fch_gelu");

        ReadOnlySpan<float> lastResidual = Config.Layers > 0 ? acts.Span<float>($"h.{Config.Layers - 1}.residual3") : acts.Span<float>("encoded");
        dResidual.Clear();
        LayerNorm.Backward(dLn, lastResidual, P(p, Layout.LnFWeight, c), acts.Span<float>("lnf_mean"), acts.Span<float>("lnf_rstd"),
            dResidual, G(g, Layout.LnFWeight, c), G(g, Layout.LnFBias, c));
        Profile?.Lap("layernorm bwd");

        for (int l = Config.Layers - 1; l >= 0; l--)
        {
            var o = Layout.Blocks[l];
            string a = $"h.{l}.";
            ReadOnlySpan<float> residual = l == 0 ? acts.Span<float>("encoded") : acts.Span<float>($"h.{l - 1}.residual3");

            // MLP: residual3 = residual2 + fc_proj(gelu(fc(ln_2(residual2))))
            dFchGelu.Clear();
            Linear.Backward(dResidual, acts.Span<float>(a + "fch_gelu"), P(p, o.FcProjWeight, 4 * c * c), dFchGelu, G(g, o.FcProjWeight, 4 * c * c), G(g, o.FcProjBias, c), n, 4 * c, c);
            Profile?.Lap("matmul bwd");
            dFch.Clear();
            Gelu.Backward(dFchGelu, acts.Span<float>(a + "fch"), dFch);
            Profile?.Lap("gelu bwd");
            dLn.Clear();
            Linear.Backward(dFch, acts.Span<float>(a + "ln2"), P(p, o.FcWeight, c * 4 * c), dLn, G(g, o.FcWeight, c * 4 * c), G(g, o.FcBias, 4 * c), n, c, 4 * c);
            Profile?.Lap("matmul bwd");
            LayerNorm.Backward(dLn, acts.Span<float>(a + "residual2"), P(p, o.Ln2Weight, c), acts.Span<float>(a + "ln2_mean"), acts.Span<float>(a + "ln2_rstd"),
                dResidual, G(g, o.Ln2Weight, c), G(g, o.Ln2Bias, c));
            Profile?.Lap("layernorm bwd");

            // attention: residual2 = residual + attn_proj(attention(qkv(ln_1(residual))))
            dAtty.Clear();
            Linear.Backward(dResidual, acts.Span<float>(a + "atty"), P(p, o.AttnProjWeight, c * c), dAtty, G(g, o.AttnProjWeight, c * c), G(g, o.AttnProjBias, c), n, c, c);
            Profile?.Lap("matmul bwd");
            dQkv.Clear();
            Attention.Backward(dAtty, acts.Span<float>(a + "qkv"), acts.Span<float>(a + "att"), acts.Span<float>(a + "atty"), b, t, nh, dQkv);
            Profile?.Lap("attention bwd");
            dLn.Clear();
            Linear.Backward(dQkv, acts.Span<float>(a + "ln1"), P(p, o.AttnWeight, c * 3 * c), dLn, G(g, o.AttnWeight, c * 3 * c), G(g, o.AttnBias, 3 * c), n, c, 3 * c);
            Profile?.Lap("matmul bwd");
            LayerNorm.Backward(dLn, residual, P(p, o.Ln1Weight, c), acts.Span<float>(a + "ln1_mean"), acts.Span<float>(a + "ln1_rstd"),
                dResidual, G(g, o.Ln1Weight, c), G(g, o.Ln1Bias, c));
            Profile?.Lap("layernorm bwd");
        }

        Embedding.Backward(dResidual, batch.Tokens, batch.Positions, c,
            G(g, Layout.Wte, Config.VocabSize * c), G(g, Layout.Wpe, Config.MaxSequenceLength * c));
        Profile?.Lap("embedding bwd");
    }

    // ---------------------------------------------------------------------------------------------
    // gradients, AdamW and host copies (the engine contract; on the CPU the host model is this one)
    // ---------------------------------------------------------------------------------------------

    public double GradientSumOfSquares() => GradientNorm.SumOfSquares(Gradients);

    public void AllReduceGradients(IProcessGroup group, string purpose)
    {
        if (group.Size == 1) return;
        Profile?.Restart();
        group.AllReduceSum(Gradients, purpose);
        Profile?.Lap("all-reduce");
    }

    public void ScaleGradients(float factor) => System.Numerics.Tensors.TensorPrimitives.Multiply(Gradients, factor, Gradients);

    public GradientClip ClipGradients(float maxNorm)
    {
        Profile?.Restart();
        var clip = maxNorm > 0 ? GradientNorm.ClipByGlobalNorm(Gradients, maxNorm) : new GradientClip(GradientNorm.GlobalNorm(Gradients), 1f);
        Profile?.Lap("gradient clip");
        return clip;
    }

    /// <summary>
    /// AdamW in place over the flat buffers, tensor by tensor: weight decay on the matrices (linear weights and the
    /// embeddings), none on biases and LayerNorm parameters. With <see cref="OptimizerShard"/> (ZeRO-1) only this rank's
    /// chunk is updated, then the parameters are all-gathered in place so that every rank holds all of them.
    /// </summary>
    public void AdamWStep(int step, float learningRate, AdamWSettings settings)
    {
        Profile?.Restart();
        Span<float> p = Parameters, g = Gradients, m = AdamM, v = AdamV;
        long first = OptimizerShard?.Start ?? 0, end = first + (OptimizerShard?.Length ?? Layout.TotalElements);
        foreach (var t in Layout.Tensors)
        {
            // This rank's part of the tensor: [from, to) in the flat buffers; the moments start at `first`.
            int from = (int)Math.Max(t.Offset, first), to = (int)Math.Min(t.Offset + t.Length, end);
            if (from >= to) continue;
            float decay = t.Shape.Length >= 2 ? settings.WeightDecay : 0f;
            AdamW.Step(p[from..to], g[from..to], m[(from - (int)first)..(to - (int)first)], v[(from - (int)first)..(to - (int)first)],
                       step, learningRate, settings.Beta1, settings.Beta2, settings.Epsilon, decay);
        }
        Profile?.Lap("adamw");
        if (OptimizerShard is { } shard)
        {
            shard.ProcessGroup.AllGatherInPlace(weights[ParametersArena].Span<float>("all"), $"parameters after AdamW step {step}");
            Profile?.Lap("all-gather");
        }
    }

    /// <summary>
    /// The whole AdamW state, for a checkpoint: the moments themselves, or with <see cref="OptimizerShard"/> every rank's
    /// chunks gathered into new arrays (a collective: every rank calls it, at the same step).
    /// </summary>
    public (float[] M, float[] V) GatherMoments()
    {
        if (OptimizerShard is not { } shard) return (AdamM.ToArray(), AdamV.ToArray());
        var m = new float[shard.PaddedElements];
        var v = new float[shard.PaddedElements];
        shard.ProcessGroup.AllGather(AdamM, m, "AdamW first moments for a checkpoint");
        shard.ProcessGroup.AllGather(AdamV, v, "AdamW second moments for a checkpoint");
        return (m[..(int)shard.TotalElements], v[..(int)shard.TotalElements]);
    }

    public NonFiniteElement? FirstNonFiniteGradient() => NonFiniteElement.FindFirst(Layout, Gradients);

    public NonFiniteElement? FirstNonFiniteParameter() => NonFiniteElement.FindFirst(Layout, Parameters);

    public void CopyStateTo(Gpt host)
    {
        if (ReferenceEquals(host, this)) return;
        CheckSameConfig(host);
        CheckUnsharded(host);
        Parameters.CopyTo(host.Parameters);
        Gradients.CopyTo(host.Gradients);
        AdamM.CopyTo(host.AdamM);
        AdamV.CopyTo(host.AdamV);
    }

    public void CopyStateFrom(Gpt host)
    {
        if (ReferenceEquals(host, this)) return;
        CheckSameConfig(host);
        CheckUnsharded(host);
        host.Parameters.CopyTo(Parameters);
        host.AdamM.CopyTo(AdamM);
        host.AdamV.CopyTo(AdamV);
        ZeroGradients();
    }

    private void CheckUnsharded(Gpt other)
    {
        if (OptimizerShard is not null || other.OptimizerShard is not null)
            throw new NotSupportedException("a model with a sharded optimizer (ZeRO-1) trains on itself; its state is not copied to another engine");
    }

    private void CheckSameConfig(Gpt other)
    {
        if (other.Config != Config)
            throw new ArgumentException($"the other model's config {other.Config} differs from this one's {Config}", nameof(other));
    }

    public void CopyParametersToHost(Span<float> destination) => Parameters.CopyTo(destination);

    public void CopyParametersFrom(IGptEngine source)
    {
        if (source.Config != Config)
            throw new ArgumentException($"the source's config {source.Config} differs from this one's {Config}", nameof(source));
        if (!ReferenceEquals(source, this)) source.CopyParametersToHost(Parameters);
    }

    public void Synchronize() { }

    public IIncrementalDecoder CreateDecoder(int rows, int maxLength) => new GptDecoder(this, rows, maxLength);

    private static ReadOnlySpan<float> P(ReadOnlySpan<float> all, long offset, int length) => all.Slice((int)offset, length);
    private static Span<float> G(Span<float> all, long offset, int length) => all.Slice((int)offset, length);

    public void Dispose()
    {
        foreach (var a in activationsByShape.Values) a.Dispose();
        weights.Dispose();
    }
}
