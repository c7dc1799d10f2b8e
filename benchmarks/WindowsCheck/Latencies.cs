using System.Globalization;

namespace WindowsCheck;

/// <summary>Connect times, kept whole (10,000 doubles): percentiles, the slowest, and the stalls over a threshold.</summary>
internal sealed class Latencies
{
    private readonly List<double> _ms = [];
    private readonly Lock _lock = new();

    public void Add(TimeSpan elapsed)
    {
        lock (_lock)
        {
            _ms.Add(elapsed.TotalMilliseconds);
        }
    }

    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _ms.Count;
            }
        }
    }

    /// <summary>Times at or over <paramref name="threshold"/>.</summary>
    public int Over(TimeSpan threshold)
    {
        lock (_lock)
        {
            return _ms.Count(ms => ms >= threshold.TotalMilliseconds);
        }
    }

    /// <summary>The <paramref name="percent"/>th percentile in milliseconds (nearest rank); 0 when empty.</summary>
    public double Percentile(double percent)
    {
        lock (_lock)
        {
            if (_ms.Count == 0)
            {
                return 0;
            }

            var sorted = _ms.Order().ToArray();
            var rank = (int)Math.Ceiling(percent / 100 * sorted.Length);
            return sorted[Math.Clamp(rank - 1, 0, sorted.Length - 1)];
        }
    }

    /// <summary>"p50 0.21 ms, p99 1.9 ms, max 12.0 ms (N timed)".</summary>
    public string Summary() => string.Create(CultureInfo.InvariantCulture,
        $"p50 {Percentile(50):0.00} ms, p99 {Percentile(99):0.00} ms, max {Percentile(100):0.0} ms ({Count} timed)");
}
