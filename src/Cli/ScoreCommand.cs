using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;

namespace DistAlign.Cli;

/// <summary>
/// <c>distalign score</c>: ln π(response | prompt) of every line of a JSONL file under a model, and with
/// <c>--per-token</c> every response token's log-prob (and entropy), as JSONL or CSV. The reference that embedders'
/// own scoring calls are compared to: the numbers are printed round-trippable (R format), so equal means bit-identical.
/// </summary>
internal static class ScoreCommand
{
    public static Command Create()
    {
        var model = new Option<FileInfo>("--model") { Description = "A model.safetensors written by pretrain or align (full GPT weights).", Required = true };
        var data = new Option<FileInfo>("--data") { Description = "JSONL: {\"prompt\": ..., \"response\": ...} or {\"text\": ...} per line.", Required = true };
        var output = new Option<FileInfo?>("--out") { Description = "Write the scores here (atomically) instead of standard output." };
        var format = new Option<string>("--format") { DefaultValueFactory = _ => "jsonl", Description = "jsonl or csv." };
        var perToken = new Option<bool>("--per-token") { Description = "Also each response token's log-prob and the entropy of its distribution." };
        var batch = new Option<int>("--batch") { DefaultValueFactory = _ => SequenceScorer.DefaultBatchSize, Description = "Sequences per scoring batch." };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "Tokenizer spec when the model file does not name one (default gpt2)." };
        var threads = new Option<int>("--threads") { DefaultValueFactory = _ => Environment.ProcessorCount, Description = "CPU threads." };
        var command = new Command("score", "Score prompt/response pairs or texts under a model: sequence log-probs (and per-token ones).")
        {
            model, data, output, format, perToken, batch, tokenizer, threads,
        };
        command.SetAction(parse =>
        {
            CpuParallel.Threads = CliErrors.Positive(parse.GetValue(threads), "--threads");
            string fmt = parse.GetValue(format)!.ToLowerInvariant();
            if (fmt is not ("jsonl" or "csv")) throw new CliUsageException($"--format '{parse.GetValue(format)}': expected jsonl or csv");
            int batchSize = CliErrors.Positive(parse.GetValue(batch), "--batch");
            var modelFile = parse.GetValue(model)!;
            var dataFile = parse.GetValue(data)!;
            if (!modelFile.Exists) throw new CliUsageException($"--model {modelFile.FullName}: no such file");
            if (!dataFile.Exists) throw new CliUsageException($"--data {dataFile.FullName}: no such file");
            if (parse.GetValue(output) is { } outFile) CliErrors.EnsureWritableFolder(outFile.DirectoryName ?? ".", "--out");

            var loaded = GptCheckpoint.LoadModel(modelFile.FullName);
            using var gpt = loaded.Model;
            var tok = Gpt2Tokenizer.FromSpec(loaded.TokenizerSpec ?? parse.GetValue(tokenizer) ?? Gpt2Tokenizer.FullSpec);
            if (tok.VocabSize != gpt.Config.VocabSize)
                throw new CliUsageException($"tokenizer {tok.Spec} has {tok.VocabSize} tokens but the model has {gpt.Config.VocabSize}");
            List<ScoreExample> examples;
            List<PromptResponse> sequences;
            try
            {
                examples = ScoreJsonl.Load(dataFile.FullName);
                sequences = SequenceScorer.Tokenize(examples, tok, gpt.Config.MaxSequenceLength, dataFile.FullName);
            }
            catch (DatasetFormatException e)
            {
                throw new CliUsageException($"{e.Message} [{e.Rule}]");
            }
            bool tokens = parse.GetValue(perToken);
            using var policy = new GptPolicy(gpt, new AdamWSettings());
            var scores = SequenceScorer.Score(policy, sequences, examples.Select(e => e.Line).ToArray(), batchSize, withEntropies: tokens);
            string text = fmt == "csv" ? Csv(scores, tokens) : Jsonl(scores, tokens);
            if (parse.GetValue(output) is { } file)
            {
                string tmp = file.FullName + ".tmp";
                File.WriteAllText(tmp, text, new UTF8Encoding(false));
                File.Move(tmp, file.FullName, overwrite: true);
                Console.WriteLine($"scored {scores.Length} sequences ({scores.Sum(s => s.Tokens)} response tokens) → {file.FullName}");
            }
            else Console.Write(text);
            return 0;
        });
        return command;
    }

    private static string R(float value) => value.ToString("R", CultureInfo.InvariantCulture);

    /// <summary>One object per line: line, tokens, logprob, mean_logprob[, token_logprobs, token_entropies].</summary>
    internal static string Jsonl(IReadOnlyList<SequenceScore> scores, bool perToken)
    {
        var sb = new StringBuilder();
        using var buffer = new MemoryStream();
        foreach (var s in scores)
        {
            buffer.SetLength(0);
            using (var w = new Utf8JsonWriter(buffer))
            {
                w.WriteStartObject();
                w.WriteNumber("line", s.Line);
                w.WriteNumber("tokens", s.Tokens);
                w.WriteNumber("logprob", s.LogProb);
                w.WriteNumber("mean_logprob", s.MeanLogProb);
                if (perToken)
                {
                    w.WriteStartArray("token_logprobs");
                    foreach (float v in s.TokenLogProbs) w.WriteNumberValue(v);
                    w.WriteEndArray();
                    w.WriteStartArray("token_entropies");
                    foreach (float v in s.TokenEntropies) w.WriteNumberValue(v);
                    w.WriteEndArray();
                }
                w.WriteEndObject();
            }
            sb.Append(Encoding.UTF8.GetString(buffer.ToArray())).Append('\n');
        }
        return sb.ToString();
    }

    /// <summary>A header, then one row per sequence; per-token values space-separated in one field each.</summary>
    internal static string Csv(IReadOnlyList<SequenceScore> scores, bool perToken)
    {
        var sb = new StringBuilder(perToken ? "line,tokens,logprob,mean_logprob,token_logprobs,token_entropies\n" : "line,tokens,logprob,mean_logprob\n");
        foreach (var s in scores)
        {
            sb.Append(s.Line).Append(',').Append(s.Tokens).Append(',').Append(R(s.LogProb)).Append(',')
              .Append(s.MeanLogProb.ToString("R", CultureInfo.InvariantCulture));
            if (perToken)
                sb.Append(',').Append(string.Join(' ', s.TokenLogProbs.Select(R))).Append(',').Append(string.Join(' ', s.TokenEntropies.Select(R)));
            sb.Append('\n');
        }
        return sb.ToString();
    }
}
