using System.Text;
using DistAlign.Alignment.Data;

namespace DistAlign.Tests.Alignment;

/// <summary>
/// Property-style checks with a seeded <see cref="Random"/>: any input either parses or throws
/// <see cref="DatasetFormatException"/>, never another exception; and writing then loading is the identity.
/// </summary>
public class JsonlPropertyTests
{
    private static readonly string[] Fragments =
    [
        "{", "}", "[", "]", ",", ":", "\"", "\\", "\\u", "\\ud800", "\\udc00", "\\ud83d\\ude00", "\\n", "\\\"",
        "\"prompt\"", "\"chosen\"", "\"rejected\"", "\"p\"", " ", "\t", "\r", "\n", "\r\n", "1", "-0.5e3", "null",
        "true", "false", "\"\"", "\"x\"", "\"  \"", "é", "😀", "\u0000", "\u001f", "\uFEFF", "//", "/*", "1e999",
        "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}",
    ];

    private static readonly byte[][] ByteFragments =
    [
        [0xEF, 0xBB, 0xBF], [0xFF], [0xC3], [0xC3, 0xA9], [0xED, 0xA0, 0x80], [0xF0, 0x9F, 0x98, 0x80], [0x80], [0xF8],
    ];

    [Test]
    public void RandomTextEitherParsesOrThrowsDatasetFormatException()
    {
        var random = new Random(20261128);
        int parsed = 0, rejected = 0;
        var rules = new HashSet<DatasetRule>();
        for (int trial = 0; trial < 4000; trial++)
        {
            var text = new StringBuilder();
            int pieces = random.Next(0, 30);
            for (int i = 0; i < pieces; i++) text.Append(Fragments[random.Next(Fragments.Length)]);
            string s = text.ToString();
            if (Outcome(() => PreferenceJsonl.Parse(new MemoryStream(Encoding.UTF8.GetBytes(s)), "fuzz"), rules, s)) parsed++; else rejected++;
            Outcome(() => PreferenceJsonl.Parse(new StringReader(s), "fuzz"), rules, s);
            Outcome(() => PromptJsonl.Parse(new MemoryStream(Encoding.UTF8.GetBytes(s)), "fuzz"), rules, s);
        }
        TestContext.Out.WriteLine($"parsed {parsed}, rejected {rejected}; rules seen: {string.Join(", ", rules.Order())}");
        Assert.That(rejected, Is.GreaterThan(0));
    }

    [Test]
    public void RandomBytesEitherParseOrThrowDatasetFormatException()
    {
        var random = new Random(7);
        var rules = new HashSet<DatasetRule>();
        for (int trial = 0; trial < 3000; trial++)
        {
            var bytes = new List<byte>();
            int pieces = random.Next(0, 30);
            for (int i = 0; i < pieces; i++)
            {
                int kind = random.Next(3);
                if (kind == 0) bytes.AddRange(ByteFragments[random.Next(ByteFragments.Length)]);
                else if (kind == 1) bytes.Add((byte)random.Next(256));
                else bytes.AddRange(Encoding.UTF8.GetBytes(Fragments[random.Next(Fragments.Length)]));
            }
            byte[] data = [.. bytes];
            Outcome(() => PreferenceJsonl.Parse(new MemoryStream(data), "fuzz", maxLineBytes: 64), rules, Convert.ToHexString(data));
        }
        TestContext.Out.WriteLine($"rules seen: {string.Join(", ", rules.Order())}");
        Assert.That(rules, Does.Contain(DatasetRule.InvalidUtf8));
    }

    private static readonly string[] Keys = ["prompt", "chosen", "rejected", "extra", "Prompt", "\\u0063hosen", ""];
    private static readonly string[] Values =
    [
        "\"text\"", "\"\"", "\"  \"", "\"\\ud800\"", "\"a\\udc00\"", "\"\\ud83d\\ude00\"", "\"é\"", "1", "null", "true",
        "[]", "[\"a\"]", "{}", "{\"prompt\": \"x\"}", "\"<|endoftext|>\"",
    ];

    [Test]
    public void RandomObjectsEitherParseOrThrowDatasetFormatException()
    {
        var random = new Random(31337);
        var rules = new HashSet<DatasetRule>();
        int parsed = 0;
        for (int trial = 0; trial < 4000; trial++)
        {
            var lines = new List<string>();
            int lineCount = random.Next(1, 4);
            for (int l = 0; l < lineCount; l++)
            {
                var members = new List<string>();
                int memberCount = random.Next(0, 6);
                for (int m = 0; m < memberCount; m++)
                    members.Add($"\"{Keys[random.Next(Keys.Length)]}\": {Values[random.Next(Values.Length)]}");
                if (random.Next(3) == 0)
                {
                    members.Add("\"prompt\": \"p\"");
                    members.Add("\"chosen\": \"c\"");
                    members.Add("\"rejected\": \"r\"");
                }
                lines.Add("{" + string.Join(", ", members.OrderBy(_ => random.Next())) + "}");
            }
            string text = string.Join(random.Next(2) == 0 ? "\n" : "\r\n", lines);
            if (Outcome(() => PreferenceJsonl.Parse(new MemoryStream(Encoding.UTF8.GetBytes(text)), "fuzz"), rules, text)) parsed++;
            Outcome(() => PromptJsonl.Parse(new StringReader(text), "fuzz"), rules, text);
        }
        TestContext.Out.WriteLine($"parsed {parsed} of 4000; rules seen: {string.Join(", ", rules.Order())}");
        Assert.That(parsed, Is.GreaterThan(100));
        Assert.That(rules, Is.SupersetOf(new[]
        {
            DatasetRule.MissingField, DatasetRule.WrongType, DatasetRule.EmptyText, DatasetRule.DuplicateKey, DatasetRule.InvalidUnicode,
        }));
    }

    [Test]
    public void MutatedValidLinesFailOnTheMutatedLine()
    {
        var random = new Random(99);
        const string good = "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}";
        for (int trial = 0; trial < 2000; trial++)
        {
            char[] line = good.ToCharArray();
            int at = random.Next(line.Length);
            line[at] = "{}[]\",:x \\"[random.Next(10)];
            string mutated = new(line);
            string text = $"{good}\n\n{mutated}\n{good}\n";
            try
            {
                var examples = PreferenceJsonl.Parse(new StringReader(text), "m");
                Assert.That(examples.Select(e => e.Line), Is.EqualTo(new[] { 1, 3, 4 }), mutated);
            }
            catch (DatasetFormatException e)
            {
                Assert.That(e.Line, Is.EqualTo(3), mutated);
            }
        }
    }

    [Test]
    public void WriteThenLoadIsTheIdentityOnRandomText()
    {
        var random = new Random(4242);
        string path = Path.Combine(Path.GetTempPath(), "distalign-prefs-" + Guid.NewGuid().ToString("N") + ".jsonl");
        try
        {
            var examples = Enumerable.Range(0, 300).Select(_ => new PreferenceExample(
                RandomText(random, allowEmpty: true), RandomText(random, allowEmpty: false), RandomText(random, allowEmpty: false))).ToList();
            PreferenceJsonl.Write(path, examples);
            Assert.That(PreferenceJsonl.Load(path), Is.EqualTo(examples.Select((e, i) => e with { Line = i + 1 })));
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static string RandomText(Random random, bool allowEmpty)
    {
        while (true)
        {
            var text = new StringBuilder();
            int length = random.Next(0, 20);
            for (int i = 0; i < length; i++)
            {
                int kind = random.Next(4);
                if (kind == 0) text.Append((char)random.Next(0, 0x80));
                else if (kind == 1) text.Append((char)random.Next(0x80, 0xD800));
                else if (kind == 2) text.Append(char.ConvertFromUtf32(random.Next(0x10000, 0x110000)));
                else text.Append(" \n\r\t\"\\\uFEFF\u2028"[random.Next(8)]);
            }
            string s = text.ToString();
            if (allowEmpty || !string.IsNullOrWhiteSpace(s)) return s;
        }
    }

    private static bool Outcome<T>(Func<List<T>> parse, HashSet<DatasetRule> rules, string input)
    {
        try
        {
            var result = parse();
            Assert.That(result, Is.Not.Empty, input);
            return true;
        }
        catch (DatasetFormatException e)
        {
            rules.Add(e.Rule);
            return false;
        }
        catch (Exception e)
        {
            Assert.Fail($"{e.GetType().Name} (not DatasetFormatException) for input {input}: {e}");
            return false;
        }
    }
}
