using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace DistAlign.Kernels.Gpu;

/// <summary>Shapes of one attention call (a kernel argument: fewer parameters than passing each int).</summary>
internal struct AttentionShape
{
    public int Batch, SeqLen, Heads, Channels, HeadSize, HasSegments;
    public float Scale;
}

/// <summary>
/// Causal self-attention with packed-sequence segments, the GPU form of <see cref="Cpu.Attention"/>.
/// <para>
/// On the GPU, QKᵀ and A·V are (later) cuBLAS strided-batched GEMMs; what is left for hand-written kernels is
/// the masked, scaled softmax over the pre-attention scores [B, NH, T, T]: <see cref="SoftmaxForward"/> and
/// <see cref="SoftmaxBackward"/> (one group per row, shared-memory max/sum reductions).
/// </para>
/// <para>
/// <see cref="Forward"/>/<see cref="Backward"/> implement the whole CPU contract (qkv [B, T, 3C], att
/// [B, NH, T, T], out [B, T, C], dqkv accumulated) with plain one-thread-per-output kernels, so the op can be
/// tested end to end without a GEMM. They are correct and deterministic, not fast (the backward recomputes
/// the hs-long dots per output channel): a test path and a fallback, not the training path.
/// </para>
/// Masking: allowed(t, s) = s ≤ t and (no segments or segment[b, s] = segment[b, t]); disallowed
/// probabilities are exactly 0.
/// </summary>
public sealed class GpuAttention
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, AttentionShape, ArrayView<float>> softmaxForward;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, AttentionShape, ArrayView<float>> softmaxBackward;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, AttentionShape, ArrayView<float>, ArrayView<float>> forward;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape, ArrayView<float>> backwardQuery;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape, ArrayView<float>> backwardKeyValue;
    private readonly Accelerator accelerator;
    private readonly int groupSize;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> noSegments;

    public GpuAttention(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        groupSize = GpuLaunch.ReductionGroupSize(accelerator);
        noSegments = accelerator.Allocate1D<int>(1);   // a valid view to pass when there are no segment ids
        softmaxForward = accelerator.LoadKernel<ArrayView<float>, ArrayView<int>, AttentionShape, ArrayView<float>>(SoftmaxForwardKernel);
        softmaxBackward = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, AttentionShape, ArrayView<float>>(SoftmaxBackwardKernel);
        forward = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, AttentionShape, ArrayView<float>, ArrayView<float>>(ForwardKernel);
        backwardQuery = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape, ArrayView<float>>(BackwardQueryKernel);
        backwardKeyValue = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape, ArrayView<float>>(BackwardKeyValueKernel);
    }

    /// <summary>
    /// probabilities[b, h, t, s] = softmax_s(scale·scores[b, h, t, s] over allowed s), 0 where not allowed.
    /// scores, probabilities [B, NH, T, T] (probabilities may be scores: in place); segmentIds empty or [B, T].
    /// scores are the raw q·k products (the QKᵀ GEMM's output); the 1/√hs scale is applied here.
    /// </summary>
    public void SoftmaxForward(ArrayView<float> scores, ArrayView<int> segmentIds, int batch, int seqLen, int heads, float scale,
                               ArrayView<float> probabilities)
    {
        var shape = Shape(batch, seqLen, heads, heads, segmentIds.Length, scores.Length);
        shape.Scale = scale;
        GpuLaunch.CheckLength(probabilities.Length, scores.Length, nameof(probabilities), "[B, NH, T, T]");
        int rows = batch * heads * seqLen;
        if (rows > 0)
            softmaxForward(accelerator.DefaultStream, GpuLaunch.Rows(rows, groupSize), scores, Segments(segmentIds), shape, probabilities);
    }

    /// <summary>
    /// dScores[t, s] = scale·a[t, s]·(dA[t, s] − Σ_r a[t, r]·dA[t, r]), the gradient of the raw scores given
    /// dProbabilities (the dA from the A·V GEMM backward) and the forward's probabilities. dScores is written,
    /// not accumulated (it is a temporary that feeds the QKᵀ GEMM backward), and may be dProbabilities.
    /// </summary>
    public void SoftmaxBackward(ArrayView<float> dProbabilities, ArrayView<float> probabilities, int batch, int seqLen, int heads,
                                float scale, ArrayView<float> dScores)
    {
        var shape = Shape(batch, seqLen, heads, heads, 0, probabilities.Length);
        shape.Scale = scale;
        GpuLaunch.CheckLength(dProbabilities.Length, probabilities.Length, nameof(dProbabilities), "[B, NH, T, T]");
        GpuLaunch.CheckLength(dScores.Length, probabilities.Length, nameof(dScores), "[B, NH, T, T]");
        int rows = batch * heads * seqLen;
        if (rows > 0)
            softmaxBackward(accelerator.DefaultStream, GpuLaunch.Rows(rows, groupSize), dProbabilities, probabilities, shape, dScores);
    }

    /// <summary>The CPU contract: att [B, NH, T, T] and out [B, T, C] from qkv [B, T, 3C] and segmentIds (empty or [B, T]).</summary>
    public void Forward(ArrayView<float> qkv, ArrayView<int> segmentIds, int batch, int seqLen, int heads,
                        ArrayView<float> attention, ArrayView<float> output)
    {
        int c = Channels(qkv.Length, batch, seqLen, heads);
        var shape = Shape(batch, seqLen, heads, c, segmentIds.Length, attention.Length);
        GpuLaunch.CheckLength(output.Length, (long)batch * seqLen * c, nameof(output), "[B, T, C]");
        int rows = batch * heads * seqLen;
        if (rows > 0) forward(accelerator.DefaultStream, rows, qkv, Segments(segmentIds), shape, attention, output);
    }

    /// <summary>Accumulates dQkv [B, T, 3C] from dOutput [B, T, C], using the forward's qkv, att and out (as the CPU op).</summary>
    public void Backward(ArrayView<float> dOutput, ArrayView<float> qkv, ArrayView<float> attention, ArrayView<float> output,
                         int batch, int seqLen, int heads, ArrayView<float> dQkv)
    {
        int c = Channels(qkv.Length, batch, seqLen, heads);
        var shape = Shape(batch, seqLen, heads, c, 0, attention.Length);
        GpuLaunch.CheckLength(dOutput.Length, (long)batch * seqLen * c, nameof(dOutput), "[B, T, C]");
        GpuLaunch.CheckLength(output.Length, (long)batch * seqLen * c, nameof(output), "[B, T, C]");
        GpuLaunch.CheckLength(dQkv.Length, qkv.Length, nameof(dQkv), "[B, T, 3C]");
        long threads = (long)batch * seqLen * c;   // one per (b, h, t, d) = (b, t, channel)
        if (threads == 0) return;
        backwardQuery(accelerator.DefaultStream, (int)threads, dOutput, qkv, attention, output, shape, dQkv);
        backwardKeyValue(accelerator.DefaultStream, (int)threads, dOutput, qkv, attention, output, shape, dQkv);
    }

    private ArrayView<int> Segments(ArrayView<int> segmentIds) => segmentIds.Length > 0 ? segmentIds : noSegments.View;

    private static int Channels(long qkvLength, int batch, int seqLen, int heads)
    {
        GpuLaunch.CheckPositive(heads, nameof(heads));
        if (batch < 0 || seqLen < 0) throw new ArgumentOutOfRangeException(nameof(batch), "B and T must not be negative.");
        long bt = (long)batch * seqLen;
        if (bt == 0) return heads;
        if (qkvLength % (3 * bt) != 0)
            throw new ArgumentException($"qkv has {qkvLength} elements, not B·T·3C for B = {batch}, T = {seqLen}.", "qkv");
        int c = (int)(qkvLength / (3 * bt));
        if (c == 0 || c % heads != 0)
            throw new ArgumentException($"C = {c} is not a positive multiple of NH = {heads}.", nameof(heads));
        return c;
    }

    private static AttentionShape Shape(int batch, int seqLen, int heads, int channels, long segmentLength, long attentionLength)
    {
        GpuLaunch.CheckPositive(heads, nameof(heads));
        if (batch < 0 || seqLen < 0) throw new ArgumentOutOfRangeException(nameof(batch), "B and T must not be negative.");
        if (segmentLength != 0) GpuLaunch.CheckLength(segmentLength, (long)batch * seqLen, "segmentIds", "empty or [B, T]");
        GpuLaunch.CheckLength(attentionLength, (long)batch * heads * seqLen * seqLen, "attention", "[B, NH, T, T]");
        if (attentionLength > int.MaxValue) throw new ArgumentException("attention is too large for 32-bit GPU indexing.", "attention");
        int hs = channels / heads;
        return new AttentionShape
        {
            Batch = batch, SeqLen = seqLen, Heads = heads, Channels = channels, HeadSize = hs,
            HasSegments = segmentLength > 0 ? 1 : 0, Scale = 1f / MathF.Sqrt(hs),
        };
    }

    [GpuDeviceFunction]
    private static bool Allowed(ArrayView<int> segmentIds, in AttentionShape shape, int b, int t, int s) =>
        s <= t && (shape.HasSegments == 0 || segmentIds[b * shape.SeqLen + s] == segmentIds[b * shape.SeqLen + t]);

    [GpuKernel(true)]
    internal static void SoftmaxForwardKernel(ArrayView<float> scores, ArrayView<int> segmentIds, AttentionShape shape,
                                              ArrayView<float> probabilities)
    {
        var scratch = SharedMemory.Allocate<float>(GpuLaunch.MaxGroupSize);
        int row = Grid.IdxX, tid = Group.IdxX, step = Group.DimX;   // row = (b·NH + h)·T + t
        int T = shape.SeqLen, t = row % T, b = row / T / shape.Heads;
        long offset = (long)row * T;
        float max = float.NegativeInfinity;
        for (int s = tid; s <= t; s += step)
            if (Allowed(segmentIds, shape, b, t, s)) max = IntrinsicMath.Max(max, shape.Scale * scores[offset + s]);
        max = GpuLaunch.GroupMax(scratch, max);   // finite: s = t is always allowed
        float sum = 0f;
        for (int s = tid; s <= t; s += step)
            if (Allowed(segmentIds, shape, b, t, s)) sum += XMath.Exp(shape.Scale * scores[offset + s] - max);
        float inverse = 1f / GpuLaunch.GroupSum(scratch, sum);
        for (int s = tid; s < T; s += step)
            probabilities[offset + s] = Allowed(segmentIds, shape, b, t, s)
                ? XMath.Exp(shape.Scale * scores[offset + s] - max) * inverse
                : 0f;
    }

    [GpuKernel(true)]
    internal static void SoftmaxBackwardKernel(ArrayView<float> dProbabilities, ArrayView<float> probabilities, AttentionShape shape,
                                               ArrayView<float> dScores)
    {
        var scratch = SharedMemory.Allocate<float>(GpuLaunch.MaxGroupSize);
        int row = Grid.IdxX, tid = Group.IdxX, step = Group.DimX;
        int T = shape.SeqLen;
        long offset = (long)row * T;
        float weighted = 0f;
        for (int s = tid; s < T; s += step) weighted += probabilities[offset + s] * dProbabilities[offset + s];
        weighted = GpuLaunch.GroupSum(scratch, weighted);
        for (int s = tid; s < T; s += step)
        {
            float a = probabilities[offset + s];
            dScores[offset + s] = shape.Scale * a * (dProbabilities[offset + s] - weighted);
        }
    }

    /// <summary>One thread per (b, h, t): the score row (into att), its softmax, then out[b, t, h] = Σ_s a·v_s.</summary>
    [GpuKernel(false)]
    internal static void ForwardKernel(Index1D index, ArrayView<float> qkv, ArrayView<int> segmentIds, AttentionShape shape,
                                       ArrayView<float> attention, ArrayView<float> output)
    {
        int T = shape.SeqLen, hs = shape.HeadSize, c3 = 3 * shape.Channels;
        int t = index % T, bh = index / T, h = bh % shape.Heads, b = bh / shape.Heads;
        long row = (long)index.X * T;
        long q = ((long)b * T + t) * c3 + h * hs;
        float max = float.NegativeInfinity;
        for (int s = 0; s <= t; s++)
        {
            if (!Allowed(segmentIds, shape, b, t, s)) continue;
            long k = ((long)b * T + s) * c3 + shape.Channels + h * hs;
            float dot = 0f;
            for (int d = 0; d < hs; d++) dot += qkv[q + d] * qkv[k + d];
            float score = dot * shape.Scale;
            attention[row + s] = score;
            max = IntrinsicMath.Max(max, score);
        }
        float sum = 0f;
        for (int s = 0; s <= t; s++)
        {
            if (!Allowed(segmentIds, shape, b, t, s)) continue;
            float e = XMath.Exp(attention[row + s] - max);
            attention[row + s] = e;
            sum += e;
        }
        float inverse = 1f / sum;
        for (int s = 0; s < T; s++)
            attention[row + s] = Allowed(segmentIds, shape, b, t, s) ? attention[row + s] * inverse : 0f;
        long o = ((long)b * T + t) * shape.Channels + h * hs;
        for (int d = 0; d < hs; d++)
        {
            float acc = 0f;
            for (int s = 0; s <= t; s++)
            {
                float a = attention[row + s];
                if (a != 0f) acc += a * qkv[((long)b * T + s) * c3 + 2 * shape.Channels + h * hs + d];
            }
            output[o + d] = acc;
        }
    }

    /// <summary>dz[t, s] = a·(g_t·v_s − g_t·out_t) for the backward kernels (g = dout row of head h).</summary>
    [GpuDeviceFunction]
    private static float ScoreGradient(ArrayView<float> dOutput, ArrayView<float> qkv, in AttentionShape shape, float a,
                                       long gOffset, long vOffset, float weighted)
    {
        float da = 0f;
        for (int e = 0; e < shape.HeadSize; e++) da += dOutput[gOffset + e] * qkv[vOffset + e];
        return a * (da - weighted);
    }

    [GpuDeviceFunction]
    private static float RowDot(ArrayView<float> x, long xOffset, ArrayView<float> y, long yOffset, int length)
    {
        float dot = 0f;
        for (int e = 0; e < length; e++) dot += x[xOffset + e] * y[yOffset + e];
        return dot;
    }

    /// <summary>One thread per (b, t, channel): dq_t[d] += Σ_{s ≤ t} dz[t, s]·k_s[d]·scale.</summary>
    [GpuKernel(false)]
    internal static void BackwardQueryKernel(Index1D index, ArrayView<float> dOutput, ArrayView<float> qkv, ArrayView<float> attention,
                                             ArrayView<float> output, AttentionShape shape, ArrayView<float> dQkv)
    {
        int C = shape.Channels, T = shape.SeqLen, hs = shape.HeadSize, c3 = 3 * C;
        int channel = index % C, bt = index / C, t = bt % T, b = bt / T;
        int h = channel / hs, d = channel - h * hs;
        long g = (long)bt * C + h * hs;
        float weighted = RowDot(dOutput, g, output, g, hs);
        long row = (((long)b * shape.Heads + h) * T + t) * T;
        float acc = 0f;
        for (int s = 0; s <= t; s++)
        {
            float a = attention[row + s];
            if (a == 0f) continue;
            long kv = ((long)b * T + s) * c3 + h * hs;
            float dz = ScoreGradient(dOutput, qkv, shape, a, g, kv + 2 * C, weighted);
            acc += dz * qkv[kv + C + d];
        }
        dQkv[(long)bt * c3 + channel] += acc * shape.Scale;
    }

    /// <summary>One thread per (b, s, channel): dk_s[d] += Σ_{t ≥ s} dz[t, s]·q_t[d]·scale, dv_s[d] += Σ_t a[t, s]·g_t[d].</summary>
    [GpuKernel(false)]
    internal static void BackwardKeyValueKernel(Index1D index, ArrayView<float> dOutput, ArrayView<float> qkv, ArrayView<float> attention,
                                                ArrayView<float> output, AttentionShape shape, ArrayView<float> dQkv)
    {
        int C = shape.Channels, T = shape.SeqLen, hs = shape.HeadSize, c3 = 3 * C;
        int channel = index % C, bs = index / C, s = bs % T, b = bs / T;
        int h = channel / hs, d = channel - h * hs;
        long v = (long)bs * c3 + 2 * C + h * hs;
        float dk = 0f, dv = 0f;
        for (int t = s; t < T; t++)
        {
            float a = attention[(((long)b * shape.Heads + h) * T + t) * T + s];
            if (a == 0f) continue;
            long g = ((long)b * T + t) * C + h * hs;
            float weighted = RowDot(dOutput, g, output, g, hs);
            float dz = ScoreGradient(dOutput, qkv, shape, a, g, v, weighted);
            dk += dz * qkv[((long)b * T + t) * c3 + h * hs + d];
            dv += a * dOutput[g + d];
        }
        long at = (long)bs * c3 + h * hs + d;
        dQkv[at + C] += dk * shape.Scale;
        dQkv[at + 2 * C] += dv;
    }
}
