using System.Diagnostics;
using System.Globalization;
using System.IO.Enumeration;

namespace Transport.Winsock.AcceptPool;

/// <summary>
/// Descriptors kept free for the runtime on Linux: accepts are not posted while the process's open
/// descriptors are within <see cref="Reserve"/> of its soft RLIMIT_NOFILE, so the runtime can still start
/// threads, load assemblies and open files (with the table full, starting a thread pool thread fails and
/// the runtime aborts the process), and connections wait in the listen backlog instead. Each accept
/// already posted can still take one when it completes, so the posted accepts of every listener come off
/// the limit too. A pause ends only once a quarter of the reserve is free again, so accepting does not
/// flap at the edge.
/// <para>
/// Cheap on the hot path: the open descriptors are counted (a listing of /proc/self/fd) when the last
/// count is over a second old, and, once the last count plus the accepts since comes within five times the
/// reserve of the limit, after every eighth of the reserve in accepts or 20 ms (the process also opens
/// descriptors of its own: assemblies it loads, files, the threads it starts). Between counts the
/// estimate adds the accepts and ignores closes, so it errs high, except for what the runtime opens of
/// its own in between.
/// </para>
/// </summary>
internal sealed class DescriptorReserve : IDisposable
{
    private static readonly long RecountInterval = Stopwatch.Frequency / 50;
    private static readonly long StaleAfter = Stopwatch.Frequency;
    private static readonly EnumerationOptions ListingOptions = new() { AttributesToSkip = 0, IgnoreInaccessible = false, RecurseSubdirectories = false };

    // Shared by every listener of the process: the limit and the descriptors are the process's, and so
    // are the posted accepts of every listener, each of which can take a descriptor when it completes.
    private static int s_acceptsSinceCount;
    private static int s_lastCount;
    private static long s_lastCountTimestamp;
    private static int s_counting;
    private static int s_postedAccepts;
    private static volatile bool s_uncountable;

    private readonly int _postedShare;
    private readonly int _recountEvery;
    private readonly int _hysteresis;
    private int _disposed;

    private DescriptorReserve(int limit, int reserve, int postedShare)
    {
        Limit = limit;
        Reserve = reserve;
        _postedShare = postedShare;
        _hysteresis = Math.Max(1, reserve / 4);
        _recountEvery = Math.Max(1, reserve / 8);
        Interlocked.Add(ref s_postedAccepts, postedShare);
    }

    /// <summary>The soft RLIMIT_NOFILE.</summary>
    public int Limit { get; }

    /// <summary>The reserve in effect: the option's, or less where the limit leaves too little.</summary>
    public int Reserve { get; }

    /// <summary>
    /// Null where there is nothing to keep: not Linux, no readable limit, descriptors that cannot be
    /// counted, or a reserve of 0. At most half of what is left when the listener starts is held back
    /// (a quarter for the runtime, a quarter for the posted accepts), so a low limit still serves.
    /// </summary>
    public static DescriptorReserve? Create(int reserve, int pendingAccepts)
    {
        if (reserve <= 0 || !OperatingSystem.IsLinux() || ReadSoftLimit() is not { } limit)
        {
            return null;
        }

        Recount();
        if (s_uncountable)
        {
            return null;
        }

        var quarter = Math.Max(1, (limit - Volatile.Read(ref s_lastCount)) / 4);
        return new DescriptorReserve(limit, Math.Min(reserve, quarter), Math.Min(pendingAccepts, quarter));
    }

    /// <summary>
    /// Whether no accept may be posted now: the process is within the reserve and the posted accepts of
    /// its limit, or, while <paramref name="paused"/>, not yet clear of that by a quarter of the reserve.
    /// </summary>
    public bool IsReached(bool paused)
    {
        if (s_uncountable)
        {
            return false;
        }

        var bar = Limit - Reserve - Volatile.Read(ref s_postedAccepts) - (paused ? _hysteresis : 0);
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

        return !s_uncountable && Volatile.Read(ref s_lastCount) + Volatile.Read(ref s_acceptsSinceCount) >= bar;
    }

    public static void OnAccepted() => Interlocked.Increment(ref s_acceptsSinceCount);

    /// <summary>The listener is gone: its posted accepts no longer count.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            Interlocked.Add(ref s_postedAccepts, -_postedShare);
        }
    }

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
            // An entry per descriptor, without making a string of each.
            foreach (var _ in new FileSystemEnumerable<bool>("/proc/self/fd", static (ref FileSystemEntry _) => true, ListingOptions))
            {
                count++;
            }

            Volatile.Write(ref s_lastCount, count);
            Interlocked.Add(ref s_acceptsSinceCount, -accepts);
            Volatile.Write(ref s_lastCountTimestamp, Stopwatch.GetTimestamp());
        }
        catch (IOException ex) when (ex.HResult is EMFILE or ENFILE)
        {
            // Out of descriptors to list them with: as near the limit as it gets.
            Volatile.Write(ref s_lastCount, int.MaxValue / 2);
            Volatile.Write(ref s_lastCountTimestamp, Stopwatch.GetTimestamp());
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Descriptors that cannot be counted (no /proc, a sandbox): no reserve rather than no accepts.
            s_uncountable = true;
        }
        finally
        {
            Volatile.Write(ref s_counting, 0);
        }
    }

    // errno values that .NET puts in an IOException's HResult on Unix.
    private const int ENFILE = 23;
    private const int EMFILE = 24;

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
