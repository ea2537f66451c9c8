using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace DistAlign.Kernels.Gpu;

/// <summary>Shapes of one cached-attention call (a kernel argument).</summary>
internal struct CachedAttentionShape
{
    public int Rows, MaxLength, Position, Heads, Channels, HeadSize;
    public float Scale;
}

/// <summary>
/// Causal attention of one new position per row against a key/value cache (KV-cache decoding), the GPU form of
/// <see cref="Cpu.CachedAttention"/> with the same shapes: qkv [R, 3C] (the new position's q, k, v), keyCache and
/// valueCache [R, maxT, C], output [R, C].
/// </summary>
/// <remarks>
/// <see cref="Append"/> copies the new position's k and v into the caches at position t (one thread per (row, channel of
/// k or v)). <see cref="Forward"/> is one group per (row r, head h); with q = qkv[r, h·hs : (h+1)·hs] and K, V the head's
/// cached rows for s = 0 … t:
///   z_s = q·K_s / √hs   (threads over s; written to scores [R, NH, maxT])
///   m = max_s z_s,  e_s = exp(z_s − m),  Z = Σ_s e_s   (group reductions, fp32)
///   out[r, h, d] = Σ_s (e_s / Z)·V_s[d]   (the group split into ⌊G/hs⌋ chunks of hs threads: thread (chunk, d) sums the
///   positions s ≡ chunk mod the chunk count, then the chunks' partial sums are added in chunk order — every thread busy
///   at long contexts instead of hs threads each walking all t + 1 positions)
/// Forward only (decoding needs no backward). The reductions are fixed trees over the group, so results are
/// bit-identical run to run on one device.
/// </remarks>
public sealed class GpuCachedAttention
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, CachedAttentionShape, ArrayView<float>, ArrayView<float>> append;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, CachedAttentionShape, ArrayView<float>, ArrayView<float>> forward;
    private readonly Accelerator accelerator;
    private readonly int groupSize;

    public GpuCachedAttention(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        groupSize = GpuLaunch.ReductionGroupSize(accelerator);
        append = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, CachedAttentionShape, ArrayView<float>, ArrayView<float>>(AppendKernel);
        forward = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, CachedAttentionShape, ArrayView<float>, ArrayView<float>>(ForwardKernel);
    }

    /// <summary>Scratch floats <see cref="Forward"/> needs: the scores [R, NH, maxT].</summary>
    public static long ScratchLength(int rows, int heads, int maxLength) => (long)rows * heads * maxLength;

    /// <summary>keyCache[r, t, :] = qkv[r, C : 2C]; valueCache[r, t, :] = qkv[r, 2C : 3C] for every row r.</summary>
    public void Append(ArrayView<float> qkv, int rows, int maxLength, int position, int heads,
                       ArrayView<float> keyCache, ArrayView<float> valueCache)
    {
        var shape = Shape(qkv.Length, rows, maxLength, position, heads, keyCache.Length, valueCache.Length);
        long threads = (long)rows * 2 * shape.Channels;
        if (threads > 0) append(accelerator.DefaultStream, (int)threads, qkv, shape, keyCache, valueCache);
    }

    /// <summary>
    /// output [R, C] = attention of each row's new query (qkv [R, 3C]) over cached positions 0 … <paramref name="position"/>
    /// (their keys and values already in the caches, the new one's too: see <see cref="Append"/>).
    /// scores: at least <see cref="ScratchLength"/> floats.
    /// </summary>
    public void Forward(ArrayView<float> qkv, ArrayView<float> keyCache, ArrayView<float> valueCache, int rows, int maxLength,
                        int position, int heads, ArrayView<float> output, ArrayView<float> scores)
    {
        var shape = Shape(qkv.Length, rows, maxLength, position, heads, keyCache.Length, valueCache.Length);
        GpuLaunch.CheckLength(output.Length, (long)rows * shape.Channels, nameof(output), "[R, C]");
        if (scores.Length < ScratchLength(rows, heads, maxLength))
            throw new ArgumentException($"scores has {scores.Length} elements; R·NH·maxT = {ScratchLength(rows, heads, maxLength)} are needed.", nameof(scores));
        int groups = rows * heads;
        if (groups > 0)
            forward(accelerator.DefaultStream, GpuLaunch.Rows(groups, groupSize), qkv, keyCache, valueCache, shape, output, scores);
    }

    private static CachedAttentionShape Shape(long qkvLength, int rows, int maxLength, int position, int heads, long keyLength, long valueLength)
    {
        GpuLaunch.CheckPositive(heads, nameof(heads));
        GpuLaunch.CheckPositive(maxLength, nameof(maxLength));
        if (rows < 0) throw new ArgumentOutOfRangeException(nameof(rows), rows, "rows must not be negative.");
        if ((uint)position >= (uint)maxLength)
            throw new ArgumentOutOfRangeException(nameof(position), position, $"position must be in [0, {maxLength}).");
        int c = rows == 0 ? heads : (int)(qkvLength / (3L * rows));
        if (rows > 0 && qkvLength != 3L * rows * c)
            throw new ArgumentException($"qkv has {qkvLength} elements, not R·3C for R = {rows}.", "qkv");
        if (c == 0 || c % heads != 0)
            throw new ArgumentException($"C = {c} is not a positive multiple of NH = {heads}.", nameof(heads));
        GpuLaunch.CheckLength(keyLength, (long)rows * maxLength * c, "keyCache", "[R, maxT, C]");
        GpuLaunch.CheckLength(valueLength, (long)rows * maxLength * c, "valueCache", "[R, maxT, C]");
        if (keyLength > int.MaxValue) throw new ArgumentException("the cache is too large for 32-bit GPU indexing.", "keyCache");
        int hs = c / heads;
        return new CachedAttentionShape
        {
            Rows = rows, MaxLength = maxLength, Position = position, Heads = heads, Channels = c, HeadSize = hs,
            Scale = 1f / MathF.Sqrt(hs),
        };
    }

    /// <summary>Thread (r, j), j &lt; 2C: j &lt; C copies k[r, j], else v[r, j − C], to the caches at position t.</summary>
    [GpuKernel(false)]
    internal static void AppendKernel(Index1D index, ArrayView<float> qkv, CachedAttentionShape shape, ArrayView<float> keyCache,
                                      ArrayView<float> valueCache)
    {
        int c = shape.Channels, twoC = 2 * c;
        int r = index / twoC, j = index - r * twoC;
        long at = ((long)r * shape.MaxLength + shape.Position) * c;
        float value = qkv[(long)r * 3 * c + c + j];
        if (j < c) keyCache[at + j] = value;
        else valueCache[at + j - c] = value;
    }

    /// <summary>One group per (r, h): scores over s by thread, max and sum by group reductions, the weighted sum of values by thread over d.</summary>
    [GpuKernel(true)]
    internal static void ForwardKernel(ArrayView<float> qkv, ArrayView<float> keyCache, ArrayView<float> valueCache,
                                       CachedAttentionShape shape, ArrayView<float> output, ArrayView<float> scores)
    {
        var reduction = SharedMemory.Allocate<float>(GpuLaunch.MaxGroupSize);
        int rh = Grid.IdxX, tid = Group.IdxX, step = Group.DimX;
        int c = shape.Channels, hs = shape.HeadSize, span = shape.Position + 1;
        int r = rh / shape.Heads, h = rh - r * shape.Heads;
        long q = (long)r * 3 * c + h * hs;
        long cached = (long)r * shape.MaxLength * c + h * hs;   // K_s, V_s of this head start at cached + s·C
        long row = (long)rh * shape.MaxLength;

        float max = float.NegativeInfinity;
        for (int s = tid; s < span; s += step)
        {
            long k = cached + (long)s * c;
            float dot = 0f;
            for (int d = 0; d < hs; d++) dot += qkv[q + d] * keyCache[k + d];
            float score = dot * shape.Scale;
            scores[row + s] = score;
            max = IntrinsicMath.Max(max, score);
        }
        max = GpuLaunch.GroupMax(reduction, max);   // finite: span ≥ 1
        float sum = 0f;
        for (int s = tid; s < span; s += step)
        {
            float e = XMath.Exp(scores[row + s] - max);
            scores[row + s] = e;
            sum += e;
        }
        float inverse = 1f / GpuLaunch.GroupSum(reduction, sum);   // its barriers also publish every thread's e_s
        Group.Barrier();   // every thread has read the sum before `reduction` holds partial sums

        // out[d] = Σ_s w_s·V_s[d] with all of the group's threads: thread (chunk, d) sums s ≡ chunk (mod chunks) (a warp reads
        // consecutive d of one V_s: coalesced), then thread d adds the chunks' partial sums in chunk order (fixed: deterministic).
        // A head wider than the group takes several passes over d.
        int chunks = IntrinsicMath.Max(1, step / hs), active = IntrinsicMath.Min(step, chunks * hs);
        for (int d0 = 0; d0 < hs; d0 += active)
        {
            int d = d0 + tid % hs, chunk = tid / hs;
            float partial = 0f;
            if (tid < active && d < hs)
                for (int s = chunk; s < span; s += chunks) partial += scores[row + s] * inverse * valueCache[cached + (long)s * c + d];
            reduction[tid] = partial;
            Group.Barrier();
            if (tid < hs && d0 + tid < hs && tid < active)
            {
                float acc = 0f;
                for (int k = 0; k < chunks; k++) acc += reduction[k * hs + tid];
                output[(long)r * c + h * hs + d0 + tid] = acc;
            }
            Group.Barrier();
        }
    }
}
