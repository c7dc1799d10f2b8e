using Transport.Winsock.Engines.IoUring;

namespace Transport.Tests.Engines;

/// <summary>
/// The user_data of every io_uring submission carries its operation's generation: a completion meant for
/// an earlier submission (one that was canceled and raced its successor) is dropped, so it can never
/// complete what the operation carries now. Run on a real ring thread's table.
/// </summary>
public sealed class RingOperationTests
{
    public static bool IoUringRuns => IoUringProbe.Result.Passed;

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or its probe failed).", SkipUnless = nameof(IoUringRuns))]
    public Task A_completion_of_an_earlier_submission_is_dropped_and_the_current_one_completes() => OnRingThreadAsync(Check);

    [Fact(Skip = "io_uring cannot run in this process (not Linux, or its probe failed).", SkipUnless = nameof(IoUringRuns))]
    public Task An_index_given_again_never_repeats_a_user_data_of_the_operation_before_it() => OnRingThreadAsync(ReuseCheck);

    private static void ReuseCheck(RingThread thread)
    {
        // A returned send's index goes to the next operation registered (a pooled send over the
        // pool's bound, or a new connection's receive). A resync that still suspects the old
        // one's last submission must not find that user_data on the new one.
        var old = new CountingOperation(thread);
        var used = new HashSet<ulong>();
        ulong last = 0;
        for (var i = 0; i < 3; i++)
        {
            last = old.Submit();
            used.Add(last);
            Assert.True(old.OnCompletion(last, 1, 0));
        }

        thread.Unregister(old);
        var next = new CountingOperation(thread);
        Assert.Equal(old.Index, next.Index);
        var first = next.Submit();
        Assert.DoesNotContain(first, used);
        // The old submission's completion (or a suspect judged by it) is not the new one's.
        Assert.False(next.OnCompletion(last, 5, 0));
        Assert.True(next.InFlight);
        Assert.True(next.OnCompletion(first, 2, 0));
        Assert.Equal([2], next.Results);
        thread.Unregister(next);
    }

    /// <summary>Runs <paramref name="check"/> on a ring thread of its own, which alone submits and completes.</summary>
    private static async Task OnRingThreadAsync(Action<RingThread> check)
    {
        var thread = RingThread.TryStart("io_uring test", Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance, out var failure);
        Assert.True(thread is not null, $"no ring: {failure}");
        try
        {
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            thread.Post(_ =>
            {
                try
                {
                    check(thread);
                    done.SetResult();
                }
                catch (Exception ex)
                {
                    done.SetException(ex);
                }
            }, null);
            await done.Task.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        }
        finally
        {
            await thread.StopAsync();
        }
    }

    private static void Check(RingThread thread)
    {
        var operation = new CountingOperation(thread);
        var first = operation.Submit();
        Assert.True(operation.OnCompletion(first, 1, 0));
        Assert.False(operation.InFlight);

        var second = operation.Submit();
        Assert.NotEqual(first, second);
        // The same index, an older generation: not this submission's.
        Assert.Equal((uint)first, (uint)second);
        Assert.False(operation.OnCompletion(first, 7, 0));
        Assert.True(operation.InFlight);
        Assert.Equal([1], operation.Results);

        Assert.True(operation.OnCompletion(second, 2, 0));
        Assert.Equal([1, 2], operation.Results);
        // Nothing in flight any more: even the right user_data is not completed twice.
        Assert.False(operation.OnCompletion(second, 3, 0));
        Assert.Equal([1, 2], operation.Results);
        thread.Unregister(operation);
    }

    private sealed class CountingOperation(RingThread thread) : RingOperation(thread)
    {
        public List<int> Results { get; } = [];

        public ulong Submit()
        {
            // As a submission does, without a kernel: the user_data of the entry, now in flight. Its
            // count in the thread is given back, so that the thread stops at once.
            var userData = NextUserData();
            Thread.OnAbandoned();
            return userData;
        }

        protected override void Complete(int result, uint flags) => Results.Add(result);
    }
}
