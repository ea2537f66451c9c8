using DistAlign.Alignment.Experiments;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Alignment.Experiments;

/// <summary>The demo's π0 cache: pretrained once, then loaded with the same weights; other settings train anew.</summary>
public class KnownTargetPretrainingTests
{
    [Test]
    public void ReferenceIsPretrainedOnceAndThenLoadedFromTheCache()
    {
        string cache = Directory.CreateTempSubdirectory("distalign-pi0-").FullName;
        try
        {
            var tok = Gpt2Tokenizer.FromSpec("gpt2-k2000");
            var config = new GptConfig(1, 2, 16, tok.VocabSize, 16);
            var options = new LanguageModelTrainingOptions { Steps = 3, Rows = 2, Length = 16, WarmupSteps = 1, EvaluateEvery = 0, EvaluationBatches = 1 };
            int reported = 0;
            var (first, info) = ReferencePretraining.GetOrTrain(cache, config, options, tok, (_, _, _) => reported++);
            using var _1 = first;
            Assert.That(info.Cached, Is.False);
            Assert.That(reported, Is.EqualTo(3));
            Assert.That(double.IsFinite(info.ValidationLoss), Is.True);
            var (second, again) = ReferencePretraining.GetOrTrain(cache, config, options, tok);
            using var _2 = second;
            Assert.That(again.Cached, Is.True);
            Assert.That(again.Path, Is.EqualTo(info.Path));
            Assert.That(again.ValidationLoss, Is.EqualTo(info.ValidationLoss));
            Assert.That(second.Parameters.SequenceEqual(first.Parameters), Is.True, "the cached weights are the trained ones");
            var (third, other) = ReferencePretraining.GetOrTrain(cache, config, options with { Seed = 2 }, tok);
            using var _3 = third;
            Assert.That(other.Cached, Is.False, "another seed is another π0");
            Assert.That(other.Path, Is.Not.EqualTo(info.Path));
        }
        finally
        {
            Directory.Delete(cache, recursive: true);
        }
    }
}
