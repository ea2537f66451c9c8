using DistAlign.Kernels.Cpu;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// The fused LM head on ILGPU views: the GPU form of <see cref="SequenceLogProbs"/>, same arguments (views
/// instead of spans), same math, same += semantics for ∂h and ∂E. Chunked like the CPU op, but sized for a GPU:
/// a chunk is as many rows as the scratch holds (thousands for GPT-2: see <see cref="ScratchLength"/>), split
/// evenly over the chunks (<see cref="ChunkRows"/>), so each logits GEMM is one large call. Each chunk's logits are
/// stored with a padded row stride (leading dimension) Vp = <see cref="RowStride"/> = V rounded up to a multiple of
/// <see cref="RowAlignment"/> (50,304 for GPT-2's 50,257), so every row starts 256-byte aligned and cuBLAS can
/// use its fast kernels. Two GEMM paths, chosen once from the GEMM given (<see cref="UsesBFloat16Operands"/>):
/// <para>
/// fp32 operands (any <see cref="IGemm"/>, e.g. <see cref="GpuTiledGemm"/> or cuBLAS in fp32/TF32): only the V real
/// columns are ever computed, read or written — the padding columns of the scratch are never touched. Per chunk of rows:
/// </para>
/// <list type="bullet">
/// <item>logits = h·Eᵀ into the scratch (<see cref="IGemm"/>, β = 0, n = V, ldc = Vp: writes the V real columns only);</item>
/// <item>log-probs and the saved log-sum-exp by <see cref="GpuTargetLogProbs.Forward(ArrayView{float}, ArrayView{int}, int, int, ArrayView{float}, ArrayView{float})"/>
/// (on CUDA with NVRTC, by <see cref="NvrtcTargetLogProbs"/>'s kernel: 16-byte loads, the same contract);</item>
/// <item>optional entropies by <see cref="EntropyKernel"/>: one group per row, each thread sums
/// −p·ln p = −exp(x − lse)·(x − lse) over its strided share, then a fixed shared-memory tree (no atomics);
/// summing −p·ln p rather than lse − Σ p·x avoids cancelling two large numbers;</item>
/// <item>backward: d(logits) in place over the real columns — <see cref="GpuTargetLogProbs.Backward(ArrayView{float}, ArrayView{int}, int, int, ArrayView{float}, ArrayView{float})"/>
/// without an entropy gradient, otherwise <see cref="GradientKernel"/> (one thread per logit):
/// a·(1[v = t] − p) − b·p·(ln p + H), 0 on rows with target −1 — then ∂h += dlogits·E (k = V, lda = Vp) and
/// ∂E += dlogitsᵀ·h (m = V, lda = Vp): both GEMMs read columns 0 … V−1 of each row only (β = 1).</item>
/// </list>
/// <para>
/// bf16 operands (an <see cref="IBFloat16Gemm"/> whose fp32 GEMM rounds its inputs to bf16 anyway: <see cref="CublasGemm"/>
/// with <see cref="GemmPrecision.BFloat16"/>), the vocabulary padded as llm.c pads it, so no GEMM has the odd V as its
/// n or k: once per call E [V, C] is rounded (<see cref="GpuBFloat16"/>, to nearest even) into a table [Vp, C] owned by
/// this op whose rows V … Vp−1 are zeroed; per chunk the hidden rows are rounded to bf16 (owned scratch), then
/// logits = h·Eᵀ with n = Vp (<see cref="IBFloat16Gemm.MultiplyBFloat16"/>, fp32 logits, fp32 accumulation, β = 0):
/// the padding columns of the scratch ARE written by this forward GEMM, with exact zeros (zero rows of the table; a
/// non-finite hidden value makes its whole row non-finite anyway), and the log-softmax and entropy kernels still read
/// the V real columns only. The backward writes d(logits) rounded to bf16 into an owned [rows, Vp] buffer in one pass
/// (<see cref="GpuTargetLogProbs.BackwardToBFloat16"/> or <see cref="GradientToBFloat16Kernel"/>), every element
/// including the padding columns, as 0, before any GEMM reads it; then ∂h += dlogits·E with k = Vp (the padding: 0 × 0)
/// and ∂E += dlogitsᵀ·h with m = V (real columns only, straight into the fp32 [V, C] gradient, β = 1). No value a
/// GEMM reads in the padding can be NaN or Inf, whatever the scratch or the owned buffers held before the call.
/// </para>
/// ForwardBackward runs the same kernels in the same order as Forward followed by Backward but
/// with one logits GEMM per chunk, so the two paths agree bit for bit. Every reduction has a fixed order
/// (the GEMM sums k ascending per element, row reductions are trees over a group size fixed per accelerator),
/// so results are bit-identical run to run on one device. ∂E sums over chunks in chunk order (β = 1), so its
/// rounding depends on the chunk size; log-probs, log-sum-exp, entropies and ∂h do not, and on the fp32 path none
/// depends on the row stride (the same products and sums in the same order).
/// Targets and sequence ids are not range-checked on the device (the data pipeline must; the CPU op checks).
/// All work is queued on the accelerator's default stream; nothing synchronises (<see cref="Profiler"/> may).
/// </summary>
public sealed class GpuSequenceLogProbs : IDisposable
{
    private readonly Accelerator accelerator;
    private readonly IGemm gemm;
    private readonly GpuTargetLogProbs targetLogProbs;
    private readonly NvrtcTargetLogProbs? nvrtc;   // CUDA with NVRTC: the log-softmax forward and the bf16 d(logits) (owned)
    private readonly int groupSize;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> dummy;     // stands in for an absent or empty float view
    private readonly MemoryBuffer1D<int, Stride1D.Dense> dummyInt;    // stands in for an absent or empty int view
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, int, int, ArrayView<float>, ArrayView<float>> entropy;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, int, int, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>> gradient;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<int>> sum;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, int, int, ArrayView<float>> scatter;
    // The bf16 path (null on the fp32 path): the GEMM, the converter, the d(logits) kernel and the owned bf16 buffers
    // (the padded table [Vp, C], one chunk of hidden rows [rows, C], one chunk of d(logits) [rows, Vp]), grown on demand.
    private readonly IBFloat16Gemm? bf16Gemm;
    private readonly GpuBFloat16? toBFloat16;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, int, int, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<ushort>>? gradientToBFloat16;
    private MemoryBuffer1D<ushort, Stride1D.Dense>? tableBf16, hiddenBf16, dLogitsBf16;

    /// <summary>Loads the kernels on <paramref name="accelerator"/>; the GEMMs and target log-probs are the given ops (same accelerator).
    /// The GEMMs run on bf16 operands when <paramref name="gemm"/> is an <see cref="IBFloat16Gemm"/> that
    /// <see cref="IBFloat16Gemm.RoundsOperandsToBFloat16"/> (see the class remarks), on fp32 operands otherwise.
    /// With <paramref name="nvrtc"/> (CUDA, <see cref="NvrtcTargetLogProbs.TryCreate"/>; owned from then on) the log-softmax
    /// forward and, on the bf16 path without an entropy gradient, d(logits) run as its CUDA C kernels (16-byte accesses)
    /// instead of the ILGPU ones; the entropy kernels and the fp32 in-place backward stay ILGPU's.</summary>
    public GpuSequenceLogProbs(Accelerator accelerator, IGemm gemm, GpuTargetLogProbs targetLogProbs, NvrtcTargetLogProbs? nvrtc = null)
    {
        this.accelerator = accelerator;
        this.gemm = gemm;
        this.targetLogProbs = targetLogProbs;
        this.nvrtc = nvrtc;
        groupSize = GpuLaunch.ReductionGroupSize(accelerator);
        dummy = accelerator.Allocate1D<float>(1);
        dummyInt = accelerator.Allocate1D<int>(1);
        entropy = accelerator.LoadKernel<ArrayView<float>, ArrayView<int>, int, int, ArrayView<float>, ArrayView<float>>(EntropyKernel);
        gradient = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, int, int, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(GradientKernel);
        sum = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<int>>(SumBySequenceKernel);
        scatter = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, int, int, ArrayView<float>>(ScatterBySequenceKernel);
        if (gemm is IBFloat16Gemm { RoundsOperandsToBFloat16: true } bf16)
        {
            bf16Gemm = bf16;
            toBFloat16 = new GpuBFloat16(accelerator);
            gradientToBFloat16 = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, int, int, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<ushort>>(GradientToBFloat16Kernel);
        }
    }

    /// <summary>Whether the GEMMs run on bf16 copies of their operands with the vocabulary padded to Vp (see the class remarks).</summary>
    public bool UsesBFloat16Operands => bf16Gemm is not null;

    /// <summary>
    /// Optional sub-op timing hook, null by default: when set, it is called after each step of Forward, Backward and
    /// ForwardBackward with the step's name — <c>"lm head convert"</c> (bf16 copies of E and of a chunk's hidden rows),
    /// <c>"lm head gemm fwd"</c>, <c>"lm head softmax fwd"</c> (log-probs, log-sum-exp, entropies),
    /// <c>"lm head softmax bwd"</c> (d(logits)), <c>"lm head gemm dh"</c>, <c>"lm head gemm dE"</c> — once per chunk
    /// (the table conversion once per call). The work is queued, not finished: a profiler that wants device time
    /// synchronises in the callback (GpuGpt's OpProfile laps do).
    /// </summary>
    public Action<string>? Profiler { get; set; }

    private void Lap(string step) => Profiler?.Invoke(step);

    /// <summary>Logits rows are padded to a multiple of this many floats (256 bytes, as llm.c pads GPT-2's vocabulary).</summary>
    public const int RowAlignment = 64;

    /// <summary>The default cap on the logits scratch: 256 Mi floats (1 GiB), 5,336 rows of GPT-2's padded vocabulary.</summary>
    public const long DefaultScratchFloats = 1L << 28;

    /// <summary>The row stride of the logits scratch: <paramref name="vocab"/> rounded up to a multiple of <see cref="RowAlignment"/>.</summary>
    public static int RowStride(int vocab)
    {
        GpuLaunch.CheckPositive(vocab, nameof(vocab));
        long padded = ((long)vocab + RowAlignment - 1) / RowAlignment * RowAlignment;
        return padded <= int.MaxValue ? (int)padded : vocab;
    }

    /// <summary>
    /// Floats of scratch to allocate for <paramref name="rows"/> positions: as many whole padded rows as fit in
    /// <paramref name="maxFloats"/> (at least one row), and no more rows than needed.
    /// </summary>
    public static long ScratchLength(int rows, int vocab, long maxFloats = DefaultScratchFloats)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        int stride = RowStride(vocab);
        return (long)ChunkRows(rows, vocab, Math.Max(maxFloats, stride)) * stride;
    }

    /// <summary>
    /// Rows per chunk for <paramref name="rows"/> positions in a scratch of <paramref name="scratchLength"/> floats:
    /// the fewest chunks the scratch allows (and 32-bit indexing: a chunk holds at most 2³¹−1 floats), with the rows
    /// split evenly over them (16,384 rows of GPT-2 in the default scratch, 5,336 rows: 4 chunks of 4,096). 1 when rows = 0.
    /// </summary>
    public static int ChunkRows(int rows, int vocab, long scratchLength)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        int stride = RowStride(vocab);
        long fit = Math.Min(scratchLength, int.MaxValue) / stride;
        if (fit < 1) throw new ArgumentException($"scratch of {scratchLength} floats holds no row of {stride} floats (V = {vocab} padded).", nameof(scratchLength));
        if (rows <= fit) return Math.Max(rows, 1);
        long chunks = (rows + fit - 1) / fit;
        return (int)((rows + chunks - 1) / chunks);
    }

    /// <summary>
    /// Per-token log-probs, saved log-sum-exp and (when <paramref name="entropy"/> is non-empty) entropies.
    /// <paramref name="scratch"/> holds at least one padded row (<see cref="ScratchLength"/> sizes it); its size sets the chunk.
    /// </summary>
    public void Forward(ArrayView<float> hidden, ArrayView<float> lmHead, ArrayView<int> targets, int channels, int vocab,
                        ArrayView<float> scratch, ArrayView<float> logProbs, ArrayView<float> logSumExp, ArrayView<float> entropy) =>
        Forward(hidden, lmHead, targets, channels, vocab, scratch, logProbs, logSumExp, entropy, PublicChunk(targets, vocab, scratch), RowStride(vocab));

    /// <summary>
    /// Accumulates ∂h and ∂E for ∂L/∂logprob (and ∂L/∂entropy when non-empty); recomputes each chunk's logits.
    /// <paramref name="logSumExp"/> and <paramref name="entropy"/> are the forward's.
    /// </summary>
    public void Backward(ArrayView<float> hidden, ArrayView<float> lmHead, ArrayView<int> targets, int channels, int vocab,
                         ArrayView<float> logSumExp, ArrayView<float> entropy, ArrayView<float> dLogProbs, ArrayView<float> dEntropy,
                         ArrayView<float> scratch, ArrayView<float> dHidden, ArrayView<float> dLmHead) =>
        Backward(hidden, lmHead, targets, channels, vocab, logSumExp, entropy, dLogProbs, dEntropy, scratch, dHidden, dLmHead,
                 PublicChunk(targets, vocab, scratch), RowStride(vocab));

    /// <summary>Forward and backward with one logits GEMM per chunk, for gradients known in advance.</summary>
    public void ForwardBackward(ArrayView<float> hidden, ArrayView<float> lmHead, ArrayView<int> targets, int channels, int vocab,
                                ArrayView<float> dLogProbs, ArrayView<float> dEntropy,
                                ArrayView<float> scratch, ArrayView<float> logProbs, ArrayView<float> logSumExp, ArrayView<float> entropy,
                                ArrayView<float> dHidden, ArrayView<float> dLmHead) =>
        ForwardBackward(hidden, lmHead, targets, channels, vocab, dLogProbs, dEntropy, scratch, logProbs, logSumExp, entropy,
                        dHidden, dLmHead, PublicChunk(targets, vocab, scratch), RowStride(vocab));

    /// <summary>The public ops' chunk: <see cref="ChunkRows"/> for the scratch given (checked to hold a padded row).</summary>
    private static int PublicChunk(ArrayView<int> targets, int vocab, ArrayView<float> scratch)
    {
        GpuLaunch.CheckPositive(vocab, nameof(vocab));
        CheckIndexable(targets.Length, nameof(targets));
        int stride = RowStride(vocab);
        if (targets.Length > 0 && scratch.Length < stride)
            throw new ArgumentException($"scratch needs at least one row of logits ({stride} floats: V = {vocab} padded to a multiple of {RowAlignment}); got {scratch.Length}", nameof(scratch));
        return targets.Length == 0 ? 1 : ChunkRows((int)targets.Length, vocab, scratch.Length);
    }

    /// <summary>Forward, Backward and ForwardBackward with an explicit chunk size in rows and logits row stride (≥ V;
    /// tests: several chunks, padded and unpadded rows, at shapes the CPU simulator can afford).</summary>
    internal void Forward(ArrayView<float> hidden, ArrayView<float> lmHead, ArrayView<int> targets, int channels, int vocab,
                          ArrayView<float> scratch, ArrayView<float> logProbs, ArrayView<float> logSumExp, ArrayView<float> entropy,
                          int chunkRows, int rowStride)
    {
        int n = Validate(hidden, lmHead, targets, channels, vocab, scratch, logSumExp.Length, entropy.Length, chunkRows, rowStride);
        GpuLaunch.CheckLength(logProbs.Length, n, nameof(logProbs), "[N]");
        var table = Table(lmHead, channels, vocab, rowStride, n);
        for (int start = 0; start < n; start += chunkRows)
        {
            int rows = Math.Min(chunkRows, n - start);
            var logits = Logits(hidden, lmHead, table, channels, vocab, rowStride, scratch, start, rows, out _);
            ForwardChunk(logits, targets, vocab, rowStride, start, rows, logProbs, logSumExp, entropy);
        }
    }

    internal void Backward(ArrayView<float> hidden, ArrayView<float> lmHead, ArrayView<int> targets, int channels, int vocab,
                           ArrayView<float> logSumExp, ArrayView<float> entropy, ArrayView<float> dLogProbs, ArrayView<float> dEntropy,
                           ArrayView<float> scratch, ArrayView<float> dHidden, ArrayView<float> dLmHead, int chunkRows, int rowStride)
    {
        int n = Validate(hidden, lmHead, targets, channels, vocab, scratch, logSumExp.Length, entropy.Length, chunkRows, rowStride);
        ValidateBackward(n, channels, vocab, entropy.Length, dLogProbs.Length, dEntropy.Length, dHidden.Length, dLmHead.Length);
        var table = Table(lmHead, channels, vocab, rowStride, n);
        for (int start = 0; start < n; start += chunkRows)
        {
            int rows = Math.Min(chunkRows, n - start);
            var logits = Logits(hidden, lmHead, table, channels, vocab, rowStride, scratch, start, rows, out var hiddenBf16);
            BackwardChunk(logits, hidden, lmHead, table, hiddenBf16, targets, channels, vocab, rowStride, start, rows, logSumExp, entropy, dLogProbs, dEntropy, dHidden, dLmHead);
        }
    }

    internal void ForwardBackward(ArrayView<float> hidden, ArrayView<float> lmHead, ArrayView<int> targets, int channels, int vocab,
                                  ArrayView<float> dLogProbs, ArrayView<float> dEntropy,
                                  ArrayView<float> scratch, ArrayView<float> logProbs, ArrayView<float> logSumExp, ArrayView<float> entropy,
                                  ArrayView<float> dHidden, ArrayView<float> dLmHead, int chunkRows, int rowStride)
    {
        int n = Validate(hidden, lmHead, targets, channels, vocab, scratch, logSumExp.Length, entropy.Length, chunkRows, rowStride);
        GpuLaunch.CheckLength(logProbs.Length, n, nameof(logProbs), "[N]");
        ValidateBackward(n, channels, vocab, entropy.Length, dLogProbs.Length, dEntropy.Length, dHidden.Length, dLmHead.Length);
        var table = Table(lmHead, channels, vocab, rowStride, n);
        for (int start = 0; start < n; start += chunkRows)
        {
            int rows = Math.Min(chunkRows, n - start);
            var logits = Logits(hidden, lmHead, table, channels, vocab, rowStride, scratch, start, rows, out var hiddenBf16);
            ForwardChunk(logits, targets, vocab, rowStride, start, rows, logProbs, logSumExp, entropy);
            BackwardChunk(logits, hidden, lmHead, table, hiddenBf16, targets, channels, vocab, rowStride, start, rows, logSumExp, entropy, dLogProbs, dEntropy, dHidden, dLmHead);
        }
    }

    /// <summary>
    /// Per-sequence sums of per-token values and token counts, as <see cref="SequenceLogProbs.SumBySequence"/>:
    /// one thread per sequence walks the tokens in order and sums in fp64, so the result is deterministic (and
    /// equal to the CPU op's). Tokens whose sequence id is ≥ S are ignored (not reported, unlike the CPU op).
    /// O(S·N) work: S is the batch's sequence count.
    /// </summary>
    public void SumBySequence(ArrayView<float> values, ArrayView<int> sequence, ArrayView<int> targets, ArrayView<float> sums, ArrayView<int> counts)
    {
        GpuLaunch.CheckLength(sequence.Length, values.Length, nameof(sequence), "[N]");
        GpuLaunch.CheckLength(targets.Length, values.Length, nameof(targets), "[N]");
        GpuLaunch.CheckLength(counts.Length, sums.Length, nameof(counts), "[S]");
        CheckIndexable(values.Length, nameof(values));
        CheckIndexable(sums.Length, nameof(sums));
        if (sums.Length == 0) return;
        if (values.Length == 0)   // no tokens: zero sums and counts, without handing possibly unallocated views to the device
            sum(accelerator.DefaultStream, (int)sums.Length, dummy.View.SubView(0, 0), dummyInt.View.SubView(0, 0), dummyInt.View.SubView(0, 0), sums, counts);
        else
            sum(accelerator.DefaultStream, (int)sums.Length, values, sequence, targets, sums, counts);
    }

    /// <summary>
    /// The backward of <see cref="SumBySequence"/>, as <see cref="SequenceLogProbs.ScatterBySequence"/>:
    /// dValues[n] += dSums[sequence[n]] (+ dMeans[s]/counts[s] when <paramref name="dMeans"/> is non-empty) for
    /// every counted token. One thread per token, each writing only its own entry (no atomics, deterministic).
    /// S = the length of the non-empty one of dSums/dMeans (equal when both are given); tokens with a sequence
    /// id ≥ S are left alone.
    /// </summary>
    public void ScatterBySequence(ArrayView<float> dSums, ArrayView<float> dMeans, ArrayView<int> counts,
                                  ArrayView<int> sequence, ArrayView<int> targets, ArrayView<float> dValues)
    {
        GpuLaunch.CheckLength(sequence.Length, dValues.Length, nameof(sequence), "[N]");
        GpuLaunch.CheckLength(targets.Length, dValues.Length, nameof(targets), "[N]");
        CheckIndexable(dValues.Length, nameof(dValues));
        long s = Math.Max(dSums.Length, dMeans.Length);
        if (dSums.Length != 0) GpuLaunch.CheckLength(dSums.Length, s, nameof(dSums), "[S] or empty");
        if (dMeans.Length != 0) GpuLaunch.CheckLength(counts.Length, s, nameof(counts), "[S] (needed by dMeans)");
        CheckIndexable(s, nameof(dSums));
        if (dValues.Length == 0 || s == 0) return;
        scatter(accelerator.DefaultStream, (int)dValues.Length,
                 dSums.Length == 0 ? dummy.View : dSums, dMeans.Length == 0 ? dummy.View : dMeans,
                 dMeans.Length == 0 ? dummyInt.View : counts, sequence, targets,
                 (int)s, dSums.Length == 0 ? 0 : 1, dMeans.Length == 0 ? 0 : 1, dValues);
    }

    /// <summary>Checks the shared arguments (as the CPU op); returns N.</summary>
    private static int Validate(ArrayView<float> hidden, ArrayView<float> lmHead, ArrayView<int> targets, int c, int v,
                                ArrayView<float> scratch, long logSumExpLength, long entropyLength, int chunkRows, int stride)
    {
        GpuLaunch.CheckPositive(c, "channels");
        GpuLaunch.CheckPositive(v, "vocab");
        GpuLaunch.CheckPositive(chunkRows, nameof(chunkRows));
        if (stride < v) throw new ArgumentOutOfRangeException(nameof(stride), stride, $"the logits row stride must be at least V = {v}.");
        long n = targets.Length;
        CheckIndexable(n, nameof(targets));
        GpuLaunch.CheckLength(hidden.Length, n * c, nameof(hidden), "[N, C]");
        GpuLaunch.CheckLength(lmHead.Length, (long)v * c, nameof(lmHead), "[V, C]");
        GpuLaunch.CheckLength(logSumExpLength, n, "logSumExp", "[N]");
        if (entropyLength != 0) GpuLaunch.CheckLength(entropyLength, n, "entropy", "[N] or empty");
        long needed = Math.Min(Math.Max(n, 1), chunkRows) * (long)stride;
        if (n > 0 && scratch.Length < needed)
            throw new ArgumentException($"scratch needs {needed} floats for N = {n}, V = {v} (row stride {stride}), {chunkRows} rows per chunk; got {scratch.Length}", nameof(scratch));
        CheckIndexable(Math.Min(n, chunkRows) * (long)stride, "scratch (one chunk of logits)");
        CheckIndexable(n * c, nameof(hidden));
        CheckIndexable((long)v * c, nameof(lmHead));
        return (int)n;
    }

    /// <summary>Checks the backward's lengths (lengths, not views: host code here takes no views but the ops).</summary>
    private static void ValidateBackward(int n, int c, int v, long entropyLength, long dLogProbsLength, long dEntropyLength,
                                         long dHiddenLength, long dLmHeadLength)
    {
        GpuLaunch.CheckLength(dLogProbsLength, n, "dLogProbs", "[N]");
        if (dEntropyLength != 0)
        {
            if (entropyLength == 0) throw new ArgumentException("dEntropy needs the forward's entropies: pass a non-empty entropy view", "dEntropy");
            GpuLaunch.CheckLength(dEntropyLength, n, "dEntropy", "[N] or empty");
        }
        GpuLaunch.CheckLength(dHiddenLength, (long)n * c, "dHidden", "[N, C]");
        GpuLaunch.CheckLength(dLmHeadLength, (long)v * c, "dLmHead", "[V, C]");
    }

    private static void CheckIndexable(long length, string name)
    {
        if (length > int.MaxValue) throw new ArgumentException($"{name} too large for 32-bit GPU indexing ({length} elements).", name);
    }

    /// <summary>
    /// bf16 path: the padded table [stride, C] — E rounded to bf16 in rows 0 … V−1, zeros in rows V … stride−1 — in the
    /// owned buffer, rewritten on every call (E changes between calls). An empty view on the fp32 path or when N = 0.
    /// </summary>
    private ArrayView<ushort> Table(ArrayView<float> lmHead, int c, int v, int stride, int n)
    {
        if (toBFloat16 is null || n == 0) return default;
        CheckIndexable((long)stride * c, "the padded bf16 table [Vp, C]");
        var table = Owned(ref tableBf16, (long)stride * c);
        toBFloat16.ToBFloat16(lmHead, table.SubView(0, (long)v * c));
        if (stride > v) table.SubView((long)v * c, (long)(stride - v) * c).MemSetToZero();
        Lap("lm head convert");
        return table;
    }

    /// <summary>The first <paramref name="length"/> elements of an owned bf16 buffer, reallocated (not zeroed) when too small.</summary>
    private ArrayView<ushort> Owned(ref MemoryBuffer1D<ushort, Stride1D.Dense>? buffer, long length)
    {
        if (buffer is null || buffer.Length < length)
        {
            if (buffer is not null)
            {
                accelerator.Synchronize();   // queued work may still read the old buffer
                buffer.Dispose();
            }
            buffer = accelerator.Allocate1D<ushort>(Math.Max(length, 1));
        }
        return buffer.View.SubView(0, length);
    }

    /// <summary>
    /// logits[rows, ·] = h[start … start+rows)·Eᵀ into the scratch, row stride <paramref name="stride"/>. fp32 path: the V
    /// real columns (padding not written). bf16 path: the chunk's hidden rows rounded into <paramref name="hiddenBf16"/>,
    /// then all <paramref name="stride"/> columns against the padded table (padding columns written, as 0).
    /// </summary>
    private ArrayView<float> Logits(ArrayView<float> hidden, ArrayView<float> lmHead, ArrayView<ushort> table, int c, int v, int stride,
                                    ArrayView<float> scratch, int start, int rows, out ArrayView<ushort> hiddenBf16)
    {
        var logits = scratch.SubView(0, (long)rows * stride);
        var h = hidden.SubView((long)start * c, (long)rows * c);
        if (bf16Gemm is null || toBFloat16 is null)
        {
            hiddenBf16 = default;
            gemm.Multiply(false, true, rows, v, c, 1f, h, c, lmHead, c, 0f, logits, stride);
        }
        else
        {
            hiddenBf16 = Owned(ref this.hiddenBf16, (long)rows * c);
            toBFloat16.ToBFloat16(h, hiddenBf16);
            Lap("lm head convert");
            bf16Gemm.MultiplyBFloat16(false, true, rows, stride, c, 1f, hiddenBf16, c, table, c, 0f, logits, stride);
        }
        Lap("lm head gemm fwd");
        return logits;
    }

    private void ForwardChunk(ArrayView<float> logits, ArrayView<int> targets, int v, int stride, int start, int rows,
                              ArrayView<float> logProbs, ArrayView<float> logSumExp, ArrayView<float> entropy)
    {
        var t = targets.SubView(start, rows);
        var lse = logSumExp.SubView(start, rows);
        if (nvrtc is not null) nvrtc.Forward(logits, t, v, stride, logProbs.SubView(start, rows), lse);
        else targetLogProbs.Forward(logits, t, v, stride, logProbs.SubView(start, rows), lse);
        if (entropy.Length != 0)
            this.entropy(accelerator.DefaultStream, GpuLaunch.Rows(rows, groupSize), logits, t, v, stride, lse, entropy.SubView(start, rows));
        Lap("lm head softmax fwd");
    }

    /// <summary>
    /// fp32 path: the chunk's logits become d(logits) in place, fed to the two GEMMs (lda = stride: real columns only).
    /// bf16 path: d(logits) rounded to bf16 into the owned [rows, stride] buffer (padding columns 0), then ∂h with
    /// k = stride against the padded table and ∂E with m = V against the chunk's bf16 hidden rows.
    /// </summary>
    private void BackwardChunk(ArrayView<float> logits, ArrayView<float> hidden, ArrayView<float> lmHead, ArrayView<ushort> table,
                               ArrayView<ushort> hiddenBf16, ArrayView<int> targets,
                               int c, int v, int stride, int start, int rows, ArrayView<float> logSumExp, ArrayView<float> entropy,
                               ArrayView<float> dLogProbs, ArrayView<float> dEntropy, ArrayView<float> dHidden, ArrayView<float> dLmHead)
    {
        var t = targets.SubView(start, rows);
        var lse = logSumExp.SubView(start, rows);
        var a = dLogProbs.SubView(start, rows);
        var dh = dHidden.SubView((long)start * c, (long)rows * c);
        if (bf16Gemm is null || gradientToBFloat16 is null)
        {
            if (dEntropy.Length == 0) targetLogProbs.Backward(logits, t, v, stride, lse, a);
            else gradient(accelerator.DefaultStream, rows * v, logits, t, v, stride, lse, entropy.SubView(start, rows), a, dEntropy.SubView(start, rows));
            Lap("lm head softmax bwd");
            gemm.Multiply(false, false, rows, c, v, 1f, logits, stride, lmHead, c, 1f, dh, c);
            Lap("lm head gemm dh");
            gemm.Multiply(true, false, v, c, rows, 1f, logits, stride, hidden.SubView((long)start * c, (long)rows * c), c, 1f, dLmHead, c);
            Lap("lm head gemm dE");
            return;
        }
        var dLogits = Owned(ref dLogitsBf16, (long)rows * stride);
        if (dEntropy.Length == 0 && nvrtc is not null
            && NvrtcTargetLogProbs.SupportsBackward(stride, (ulong)logits.LoadEffectiveAddressAsPtr(), (ulong)dLogits.LoadEffectiveAddressAsPtr()))
            nvrtc.BackwardToBFloat16(logits, t, v, stride, lse, a, dLogits);
        else if (dEntropy.Length == 0) targetLogProbs.BackwardToBFloat16(logits, t, v, stride, lse, a, dLogits);
        else gradientToBFloat16(accelerator.DefaultStream, rows * stride, logits, t, v, stride, lse, entropy.SubView(start, rows), a,
                                 dEntropy.SubView(start, rows), dLogits);
        Lap("lm head softmax bwd");
        bf16Gemm.MultiplyBFloat16(false, false, rows, c, stride, 1f, dLogits, stride, table, c, 1f, dh, c);
        Lap("lm head gemm dh");
        bf16Gemm.MultiplyBFloat16(true, false, v, c, rows, 1f, dLogits, stride, hiddenBf16, c, 1f, dLmHead, c);
        Lap("lm head gemm dE");
    }

    /// <summary>entropy_n = −Σ_v p·ln p with ln p = x − lse (0 for ignored rows). One group per row.</summary>
    [GpuKernel(true)]
    internal static void EntropyKernel(ArrayView<float> logits, ArrayView<int> targets, int vocab, int rowStride, ArrayView<float> logSumExp, ArrayView<float> entropy)
    {
        var scratch = SharedMemory.Allocate<float>(GpuLaunch.MaxGroupSize);
        int row = Grid.IdxX, tid = Group.IdxX;
        bool ignored = targets[row] == TargetLogProbs.Ignored;   // uniform over the group: every thread reaches the barriers
        long offset = (long)row * rowStride;
        float lse = logSumExp[row];
        float partial = 0f;
        if (!ignored)
        {
            for (int v = tid; v < vocab; v += Group.DimX)
            {
                float logP = logits[offset + v] - lse;
                partial -= XMath.Exp(logP) * logP;
            }
        }
        float total = GpuLaunch.GroupSum(scratch, partial);
        if (tid == 0) entropy[row] = ignored ? 0f : total;
    }

    /// <summary>In place, one thread per real logit (i over rows·V, at row·rowStride + v):
    /// x ← a·(1[v = target] − p) − b·p·(ln p + H); 0 on ignored rows.</summary>
    [GpuKernel(false)]
    internal static void GradientKernel(Index1D i, ArrayView<float> logits, ArrayView<int> targets, int vocab, int rowStride, ArrayView<float> logSumExp,
                                        ArrayView<float> entropy, ArrayView<float> dLogProbs, ArrayView<float> dEntropy)
    {
        int row = i / vocab, v = i - row * vocab;
        long at = (long)row * rowStride + v;
        int target = targets[row];
        if (target == TargetLogProbs.Ignored)
        {
            logits[at] = 0f;
            return;
        }
        float a = dLogProbs[row], b = dEntropy[row];
        float logP = logits[at] - logSumExp[row];
        float p = XMath.Exp(logP);
        float d = -a * p - b * p * (logP + entropy[row]);
        logits[at] = v == target ? d + a : d;
    }

    /// <summary>As <see cref="GradientKernel"/> into a separate bf16 buffer, one thread per element of the padded rows
    /// (i over rows·rowStride): round-to-nearest-even of d at the real columns, 0 at the padding columns and on ignored rows.</summary>
    [GpuKernel(false)]
    internal static void GradientToBFloat16Kernel(Index1D i, ArrayView<float> logits, ArrayView<int> targets, int vocab, int rowStride,
                                                  ArrayView<float> logSumExp, ArrayView<float> entropy, ArrayView<float> dLogProbs,
                                                  ArrayView<float> dEntropy, ArrayView<ushort> gradient)
    {
        int row = i / rowStride, v = i - row * rowStride;
        int target = targets[row];
        if (v >= vocab || target == TargetLogProbs.Ignored)
        {
            gradient[i] = 0;
            return;
        }
        float a = dLogProbs[row], b = dEntropy[row];
        float logP = logits[i] - logSumExp[row];
        float p = XMath.Exp(logP);
        float d = -a * p - b * p * (logP + entropy[row]);
        gradient[i] = GpuBFloat16.Round(v == target ? d + a : d);
    }

    /// <summary>One thread per sequence: fp64 sum of its counted tokens' values, in token order, and their count.</summary>
    [GpuKernel(false)]
    internal static void SumBySequenceKernel(Index1D s, ArrayView<float> values, ArrayView<int> sequence, ArrayView<int> targets,
                                             ArrayView<float> sums, ArrayView<int> counts)
    {
        double total = 0;
        int count = 0;
        for (int i = 0; i < sequence.IntLength; i++)
        {
            if (sequence[i] != s || targets[i] == TargetLogProbs.Ignored) continue;
            total += values[i];
            count++;
        }
        sums[s] = (float)total;
        counts[s] = count;
    }

    /// <summary>One thread per token: dValues[i] += dSums[s] (+ dMeans[s]/counts[s]) for counted tokens of sequence s &lt; S.</summary>
    [GpuKernel(false)]
    internal static void ScatterBySequenceKernel(Index1D i, ArrayView<float> dSums, ArrayView<float> dMeans, ArrayView<int> counts,
                                                 ArrayView<int> sequence, ArrayView<int> targets, int sequences, int hasSums, int hasMeans,
                                                 ArrayView<float> dValues)
    {
        int s = sequence[i];
        if (s < 0 || s >= sequences || targets[i] == TargetLogProbs.Ignored) return;
        float d = hasSums != 0 ? dSums[s] : 0f;
        if (hasMeans != 0)
        {
            int count = counts[s];
            if (count > 0) d += dMeans[s] / count;
        }
        dValues[i] += d;
    }

    /// <summary>Tests: sets every byte of the owned bf16 buffers allocated so far to <paramref name="value"/> (0xFF: bf16 NaN).</summary>
    internal void FillOwnedBuffers(byte value)
    {
        foreach (var buffer in new[] { tableBf16, hiddenBf16, dLogitsBf16 }) buffer?.View.MemSet(value);
        accelerator.Synchronize();
    }

    /// <summary>Frees the owned buffers (the bf16 table and chunk buffers, the dummies).</summary>
    public void Dispose()
    {
        tableBf16?.Dispose();
        hiddenBf16?.Dispose();
        dLogitsBf16?.Dispose();
        tableBf16 = hiddenBf16 = dLogitsBf16 = null;
        dummy.Dispose();
        dummyInt.Dispose();
        nvrtc?.Dispose();
    }
}
