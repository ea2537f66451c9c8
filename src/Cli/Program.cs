using System.CommandLine;
using DistAlign.Engine.Distributed;
using DistAlign.Engine.Memory;
using DistAlign.Engine.SafeTensors;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Cli;

public static class Program
{
    /// <summary>Exit code for bad flags, missing inputs and other user errors.</summary>
    public const int UsageError = 2;
    /// <summary>Exit code for a run that failed (bad data, non-finite values, I/O).</summary>
    public const int RunFailed = 1;

    public static int Main(string[] args)
    {
        var verbose = new Option<bool>("--verbose") { Description = "Print stack traces with errors.", Recursive = true };
        var root = new RootCommand("DistAlign: train small transformer LMs and align them to pairwise preferences.") { verbose, Ranks.Timeout, Ranks.WeightCheckEvery };
        foreach (var command in Commands.All()) root.Subcommands.Add(command);
        DeviceOption.AddToAll(root);   // --device cuda|cpu|auto on every command

        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            // One line, whatever the number of errors, so scripts and logs get one record per failure.
            Console.Error.WriteLine($"distalign: {string.Join("; ", parse.Errors.Select(e => e.Message))} (see 'distalign --help' or 'distalign COMMAND --help')");
            return UsageError;
        }
        try
        {
            Ranks.Start(parse);   // joins the MPI job when started by mpirun
            int exitCode = parse.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
            // Leaving MPI cleanly only after success: a rank that fails exits without MPI_Finalize, and mpirun stops the others.
            if (exitCode == 0) Ranks.Finish();
            return exitCode;
        }
        catch (Exception e)
        {
            int code = e switch
            {
                CliUsageException or ArgumentException or FileNotFoundException or DirectoryNotFoundException
                    or CheckpointMismatchException or SafeTensorsFormatException or MemoryBudgetExceededException => UsageError,
                _ => RunFailed,
            };
            string kind = e switch
            {
                NonFiniteValueException => "training stopped",
                IOException or UnauthorizedAccessException => "I/O error",
                _ => "error",
            };
            Console.Error.WriteLine($"distalign: {Ranks.Prefix}{kind}: {e.Message}");
            if (parse.GetValue(verbose)) Console.Error.WriteLine(e);
            else if (code == RunFailed && e is not (NonFiniteValueException or IOException or UnauthorizedAccessException))
                Console.Error.WriteLine("(run with --verbose for the stack trace)");
            return code;
        }
    }
}
