using System.Globalization;
using System.Text.Json;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Cli;
using DistAlign.Tests.Alignment;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;

namespace DistAlign.Tests.Cli;

/// <summary><c>distalign score</c>: JSONL and CSV output equal to <see cref="SequenceScorer"/>'s to the bit, bad lines refused in one line.</summary>
public class ScoreCliTests : CliTestBase
{
    private const string Data = "{\"prompt\": \"Tell me about whales.\", \"response\": \" It is fine and calm.\"}\n\n{\"text\": \"No whales here.\"}\n";

    private (string Model, string Data) Write()
    {
        string model = Path.Combine(TestDirectory, "pi0.safetensors"), data = Path.Combine(TestDirectory, "s.jsonl");
        TinyAlignmentSetup.WriteModel(model);
        File.WriteAllText(data, Data);
        return (model, data);
    }

    private static SequenceScore[] Expected(string model, string data)
    {
        var (gpt, spec) = GptCheckpoint.LoadModel(model);
        using var _ = gpt;
        var examples = ScoreJsonl.Load(data);
        var sequences = SequenceScorer.Tokenize(examples, Gpt2Tokenizer.FromSpec(spec!), gpt.Config.MaxSequenceLength, data);
        using var policy = new GptPolicy(gpt, new AdamWSettings());
        return SequenceScorer.Score(policy, sequences, examples.Select(e => e.Line).ToArray(), withEntropies: true);
    }

    [Test]
    public void JsonlAndCsvHoldTheScorersNumbersBitForBit()
    {
        var (model, data) = Write();
        Assert.That(Program.Main(["score", "--model", model, "--data", data, "--per-token", "--threads", "1"]), Is.EqualTo(0), Error.ToString());
        Assert.That(Error.ToString(), Does.StartWith("device: "), "the device line goes to standard error: standard output is data");
        var lines = Output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var expected = Expected(model, data);
        Assert.That(lines, Has.Length.EqualTo(2));
        for (int i = 0; i < 2; i++)
        {
            using var doc = JsonDocument.Parse(lines[i]);
            var root = doc.RootElement;
            Assert.That(root.GetProperty("line").GetInt32(), Is.EqualTo(i == 0 ? 1 : 3));
            Assert.That(root.GetProperty("logprob").GetSingle(), Is.EqualTo(expected[i].LogProb), "round-trip formatting: equal means bit-identical");
            Assert.That(root.GetProperty("token_logprobs").EnumerateArray().Select(x => x.GetSingle()), Is.EqualTo(expected[i].TokenLogProbs));
            Assert.That(root.GetProperty("token_entropies").EnumerateArray().Select(x => x.GetSingle()), Is.EqualTo(expected[i].TokenEntropies));
        }

        string csv = Path.Combine(TestDirectory, "s.csv");
        Assert.That(Program.Main(["score", "--model", model, "--data", data, "--format", "csv", "--out", csv, "--batch", "1", "--threads", "1"]), Is.EqualTo(0));
        var rows = File.ReadAllLines(csv);
        Assert.That(rows[0], Is.EqualTo("line,tokens,logprob,mean_logprob"));
        Assert.That(rows, Has.Length.EqualTo(3));
        var fields = rows[2].Split(',');
        Assert.That(fields[0], Is.EqualTo("3"));
        Assert.That(float.Parse(fields[2], CultureInfo.InvariantCulture), Is.EqualTo(expected[1].LogProb).Within(1e-5 * Math.Abs(expected[1].LogProb)));
    }

    [Test]
    public void ABadLineOrFlagExitsTwoWithOneLine()
    {
        var (model, _) = Write();
        string bad = Path.Combine(TestDirectory, "bad.jsonl");
        File.WriteAllText(bad, "{\"text\": \"fine\"}\n{\"prompt\": \"x\"}\n");
        Assert.That(Program.Main(["score", "--model", model, "--data", bad]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain($"{bad}:2: missing field 'response' (or 'text')"));
        Assert.That(Program.Main(["score", "--model", model, "--data", bad, "--format", "xml"]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("--format 'xml': expected jsonl or csv"));
        Assert.That(Output.ToString(), Does.Not.Contain("\"logprob\""), "nothing scored");
    }
}
