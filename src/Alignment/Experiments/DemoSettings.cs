using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Alignment.Experiments;

/// <summary>The six alignment methods the demo compares, in report order.</summary>
public enum DemoMethod
{
    /// <summary>RLHF: PPO on the reward model with a KL penalty β to π0.</summary>
    Rlhf,
    /// <summary>Reverse KL: PPO on the reward model with the entropy term that makes its optimum π* (OBJECTIVES.md).</summary>
    ReverseKl,
    /// <summary>DPO (sigmoid) on the n pairs.</summary>
    Dpo,
    /// <summary>Preference MLE −ln σ(γ Δ ln π) on the n pairs (+ optional sampled KL to π0).</summary>
    Pmle,
    /// <summary>Preference distillation: pairs sampled on the training prompts, soft labels from the reward model.</summary>
    Distillation,
    /// <summary>REBEL: regression of the policy's log-ratio difference onto η ΔR̂ on its own samples.</summary>
    Rebel,
}

/// <summary>What the methods train: every weight of the GPT, or only a per-token logit offset over the frozen π0 (the realizable class).</summary>
public enum TrainedWeights
{
    /// <summary>Full fine-tuning: every weight of a copy of π0 (the reward model: a scalar head on a copy of π0's backbone).</summary>
    Full,
    /// <summary>
    /// π_b ∝ π0·exp(b) with π0 frozen and b ∈ ℝ^V trained (<see cref="TiltPolicy"/>): the class contains π* exactly (b = w/τ).
    /// The reward model gets the matching head, R̂ = γ·ln π_b̂ with its own offset; PPO's critic is a linear head on the frozen features.
    /// </summary>
    Tilt,
    /// <summary>
    /// The tilt class plus a rank-r update of π0's LM head over its frozen features (<see cref="TiltPolicy"/> with an adapter):
    /// π ∝ π0·exp(b + (h·A)·Bᵀ). Richer than the tilt (the change may depend on the context), and it still holds π* (B = 0).
    /// </summary>
    HeadLora,
}

/// <summary>Settings of <c>distalign demo</c> and <c>distalign experiment lm</c>. Defaults: the full run; <see cref="Quick"/>: the CI run.</summary>
public sealed record DemoSettings
{
    public string Tokenizer { get; init; } = "gpt2-k2000";
    /// <summary>π0's shape (vocabulary from the tokenizer).</summary>
    public GptConfig Model { get; init; } = new(Layers: 4, Heads: 4, Channels: 128, VocabSize: 2257, MaxSequenceLength: 64);
    public LanguageModelTrainingOptions Pretraining { get; init; } = new()
    {
        Steps = 1500, Rows = 8, Length = 64, LearningRate = 3e-3f, WarmupSteps = 50,
        AdamW = new AdamWSettings(WeightDecay: 0.1f), EvaluateEvery = 0, EvaluationBatches = 16, Seed = 1,
    };
    public KnownTargetSettings Task { get; init; } = new();
    /// <summary>What every method and the reward model train (the model file and report record it).</summary>
    public TrainedWeights Train { get; init; } = TrainedWeights.Full;
    /// <summary>r of the head adapter with <see cref="TrainedWeights.HeadLora"/>.</summary>
    public int AdapterRank { get; init; } = 4;
    /// <summary>π0 stays frozen (tilt, head-LoRA): the methods train a <see cref="TiltPolicy"/> over cached features.</summary>
    public bool FrozenBackbone => Train != TrainedWeights.Full;
    /// <summary>Weight decay of the trained weights (on the tilt class: an L2 pull of b toward 0, i.e. toward π0).</summary>
    public float WeightDecay { get; init; }
    /// <summary>
    /// Multipliers of each method's key parameter tried (its learning rate for PMLE, distillation, reverse KL and REBEL; β for
    /// DPO and RLHF), each a full run; empty: no tuning. With a grid, every method and the reward model train on the pairs
    /// less a held-out <see cref="ValidationFraction"/>, and the run kept is the one with the lowest held-out preference loss
    /// −ln σ(γ Δ ln π̂) (honest: no access to π*); the run with the lowest KL(π*‖π̂) (the oracle's pick) is reported beside it.
    /// </summary>
    public IReadOnlyList<double> TuningGrid { get; init; } = [];
    /// <summary>Share of the n pairs held out for the honest criterion when tuning.</summary>
    public double ValidationFraction { get; init; } = 0.125;
    /// <summary>Where preference distillation's pairs come from: the policy's own samples (default) or the dataset's two responses, relabelled by R̂.</summary>
    public PairSource DistillationPairs { get; init; } = PairSource.Policy;
    /// <summary>Steps (PPO: iterations) of the methods that sample every step (RLHF, reverse KL, REBEL, distillation on its own samples); 0: <see cref="Steps"/>.</summary>
    public int OnPolicySteps { get; init; }
    /// <summary>Passes over the training pairs of the offline methods and the tilt class's reward model (their steps then grow with n); 0: <see cref="Steps"/>.</summary>
    public double Epochs { get; init; }
    /// <summary>Prompts per step of the methods that sample every step; 0: <see cref="BatchPairs"/>.</summary>
    public int OnPolicyBatch { get; init; }
    /// <summary>The methods run, in report order (default: all six).</summary>
    public IReadOnlyList<DemoMethod> Methods { get; init; } = Enum.GetValues<DemoMethod>();
    /// <summary>n: preference pairs every method learns from.</summary>
    public int Pairs { get; init; } = 1024;
    /// <summary>Optimizer steps per method (the same budget for all six).</summary>
    public int Steps { get; init; } = 100;
    /// <summary>Pairs (offline methods) or prompts (online methods) per step.</summary>
    public int BatchPairs { get; init; } = 16;
    public float LearningRate { get; init; } = 1e-4f;
    /// <summary>
    /// The PPO methods' learning rate: each rollout takes epochs × minibatches optimizer steps on noisy sampled advantages,
    /// so they take a tenth of the others' (at 1e-4 RLHF and reverse KL drifted tens of nats from π0 within 100 iterations).
    /// </summary>
    public float PpoLearningRate { get; init; } = 1e-5f;
    public double DpoBeta { get; init; } = 0.1;
    /// <summary>β of PMLE's sampled KL(π ‖ π0); 0 = pure preference MLE.</summary>
    public double PmleKlBeta { get; init; } = 0;
    public double DistillationKlBeta { get; init; } = 0;
    public double RebelEta { get; init; } = 1;
    public double RlhfBeta { get; init; } = 0.1;
    /// <summary>PPO passes over each rollout (each split into <see cref="PpoMinibatches"/> optimizer steps).</summary>
    public int PpoEpochs { get; init; } = 2;
    public int PpoMinibatches { get; init; } = 2;
    /// <summary>β of reverse KL's KL(π ‖ π0) term (0: the optimum is π* itself when R̂ = γ ln π* + c).</summary>
    public double ReverseKlBeta { get; init; } = 0;
    public int RewardSteps { get; init; } = 200;
    /// <summary>
    /// The reward model scores R̂ = γ·ln π0(y|x) + w·h + b (a fixed, reference-anchored baseline) instead of w·h + b alone:
    /// the head then learns only how the preferences depart from π0's own likelihood, which a last-token head can fit,
    /// and the on-policy methods' optima (∝ exp(R̂/γ)) start at π0 instead of at a near-uniform distribution.
    /// </summary>
    public bool RewardBaseline { get; init; } = true;
    public float RewardLearningRate { get; init; } = 3e-4f;
    /// <summary>Samples per evaluation prompt for every Monte Carlo estimate.</summary>
    public int EvalSamplesPerPrompt { get; init; } = 4;
    public ulong Seed { get; init; } = 1;
    /// <summary>
    /// Seeds of pairs and training: each n runs with seeds <see cref="Seed"/>, <see cref="Seed"/> + 1, …; π0, π* and the evaluation
    /// samples are shared. The report gives each method's mean ± standard error over the seeds.
    /// </summary>
    public int Seeds { get; init; } = 1;

    /// <summary>The CI-sized run: a smaller π0, fewer prompts, pairs and steps.</summary>
    public static DemoSettings Quick => new()
    {
        Model = new GptConfig(Layers: 2, Heads: 2, Channels: 64, VocabSize: 2257, MaxSequenceLength: 32),
        Pretraining = new LanguageModelTrainingOptions
        {
            Steps = 150, Rows = 8, Length = 32, LearningRate = 3e-3f, WarmupSteps = 20,
            AdamW = new AdamWSettings(WeightDecay: 0.1f), EvaluateEvery = 0, EvaluationBatches = 4, Seed = 1,
        },
        Task = new KnownTargetSettings { ResponseTokens = 8, TrainPrompts = 32, EvalPrompts = 16 },
        Pairs = 64,
        Steps = 10,
        BatchPairs = 8,
        RewardSteps = 20,
        EvalSamplesPerPrompt = 2,
    };

    /// <summary>
    /// The smallest run that goes through every stage (1 layer, 2 heads, C = 8, the gpt2-k300 tokenizer's 557 tokens, T = 16;
    /// 3 pretraining steps, 8 pairs, one step per method and reward model steps 2): for checking a device against the CPU
    /// (tests on ILGPU's CPU simulator, gpu-check), not for its numbers.
    /// </summary>
    public static DemoSettings Smoke => new()
    {
        Tokenizer = "gpt2-k300",   // GPT-2's first 300 merges hold enough whole words for the lexicon's tilt
        Model = new GptConfig(Layers: 1, Heads: 2, Channels: 8, VocabSize: 557, MaxSequenceLength: 16),
        Pretraining = new LanguageModelTrainingOptions
        {
            Steps = 3, Rows = 2, Length = 16, LearningRate = 3e-3f, WarmupSteps = 1,
            AdamW = new AdamWSettings(WeightDecay: 0.1f), EvaluateEvery = 0, EvaluationBatches = 1, Seed = 1,
        },
        Task = new KnownTargetSettings { ResponseTokens = 4, TrainPrompts = 4, EvalPrompts = 2 },
        Pairs = 8, Steps = 1, BatchPairs = 2, RewardSteps = 2, EvalSamplesPerPrompt = 2, PpoEpochs = 1, PpoMinibatches = 1,
        LearningRate = 1e-2f, PpoLearningRate = 1e-2f,
    };

    /// <summary>
    /// <paramref name="settings"/> moved to the tilt class (<see cref="TrainedWeights.Tilt"/>), with the budget and step sizes
    /// that class needs: b has V parameters and no transformer pass per step, so n grows to 2¹⁴ pairs (the quick run keeps its n)
    /// and the offline methods (and the reward model) take 4 epochs of 64-pair steps (1,024 steps at n = 2¹⁴); the methods that sample every step take 256 steps of 32
    /// prompts (their cost is the sampling). Every method is tuned on a grid of ×¼, ×1, ×4 its key parameter, centred where a
    /// first run at n = 2¹⁴ found each method's best (β = 0.4 for DPO and RLHF: at 0.1 both were worse still).
    /// </summary>
    /// <param name="headLora">the head-LoRA class instead (<see cref="TrainedWeights.HeadLora"/>), with the same budget and grid</param>
    public static DemoSettings InTiltClass(DemoSettings settings, bool quick, bool headLora = false) => settings with
    {
        Train = headLora ? TrainedWeights.HeadLora : TrainedWeights.Tilt,
        Pairs = quick ? settings.Pairs : 1 << 14,
        BatchPairs = quick ? settings.BatchPairs : 64,
        Steps = quick ? settings.Steps : 1024,
        RewardSteps = quick ? settings.RewardSteps : 1024,
        OnPolicySteps = quick ? settings.Steps : 256,
        Epochs = quick ? 0 : 4,
        OnPolicyBatch = quick ? settings.BatchPairs : 32,
        LearningRate = 0.02f,
        PpoLearningRate = 0.0025f,
        DpoBeta = 0.4,
        RlhfBeta = 0.4,
        DistillationPairs = PairSource.Dataset,
        TuningGrid = [0.25, 1, 4],
    };

    public DemoSettings Validate()
    {
        Task.Validate();
        Pretraining.Validate();
        if (Pairs < 2) throw new ArgumentException($"n must be at least 2 pairs (got {Pairs})");
        if (Steps < 1 || RewardSteps < 1) throw new ArgumentException("methods and the reward model need at least one step");
        if (BatchPairs < 1) throw new ArgumentException($"batch must be at least 1 (got {BatchPairs})");
        if (AdapterRank < 1) throw new ArgumentException($"the head adapter's rank must be at least 1 (got {AdapterRank})");
        if (TuningGrid.Any(x => !(x > 0) || double.IsInfinity(x))) throw new ArgumentException("tuning multipliers must be positive numbers");
        if (TuningGrid.Count > 0 && !(ValidationFraction > 0 && ValidationFraction < 0.5)) throw new ArgumentException($"the held-out share must be in (0, 0.5) when tuning (got {ValidationFraction})");
        if (Seeds < 1) throw new ArgumentException($"at least one seed is needed (got {Seeds})");
        if (!(Epochs >= 0) || double.IsInfinity(Epochs)) throw new ArgumentException($"epochs must be ≥ 0 (got {Epochs})");
        if (OnPolicyBatch < 0) throw new ArgumentException($"on-policy batch must be ≥ 0 (got {OnPolicyBatch})");
        if (OnPolicySteps < 0) throw new ArgumentException($"on-policy steps must be ≥ 0 (got {OnPolicySteps})");
        if (Methods.Count == 0) throw new ArgumentException("at least one method must run");
        if (!(WeightDecay >= 0)) throw new ArgumentException($"weight decay must be ≥ 0 (got {WeightDecay})");
        if (EvalSamplesPerPrompt < 2) throw new ArgumentException("the evaluation needs at least 2 samples per prompt (pairs of π0 samples rate the reward model)");
        return this;
    }
}
