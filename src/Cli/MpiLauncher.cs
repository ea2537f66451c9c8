using System.Diagnostics;
using DistAlign.Engine.Distributed;

namespace DistAlign.Cli;

/// <summary>
/// Starts this same CLI as an N-rank job under Open MPI's <c>mpirun</c> on this machine (what <c>--ranks N</c> does):
/// no binding of ranks to cores, so each rank's --threads can spread, and root allowed when this process is root
/// (containers, CI). The job's output goes to this process's console.
/// </summary>
internal static class MpiLauncher
{
    /// <summary>
    /// The command line (program first) that runs <c>distalign ARGS</c> on <paramref name="ranks"/> ranks under mpirun, or as
    /// one plain process when <paramref name="ranks"/> is 1.
    /// </summary>
    public static List<string> CommandLine(int ranks, IEnumerable<string> args)
    {
        var line = new List<string>();
        if (ranks > 1)
        {
            line.AddRange(["mpirun", "-np", ranks.ToString(System.Globalization.CultureInfo.InvariantCulture), "--bind-to", "none", "--oversubscribe"]);
            if (Environment.UserName == "root") line.Add("--allow-run-as-root");
        }
        string host = Environment.ProcessPath ?? "dotnet";
        line.Add(host);
        // Under the dotnet host the CLI is a dll argument; a published apphost is the program itself.
        if (Path.GetFileNameWithoutExtension(host) == "dotnet") line.Add(typeof(MpiLauncher).Assembly.Location);
        line.AddRange(args);
        return line;
    }

    /// <summary>Runs the job to its end and returns mpirun's exit code.</summary>
    /// <exception cref="CliUsageException">mpirun or Open MPI's library is missing.</exception>
    public static int Run(int ranks, IEnumerable<string> args, string? standardOutputFile = null)
    {
        if (ranks > 1 && !MpiProcessGroup.IsAvailable) throw new CliUsageException($"--ranks {ranks}: {MpiProcessGroup.UnavailableReason}");
        var line = CommandLine(ranks, args);
        var start = new ProcessStartInfo(line[0]) { UseShellExecute = false, RedirectStandardOutput = standardOutputFile is not null };
        foreach (var a in line.Skip(1)) start.ArgumentList.Add(a);
        Console.Error.WriteLine($"distalign: {string.Join(' ', line)}");
        Process job;
        try { job = Process.Start(start)!; }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new CliUsageException($"--ranks {ranks}: could not start mpirun ({e.Message}); install Open MPI (apt-get install openmpi-bin)");
        }
        using (job)
        {
            if (standardOutputFile is not null) File.WriteAllText(standardOutputFile, job.StandardOutput.ReadToEnd());
            job.WaitForExit();
            return job.ExitCode;
        }
    }
}
