using System.Diagnostics;
using System.Globalization;
using System.IO.Enumeration;
using System.Runtime.InteropServices;

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
/// <see cref="IsReached"/> only reads cached values: it runs before every accept, on whatever thread
/// completed the last one (an io_uring ring thread, whose every connection would wait for a count). The
/// open descriptors are counted by a timer of the process's own, every second, and every 20 ms while an
/// accept has found the estimate within five times the reserve of the limit. A count is the size
/// <c>stat</c> reports for /proc/self/fd (Linux 6.2 and later: the number of open descriptors, read
/// from the table's bitmap without a walk of it); on older kernels a listing of that folder, which takes
/// about 50 ms at 15,000 descriptors, so the timer then waits at least fifty times what the last listing
/// took. Between counts the estimate adds the accepts and takes off the connections that closed their
/// descriptor (not those whose socket went to a reuse pool), so it follows churn, except for what the
/// runtime opens or closes of its own in between.
/// </para>
/// </summary>
internal sealed partial class DescriptorReserve : IDisposable
{
    private static readonly TimeSpan SlowInterval = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan FastInterval = TimeSpan.FromMilliseconds(20);
    // The fast cadence lasts this long after the last accept that asked for it.
    private static readonly long FastFor = Stopwatch.Frequency;
    private static readonly EnumerationOptions ListingOptions = new() { AttributesToSkip = 0, IgnoreInaccessible = false, RecurseSubdirectories = false };
    private static readonly Lock s_timerLock = new();

    // Shared by every listener of the process: the limit and the descriptors are the process's, and so
    // are the posted accepts of every listener, each of which can take a descriptor when it completes.
    private static int s_acceptsSinceCount;
    private static int s_closesSinceCount;
    private static int s_lastCount;
    private static int s_postedAccepts;
    private static int s_instances;
    private static long s_fastAsked;
    private static int s_fast;
    private static long s_lastDuration;
    private static Timer? s_timer;
    private static volatile bool s_uncountable;
    private static volatile bool s_noStatSize;

    private readonly int _postedShare;
    private readonly int _hysteresis;
    private int _disposed;

    private DescriptorReserve(int limit, int reserve, int postedShare)
    {
        Limit = limit;
        Reserve = reserve;
        _postedShare = postedShare;
        _hysteresis = Math.Max(1, reserve / 4);
        Interlocked.Add(ref s_postedAccepts, postedShare);
    }

    /// <summary>The soft RLIMIT_NOFILE.</summary>
    public int Limit { get; }

    /// <summary>The reserve in effect: the option's, or less where the limit leaves too little.</summary>
    public int Reserve { get; }

    /// <summary>How the last count was taken, for tests: the thread it ran on, and whether /proc/self/fd was listed.</summary>
    internal static Action<bool>? Counted { get; set; }

    /// <summary>For tests: runs as a count starts, after the accepts so far were read, before the descriptors are.</summary>
    internal static Action? CountStarting { get; set; }

    /// <summary>For tests: count by listing /proc/self/fd, as on kernels before 6.2, whatever statx says.</summary>
    internal static bool ForceListing { get; set; }

    /// <summary>For tests: the open descriptors as <see cref="IsReached"/> sees them now.</summary>
    internal static int Estimate => Volatile.Read(ref s_lastCount) + Volatile.Read(ref s_acceptsSinceCount) - Volatile.Read(ref s_closesSinceCount);

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

        // Counted here, on the thread that binds: the first accept then finds a fresh count.
        Recount();
        if (s_uncountable)
        {
            return null;
        }

        var quarter = Math.Max(1, (limit - Volatile.Read(ref s_lastCount)) / 4);
        var created = new DescriptorReserve(limit, Math.Min(reserve, quarter), Math.Min(pendingAccepts, quarter));
        lock (s_timerLock)
        {
            if (s_instances++ == 0)
            {
                // A timer disposed while it counted often leaves the flag set, which would keep the next one
                // from ever being asked to count at once.
                Volatile.Write(ref s_fast, 0);
                using (ExecutionContext.SuppressFlow())
                {
                    s_timer = new Timer(static _ => OnTimer(), null, SlowInterval, Timeout.InfiniteTimeSpan);
                }
            }
        }

        return created;
    }

    /// <summary>
    /// Whether no accept may be posted now: the process is within the reserve and the posted accepts of
    /// its limit, or, while <paramref name="paused"/>, not yet clear of that by a quarter of the reserve.
    /// Reads cached values only; near the limit it asks the timer to count often.
    /// </summary>
    public bool IsReached(bool paused)
    {
        if (s_uncountable)
        {
            return false;
        }

        var bar = Limit - Reserve - Volatile.Read(ref s_postedAccepts) - (paused ? _hysteresis : 0);
        var estimate = Estimate;
        if (estimate >= bar - (4 * Reserve))
        {
            AskForFastCounts();
        }

        return estimate >= bar;
    }

    public static void OnAccepted() => Interlocked.Increment(ref s_acceptsSinceCount);

    /// <summary>A connection of a listener closed its descriptor (or has its close under way).</summary>
    public static void OnClosed() => Interlocked.Increment(ref s_closesSinceCount);

    /// <summary>The listener is gone: its posted accepts no longer count; the last one stops the timer.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        Interlocked.Add(ref s_postedAccepts, -_postedShare);
        lock (s_timerLock)
        {
            if (--s_instances == 0)
            {
                s_timer?.Dispose();
                s_timer = null;
            }
        }
    }

    private static void AskForFastCounts()
    {
        Volatile.Write(ref s_fastAsked, Stopwatch.GetTimestamp());
        if (Volatile.Read(ref s_fast) == 0 && Interlocked.Exchange(ref s_fast, 1) == 0)
        {
            // The timer is on its slow cadence: have it count now (on a thread pool thread), then often.
            lock (s_timerLock)
            {
                s_timer?.Change(TimeSpan.Zero, Timeout.InfiniteTimeSpan);
            }
        }
    }

    private static void OnTimer()
    {
        try
        {
            Recount();
        }
        catch (Exception)
        {
            // Anything Recount does not expect (it handles what /proc and statx can say) must not end the
            // process from a timer callback: no reserve rather than no process.
            s_uncountable = true;
            return;
        }

        var fast = Stopwatch.GetTimestamp() - Volatile.Read(ref s_fastAsked) < FastFor;
        Volatile.Write(ref s_fast, fast ? 1 : 0);
        var interval = fast ? FastInterval : SlowInterval;
        // A listing (older kernels) takes time in proportion to the descriptors: at most 2 % of a core.
        var floor = TimeSpan.FromTicks(Volatile.Read(ref s_lastDuration) * 50 * TimeSpan.TicksPerSecond / Stopwatch.Frequency);
        lock (s_timerLock)
        {
            s_timer?.Change(interval > floor ? interval : floor, Timeout.InfiniteTimeSpan);
        }
    }

    private static readonly Lock s_countLock = new();

    /// <summary>Counts the open descriptors now (internal for tests; the timer and <see cref="Create"/> call it).</summary>
    internal static void Recount()
    {
        if (!s_countLock.TryEnter())
        {
            return;
        }

        try
        {
            var started = Stopwatch.GetTimestamp();
            // The accepts are read before the count and the closes after it, so that whatever happens while
            // it runs (a listing takes ~50 ms at 15,000 descriptors) errs high: an accept in that time may
            // be counted twice, a close never (once as missing from the count and again as a close).
            var accepts = Volatile.Read(ref s_acceptsSinceCount);
            CountStarting?.Invoke();
            var listed = false;
            var size = s_noStatSize || ForceListing ? 0 : StatCount();
            var count = (int)Math.Min(Math.Max(size, 0), int.MaxValue);
            if (count == 0)
            {
                // Before Linux 6.2 the folder's size is 0 (or this libc has no statx): list it, an entry per
                // descriptor, without a string each. Only that answer is kept for good; a statx that failed
                // (-1, say ENOMEM) is tried again next time.
                s_noStatSize |= !ForceListing && (size == 0 || size == NoStatx);
                listed = true;
                foreach (var _ in new FileSystemEnumerable<bool>("/proc/self/fd", static (ref FileSystemEntry _) => true, ListingOptions))
                {
                    count++;
                }
            }

            var closes = Volatile.Read(ref s_closesSinceCount);
            Volatile.Write(ref s_lastCount, count);
            Interlocked.Add(ref s_acceptsSinceCount, -accepts);
            Interlocked.Add(ref s_closesSinceCount, -closes);
            Volatile.Write(ref s_lastDuration, Stopwatch.GetTimestamp() - started);
            Counted?.Invoke(listed);
        }
        catch (IOException ex) when (ex.HResult is EMFILE or ENFILE)
        {
            // Out of descriptors to list them with: as near the limit as it gets.
            Volatile.Write(ref s_lastCount, int.MaxValue / 2);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Descriptors that cannot be counted (no /proc, a sandbox): no reserve rather than no accepts.
            s_uncountable = true;
        }
        finally
        {
            s_countLock.Exit();
        }
    }

    /// <summary>The size statx(2) gives /proc/self/fd: its open descriptors from Linux 6.2 on, 0 before; -1 on failure, <see cref="NoStatx"/> without statx.</summary>
    private static unsafe long StatCount()
    {
        // struct statx is 256 bytes on every architecture; stx_size is the u64 at offset 40.
        var buffer = stackalloc byte[256];
        try
        {
            return Statx(AtFdCwd, "/proc/self/fd", 0, StatxSize, buffer) == 0 ? *(long*)(buffer + 40) : -1;
        }
        catch (EntryPointNotFoundException)
        {
            // A libc without statx (glibc before 2.28): the listing it is, for good.
            return NoStatx;
        }
    }

    private const long NoStatx = -2;

    private const int AtFdCwd = -100;
    private const uint StatxSize = 0x200;

    [LibraryImport("libc", EntryPoint = "statx", StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int Statx(int dirFd, string path, int flags, uint mask, byte* buffer);

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
