using System.Globalization;
using System.Text.Json;
using DistAlign.Engine.SafeTensors;

namespace DistAlign.Transformer.Model;

/// <summary>A checkpoint whose tensors or metadata do not fit the model they are loaded into.</summary>
public sealed class CheckpointMismatchException(string message) : Exception(message);

/// <summary>
/// Model and training checkpoints.
/// <list type="bullet">
/// <item>A model file is safetensors with Hugging Face GPT-2 tensor names ([in, out] linear weights, LM
/// head tied to wte) and the config and tokenizer in the metadata, so a GPT-2 safetensors file loads
/// too (its config is inferred from the tensor shapes).</item>
/// <item>A training checkpoint is a folder <c>step-NNNNNNNN/</c> holding the model file and
/// <c>training-state.safetensors</c> (AdamW moments, step, data cursor, options), written under a
/// temporary name and renamed into place; then the one-line file <c>latest</c> is replaced atomically.
/// A crash at any point leaves <c>latest</c> naming a complete checkpoint.</item>
/// </list>
/// </summary>
public static class GptCheckpoint
{
    public const string ModelFileName = "model.safetensors";
    public const string StateFileName = "training-state.safetensors";
    public const string LatestFileName = "latest";
    public const string ConfigKey = "distalign.config";
    public const string TokenizerKey = "distalign.tokenizer";
    /// <summary>Metadata naming what was trained: <c>full</c> (every weight), <c>tilt</c> (a frozen GPT plus <see cref="LogitOffsetName"/>)
    /// or <c>head-lora</c> (that plus a rank-r update of the LM head, <see cref="HeadAdapterAName"/> and <see cref="HeadAdapterBName"/>).</summary>
    public const string TrainedKey = "distalign.trained";
    /// <summary>
    /// The per-token logit offset b [V] of a model trained in the tilt class: next-token probabilities π0(v | ctx)·exp(b_v) / Z.
    /// GPT-2's LM head is tied to wte and has no bias, so b cannot be folded into the weights; it travels beside them.
    /// </summary>
    public const string LogitOffsetName = "logit_offset";
    /// <summary>A [C, r] and B [V, r] of a head-LoRA model: the logits gain (h·A)·Bᵀ over the final features h.</summary>
    public const string HeadAdapterAName = "lm_head_adapter.a", HeadAdapterBName = "lm_head_adapter.b";

    /// <summary>Writes the weights (atomically) with the config, the tokenizer spec and what was trained in the metadata.</summary>
    /// <param name="extraTensors">tensors of a head other than the tied LM head (e.g. a reward model's
    /// <c>score.weight</c>, <c>score.bias</c>), written into the same file; their names must not clash
    /// with the GPT's. <see cref="LoadModel"/> ignores them, except <see cref="LogitOffsetName"/>: with it the file
    /// is a tilt model (<see cref="TrainedKey"/> = tilt), which only callers that can apply the offset load.</param>
    public static void SaveModel(string path, Gpt model, string tokenizerSpec, IEnumerable<SafeTensor>? extraTensors = null)
    {
        var extra = extraTensors?.ToList() ?? [];
        var offset = extra.FirstOrDefault(t => t.Name == LogitOffsetName);
        if (offset is not null && !offset.Shape.SequenceEqual([(long)model.Config.VocabSize]))
            throw new ArgumentException($"'{LogitOffsetName}' must have shape [{model.Config.VocabSize}], got [{string.Join(", ", offset.Shape)}]");
        bool adapter = extra.Any(t => t.Name == HeadAdapterAName);
        if (adapter && offset is null) throw new ArgumentException($"a head adapter goes with a '{LogitOffsetName}'");
        var metadata = new Dictionary<string, string>
        {
            ["format"] = "pt",
            [ConfigKey] = GptConfigJson.Serialize(model.Config),
            [TokenizerKey] = tokenizerSpec,
            [TrainedKey] = offset is null ? "full" : adapter ? "head-lora" : "tilt",
        };
        var p = model.Parameters;
        var tensors = new List<SafeTensor>(model.Layout.Tensors.Count + extra.Count);
        foreach (var t in model.Layout.Tensors)
            tensors.Add(SafeTensor.FromFloats(t.Name, p.Slice((int)t.Offset, (int)t.Length), [.. t.Shape.Select(d => (long)d)]));
        tensors.AddRange(extra);
        SafeTensorsWriter.Write(path, tensors, metadata);
    }

    /// <summary>A model loaded from a file, with the tokenizer spec it was trained with (null when the file has none).</summary>
    public sealed record LoadedModel(Gpt Model, string? TokenizerSpec)
    {
        /// <summary>b of a tilt model (next-token probabilities ∝ π0·exp(b)); null for a plain GPT.</summary>
        public float[]? LogitOffset { get; init; }
        /// <summary>r of a head-LoRA model's adapter (0 without one).</summary>
        public int AdapterRank { get; init; }
        /// <summary>The adapter's A [C × r] and B [V × r], row-major (empty without one).</summary>
        public float[] AdapterA { get; init; } = [];
        public float[] AdapterB { get; init; } = [];
    }

    /// <summary>
    /// Loads a model file written by <see cref="SaveModel"/> or a Hugging Face GPT-2 safetensors file.
    /// Every tensor is checked against the config's shapes; a mismatch names the tensor and both shapes.
    /// </summary>
    /// <param name="heads">heads for a file without DistAlign metadata (the shapes do not tell); default C/64</param>
    /// <param name="withLogitOffset">the caller applies a tilt model's <see cref="LogitOffsetName"/>; when false such a file is
    /// refused (read as a plain GPT it would silently be π0, not the trained model)</param>
    public static LoadedModel LoadModel(string path, int? heads = null, long? memoryBudgetBytes = null, bool withLogitOffset = false)
    {
        using var file = SafeTensorsFile.Open(path);
        var config = ConfigOf(file, path, heads);
        float[]? offset = null;
        if (file.TryGetInfo(LogitOffsetName, out var info))
        {
            if (!withLogitOffset)
                throw new CheckpointMismatchException(
                    $"{path}: a tilt model (a frozen GPT plus the per-token logit offset '{LogitOffsetName}'); this command needs a plain GPT " +
                    "(tilt models go to `align --train tilt|head-lora` and `sample`)");
            if (!info.Shape.SequenceEqual([(long)config.VocabSize]))
                throw new CheckpointMismatchException($"{path}: tensor '{LogitOffsetName}' has shape [{string.Join(", ", info.Shape)}], the model needs [{config.VocabSize}]");
            offset = new float[config.VocabSize];
            file.ReadF32(LogitOffsetName, offset);
        }
        int rank = 0;
        float[] adapterA = [], adapterB = [];
        if (offset is not null && file.TryGetInfo(HeadAdapterAName, out var a))
        {
            if (a.Shape.Count != 2 || a.Shape[0] != config.Channels || a.Shape[1] < 1)
                throw new CheckpointMismatchException($"{path}: tensor '{HeadAdapterAName}' has shape [{string.Join(", ", a.Shape)}], the model needs [{config.Channels}, r]");
            rank = (int)a.Shape[1];
            if (!file.TryGetInfo(HeadAdapterBName, out var b) || !b.Shape.SequenceEqual([(long)config.VocabSize, rank]))
                throw new CheckpointMismatchException($"{path}: '{HeadAdapterAName}' needs '{HeadAdapterBName}' of shape [{config.VocabSize}, {rank}]");
            adapterA = new float[config.Channels * rank];
            adapterB = new float[config.VocabSize * rank];
            file.ReadF32(HeadAdapterAName, adapterA);
            file.ReadF32(HeadAdapterBName, adapterB);
        }
        var model = new Gpt(config, memoryBudgetBytes);
        try
        {
            LoadParameters(file, model, path);
        }
        catch
        {
            model.Dispose();
            throw;
        }
        file.Metadata.TryGetValue(TokenizerKey, out var spec);
        return new LoadedModel(model, spec) { LogitOffset = offset, AdapterRank = rank, AdapterA = adapterA, AdapterB = adapterB };
    }

    private static GptConfig ConfigOf(SafeTensorsFile file, string path, int? heads)
    {
        if (file.Metadata.TryGetValue(ConfigKey, out var json))
        {
            try
            {
                return GptConfigJson.Deserialize(json).Validate();
            }
            catch (Exception e) when (e is JsonException or ArgumentException)
            {
                throw new CheckpointMismatchException($"{path}: metadata '{ConfigKey}' is not a valid model config: {e.Message}");
            }
        }
        // A Hugging Face GPT-2 file: infer the config from the shapes.
        var wte = Find(file, "wte.weight") ?? throw new CheckpointMismatchException($"{path}: no 'wte.weight' tensor and no '{ConfigKey}' metadata: not a GPT-2 checkpoint");
        var wpe = Find(file, "wpe.weight") ?? throw new CheckpointMismatchException($"{path}: no 'wpe.weight' tensor");
        if (wte.Shape.Count != 2 || wpe.Shape.Count != 2)
            throw new CheckpointMismatchException($"{path}: wte.weight and wpe.weight must be 2-D, got [{string.Join(", ", wte.Shape)}] and [{string.Join(", ", wpe.Shape)}]");
        int layers = 0;
        while (Find(file, $"h.{layers}.ln_1.weight") is not null) layers++;
        int channels = (int)wte.Shape[1];
        return new GptConfig(layers, heads ?? Math.Max(1, channels / 64), channels, (int)wte.Shape[0], (int)wpe.Shape[0]).Validate();
    }

    /// <summary>Looks a tensor up by its HF name, with or without the <c>transformer.</c> prefix.</summary>
    private static SafeTensorInfo? Find(SafeTensorsFile file, string name) =>
        file.TryGetInfo(name, out var info) ? info : file.TryGetInfo("transformer." + name, out info) ? info : null;

    /// <summary>Copies every parameter from the file into the model after checking its shape.</summary>
    public static void LoadParameters(SafeTensorsFile file, Gpt model, string path)
    {
        var p = model.Parameters;
        foreach (var t in model.Layout.Tensors)
        {
            var info = Find(file, t.Name) ?? throw new CheckpointMismatchException($"{path}: tensor '{t.Name}' is missing");
            if (!info.Shape.SequenceEqual(t.Shape.Select(d => (long)d)))
                throw new CheckpointMismatchException(
                    $"{path}: tensor '{t.Name}' has shape [{string.Join(", ", info.Shape)}], the model needs [{string.Join(", ", t.Shape)}]");
            file.ReadF32(info.Name, p.Slice((int)t.Offset, (int)t.Length));
        }
    }

    /// <summary>
    /// Writes a full training checkpoint for <paramref name="state"/> under <paramref name="directory"/> and
    /// points <c>latest</c> at it. Older step folders beyond the newest <paramref name="keep"/> are removed.
    /// </summary>
    /// <param name="extraModelTensors">more tensors for the model file (e.g. a reward head), as <see cref="SaveModel"/> takes them</param>
    /// <param name="extraStateTensors">more tensors for the state file (e.g. that head's AdamW moments); names must not be adam.m / adam.v.
    /// Both are written into the temporary folder, so they become visible together with the rest.</param>
    /// <param name="frozenModel">the GPT is not trained (a tilt run): its AdamW moments are not written</param>
    /// <param name="moments">the whole AdamW state when the model keeps a shard of it (ZeRO-1: <see cref="Gpt.GatherMoments"/>,
    /// which every rank calls); default: the model's own moments</param>
    public static string SaveTraining(string directory, Gpt model, string tokenizerSpec, TrainerState state, string optionsJson, int keep = 2,
                                      IEnumerable<SafeTensor>? extraModelTensors = null, IEnumerable<SafeTensor>? extraStateTensors = null,
                                      bool frozenModel = false, (float[] M, float[] V)? moments = null)
    {
        if (model.OptimizerShard is not null && moments is null && !frozenModel)
            throw new ArgumentException("the model keeps a shard of the AdamW state (ZeRO-1): pass the gathered moments (Gpt.GatherMoments)", nameof(moments));
        Directory.CreateDirectory(directory);
        string name = $"step-{state.Step:D8}";
        string final = Path.Combine(directory, name);
        string temporary = Path.Combine(directory, $".{name}.tmp-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(temporary);
        try
        {
            SaveModel(Path.Combine(temporary, ModelFileName), model, tokenizerSpec, extraModelTensors);
            var metadata = new Dictionary<string, string>
            {
                ["step"] = state.Step.ToString(CultureInfo.InvariantCulture),
                ["loader_epoch"] = state.LoaderEpoch.ToString(CultureInfo.InvariantCulture),
                ["loader_index"] = state.LoaderIndex.ToString(CultureInfo.InvariantCulture),
                ["options"] = optionsJson,
                [FrozenModelKey] = frozenModel ? "true" : "false",
            };
            var stateTensors = frozenModel ? [] : moments is var (m, v)
                ? new List<SafeTensor> { SafeTensor.FromFloats("adam.m", m), SafeTensor.FromFloats("adam.v", v) }
                : [SafeTensor.FromFloats("adam.m", model.AdamM), SafeTensor.FromFloats("adam.v", model.AdamV)];
            if (extraStateTensors is not null) stateTensors.AddRange(extraStateTensors);
            SafeTensorsWriter.Write(Path.Combine(temporary, StateFileName), stateTensors, metadata);
        }
        catch
        {
            // A failed write (e.g. disk full) frees what it took; 'latest' still names the previous checkpoint.
            try { Directory.Delete(temporary, recursive: true); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { /* the original error matters more */ }
            throw;
        }
        if (Directory.Exists(final)) Directory.Delete(final, recursive: true);
        Directory.Move(temporary, final);
        WriteAtomically(Path.Combine(directory, LatestFileName), name + "\n");

        var old = Directory.GetDirectories(directory, "step-*").Select(Path.GetFileName).OfType<string>()
            .Where(n => n != name).OrderDescending(StringComparer.Ordinal).Skip(Math.Max(0, keep - 1));
        foreach (var o in old) Directory.Delete(Path.Combine(directory, o), recursive: true);
        foreach (var stale in Directory.GetDirectories(directory, ".step-*.tmp-*")) Directory.Delete(stale, recursive: true);
        // Left by a process killed mid-write (this one's own temporaries are gone by now).
        foreach (var stale in Directory.GetFiles(directory, LatestFileName + ".tmp-*")) File.Delete(stale);
        foreach (var stale in Directory.GetFiles(directory, ModelFileName + ".tmp-*")) File.Delete(stale);
        return final;
    }

    /// <summary>The newest complete training checkpoint in <paramref name="directory"/>, or null when there is none.</summary>
    public static string? LatestTraining(string directory)
    {
        string latest = Path.Combine(directory, LatestFileName);
        if (!File.Exists(latest)) return null;
        string name = File.ReadAllText(latest).Trim();
        string path = Path.Combine(directory, name);
        if (!name.StartsWith("step-", StringComparison.Ordinal) || !Directory.Exists(path))
            throw new CheckpointMismatchException($"{latest}: names '{name}', which is not a checkpoint folder in {directory}");
        return path;
    }

    /// <summary>State-file metadata: "true" when the GPT was frozen (no AdamW moments for it).</summary>
    private const string FrozenModelKey = "frozen_model";

    /// <summary>
    /// Restores weights and AdamW moments from a training checkpoint folder into <paramref name="model"/>
    /// and returns the trainer position and the options JSON it was written with.
    /// </summary>
    /// <param name="frozenModel">the run keeps the GPT frozen: the checkpoint must say so too, and only its config is checked
    /// (the weights are the run's own, which its identity hash pins)</param>
    public static (TrainerState State, string OptionsJson) LoadTraining(string checkpoint, Gpt model, bool frozenModel = false)
    {
        string modelPath = Path.Combine(checkpoint, ModelFileName);
        using (var file = SafeTensorsFile.Open(modelPath))
        {
            var config = ConfigOf(file, modelPath, null);
            if (config != model.Config)
                throw new CheckpointMismatchException($"{modelPath}: checkpoint is for {config}, the model is {model.Config}");
            if (!frozenModel) LoadParameters(file, model, modelPath);
        }
        string statePath = Path.Combine(checkpoint, StateFileName);
        using var state = SafeTensorsFile.Open(statePath);
        bool savedFrozen = state.Metadata.TryGetValue(FrozenModelKey, out var f) && f == "true";
        if (savedFrozen != frozenModel)
            throw new CheckpointMismatchException($"{statePath}: the checkpoint's GPT was {(savedFrozen ? "frozen" : "trained")}, this run's is {(frozenModel ? "frozen" : "trained")}");
        foreach (var (name, target) in frozenModel ? [] : new[] { ("adam.m", 0), ("adam.v", 1) })
        {
            var info = state.GetInfo(name);
            if (info.ElementCount != model.Layout.TotalElements)
                throw new CheckpointMismatchException($"{statePath}: '{name}' has {info.ElementCount} elements, the model has {model.Layout.TotalElements} parameters");
            var moment = target == 0 ? model.AdamM : model.AdamV;
            if (model.OptimizerShard is { } shard)
            {
                // ZeRO-1: read the whole moment, keep this rank's chunk (the padding past the last parameter stays 0).
                var all = new float[info.ElementCount];
                state.ReadF32(name, all);
                all.AsSpan((int)shard.Start, (int)shard.Length).CopyTo(moment);
            }
            else state.ReadF32(name, moment);
        }
        int Int(string key) =>
            state.Metadata.TryGetValue(key, out var s) && int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int v)
                ? v : throw new CheckpointMismatchException($"{statePath}: metadata '{key}' is missing or not a non-negative integer");
        return (new TrainerState(Int("step"), Int("loader_epoch"), Int("loader_index")),
                state.Metadata.TryGetValue("options", out var o) ? o : "{}");
    }

    private static void WriteAtomically(string path, string text)
    {
        string temporary = $"{path}.tmp-{Environment.ProcessId}-{Guid.NewGuid():N}";
        using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write))
        {
            var bytes = System.Text.Encoding.UTF8.GetBytes(text);
            stream.Write(bytes);
            stream.Flush(flushToDisk: true);
        }
        File.Move(temporary, path, overwrite: true);
    }
}
