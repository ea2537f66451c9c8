using System.Globalization;
using System.Reflection;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;

// package-score MODEL [PROMPT RESPONSE]...: ln π(response | prompt) of each pair under a checkpoint, on the CPU engine, through
// the DistAlign.Alignment package (which brings DistAlign.Transformer, .Kernels and .Engine). Numbers print round-trippable,
// as `distalign score` prints them, so equal text means the same float.
if (args.Length == 0 || args.Length % 2 == 0)
{
    Console.Error.WriteLine("usage: package-score MODEL.safetensors [PROMPT RESPONSE]...");
    return 2;
}
string[] pairs = args.Length > 1 ? args[1..] : ["Call me", " Ishmael.", "The whale", " was white.", "", "It was the best of times."];
try
{
    var version = typeof(SequenceScorer).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;
    var (model, spec) = GptCheckpoint.LoadModel(args[0]);
    using var policy = new GptPolicy(model, new AdamWSettings(), ownsModel: true);
    var tokenizer = Gpt2Tokenizer.FromSpec(spec ?? Gpt2Tokenizer.FullSpec);
    var config = model.Config;
    Console.WriteLine($"DistAlign.Alignment {version}; model: {config.Layers} layers, {config.Heads} heads, {config.Channels} channels, " +
                      $"vocabulary {config.VocabSize} ({tokenizer.Spec}), context {config.MaxSequenceLength}");

    var examples = Enumerable.Range(0, pairs.Length / 2).Select(i => new ScoreExample(pairs[2 * i], pairs[2 * i + 1], i + 1)).ToList();
    var sequences = SequenceScorer.Tokenize(examples, tokenizer, config.MaxSequenceLength, "arguments");
    var scores = SequenceScorer.Score(policy, sequences);
    for (int i = 0; i < scores.Length; i++)
    {
        var s = scores[i];
        string perToken = string.Join(" ", s.TokenLogProbs.Select(R));
        Console.WriteLine($"logprob {R(s.LogProb)} tokens {s.Tokens} mean {s.MeanLogProb.ToString("F4", CultureInfo.InvariantCulture)} " +
                          $"per_token [{perToken}] prompt \"{examples[i].Prompt}\" response \"{examples[i].Response}\"");
    }
    return 0;
}
catch (Exception e) when (e is IOException or ArgumentException or FormatException or InvalidOperationException)
{
    Console.Error.WriteLine($"package-score: {e.Message}");
    return 2;
}

static string R(float x) => x.ToString("R", CultureInfo.InvariantCulture);
