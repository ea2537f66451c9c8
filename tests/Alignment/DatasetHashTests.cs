using DistAlign.Alignment.Data;

namespace DistAlign.Tests.Alignment;

public class DatasetHashTests
{
    private static TokenizedPreference Pair(int[] prompt, int[] chosen, int[] rejected, int line = 0) => new(prompt, chosen, rejected, line);

    private static readonly List<TokenizedPreference> Data =
    [
        Pair([2256, 10, 11], [12, 13, 2256], [14, 2256]),
        Pair([2256], [15], [16, 17]),
    ];

    [Test]
    public void HashIsStableHexSha256()
    {
        string hash = DatasetHash.Of(Data);
        Assert.That(hash, Does.Match("^[0-9a-f]{64}$"));
        var copy = Data.Select(p => Pair([.. p.PromptIds], [.. p.ChosenIds], [.. p.RejectedIds], line: 99)).ToList();
        Assert.That(DatasetHash.Of(copy), Is.EqualTo(hash), "same ids, other arrays and lines: same hash");
        // Pinned so that a change of encoding (which would silently invalidate caches) is noticed. The value was
        // checked against an independent computation (Python hashlib over the documented layout).
        Assert.That(hash, Is.EqualTo(PinnedHash));
    }

    private const string PinnedHash = "7e7ed1e806be7d5ba85e6b7196310d6cd48bfb7cf46da59c26252927638f67e2";

    [Test]
    public void HashChangesWithOneToken()
    {
        string hash = DatasetHash.Of(Data);
        var changed = Data.ToList();
        changed[1] = Pair([2256], [15], [16, 18]);
        Assert.That(DatasetHash.Of(changed), Is.Not.EqualTo(hash));
        Assert.That(DatasetHash.Of(Data.AsEnumerable().Reverse().ToList()), Is.Not.EqualTo(hash), "order matters");
        Assert.That(DatasetHash.Of(Data.Take(1).ToList()), Is.Not.EqualTo(hash));
    }

    [Test]
    public void MovingATokenBetweenSequencesChangesTheHash()
    {
        string a = DatasetHash.Of([Pair([2256, 5], [6, 7], [8])]);
        Assert.That(DatasetHash.Of([Pair([2256], [5, 6, 7], [8])]), Is.Not.EqualTo(a), "prompt → chosen");
        Assert.That(DatasetHash.Of([Pair([2256, 5], [6], [7, 8])]), Is.Not.EqualTo(a), "chosen → rejected");
        string two = DatasetHash.Of([Pair([1], [2], [3]), Pair([4], [5], [6])]);
        Assert.That(DatasetHash.Of([Pair([1], [2], [3, 4]), Pair([], [5], [6])]), Is.Not.EqualTo(two), "between examples");
    }

    [Test]
    public void PromptAndPreferenceHashesDiffer()
    {
        Assert.That(DatasetHash.Of(new List<TokenizedPrompt> { new([2256, 1], 1) }), Does.Match("^[0-9a-f]{64}$"));
        Assert.That(DatasetHash.Of(new List<TokenizedPrompt>()), Is.Not.EqualTo(DatasetHash.Of(new List<TokenizedPreference>())));
    }
}
