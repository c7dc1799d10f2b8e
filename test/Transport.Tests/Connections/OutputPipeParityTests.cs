#pragma warning disable CA2012, xUnit1030, xUnit1031 // Some probes look at a ValueTask's state before awaiting it.
using System.Buffers;
using System.IO.Pipelines;
using Transport.Tests.Infrastructure;
using Transport.Winsock.Connections;
using static Transport.Tests.Infrastructure.PipeTestKit;

namespace Transport.Tests.Connections;

/// <summary>
/// What an independent review found OutputPipe doing otherwise than a <see cref="Pipe"/> with the same
/// options (each failed on the first version): a flush after Complete, a cancelled read hiding the
/// writer's error, writes after the reader's end piling up blocks, a block held after a write that wrote
/// nothing, the waking thread's context reaching a continuation, a reader's error not faulting the flush,
/// a second flush stranding the first, a stale token resuming a later flush.
/// </summary>
public sealed class OutputPipeParityTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(5);

    [Fact]
    public async Task FlushAsync_after_Complete_does_not_throw()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool));
        pipe.Write("x"u8);
        pipe.Complete();
        var flush = await pipe.FlushAsync(TestContext.Current.CancellationToken);
        Assert.False(flush.IsCompleted);
    }

    // ---- 2. A cancelled read hides the writer's error ----

    [Fact]
    public async Task Cancelled_read_still_throws_the_writers_error()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool));
        pipe.CancelPendingRead();
        pipe.Complete(new InvalidOperationException("app failed"));
        await Assert.ThrowsAsync<InvalidOperationException>(async () => await pipe.ReadAsync());
    }

    // ---- 3. Writes after the reader completed ----

    [Fact]
    public void Writes_after_the_reader_completed_hold_no_more_memory()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool));
        pipe.CompleteReader();
        for (var i = 0; i < 100; i++)
        {
            pipe.GetSpan(4096);
            pipe.Advance(4096);
        }

        Assert.True(pool.Outstanding <= 1, $"{pool.Outstanding} blocks");
        Assert.Equal(0, pipe.UnflushedBytes);
    }

    // ---- 4. Idle after GetMemory without Advance (PipeWriter.CopyFromAsync ends this way) ----

    [Fact]
    public async Task Idle_after_everything_sent_holds_no_block()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool));
        pipe.Write("response"u8);
        await pipe.FlushAsync(TestContext.Current.CancellationToken);
        await pipe.ReadAsync();
        pipe.GetMemory();
        pipe.AdvanceToEnd();
        await pipe.FlushAsync(TestContext.Current.CancellationToken);
        Assert.Equal(0, pool.Outstanding);
    }

    // ---- 5. The waker's ExecutionContext leaks into a continuation that did not ask for flow ----

    private static readonly AsyncLocal<string?> s_flowed = new();

    [Fact]
    public async Task Unflowed_reader_continuation_does_not_see_the_writers_context()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool));
        var seen = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
        var awaiter = pipe.ReadAsync().ConfigureAwait(false).GetAwaiter();
        awaiter.UnsafeOnCompleted(() => seen.SetResult(s_flowed.Value));
        await Task.Run(
            async () =>
            {
                s_flowed.Value = "application";
                pipe.Write("x"u8);
                await pipe.FlushAsync();
            },
            TestContext.Current.CancellationToken);
        Assert.Null(await seen.Task.WaitAsync(Timeout, TestContext.Current.CancellationToken));
    }

    // ---- 6. A flush failed by the reader's error reports Faulted ----

    [Fact]
    public void Flush_completed_by_reader_error_is_faulted()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool, 100, 50));
        pipe.Write(new byte[200]);
        var flush = pipe.FlushAsync(TestContext.Current.CancellationToken);
        Assert.False(flush.IsCompleted);
        pipe.CompleteReader(new IOException("send failed"));
        Assert.True(flush.IsFaulted);
    }

    // ---- 7. Two flushes without awaiting the first: the first never completes ----

    [Fact]
    public async Task A_second_flush_while_one_is_paused_does_not_strand_the_first()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool, 100, 50));
        pipe.Write(new byte[200]);
        var first = pipe.FlushAsync(TestContext.Current.CancellationToken).AsTask();
        // The second is refused at once, as a Pipe refuses concurrent flushes; the first still resumes.
        Assert.Throws<InvalidOperationException>(() => pipe.FlushAsync(TestContext.Current.CancellationToken));
        await pipe.ReadAsync();
        pipe.AdvanceToEnd();
        await Task.WhenAny(first, Task.Delay(Timeout, TestContext.Current.CancellationToken));
        Assert.True(first.IsCompleted, "first flush never completed");
    }

    // ---- 8. A token-cancelled flush token of a flush whose result was never taken wakes a later flush ----

    [Fact]
    public async Task A_stale_token_does_not_resume_a_later_paused_flush()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool, 100, 50));
        using var stale = new CancellationTokenSource();
        pipe.Write(new byte[200]);
        _ = pipe.FlushAsync(stale.Token); // paused, registered; completed by the reader, result never taken
        await pipe.ReadAsync();
        pipe.AdvanceToEnd();

        pipe.Write(new byte[200]);
        var later = pipe.FlushAsync(TestContext.Current.CancellationToken);
        Assert.False(later.IsCompleted);
        stale.Cancel();
        await Task.Delay(100, TestContext.Current.CancellationToken);
        Assert.False(later.IsCompleted, "a cancel of an old flush's token resumed a flush still over the pause threshold");
    }
}
