using System.Diagnostics;
using System.Text;
using DistAlign.Alignment.Data;
using DistAlign.Transformer.Tokenization;
using FsCheck;
using FsCheck.Fluent;

namespace DistAlign.Tests.Reliability;

/// <summary>
/// Fuzzing the preference and prompt JSONL readers and the tokenizer behind them, the way <c>distalign align</c> uses
/// them: parse, then tokenize with truncation. Every input gives examples or a <see cref="DatasetFormatException"/>
/// (nothing else, no hang, allocation bounded by the input's size). Complements the seeded text/object generators of
/// tests/Alignment/JsonlPropertyTests with mutations of valid files, deep nesting, huge numbers, very long lines and
/// FsCheck-generated records. The long run: <c>DISTALIGN_FUZZ_INPUTS=1000000 dotnet test --filter Category=FuzzLong</c>.
/// </summary>
public class DatasetFuzzTests
{
    private const int InSuiteInputs = 6_000;
    private const int InSuiteGenerated = 2_000;
    private static readonly Gpt2Tokenizer Tokenizer = Gpt2Tokenizer.FromSpec("gpt2-k2000");
    private static readonly TruncationOptions Truncation = new() { MaxPromptTokens = 32, MaxResponseTokens = 32 };

    [Test]
    public void MutatedJsonlGivesExamplesOrADatasetFormatException() => RunMutations(InSuiteInputs, seed: 314);

    [Test]
    public void GeneratedRecordsGiveExamplesOrADatasetFormatException() => RunGenerated(InSuiteGenerated, seed: 2718);

    [Test, Explicit("long fuzz run; DISTALIGN_FUZZ_INPUTS sets the count"), Category("FuzzLong")]
    public void LongRun()
    {
        int seed = FuzzBudget.LongSeed;
        TestContext.Out.WriteLine($"seed {seed} (replay with DISTALIGN_FUZZ_SEED={seed})");
        RunMutations(FuzzBudget.LongInputs, seed);
        RunGenerated(Math.Max(1, FuzzBudget.LongInputs / 4), seed);
    }

    [Test]
    public void HostileShapesAreRefusedOrParsedQuickly()
    {
        var harness = Harness("jsonl hostile shapes");
        const string good = "{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": \"r\"}";
        var inputs = new List<(string Name, byte[] Bytes)>
        {
            ("nesting 100,000 deep", Encoding.UTF8.GetBytes("{\"prompt\": " + ByteMutator.Nested(100_000) + "}")),
            ("nesting 63 deep in a field", Encoding.UTF8.GetBytes("{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": \"r\", \"x\": " + ByteMutator.Nested(62) + "}")),
            ("a number of 1,000,000 digits", Encoding.UTF8.GetBytes("{\"prompt\": " + new string('9', 1_000_000) + "}")),
            ("1e999999", Encoding.UTF8.GetBytes("{\"prompt\": 1e999999, \"chosen\": \"c\", \"rejected\": \"r\"}")),
            ("100,000 keys", Encoding.UTF8.GetBytes("{" + string.Join(",", Enumerable.Range(0, 100_000).Select(i => $"\"k{i}\":0")) + "}")),
            ("100,000 duplicate keys", Encoding.UTF8.GetBytes("{" + string.Join(",", Enumerable.Repeat("\"prompt\":\"p\"", 100_000)) + "}")),
            ("200,000 blank lines", Encoding.UTF8.GetBytes(new string('\n', 200_000))),
            ("20,000 good lines", Encoding.UTF8.GetBytes(string.Join("\n", Enumerable.Repeat(good, 20_000)))),
            ("a 256 KiB chosen text without spaces", Encoding.UTF8.GetBytes("{\"prompt\": \"p\", \"chosen\": \"" + string.Concat(Enumerable.Repeat("ab", 1 << 17)) + "\", \"rejected\": \"r\"}")),
            ("a 2 MiB run of escapes", Encoding.UTF8.GetBytes("{\"prompt\": \"" + string.Concat(Enumerable.Repeat("\\u00e9", 350_000)) + "\", \"chosen\": \"c\", \"rejected\": \"r\"}")),
            ("NUL bytes", [.. Encoding.UTF8.GetBytes(good), 0, 0, (byte)'\n', .. Encoding.UTF8.GetBytes(good)]),
            ("BOM on line 2", Encoding.UTF8.GetBytes(good + "\n\uFEFF" + good)),
            ("a line over the cap", Encoding.UTF8.GetBytes("{\"prompt\": \"" + new string('x', PreferenceJsonl.DefaultMaxLineBytes) + "\"}")),
        };
        foreach (var (name, bytes) in inputs)
        {
            var watch = Stopwatch.StartNew();
            harness.Check(bytes, ParsePreferencesAndTokenize, name);
            harness.Check(bytes, ParsePromptsAndTokenize, name);
            TestContext.Out.WriteLine($"  {name}: {watch.Elapsed.TotalMilliseconds:F0} ms");
        }
        TestContext.Out.WriteLine(harness.Summary());
        Assert.That(harness.Outcomes.Keys, Is.SupersetOf(new[] { "InvalidJson", "TooLong", "DuplicateKey", "MisplacedByteOrderMark", "accepted" }));
    }

    private static void RunMutations(int inputs, int seed)
    {
        var mutator = new ByteMutator(seed);
        var seeds = Seeds();
        var harness = Harness("jsonl mutations");
        for (int i = 0; i < inputs; i++)
        {
            byte[] input = mutator.Havoc(seeds[mutator.Random.Next(seeds.Count)], seeds);
            harness.Check(input, i % 2 == 0 ? ParsePreferencesAndTokenize : ParsePromptsAndTokenize);
        }
        TestContext.Out.WriteLine(harness.Summary());
        Assert.That(harness.Outcomes.Keys, Is.SupersetOf(new[] { "accepted", "InvalidJson", "InvalidUtf8", "MissingField" }));
    }

    private static void RunGenerated(int count, int seed)
    {
        var harness = Harness("jsonl generated");
        Prop.ForAll(GeneratedFiles().ToArbitrary(), (byte[] input) => harness.Check(input, ParsePreferencesAndTokenize))
            .Check(FuzzBudget.FsCheckConfig(count, seed));
        TestContext.Out.WriteLine(harness.Summary());
        Assert.That(harness.Accepted, Is.GreaterThan(0));
        Assert.That(harness.Rejected, Is.GreaterThan(0));
    }

    /// <summary>Builds the tokenizer and fills its piece cache first, so a one-time cost is not charged to an input.</summary>
    [OneTimeSetUp]
    public void WarmUp() => Tokenizer.Encode(string.Concat(Seeds().Select(Encoding.UTF8.GetString)) + "aaaa 1234 !!!! 漢字 😀");

    private static FuzzHarness Harness(string name) => new(name, e => e is DatasetFormatException d ? d.Rule.ToString() : null);

    private static void ParsePreferencesAndTokenize(byte[] input)
    {
        var examples = PreferenceJsonl.Parse(new MemoryStream(input, writable: false), "fuzz.jsonl");
        Assert.That(examples, Is.Not.Empty);
        var tokenized = PreferenceTokenizer.Tokenize(examples, Tokenizer, Truncation, "fuzz.jsonl");
        foreach (var e in tokenized.Examples)
            Assert.That(e.PromptIds.Length <= 32 && e.ChosenIds.Length <= 32 && e.RejectedIds.Length <= 32);
    }

    private static void ParsePromptsAndTokenize(byte[] input)
    {
        var examples = PromptJsonl.Parse(new MemoryStream(input, writable: false), "fuzz.jsonl");
        Assert.That(examples, Is.Not.Empty);
        PromptTokenizer.Tokenize(examples, Tokenizer, 32, "fuzz.jsonl");
    }

    private static List<byte[]> Seeds() =>
    [
        Encoding.UTF8.GetBytes("{\"prompt\": \"Call me\", \"chosen\": \" Ishmael.\", \"rejected\": \" a cab.\"}\n{\"prompt\": \"\", \"chosen\": \"yes\", \"rejected\": \"no\"}\n"),
        Encoding.UTF8.GetBytes("\uFEFF{\"prompt\":\"é 😀\",\"chosen\":\"a\\nb\",\"rejected\":\"\\u00e9\\ud83d\\ude00\"}\r\n\r\n{\"prompt\":\"x\",\"chosen\":\"y\",\"rejected\":\"z\",\"extra\":[1,{\"k\":null}]}"),
        Encoding.UTF8.GetBytes("{\"prompt\": \"Only a prompt\"}\n{\"prompt\": \"Another\", \"meta\": {\"id\": 3}}\n"),
        Encoding.UTF8.GetBytes("{\"prompt\": \"p\", \"chosen\": \"c <|endoftext|>\", \"rejected\": \"r\"}\n"),
    ];

    /// <summary>FsCheck records: keys from the schema and beyond, values of every JSON type, strings with escapes,
    /// surrogates, control characters and the reserved token, lines joined by LF or CRLF with blank lines between.</summary>
    private static Gen<byte[]> GeneratedFiles()
    {
        var text = Gen.Elements("a", " ", "", "é", "😀", "\\n", "\\\"", "\\u0000", "\\ud800", "\\udc00", "\\ud83d\\ude00", "<|endoftext|>", "漢字", "\\u001f")
            .ArrayOf().SelectMany(parts => Gen.Frequency((4, Gen.Constant("x")), (1, Gen.Constant(""))).Select(head => "\"" + head + string.Concat(parts) + "\""));
        var value = Gen.Frequency(
            (6, text),
            (1, Gen.Elements("1", "-0.5e3", "null", "true", "[]", "{}", "[\"a\"]", "{\"prompt\":\"x\"}", "1e400", "18446744073709551616")));
        var key = Gen.Frequency((6, Gen.Elements("prompt", "chosen", "rejected")), (1, Gen.Elements("extra", "Prompt", "\\u0070rompt", "")));
        var member = from k in key from v in value select $"\"{k}\": {v}";
        var extraMember = from k in Gen.Elements("extra", "meta", "Prompt") from v in value select $"\"{k}\": {v}";
        var record = from p in text from c in text from r in text from extra in Gen.Choose(0, 2).SelectMany(n => extraMember.ArrayOf(n))
                     select "{" + string.Join(", ", new[] { $"\"prompt\": {p}", $"\"chosen\": {c}", $"\"rejected\": {r}" }.Concat(extra)) + "}";
        var line = Gen.Frequency(
            (12, record),
            (2, member.ArrayOf().Select(m => "{" + string.Join(", ", m) + "}")),
            (1, Gen.Elements("", "   ", "[]", "null", "{", "\"text\"")));
        return from lines in Gen.Choose(1, 3).SelectMany(n => line.ArrayOf(n))
               from separator in Gen.Elements("\n", "\r\n", "\n\n")
               select Encoding.UTF8.GetBytes(string.Join(separator, lines));
    }
}

/// <summary>
/// The tokenizer on text nobody wrote: invalid UTF-8 decoded as a reader would decode it, lone surrogates, control
/// characters, the reserved token, and very long lines. Encoding must finish quickly, stay in the vocabulary and round-trip.
/// </summary>
public class TokenizerFuzzTests
{
    [TestCase("gpt2-k2000")]
    [TestCase("gpt2")]
    public void RandomAndInvalidTextRoundTrips(string spec)
    {
        var tokenizer = Gpt2Tokenizer.FromSpec(spec);
        var mutator = new ByteMutator(spec.Length);
        // No exception is documented for Encode/Decode of a string. Microsoft.ML.Tokenizers' piece cache grows as it sees
        // new words, so the allocation bound is a flat 4 MiB here (no number is read from the input anyway).
        var harness = new FuzzHarness($"tokenizer {spec}", e => null, allocationAllowance: 4 << 20);
        string[] pieces = ["Call me Ishmael.", " ", "\n", "\r\n", "\t", "<|endoftext|>", "<|endoftext", "'s", "'ll", "123", "😀", "漢字", "é", "\u0000", "\uFEFF", "\u2028"];
        for (int i = 0; i < 3_000; i++)
        {
            var bytes = new List<byte>();
            for (int k = mutator.Random.Next(12); k > 0; k--)
            {
                int kind = mutator.Random.Next(3);
                if (kind == 0) bytes.AddRange(Encoding.UTF8.GetBytes(pieces[mutator.Random.Next(pieces.Length)]));
                else if (kind == 1) bytes.AddRange(ByteMutator.InvalidUtf8[mutator.Random.Next(ByteMutator.InvalidUtf8.Length)]);
                else bytes.AddRange(mutator.RandomBytes(1 + mutator.Random.Next(8)));
            }
            byte[] input = [.. bytes];
            harness.Check(input, b =>
            {
                // What a lenient reader hands over (U+FFFD for bad bytes), and raw UTF-16 with lone surrogates.
                foreach (string text in new[] { Encoding.UTF8.GetString(b), new string(b.Select(x => (char)(0xD700 + x)).ToArray()) })
                {
                    int[] ids = tokenizer.Encode(text);
                    Assert.That(ids.All(id => id >= 0 && id < tokenizer.VocabSize));
                    Assert.That(tokenizer.Decode(ids), Is.EqualTo(text));
                }
            });
        }
        TestContext.Out.WriteLine(harness.Summary());
    }

    private const int LineChars = 200_000;

    /// <summary>
    /// 200,000-character lines of every pre-tokenizer class. Before runs were cut at
    /// <see cref="Gpt2Tokenizer.MaxPieceChars"/>, "abab…" of 100,000 characters took 4.6 s and 1,000,000 did not finish.
    /// </summary>
    [Test]
    public void VeryLongLinesEncodeInLinearTimeAndRoundTrip()
    {
        var tokenizer = Gpt2Tokenizer.FromSpec("gpt2-k2000");
        var total = Stopwatch.StartNew();
        foreach (var (name, unit) in new[] { ("letters ab", "ab"), ("letters a", "a"), ("digits", "7"), ("punctuation", "!?"), ("spaces", " "),
                                             ("tabs and newlines", "\t\n"), ("CJK", "漢"), ("emoji", "😀"), ("lone surrogates", "\ud800"), ("word and space", "ab ") })
        {
            string text = string.Concat(Enumerable.Repeat(unit, LineChars / unit.Length));
            var watch = Stopwatch.StartNew();
            int[] ids = tokenizer.Encode(text);
            double ms = watch.Elapsed.TotalMilliseconds;
            Assert.That(tokenizer.Decode(ids), Is.EqualTo(text), name);
            TestContext.Out.WriteLine($"{name}: {text.Length:N0} chars → {ids.Length:N0} tokens in {ms:F0} ms");
            Assert.That(ms, Is.LessThan(5_000), name);
        }
        TestContext.Out.WriteLine($"all 10 lines in {total.Elapsed.TotalSeconds:F1} s");
    }

    [Test]
    public void CuttingLongRunsChangesNothingForOrdinaryText()
    {
        var tokenizer = Gpt2Tokenizer.FromSpec("gpt2-k2000");
        string word = new('x', Gpt2Tokenizer.MaxPieceChars);
        // A run of exactly MaxPieceChars is one piece; one more character starts a second piece.
        Assert.That(tokenizer.Encode(word), Is.EqualTo(tokenizer.Bpe.EncodeToIds(word)));
        Assert.That(tokenizer.Encode(word + "y"), Is.EqualTo(tokenizer.Bpe.EncodeToIds(word).Concat(tokenizer.Bpe.EncodeToIds("y"))));
        string prose = string.Concat(Enumerable.Repeat("It is not down on any map; true places never are. ", 500));
        Assert.That(tokenizer.Encode(prose), Is.EqualTo(tokenizer.Bpe.EncodeToIds(prose)));
        // A surrogate pair straddling the cut stays whole.
        string straddle = new string('x', Gpt2Tokenizer.MaxPieceChars - 1) + "😀";
        Assert.That(tokenizer.Decode(tokenizer.Encode(straddle)), Is.EqualTo(straddle));
    }
}
