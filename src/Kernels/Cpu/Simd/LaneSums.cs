namespace DistAlign.Kernels.Cpu.Simd;

/// <summary>How the CPU kernels' long sums (log-sum-exp over the vocabulary, Σg² of the gradient norm) keep their error
/// independent of the vector width.</summary>
internal static class LaneSums
{
    /// <summary>
    /// Terms an fp32 lane adds before its partial sum goes to fp64. A lane that holds a large term loses up to half an ulp
    /// of it with every small term it adds, all in the same direction when the small terms are alike (a row whose weight
    /// sits in one logit): so the error of Σ is bounded by this count, not by the length, the chunk or the vector width:
    /// ≤ (8 + 2)·2⁻²⁴ ≈ 6·10⁻⁷ relative (8 adds, then two to combine four accumulators) on every path.
    /// </summary>
    public const int AddsPerLane = 8;
}
