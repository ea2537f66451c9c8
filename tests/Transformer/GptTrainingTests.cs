using DistAlign.Engine.SafeTensors;
using DistAlign.Transformer.Data;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Transformer;

public class GptTrainingTests
{
    private static readonly Lazy<(int[] Train, int[] Validation)> Corpus = new(() =>
    {
        var split = ShippedData.SplitMobyDick();
        var tok = Gpt2Tokenizer.Truncated();
        return (tok.Encode(split.Train), tok.Encode(split.HeldOut));
    });

    private static readonly GptConfig Small = new(Layers: 2, Heads: 4, Channels: 64, VocabSize: Gpt2Tokenizer.Truncated().VocabSize, MaxSequenceLength: 64);

    private string directory = "";

    [SetUp]
    public void MakeDirectory() => directory = Directory.CreateTempSubdirectory("distalign-test-").FullName;

    [TearDown]
    public void RemoveDirectory() => Directory.Delete(directory, recursive: true);

    /// <summary>H(unigram) = −Σ p(v) ln p(v) over the training tokens: what a model with no context can reach.</summary>
    private static double UnigramEntropy(int[] tokens, int vocab)
    {
        var counts = new double[vocab];
        foreach (int t in tokens) counts[t]++;
        double h = 0;
        foreach (double c in counts)
            if (c > 0) h -= c / tokens.Length * Math.Log(c / tokens.Length);
        return h;
    }

    [Test]
    public void PretrainingOnTheShippedCorpusBeatsTheUnigramEntropy()
    {
        var (train, validation) = Corpus.Value;
        double unigram = UnigramEntropy(train, Small.VocabSize);
        using var model = new Gpt(Small);
        model.InitializeGpt2(1);
        // 600 steps at 5e-3, not 400 at 1e-2: at 1e-2 the last loss depended on the rounding of every kernel (5.19 to 5.41
        // across the vector widths and a reordered sum, against the bound 5.39); here it is 5.02 to 5.09 on every path.
        var options = new LanguageModelTrainingOptions
        {
            Steps = 600, Rows = 16, Length = 32, LearningRate = 5e-3f, WarmupSteps = 30, EvaluateEvery = 600, EvaluationBatches = 16,
        };
        var trainer = new LanguageModelTrainer(model, train, validation, options);
        float initial = trainer.Evaluate();
        StepReport last = default;
        while (trainer.Step < options.Steps) last = trainer.TrainStep();
        float final = last.ValidationLoss ?? float.NaN;
        TestContext.Out.WriteLine($"validation loss: {initial:F3} at init (ln V = {Math.Log(Small.VocabSize):F3}) → {final:F3} after {options.Steps} steps; unigram entropy {unigram:F3} nats");
        Assert.That(initial, Is.EqualTo(Math.Log(Small.VocabSize)).Within(0.1), "a fresh model predicts nearly uniformly");
        Assert.That(final, Is.LessThan(unigram - 0.75), "the model must use context: well below the unigram entropy");
    }

    [Test]
    public void ResumingFromACheckpointContinuesBitIdentically()
    {
        var (train, validation) = Corpus.Value;
        var options = new LanguageModelTrainingOptions
        {
            Steps = 6, Rows = 2, Length = 16, LearningRate = 1e-3f, WarmupSteps = 2, EvaluateEvery = 0, Seed = 5,
            GradientAccumulation = 2,
        };
        var tiny = Small with { Layers = 1, Channels = 32, Heads = 2 };

        List<float> straightLosses = [];
        float[] straightWeights;
        using (var model = new Gpt(tiny))
        {
            model.InitializeGpt2(options.Seed);
            var trainer = new LanguageModelTrainer(model, train, validation, options);
            while (trainer.Step < options.Steps) straightLosses.Add(trainer.TrainStep().Loss);
            straightWeights = model.Parameters.ToArray();
        }

        List<float> resumedLosses = [];
        using (var model = new Gpt(tiny))
        {
            model.InitializeGpt2(options.Seed);
            var trainer = new LanguageModelTrainer(model, train, validation, options);
            while (trainer.Step < 3) resumedLosses.Add(trainer.TrainStep().Loss);
            GptCheckpoint.SaveTraining(directory, model, "gpt2-k2000", trainer.State, "{}");
        }
        using (var model = new Gpt(tiny))
        {
            var latest = GptCheckpoint.LatestTraining(directory)!;
            var (state, _) = GptCheckpoint.LoadTraining(latest, model);
            var trainer = new LanguageModelTrainer(model, train, validation, options);
            trainer.Restore(state);
            Assert.That(trainer.Step, Is.EqualTo(3));
            while (trainer.Step < options.Steps) resumedLosses.Add(trainer.TrainStep().Loss);
            Assert.That(resumedLosses, Is.EqualTo(straightLosses), "losses after resume");
            Assert.That(model.Parameters.ToArray(), Is.EqualTo(straightWeights), "weights after resume");
        }
    }

    [Test]
    public void ModelCheckpointRoundTripsWithConfigAndTokenizer()
    {
        using var model = new Gpt(Small with { Layers = 1 });
        model.InitializeGpt2(9);
        string path = Path.Combine(directory, "m.safetensors");
        GptCheckpoint.SaveModel(path, model, "gpt2-k2000");
        var loaded = GptCheckpoint.LoadModel(path);
        using var copy = loaded.Model;
        Assert.That(copy.Config, Is.EqualTo(model.Config));
        Assert.That(loaded.TokenizerSpec, Is.EqualTo("gpt2-k2000"));
        Assert.That(copy.Parameters.ToArray(), Is.EqualTo(model.Parameters.ToArray()));
        Assert.That(Directory.GetFiles(directory), Has.Length.EqualTo(1), "no temporary file left behind");
    }

    [Test]
    public void AHuggingFaceStyleFileWithoutMetadataLoads()
    {
        // GPT-2 files from the Hub: a 'transformer.' prefix on some exports, extra attention-mask buffers, no config.
        var config = new GptConfig(Layers: 2, Heads: 1, Channels: 64, VocabSize: 50, MaxSequenceLength: 16);
        using var model = new Gpt(config);
        model.InitializeGpt2(2);
        var p = model.Parameters;
        var tensors = new List<SafeTensor>();
        foreach (var t in model.Layout.Tensors)
            tensors.Add(SafeTensor.FromFloats("transformer." + t.Name, p.Slice((int)t.Offset, (int)t.Length), [.. t.Shape.Select(d => (long)d)]));
        tensors.Add(SafeTensor.FromFloats("transformer.h.0.attn.bias", new float[16 * 16], [1, 1, 16, 16]));
        string path = Path.Combine(directory, "hf.safetensors");
        SafeTensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });

        var loaded = GptCheckpoint.LoadModel(path);
        using var copy = loaded.Model;
        Assert.That(copy.Config, Is.EqualTo(config), "config inferred from shapes (heads = C/64)");
        Assert.That(loaded.TokenizerSpec, Is.Null);
        Assert.That(copy.Parameters.ToArray(), Is.EqualTo(model.Parameters.ToArray()));
    }

    [Test]
    public void ACheckpointOfTheWrongShapeIsRefusedNamingTheTensor()
    {
        using var model = new Gpt(Small with { Layers = 1 });
        string path = Path.Combine(directory, "m.safetensors");
        GptCheckpoint.SaveModel(path, model, "gpt2-k2000");
        using var other = new Gpt(Small with { Layers = 1, Channels = 32, Heads = 2 });
        using var file = SafeTensorsFile.Open(path);
        var e = Assert.Throws<CheckpointMismatchException>(() => GptCheckpoint.LoadParameters(file, other, path))!;
        Assert.That(e.Message, Does.Contain("wte.weight").And.Contain("[2257, 64]").And.Contain("[2257, 32]"));
    }

    [Test]
    public void ANonFiniteLossStopsTrainingWithTheStepNumberBeforeTheUpdate()
    {
        var (train, validation) = Corpus.Value;
        using var model = new Gpt(Small with { Layers = 1, Channels = 32, Heads = 2 });
        model.InitializeGpt2(1);
        var options = new LanguageModelTrainingOptions { Steps = 5, Rows = 2, Length = 8, EvaluateEvery = 0 };
        var trainer = new LanguageModelTrainer(model, train, validation, options);
        trainer.TrainStep();
        model.Parameters[(int)model.Layout["h.0.mlp.c_fc.weight"].Offset] = float.NaN;
        var before = model.Parameters.ToArray();
        var e = Assert.Throws<NonFiniteValueException>(() => trainer.TrainStep())!;
        Assert.That(e.Step, Is.EqualTo(2));
        Assert.That(e.Message, Does.Contain("step 2"));
        Assert.That(trainer.Step, Is.EqualTo(1), "the failed step is not counted");
        Assert.That(model.Parameters.ToArray(), Is.EqualTo(before), "no update was applied");
    }

    [Test]
    public void GradientAccumulationMatchesOneLargeBatch()
    {
        var (train, validation) = Corpus.Value;
        var tiny = Small with { Layers = 1, Channels = 32, Heads = 2 };
        float[] Run(int rows, int accumulation)
        {
            using var model = new Gpt(tiny);
            model.InitializeGpt2(3);
            var options = new LanguageModelTrainingOptions { Steps = 1, Rows = rows, Length = 16, GradientAccumulation = accumulation, EvaluateEvery = 0 };
            // Windows in file order, so 2 × 2 rows read the same tokens as 1 × 4 rows.
            var batch = new GptBatch(rows, 16);
            var lp = new float[batch.TokenCount];
            model.ZeroGradients();
            var d = Enumerable.Repeat(-1f / (accumulation * batch.TokenCount), batch.TokenCount).ToArray();
            for (int micro = 0; micro < accumulation; micro++)
            {
                batch.SetLanguageModelling(train.AsSpan(micro * rows * 16, rows * 16 + 1));
                model.ForwardBackward(batch, d, lp);
            }
            return model.Gradients.ToArray();
        }
        var one = Run(4, 1);
        var accumulated = Run(2, 2);
        // The same 64 (input, target) pairs either way; only the order of the sums differs.
        double scale = one.Max(Math.Abs);
        TestSupport.Numerics.AssertClose(accumulated, TestSupport.Numerics.ToDouble(one), atol: 1e-5 * scale, rtol: 1e-4, "accumulated gradient");
    }
}
