using System.Diagnostics;
using System.Globalization;

namespace Transport.Winsock.AcceptPool;

/// <summary>
/// Descriptors kept free for the runtime on Linux: accepts are not posted while the process's open
/// descriptors are within <see cref="Reserve"/> of its soft RLIMIT_NOFILE, so the runtime can still start
/// threads, load assemblies and open files (with the table full, starting a thread pool thread fails and
/// the runtime aborts the process), and connections wait in the listen backlog instead. Each accept
/// already posted can still take one when it completes, so the listener's posted accepts come off the
/// limit first. Where the limit is so low that the reserve would leave nothing to accept with, half of
/// what is left at the start is kept instead. A pause ends only once a quarter of the reserve is free
/// again, so accepting does not flap at the edge.
/// <para>
/// Cheap on the hot path: the open descriptors are counted (a listing of /proc/self/fd) when the last
/// count is over a second old, and, once the last count plus the accepts since comes within five times the
/// reserve of the limit, after every eighth of the reserve in accepts or 20 ms (the process also opens
/// descriptors of its own: assemblies it loads, files, the threads it starts). Between counts the
/// estimate adds the accepts and ignores closes, so it errs high, except for what the runtime opens of
/// its own in between.
/// </para>
/// </summary>
internal sealed class DescriptorReserve
{
    private static readonly long RecountInterval = Stopwatch.Frequency / 50;
    private static readonly long StaleAfter = Stopwatch.Frequency;

    // Shared by every listener of the process: the limit and the descriptors are the process's.
    private static int s_acceptsSinceCount;
    private static int s_lastCount;
    private static long s_lastCountTimestamp;
    private static int s_counting;

    // Open descriptors at or above which no accept is posted.
    private readonly int _threshold;
    private readonly int _resumeBelow;
    private readonly int _recountEvery;

    private DescriptorReserve(int limit, int reserve, int pendingAccepts)
    {
        Limit = limit;
        Reserve = reserve;
        _threshold = limit - reserve - pendingAccepts;
        _resumeBelow = _threshold - Math.Max(1, reserve / 4);
        _recountEvery = Math.Max(1, reserve / 8);
    }

    /// <summary>The soft RLIMIT_NOFILE.</summary>
    public int Limit { get; }

    /// <summary>The reserve in effect: the option's, or less where the limit leaves too little.</summary>
    public int Reserve { get; }

    /// <summary>Null where there is nothing to keep: not Linux, no readable limit, or a reserve of 0.</summary>
    public static DescriptorReserve? Create(int reserve, int pendingAccepts)
    {
        if (reserve <= 0 || !OperatingSystem.IsLinux() || ReadSoftLimit() is not { } limit)
        {
            return null;
        }

        Recount();
        var left = limit - Volatile.Read(ref s_lastCount) - pendingAccepts;
        return new DescriptorReserve(limit, Math.Clamp(left / 2, 1, reserve), pendingAccepts);
    }

    /// <summary>
    /// Whether no accept may be posted now: the process is within the reserve (and the posted accepts)
    /// of its limit, or, while <paramref name="paused"/>, not yet clear of it by a quarter of the reserve.
    /// </summary>
    public bool IsReached(bool paused)
    {
        var bar = paused ? _resumeBelow : _threshold;
        var since = Volatile.Read(ref s_acceptsSinceCount);
        var age = Stopwatch.GetTimestamp() - Volatile.Read(ref s_lastCountTimestamp);
        if (Volatile.Read(ref s_lastCount) + since < bar - (4 * Reserve) && age < StaleAfter)
        {
            return false;
        }

        if (age >= StaleAfter || age >= RecountInterval || since >= _recountEvery)
        {
            Recount();
        }

        return Volatile.Read(ref s_lastCount) + Volatile.Read(ref s_acceptsSinceCount) >= bar;
    }

    public static void OnAccepted() => Interlocked.Increment(ref s_acceptsSinceCount);

    private static void Recount()
    {
        if (Interlocked.Exchange(ref s_counting, 1) != 0)
        {
            return;
        }

        try
        {
            var accepts = Volatile.Read(ref s_acceptsSinceCount);
            var count = 0;
            foreach (var _ in Directory.EnumerateFileSystemEntries("/proc/self/fd"))
            {
                count++;
            }

            Volatile.Write(ref s_lastCount, count);
            Interlocked.Add(ref s_acceptsSinceCount, -accepts);
            Volatile.Write(ref s_lastCountTimestamp, Stopwatch.GetTimestamp());
        }
        catch (IOException)
        {
            // Out of descriptors to list them with: as near the limit as it gets.
            Volatile.Write(ref s_lastCount, int.MaxValue / 2);
            Volatile.Write(ref s_lastCountTimestamp, Stopwatch.GetTimestamp());
        }
        finally
        {
            Volatile.Write(ref s_counting, 0);
        }
    }

    /// <summary>The soft limit on open files, from /proc/self/limits ("Max open files  soft  hard  files").</summary>
    private static int? ReadSoftLimit()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/limits"))
            {
                if (line.StartsWith("Max open files", StringComparison.Ordinal))
                {
                    var fields = line["Max open files".Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    return fields.Length > 0 && int.TryParse(fields[0], NumberStyles.None, CultureInfo.InvariantCulture, out var soft) ? soft : null;
                }
            }
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }

        return null;
    }
}
