using Transport.Winsock.Engines.IoUring;

namespace Transport.Tests.Engines;

/// <summary>
/// A completion queue that fills before it is reaped loses nothing: the kernel (IORING_FEAT_NODROP) keeps
/// the completions it cannot post, and the ring hands every one of them over once reaping makes room. On
/// a real ring far smaller than the burst.
/// </summary>
public sealed class RingCompletionQueueTests
{
    private const int EBUSY = 16;
    private const int EAGAIN = 11;

    public static bool IoUringRuns => IoUringProbe.Result.Passed;

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or its probe failed).", SkipUnless = nameof(IoUringRuns))]
    public void Completions_past_a_full_queue_are_kept_by_the_kernel_and_every_one_is_reaped_once()
    {
        // Synchronous on purpose: the ring is SINGLE_ISSUER, and this thread set it up.
        using var ring = Ring.TryCreate(entries: 8, cqEntries: 16, out var errno);
        Assert.True(ring is not null, $"no ring: errno {errno}");
        Assert.True((ring.Features & RingConstants.FeatNoDrop) != 0, "this kernel drops completions past a full queue (no IORING_FEAT_NODROP)");
        const int Count = 200;
        for (var i = 0; i < Count; i++)
        {
            Submit(ring, userData: 1000 + (ulong)i);
        }

        Assert.Equal(0, Accept(ring.Enter(wait: false)));

        var seen = new HashSet<ulong>();
        var batches = new List<int>();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (seen.Count < Count && DateTime.UtcNow < deadline)
        {
            var batch = 0;
            while (ring.TryPeek(out var cqe))
            {
                ring.Advance();
                Assert.Equal(0, cqe.Res);
                Assert.True(seen.Add(cqe.UserData), $"completion {cqe.UserData} reaped twice");
                batch++;
            }

            batches.Add(batch);
            // Entering again moves what the kernel kept aside into the room just made.
            Assert.Equal(0, Accept(ring.Enter(wait: false)));
        }

        TestContext.Current.SendDiagnosticMessage($"queue of {ring.CqEntries}; reaped in batches of {string.Join(", ", batches.Where(b => b > 0))}");
        Assert.Equal(Count, seen.Count);
        Assert.Equal(Enumerable.Range(1000, Count).Select(i => (ulong)i), seen.Order());
        // The queue really was full: the first look found it holding no more than its size.
        Assert.True(ring.CqEntries < Count);
        Assert.Equal((int)ring.CqEntries, batches[0]);
    }

    private static unsafe void Submit(Ring ring, ulong userData)
    {
        var sqe = ring.TryGetSqe();
        for (var tries = 0; sqe is null; tries++)
        {
            // The submission queue (8) is full: hand it to the kernel, which completes NOPs at once.
            Assert.True(tries < 1000, "the kernel takes no more submissions while its completion queue is full");
            Assert.Equal(0, Accept(ring.Enter(wait: false)));
            sqe = ring.TryGetSqe();
        }

        sqe->Opcode = RingConstants.OpNop;
        sqe->UserData = userData;
    }

    // A full completion queue may make the kernel answer EBUSY or EAGAIN; the caller reaps and retries.
    private static int Accept(int result) => result is -EBUSY or -EAGAIN ? 0 : result;
}
