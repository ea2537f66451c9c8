using DistAlign.Alignment.Policies;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Cpu;
using DistAlign.Tests.Alignment;
using DistAlign.Transformer.Data;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Reliability;

/// <summary>
/// The NaN/Inf guard (issue #10): a non-finite loss or gradient injected at a known step and element stops the run
/// with that step and the tensor's name, before the optimizer touches the weights, and the last checkpoint on disk
/// loads and holds the last good weights — for the pretraining trainer and for the alignment trainer.
/// </summary>
[NonParallelizable]
public class NonFiniteGuardTests
{
    private static readonly GptConfig Config = new(Layers: 2, Heads: 2, Channels: 16, VocabSize: 2257, MaxSequenceLength: 16);
    private string folder = "";
    private int savedThreads;

    [SetUp]
    public void SetUp()
    {
        folder = Directory.CreateTempSubdirectory("distalign-nan-").FullName;
        savedThreads = CpuParallel.Threads;
        CpuParallel.Threads = 1;
    }

    [TearDown]
    public void TearDown()
    {
        CpuParallel.Threads = savedThreads;
        Directory.Delete(folder, recursive: true);
    }

    private static (Gpt Model, LanguageModelTrainer Trainer) Pretraining(float clip)
    {
        var tok = Gpt2Tokenizer.FromSpec("gpt2-k2000");
        int[] tokens = tok.Encode(ShippedData.MobyDick()[..20_000]);
        var model = new Gpt(Config);
        model.InitializeGpt2(5);
        var options = new LanguageModelTrainingOptions { Steps = 10, Rows = 2, Length = 8, WarmupSteps = 1, GradientClip = clip, EvaluateEvery = 0 };
        return (model, new LanguageModelTrainer(model, tokens[..^1000], tokens[^1000..], options));
    }

    [TestCase("h.1.attn.c_attn.weight", 17, float.NaN, 1f)]
    [TestCase("h.0.mlp.c_proj.bias", 3, float.PositiveInfinity, 1f)]
    [TestCase("wte.weight", 100, float.NegativeInfinity, 0f)]
    public void APoisonedGradientStopsPretrainingNamingTheStepAndTensor(string tensor, int index, float poison, float clip)
    {
        var (model, trainer) = Pretraining(clip);
        using var _ = model;
        for (int i = 0; i < 3; i++) trainer.TrainStep();
        string checkpoint = GptCheckpoint.SaveTraining(folder, model, "gpt2-k2000", trainer.State, "{}");
        float[] weights = model.Parameters.ToArray(), moments = model.AdamV.ToArray();

        var target = model.Layout.Tensors.Single(t => t.Name == tensor);
        trainer.AfterBackward = m => m.Gradients[(int)target.Offset + index] = poison;
        var e = Assert.Throws<NonFiniteValueException>(() => trainer.TrainStep())!;
        TestContext.Out.WriteLine(e.Message);

        Assert.That(e.Step, Is.EqualTo(4));
        Assert.That(e.Tensor, Is.EqualTo(tensor));
        Assert.That(e.Element!.Value.Index, Is.EqualTo(index));
        Assert.That(e.Message, Does.Contain("step 4").And.Contain($"'{tensor}'").And.Contain($"element {index}"));
        Assert.That(trainer.Step, Is.EqualTo(3), "the step was not counted");
        Assert.That(model.Parameters.ToArray(), Is.EqualTo(weights), "the optimizer did not run");
        Assert.That(model.AdamV.ToArray(), Is.EqualTo(moments));
        AssertCheckpointHolds(checkpoint, 3, weights);
    }

    [Test]
    public void ANonFiniteWeightGivesANonFiniteLossThatNamesTheWeight()
    {
        var (model, trainer) = Pretraining(1f);
        using var _ = model;
        for (int i = 0; i < 2; i++) trainer.TrainStep();
        string checkpoint = GptCheckpoint.SaveTraining(folder, model, "gpt2-k2000", trainer.State, "{}");
        float[] weights = model.Parameters.ToArray();
        var ln = model.Layout.Tensors.Single(t => t.Name == "h.0.ln_1.weight");
        model.Parameters[(int)ln.Offset + 5] = float.NaN; // e.g. a corrupted restore or a bad manual edit
        var e = Assert.Throws<NonFiniteValueException>(() => trainer.TrainStep())!;
        TestContext.Out.WriteLine(e.Message);
        Assert.That(e.Step, Is.EqualTo(3));
        Assert.That(e.Tensor, Is.EqualTo("loss"));
        Assert.That(e.Message, Does.Contain("step 3: the training loss is not finite").And.Contain("because weight 'h.0.ln_1.weight' (element 5 is NaN) already is"));
        AssertCheckpointHolds(checkpoint, 2, weights);
    }

    [TestCase("sft")]
    [TestCase("dpo")]
    public void APoisonedGradientStopsAlignmentNamingTheStepAndTensorAndKeepsTheCheckpoint(string objective)
    {
        string modelPath = Path.Combine(folder, "pi0.safetensors");
        TinyAlignmentSetup.WriteModel(modelPath);
        var pairs = TinyAlignmentSetup.Pairs(TinyAlignmentSetup.Examples());
        var options = new AlignmentTrainingOptions
        {
            Objective = objective == "sft" ? AlignmentObjective.Sft : AlignmentObjective.Preference,
            Loss = new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: 0.5),
            Steps = 6, BatchPairs = 3, LearningRate = 3e-3f, WarmupSteps = 1, EvalFraction = 0, Seed = 2,
        };
        var (gpt, _) = GptCheckpoint.LoadModel(modelPath);
        using var inner = new GptPolicy(gpt, new AdamWSettings(), ownsModel: true);
        using var reference = inner.Snapshot();
        float[]? refs = options.UsesReferenceLogProbs ? ReferenceLogProbs.Get(reference, pairs, Path.Combine(folder, "cache"), null, out _) : null;
        using var poisoned = new PoisonedGradientPolicy(inner, "h.0.attn.c_proj.weight", 9);
        var trainer = new AlignmentTrainer(poisoned, reference, pairs, refs, options);
        string runFolder = Path.Combine(folder, "run");
        var run = new AlignmentRun(trainer, inner, runFolder, TinyAlignmentSetup.TokenizerSpec, "{}", checkpointEvery: 2);
        run.Start(resume: false);
        for (int i = 0; i < 4; i++) run.Step();
        float[] weights = gpt.Parameters.ToArray();

        poisoned.Armed = true;
        var e = Assert.Throws<NonFiniteValueException>(() => run.Step())!;
        TestContext.Out.WriteLine(e.Message);
        Assert.That(e.Step, Is.EqualTo(5));
        Assert.That(e.Tensor, Is.EqualTo("h.0.attn.c_proj.weight"));
        Assert.That(e.Message, Does.Contain("step 5").And.Contain("'h.0.attn.c_proj.weight' (element 9 is NaN)"));
        Assert.That(gpt.Parameters.ToArray(), Is.EqualTo(weights), "the optimizer did not run");
        Assert.That(AlignmentRun.ReadMetrics(run.MetricsPath), Has.Count.EqualTo(4), "no metrics line for the failed step");
        AssertCheckpointHolds(GptCheckpoint.LatestTraining(runFolder)!, 4, weights, TinyAlignmentSetup.Config);
    }

    private static void AssertCheckpointHolds(string checkpoint, int step, float[] weights, GptConfig? config = null)
    {
        using var restored = new Gpt(config ?? Config);
        var (state, _) = GptCheckpoint.LoadTraining(checkpoint, restored);
        Assert.That(state.Step, Is.EqualTo(step));
        Assert.That(restored.Parameters.ToArray(), Is.EqualTo(weights), "the last good checkpoint holds the last good weights");
    }

    /// <summary>A GPT policy whose backward, once armed, writes NaN into one gradient element (a test double, not a hook in the trainer).</summary>
    private sealed class PoisonedGradientPolicy(GptPolicy inner, string tensor, int index) : IPolicy
    {
        public bool Armed { get; set; }

        public void Score(IReadOnlyList<PromptResponse> batch, Span<float> tokenLogProbs, Span<float> tokenEntropies = default) =>
            inner.Score(batch, tokenLogProbs, tokenEntropies);

        public void Backward(ReadOnlySpan<float> dTokenLogProbs, ReadOnlySpan<float> dTokenEntropies = default)
        {
            inner.Backward(dTokenLogProbs, dTokenEntropies);
            if (Armed) inner.Model.Gradients[(int)inner.Model.Layout.Tensors.Single(t => t.Name == tensor).Offset + index] = float.NaN;
        }

        public Continuation[] Sample(IReadOnlyList<int[]> prompts, SamplingOptions options, ulong seed) => inner.Sample(prompts, options, seed);
        public void ZeroGradients() => inner.ZeroGradients();
        public double ClipGradients(float maxNorm) => inner.ClipGradients(maxNorm);
        public void OptimizerStep(int step, float learningRate) => inner.OptimizerStep(step, learningRate);
        public IPolicy Snapshot() => inner.Snapshot();
        public void CopyWeightsFrom(IPolicy other) => inner.CopyWeightsFrom(other);
        public NonFiniteElement? FirstNonFiniteGradient() => inner.FirstNonFiniteGradient();

        public void Dispose()
        {
        }
    }
}
