namespace DistAlign.Kernels.Cpu;

/// <summary>Argument checks shared by the CPU kernels; each failure names the argument and both sizes.</summary>
internal static class ShapeCheck
{
    public static void Length(int actual, long expected, string name, string shape)
    {
        if (actual != expected)
            throw new ArgumentException($"{name} has {actual} elements but the op needs {expected} ({shape}).", name);
    }

    public static void Positive(int value, string name)
    {
        if (value <= 0)
            throw new ArgumentOutOfRangeException(name, value, $"{name} must be at least 1.");
    }

    public static void NonNegative(int value, string name)
    {
        if (value < 0)
            throw new ArgumentOutOfRangeException(name, value, $"{name} must not be negative.");
    }
}
