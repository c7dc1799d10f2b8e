namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// Operations a ring thread ended with still in the kernel (its cancels did not reach them within the
/// bound): closing a ring does not end its requests at once, and one running on an io-wq worker writes
/// into its memory when it finishes. They are kept here for the life of the process with everything they
/// reference (pinned pipe buffers, iovecs, sockaddrs), never pooled, their native memory never freed. A
/// kernel fault, counted and logged (RingOperationsQuarantined); in normal operation this stays empty.
/// </summary>
internal static class RingQuarantine
{
    private static readonly Lock s_lock = new();
    private static readonly List<object> s_kept = [];

    /// <summary>Everything quarantined in this process so far.</summary>
    public static int Count
    {
        get
        {
            lock (s_lock)
            {
                return s_kept.Count;
            }
        }
    }

    /// <summary>Keeps <paramref name="held"/> (an operation, or a ring thread's wake-up buffer) rooted for good.</summary>
    public static void Keep(object held)
    {
        lock (s_lock)
        {
            s_kept.Add(held);
        }
    }
}
