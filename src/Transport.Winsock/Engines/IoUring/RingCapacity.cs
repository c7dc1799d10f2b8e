namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// How big a ring's completion queue is, and how many connections it may take, so that completions can
/// never exceed the queue: past it the kernel keeps them in overflow entries it allocates (NODROP), and
/// drops one when that allocation fails (EBADR). Every operation of ours posts at most one completion, so
/// the queue holds at most what is in flight (receives, sends, FINs and accepts, counted exactly on the
/// ring thread) plus what one batch of fire-and-forget entries (cancels and closes, which post only when
/// they fail) adds, as every submission copies completions aside at once (<see cref="RingThread"/>). A
/// connection has at most a receive and a send in flight from its accept to its release, and one FIN,
/// which may outlive it and is counted apart. The queue is chosen from the process's descriptor limit
/// (a plain connection is a descriptor): three operations a descriptor, within the kernel's largest queue;
/// where the limit is higher than that covers, a ring that is full pauses accepting (AcceptPaused) until
/// one of its connections ends, rather than let the kernel overflow.
/// </summary>
internal static class RingCapacity
{
    /// <summary>Submission queue entries of a ring.</summary>
    public const uint SqEntries = 1024;

    // The kernel's largest completion queue (IORING_MAX_CQ_ENTRIES), and the smallest one worth having.
    private const uint MaxCqEntries = 65536;
    private const uint MinCqEntries = 4096;
    private const int OperationsPerDescriptor = 3;
    private const int Slack = 64;

    /// <summary>The seam where tests give every ring a small capacity (operations in flight), so that it fills.</summary>
    internal static int? MaxInFlightFault { get; set; }

    /// <summary>
    /// The completion queue for a ring with <paramref name="acceptSlots"/> accepts, in a process that may
    /// hold <paramref name="descriptorLimit"/> descriptors (null when unknown: the largest queue).
    /// </summary>
    public static uint ChooseCqEntries(long? descriptorLimit, int acceptSlots)
    {
        var needed = descriptorLimit is { } limit
            ? (OperationsPerDescriptor * (limit + acceptSlots)) + SqEntries + Slack
            : MaxCqEntries;
        var entries = MinCqEntries;
        while (entries < needed && entries < MaxCqEntries)
        {
            entries *= 2;
        }

        return entries;
    }

    /// <summary>Operations a ring with <paramref name="cqEntries"/> may have in flight: the queue less a batch of fire-and-forget entries.</summary>
    public static int MaxInFlight(uint cqEntries) => MaxInFlightFault ?? (int)(cqEntries - SqEntries - Slack);

    /// <summary>
    /// Whether a ring may post another accept: the worst case once its <paramref name="acceptSlots"/>
    /// accepts all become connections, each with a receive and a send, the accepts posted again, and the
    /// FINs in flight, stays within <paramref name="maxInFlight"/>.
    /// </summary>
    public static bool HasRoom(int connections, int finsInFlight, int acceptSlots, int maxInFlight)
        => (2 * (connections + acceptSlots)) + finsInFlight + acceptSlots <= maxInFlight;

    /// <summary>The soft RLIMIT_NOFILE, or null when it cannot be read or is unlimited.</summary>
    public static long? DescriptorLimit()
    {
        var limit = LinuxNative.SoftFileLimit();
        return limit is > 0 and < int.MaxValue ? limit : null;
    }
}
