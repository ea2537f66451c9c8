using System.Runtime.InteropServices;
using System.Text;
using DistAlign.Native;

namespace DistAlign.Tests.Native;

/// <summary>
/// The exports of include/distalign.h called as a C host calls them: through unmanaged function pointers to the
/// <c>[UnmanagedCallersOnly]</c> entry points, with pinned managed arrays as the caller's buffers (a null array is NULL).
/// </summary>
internal static unsafe class CAbiCalls
{
    public const int Ok = 0, ArgumentError = 1, IoError = 2, FormatError = 3, HandleError = 4, InternalError = 5;

    public static string LastError() => Marshal.PtrToStringUTF8((nint)((delegate* unmanaged<byte*>)&CAbi.LastError)()) ?? "<null>";

    public static byte[] Utf8(string text) => [.. Encoding.UTF8.GetBytes(text), 0];

    public static int Load(string path, out ulong model)
    {
        ulong handle = 0;
        int status;
        fixed (byte* p = Utf8(path)) status = ((delegate* unmanaged<byte*, ulong*, int>)&CAbi.ModelLoad)(p, &handle);
        model = handle;
        return status;
    }

    public static int Free(ulong model) => ((delegate* unmanaged<ulong, int>)&CAbi.ModelFree)(model);

    public static int Save(ulong model, byte[]? pathUtf8)
    {
        fixed (byte* p = pathUtf8) return ((delegate* unmanaged<ulong, byte*, int>)&CAbi.ModelSave)(model, p);
    }

    public static int Save(ulong model, string path) => Save(model, Utf8(path));

    public static int Score(ulong model, int[]? prompt, int promptLength, int[]? response, int responseLength, bool withSum,
                            float[]? logProbs, float[]? entropies, out float sum)
    {
        float total = float.NaN;
        int status;
        fixed (int* p = prompt) fixed (int* r = response) fixed (float* l = logProbs) fixed (float* e = entropies)
            status = ((delegate* unmanaged<ulong, int*, int, int*, int, float*, float*, float*, int>)&CAbi.Score)(
                model, p, promptLength, r, responseLength, withSum ? &total : null, l, e);
        sum = total;
        return status;
    }

    public static int DpoStep(ulong policy, ulong reference, int pairs, int[]? prompts, int[]? promptOffsets, int[]? chosen, int[]? chosenOffsets,
                              int[]? rejected, int[]? rejectedOffsets, float beta, float learningRate, float clip, int step, out float loss,
                              bool withLoss = true)
    {
        float value = float.NaN;
        int status;
        fixed (int* p = prompts) fixed (int* po = promptOffsets) fixed (int* c = chosen) fixed (int* co = chosenOffsets)
        fixed (int* r = rejected) fixed (int* ro = rejectedOffsets)
            status = ((delegate* unmanaged<ulong, ulong, int, int*, int*, int*, int*, int*, int*, float, float, float, int, float*, int>)&CAbi.DpoStep)(
                policy, reference, pairs, p, po, c, co, r, ro, beta, learningRate, clip, step, withLoss ? &value : null);
        loss = value;
        return status;
    }

    public static int SftStep(ulong model, int sequences, int[]? prompts, int[]? promptOffsets, int[]? responses, int[]? responseOffsets,
                              float learningRate, float clip, int step, out float loss, bool withLoss = true)
    {
        float value = float.NaN;
        int status;
        fixed (int* p = prompts) fixed (int* po = promptOffsets) fixed (int* r = responses) fixed (int* ro = responseOffsets)
            status = ((delegate* unmanaged<ulong, int, int*, int*, int*, int*, float, float, int, float*, int>)&CAbi.SftStep)(
                model, sequences, p, po, r, ro, learningRate, clip, step, withLoss ? &value : null);
        loss = value;
        return status;
    }

    /// <summary>The KL term's arguments of the PMLE and distillation steps (β = 0: none).</summary>
    public readonly record struct Kl(float Beta, int Samples, int MaxTokens, ulong Seed)
    {
        public static readonly Kl None = new(0f, 0, 0, 0);
    }

    public static int PmleStep(ulong policy, ulong reference, int pairs, int[]? prompts, int[]? promptOffsets, int[]? chosen, int[]? chosenOffsets,
                               int[]? rejected, int[]? rejectedOffsets, float gamma, Kl kl, float learningRate, float clip, int step,
                               out float loss, out float klEstimate, bool withLoss = true)
    {
        float value = float.NaN, estimate = float.NaN;
        int status;
        fixed (int* p = prompts) fixed (int* po = promptOffsets) fixed (int* c = chosen) fixed (int* co = chosenOffsets)
        fixed (int* r = rejected) fixed (int* ro = rejectedOffsets)
            status = ((delegate* unmanaged<ulong, ulong, int, int*, int*, int*, int*, int*, int*, float, float, int, int, ulong, float, float, int, float*, float*, int>)&CAbi.PmleStep)(
                policy, reference, pairs, p, po, c, co, r, ro, gamma, kl.Beta, kl.Samples, kl.MaxTokens, kl.Seed, learningRate, clip, step,
                withLoss ? &value : null, &estimate);
        loss = value;
        klEstimate = estimate;
        return status;
    }

    public static int DistillStep(ulong policy, ulong reference, int pairs, int[]? prompts, int[]? promptOffsets, int[]? first, int[]? firstOffsets,
                                  int[]? second, int[]? secondOffsets, float[]? labels, float gamma, Kl kl, float learningRate, float clip, int step,
                                  out float loss, out float klEstimate, bool withLoss = true)
    {
        float value = float.NaN, estimate = float.NaN;
        int status;
        fixed (int* p = prompts) fixed (int* po = promptOffsets) fixed (int* a = first) fixed (int* ao = firstOffsets)
        fixed (int* b = second) fixed (int* bo = secondOffsets) fixed (float* l = labels)
            status = ((delegate* unmanaged<ulong, ulong, int, int*, int*, int*, int*, int*, int*, float*, float, float, int, int, ulong, float, float, int, float*, float*, int>)&CAbi.DistillStep)(
                policy, reference, pairs, p, po, a, ao, b, bo, l, gamma, kl.Beta, kl.Samples, kl.MaxTokens, kl.Seed, learningRate, clip, step,
                withLoss ? &value : null, &estimate);
        loss = value;
        klEstimate = estimate;
        return status;
    }

    public static int Tokenize(ulong model, byte[]? textUtf8, int[]? ids, int capacity, bool withCount, out int count)
    {
        int n = -1, status;
        fixed (byte* t = textUtf8) fixed (int* i = ids)
            status = ((delegate* unmanaged<ulong, byte*, int*, int, int*, int>)&CAbi.Tokenize)(model, t, i, capacity, withCount ? &n : null);
        count = n;
        return status;
    }

    public static int Sample(ulong model, int[]? prompt, int promptLength, int maxNewTokens, float temperature, int topK, float topP, ulong seed,
                             int[]? tokens, int capacity, bool withCount, out int count)
    {
        int n = -1, status;
        fixed (int* p = prompt) fixed (int* t = tokens)
            status = ((delegate* unmanaged<ulong, int*, int, int, float, int, float, ulong, int*, int, int*, int>)&CAbi.Sample)(
                model, p, promptLength, maxNewTokens, temperature, topK, topP, seed, t, capacity, withCount ? &n : null);
        count = n;
        return status;
    }

    public static int ModelInfo(ulong model, bool withVocab, bool withContext, bool withEndOfText, out int vocab, out int context, out int endOfText)
    {
        int v = -1, c = -1, e = -1;
        int status = ((delegate* unmanaged<ulong, int*, int*, int*, int>)&CAbi.ModelInfo)(model, withVocab ? &v : null, withContext ? &c : null,
                                                                                          withEndOfText ? &e : null);
        (vocab, context, endOfText) = (v, c, e);
        return status;
    }

    /// <summary>Offsets [0, n₀, n₀+n₁, …] of lists of the given lengths.</summary>
    public static int[] Offsets(params int[] lengths)
    {
        var offsets = new int[lengths.Length + 1];
        for (int i = 0; i < lengths.Length; i++) offsets[i + 1] = offsets[i] + lengths[i];
        return offsets;
    }
}
