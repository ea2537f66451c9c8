using System.Diagnostics;
using System.Globalization;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;

// aot-score MODEL PROMPT RESPONSE: ln π(response | prompt) under a checkpoint, on the CPU engine, compiled ahead of time.
// Prints the sum as `distalign score` prints it (round-trip format, so equal text means bit-identical) and the time from
// start to the first log-prob.
if (args.Length != 3)
{
    Console.Error.WriteLine("usage: aot-score MODEL.safetensors PROMPT RESPONSE");
    return 2;
}
var watch = Stopwatch.StartNew();
try
{
    var (gpt, spec) = GptCheckpoint.LoadModel(args[0]);
    using var policy = new GptPolicy(gpt, new AdamWSettings(), ownsModel: true);
    var tokenizer = Gpt2Tokenizer.FromSpec(spec ?? Gpt2Tokenizer.FullSpec);
    var sequences = SequenceScorer.Tokenize([new ScoreExample(args[1], args[2], 1)], tokenizer, gpt.Config.MaxSequenceLength, "arguments");
    var score = SequenceScorer.Score(policy, sequences)[0];
    Console.WriteLine($"logprob {score.LogProb.ToString("R", CultureInfo.InvariantCulture)} tokens {score.Tokens} " +
                      $"first_logprob_ms {watch.Elapsed.TotalMilliseconds.ToString("F1", CultureInfo.InvariantCulture)}");
    return 0;
}
catch (Exception e) when (e is IOException or ArgumentException or FormatException or InvalidOperationException)
{
    Console.Error.WriteLine($"aot-score: {e.Message}");
    return 2;
}
