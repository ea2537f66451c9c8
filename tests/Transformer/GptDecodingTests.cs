using DistAlign.Tests.TestSupport;
using DistAlign.Transformer.Model;

namespace DistAlign.Tests.Transformer;

public class GptDecodingTests
{
    private static readonly GptConfig Config = new(Layers: 2, Heads: 2, Channels: 16, VocabSize: 23, MaxSequenceLength: 12);

    private static Gpt MakeModel()
    {
        var model = new Gpt(Config);
        model.InitializeGpt2(seed: 3);
        var p = model.Parameters;
        var noise = Numerics.RandomFloats(p.Length, 4, 0.2); // larger weights: a peaked, non-trivial distribution
        for (int i = 0; i < p.Length; i++) p[i] += noise[i];
        return model;
    }

    [Test]
    public void CachedDecodingGivesTheLogitsOfTheFullForward()
    {
        using var model = MakeModel();
        int rows = 3, length = 10;
        var rng = new Random(8);
        var tokens = new int[rows * length];
        for (int i = 0; i < tokens.Length; i++) tokens[i] = rng.Next(Config.VocabSize);

        // Full forward: log-prob of every vocabulary entry at every position, one target at a time,
        // gives the full log-softmax; compare against the decoder's log-softmax of its logits.
        var decoder = new GptDecoder(model, rows, length);
        var feed = new int[rows];
        var batch = new GptBatch(rows, length);
        var logProbs = new float[rows * length];
        var fullLogSoftmax = new float[rows * length * Config.VocabSize];
        for (int v = 0; v < Config.VocabSize; v++)
        {
            batch.Clear();
            Array.Copy(tokens, batch.Tokens, tokens.Length);
            Array.Fill(batch.Targets, v);
            model.Forward(batch, logProbs);
            for (int i = 0; i < logProbs.Length; i++) fullLogSoftmax[i * Config.VocabSize + v] = logProbs[i];
        }

        for (int t = 0; t < length; t++)
        {
            for (int r = 0; r < rows; r++) feed[r] = tokens[r * length + t];
            decoder.Step(feed);
            for (int r = 0; r < rows; r++)
            {
                var logits = decoder.Logits.AsSpan(r * Config.VocabSize, Config.VocabSize);
                var expected = new double[Config.VocabSize];
                var actual = new float[Config.VocabSize];
                for (int v = 0; v < Config.VocabSize; v++)
                {
                    actual[v] = Sampler.LogSoftmaxAt(logits, v);
                    expected[v] = fullLogSoftmax[((r * length) + t) * Config.VocabSize + v];
                }
                Numerics.AssertClose(actual, expected, atol: 2e-5, rtol: 2e-5, $"row {r}, position {t}");
            }
        }
    }

    [Test]
    public void SamplingIsDeterministicForASeedAndReturnsTheModelsLogProbs()
    {
        using var model = MakeModel();
        var prompts = new List<int[]> { new[] { 1, 2, 3 }, new[] { 4 }, new[] { 5, 6 } };
        var options = new SamplingOptions(MaxNewTokens: 6, Temperature: 1f, EndOfText: 22);
        var a = Sampler.Generate(model, prompts, options, seed: 42);
        var b = Sampler.Generate(model, prompts, options, seed: 42);
        var c = Sampler.Generate(model, prompts, options, seed: 43);
        Assert.That(a.Select(x => x.Tokens), Is.EqualTo(b.Select(x => x.Tokens)));
        Assert.That(a.Select(x => x.LogProbs), Is.EqualTo(b.Select(x => x.LogProbs)));
        Assert.That(a.Select(x => x.Tokens), Is.Not.EqualTo(c.Select(x => x.Tokens)), "another seed should give other samples");

        // A row's sample does not depend on the other rows in the batch.
        var single = Sampler.Generate(model, [prompts[0]], options, seed: 42);
        Assert.That(single[0].Tokens, Is.EqualTo(a[0].Tokens), "row 0 must be the same alone and in a batch");

        // The returned log-probs are the model's: score the sampled continuation with a full forward.
        for (int r = 0; r < prompts.Count; r++)
        {
            var seq = prompts[r].Concat(a[r].Tokens).ToArray();
            var batch = new GptBatch(1, seq.Length - 1);
            for (int t = 0; t < seq.Length - 1; t++)
            {
                batch.Tokens[t] = seq[t];
                batch.Targets[t] = t + 1 >= prompts[r].Length ? seq[t + 1] : -1;
            }
            var lp = new float[batch.TokenCount];
            model.Forward(batch, lp);
            var scored = lp.Skip(prompts[r].Length - 1).ToArray();
            Numerics.AssertClose(a[r].LogProbs, Numerics.ToDouble(scored), 2e-5, 2e-5, $"log-probs of row {r}");
        }
    }

    [Test]
    public void GreedyTopKAndTopPRestrictTheChoice()
    {
        using var model = MakeModel();
        var prompt = new List<int[]> { new[] { 7, 8 } };
        var greedy = Sampler.Generate(model, prompt, new SamplingOptions(5, Temperature: 0f), seed: 1);
        var topOne = Sampler.Generate(model, prompt, new SamplingOptions(5, Temperature: 1f, TopK: 1), seed: 99);
        var tinyP = Sampler.Generate(model, prompt, new SamplingOptions(5, Temperature: 1f, TopP: 1e-6f), seed: 7);
        Assert.That(topOne[0].Tokens, Is.EqualTo(greedy[0].Tokens), "top-k = 1 is greedy");
        Assert.That(tinyP[0].Tokens, Is.EqualTo(greedy[0].Tokens), "a tiny nucleus keeps only the arg-max");
    }

    [Test]
    public void StopsAtEndOfText()
    {
        using var model = MakeModel();
        var greedy = Sampler.Generate(model, [new[] { 7 }], new SamplingOptions(8, Temperature: 0f), seed: 1);
        int stop = greedy[0].Tokens[2];
        var stopped = Sampler.Generate(model, [new[] { 7 }], new SamplingOptions(8, Temperature: 0f, EndOfText: stop), seed: 1);
        int first = Array.IndexOf(greedy[0].Tokens, stop);
        Assert.That(stopped[0].Tokens, Is.EqualTo(greedy[0].Tokens[..(first + 1)]));
        Assert.That(stopped[0].Ended, Is.True);
    }

    [Test]
    public void BadPromptsAreRejected()
    {
        using var model = MakeModel();
        Assert.Throws<ArgumentException>(() => Sampler.Generate(model, [Array.Empty<int>()], new SamplingOptions(2), 1));
        Assert.Throws<ArgumentException>(() => Sampler.Generate(model, [new[] { 99 }], new SamplingOptions(2), 1));
        Assert.Throws<ArgumentException>(() => Sampler.Generate(model, [new int[20]], new SamplingOptions(2), 1));
        Assert.Throws<ArgumentException>(() => new SamplingOptions(2, Temperature: -1).Validate());
    }
}
