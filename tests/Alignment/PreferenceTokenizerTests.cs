using DistAlign.Alignment.Data;
using DistAlign.Transformer.Tokenization;

namespace DistAlign.Tests.Alignment;

public class PreferenceTokenizerTests
{
    private static readonly Gpt2Tokenizer Tokenizer = Gpt2Tokenizer.FromSpec("gpt2-k2000");
    private static int Eot => Tokenizer.EndOfText;

    private static int[] Ids(string text) => Tokenizer.Encode(text);

    [Test]
    public void HandMadeExampleIsCutAndCountedAsDocumented()
    {
        // Words that are single tokens in gpt2-k2000, so the counts below are exact.
        string[] words = [" the", " and", " of", " to", " in", " was", " that", " his"];
        foreach (string w in words) Assert.That(Ids(w), Has.Length.EqualTo(1), w);
        string prompt = string.Concat(words);                // 8 tokens + start token = 9
        string longResponse = string.Concat(words[..6]);      // 6 tokens + EOT = 7
        string exactResponse = string.Concat(words[..4]);     // 4 tokens + EOT = 5: fits the text, not the EOT
        string shortResponse = " the";                        // 1 token + EOT = 2

        var examples = new List<PreferenceExample>
        {
            new(prompt, longResponse, shortResponse, 1),      // prompt cut by 4, chosen cut by 3
            new(" in", exactResponse, shortResponse, 2),      // nothing cut in the prompt; chosen loses only EOT
            new(" was", shortResponse, " and", 3),            // nothing cut
        };
        var result = PreferenceTokenizer.Tokenize(examples, Tokenizer,
            new TruncationOptions { MaxPromptTokens = 5, MaxResponseTokens = 4 });

        Assert.That(result.Examples, Has.Count.EqualTo(3));
        TokenizedPreference first = result.Examples[0];
        Assert.That(first.PromptIds, Is.EqualTo(new[] { Eot }.Concat(Ids(string.Concat(words[4..])))), "start token, then the END of the prompt");
        Assert.That(Tokenizer.Decode(first.PromptIds.AsSpan(1)), Is.EqualTo(" in was that his"));
        Assert.That(first.ChosenIds, Is.EqualTo(Ids(" the and of to")), "the START of the response, and no EOT: it was cut");
        Assert.That(first.RejectedIds, Is.EqualTo(Ids(" the").Append(Eot)), "an uncut response ends with EOT");
        Assert.That(first.Line, Is.EqualTo(1));

        Assert.That(result.Examples[1].PromptIds, Is.EqualTo(new[] { Eot, Ids(" in")[0] }));
        Assert.That(result.Examples[1].ChosenIds, Is.EqualTo(Ids(exactResponse)), "all four text tokens, EOT dropped");
        Assert.That(result.Examples[2].ChosenIds, Is.EqualTo(Ids(" the").Append(Eot)));

        var r = result.Report;
        Assert.That((r.Examples, r.Kept), Is.EqualTo((3, 3)));
        Assert.That((r.PromptsTruncated, r.PromptTokensRemoved), Is.EqualTo((1, 4L)));
        Assert.That((r.ChosenTruncated, r.ChosenTokensRemoved), Is.EqualTo((2, 3L + 1L)));
        Assert.That((r.RejectedTruncated, r.RejectedTokensRemoved), Is.EqualTo((0, 0L)));
        Assert.That((r.DroppedEmptyResponse, r.DroppedIdentical, r.DroppedLines.Count), Is.EqualTo((0, 0, 0)));
        Assert.That(r.ToString(), Does.StartWith("3 of 3 kept; prompts cut 1 (-4 tokens), chosen cut 2 (-4)"));
    }

    [Test]
    public void EmptyPromptIsTheStartTokenAlone()
    {
        var result = PreferenceTokenizer.Tokenize([new("", " a", " b")], Tokenizer,
            new TruncationOptions { MaxPromptTokens = 1, MaxResponseTokens = 8 });
        Assert.That(result.Examples[0].PromptIds, Is.EqualTo(new[] { Eot }));

        var cut = PreferenceTokenizer.Tokenize([new(" the and", " a", " b")], Tokenizer,
            new TruncationOptions { MaxPromptTokens = 1, MaxResponseTokens = 8 });
        Assert.That(cut.Examples[0].PromptIds, Is.EqualTo(new[] { Eot }), "a budget of 1 keeps only the start token");
        Assert.That(cut.Report.PromptTokensRemoved, Is.EqualTo(2));
    }

    [Test]
    public void PairsWhoseResponsesVanishOrCoincideAreDroppedAndCounted()
    {
        var examples = new List<PreferenceExample>
        {
            new(" p", " the and of", " the and to", 10),      // identical after cutting to 2 tokens
            new(" p", " same", " same", 11),                  // identical from the start
            new(" p", " the", " and", 12),                    // kept
            new(" p", "", " and", 13),                        // empty chosen made in code: no tokens without EOT
        };
        var noEot = PreferenceTokenizer.Tokenize(examples, Tokenizer,
            new TruncationOptions { MaxPromptTokens = 4, MaxResponseTokens = 2, AppendEndOfText = false });
        Assert.That(noEot.Examples.Select(e => e.Line), Is.EqualTo(new[] { 12 }));
        Assert.That(noEot.Examples[0].ChosenIds, Is.EqualTo(Ids(" the")), "no EOT when AppendEndOfText is off");
        Assert.That((noEot.Report.DroppedIdentical, noEot.Report.DroppedEmptyResponse, noEot.Report.Kept), Is.EqualTo((2, 1, 1)));
        Assert.That(noEot.Report.DroppedLines, Is.EqualTo(new[] { 10, 11, 13 }));
        Assert.That(noEot.Report.ChosenTruncated, Is.EqualTo(0), "truncation counts cover kept examples only");

        // With EOT an empty response is [EOT], a real "stop at once" answer, and is kept.
        var withEot = PreferenceTokenizer.Tokenize(examples, Tokenizer,
            new TruncationOptions { MaxPromptTokens = 4, MaxResponseTokens = 2 });
        Assert.That(withEot.Examples.Select(e => e.Line), Is.EqualTo(new[] { 12, 13 }));
        Assert.That(withEot.Examples[1].ChosenIds, Is.EqualTo(new[] { Eot }));

        var keepSame = PreferenceTokenizer.Tokenize(examples, Tokenizer,
            new TruncationOptions { MaxPromptTokens = 4, MaxResponseTokens = 2, DropIdenticalPairs = false });
        Assert.That(keepSame.Report.Kept, Is.EqualTo(4));
    }

    [Test]
    public void LiteralEndOfTextInDataIsRefusedWithItsLine()
    {
        var e = Assert.Throws<DatasetFormatException>(() => PreferenceTokenizer.Tokenize(
            [new("ok", " fine", " bad <|endoftext|> tail", 7)], Tokenizer,
            new TruncationOptions { MaxPromptTokens = 8, MaxResponseTokens = 8 }, "prefs.jsonl"))!;
        Assert.That((e.SourceName, e.Line, e.Rule), Is.EqualTo(("prefs.jsonl", 7, DatasetRule.ReservedToken)));
        Assert.That(e.Message, Does.StartWith("prefs.jsonl:7: field 'rejected' contains the literal text <|endoftext|>"));
        Assert.That(() => PromptTokenizer.Tokenize([new("<|endoftext|>", 2)], Tokenizer, 8),
            Throws.TypeOf<DatasetFormatException>().With.Property("Line").EqualTo(2));
    }

    [Test]
    public void BudgetsMustBePositive()
    {
        Assert.That(() => PreferenceTokenizer.Tokenize([], Tokenizer, new TruncationOptions { MaxPromptTokens = 0, MaxResponseTokens = 4 }),
            Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => PreferenceTokenizer.Tokenize([], Tokenizer, new TruncationOptions { MaxPromptTokens = 4, MaxResponseTokens = 0 }),
            Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => PromptTokenizer.Tokenize([], Tokenizer, 0), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }

    [Test]
    public void PromptsOnlyKeepTheirEnd()
    {
        var result = PromptTokenizer.Tokenize([new(" the and of to", 1), new("", 2), new(" in", 3)], Tokenizer, maxPromptTokens: 3);
        Assert.That(result.Examples[0].PromptIds, Is.EqualTo(new[] { Eot }.Concat(Ids(" of to"))));
        Assert.That(result.Examples[1].PromptIds, Is.EqualTo(new[] { Eot }));
        Assert.That(result.Examples[2].PromptIds, Is.EqualTo(new[] { Eot, Ids(" in")[0] }));
        Assert.That((result.Report.PromptsTruncated, result.Report.PromptTokensRemoved, result.Report.Kept), Is.EqualTo((1, 2L, 3)));
    }

    [Test]
    public void EveryTokenizedSequenceRespectsItsBudget()
    {
        var random = new Random(1234);
        var examples = Enumerable.Range(1, 200).Select(i => new PreferenceExample(
            RandomWords(random, random.Next(0, 40)), RandomWords(random, random.Next(1, 40)), RandomWords(random, random.Next(1, 40)), i)).ToList();
        var options = new TruncationOptions { MaxPromptTokens = 16, MaxResponseTokens = 12, DropIdenticalPairs = false };
        var result = PreferenceTokenizer.Tokenize(examples, Tokenizer, options);
        Assert.That(result.Examples, Has.Count.EqualTo(200));
        long promptRemoved = 0, chosenRemoved = 0;
        foreach (var (t, e) in result.Examples.Zip(examples))
        {
            Assert.That(t.PromptIds.Length, Is.InRange(1, 16));
            Assert.That(t.PromptIds[0], Is.EqualTo(Eot));
            Assert.That(t.ChosenIds.Length, Is.InRange(1, 12));
            Assert.That(t.RejectedIds.Length, Is.InRange(1, 12));
            int[] p = Ids(e.Prompt), c = Ids(e.Chosen);
            Assert.That(p.AsSpan().EndsWith(t.PromptIds.AsSpan(1)), Is.True);
            bool chosenWhole = t.ChosenIds[^1] == Eot;
            Assert.That(chosenWhole ? t.ChosenIds[..^1] : t.ChosenIds, Is.EqualTo(chosenWhole ? c : c[..12]));
            promptRemoved += p.Length - (t.PromptIds.Length - 1);
            chosenRemoved += c.Length + 1 - t.ChosenIds.Length;
        }
        Assert.That(result.Report.PromptTokensRemoved, Is.EqualTo(promptRemoved));
        Assert.That(result.Report.ChosenTokensRemoved, Is.EqualTo(chosenRemoved));
    }

    internal static string RandomWords(Random random, int count)
    {
        string[] vocabulary = [" whale", " sea", " Ahab", " the", " of", ",", ".", " ship", " white", "\n", " ye", " harpoon", "é", " 😀"];
        return string.Concat(Enumerable.Range(0, count).Select(_ => vocabulary[random.Next(vocabulary.Length)]));
    }
}
