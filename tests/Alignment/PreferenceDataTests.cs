using System.Text;
using DistAlign.Alignment.Data;

namespace DistAlign.Tests.Alignment;

public class PreferenceDataTests
{
    private const string Source = "prefs.jsonl";
    private const string GoodLine = """{"prompt": "Q?", "chosen": "yes", "rejected": "no"}""";

    private static List<PreferenceExample> Parse(string text, int maxLineBytes = PreferenceJsonl.DefaultMaxLineBytes) =>
        Parse(Encoding.UTF8.GetBytes(text), maxLineBytes);

    private static List<PreferenceExample> Parse(byte[] bytes, int maxLineBytes = PreferenceJsonl.DefaultMaxLineBytes) =>
        PreferenceJsonl.Parse(new MemoryStream(bytes), Source, maxLineBytes);

    private static DatasetFormatException Fails(string text, int maxLineBytes = PreferenceJsonl.DefaultMaxLineBytes) =>
        Fails(Encoding.UTF8.GetBytes(text), maxLineBytes);

    private static DatasetFormatException Fails(byte[] bytes, int maxLineBytes = PreferenceJsonl.DefaultMaxLineBytes)
    {
        List<PreferenceExample>? result = null;
        var e = Assert.Throws<DatasetFormatException>(() => result = Parse(bytes, maxLineBytes))!;
        Assert.That(result, Is.Null, "nothing is half-returned");
        Assert.That(e.SourceName, Is.EqualTo(Source));
        Assert.That(e.Message, Does.StartWith(e.Line > 0 ? $"{Source}:{e.Line}: " : $"{Source}: "));
        Assert.That(e.Message, Does.EndWith(e.Detail));
        return e;
    }

    /// <summary>Two good lines, then <paramref name="bad"/> on line 3, then a good line.</summary>
    private static string BadOnLine3(string bad) => $"{GoodLine}\n{GoodLine}\n{bad}\n{GoodLine}\n";

    [Test]
    public void ValidFileLoadsEveryFieldWithItsLine()
    {
        string text =
            """{"prompt": "What is 2+2?", "chosen": " 4", "rejected": " 5", "score": 0.7, "meta": {"id": [1, 2]}}""" + "\n" +
            """{"rejected": "b\n\"c\"", "prompt": "", "chosen": "a 😀 é \u00e9"}""" + "\n";
        var examples = Parse(text);
        Assert.That(examples, Is.EqualTo(new[]
        {
            new PreferenceExample("What is 2+2?", " 4", " 5", 1),
            new PreferenceExample("", "a 😀 é é", "b\n\"c\"", 2),
        }));
    }

    [Test]
    public void WriteThenLoadRoundTripsAndLeavesNoTemporaryFile()
    {
        string folder = Path.Combine(Path.GetTempPath(), "distalign-prefs-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        try
        {
            string path = Path.Combine(folder, "pairs.jsonl");
            var pairs = new List<PreferenceExample>
            {
                new("Tell me a story.", " Once upon a time…", " No."),
                new("", "line1\nline2\r\n\ttab \"quoted\" \\ back", "<html> & 'single' \u0000\u001f\u2028 end"),
                new("emoji 👨‍👩‍👧 CJK 日本語", " ok", " \uFEFFbom inside"),
            };
            File.WriteAllText(path, "old contents that must be replaced\n");
            PreferenceJsonl.Write(path, pairs);

            var loaded = PreferenceJsonl.Load(path);
            Assert.That(loaded, Is.EqualTo(pairs.Select((p, i) => p with { Line = i + 1 })));
            byte[] bytes = File.ReadAllBytes(path);
            Assert.That(bytes.Take(3), Is.Not.EqualTo(new byte[] { 0xEF, 0xBB, 0xBF }), "no BOM");
            Assert.That(bytes.Count(b => b == (byte)'\n'), Is.EqualTo(3), "one line per pair");
            Assert.That(Directory.GetFiles(folder), Is.EqualTo(new[] { path }), "the temporary file was renamed away");

            PreferenceJsonl.Write(path, loaded);
            Assert.That(File.ReadAllBytes(path), Is.EqualTo(bytes), "writing is deterministic");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Test]
    public void WriteRefusesWhatTheLoaderWouldRejectAndKeepsTheOldFile()
    {
        string path = Path.Combine(Path.GetTempPath(), "distalign-prefs-" + Guid.NewGuid().ToString("N") + ".jsonl");
        File.WriteAllText(path, GoodLine + "\n");
        try
        {
            Assert.That(() => PreferenceJsonl.Write(path, []), Throws.ArgumentException);
            Assert.That(() => PreferenceJsonl.Write(path, [new("p", " ", "r")]), Throws.ArgumentException.With.Message.Contains("chosen"));
            Assert.That(() => PreferenceJsonl.Write(path, [new("p", "c", "")]), Throws.ArgumentException.With.Message.Contains("rejected"));
            Assert.That(() => PreferenceJsonl.Write(path, [new("p\ud800", "c", "r")]), Throws.ArgumentException.With.Message.Contains("surrogate"));
            Assert.That(File.ReadAllText(path), Is.EqualTo(GoodLine + "\n"));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Test]
    public void PromptFileRoundTripsAndAllowsEmptyPrompts()
    {
        string path = Path.Combine(Path.GetTempPath(), "distalign-prompts-" + Guid.NewGuid().ToString("N") + ".jsonl");
        try
        {
            PromptJsonl.Write(path, [new("Call me"), new(""), new("naïve\n")]);
            Assert.That(PromptJsonl.Load(path), Is.EqualTo(new PromptExample[] { new("Call me", 1), new("", 2), new("naïve\n", 3) }));
        }
        finally
        {
            File.Delete(path);
        }

        var e = Assert.Throws<DatasetFormatException>(() =>
            PromptJsonl.Parse(new StringReader("{\"prompt\": \"a\"}\n\n{\"text\": \"b\"}\n"), "prompts.jsonl"))!;
        Assert.That((e.Line, e.Rule), Is.EqualTo((3, DatasetRule.MissingField)));
        Assert.That(e.Message, Is.EqualTo("prompts.jsonl:3: missing field 'prompt' (keys present: 'text')"));
    }

    [TestCase("{\"prompt\": \"a\", \"chosen\": \"b\"", TestName = "unclosed object")]
    [TestCase("{prompt: \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}", TestName = "unquoted key")]
    [TestCase("{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\",}", TestName = "trailing comma")]
    [TestCase("{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"} {}", TestName = "two values on a line")]
    [TestCase("{\"prompt\": \"a\" /* c */, \"chosen\": \"b\", \"rejected\": \"c\"}", TestName = "comment")]
    [TestCase("{\"prompt\": 'a', \"chosen\": \"b\", \"rejected\": \"c\"}", TestName = "single quotes")]
    [TestCase("{\"prompt\": \"a\tb\", \"chosen\": \"b\", \"rejected\": \"c\"}", TestName = "raw tab in string")]
    [TestCase("{\"prompt\": \"a\\x\", \"chosen\": \"b\", \"rejected\": \"c\"}", TestName = "bad escape")]
    [TestCase("{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"", TestName = "truncated line")]
    public void BadJsonIsRejectedWithItsLine(string bad)
    {
        var e = Fails(BadOnLine3(bad));
        Assert.That((e.Line, e.Rule), Is.EqualTo((3, DatasetRule.InvalidJson)));
        Assert.That(e.Detail, Does.StartWith("invalid JSON"));
        Assert.That(e.Detail, Does.Not.Contain("LineNumber"), "System.Text.Json's line within the line is dropped");
    }

    [Test]
    public void DeepNestingIsInvalidJsonNotAStackOverflow()
    {
        string deep = "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\", \"x\": " + new string('[', 100_000) + new string(']', 100_000) + "}";
        Assert.That(Fails(deep).Rule, Is.EqualTo(DatasetRule.InvalidJson));
    }

    [TestCase("[\"a\", \"b\", \"c\"]", "array")]
    [TestCase("\"prompt\"", "string")]
    [TestCase("42", "number")]
    [TestCase("true", "boolean")]
    [TestCase("null", "null")]
    public void NonObjectsAreRejected(string bad, string kind)
    {
        var e = Fails(BadOnLine3(bad));
        Assert.That((e.Line, e.Rule), Is.EqualTo((3, DatasetRule.NotAnObject)));
        Assert.That(e.Message, Is.EqualTo($"{Source}:3: expected a JSON object, got {kind}"));
    }

    [TestCase("{\"chosen\": \"b\", \"rejected\": \"c\"}", "prompt")]
    [TestCase("{\"prompt\": \"a\", \"rejected\": \"c\"}", "chosen")]
    [TestCase("{\"prompt\": \"a\", \"chosen\": \"b\"}", "rejected")]
    [TestCase("{\"prompt\": \"a\", \"Chosen\": \"b\", \"rejected\": \"c\"}", "chosen")]
    [TestCase("{}", "prompt")]
    public void MissingFieldsAreNamed(string bad, string field)
    {
        var e = Fails(BadOnLine3(bad));
        Assert.That((e.Line, e.Rule), Is.EqualTo((3, DatasetRule.MissingField)));
        Assert.That(e.Detail, Does.StartWith($"missing field '{field}'"));
    }

    [TestCase("{\"prompt\": \"a\", \"chosen\": 1.5, \"rejected\": \"c\"}", "chosen", "number")]
    [TestCase("{\"prompt\": null, \"chosen\": \"b\", \"rejected\": \"c\"}", "prompt", "null")]
    [TestCase("{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": [\"c\"]}", "rejected", "array")]
    [TestCase("{\"prompt\": \"a\", \"chosen\": {\"text\": \"b\"}, \"rejected\": \"c\"}", "chosen", "object")]
    [TestCase("{\"prompt\": false, \"chosen\": \"b\", \"rejected\": \"c\"}", "prompt", "boolean")]
    public void WrongTypesAreNamed(string bad, string field, string kind)
    {
        var e = Fails(BadOnLine3(bad));
        Assert.That((e.Line, e.Rule), Is.EqualTo((3, DatasetRule.WrongType)));
        Assert.That(e.Message, Is.EqualTo($"{Source}:3: field '{field}' must be a string, got {kind}"));
    }

    [TestCase("{\"prompt\": \"a\", \"chosen\": \"\", \"rejected\": \"c\"}", "field 'chosen' is empty")]
    [TestCase("{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"\"}", "field 'rejected' is empty")]
    [TestCase("{\"prompt\": \"a\", \"chosen\": \" \\n\\t\", \"rejected\": \"c\"}", "field 'chosen' is whitespace-only")]
    [TestCase("{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"\\u3000\"}", "field 'rejected' is whitespace-only")]
    public void EmptyResponsesAreRejected(string bad, string detail)
    {
        var e = Fails(BadOnLine3(bad));
        Assert.That((e.Line, e.Rule, e.Detail), Is.EqualTo((3, DatasetRule.EmptyText, detail)));
    }

    [Test]
    public void EmptyOrWhitespacePromptIsAllowed()
    {
        var examples = Parse("{\"prompt\": \"\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"prompt\": \"  \", \"chosen\": \"b\", \"rejected\": \"c\"}");
        Assert.That(examples.Select(e => e.Prompt), Is.EqualTo(new[] { "", "  " }));
    }

    [Test]
    public void DuplicateKeysAreRejected()
    {
        var e = Fails(BadOnLine3("{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\", \"chosen\": \"d\"}"));
        Assert.That((e.Line, e.Rule), Is.EqualTo((3, DatasetRule.DuplicateKey)));
        Assert.That(e.Detail, Is.EqualTo("key 'chosen' appears more than once"));
        // The same key spelled with an escape is the same key.
        Assert.That(Fails(BadOnLine3("{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\", \"\\u0070rompt\": \"x\"}")).Rule,
            Is.EqualTo(DatasetRule.DuplicateKey));
        // Key names in messages are escaped and shortened.
        string longKey = new('k', 100);
        var quoted = Fails($"{{\"{longKey}\\n\": 1, \"{longKey}\\n\": 2}}");
        Assert.That(quoted.Detail, Is.EqualTo($"key '{new string('k', 40)}…' appears more than once"));
        Assert.That(Fails("{\"a\\u0001\": 1}").Detail, Is.EqualTo("missing field 'prompt' (keys present: 'a\\u0001')"));
    }

    [Test]
    public void InvalidUtf8OnLine3IsReportedWithItsByte()
    {
        byte[] good = Encoding.UTF8.GetBytes(GoodLine + "\n");
        byte[] bad = Encoding.UTF8.GetBytes("{\"prompt\": \"caf?\", \"chosen\": \"b\", \"rejected\": \"c\"}\n");
        int at = Array.IndexOf(bad, (byte)'?');
        foreach (byte[] sequence in new[] { new byte[] { 0xE9 }, [0xC3], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xFF] })
        {
            byte[] line = [.. bad[..at], .. sequence, .. bad[(at + 1)..]];
            var e = Fails([.. good, .. good, .. line, .. good]);
            Assert.That((e.Line, e.Rule), Is.EqualTo((3, DatasetRule.InvalidUtf8)), Convert.ToHexString(sequence));
            Assert.That(e.Detail, Is.EqualTo($"invalid UTF-8 at byte {at + 1} of the line (0x{sequence[0]:X2})"));
        }
    }

    [Test]
    public void UnpairedSurrogateEscapeIsRejected()
    {
        foreach (string escape in new[] { "\\ud800", "\\udc00x", "\\ud800\\ud800", "x\\ud83d" })
        {
            var e = Fails(BadOnLine3($"{{\"prompt\": \"a\", \"chosen\": \"{escape}\", \"rejected\": \"c\"}}"));
            Assert.That((e.Line, e.Rule), Is.EqualTo((3, DatasetRule.InvalidUnicode)), escape);
        }
        // A properly paired escape is fine.
        Assert.That(Parse("{\"prompt\": \"\\ud83d\\ude00\", \"chosen\": \"b\", \"rejected\": \"c\"}")[0].Prompt, Is.EqualTo("😀"));
    }

    [Test]
    public void ByteOrderMarkIsAllowedOnTheFirstLineOnly()
    {
        byte[] bom = [0xEF, 0xBB, 0xBF];
        byte[] line = Encoding.UTF8.GetBytes(GoodLine + "\n");
        Assert.That(Parse([.. bom, .. line, .. line]), Has.Count.EqualTo(2));
        Assert.That(Parse([.. bom, (byte)'\n', .. line]).Single().Line, Is.EqualTo(2), "a BOM-only first line is blank");

        var e = Fails([.. line, .. bom, .. line]);
        Assert.That((e.Line, e.Rule), Is.EqualTo((2, DatasetRule.MisplacedByteOrderMark)));
        Assert.That(Fails([.. bom, .. bom, .. line]).Rule, Is.EqualTo(DatasetRule.MisplacedByteOrderMark).Or.EqualTo(DatasetRule.InvalidJson),
            "a second BOM on line 1 is not JSON");
        // Through a TextReader the BOM may already have been removed by the reader, or arrive as U+FEFF.
        Assert.That(PreferenceJsonl.Parse(new StringReader("\uFEFF" + GoodLine), Source), Has.Count.EqualTo(1));
    }

    [Test]
    public void CrlfLfAndAMissingFinalNewlineAreAllAccepted()
    {
        var examples = Parse($"{GoodLine}\r\n{GoodLine}\n{GoodLine}\r\n\r\n{GoodLine}");
        Assert.That(examples.Select(e => e.Line), Is.EqualTo(new[] { 1, 2, 3, 5 }));
        Assert.That(examples.All(e => e.Rejected == "no"), Is.True, "no stray CR");
        var crlfInString = Parse("{\"prompt\": \"a\\r\\n\", \"chosen\": \"b\", \"rejected\": \"c\"}\r\n");
        Assert.That(crlfInString[0].Prompt, Is.EqualTo("a\r\n"));
    }

    [Test]
    public void BlankLinesAreSkippedButCounted()
    {
        string text = $"\n  \n{GoodLine}\n\t\r\n\n{GoodLine}\n\n\n{{\"prompt\": 1}}\n";
        var e = Fails(text);
        Assert.That((e.Line, e.Rule), Is.EqualTo((9, DatasetRule.WrongType)));
        Assert.That(Parse($"\n\n{GoodLine}\n\n").Single().Line, Is.EqualTo(3));
    }

    [Test]
    public void OverlongLineFailsWithoutReadingItAll()
    {
        string filler = new('x', 200);
        string line = $"{{\"prompt\": \"{filler}\", \"chosen\": \"b\", \"rejected\": \"c\"}}";
        int length = Encoding.UTF8.GetByteCount(line);
        Assert.That(Parse(line + "\r\n", maxLineBytes: length), Has.Count.EqualTo(1), "exactly at the cap, CRLF not counted");
        var e = Fails(BadOnLine3(line), maxLineBytes: length - 1);
        Assert.That((e.Line, e.Rule), Is.EqualTo((3, DatasetRule.TooLong)));
        Assert.That(e.Detail, Does.Contain($"{length - 1:N0} bytes"));

        // The default 16 MiB cap, on a stream that would be far larger: it stops soon after the cap.
        var endless = new EndlessStream();
        var big = Assert.Throws<DatasetFormatException>(() => PreferenceJsonl.Parse(endless, Source))!;
        Assert.That((big.Line, big.Rule), Is.EqualTo((1, DatasetRule.TooLong)));
        Assert.That(endless.Position, Is.LessThan(PreferenceJsonl.DefaultMaxLineBytes + 200_000));

        var text = Assert.Throws<DatasetFormatException>(() =>
            PreferenceJsonl.Parse(new StringReader(BadOnLine3(line)), Source, maxLineBytes: length - 1))!;
        Assert.That((text.Line, text.Rule), Is.EqualTo((3, DatasetRule.TooLong)));
    }

    [TestCase("")]
    [TestCase("\n\n  \r\n")]
    [TestCase("\uFEFF")]
    public void FileWithoutExamplesIsAnError(string text)
    {
        var e = Fails(text);
        Assert.That((e.Line, e.Rule), Is.EqualTo((0, DatasetRule.NoExamples)));
        Assert.That(e.Message, Does.StartWith($"{Source}: no examples"));
    }

    [Test]
    public void LoadNamesTheFileAndFileSystemErrorsStayIoErrors()
    {
        string path = Path.Combine(Path.GetTempPath(), "distalign-prefs-" + Guid.NewGuid().ToString("N") + ".jsonl");
        File.WriteAllText(path, GoodLine + "\n{\"prompt\": \"a\", \"chosen\": 3, \"rejected\": \"c\"}\n");
        try
        {
            var e = Assert.Throws<DatasetFormatException>(() => PreferenceJsonl.Load(path))!;
            Assert.That(e.Message, Is.EqualTo($"{path}:2: field 'chosen' must be a string, got number"));
        }
        finally
        {
            File.Delete(path);
        }
        Assert.That(() => PreferenceJsonl.Load(path), Throws.InstanceOf<FileNotFoundException>());
    }

    [Test]
    public void TextReaderAndStreamAgree()
    {
        string text = $"{GoodLine}\r\n\n{{\"prompt\": \"é😀\", \"chosen\": \"x\", \"rejected\": \"y\", \"n\": 1}}";
        Assert.That(PreferenceJsonl.Parse(new StringReader(text), Source), Is.EqualTo(Parse(text)));
        var e = Assert.Throws<DatasetFormatException>(() =>
            PreferenceJsonl.Parse(new StringReader($"{GoodLine}\n{{\"prompt\": \"a\ud800\", \"chosen\": \"b\", \"rejected\": \"c\"}}"), Source))!;
        Assert.That((e.Line, e.Rule), Is.EqualTo((2, DatasetRule.InvalidUtf8)));
    }

    /// <summary>A stream of one never-ending line of 'x'.</summary>
    private sealed class EndlessStream : Stream
    {
        private long _position;
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => _position; set => throw new NotSupportedException(); }
        public override int Read(byte[] buffer, int offset, int count)
        {
            buffer.AsSpan(offset, count).Fill((byte)'x');
            _position += count;
            return count;
        }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
