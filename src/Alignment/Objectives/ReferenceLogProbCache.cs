using System.Buffers.Binary;
using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Policies;
using DistAlign.Engine.SafeTensors;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Objectives;

/// <summary>
/// A stable content hash of a model's weights, for keying caches of what the model computes (reference log-probs).
/// </summary>
/// <remarks>
/// SHA-256, as 64 lowercase hex digits, over a tag naming the model kind and the format version, then the shape
/// (for a GPT: the config as JSON, length-prefixed; for a table: its two sizes), then every parameter as its
/// 32-bit little-endian IEEE bits, in storage order. Changing any single weight, even by one ulp, changes the hash.
/// Gradients and optimizer moments do not count. The hash does not name the device or kernel the log-probs were
/// computed with: a cache shared between a CPU and a GPU run holds whichever computed it first.
/// </remarks>
public static class ModelHash
{
    /// <summary>Hash of a GPT's config and weights.</summary>
    public static string Of(Gpt model)
    {
        ArgumentNullException.ThrowIfNull(model);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(Encoding.ASCII.GetBytes("DistAlign.Gpt.v1\0"));
        byte[] config = Encoding.UTF8.GetBytes(GptConfigJson.Serialize(model.Config));
        AddInt(hash, config.Length);
        hash.AppendData(config);
        AddFloats(hash, model.Parameters);
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    /// <summary>Hash of a tabular policy's sizes and logits.</summary>
    public static string Of(TabularPolicy policy)
    {
        ArgumentNullException.ThrowIfNull(policy);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(Encoding.ASCII.GetBytes("DistAlign.TabularPolicy.v1\0"));
        AddInt(hash, policy.Contexts);
        AddInt(hash, policy.Responses);
        AddFloats(hash, policy.Logits);
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    /// <summary>Hash of a tilt policy: its frozen backbone's hash, then θ (b, and a head adapter's rank, A and B).</summary>
    public static string Of(TiltPolicy policy)
    {
        ArgumentNullException.ThrowIfNull(policy);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(Encoding.ASCII.GetBytes(policy.AdapterRank == 0 ? "DistAlign.TiltPolicy.v1\0" : "DistAlign.TiltPolicy.HeadLora.v1\0"));
        hash.AppendData(Encoding.ASCII.GetBytes(Of(policy.Backbone)));
        if (policy.AdapterRank > 0) AddInt(hash, policy.AdapterRank);
        AddFloats(hash, policy.Parameters);
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    /// <summary>
    /// Hash of a policy of a supported kind (<see cref="GptPolicy"/> — whose weights are copied
    /// to its host model first — <see cref="TiltPolicy"/> or <see cref="TabularPolicy"/>).
    /// </summary>
    /// <exception cref="NotSupportedException">Another kind of policy: pass its hash to the cache explicitly.</exception>
    public static string Of(IPolicy policy) => policy switch
    {
        null => throw new ArgumentNullException(nameof(policy)),
        GptPolicy g => OfHostModel(g),
        TiltPolicy t => Of(t),
        TabularPolicy t => Of(t),
        _ => throw new NotSupportedException(
            $"no model hash for a {policy.GetType().Name}; compute one over its weights and pass it to ReferenceLogProbCache.GetOrCompute"),
    };

    private static string OfHostModel(GptPolicy policy)
    {
        policy.CopyToHost();
        return Of(policy.Model);
    }

    private static void AddInt(IncrementalHash hash, int value)
    {
        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(bytes, value);
        hash.AppendData(bytes);
    }

    private static void AddFloats(IncrementalHash hash, ReadOnlySpan<float> values)
    {
        AddInt(hash, values.Length);
        if (BitConverter.IsLittleEndian)
        {
            hash.AppendData(MemoryMarshal.AsBytes(values));
            return;
        }
        Span<byte> buffer = stackalloc byte[4 * 256];
        for (int start = 0; start < values.Length; start += 256)
        {
            int n = Math.Min(256, values.Length - start);
            for (int i = 0; i < n; i++) BinaryPrimitives.WriteSingleLittleEndian(buffer[(4 * i)..], values[start + i]);
            hash.AppendData(buffer[..(4 * n)]);
        }
    }
}

/// <summary>
/// Reference log-probs ln π0 per sequence (interleaved: 2i = pair i's chosen, 2i+1 its rejected, as
/// <see cref="OfflinePreferenceObjective.ReferenceLogProbs"/> computes them), computed once and persisted to disk keyed
/// by (model hash, data hash), so the offline objectives (DPO family, IPO) never score π0 twice on the same data.
/// </summary>
/// <remarks>
/// <para>One file per key, <c>refs-&lt;first 12 hex of the model hash&gt;-&lt;first 12 of the data hash&gt;.safetensors</c>, in the
/// cache directory: one F32 tensor <c>ref_logps</c> of shape [2·pairs], and metadata holding the full model hash, the
/// full data hash, the pair count, a SHA-256 of the tensor bytes, the format version and the version of DistAlign that
/// wrote it. Files are written atomically (temporary file, flush, rename), so a crash never leaves a half-written entry.</para>
/// <para>A file is used only when it opens as valid safetensors and its metadata, shape and checksum all match the
/// key; anything else (truncated, corrupt, another key with the same 12-digit prefixes, an older format) is a miss:
/// the log-probs are recomputed and the file replaced, with a warning through the <c>log</c> callback — never an
/// exception. A failure to write the file is also only a warning: the computed values are still returned.</para>
/// <para>Values are stored as the exact fp32 bits the reference produced, so a hit is bit-identical to recomputing
/// with the same kernel.</para>
/// </remarks>
public sealed class ReferenceLogProbCache
{
    /// <summary>The format tag in each file's metadata.</summary>
    public const string Format = "distalign.reference-logprobs.v1";

    /// <summary>The name of the one tensor in each file.</summary>
    public const string TensorName = "ref_logps";

    private const string FormatKey = "format", ModelKey = "model_hash", DataKey = "data_hash", PairsKey = "pairs",
                         ChecksumKey = "values_sha256", CreatedByKey = "created_by";

    private readonly Action<string>? log;

    /// <param name="directory">where the files live; created on the first write</param>
    /// <param name="log">receives a line for every rejected file and every failed write (null: silent)</param>
    public ReferenceLogProbCache(string directory, Action<string>? log = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        Directory = Path.GetFullPath(directory);
        this.log = log;
    }

    /// <summary>The cache directory (absolute).</summary>
    public string Directory { get; }

    /// <summary>The file that holds (or would hold) the entry for this key.</summary>
    public string PathFor(string modelHash, string dataHash)
    {
        CheckHash(modelHash, nameof(modelHash));
        CheckHash(dataHash, nameof(dataHash));
        return Path.Combine(Directory, $"refs-{modelHash[..12]}-{dataHash[..12]}.safetensors");
    }

    /// <summary>
    /// The reference log-probs of <paramref name="pairs"/> under <paramref name="reference"/>: read from the cache when a
    /// valid entry for (<paramref name="modelHash"/>, <paramref name="dataHash"/>) exists (<paramref name="hit"/> = true,
    /// the policy is not called), else computed with <see cref="OfflinePreferenceObjective.ReferenceLogProbs"/> and stored.
    /// </summary>
    /// <param name="modelHash">the reference model's hash (<see cref="ModelHash"/>): at least 12 lowercase hex digits</param>
    /// <param name="dataHash">the pairs' hash (<see cref="DatasetHash.Of(IReadOnlyList{PreferencePair})"/>): at least 12 lowercase hex digits</param>
    /// <remarks>The caller vouches that the hashes belong to <paramref name="reference"/> and <paramref name="pairs"/>;
    /// the overload without hashes computes them.</remarks>
    public float[] GetOrCompute(IPolicy reference, string modelHash, IReadOnlyList<PreferencePair> pairs, string dataHash, out bool hit)
    {
        ArgumentNullException.ThrowIfNull(reference);
        ArgumentNullException.ThrowIfNull(pairs);
        string path = PathFor(modelHash, dataHash);
        if (TryLoad(path, modelHash, dataHash, pairs.Count) is { } cached)
        {
            hit = true;
            return cached;
        }
        hit = false;
        float[] values = OfflinePreferenceObjective.ReferenceLogProbs(reference, pairs);
        Store(path, modelHash, dataHash, pairs.Count, values);
        return values;
    }

    /// <summary><see cref="GetOrCompute(IPolicy, string, IReadOnlyList{PreferencePair}, string, out bool)"/> with the
    /// hashes computed here: <see cref="ModelHash.Of(IPolicy)"/> and <see cref="DatasetHash.Of(IReadOnlyList{PreferencePair})"/>.</summary>
    public float[] GetOrCompute(IPolicy reference, IReadOnlyList<PreferencePair> pairs, out bool hit) =>
        GetOrCompute(reference, ModelHash.Of(reference), pairs, DatasetHash.Of(pairs), out hit);

    private float[]? TryLoad(string path, string modelHash, string dataHash, int pairCount)
    {
        if (!File.Exists(path)) return null;
        try
        {
            using var file = SafeTensorsFile.Open(path);
            string? problem = Check(file, modelHash, dataHash, pairCount);
            if (problem is null)
            {
                float[] values = file.ReadF32(TensorName);
                if (Checksum(values) == file.Metadata[ChecksumKey]) return values;
                problem = "the values do not match their checksum (the file is corrupt)";
            }
            Warn($"reference log-prob cache: ignoring '{path}': {problem}; recomputing");
        }
        catch (Exception e) when (e is SafeTensorsFormatException or IOException or UnauthorizedAccessException
                                      or InvalidOperationException or KeyNotFoundException or ArgumentException)
        {
            Warn($"reference log-prob cache: ignoring unreadable '{path}' ({e.GetType().Name}: {e.Message}); recomputing");
        }
        return null;
    }

    /// <summary>Why the file does not hold this key's entry, or null when its header matches.</summary>
    private static string? Check(SafeTensorsFile file, string modelHash, string dataHash, int pairCount)
    {
        string? Mismatch(string key, string expected) =>
            !file.Metadata.TryGetValue(key, out var found) ? $"metadata '{key}' is missing"
            : found != expected ? $"metadata '{key}' is '{found}', expected '{expected}'"
            : null;

        string? problem = Mismatch(FormatKey, Format) ?? Mismatch(ModelKey, modelHash) ?? Mismatch(DataKey, dataHash)
            ?? Mismatch(PairsKey, pairCount.ToString(CultureInfo.InvariantCulture));
        if (problem is not null) return problem;
        if (!file.Metadata.ContainsKey(ChecksumKey)) return $"metadata '{ChecksumKey}' is missing";
        if (!file.TryGetInfo(TensorName, out var info)) return $"it has no tensor '{TensorName}'";
        if (info.DType != SafeTensorDType.F32) return $"'{TensorName}' is {info.DType.HeaderName()}, expected F32";
        if (info.Shape.Count != 1 || info.Shape[0] != 2L * pairCount)
            return $"'{TensorName}' has shape [{string.Join(", ", info.Shape)}], expected [{2L * pairCount}] (2 per pair)";
        return null;
    }

    private void Store(string path, string modelHash, string dataHash, int pairCount, float[] values)
    {
        var metadata = new Dictionary<string, string>
        {
            [FormatKey] = Format,
            [ModelKey] = modelHash,
            [DataKey] = dataHash,
            [PairsKey] = pairCount.ToString(CultureInfo.InvariantCulture),
            [ChecksumKey] = Checksum(values),
            [CreatedByKey] = CreatedBy,
        };
        try
        {
            System.IO.Directory.CreateDirectory(Directory);
            SafeTensorsWriter.Write(path, [SafeTensor.FromFloats(TensorName, values)], metadata);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Warn($"reference log-prob cache: could not write '{path}' ({e.GetType().Name}: {e.Message}); continuing without caching");
        }
    }

    private void Warn(string message) => log?.Invoke(message);

    /// <summary>SHA-256 of the values' little-endian bytes.</summary>
    private static string Checksum(float[] values) =>
        Convert.ToHexStringLower(SHA256.HashData(SafeTensor.FromFloats(TensorName, values).Data.Span));

    private static readonly string CreatedBy = "DistAlign " +
        (typeof(ReferenceLogProbCache).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
         ?? typeof(ReferenceLogProbCache).Assembly.GetName().Version?.ToString() ?? "unknown");

    private static void CheckHash(string hash, string name)
    {
        ArgumentNullException.ThrowIfNull(hash, name);
        if (hash.Length < 12 || !hash.All(c => c is >= '0' and <= '9' or >= 'a' and <= 'f'))
            throw new ArgumentException($"{name} must be at least 12 lowercase hex digits (a SHA-256 as ModelHash/DatasetHash give), got '{hash}'", name);
    }
}
