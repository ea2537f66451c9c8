using ILGPU;
using ILGPU.Runtime;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// Deterministic column sums on the GPU: sums[c] += Σ_r x[r, c] for x [N, C] (accumulates, as the backward ops
/// do), used for bias gradients. No atomics, so the result is bit-identical run to run on one device:
/// <list type="number">
/// <item>stage 1: one thread per (block of <see cref="RowsPerBlock"/> rows, channel) sums its rows of one channel
/// in row order into partials[block, c]; adjacent threads take adjacent channels, so each row read is coalesced;</item>
/// <item>stage 2: one thread per channel sums the partials in block order and adds the total into sums[c].</item>
/// </list>
/// The order differs from a CPU row-order sum (blocks of <see cref="RowsPerBlock"/> rows, then the blocks), so the
/// result is equal to it only up to fp32 rounding. The partials live in a scratch buffer this object owns
/// (grown on demand, never shrunk); one instance must not be used from two streams at once.
/// </summary>
public sealed class GpuColumnSum : IDisposable
{
    /// <summary>Rows summed by one stage-1 thread: at N = 16384, C = 768 stage 1 runs 256 × 768 threads and
    /// stage 2 sums 256 partials per channel.</summary>
    public const int RowsPerBlock = 64;

    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, int, int, ArrayView<float>, ArrayView<ushort>, int> partials;
    private readonly MemoryBuffer1D<ushort, Stride1D.Dense> noCopy;   // a valid view for Sum, which writes no bf16 copy
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, int, int, ArrayView<float>> sumPartials;
    private readonly Accelerator accelerator;
    private MemoryBuffer1D<float, Stride1D.Dense>? scratch;

    public GpuColumnSum(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        partials = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, int, int, ArrayView<float>, ArrayView<ushort>, int>(PartialsKernel);
        noCopy = accelerator.Allocate1D<ushort>(1);
        sumPartials = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, int, int, ArrayView<float>>(SumPartialsKernel);
    }

    /// <summary>Row blocks of <see cref="RowsPerBlock"/> rows covering <paramref name="rows"/> rows (the last may be short).</summary>
    public static int Blocks(int rows) => (rows + RowsPerBlock - 1) / RowsPerBlock;

    /// <summary>sums[c] += Σ_r input[r, c] over input [N, C], C = sums.Length. N = 0 leaves sums unchanged.</summary>
    public void Sum(ArrayView<float> input, ArrayView<float> sums)
    {
        var (n, c) = Check(input, sums);
        if (n == 0) return;
        int blocks = Blocks(n);
        var partials = Scratch((long)blocks * c);
        this.partials(accelerator.DefaultStream, blocks * c, input, n, c, partials, noCopy.View, 0);
        AddPartials(partials, blocks, sums);
    }

    /// <summary>
    /// <see cref="Sum"/> that also writes <paramref name="inputBFloat16"/>[r, c] = bf16(input[r, c]) (round to nearest
    /// even) in the same pass: the bias gradient and the bf16 copy of dy that the mixed-precision backward GEMMs read,
    /// for one read of dy. Same sums, bit for bit.
    /// </summary>
    public void SumAndRoundToBFloat16(ArrayView<float> input, ArrayView<float> sums, ArrayView<ushort> inputBFloat16)
    {
        GpuLaunch.CheckLength(inputBFloat16.Length, input.Length, nameof(inputBFloat16), "same length as input");
        var (n, c) = Check(input, sums);
        if (n == 0) return;
        int blocks = Blocks(n);
        var partials = Scratch((long)blocks * c);
        this.partials(accelerator.DefaultStream, blocks * c, input, n, c, partials, inputBFloat16, 1);
        AddPartials(partials, blocks, sums);
    }

    /// <summary>input [N, C] with C = sums.Length; returns (N, C).</summary>
    private static (int N, int C) Check(ArrayView<float> input, ArrayView<float> sums)
    {
        int c = (int)sums.Length;
        GpuLaunch.CheckPositive(c, "sums.Length");
        if (input.Length % c != 0)
            throw new ArgumentException($"input has {input.Length} elements, not a multiple of C = {c} (sums.Length).", nameof(input));
        if (input.Length > int.MaxValue) throw new ArgumentException("input is too large for 32-bit GPU indexing.", nameof(input));
        return ((int)(input.Length / c), c);
    }

    /// <summary>
    /// A device scratch of at least <paramref name="length"/> floats, valid until the next call on this object.
    /// Growing it waits for the queued work (which may still read the old buffer) before freeing the old one.
    /// </summary>
    internal ArrayView<float> Scratch(long length)
    {
        if (scratch is null || scratch.Length < length)
        {
            if (scratch is not null)
            {
                accelerator.Synchronize();
                scratch.Dispose();
            }
            scratch = null;
            scratch = accelerator.Allocate1D<float>(Math.Max(length, 1));
        }
        return scratch.View.SubView(0, length);
    }

    /// <summary>Stage 2: sums[c] += Σ_b partials[b, c], b = 0 … blocks − 1 in order, for partials [blocks, C].</summary>
    internal void AddPartials(ArrayView<float> partials, int blocks, ArrayView<float> sums)
    {
        int c = (int)sums.Length;
        sumPartials(accelerator.DefaultStream, c, partials, blocks, c, sums);
    }

    // partials[b, c] = Σ_{r = bR}^{min(N, bR + R) − 1} input[r, c], in row order; with round = 1 also
    // inputBFloat16[r, c] = bf16(input[r, c]) for every element read. Four loads are issued before the four adds that
    // consume them (the adds stay in row order), so a thread waits on memory once per four rows.
    [GpuKernel(false)]
    internal static void PartialsKernel(Index1D i, ArrayView<float> input, int rows, int channels, ArrayView<float> partials,
                                        ArrayView<ushort> inputBFloat16, int round)
    {
        int block = i / channels, c = i - block * channels;
        int first = block * RowsPerBlock, end = IntrinsicMath.Min(rows, first + RowsPerBlock);
        long at = (long)first * channels + c;
        float sum = 0f;
        int r = first;
        for (; r + 4 <= end; r += 4, at += 4L * channels)
        {
            float a = input[at], b = input[at + channels], d = input[at + 2L * channels], e = input[at + 3L * channels];
            if (round != 0)
            {
                inputBFloat16[at] = GpuBFloat16.Round(a);
                inputBFloat16[at + channels] = GpuBFloat16.Round(b);
                inputBFloat16[at + 2L * channels] = GpuBFloat16.Round(d);
                inputBFloat16[at + 3L * channels] = GpuBFloat16.Round(e);
            }
            sum += a;
            sum += b;
            sum += d;
            sum += e;
        }
        for (; r < end; r++, at += channels)
        {
            float x = input[at];
            if (round != 0) inputBFloat16[at] = GpuBFloat16.Round(x);
            sum += x;
        }
        partials[i] = sum;
    }

    // sums[c] += Σ_b partials[b, c], b in order (loads four at a time, adds in order).
    [GpuKernel(false)]
    internal static void SumPartialsKernel(Index1D c, ArrayView<float> partials, int blocks, int channels, ArrayView<float> sums)
    {
        float sum = 0f;
        long at = c;
        int b = 0;
        for (; b + 4 <= blocks; b += 4, at += 4L * channels)
        {
            float p0 = partials[at], p1 = partials[at + channels], p2 = partials[at + 2L * channels], p3 = partials[at + 3L * channels];
            sum += p0;
            sum += p1;
            sum += p2;
            sum += p3;
        }
        for (; b < blocks; b++, at += channels) sum += partials[at];
        sums[c] += sum;
    }

    public void Dispose()
    {
        scratch?.Dispose();
        noCopy.Dispose();
        scratch = null;
    }
}
