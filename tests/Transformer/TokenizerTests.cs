using System.Diagnostics;
using System.Text;
using DistAlign.Transformer.Data;
using DistAlign.Transformer.Tokenization;

namespace DistAlign.Tests.Transformer;

public class TokenizerTests
{
    // The corpus is encoded once per tokenizer and shared by the tests below (about a second each).
    private static readonly Lazy<int[]> FullCorpusIds = new(() => Gpt2Tokenizer.Full().Encode(ShippedData.MobyDick()));
    private static readonly Lazy<int[]> TruncatedCorpusIds = new(() => Gpt2Tokenizer.Truncated().Encode(ShippedData.MobyDick()));

    private static readonly string[] AwkwardStrings =
    [
        "",
        "Hello world",
        "  leading and trailing spaces  \n\n\n\t\t",
        "I'm sure you'll see they've gone; he'd say it's 'quoted' ''",
        "Emoji: 😀👍🏽👨‍👩‍👧‍👦 🐋 and flags 🇺🇸",
        "CJK: 日本語のテキスト, 中文文本, 한국어 텍스트",
        "Accents: café naïve Ångström ß ﬁ, combining e\u0301",
        "Control: \0\u0001\u0007\b\u001b[31m\u007f\u0085\u200b\u2028\ufeff",
        "Unpaired surrogates: \ud83d alone, \ude00 low alone, reversed \ude00\ud83d, two highs \ud800\udbff, at end \ud800",
        "\udfff",
        "Numbers 1234567890 ١٢٣ ½ and symbols ∑∫√ ← →",
        "Text with <|endoftext|> in it<|endoftext|><|endoftext|>and <|endoftext| near misses |endoftext|>",
        "\u00ff\u0100 mixed scripts Ελληνικά русский עברית العربية हिन्दी",
    ];

    [Test]
    public void FullTokenizerMatchesKnownGpt2Encodings()
    {
        var gpt2 = Gpt2Tokenizer.Full();

        Assert.That(gpt2.Spec, Is.EqualTo("gpt2"));
        Assert.That(gpt2.VocabSize, Is.EqualTo(50_257));
        Assert.That(gpt2.EndOfText, Is.EqualTo(50_256));
        Assert.That(gpt2.Encode("Hello world"), Is.EqualTo(new[] { 15496, 995 }));
        Assert.That(gpt2.Encode(" the"), Is.EqualTo(new[] { 262 }));
        Assert.That(gpt2.Encode("The"), Is.EqualTo(new[] { 464 }));
        Assert.That(gpt2.Encode("!"), Is.EqualTo(new[] { 0 }), "rank 0 is the byte '!'");
        Assert.That(gpt2.Encode("a"), Is.EqualTo(new[] { 64 }));
        Assert.That(gpt2.Encode(" "), Is.EqualTo(new[] { 220 }));
        Assert.That(gpt2.Encode("\n"), Is.EqualTo(new[] { 198 }));
        Assert.That(gpt2.Encode("\n\n"), Is.EqualTo(new[] { 628 }));
        Assert.That(gpt2.Encode("<|endoftext|>"), Is.EqualTo(new[] { 50_256 }));
        Assert.That(gpt2.Encode("Hello world<|endoftext|>"), Is.EqualTo(new[] { 15496, 995, 50_256 }));
        Assert.That(gpt2.Decode([15496, 995, 50_256]), Is.EqualTo("Hello world<|endoftext|>"));
    }

    [Test]
    public void TruncatedTokenizerKeepsTheFirstTwoThousandMerges()
    {
        var small = Gpt2Tokenizer.Truncated();

        Assert.That(small.Spec, Is.EqualTo("gpt2-k2000"));
        Assert.That(small.MergeCount, Is.EqualTo(2_000));
        Assert.That(small.VocabSize, Is.EqualTo(2_257));
        Assert.That(small.EndOfText, Is.EqualTo(2_256));
        Assert.That(small.Encode("Hello world<|endoftext|>"), Is.EqualTo(new[] { 39, 695, 78, 995, 2_256 }),
            "' world' (995) is within the first 2,000 merges; 'Hello' (15496) is not");
        Assert.That(small.Encode(" the"), Is.EqualTo(new[] { 262 }));

        int[] ids = TruncatedCorpusIds.Value;
        Assert.That(ids, Is.All.InRange(0, 2_255), "the corpus has no <|endoftext|>, so every id is a BPE token");
    }

    [Test]
    public void ByteLevelTokenizerWithNoMergesEncodesOneTokenPerByte()
    {
        var bytesOnly = Gpt2Tokenizer.FromSpec("gpt2-k0");
        string text = "Hi, 日本!";

        int[] ids = bytesOnly.Encode(text);

        Assert.That(bytesOnly.VocabSize, Is.EqualTo(257));
        Assert.That(ids, Has.Length.EqualTo(Encoding.UTF8.GetByteCount(text)));
        Assert.That(bytesOnly.Decode(ids), Is.EqualTo(text));
    }

    [Test]
    public void TruncatedTokensAreTheGpt2TokensWithTheSameIds()
    {
        var small = Gpt2Tokenizer.Truncated();
        var gpt2 = Gpt2Tokenizer.Full();

        for (int id = 0; id < small.EndOfText; id++)
        {
            Assert.That(small.TokenBytes(id).SequenceEqual(gpt2.TokenBytes(id)), Is.True, $"token {id}");
            // Independently of our rank table: the library's own decoders agree on every token.
            string viaLibrary = gpt2.Bpe.Decode([id]);
            Assert.That(small.Bpe.Decode([id]), Is.EqualTo(viaLibrary), $"token {id}");
            Assert.That(Encoding.UTF8.GetString(small.TokenBytes(id)), Is.EqualTo(viaLibrary), $"token {id}");
        }

        // On a text, each token's bytes, laid end to end, are the text's UTF-8 bytes.
        string text = ShippedData.MobyDick()[..20_000];
        byte[] joined = small.Encode(text).SelectMany(id => small.TokenBytes(id).ToArray()).ToArray();
        Assert.That(joined, Is.EqualTo(Encoding.UTF8.GetBytes(text)));
    }

    [Test]
    public void BothTokenizersRoundTripTheWholeCorpusAndCountTokens()
    {
        string text = ShippedData.MobyDick();
        int[] full = FullCorpusIds.Value;
        int[] truncated = TruncatedCorpusIds.Value;

        Assert.That(Gpt2Tokenizer.Full().Decode(full), Is.EqualTo(text));
        Assert.That(Gpt2Tokenizer.Truncated().Decode(truncated), Is.EqualTo(text));

        double ratio = (double)truncated.Length / full.Length;
        TestContext.Out.WriteLine(
            $"Moby-Dick ({Encoding.UTF8.GetByteCount(text):N0} bytes): gpt2 {full.Length:N0} tokens " +
            $"({(double)Encoding.UTF8.GetByteCount(text) / full.Length:F2} bytes/token), gpt2-k2000 {truncated.Length:N0} tokens " +
            $"({(double)Encoding.UTF8.GetByteCount(text) / truncated.Length:F2} bytes/token): {ratio:F4}x, {(ratio - 1) * 100:F1}% more");
        Assert.That(ratio, Is.InRange(1.30, 1.45), "docs/DATA.md: about 39% more tokens with K = 2000");
    }

    [Test]
    public void TruncatingToAllMergesReproducesGpt2Exactly()
    {
        // gpt2-k50000 is built by this project (rank table from the Data.Gpt2 package, GPT-2's regex),
        // gpt2 by the library's CreateForModel: identical ids on the whole corpus check both.
        var rebuilt = Gpt2Tokenizer.FromSpec("gpt2-k50000");

        Assert.That(rebuilt.VocabSize, Is.EqualTo(50_257));
        Assert.That(rebuilt.EndOfText, Is.EqualTo(50_256));
        Assert.That(rebuilt.Encode(ShippedData.MobyDick()), Is.EqualTo(FullCorpusIds.Value));
    }

    [TestCaseSource(nameof(AwkwardStrings))]
    public void AwkwardStringsRoundTripExactly(string text)
    {
        foreach (var tokenizer in new[] { Gpt2Tokenizer.Full(), Gpt2Tokenizer.Truncated(), Gpt2Tokenizer.FromSpec("gpt2-k0") })
        {
            int[] ids = tokenizer.Encode(text);
            Assert.That(ids, Is.All.InRange(0, tokenizer.VocabSize - 1), tokenizer.Spec);
            Assert.That(tokenizer.Decode(ids), Is.EqualTo(text), tokenizer.Spec);
        }
    }

    [Test]
    public void LabelledSentencesRoundTripExactly()
    {
        var small = Gpt2Tokenizer.Truncated();
        var gpt2 = Gpt2Tokenizer.Full();
        foreach (var source in Enum.GetValues<SentenceSource>())
        {
            foreach (var sentence in ShippedData.LabelledSentences(source))
            {
                Assert.That(small.Decode(small.Encode(sentence.Text)), Is.EqualTo(sentence.Text));
                Assert.That(gpt2.Decode(gpt2.Encode(sentence.Text)), Is.EqualTo(sentence.Text));
            }
        }
    }

    [Test]
    public void EndOfTextIsStillRecognisedAfterEncodingALotOfText()
    {
        // Microsoft.ML.Tokenizers 2.0.1 alone encodes "<|endoftext|>" as 7 ordinary tokens once its cache
        // has filled (e.g. after the corpus); Gpt2Tokenizer splits the special token out itself.
        _ = FullCorpusIds.Value;
        _ = TruncatedCorpusIds.Value;

        Assert.That(Gpt2Tokenizer.Full().Encode("a<|endoftext|>b"), Is.EqualTo(new[] { 64, 50_256, 65 }));
        Assert.That(Gpt2Tokenizer.Truncated().Encode("a<|endoftext|>b"), Is.EqualTo(new[] { 64, 2_256, 65 }));
    }

    [Test]
    public void EncodeAppendsToAList()
    {
        var gpt2 = Gpt2Tokenizer.Full();
        var ids = new List<int> { gpt2.EndOfText };

        gpt2.Encode("Hello world", ids);

        Assert.That(ids, Is.EqualTo(new[] { 50_256, 15496, 995 }));
    }

    [Test]
    public void DecodingAPartOfACharacterGivesReplacementCharacters()
    {
        var gpt2 = Gpt2Tokenizer.Full();
        int[] whale = gpt2.Encode("🐋");
        Assume.That(whale, Has.Length.GreaterThan(1));

        Assert.That(gpt2.Decode(whale.AsSpan(0, 1)), Does.Contain("\ufffd"));
        Assert.That(gpt2.Decode(whale), Is.EqualTo("🐋"));
    }

    [TestCase("gpt2")]
    [TestCase("gpt2-k2000")]
    [TestCase("gpt2-k0")]
    [TestCase("gpt2-k50000")]
    [TestCase("gpt2-k123")]
    public void SpecRoundTrips(string spec)
    {
        var tokenizer = Gpt2Tokenizer.FromSpec(spec);

        Assert.That(tokenizer.Spec, Is.EqualTo(spec));
        Assert.That(Gpt2Tokenizer.FromSpec(tokenizer.Spec), Is.SameAs(tokenizer));
    }

    [TestCase("")]
    [TestCase("GPT2")]
    [TestCase("gpt-2")]
    [TestCase("gpt2-k")]
    [TestCase("gpt2-k-1")]
    [TestCase("gpt2-k+5")]
    [TestCase("gpt2-k02000")]
    [TestCase("gpt2-k50001")]
    [TestCase("gpt2-k99999999999")]
    [TestCase("gpt2-k 2000")]
    [TestCase("gpt2-k2000 ")]
    [TestCase("gpt2-k٢٠٠٠")]
    public void BadSpecIsRejectedWithTheFormsThatWork(string spec)
    {
        Assert.That(() => Gpt2Tokenizer.FromSpec(spec),
            Throws.ArgumentException.With.Message.Contains($"'{spec}'").And.Message.Contains("gpt2-k<K>"));
    }

    [Test]
    public void TruncatedRejectsMergeCountsGpt2DoesNotHave()
    {
        Assert.That(() => Gpt2Tokenizer.Truncated(-1), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(() => Gpt2Tokenizer.Truncated(50_001), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(Gpt2Tokenizer.Truncated(2_000), Is.SameAs(Gpt2Tokenizer.FromSpec("gpt2-k2000")));
    }

    [TestCase(-1)]
    [TestCase(2_257)]
    [TestCase(50_256)]
    [TestCase(int.MaxValue)]
    public void DecodingAnIdOutsideTheVocabularyFailsClearly(int id)
    {
        var small = Gpt2Tokenizer.Truncated();

        Assert.That(() => small.Decode([39, id]),
            Throws.TypeOf<ArgumentOutOfRangeException>()
                .With.Message.Contains($"Token id {id} at position 1").And.Message.Contains("gpt2-k2000"));
        Assert.That(() => small.TokenBytes(id), Throws.TypeOf<ArgumentOutOfRangeException>());
    }

    [Test]
    public void EncodingTheCorpusIsFast()
    {
        // Not a benchmark: a guard against an accidental quadratic path (the corpus takes ~0.3–1 s).
        string text = ShippedData.MobyDick()[..200_000];
        var watch = Stopwatch.StartNew();
        int count = Gpt2Tokenizer.Truncated().Encode(text).Length;
        TestContext.Out.WriteLine($"gpt2-k2000: {text.Length:N0} chars → {count:N0} tokens in {watch.ElapsedMilliseconds} ms");
        Assert.That(watch.Elapsed, Is.LessThan(TimeSpan.FromSeconds(10)));
    }
}
