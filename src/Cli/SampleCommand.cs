using System.CommandLine;
using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Gpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;

namespace DistAlign.Cli;

/// <summary>
/// <c>distalign sample</c>: continues prompts with a trained model (KV-cache decoding, on the CPU or, with <c>--device cuda</c>, on
/// <see cref="GpuGptDecoder"/>). A tilt model (written by <c>align --train tilt</c>) samples exactly from π0·exp(b) on the CPU
/// (<see cref="TiltedSampler"/>), at temperature 1 without truncation.
/// </summary>
internal static class SampleCommand
{
    public static Command Create()
    {
        var model = new Option<FileInfo>("--model") { Description = "A model.safetensors written by pretrain or align (a tilt model too), or a GPT-2 safetensors file.", Required = true };
        var prompts = new Option<string[]>("--prompt") { Description = "Prompt text; repeatable. Default: one empty prompt (starts from <|endoftext|>).", AllowMultipleArgumentsPerToken = false };
        var samples = new Option<int>("--samples") { DefaultValueFactory = _ => 1, Description = "Continuations per prompt." };
        var maxTokens = new Option<int>("--max-tokens") { DefaultValueFactory = _ => 64, Description = "New tokens per continuation at most." };
        var temperature = new Option<float>("--temperature") { DefaultValueFactory = _ => 1f, Description = "Softmax temperature (0 = greedy)." };
        var topK = new Option<int>("--top-k") { DefaultValueFactory = _ => 0, Description = "Keep the k most likely tokens (0 = all)." };
        var topP = new Option<float>("--top-p") { DefaultValueFactory = _ => 1f, Description = "Nucleus mass (1 = all)." };
        var seed = new Option<ulong>("--seed") { DefaultValueFactory = _ => 1UL, Description = "Sampling seed." };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "Tokenizer spec when the model file does not name one (default gpt2)." };
        var threads = new Option<int>("--threads") { DefaultValueFactory = _ => Environment.ProcessorCount, Description = "CPU threads." };
        var command = new Command("sample", "Continue prompts with a trained model.")
        {
            model, prompts, samples, maxTokens, temperature, topK, topP, seed, tokenizer, threads,
        };
        command.SetAction(parse =>
        {
            CpuParallel.Threads = CliErrors.Positive(parse.GetValue(threads), "--threads");
            var file = parse.GetValue(model)!;
            if (!file.Exists) throw new CliUsageException($"--model {file.FullName}: no such file");
            var loaded = GptCheckpoint.LoadModel(file.FullName, withLogitOffset: true);
            using var gpt = loaded.Model;
            var tok = Gpt2Tokenizer.FromSpec(loaded.TokenizerSpec ?? parse.GetValue(tokenizer) ?? Gpt2Tokenizer.FullSpec);
            if (tok.VocabSize != gpt.Config.VocabSize)
                throw new CliUsageException($"tokenizer {tok.Spec} has {tok.VocabSize} tokens but the model has {gpt.Config.VocabSize}");
            var options = new SamplingOptions(CliErrors.NonNegative(parse.GetValue(maxTokens), "--max-tokens"), parse.GetValue(temperature),
                parse.GetValue(topK), parse.GetValue(topP), tok.EndOfText);
            var texts = parse.GetValue(prompts) is { Length: > 0 } p ? p : [""];
            int n = CliErrors.Positive(parse.GetValue(samples), "--samples");
            var encoded = new List<int[]>();
            foreach (var text in texts)
                for (int i = 0; i < n; i++)
                    encoded.Add([tok.EndOfText, .. tok.Encode(text)]);
            Continuation[] results;
            if (loaded.LogitOffset is { } offset)
            {
                if (options.Temperature != 1f || options.TopK != 0 || options.TopP < 1f)
                    throw new CliUsageException($"{file.FullName} is a tilt model: it samples exactly from its tilted π0, at --temperature 1 without --top-k or --top-p");
                string what = loaded.AdapterRank > 0 ? $"π0·exp(b + (h·A)·Bᵀ) (rank-{loaded.AdapterRank} head adapter)" : "π0·exp(b)";
                Console.WriteLine($"tilt model: sampling {what} exactly on the CPU{(DeviceOption.Chosen == "cuda" ? "; the GPU decoder has no offset" : "")}");
                results = TiltedSampler.Sample(gpt, offset, encoded, options, parse.GetValue(seed), new HeadAdapter(loaded.AdapterRank, loaded.AdapterA, loaded.AdapterB));
                Print(results, texts, n, tok);
                return 0;
            }
            // --device cuda (or auto with a usable GPU): the model copied to a GPU engine and decoded there (KV caches, logits on the
            // device; fp32 GEMMs); the draws stay on the host, so a seed gives the CPU's continuations wherever the logits agree.
            using var device = GpuTrainingOptions.OpenIfChosen(new GpuTrainingOptions.Values(GemmPrecision.Float32, Flash: false), gpt.Config);
            if (device is null) results = Sampler.Generate(gpt, encoded, options, parse.GetValue(seed));
            else
            {
                using var engine = device.Models.EngineFor(gpt);
                Console.WriteLine($"decoding on {device.Accelerator.Name} (KV caches and logits on the device, {(device.Gemm is CublasGemm ? "fp32 cuBLAS" : "fp32 tiled ILGPU")} GEMMs)");
                results = Sampler.Generate(engine, encoded, options, parse.GetValue(seed));
            }
            Print(results, texts, n, tok);
            return 0;
        });
        return command;
    }

    private static void Print(Continuation[] results, string[] texts, int perPrompt, Gpt2Tokenizer tok)
    {
        for (int i = 0; i < results.Length; i++)
        {
            var r = results[i];
            var body = r.Ended ? r.Tokens[..^1] : r.Tokens;
            Console.WriteLine($"--- sample {i + 1} (prompt {i / perPrompt + 1}, {r.Tokens.Length} tokens, ln p = {r.LogProbs.Sum():F2})");
            Console.WriteLine(texts[i / perPrompt] + tok.Decode(body));
        }
    }
}
