using System.Text;

namespace DistAlign.Alignment.Benchmarks;

/// <summary>
/// docs/benchmarks.md as one section per ISA (the vector width our kernels ran: AVX-512, AVX2, ...), each written by its
/// own report run, then an "Earlier measurements" tail. A run replaces its own ISA's section and keeps the others as they
/// were, so a machine (or a view of one, e.g. <c>DOTNET_EnableAVX512=0</c>) updates only what it measured. A section lies
/// between <c>&lt;!-- isa-section ISA begin --&gt;</c> and <c>&lt;!-- isa-section ISA end --&gt;</c> lines.
/// </summary>
public static class BenchmarkDocument
{
    /// <summary>The heading of the tail that keeps older measurements.</summary>
    public const string EarlierHeading = "## Earlier measurements";

    /// <summary>The sections every document shows, in this order (a placeholder until measured); others follow them.</summary>
    public static readonly IReadOnlyList<string> StandardIsas = ["AVX-512", "AVX2"];

    /// <summary>The marker line that opens <paramref name="isa"/>'s section.</summary>
    public static string Begin(string isa) => $"<!-- isa-section {isa} begin -->";

    /// <summary>The marker line that closes <paramref name="isa"/>'s section.</summary>
    public static string End(string isa) => $"<!-- isa-section {isa} end -->";

    /// <summary>
    /// The new document: <paramref name="header"/>, then the ISA sections — <paramref name="section"/> as
    /// <paramref name="isa"/>'s, the others taken from <paramref name="previous"/>, a placeholder for a standard ISA never
    /// measured — then the earlier measurements: <paramref name="previous"/>'s own tail, or, for a document from before the
    /// sections existed, all of it with headings one level down.
    /// </summary>
    /// <param name="previous">The document as it was (null or empty: none).</param>
    /// <param name="header">The title and the lines before the sections.</param>
    /// <param name="isa">The section this run wrote, e.g. "AVX2".</param>
    /// <param name="section">That section's text, from its <c>## </c> heading on.</param>
    public static string Merge(string? previous, string header, string isa, string section)
    {
        var sections = new Dictionary<string, string>(StringComparer.Ordinal);
        string earlier = "";
        if (!string.IsNullOrWhiteSpace(previous))
        {
            (sections, string rest) = Sections(previous);
            earlier = sections.Count == 0 ? Earlier(previous) : Tail(rest);
        }
        sections[isa] = section.Trim();
        var order = StandardIsas.Concat(sections.Keys.Where(k => !StandardIsas.Contains(k)).Order(StringComparer.Ordinal));
        var doc = new StringBuilder(header.TrimEnd()).Append("\n\n");
        foreach (string name in order)
        {
            string text = sections.TryGetValue(name, out string? s) ? s : Placeholder(name);
            doc.Append(Begin(name)).Append('\n').Append(text).Append('\n').Append(End(name)).Append("\n\n");
        }
        if (earlier.Length > 0) doc.Append(EarlierHeading).Append("\n\n").Append(earlier.TrimEnd()).Append('\n');
        return doc.ToString().TrimEnd() + "\n";
    }

    /// <summary>The text of every marked section of <paramref name="document"/>, and what lies outside them.</summary>
    public static (Dictionary<string, string> Sections, string Outside) Sections(string document)
    {
        var sections = new Dictionary<string, string>(StringComparer.Ordinal);
        var rest = new StringBuilder();
        string[] lines = document.Replace("\r\n", "\n").Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            string? isa = MarkerIsa(lines[i], "begin");
            int end = isa is null ? -1 : Array.FindIndex(lines, i + 1, l => l.Trim() == End(isa));
            if (isa is null || end < 0)
            {
                rest.Append(lines[i]).Append('\n');
                continue;
            }
            sections[isa] = string.Join('\n', lines[(i + 1)..end]).Trim();
            i = end;
        }
        return (sections, rest.ToString());
    }

    private static string? MarkerIsa(string line, string kind)
    {
        string t = line.Trim();
        const string prefix = "<!-- isa-section ";
        string suffix = $" {kind} -->";
        return t.StartsWith(prefix, StringComparison.Ordinal) && t.EndsWith(suffix, StringComparison.Ordinal) && t.Length > prefix.Length + suffix.Length
            ? t[prefix.Length..^suffix.Length]
            : null;
    }

    private static string Placeholder(string isa) =>
        $"## {isa}\n\nNot measured yet on this view of a CPU. `tools/bench-report.sh` writes it: on an AVX-512 CPU it runs the native " +
        "AVX-512 report and then the AVX2 view (`DOTNET_EnableAVX512=0 OPENBLAS_CORETYPE=Haswell`); on an AVX2 CPU its native run is this section.";

    /// <summary>The text after the earlier-measurements heading of what lay outside the sections.</summary>
    private static string Tail(string rest)
    {
        int at = rest.IndexOf(EarlierHeading, StringComparison.Ordinal);
        return at < 0 ? "" : rest[(at + EarlierHeading.Length)..].Trim();
    }

    /// <summary>A document from before the sections: its own "Earlier measurements" section, or (the first time) all of it, headings one level down.</summary>
    private static string Earlier(string previous)
    {
        int at = previous.IndexOf(EarlierHeading, StringComparison.Ordinal);
        if (at >= 0) return previous[(at + EarlierHeading.Length)..].Trim();
        var lines = previous.Split('\n').SkipWhile(l => l.StartsWith("# ", StringComparison.Ordinal)).Select(l => l.StartsWith('#') ? "#" + l : l);
        return "Recorded before the report generator existed (kept verbatim, headings demoted):\n\n" + string.Join('\n', lines).Trim();
    }
}
