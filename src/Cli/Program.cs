using System.CommandLine;

namespace DistAlign.Cli;

public static class Program
{
    public static int Main(string[] args)
    {
        var root = new RootCommand("DistAlign: train small transformer LMs and align them to pairwise preferences.");
        foreach (var command in Commands.All()) root.Subcommands.Add(command);
        return root.Parse(args).Invoke();
    }
}
