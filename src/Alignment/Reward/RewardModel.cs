using System.Numerics.Tensors;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Engine.Distributed;
using DistAlign.Engine.SafeTensors;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Devices;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Alignment.Reward;

/// <summary>What one <see cref="RewardModel.TrainStep"/> measured (before its update).</summary>
/// <param name="Pairwise">The Bradley–Terry loss and its metrics: <c>loss</c>, <c>accuracy</c>, <c>margin</c>, <c>mean_reward</c>.</param>
/// <param name="GradientNorm">Global L2 norm of backbone and head gradients together, before clipping.</param>
public sealed record RewardStepMetrics(PairwiseLossMetrics Pairwise, double GradientNorm)
{
    public double Loss => Pairwise.Loss;
    /// <summary>Fraction of pairs with R⁺ &gt; R⁻.</summary>
    public double Accuracy => Pairwise.Accuracy;
    /// <summary>Mean R⁺ − R⁻ (without the margin m).</summary>
    public double Margin => Pairwise.Margin;
    /// <summary>Mean (R⁺ + R⁻)/2.</summary>
    public double MeanReward => Pairwise.MeanReward;
}

/// <summary>
/// A Bradley–Terry reward model (OBJECTIVES.md, "Reward model"): a <see cref="Gpt"/> backbone with a scalar
/// head on the final hidden state of the LAST response token,
/// <code>
/// R(x, y) = w · h_last + b,   h_last = ln_f(x)[position of y's last token],   w ∈ R^C, b ∈ R
/// backward: ∂L/∂w += Σ_s ∂L/∂R_s · h_last,s,   ∂L/∂b += Σ_s ∂L/∂R_s,   ∂L/∂h_last,s = ∂L/∂R_s · w
/// </code>
/// Sequences are packed like <see cref="GptPolicy"/>'s, except that every response token, the last included,
/// is an input (|prompt| + |response| positions each). The head starts at zero, so every R starts at 0 and
/// the first loss is ln 2. The head has its own gradients and AdamW moments; weight decay applies to w (a
/// matrix, [1, C] in the checkpoint), not to b, like the backbone's rule.
/// The backbone runs on any engine (<see cref="IGptEngine"/> from a <see cref="GptDevice"/>): features forward and backward,
/// clip and AdamW there, the head (C + 1 floats) on the host; per step only the batch, one feature row per sequence and
/// its gradient row cross to a device. On a device <see cref="Backbone"/> is the checkpoint mirror.
/// </summary>
public sealed class RewardModel : IDisposable, IRewardFunction
{
    /// <summary>The head's tensor names in the checkpoint (the Hugging Face sequence-classification name).</summary>
    public const string ScoreWeightName = "score.weight";
    public const string ScoreBiasName = "score.bias";

    private readonly AdamWSettings optimizer;
    private readonly bool ownsBackbone;
    private readonly int channels;
    private readonly ScalarHead head;
    private GptBatch? batch;
    private int[] lastPosition = [];
    private float[] lastFeatures = [];   // h_last per sequence [S, C], copied out of the arena
    private float[] dLastFeatures = [];  // ∂L/∂h_last per sequence [S, C] for the backbone backward
    private int scoredSequences = -1;

    /// <summary>
    /// The backbone's host model. On the CPU it is the model being trained; on a device it is the mirror
    /// that checkpoints are written from: current after <see cref="CopyBackboneToHost"/> (which <see cref="Save"/> and
    /// <see cref="SaveTraining"/> call), and uploaded again by <see cref="LoadTraining"/>.
    /// </summary>
    public Gpt Backbone { get; }

    /// <summary>The engine the backbone trains on: <see cref="Backbone"/> itself on the CPU.</summary>
    public IGptEngine Engine { get; }

    /// <summary>
    /// An optional fixed baseline added to every score, R(x, y) = w·h + b + B(x, y), never differentiated: with
    /// B = γ·ln π0(y|x) (<see cref="LogLikelihoodReward"/>) the head only has to learn how the preferences depart from
    /// π0's own likelihood (a reference-anchored reward model). Not saved with the model: whoever loads it sets it again.
    /// </summary>
    public IRewardFunction? Baseline { get; set; }

    /// <summary>A reward model on <paramref name="backbone"/> with a zero head.</summary>
    /// <param name="device">where the backbone trains (default the CPU): on a device <paramref name="backbone"/>'s parameters and
    /// moments are copied to a new engine now, and <paramref name="backbone"/> becomes the host mirror</param>
    public RewardModel(Gpt backbone, AdamWSettings optimizer, bool ownsBackbone = false, GptDevice? device = null)
    {
        Backbone = backbone;
        Engine = (device ?? GptDevice.Cpu).EngineFor(backbone);
        this.optimizer = optimizer;
        this.ownsBackbone = ownsBackbone;
        channels = backbone.Config.Channels;
        head = new ScalarHead(channels);
    }

    /// <summary>w [C].</summary>
    public Span<float> HeadWeight => head.Weight;
    /// <summary>b [1].</summary>
    public Span<float> HeadBias => head.Bias;
    /// <summary>∂L/∂w [C], accumulated by <see cref="Backward"/>.</summary>
    public Span<float> HeadWeightGradient => head.WeightGradient;
    /// <summary>∂L/∂b [1], accumulated by <see cref="Backward"/>.</summary>
    public Span<float> HeadBiasGradient => head.BiasGradient;

    /// <summary>
    /// Writes R(x, y) for every sequence into <paramref name="rewards"/> [S] and keeps what
    /// <see cref="Backward"/> needs (it refers to this batch).
    /// </summary>
    public void Score(IReadOnlyList<PromptResponse> sequences, Span<float> rewards)
    {
        int s = sequences.Count;
        if (rewards.Length != s) throw new ArgumentException($"rewards must have one entry per sequence ({s}), got {rewards.Length}");
        if (lastPosition.Length != s)
        {
            lastPosition = new int[s];
            lastFeatures = new float[s * channels];
        }
        batch = GptPolicy.PackSequences(sequences, Backbone.Config.MaxSequenceLength, batch, includeLastResponseToken: true, default, lastPosition);
        Engine.ForwardFeatures(batch);
        Engine.CopyFeaturesToHost(lastPosition, lastFeatures);
        for (int i = 0; i < s; i++) rewards[i] = head.Forward(lastFeatures.AsSpan(i * channels, channels));
        scoredSequences = s;
        if (Baseline is not null)
        {
            var baseline = new float[s];
            Baseline.Score(sequences, baseline);
            for (int i = 0; i < s; i++) rewards[i] += baseline[i];
        }
    }

    /// <summary>
    /// ACCUMULATES into the head's and the backbone's gradients the gradient of a loss given ∂L/∂R per
    /// sequence [S] of the last <see cref="Score"/>.
    /// </summary>
    public void Backward(ReadOnlySpan<float> dRewards)
    {
        if (batch is null || scoredSequences < 0) throw new InvalidOperationException("Backward needs a Score first");
        if (dRewards.Length != scoredSequences)
            throw new ArgumentException($"dRewards must have one entry per scored sequence ({scoredSequences}), got {dRewards.Length}");
        int n = scoredSequences * channels;
        if (dLastFeatures.Length != n) dLastFeatures = new float[n];
        else Array.Clear(dLastFeatures);
        for (int i = 0; i < scoredSequences; i++)
            head.Backward(lastFeatures.AsSpan(i * channels, channels), dRewards[i], dLastFeatures.AsSpan(i * channels, channels));
        Engine.BackwardFeatureRows(batch, lastPosition.AsSpan(0, scoredSequences), dLastFeatures);
    }

    /// <summary>Zeroes the backbone's and the head's gradients.</summary>
    public void ZeroGradients()
    {
        Engine.ZeroGradients();
        head.ZeroGradients();
    }

    /// <summary>The first NaN/Inf gradient element (backbone tensors in layout order, then <c>score.weight</c>, <c>score.bias</c>), or null.</summary>
    public NonFiniteElement? FirstNonFiniteGradient() =>
        Engine.FirstNonFiniteGradient() ?? head.FirstNonFiniteGradient(ScoreWeightName, ScoreBiasName);

    /// <summary>
    /// Global L2 norm over backbone and head gradients together; when <paramref name="maxNorm"/> &gt; 0 and the
    /// norm is finite, scales all of them by min(1, maxNorm/(norm + 1e-6)). Returns the norm before clipping.
    /// </summary>
    public double ClipGradients(float maxNorm)
    {
        double norm = head.ClipWith(Engine.GradientSumOfSquares(), maxNorm, out float scale);
        if (scale != 1f) Engine.ScaleGradients(scale);
        return norm;
    }

    /// <summary>One AdamW step of backbone and head (1-based <paramref name="step"/>).</summary>
    public void OptimizerStep(int step, float learningRate)
    {
        Engine.AdamWStep(step, learningRate, optimizer);
        head.OptimizerStep(step, learningRate, optimizer);
    }

    /// <summary>
    /// The Bradley–Terry loss of <paramref name="pairs"/> (chosen and rejected interleaved: sequence 2i is pair i's
    /// a⁺, 2i+1 its a⁻, as in <see cref="OfflinePreferenceObjective.Sequences"/>), with <paramref name="settings"/>
    /// of variant <see cref="PairwiseLossVariant.RewardModel"/>. With <paramref name="withGradient"/> the gradient of
    /// the mean loss is ACCUMULATED into the gradients, times <paramref name="gradientScale"/> (1/N for one of N equal
    /// data-parallel shares). <paramref name="rewards"/> gets R per sequence [2P] when non-empty.
    /// </summary>
    public PairwiseLossMetrics Loss(IReadOnlyList<PreferencePair> pairs, in PairwiseLossSettings settings, bool withGradient, Span<float> rewards = default,
                                    double gradientScale = 1.0)
    {
        if (settings.Variant != PairwiseLossVariant.RewardModel)
            throw new ArgumentException($"a reward model trains with the {nameof(PairwiseLossVariant.RewardModel)} loss, not {settings.Variant}");
        var sequences = OfflinePreferenceObjective.Sequences(pairs);
        int s = sequences.Count, p = pairs.Count;
        if (!rewards.IsEmpty && rewards.Length != s) throw new ArgumentException($"rewards must be empty or have {s} entries (2 per pair), got {rewards.Length}");
        var r = new float[s];
        Score(sequences, r);
        if (!rewards.IsEmpty) r.CopyTo(rewards);
        var chosen = new int[p];
        var rejected = new int[p];
        for (int i = 0; i < p; i++) { chosen[i] = 2 * i; rejected[i] = 2 * i + 1; }
        var lossBatch = new PairwiseLossBatch { Rewards = r, Chosen = chosen, Rejected = rejected };
        if (!withGradient) return PairwiseBradleyTerryLoss.Forward(settings, lossBatch, new float[p]);
        var dRewards = new float[s];
        var metrics = PairwiseBradleyTerryLoss.ForwardBackward(settings, lossBatch, new float[p], default, dRewards);
        if (gradientScale != 1.0)
            for (int i = 0; i < s; i++) dRewards[i] = (float)(dRewards[i] * gradientScale);
        Backward(dRewards);
        return metrics;
    }

    /// <summary>The backbone's gradients (MPI) and the head's summed over the ranks of a data-parallel job.</summary>
    public void AllReduceGradients(IProcessGroup group, string purpose)
    {
        Engine.AllReduceGradients(group, purpose);
        group.AllReduceSum(head.Gradients, $"score head {purpose}");
    }

    /// <summary>SHA-256 fingerprint of the backbone's and the head's parameters.</summary>
    public ulong WeightsHash() => ReplicaCheck.Combine(DataParallelSettings.HashOf(Engine), ReplicaCheck.Hash(head.Parameters));

    /// <summary>
    /// One training step on a minibatch of pairs: zero gradients, loss and backward, clip to
    /// <paramref name="maxGradientNorm"/> (0: no clipping), AdamW step. A non-finite loss or gradient norm
    /// throws before the weights change.
    /// </summary>
    public RewardStepMetrics TrainStep(IReadOnlyList<PreferencePair> pairs, in PairwiseLossSettings settings, int step, float learningRate,
                                       float maxGradientNorm = 1f)
    {
        ZeroGradients();
        var metrics = Loss(pairs, settings, withGradient: true);
        double norm = ClipGradients(maxGradientNorm);
        if (!double.IsFinite(metrics.Loss) || !double.IsFinite(norm))
            throw new InvalidOperationException($"reward-model step {step}: loss {metrics.Loss} / gradient norm {norm} is not finite; weights left unchanged");
        OptimizerStep(step, learningRate);
        return new RewardStepMetrics(metrics, norm);
    }

    /// <summary>
    /// Writes one safetensors file (atomically): the backbone as <see cref="GptCheckpoint.SaveModel"/> writes it
    /// (config and tokenizer in the metadata) plus <c>score.weight</c> [1, C] and <c>score.bias</c> [1].
    /// </summary>
    public void Save(string path, string tokenizerSpec)
    {
        CopyBackboneToHost();
        GptCheckpoint.SaveModel(path, Backbone, tokenizerSpec,
        [
            SafeTensor.FromFloats(ScoreWeightName, HeadWeight, [1, channels]),
            SafeTensor.FromFloats(ScoreBiasName, HeadBias, [1]),
        ]);
    }

    /// <summary>
    /// Makes <see cref="Backbone"/> hold the trained parameters, gradients and AdamW moments: a download from a
    /// device engine (nothing to do on the CPU).
    /// </summary>
    public void CopyBackboneToHost() => Engine.CopyStateTo(Backbone);

    /// <summary>Names of the head's AdamW moments ([C + 1]: w then b) in a training checkpoint's state file.</summary>
    public const string ScoreAdamMName = "score.adam.m";
    public const string ScoreAdamVName = "score.adam.v";

    /// <summary>
    /// Writes a training checkpoint (<see cref="GptCheckpoint.SaveTraining"/>): the model file holds the backbone and the head as
    /// <see cref="Save"/> writes them, the state file the backbone's and the head's AdamW moments. The head goes into the same
    /// temporary step folder, so it appears atomically with the rest before <c>latest</c> moves.
    /// </summary>
    public string SaveTraining(string directory, string tokenizerSpec, TrainerState state, string optionsJson, int keep = 2)
    {
        CopyBackboneToHost();
        return GptCheckpoint.SaveTraining(directory, Backbone, tokenizerSpec, state, optionsJson, keep,
        [
            SafeTensor.FromFloats(ScoreWeightName, HeadWeight, [1, channels]),
            SafeTensor.FromFloats(ScoreBiasName, HeadBias, [1]),
        ],
        [
            SafeTensor.FromFloats(ScoreAdamMName, head.AdamM),
            SafeTensor.FromFloats(ScoreAdamVName, head.AdamV),
        ]);
    }

    /// <summary>
    /// Restores backbone, head and all AdamW moments from a folder written by <see cref="SaveTraining"/>; returns the
    /// trainer position and the options JSON. A missing or misshapen head tensor throws <see cref="CheckpointMismatchException"/>.
    /// On a device, the restored backbone is copied to the engine (gradients zeroed).
    /// </summary>
    public (TrainerState State, string OptionsJson) LoadTraining(string checkpoint)
    {
        var result = GptCheckpoint.LoadTraining(checkpoint, Backbone);
        string modelPath = Path.Combine(checkpoint, GptCheckpoint.ModelFileName);
        using (var file = SafeTensorsFile.Open(modelPath))
        {
            ScalarHead.ReadTensor(file, modelPath, ScoreWeightName, [1, channels], HeadWeight);
            ScalarHead.ReadTensor(file, modelPath, ScoreBiasName, [1], HeadBias);
        }
        string statePath = Path.Combine(checkpoint, GptCheckpoint.StateFileName);
        using (var file = SafeTensorsFile.Open(statePath))
        {
            ScalarHead.ReadTensor(file, statePath, ScoreAdamMName, [channels + 1], head.AdamM);
            ScalarHead.ReadTensor(file, statePath, ScoreAdamVName, [channels + 1], head.AdamV);
        }
        head.ZeroGradients();
        Engine.CopyStateFrom(Backbone);
        return result;
    }

    /// <summary>A reward model loaded from a file, with the tokenizer spec it was saved with (null when none).</summary>
    public sealed record Loaded(RewardModel Model, string? TokenizerSpec);

    /// <summary>
    /// Loads a file written by <see cref="Save"/>. Backbone tensors are checked as <see cref="GptCheckpoint.LoadModel"/>
    /// checks them; a missing or misshapen head throws <see cref="CheckpointMismatchException"/> naming the tensor.
    /// Gradients and AdamW moments start at zero.
    /// </summary>
    /// <param name="device">where the backbone runs (default the CPU): an on-policy objective's R̂ then scores there, and
    /// only the batch and one feature row per sequence cross the bus</param>
    public static Loaded Load(string path, AdamWSettings optimizer, long? memoryBudgetBytes = null, GptDevice? device = null)
    {
        var (backbone, spec) = GptCheckpoint.LoadModel(path, memoryBudgetBytes: memoryBudgetBytes);
        RewardModel model;
        try
        {
            model = new RewardModel(backbone, optimizer, ownsBackbone: true, device);
        }
        catch
        {
            backbone.Dispose();
            throw;
        }
        try
        {
            using var file = SafeTensorsFile.Open(path);
            int c = backbone.Config.Channels;
            ScalarHead.ReadTensor(file, path, ScoreWeightName, [1, c], model.HeadWeight);
            ScalarHead.ReadTensor(file, path, ScoreBiasName, [1], model.HeadBias);
        }
        catch
        {
            model.Dispose();
            throw;
        }
        return new Loaded(model, spec);
    }

    public void Dispose()
    {
        GptDevice.Release(Engine, Backbone);
        if (ownsBackbone) Backbone.Dispose();
    }
}
