using System.Text;
using DistAlign.Transformer.Data;

namespace DistAlign.Tests.Transformer;

public class ShippedDataTests
{
    [Test]
    public void CorpusStartsAndEndsWhereProvenanceSays()
    {
        string text = ShippedData.MobyDick();

        Assert.That(text, Does.StartWith("CHAPTER 1. Loomings.\n\nCall me Ishmael. Some years ago—never mind how long precisely—having\n"));
        Assert.That(text, Does.EndWith("\nshroud of the sea rolled on as it rolled five thousand years ago.\n"));
        Assert.That(Encoding.UTF8.GetByteCount(text), Is.EqualTo(1_204_997));
        Assert.That(text, Does.Not.Contain("\r"));
        Assert.That(text, Does.Not.Contain("Gutenberg"));
        Assert.That(text.Split('\n').Count(line => line.StartsWith("CHAPTER ", StringComparison.Ordinal)), Is.EqualTo(135));
    }

    [Test]
    public void CorpusSplitKeepsNinetyPercentForTrainingAndCutsAtAParagraph()
    {
        string text = ShippedData.MobyDick();
        TextSplit split = ShippedData.SplitMobyDick();

        Assert.That(split.Train + split.HeldOut, Is.EqualTo(text));
        Assert.That(split.Train.Length, Is.LessThanOrEqualTo((int)(text.Length * 0.9)));
        Assert.That(split.Train.Length, Is.GreaterThan((int)(text.Length * 0.89)));
        Assert.That(split.Train, Does.EndWith("\n\n"));
        Assert.That(split.HeldOut, Does.StartWith("“Thou liest!” smiting him with his clenched fist."), "as data/PROVENANCE.md says");
        Assert.That(split.HeldOut, Has.Length.EqualTo(119_128));
        TestContext.Out.WriteLine($"held-out text: {split.HeldOut.Length:N0} chars, starting \"{split.HeldOut[..60]}\"");
    }

    [Test]
    public void SplitFallsBackToLineThenToThePointWithoutParagraphs()
    {
        Assert.That(TextSplit.AtParagraph("aaaa\nbbbb\ncccc\n", 0.9), Is.EqualTo(new TextSplit("aaaa\nbbbb\n", "cccc\n")));
        Assert.That(TextSplit.AtParagraph("abcdefghij", 0.5), Is.EqualTo(new TextSplit("abcde", "fghij")));
        Assert.That(TextSplit.AtParagraph("p1\n\np2\n\np3 long", 0.7), Is.EqualTo(new TextSplit("p1\n\np2\n\n", "p3 long")));
        Assert.That(() => TextSplit.AtParagraph("x", 1.0), Throws.TypeOf<ArgumentOutOfRangeException>());
    }

    [Test]
    public void LexiconHasEveryLineAndLaterDuplicatesWin()
    {
        var entries = ShippedData.VaderLexiconEntries();
        var valence = ShippedData.VaderLexicon();

        // 7,517 lines as docs/DATA.md says, but 14 tokens appear twice, so 7,503 distinct tokens.
        Assert.That(entries, Has.Count.EqualTo(7_517));
        Assert.That(valence, Has.Count.EqualTo(7_503));
        Assert.That(entries.GroupBy(e => e.Token).Count(g => g.Count() == 2), Is.EqualTo(14));

        Assert.That(valence["good"], Is.EqualTo(1.9f));
        Assert.That(valence["bad"], Is.EqualTo(-2.5f));
        Assert.That(valence["love"], Is.EqualTo(3.2f));
        Assert.That(valence["lol"], Is.EqualTo(1.8f), "lines 303 (2.9) and 4403 (1.8): the later wins");
        Assert.That(valence["fed up"], Is.LessThan(0f), "phrases keep their inner space");

        var love = entries.Single(e => e.Token == "love");
        Assert.That(love.Ratings, Is.EqualTo(new sbyte[] { 3, 3, 3, 3, 3, 3, 3, 4, 4, 3 }));
        Assert.That(love.StandardDeviation, Is.EqualTo(0.4f));
        Assert.That(entries[0].LineNumber, Is.EqualTo(1));
        Assert.That(entries.All(e => e.Ratings.Count == 10 && Math.Abs(e.MeanValence) <= 4), Is.True);
        // Each mean is the average of its ten ratings, rounded to one decimal, except for one entry as shipped
        // (line 301, lmfao: mean 2.5, ratings average 2.4).
        var offMean = entries.Where(e => Math.Abs(e.Ratings.Average(r => r) - e.MeanValence) > 0.05 + 1e-4).Select(e => e.Token);
        Assert.That(offMean, Is.EqualTo(new[] { "lmfao" }));
    }

    [TestCase("good\t1.9\t0.9\n", "expected 4 tab-separated fields", 1)]
    [TestCase("good\t1.9\t0.9\t[1, 2, 3, 4, 4, 1, 2, 3, 4, 0]\nbad\tx\t0.1\t[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]", "mean valence must be a decimal number", 2)]
    [TestCase("ok\t1.0\t0.1\t[1, 1, 1, 1, 1, 1, 1, 1, 1]", "expected 10 ratings", 1)]
    [TestCase("ok\t1.0\t0.1\t[1, 1, 1, 1, 1, 1, 1, 1, 1, 9]", "rating 10 must be an integer", 1)]
    [TestCase("ok\t5.0\t0.1\t[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]", "outside [-4, 4]", 1)]
    [TestCase("ok\t1.0\t-0.1\t[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]", "negative", 1)]
    [TestCase("ok\t1.0\t0.1\t1, 1, 1, 1, 1, 1, 1, 1, 1, 1", "ratings must be written as", 1)]
    [TestCase(" padded\t1.0\t0.1\t[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]", "no leading or trailing white space", 1)]
    [TestCase("a\t1\t1\t[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n\nb\t1\t1\t[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]", "expected 4 tab-separated fields", 2)]
    public void MalformedLexiconLineNamesSourceAndLine(string text, string rule, int line)
    {
        Assert.That(() => VaderLexiconFormat.Parse(new StringReader(text), "test.txt"),
            Throws.TypeOf<InvalidDataException>()
                .With.Message.Contains($"test.txt, line {line}:")
                .And.Message.Contains(rule));
    }

    [TestCase(SentenceSource.Imdb, "A very, very, very slow-moving, aimless movie about a distressed, drifting young man.  ", 0)]
    [TestCase(SentenceSource.Yelp, "Wow... Loved this place.", 1)]
    [TestCase(SentenceSource.Amazon, "So there is no way for me to plug it in here in the US unless I go by a converter.", 0)]
    public void SentenceFilesHaveOneThousandBalancedRecords(SentenceSource source, string firstText, int firstLabel)
    {
        var sentences = ShippedData.LabelledSentences(source);

        // Each shipped file has 1,001 records; the trailing {"text":"","class":null} was dropped from each.
        Assert.That(sentences, Has.Count.EqualTo(1_000));
        Assert.That(sentences.Count(s => s.Label == 1), Is.EqualTo(500));
        Assert.That(sentences.Count(s => s.Label == 0), Is.EqualTo(500));
        Assert.That(sentences.All(s => !string.IsNullOrWhiteSpace(s.Text)), Is.True);
        Assert.That(sentences[0], Is.EqualTo(new LabelledSentence(firstText, firstLabel)));
    }

    [TestCase("[{\"text\":\"fine\",\"class\":1},{\"text\":\"\",\"class\":null}]", "record 1: \"class\" must be 0 (negative) or 1 (positive), found null")]
    [TestCase("[{\"text\":\"fine\",\"class\":2}]", "record 0: \"class\" must be 0")]
    [TestCase("[{\"text\":3,\"class\":1}]", "record 0: \"text\" must be a string")]
    [TestCase("{\"text\":\"a\",\"class\":1}", "expected a JSON array")]
    [TestCase("[{\"text\":\"a\",\"class\":1}", "not valid JSON")]
    public void MalformedSentenceFileNamesSourceAndRecord(string json, string message)
    {
        using var stream = new MemoryStream(Encoding.UTF8.GetBytes(json));
        Assert.That(() => LabelledSentenceFormat.Parse(stream, "s.json"),
            Throws.TypeOf<InvalidDataException>().With.Message.StartWith("s.json").And.Message.Contains(message));
    }

    [Test]
    public void DataAndNoticesAreEmbeddedUnderStableNames()
    {
        var names = typeof(ShippedData).Assembly.GetManifestResourceNames();
        Assert.That(names, Is.SupersetOf(new[]
        {
            "DistAlign.Data.corpus.moby-dick.txt", "DistAlign.Data.lexicon.vader_lexicon.txt",
            "DistAlign.Data.sentences.imdb.json", "DistAlign.Data.sentences.yelp.json", "DistAlign.Data.sentences.amazon.json",
            "DistAlign.Data.corpus.NOTICE.md", "DistAlign.Data.lexicon.LICENSE", "DistAlign.Data.lexicon.NOTICE",
            "DistAlign.Data.sentences.NOTICE.md", "DistAlign.Data.PROVENANCE.md",
        }));
        Assert.That(ShippedData.SentencesResource(SentenceSource.Amazon), Is.EqualTo("DistAlign.Data.sentences.amazon.json"));
        Assert.That(() => ShippedData.LabelledSentences((SentenceSource)7), Throws.TypeOf<ArgumentOutOfRangeException>());
    }
}
