using System.Text;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Tests.Reference;
using DistAlign.Tests.TestSupport;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;

namespace DistAlign.Tests.Alignment;

/// <summary>
/// What <c>distalign score</c> reads and computes: the JSONL forms and their errors, the tokenisation rules, and sequence
/// log-probs against an fp64 reference GPT run on each sequence alone (no packing).
/// </summary>
public class SequenceScorerTests
{
    private static readonly GptConfig Tiny = new(Layers: 2, Heads: 2, Channels: 12, VocabSize: 2257, MaxSequenceLength: 24);

    private static List<ScoreExample> Parse(string text) => ScoreJsonl.Parse(new MemoryStream(Encoding.UTF8.GetBytes(text)), "s.jsonl");

    [Test]
    public void ReadsPromptResponsePairsAndTexts()
    {
        var examples = Parse("{\"prompt\": \"Call me\", \"response\": \" Ishmael.\"}\n\n{\"text\": \"The whale.\"}\n{\"response\": \"Alone\", \"id\": 4}\n");
        Assert.That(examples, Is.EqualTo(new[]
        {
            new ScoreExample("Call me", " Ishmael.", 1), new ScoreExample("", "The whale.", 3), new ScoreExample("", "Alone", 4),
        }));
    }

    [TestCase("{\"prompt\": \"x\"}", DatasetRule.MissingField, "missing field 'response' (or 'text')")]
    [TestCase("{\"text\": \"a\", \"response\": \"b\"}", DatasetRule.DuplicateKey, "both 'text' and 'response'")]
    [TestCase("{\"prompt\": \"x\", \"response\": \"  \"}", DatasetRule.EmptyText, "field 'response' is whitespace-only")]
    [TestCase("{\"text\": 3}", DatasetRule.WrongType, "field 'text' must be a string")]
    [TestCase("{\"prompt\": 1, \"response\": \"b\"}", DatasetRule.WrongType, "field 'prompt' must be a string")]
    public void ABadLineIsRefusedNamingFileLineAndRule(string line, DatasetRule rule, string detail)
    {
        var e = Assert.Throws<DatasetFormatException>(() => Parse("{\"text\": \"fine\"}\n" + line + "\n"))!;
        Assert.That(e.Rule, Is.EqualTo(rule));
        Assert.That(e.Message, Does.StartWith("s.jsonl:2:").And.Contain(detail));
    }

    [Test]
    public void TokenizationRefusesTooLongSequencesAndTheReservedTokenNamingTheLine()
    {
        var tok = Gpt2Tokenizer.FromSpec(TinyAlignmentSetup.TokenizerSpec);
        string longText = string.Join(' ', Enumerable.Repeat("whale", 40));
        var tooLong = Assert.Throws<ArgumentException>(() => SequenceScorer.Tokenize([new ScoreExample("", longText, 7)], tok, 24, "s.jsonl"))!;
        Assert.That(tooLong.Message, Does.StartWith("s.jsonl:7:").And.Contain("exceed the model's context of 24"));
        var reserved = Assert.Throws<DatasetFormatException>(() => SequenceScorer.Tokenize([new ScoreExample("a <|endoftext|>", "b", 2)], tok, 24, "s.jsonl"))!;
        Assert.That(reserved.Rule, Is.EqualTo(DatasetRule.ReservedToken));
        var fine = SequenceScorer.Tokenize([new ScoreExample("Call me", " Ishmael", 1)], tok, 24, "s.jsonl");
        Assert.That(fine[0].Prompt[0], Is.EqualTo(tok.EndOfText), "the prompt starts at <|endoftext|>");
        Assert.That(fine[0].Response, Is.EqualTo(tok.Encode(" Ishmael")), "the response as it is, no end token appended");
    }

    [Test]
    public void SequenceLogProbsMatchAnFp64ReferenceAndDoNotDependOnTheBatch()
    {
        using var model = new Gpt(Tiny);
        model.InitializeGpt2(5);
        var noise = Numerics.RandomFloats((int)model.Layout.TotalElements, 6, 0.05);
        for (int i = 0; i < noise.Length; i++) model.Parameters[i] += noise[i];
        var random = new Random(3);
        var sequences = Enumerable.Range(0, 7).Select(s => new PromptResponse(
            Enumerable.Range(0, 1 + s % 4).Select(_ => random.Next(Tiny.VocabSize)).ToArray(),
            Enumerable.Range(0, 1 + (s * 3) % 9).Select(_ => random.Next(Tiny.VocabSize)).ToArray())).ToList();
        using var policy = new GptPolicy(model, new AdamWSettings());
        var packed = SequenceScorer.Score(policy, sequences, Enumerable.Range(10, 7).ToArray(), batchSize: 32, withEntropies: true);
        var single = SequenceScorer.Score(policy, sequences, batchSize: 1);

        var reference = new ReferenceGpt(Tiny.Layers, Tiny.Heads, Tiny.Channels, Tiny.VocabSize, Tiny.MaxSequenceLength);
        foreach (var t in model.Layout.Tensors)
            for (int i = 0; i < t.Length; i++) reference.Parameters[t.Name][i] = model.Parameters[(int)t.Offset + i];
        double worst = 0;
        for (int s = 0; s < sequences.Count; s++)
        {
            var (prompt, response) = sequences[s];
            int[] seq = [.. prompt, .. response];
            int len = seq.Length - 1, v = Tiny.VocabSize;
            var logits = reference.Logits(seq[..len], Enumerable.Range(0, len).ToArray(), new int[len], 1, len);
            double expected = 0;
            for (int i = 0; i < response.Length; i++)
            {
                var row = logits.AsSpan((prompt.Length - 1 + i) * v, v);
                double max = double.NegativeInfinity, sum = 0;
                foreach (double x in row) max = Math.Max(max, x);
                foreach (double x in row) sum += Math.Exp(x - max);
                expected += row[response[i]] - max - Math.Log(sum);
            }
            Assert.That(packed[s].Line, Is.EqualTo(10 + s));
            Assert.That(packed[s].Tokens, Is.EqualTo(response.Length));
            Assert.That(packed[s].TokenEntropies, Has.Length.EqualTo(response.Length).And.All.GreaterThan(0f));
            Assert.That(packed[s].TokenLogProbs.Select(x => (double)x).Sum(), Is.EqualTo(packed[s].LogProb).Within(1e-5 * Math.Abs(expected)));
            Assert.That((double)packed[s].LogProb, Is.EqualTo(expected).Within(1e-5 * Math.Max(1, Math.Abs(expected))), $"sequence {s}");
            Assert.That(single[s].LogProb, Is.EqualTo(packed[s].LogProb).Within(1e-5 * Math.Max(1, Math.Abs(expected))), "batching changes packing only");
            Assert.That(single[s].TokenEntropies, Is.Empty, "no entropies unless asked for");
            worst = Math.Max(worst, Math.Abs(packed[s].LogProb - expected) / Math.Max(1, Math.Abs(expected)));
        }
        TestContext.Out.WriteLine($"worst |Δ|/max(1,|ref|) of sequence log-probs vs the fp64 reference: {worst:E2}");
    }
}
