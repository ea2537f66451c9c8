using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using DistAlign.Alignment.Policies;
using DistAlign.Engine.Distributed;
using DistAlign.Transformer.Data;
using DistAlign.Transformer.Devices;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;
using DistAlign.Transformer.Training;

namespace DistAlign.Alignment.Experiments;

/// <summary>What the demo's π0 is and where it came from.</summary>
/// <param name="Path">the model file</param>
/// <param name="Cached">true when it was loaded from an earlier run's cache</param>
/// <param name="ValidationLoss">next-token loss on the held-out corpus (nats/token)</param>
/// <param name="Seconds">pretraining seconds (0 when cached)</param>
public sealed record PretrainedReference(string Path, bool Cached, double ValidationLoss, double Seconds, int Steps);

/// <summary>
/// π0 for the known-target experiments, pretrained on the shipped corpus's training part once and cached in
/// <c>DIR/&lt;key&gt;/model.safetensors</c>, the key a SHA-256 of the config, the pretraining options, the tokenizer and
/// the corpus text (and, for a π0 pretrained on a GPU, the device and its settings, since its weights differ from the CPU's by
/// rounding): any change trains a new π0, an unchanged one is reused.
/// </summary>
public static class ReferencePretraining
{
    /// <summary>Name of the file beside the model that records its validation loss and pretraining time.</summary>
    public const string InfoFileName = "pretraining.json";

    /// <param name="ranks">ranks of the data-parallel job that pretrains it (its weights differ from one process's by rounding)</param>
    public static string CacheKey(GptConfig config, LanguageModelTrainingOptions options, Gpt2Tokenizer tokenizer, string corpus, GptDevice? device = null,
                                  int ranks = 1)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(Encoding.UTF8.GetBytes(JsonSerializer.Serialize(new Pi0CacheKey(config, options, tokenizer.Spec, "distalign.demo.pi0.v1"), DemoJsonContext.Default.Pi0CacheKey)));
        hash.AppendData(Encoding.UTF8.GetBytes(corpus));
        if (device is { IsCpu: false }) hash.AppendData(Encoding.UTF8.GetBytes("\0pretrained on " + device.Description));
        if (ranks > 1) hash.AppendData(Encoding.UTF8.GetBytes($"\0pretrained data-parallel over {ranks} ranks"));
        return Convert.ToHexStringLower(hash.GetHashAndReset())[..16];
    }

    /// <summary>
    /// Loads the cached π0 for these settings or pretrains it (reporting (step, steps, loss) to <paramref name="progress"/>), on
    /// <paramref name="device"/> (default the CPU). The caller owns the returned (host) model.
    /// </summary>
    /// <param name="parallel">the ranks of a data-parallel job: they pretrain together (a π0 cached under a key of its rank
    /// count), all load the cache only when every rank sees it, and only rank 0 writes it</param>
    public static (Gpt Model, PretrainedReference Info) GetOrTrain(string cacheDirectory, GptConfig config, LanguageModelTrainingOptions options,
                                                                   Gpt2Tokenizer tokenizer, Action<int, int, double>? progress = null, GptDevice? device = null,
                                                                   DataParallelSettings? parallel = null)
    {
        device ??= GptDevice.Cpu;
        parallel ??= DataParallelSettings.SingleProcess;
        options.Validate();
        if (config.VocabSize != tokenizer.VocabSize)
            throw new ArgumentException($"the model's vocabulary ({config.VocabSize}) differs from the tokenizer's ({tokenizer.VocabSize})");
        var split = ShippedData.SplitMobyDick();
        var group = parallel.Group;
        string key = CacheKey(config, options, tokenizer, split.Train + "\0" + split.HeldOut, device, group.Size);
        string folder = System.IO.Path.Combine(cacheDirectory, key);
        string path = System.IO.Path.Combine(folder, GptCheckpoint.ModelFileName);
        string infoPath = System.IO.Path.Combine(folder, InfoFileName);
        var cached = TryLoad(path, infoPath, config, options.Steps);
        // Every rank must take the same path: the cache is used only when every rank could read it (ranks on other machines
        // may not share the folder), otherwise all of them pretrain together.
        if (group.Sum(cached is null ? 0 : 1, "whether π0 is cached") == group.Size) return cached!.Value;
        cached?.Model.Dispose();
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var model = new Gpt(config);
        float validation = float.NaN;
        try
        {
            model.InitializeGpt2(options.Seed);
            var engine = device.EngineFor(model);
            try
            {
                var trainer = new LanguageModelTrainer(model, tokenizer.Encode(split.Train), tokenizer.Encode(split.HeldOut), options, engine, parallel);
                while (trainer.Step < options.Steps)
                {
                    var report = trainer.TrainStep();
                    if (report.ValidationLoss is float v) validation = v;
                    progress?.Invoke(report.Step, options.Steps, report.Loss);
                }
                if (float.IsNaN(validation)) validation = trainer.Evaluate();
                trainer.DownloadModel();
            }
            finally
            {
                GptDevice.Release(engine, model);
            }
        }
        catch
        {
            model.Dispose();
            throw;
        }
        double seconds = watch.Elapsed.TotalSeconds;
        if (group.Rank == 0)
        {
            Directory.CreateDirectory(folder);
            GptCheckpoint.SaveModel(path, model, tokenizer.Spec);
            File.WriteAllText(infoPath, JsonSerializer.Serialize(new Pi0Info(validation, seconds, options.Steps, key), DemoJsonContext.Default.Pi0Info));
        }
        return (model, new PretrainedReference(path, false, validation, seconds, options.Steps));
    }

    // The cached π0 and its record, or null when there is none or it is damaged or of another shape (it is then retrained).
    private static (Gpt Model, PretrainedReference Info)? TryLoad(string path, string infoPath, GptConfig config, int steps)
    {
        if (!File.Exists(path) || !File.Exists(infoPath)) return null;
        try
        {
            var loaded = GptCheckpoint.LoadModel(path);
            if (loaded.Model.Config == config)
            {
                using var doc = JsonDocument.Parse(File.ReadAllText(infoPath));
                double loss = doc.RootElement.GetProperty("validation_loss").GetDouble();
                return (loaded.Model, new PretrainedReference(path, true, loss, 0, steps));
            }
            loaded.Model.Dispose();
        }
        catch (Exception e) when (e is IOException or JsonException or KeyNotFoundException or Engine.SafeTensors.SafeTensorsFormatException or InvalidOperationException)
        {
            // A damaged cache entry is retrained.
        }
        return null;
    }
}

/// <summary>What π0's cache key hashes (the names and order are the key's: changing them retrains every cached π0).</summary>
#pragma warning disable IDE1006 // lower-case names: they are the JSON's
internal sealed record Pi0CacheKey(GptConfig config, LanguageModelTrainingOptions options, string tokenizer, string format);
#pragma warning restore IDE1006

/// <summary>The pretraining.json beside a cached π0.</summary>
internal sealed record Pi0Info(
    [property: JsonPropertyName("validation_loss")] double ValidationLoss,
    [property: JsonPropertyName("seconds")] double Seconds,
    [property: JsonPropertyName("steps")] int Steps,
    [property: JsonPropertyName("key")] string Key);

/// <summary>Source-generated JSON for the demo's cache files (no reflection: trimming- and NativeAOT-safe).</summary>
[JsonSerializable(typeof(Pi0CacheKey))]
[JsonSerializable(typeof(Pi0Info))]
internal sealed partial class DemoJsonContext : JsonSerializerContext;
