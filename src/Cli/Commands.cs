using System.CommandLine;

namespace DistAlign.Cli;

/// <summary>Every subcommand of <c>distalign</c>; each lives in its own file.</summary>
internal static class Commands
{
    public static IEnumerable<Command> All()
    {
        yield return GemmCheckCommand.Create();
        yield return PretrainCommand.Create();
        yield return SampleCommand.Create();
        yield return ScoreCommand.Create();
        yield return BenchCommand.Create();
        yield return AlignCommand.Create();
        yield return RewardCommand.Create();
        yield return DemoCommand.Create();
        yield return ExperimentCommand.Create(ExperimentLmCommand.Create());
    }
}
