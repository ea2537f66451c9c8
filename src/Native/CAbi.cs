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

    [UnmanagedCallersOnly(EntryPoint = "distalign_sft_step")]
    public static int SftStep(ulong model, int sequences, int* prompts, int* promptOffsets, int* responses, int* responseOffsets,
                              float learningRate, float maxGradNorm, int step, float* loss) => Guard(() =>
    {
        var (m, _) = StepModels(model, 0, needsReference: false);
        if (loss is null) throw new ArgumentException("loss is NULL");
        if (sequences < 1) throw new ArgumentException($"sequences is {sequences}; a step needs at least one sequence");
        CheckOptimizer(learningRate, maxGradNorm, step);
        var p = TokenLists(m, sequences, prompts, "prompts", promptOffsets, "prompt_offsets");
        var r = TokenLists(m, sequences, responses, "responses", responseOffsets, "response_offsets");
        var batch = new List<PromptResponse>(sequences);
        for (int i = 0; i < sequences; i++)
        {
            CheckFits(m, p[i].Length + r[i].Length - 1, $"sequence {i}");
            batch.Add(new PromptResponse(p[i], r[i]));
        }
        var objective = new SftObjective();
        var result = TrainingStep(model, m, 0, null, learningRate, maxGradNorm, step, () => (objective.Accumulate(m.Policy, batch).Loss, 0));
        *loss = (float)result.Loss;
    });

    [UnmanagedCallersOnly(EntryPoint = "distalign_dpo_step")]
    public static int DpoStep(ulong policy, ulong reference, int pairs,
                              int* prompts, int* promptOffsets, int* chosen, int* chosenOffsets, int* rejected, int* rejectedOffsets,
                              float beta, float learningRate, float maxGradNorm, int step, float* loss) => Guard(() =>
    {
        var (p, r) = StepModels(policy, reference, needsReference: true);
        if (loss is null) throw new ArgumentException("loss is NULL");
        if (pairs < 1) throw new ArgumentException($"pairs is {pairs}; a step needs at least one pair");
        CheckPositive(beta, "beta");
        CheckOptimizer(learningRate, maxGradNorm, step);
        var data = Pairs(p, pairs, prompts, promptOffsets, chosen, chosenOffsets, "chosen", rejected, rejectedOffsets, "rejected");
        var objective = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: beta));
        var result = TrainingStep(policy, p, reference, r, learningRate, maxGradNorm, step, () =>
        {
            var referenceLogProbs = OfflinePreferenceObjective.ReferenceLogProbs(r!.Policy, data);
            var metrics = objective.Accumulate(p.Policy, data, referenceLogProbs, null, (ulong)step);
            return (metrics.Loss, metrics.KlEstimate);
        });
        *loss = (float)result.Loss;
    });

    [UnmanagedCallersOnly(EntryPoint = "distalign_pmle_step")]
    public static int PmleStep(ulong policy, ulong reference, int pairs,
                               int* prompts, int* promptOffsets, int* chosen, int* chosenOffsets, int* rejected, int* rejectedOffsets,
                               float gamma, float klBeta, int klSamples, int klMaxTokens, ulong seed,
                               float learningRate, float maxGradNorm, int step, float* loss, float* kl) => Guard(() =>
    {
        var (p, r) = StepModels(policy, reference, needsReference: false);
        if (loss is null) throw new ArgumentException("loss is NULL");
        if (pairs < 1) throw new ArgumentException($"pairs is {pairs}; a step needs at least one pair");
        CheckPositive(gamma, "gamma");
        var regularizer = KlTerm(p, r, klBeta, klSamples, klMaxTokens);
        CheckOptimizer(learningRate, maxGradNorm, step);
        var data = Pairs(p, pairs, prompts, promptOffsets, chosen, chosenOffsets, "chosen", rejected, rejectedOffsets, "rejected");
        var objective = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.Pmle, Gamma: gamma), regularizer);
        var result = TrainingStep(policy, p, reference, r, learningRate, maxGradNorm, step, () =>
        {
            var metrics = objective.Accumulate(p.Policy, data, default, r?.Policy, seed);
            return (metrics.Loss, metrics.KlEstimate);
        });
        *loss = (float)result.Loss;
        if (kl is not null) *kl = (float)result.Kl;
    });

    [UnmanagedCallersOnly(EntryPoint = "distalign_distill_step")]
    public static int DistillStep(ulong policy, ulong reference, int pairs,
                                  int* prompts, int* promptOffsets, int* first, int* firstOffsets, int* second, int* secondOffsets, float* labels,
                                  float gamma, float klBeta, int klSamples, int klMaxTokens, ulong seed,
                                  float learningRate, float maxGradNorm, int step, float* loss, float* kl) => Guard(() =>
    {
        var (p, r) = StepModels(policy, reference, needsReference: false);
        if (loss is null) throw new ArgumentException("loss is NULL");
        if (pairs < 1) throw new ArgumentException($"pairs is {pairs}; a step needs at least one pair");
        if (labels is null) throw new ArgumentException("labels is NULL");
        CheckPositive(gamma, "gamma");
        var regularizer = KlTerm(p, r, klBeta, klSamples, klMaxTokens);
        CheckOptimizer(learningRate, maxGradNorm, step);
        float[] softLabels = new ReadOnlySpan<float>(labels, pairs).ToArray();
        for (int i = 0; i < pairs; i++)
            if (!(softLabels[i] >= 0f && softLabels[i] <= 1f))
                throw new ArgumentException($"labels[{i}] is {softLabels[i]}; a soft label is a probability in [0, 1]");
        var data = Pairs(p, pairs, prompts, promptOffsets, first, firstOffsets, "first", second, secondOffsets, "second");
        var objective = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.Distillation, Gamma: gamma), regularizer);
        var result = TrainingStep(policy, p, reference, r, learningRate, maxGradNorm, step, () =>
        {
            var metrics = objective.Accumulate(p.Policy, data, default, r?.Policy, seed, softLabels);
            return (metrics.Loss, metrics.KlEstimate);
        });
        *loss = (float)result.Loss;
        if (kl is not null) *kl = (float)result.Kl;
    });

    // The models of a step: the policy, and the reference (required, or when `reference` is not 0): a live model other than
    // the policy, of the same config.
    private static (Model Policy, Model? Reference) StepModels(ulong policy, ulong reference, bool needsReference)
    {
        var p = Find(policy);
        if (reference == 0 && !needsReference) return (p, null);
        var r = Find(reference);
        if (ReferenceEquals(p, r)) throw new ArgumentException("policy and reference are the same model: load the reference separately");
        if (p.Gpt.Config != r.Gpt.Config) throw new ArgumentException($"the reference's config {r.Gpt.Config} differs from the policy's {p.Gpt.Config}");
        return (p, r);
    }

    // β·KL(π ‖ π0) from kl_samples fresh samples per distinct prompt (OfflinePreferenceObjective's regulariser), or none for β = 0.
    private static KlRegularizer? KlTerm(Model policy, Model? reference, float klBeta, int klSamples, int klMaxTokens)
    {
        if (!(klBeta >= 0) || !float.IsFinite(klBeta)) throw new ArgumentException($"kl_beta is {klBeta}; it must be ≥ 0 (0 = no KL term)");
        if (klBeta == 0) return null;
        if (reference is null) throw new ArgumentException($"reference is 0, but kl_beta {klBeta} > 0 needs the frozen reference π0 for the KL term");
        if (klSamples < 2 || klSamples > MaxKlSamples)
            throw new ArgumentException($"kl_samples is {klSamples}; the KL estimate's leave-one-out baseline needs 2 to {MaxKlSamples} samples per prompt");
        int context = policy.Gpt.Config.MaxSequenceLength;
        if (klMaxTokens < 1 || klMaxTokens > context)
            throw new ArgumentException($"kl_max_tokens is {klMaxTokens}; a KL sample has 1 to {context} (the context) tokens");
        return new KlRegularizer(klBeta, klSamples, klMaxTokens, policy.Tokenizer.EndOfText);
    }

    private const int MaxKlSamples = 1024;

    private static void CheckPositive(float value, string name)
    {
        if (!(value > 0) || !float.IsFinite(value)) throw new ArgumentException($"{name} is {value}; it must be a positive number");
    }

    private static void CheckOptimizer(float learningRate, float maxGradNorm, int step)
    {
        CheckPositive(learningRate, "learning_rate");
        if (!(maxGradNorm >= 0) || !float.IsFinite(maxGradNorm)) throw new ArgumentException($"max_grad_norm is {maxGradNorm}; it must be ≥ 0");
        if (step < 1) throw new ArgumentException($"step is {step}; steps count from 1");
    }

    // `pairs` preference pairs of flat arrays with offsets (see TokenLists); each prompt + response − 1 fits the context.
    private static List<PreferencePair> Pairs(Model m, int pairs, int* prompts, int* promptOffsets,
                                              int* a, int* aOffsets, string aName, int* b, int* bOffsets, string bName)
    {
        var p = TokenLists(m, pairs, prompts, "prompts", promptOffsets, "prompt_offsets");
        var x = TokenLists(m, pairs, a, aName, aOffsets, $"{aName}_offsets");
        var y = TokenLists(m, pairs, b, bName, bOffsets, $"{bName}_offsets");
        var data = new List<PreferencePair>(pairs);
        for (int i = 0; i < pairs; i++)
        {
            CheckFits(m, p[i].Length + Math.Max(x[i].Length, y[i].Length) - 1, $"pair {i}");
            data.Add(new PreferencePair(p[i], x[i], y[i]));
        }
        return data;
    }

    private static void CheckFits(Model m, int tokens, string what)
    {
        int context = m.Gpt.Config.MaxSequenceLength;
        if (tokens > context) throw new ArgumentException($"{what}: prompt + response − 1 = {tokens} tokens exceed the context of {context}");
    }

    // `count` token lists of one flat array: `offsets` holds count + 1 entries, 0 first, each list from 1 to context tokens
    // (offsets[i] < offsets[i+1] ≤ offsets[i] + context), so the last offset is the array's length. The offsets are copied and
    // checked before any token is read: a wrong offset is an error, never a read past the array.
    private static int[][] TokenLists(Model m, int count, int* values, string name, int* offsets, string offsetsName)
    {
        if (values is null) throw new ArgumentException($"{name} is NULL");
        if (offsets is null) throw new ArgumentException($"{offsetsName} is NULL");
        int context = m.Gpt.Config.MaxSequenceLength, vocab = m.Gpt.Config.VocabSize;
        int[] o = new ReadOnlySpan<int>(offsets, count + 1).ToArray();
        if (o[0] != 0) throw new ArgumentException($"{offsetsName}[0] is {o[0]}; it must be 0");
        for (int i = 0; i < count; i++)
        {
            long length = (long)o[i + 1] - o[i];
            if (length < 0) throw new ArgumentException($"{offsetsName}[{i + 1}] = {o[i + 1]} is below {offsetsName}[{i}] = {o[i]}");
            if (length == 0) throw new ArgumentException($"{name} {i} is empty ({offsetsName}[{i}] = {offsetsName}[{i + 1}] = {o[i]})");
            if (length > context)
                throw new ArgumentException($"{name} {i} would have {length} tokens ({offsetsName}[{i}] = {o[i]}, [{i + 1}] = {o[i + 1]}), more than the context of {context}");
        }
        var lists = new int[count][];
        for (int i = 0; i < count; i++)
        {
            lists[i] = new ReadOnlySpan<int>(values + o[i], o[i + 1] - o[i]).ToArray();
            for (int j = 0; j < lists[i].Length; j++)
                if ((uint)lists[i][j] >= (uint)vocab)
                    throw new ArgumentException($"{name}[{o[i] + j}] (token {j} of {name} {i}) is {lists[i][j]}, outside the vocabulary of {vocab}");
        }
        return lists;
    }

    // One optimizer step of the policy, as a managed trainer takes it: zero the gradients, add the objective's (`accumulate`
    // returns the mean loss and the KL estimate), clip the global norm to max_grad_norm (0 = none), one AdamW step. Runs under
    // the policy's and the reference's locks, taken in handle order (two steps that swap the roles cannot deadlock), after
    // checking that neither was freed meanwhile. A non-finite loss or norm leaves the weights and the AdamW moments unchanged.
    private static (double Loss, double Kl) TrainingStep(ulong policy, Model p, ulong reference, Model? r,
                                                         float learningRate, float maxGradNorm, int step, Func<(double Loss, double Kl)> accumulate)
    {
        object firstLock = r is null || policy < reference ? p.Lock : r.Lock;
        object? secondLock = r is null ? null : ReferenceEquals(firstLock, p.Lock) ? r.Lock : p.Lock;
        lock (firstLock)
        {
            if (secondLock is null) return Locked();
            lock (secondLock) return Locked();
        }

        (double, double) Locked()
        {
            if (!Models.ContainsKey(policy)) throw new HandleException(policy);
            if (r is not null && !Models.ContainsKey(reference)) throw new HandleException(reference);
            p.Policy.ZeroGradients();
            var result = accumulate();
            double norm = p.Policy.ClipGradients(maxGradNorm);
            if (!double.IsFinite(result.Loss) || !double.IsFinite(norm))
                throw new InvalidOperationException($"step {step}: the loss ({result.Loss}) or the gradient norm ({norm}) is not finite; the weights are unchanged");
            p.Policy.OptimizerStep(step, learningRate);
            return result;
        }
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
