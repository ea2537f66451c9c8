using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using System.Text;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Cpu;
using DistAlign.Engine.SafeTensors;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;

namespace DistAlign.Native;

/// <summary>
/// The C ABI of include/distalign.h, exported from the NativeAOT shared library libdistalign.so. Every entry point
/// catches everything: it returns a status and leaves the message in a thread-local last error, so no exception
/// crosses into the host. Pointers are checked for null and lengths for range before anything is read or written.
/// </summary>
public static unsafe class CAbi
{
    /// <summary>include/distalign.h's DISTALIGN_ABI_VERSION.</summary>
    public const int AbiVersion = 1;

    internal const int Ok = 0, ArgumentError = 1, IoError = 2, FormatError = 3, HandleError = 4, InternalError = 5;

    private sealed class Model(Gpt gpt, Gpt2Tokenizer tokenizer) : IDisposable
    {
        public Gpt Gpt { get; } = gpt;
        public Gpt2Tokenizer Tokenizer { get; } = tokenizer;
        public GptPolicy Policy { get; } = new(gpt, new AdamWSettings());
        public object Lock { get; } = new();
        public void Dispose()
        {
            Policy.Dispose();
            Gpt.Dispose();
        }
    }

    private static readonly ConcurrentDictionary<ulong, Model> Models = new();
    private static long nextHandle;

    [ThreadStatic] private static byte* lastError;   // NUL-terminated UTF-8, owned here, freed when replaced
    private static readonly byte* EmptyString = (byte*)NativeMemory.AllocZeroed(1);   // "", never freed

    [UnmanagedCallersOnly(EntryPoint = "distalign_abi_version")]
    public static int Version() => AbiVersion;

    [UnmanagedCallersOnly(EntryPoint = "distalign_last_error")]
    public static byte* LastError() => lastError is null ? EmptyString : lastError;

    [UnmanagedCallersOnly(EntryPoint = "distalign_model_load")]
    public static int ModelLoad(byte* path, ulong* model) => Guard(() =>
    {
        if (path is null) throw new ArgumentException("path is NULL");
        if (model is null) throw new ArgumentException("model is NULL");
        string file = Marshal.PtrToStringUTF8((nint)path) ?? "";
        var (gpt, spec) = GptCheckpoint.LoadModel(file);
        try
        {
            var tokenizer = Gpt2Tokenizer.FromSpec(spec ?? Gpt2Tokenizer.FullSpec);
            if (tokenizer.VocabSize != gpt.Config.VocabSize)
                throw new CheckpointMismatchException($"{file}: the model has {gpt.Config.VocabSize} tokens, its tokenizer '{tokenizer.Spec}' {tokenizer.VocabSize}");
            ulong handle = (ulong)Interlocked.Increment(ref nextHandle);
            Models[handle] = new Model(gpt, tokenizer);
            *model = handle;
        }
        catch
        {
            gpt.Dispose();
            throw;
        }
    });

    [UnmanagedCallersOnly(EntryPoint = "distalign_model_free")]
    public static int ModelFree(ulong model) => Guard(() =>
    {
        if (!Models.TryRemove(model, out var m)) throw new HandleException(model);
        lock (m.Lock) m.Dispose();
    });

    [UnmanagedCallersOnly(EntryPoint = "distalign_model_info")]
    public static int ModelInfo(ulong model, int* vocabSize, int* context, int* endOfText) => Guard(() =>
    {
        var m = Find(model);
        if (vocabSize is not null) *vocabSize = m.Gpt.Config.VocabSize;
        if (context is not null) *context = m.Gpt.Config.MaxSequenceLength;
        if (endOfText is not null) *endOfText = m.Tokenizer.EndOfText;
    });

    [UnmanagedCallersOnly(EntryPoint = "distalign_tokenize")]
    public static int Tokenize(ulong model, byte* text, int* ids, int capacity, int* count) => Guard(() =>
    {
        var m = Find(model);
        if (text is null) throw new ArgumentException("text is NULL");
        if (count is null) throw new ArgumentException("count is NULL");
        if (capacity < 0) throw new ArgumentException($"capacity is {capacity}, negative");
        if (ids is null && capacity > 0) throw new ArgumentException("ids is NULL but capacity is not 0");
        int[] tokens = m.Tokenizer.Encode(Marshal.PtrToStringUTF8((nint)text) ?? "");
        *count = tokens.Length;
        if (tokens.Length > capacity)
            throw new ArgumentException($"the text has {tokens.Length} tokens, more than the capacity of {capacity} (*count says how many)");
        tokens.CopyTo(new Span<int>(ids, capacity));
    });

    [UnmanagedCallersOnly(EntryPoint = "distalign_score")]
    public static int Score(ulong model, int* prompt, int promptLength, int* response, int responseLength,
                            float* sequenceLogProb, float* tokenLogProbs, float* tokenEntropies) => Guard(() =>
    {
        var m = Find(model);
        if (prompt is null || response is null || sequenceLogProb is null)
            throw new ArgumentException($"{(prompt is null ? "prompt" : response is null ? "response" : "sequence_logprob")} is NULL");
        int context = m.Gpt.Config.MaxSequenceLength, vocab = m.Gpt.Config.VocabSize;
        if (promptLength < 1) throw new ArgumentException($"prompt_length is {promptLength}; a prompt needs at least one token (<|endoftext|>)");
        if (responseLength < 1) throw new ArgumentException($"response_length is {responseLength}; a response needs at least one token");
        if ((long)promptLength + responseLength - 1 > context)
            throw new ArgumentException($"prompt_length {promptLength} + response_length {responseLength} − 1 exceeds the context of {context}");
        int[] p = new ReadOnlySpan<int>(prompt, promptLength).ToArray(), r = new ReadOnlySpan<int>(response, responseLength).ToArray();
        CheckTokens(p, vocab, "prompt");
        CheckTokens(r, vocab, "response");
        SequenceScore score;
        lock (m.Lock)
        {
            if (!Models.ContainsKey(model)) throw new HandleException(model);
            // what `distalign score` computes, so the two agree to the bit
            score = SequenceScorer.Score(m.Policy, [new PromptResponse(p, r)], withEntropies: tokenEntropies is not null)[0];
        }
        *sequenceLogProb = score.LogProb;
        if (tokenLogProbs is not null) score.TokenLogProbs.CopyTo(new Span<float>(tokenLogProbs, responseLength));
        if (tokenEntropies is not null) score.TokenEntropies.CopyTo(new Span<float>(tokenEntropies, responseLength));
    });

    [UnmanagedCallersOnly(EntryPoint = "distalign_sample")]
    public static int Sample(ulong model, int* prompt, int promptLength, int maxNewTokens, float temperature, int topK, float topP,
                             ulong seed, int* tokens, int capacity, int* count) => Guard(() =>
    {
        var m = Find(model);
        if (prompt is null) throw new ArgumentException("prompt is NULL");
        if (count is null) throw new ArgumentException("count is NULL");
        if (promptLength < 1) throw new ArgumentException($"prompt_length is {promptLength}; a prompt needs at least one token (<|endoftext|>)");
        if (capacity < 0 || (tokens is null && capacity > 0)) throw new ArgumentException($"tokens is NULL or capacity {capacity} is negative");
        if (maxNewTokens > capacity) throw new ArgumentException($"max_new_tokens {maxNewTokens} exceeds the capacity of {capacity}");
        int[] p = new ReadOnlySpan<int>(prompt, promptLength).ToArray();
        CheckTokens(p, m.Gpt.Config.VocabSize, "prompt");
        var options = new SamplingOptions(maxNewTokens, temperature, topK, topP, m.Tokenizer.EndOfText).Validate();
        Continuation drawn;
        lock (m.Lock)
        {
            if (!Models.ContainsKey(model)) throw new HandleException(model);
            drawn = m.Policy.Sample([p], options, seed)[0];
        }
        drawn.Tokens.CopyTo(new Span<int>(tokens, capacity));
        *count = drawn.Tokens.Length;
    });

    [UnmanagedCallersOnly(EntryPoint = "distalign_model_save")]
    public static int ModelSave(ulong model, byte* path) => Guard(() =>
    {
        var m = Find(model);
        if (path is null) throw new ArgumentException("path is NULL");
        lock (m.Lock) GptCheckpoint.SaveModel(Marshal.PtrToStringUTF8((nint)path) ?? "", m.Gpt, m.Tokenizer.Spec);
    });

    [UnmanagedCallersOnly(EntryPoint = "distalign_dpo_step")]
    public static int DpoStep(ulong policy, ulong reference, int pairs,
                              int* prompts, int* promptOffsets, int* chosen, int* chosenOffsets, int* rejected, int* rejectedOffsets,
                              float beta, float learningRate, float maxGradNorm, int step, float* loss) => Guard(() =>
    {
        var p = Find(policy);
        var r = Find(reference);
        if (ReferenceEquals(p, r)) throw new ArgumentException("policy and reference are the same model: load the reference separately");
        if (loss is null) throw new ArgumentException("loss is NULL");
        if (pairs < 1) throw new ArgumentException($"pairs is {pairs}; a step needs at least one pair");
        if (p.Gpt.Config != r.Gpt.Config) throw new ArgumentException($"the reference's config {r.Gpt.Config} differs from the policy's {p.Gpt.Config}");
        if (!(beta > 0) || !float.IsFinite(beta)) throw new ArgumentException($"beta is {beta}; it must be a positive number");
        if (!(learningRate > 0) || !float.IsFinite(learningRate)) throw new ArgumentException($"learning_rate is {learningRate}; it must be a positive number");
        if (!(maxGradNorm >= 0) || !float.IsFinite(maxGradNorm)) throw new ArgumentException($"max_grad_norm is {maxGradNorm}; it must be ≥ 0");
        if (step < 1) throw new ArgumentException($"step is {step}; steps count from 1");
        int vocab = p.Gpt.Config.VocabSize, context = p.Gpt.Config.MaxSequenceLength;
        var promptTokens = Slices(prompts, promptOffsets, pairs, "prompts");
        var chosenTokens = Slices(chosen, chosenOffsets, pairs, "chosen");
        var rejectedTokens = Slices(rejected, rejectedOffsets, pairs, "rejected");
        var data = new List<PreferencePair>(pairs);
        for (int i = 0; i < pairs; i++)
        {
            foreach (var (tokens, what) in new[] { (promptTokens[i], "prompt"), (chosenTokens[i], "chosen"), (rejectedTokens[i], "rejected") })
            {
                if (tokens.Length == 0) throw new ArgumentException($"pair {i}: the {what} is empty");
                CheckTokens(tokens, vocab, $"pair {i} {what}");
            }
            int longest = promptTokens[i].Length + Math.Max(chosenTokens[i].Length, rejectedTokens[i].Length) - 1;
            if (longest > context) throw new ArgumentException($"pair {i}: prompt + response − 1 = {longest} tokens exceed the context of {context}");
            data.Add(new PreferencePair(promptTokens[i], chosenTokens[i], rejectedTokens[i]));
        }
        var objective = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: beta));
        lock (p.Lock)
        lock (r.Lock)
        {
            if (!Models.ContainsKey(policy)) throw new HandleException(policy);
            if (!Models.ContainsKey(reference)) throw new HandleException(reference);
            var referenceLogProbs = OfflinePreferenceObjective.ReferenceLogProbs(r.Policy, data);
            p.Policy.ZeroGradients();
            var metrics = objective.Accumulate(p.Policy, data, referenceLogProbs, null, (ulong)step);
            double norm = p.Policy.ClipGradients(maxGradNorm);
            if (!double.IsFinite(metrics.Loss) || !double.IsFinite(norm))
                throw new InvalidOperationException($"step {step}: the loss ({metrics.Loss}) or the gradient norm ({norm}) is not finite; the weights are unchanged");
            p.Policy.OptimizerStep(step, learningRate);
            *loss = (float)metrics.Loss;
        }
    });

    // The pairs' token lists of one flat array: offsets [pairs + 1], 0 first, non-decreasing; the last is the array's length.
    private static int[][] Slices(int* values, int* offsets, int pairs, string what)
    {
        if (values is null) throw new ArgumentException($"{what} is NULL");
        if (offsets is null) throw new ArgumentException($"{what} offsets are NULL");
        if (offsets[0] != 0) throw new ArgumentException($"{what} offsets[0] is {offsets[0]}; it must be 0");
        var result = new int[pairs][];
        for (int i = 0; i < pairs; i++)
        {
            int start = offsets[i], end = offsets[i + 1];
            if (end < start) throw new ArgumentException($"{what} offsets[{i + 1}] = {end} is below offsets[{i}] = {start}");
            result[i] = new ReadOnlySpan<int>(values + start, end - start).ToArray();
        }
        return result;
    }

    private static void CheckTokens(int[] tokens, int vocab, string what)
    {
        for (int i = 0; i < tokens.Length; i++)
            if ((uint)tokens[i] >= (uint)vocab)
                throw new ArgumentException($"{what}[{i}] is {tokens[i]}, outside the vocabulary of {vocab}");
    }

    private static Model Find(ulong handle) => Models.TryGetValue(handle, out var m) ? m : throw new HandleException(handle);

    private sealed class HandleException(ulong handle) : Exception($"model handle {handle} is not a live model (never loaded, or freed)");

    // Runs an entry point's body: OK and an empty last error, or the error's status and message.
    private static int Guard(Action body)
    {
        try
        {
            body();
            SetLastError("");
            return Ok;
        }
        catch (Exception e)
        {
            int status = e switch
            {
                HandleException => HandleError,
                ArgumentException => ArgumentError,
                SafeTensorsFormatException or CheckpointMismatchException or FormatException => FormatError,
                IOException or UnauthorizedAccessException => IoError,
                _ => InternalError,
            };
            try { SetLastError(e.Message); } catch { /* out of memory for the message: the status still says it */ }
            return status;
        }
    }

    private static void SetLastError(string message)
    {
        if (lastError is not null) NativeMemory.Free(lastError);
        lastError = null;
        if (message.Length == 0) return;
        int n = Encoding.UTF8.GetByteCount(message);
        var buffer = (byte*)NativeMemory.Alloc((nuint)n + 1);
        Encoding.UTF8.GetBytes(message, new Span<byte>(buffer, n));
        buffer[n] = 0;
        lastError = buffer;
    }
}
