using System.CommandLine;
using DistAlign.Engine.Distributed;
using DistAlign.Transformer.Training;
using Spectre.Console;

namespace DistAlign.Cli;

/// <summary>
/// The data-parallel job this process belongs to. Under Open MPI's <c>mpirun</c> every training command runs as one
/// rank of <c>MPI_COMM_WORLD</c>: it takes its share of every global batch, the gradients are summed over the ranks,
/// rank 0 alone prints and writes files, and the others keep stderr only. Started without <c>mpirun</c>, it is one
/// process and nothing changes.
/// </summary>
internal static class Ranks
{
    /// <summary>Commands that train data-parallel; the others refuse to run on more than one rank.</summary>
    public static readonly IReadOnlySet<string> DataParallelCommands = new HashSet<string> { "pretrain", "align", "reward", "step", "demo", "lm" };

    public static readonly Option<double> Timeout = new("--rank-timeout")
    {
        Description = "Under mpirun: seconds a collective may wait for the other ranks before this rank stops the job.",
        DefaultValueFactory = _ => 600, Recursive = true,
    };

    public static readonly Option<int> WeightCheckEvery = new("--check-weights-every")
    {
        Description = "Under mpirun: compare a hash of every rank's weights after every N steps (0 = never).",
        DefaultValueFactory = _ => 50, Recursive = true,
    };

    /// <summary>The ranks (one process unless started by mpirun).</summary>
    public static IProcessGroup Group { get; private set; } = SingleProcessGroup.Instance;

    /// <summary>This rank's index among the ranks on its machine (Open MPI's OMPI_COMM_WORLD_LOCAL_RANK; 0 without mpirun): its GPU.</summary>
    public static int LocalRank =>
        int.TryParse(Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_LOCAL_RANK"), out int local) && local >= 0 ? local : 0;

    /// <summary>Rank 0 prints and writes checkpoints, reports and models.</summary>
    public static bool IsRoot => Group.Rank == 0;

    /// <summary>How the trainers run across the ranks.</summary>
    public static DataParallelSettings Settings { get; private set; } = DataParallelSettings.SingleProcess;

    /// <summary>Joins the MPI job when started by mpirun; silences stdout on ranks other than 0.</summary>
    public static void Start(ParseResult parse)
    {
        if (!MpiProcessGroup.LaunchedByMpirun) return;
        double seconds = parse.GetValue(Timeout);
        if (!(seconds > 0)) throw new CliUsageException($"--rank-timeout must be a positive number of seconds (got {seconds})");
        int checkEvery = CliErrors.NonNegative(parse.GetValue(WeightCheckEvery), "--check-weights-every");
        Group = MpiProcessGroup.Initialize(TimeSpan.FromSeconds(seconds));
        Settings = new DataParallelSettings(Group, checkEvery);
        string command = parse.CommandResult.Command.Name;
        if (Group.Size > 1 && !DataParallelCommands.Contains(command))
            throw new CliUsageException($"'{command}' does not run across ranks; start it without mpirun " +
                                        "(data-parallel: pretrain, align, reward, demo, experiment lm, bench step)");
        if (!IsRoot)
        {
            Console.SetOut(TextWriter.Null);
            AnsiConsole.Console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(TextWriter.Null) });
        }
        else if (Group.Size > 1) Console.Error.WriteLine($"distalign: data-parallel over {Group.Description}");
    }

    /// <summary>
    /// ZeRO-1 for a loaded model: a copy of its weights in a model that keeps the AdamW moments of this rank's chunk only
    /// (the loaded one is disposed); the model itself in one process.
    /// </summary>
    public static Transformer.Model.Gpt WithShardedOptimizer(Transformer.Model.Gpt model)
    {
        if (Group.Size == 1) return model;
        var sharded = new Transformer.Model.Gpt(model.Config, shardOptimizerOver: Group);
        model.Parameters.CopyTo(sharded.Parameters);
        model.Dispose();
        var shard = sharded.OptimizerShard!;
        Console.WriteLine($"ZeRO-1: each rank keeps the AdamW moments of {shard.ChunkLength:N0} of the {shard.TotalElements:N0} parameters ({Group.Size} ranks)");
        return sharded;
    }

    /// <summary>"rank 1 of 2: " in a multi-rank job, "" otherwise (a prefix for error lines).</summary>
    public static string Prefix => Group.Size > 1 ? $"rank {Group.Rank} of {Group.Size}: " : "";

    /// <summary>Leaves the job cleanly (a barrier, then MPI_Finalize) after a command succeeded on this rank.</summary>
    public static void Finish() => Group.Dispose();
}
