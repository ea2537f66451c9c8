using System.Diagnostics;
using System.Text;

namespace DistAlign.Tests.Reliability;

/// <summary>
/// The real <c>distalign</c> CLI in a child process (the built <c>distalign.dll</c> next to the tests, run by the same
/// <c>dotnet</c> host), so a test can SIGKILL it, limit its disk, and read its exit code and streams.
/// </summary>
internal sealed class CliProcess : IDisposable
{
    private readonly Process process;
    private readonly StringBuilder output = new(), error = new();

    public static string DllPath => Path.Combine(TestContext.CurrentContext.TestDirectory, "distalign.dll");

    /// <summary>The dotnet host running these tests.</summary>
    public static string DotnetHost => Environment.ProcessPath is { } p && Path.GetFileNameWithoutExtension(p) == "dotnet" ? p : "dotnet";

    private CliProcess(ProcessStartInfo start)
    {
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        start.UseShellExecute = false;
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["NO_COLOR"] = "1";
        process = new Process { StartInfo = start };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (error) error.AppendLine(e.Data); };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
    }

    /// <summary>Starts <c>dotnet distalign.dll ARGS</c>.</summary>
    public static CliProcess Start(params string[] args)
    {
        var start = new ProcessStartInfo(DotnetHost);
        start.ArgumentList.Add(DllPath);
        foreach (var a in args) start.ArgumentList.Add(a);
        return new CliProcess(start);
    }

    /// <summary>
    /// Starts <c>mpirun -np RANKS … dotnet distalign.dll ARGS</c> on this machine (loopback, no binding to cores, root
    /// allowed as in CI), with <c>DISTALIGN_TEST_JOB=<paramref name="job"/></c> in every rank's environment so that a test
    /// can find a rank's process (<see cref="RankProcessId"/>).
    /// </summary>
    public static CliProcess StartUnderMpirun(int ranks, string job, params string[] args)
    {
        var start = new ProcessStartInfo(MpiAvailability.Mpirun!);
        foreach (var a in new[] { "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader,tcp",
                                  "-np", ranks.ToString(), "-x", $"{JobVariable}={job}", DotnetHost, DllPath })
            start.ArgumentList.Add(a);
        foreach (var a in args) start.ArgumentList.Add(a);
        return new CliProcess(start);
    }

    private const string JobVariable = "DISTALIGN_TEST_JOB";

    /// <summary>The process id of rank <paramref name="rank"/> of the job started with <paramref name="job"/>, or null while there is none.</summary>
    public static int? RankProcessId(string job, int rank)
    {
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid)) continue;
            string environment;
            try { environment = File.ReadAllText(Path.Combine(dir, "environ")); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { continue; }
            var variables = environment.Split('\0');
            if (variables.Contains($"{JobVariable}={job}") && variables.Contains($"OMPI_COMM_WORLD_RANK={rank}")) return pid;
        }
        return null;
    }

    /// <summary>Starts <c>unshare -rm sh -c SCRIPT</c> with <c>"$DISTALIGN_HOST" "$DISTALIGN_DLL"</c> the command that runs the CLI.</summary>
    /// <remarks>Runs in a private user + mount namespace (<c>unshare -rm</c>) so the script may mount a small tmpfs.</remarks>
    public static CliProcess StartShell(string script)
    {
        var start = new ProcessStartInfo("unshare");
        start.ArgumentList.Add("-rm");
        start.ArgumentList.Add("/bin/sh");
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add(script);
        start.Environment["DISTALIGN_HOST"] = DotnetHost;
        start.Environment["DISTALIGN_DLL"] = DllPath;
        return new CliProcess(start);
    }

    public bool HasExited => process.HasExited;
    public int ExitCode => process.ExitCode;
    public string Output { get { lock (output) return output.ToString(); } }
    public string Error { get { lock (error) return error.ToString(); } }

    /// <summary>SIGKILL (what <see cref="Process.Kill()"/> sends on Unix), then waits for the exit.</summary>
    public void Kill()
    {
        try { process.Kill(); }
        catch (InvalidOperationException) { /* it had already exited */ }
        process.WaitForExit();
    }

    /// <summary>Waits for the exit and the end of both streams; kills and fails after <paramref name="timeout"/>.</summary>
    public int WaitForExit(TimeSpan timeout)
    {
        if (!process.WaitForExit(timeout))
        {
            Kill();
            Assert.Fail($"the CLI did not finish within {timeout.TotalSeconds:F0} s\nstdout: {Output}\nstderr: {Error}");
        }
        process.WaitForExit();
        return process.ExitCode;
    }

    public void Dispose() => process.Dispose();
}
