using DistAlign.Engine.Distributed;

namespace DistAlign.Tests.Reliability;

/// <summary>Whether Open MPI can start jobs here: <c>mpirun</c> on PATH and <c>libmpi.so.40</c> loadable.</summary>
internal static class MpiAvailability
{
    /// <summary>The full path of <c>mpirun</c>, or null.</summary>
    public static readonly string? Mpirun = (Environment.GetEnvironmentVariable("PATH") ?? "")
        .Split(':', StringSplitOptions.RemoveEmptyEntries)
        .Select(d => Path.Combine(d, "mpirun"))
        .FirstOrDefault(File.Exists);

    /// <summary>Ignores the calling test, with the reason, when MPI cannot start on this machine.</summary>
    public static void RequireMpi()
    {
        if (Mpirun is null) Assert.Ignore("mpirun is not on PATH (install Open MPI: apt-get install openmpi-bin; .ci/run does)");
        if (!Mpi.IsAvailable) Assert.Ignore(Mpi.UnavailableReason);
    }
}
