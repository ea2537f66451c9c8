using System.Runtime.InteropServices;
using DistAlign.Engine.Memory;

namespace DistAlign.Tests.Engine;

public class MemoryPlanTests
{
    private static MemoryPlan SmallPlan()
    {
        var builder = new MemoryPlanBuilder();
        builder.Arena("parameters")
            .Add<float>("wte.weight", 10)        // 40 bytes -> next offset 64
            .Add<float>("h.0.ln_1.weight", 16)   // 64 bytes at 64 -> ends 128
            .Add<ushort>("h.0.ln_1.bias", 3);    // 6 bytes at 128 -> arena 192
        builder.Arena("gradients").Add<float>("wte.weight", 10);
        builder.Arena("activations").Add<float>("residual", 1000);
        return builder.Build();
    }

    [Test]
    public void OffsetsAreAlignedAndSizesAddUp()
    {
        var plan = SmallPlan();
        var parameters = plan["parameters"];
        Assert.That(parameters.Tensors.Select(t => t.ByteOffset), Is.EqualTo(new long[] { 0, 64, 128 }));
        Assert.That(parameters.SizeInBytes, Is.EqualTo(192));
        Assert.That(plan["gradients"].SizeInBytes, Is.EqualTo(64));
        Assert.That(plan["activations"].SizeInBytes, Is.EqualTo(4032)); // 4000 rounded up to 64
        Assert.That(plan.TotalBytes, Is.EqualTo(192 + 64 + 4032));
        Assert.That(plan.Arenas.Select(a => a.Name), Is.EqualTo(new[] { "parameters", "gradients", "activations" }));
        Assert.That(plan.LargestArena!.Name, Is.EqualTo("activations"));
        foreach (var arena in plan.Arenas)
            foreach (var t in arena.Tensors)
                Assert.That(t.ByteOffset % MemoryPlan.Alignment, Is.EqualTo(0), t.Name);
    }

    [Test]
    public void ArenaBuilderIsReturnedForTheSameNameAndRejectsDuplicateTensors()
    {
        var builder = new MemoryPlanBuilder();
        builder.Arena("a").Add<float>("x", 1);
        builder.Arena("a").Add<float>("y", 1);
        var ex = Assert.Throws<ArgumentException>(() => builder.Arena("a").Add<float>("x", 2));
        Assert.That(ex!.Message, Does.Contain("'x'").And.Contain("'a'"));
        Assert.That(builder.Build()["a"].Tensors, Has.Count.EqualTo(2));
        Assert.Throws<ArgumentOutOfRangeException>(() => builder.Arena("a").Add<float>("z", -1));
        Assert.Throws<ArgumentOutOfRangeException>(() => builder.Arena("a").Add("z", 1, 0));
    }

    [Test]
    public void SizeArithmeticIsOverflowChecked()
    {
        var builder = new MemoryPlanBuilder();
        builder.Arena("huge").Add<double>("t", long.MaxValue / 4);
        var ex = Assert.Throws<OverflowException>(() => builder.Build());
        Assert.That(ex!.Message, Does.Contain("'huge'").And.Contain("'t'"));

        var twoArenas = new MemoryPlanBuilder();
        twoArenas.Arena("a").Add<byte>("t", long.MaxValue / 2 + 1);
        twoArenas.Arena("b").Add<byte>("t", long.MaxValue / 2 + 1);
        Assert.Throws<OverflowException>(() => twoArenas.Build());
    }

    [Test]
    public void EnsureFitsPassesWithinBudget()
    {
        var plan = SmallPlan();
        Assert.DoesNotThrow(() => plan.EnsureFits(plan.TotalBytes));
    }

    [Test]
    public void EnsureFitsReportsNeededBudgetAndLargestArena()
    {
        var plan = SmallPlan();
        var ex = Assert.Throws<MemoryBudgetExceededException>(() => plan.EnsureFits(1000));
        Assert.That(ex!.NeededBytes, Is.EqualTo(plan.TotalBytes));
        Assert.That(ex.BudgetBytes, Is.EqualTo(1000));
        Assert.That(ex.LargestArena, Is.EqualTo("activations"));
        Assert.That(ex.LargestArenaBytes, Is.EqualTo(4032));
        Assert.That(ex.Message, Does.Contain("4,288").And.Contain("1,000").And.Contain("'activations'"));
    }

    [Test]
    public void BudgetIsCheckedBeforeAnythingIsAllocated()
    {
        // A plan far larger than any machine: if allocation were attempted first, it would fail differently.
        var builder = new MemoryPlanBuilder();
        builder.Arena("activations").Add<float>("x", 1L << 60);
        var plan = builder.Build();
        Assert.Throws<MemoryBudgetExceededException>(() => MemoryArenas.Allocate(plan, budgetBytes: 1L << 30));
    }

    [Test]
    public void DescribeListsEveryArenaAndTheTotal()
    {
        string table = SmallPlan().Describe();
        TestContext.Out.WriteLine(table);
        var lines = table.Split('\n');
        Assert.That(lines, Has.Length.EqualTo(2 + 3 + 1));
        Assert.That(lines[2], Does.StartWith("parameters").And.Contain("192"));
        Assert.That(lines[4], Does.StartWith("activations").And.Contain("4,032").And.Contain("3.9 KiB"));
        Assert.That(lines[5], Does.StartWith("total").And.Contain("4,288"));
    }

    [Test]
    public void UnknownArenaNameListsPlannedArenas()
    {
        var ex = Assert.Throws<KeyNotFoundException>(() => _ = SmallPlan()["adam_m"]);
        Assert.That(ex!.Message, Does.Contain("'adam_m'").And.Contain("'parameters'"));
    }
}

public class ArenaTests
{
    [TestCase(0)]
    [TestCase(1)]
    [TestCase(17)]
    [TestCase(4096)]
    [TestCase(1 << 20)]
    public void BlocksAreZeroedAnd64ByteAligned(int floats)
    {
        var builder = new MemoryPlanBuilder();
        builder.Arena("p").Add<float>("w", floats);
        var plan = builder.Build()["p"];
        // Dirty a block of the same size first, so that a reused allocation would show up unless it is cleared.
        using (var dirty = Arena.Allocate(plan)) dirty.Bytes.Fill(0xAB);
        using var arena = Arena.Allocate(plan);
        Assert.That(arena.Address % MemoryPlan.Alignment, Is.EqualTo((nint)0));
        Assert.That(arena.Address, Is.Not.EqualTo((nint)0), "even an empty arena has an address");
        Assert.That(arena.SizeInBytes, Is.EqualTo(plan.SizeInBytes));
        Assert.That(arena.Bytes.Length, Is.EqualTo(plan.SizeInBytes));
        Assert.That(arena.Bytes.IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "zero-filled");
        Assert.That(arena.Span<float>("w").Length, Is.EqualTo(floats));
    }

    [Test]
    public unsafe void TensorSpansSitAtPlannedOffsetsAndDoNotOverlap()
    {
        var builder = new MemoryPlanBuilder();
        builder.Arena("parameters").Add<float>("a", 3).Add<float>("b", 5).Add<int>("c", 2);
        var plan = builder.Build();
        using var memory = MemoryArenas.Allocate(plan, budgetBytes: 1 << 20);
        var arena = memory["parameters"];
        Assert.That(arena.SizeInBytes, Is.EqualTo(plan["parameters"].SizeInBytes));
        Assert.That(memory.Plan, Is.SameAs(plan));
        Assert.That(arena.Plan, Is.SameAs(plan["parameters"]));

        arena.Span<float>("a").Fill(1f);
        arena.Span<float>("b").Fill(2f);
        arena.Span<int>("c").Fill(3);
        Assert.That(arena.Span<float>("a").ToArray(), Is.All.EqualTo(1f));
        Assert.That(arena.Span<float>("b").ToArray(), Is.All.EqualTo(2f));
        fixed (float* b = arena.Span<float>("b")) Assert.That((nint)b - arena.Address, Is.EqualTo((nint)64));
        fixed (byte* c = arena["c"]) Assert.That((nint)c - arena.Address, Is.EqualTo((nint)128));
        Assert.That(arena["c"].Length, Is.EqualTo(8));

        var whole = arena.Bytes.ToArray();
        Assert.That(BitConverter.ToSingle(whole, 64), Is.EqualTo(2f));
        Assert.That(BitConverter.ToInt32(whole, 128), Is.EqualTo(3));
        Assert.That(BitConverter.ToSingle(whole, 12), Is.EqualTo(0f), "padding after 'a' stays untouched");
        Assert.That(MemoryMarshal.Cast<byte, int>(arena["c"]).ToArray(), Is.EqualTo(new[] { 3, 3 }));
    }

    [Test]
    public void UnknownTensorNameNamesTensorAndArena()
    {
        var builder = new MemoryPlanBuilder();
        builder.Arena("parameters").Add<float>("h.0.ln_1.weight", 4);
        using var memory = MemoryArenas.Allocate(builder.Build());
        var ex = Assert.Throws<KeyNotFoundException>(() => _ = memory["parameters"]["h.0.ln_2.weight"]);
        Assert.That(ex!.Message, Does.Contain("'h.0.ln_2.weight'").And.Contain("'parameters'").And.Contain("'h.0.ln_1.weight'"));
        Assert.Throws<KeyNotFoundException>(() => _ = memory["parameters"].Span<float>("h.0.ln_2.weight"));
        var missing = Assert.Throws<KeyNotFoundException>(() => _ = memory["gradients"]);
        Assert.That(missing!.Message, Does.Contain("'gradients'").And.Contain("'parameters'"));
    }

    [Test]
    public void WrongElementTypeIsRejected()
    {
        var builder = new MemoryPlanBuilder();
        builder.Arena("p").Add<float>("w", 4);
        using var arena = Arena.Allocate(builder.Build()["p"]);
        var ex = Assert.Throws<ArgumentException>(() => arena.Span<double>("w"));
        Assert.That(ex!.Message, Does.Contain("'w'").And.Contain("'p'").And.Contain("4-byte").And.Contain("Double (8 bytes)"));
        Assert.That(arena.Span<int>("w").Length, Is.EqualTo(4), "another type of the planned size is allowed");
    }

    [Test]
    public void AnImpossibleArenaIsRefusedWithItsNameAndBytes()
    {
        var builder = new MemoryPlanBuilder();
        builder.Arena("small").Add<float>("x", 16);
        builder.Arena("huge").Add<float>("x", 1L << 60);   // 4 EiB: more than any address space
        var plan = builder.Build();
        long bytes = plan["huge"].SizeInBytes;
        var ex = Assert.Throws<ArenaOutOfMemoryException>(() => MemoryArenas.Allocate(plan))!;
        Assert.That(ex, Is.InstanceOf<OutOfMemoryException>());
        Assert.That((ex.ArenaName, ex.RequestedBytes), Is.EqualTo(("huge", bytes)));
        Assert.That(ex.Message, Does.Contain("'huge'").And.Contain(bytes.ToString("N0", System.Globalization.CultureInfo.InvariantCulture)));
    }

    [Test]
    public void DoubleDisposeIsSafeAndUseAfterDisposeThrows()
    {
        var builder = new MemoryPlanBuilder();
        builder.Arena("p").Add<float>("w", 4);
        var memory = MemoryArenas.Allocate(builder.Build());
        var arena = memory["p"];
        memory.Dispose();
        memory.Dispose();
        arena.Dispose();
        Assert.That(arena.IsDisposed, Is.True);
        var ex = Assert.Throws<ObjectDisposedException>(() => arena.Span<float>("w"))!;
        Assert.That(ex.Message, Does.Contain("'p'"));
        Assert.Throws<ObjectDisposedException>(() => _ = arena["w"]);
        Assert.Throws<ObjectDisposedException>(() => _ = arena.Bytes);
        Assert.Throws<ObjectDisposedException>(() => _ = arena.Address);
    }
}
