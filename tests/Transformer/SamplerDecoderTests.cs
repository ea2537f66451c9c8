using DistAlign.Tests.TestSupport;
using DistAlign.Transformer.Model;

namespace DistAlign.Tests.Transformer;

/// <summary><see cref="Sampler.GenerateOn"/>: the decoder a factory returns is sized, used from position 0 and disposed by the sampler.</summary>
public class SamplerDecoderTests
{
    private static readonly GptConfig Config = new(Layers: 1, Heads: 2, Channels: 8, VocabSize: 19, MaxSequenceLength: 10);

    /// <summary>A <see cref="GptDecoder"/> that records its disposal and how many steps it ran.</summary>
    private sealed class RecordingDecoder(GptDecoder inner) : IIncrementalDecoder, IDisposable
    {
        public bool Disposed { get; private set; }
        public int Steps { get; private set; }
        public int Rows => inner.Rows;
        public int MaxLength => inner.MaxLength;
        public int Position => inner.Position;
        public ReadOnlySpan<float> Logits => inner.Logits;
        public void Reset() => inner.Reset();
        public void Step(ReadOnlySpan<int> tokens) { inner.Step(tokens); Steps++; }
        public void Dispose() => Disposed = true;
    }

    private static Gpt Model()
    {
        var model = new Gpt(Config);
        model.InitializeGpt2(seed: 2);
        var noise = Numerics.RandomFloats(model.Parameters.Length, 3, 0.3);
        for (int i = 0; i < noise.Length; i++) model.Parameters[i] += noise[i];
        return model;
    }

    [Test]
    public void TheFactoryIsAskedForOneRowPerPromptAndTheDecodeLengthAndItsDecoderIsDisposed()
    {
        using var model = Model();
        var prompts = new List<int[]> { new[] { 1, 2 }, new[] { 3, 4, 5 } };
        var options = new SamplingOptions(MaxNewTokens: 4, EndOfText: -1);
        RecordingDecoder? made = null;
        (int Rows, int Length) asked = default;
        var viaFactory = Sampler.GenerateOn((rows, length) =>
        {
            asked = (rows, length);
            return made = new RecordingDecoder(new GptDecoder(model, rows, length));
        }, Config.VocabSize, Config.MaxSequenceLength, prompts, options, seed: 9);
        Assert.That(asked, Is.EqualTo((2, 7)), "rows = prompts, length = longest prompt 3 + 4 new tokens");
        Assert.That(made!.Disposed, Is.True);
        Assert.That(made.Steps, Is.EqualTo(6), "the last sampled token is not fed back");
        var direct = Sampler.Generate(model, prompts, options, seed: 9);
        Assert.That(viaFactory.Select(c => c.Tokens), Is.EqualTo(direct.Select(c => c.Tokens)));
        Assert.That(viaFactory.Select(c => c.LogProbs), Is.EqualTo(direct.Select(c => c.LogProbs)));
    }

    [Test]
    public void ADecoderTooSmallForTheDecodeIsRefusedAndStillDisposed()
    {
        using var model = Model();
        RecordingDecoder? made = null;
        Assert.That(() => Sampler.GenerateOn((rows, length) => made = new RecordingDecoder(new GptDecoder(model, rows, length - 1)),
                                             Config.VocabSize, Config.MaxSequenceLength, [new[] { 1, 2 }], new SamplingOptions(3), seed: 1),
                    Throws.ArgumentException.With.Message.Contains("1 rows × 4 positions; 1 × 5 were asked for"));
        Assert.That(made!.Disposed, Is.True);
    }
}
