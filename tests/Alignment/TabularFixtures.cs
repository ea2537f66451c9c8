using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Cpu;

namespace DistAlign.Tests.Alignment;

/// <summary>The small tabular problem the objective tests share: 3 contexts × 5 responses, a fixed reward and start.</summary>
internal static class TabularFixtures
{
    public const int Contexts = 3, Responses = 5;

    /// <summary>R(x, y) uniform in [−1, 1), fixed.</summary>
    public static double[,] Reward()
    {
        var rng = new Random(4);
        var r = new double[Contexts, Responses];
        for (int x = 0; x < Contexts; x++)
            for (int y = 0; y < Responses; y++) r[x, y] = rng.NextDouble() * 2 - 1;
        return r;
    }

    /// <summary>A policy with logits uniform in [−½, ½), fixed.</summary>
    public static TabularPolicy Initial()
    {
        var policy = new TabularPolicy(Contexts, Responses);
        var rng = new Random(9);
        var l = policy.Logits;
        for (int i = 0; i < l.Length; i++) l[i] = (float)(rng.NextDouble() - 0.5);
        return policy;
    }

    /// <summary>Every context <paramref name="perContext"/> times, in order.</summary>
    public static List<int[]> Prompts(int perContext)
    {
        var prompts = new List<int[]>();
        for (int x = 0; x < Contexts; x++) for (int i = 0; i < perContext; i++) prompts.Add([x]);
        return prompts;
    }

    /// <summary>A known reward table as an <see cref="IRewardFunction"/>.</summary>
    public sealed class KnownReward(double[,] r) : IRewardFunction
    {
        public void Score(IReadOnlyList<PromptResponse> sequences, Span<float> rewards)
        {
            for (int i = 0; i < sequences.Count; i++) rewards[i] = (float)r[sequences[i].Prompt[0], sequences[i].Response[0]];
        }
    }
}

/// <summary>A fixture with a temporary folder and two CPU threads (restored afterwards), for tests that write runs.</summary>
[NonParallelizable]
public abstract class TemporaryRunFixture
{
    private int savedThreads;

    /// <summary>The test's own temporary folder, deleted afterwards.</summary>
    protected string RunDirectory { get; private set; } = "";

    [SetUp]
    public void CreateRunDirectory()
    {
        RunDirectory = Directory.CreateTempSubdirectory("distalign-run-").FullName;
        savedThreads = CpuParallel.Threads;
        CpuParallel.Threads = 2;
    }

    [TearDown]
    public void DeleteRunDirectory()
    {
        CpuParallel.Threads = savedThreads;
        Directory.Delete(RunDirectory, recursive: true);
    }
}
