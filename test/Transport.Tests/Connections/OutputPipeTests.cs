using System.Buffers;
using System.IO.Pipelines;
using System.Security.Cryptography;
using Transport.Tests.Infrastructure;
using Transport.Winsock.Connections;
using static Transport.Tests.Infrastructure.PipeTestKit;

namespace Transport.Tests.Connections;

/// <summary>
/// The connection's output pipe against what a <see cref="Pipe"/> promises its writer (the application)
/// and its reader (the send loop): order, backpressure, cancellation, completion and errors both ways,
/// the schedulers, and no memory held once everything is sent.
/// </summary>
public sealed class OutputPipeTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task Bytes_arrive_in_order_across_segments_and_every_block_goes_back_once_sent()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool));
        var expected = new List<byte>();
        // Small writes, writes that cross blocks, and one larger than the pool's blocks (array pool).
        foreach (var size in new[] { 1, 100, 4000, 5000, 20_000, 3, 4096 })
        {
            var chunk = RandomNumberGenerator.GetBytes(size);
            expected.AddRange(chunk);
            pipe.Write(chunk);
        }

        Assert.Equal(expected.Count, pipe.UnflushedBytes);
        var flush = await pipe.FlushAsync(TestContext.Current.CancellationToken);
        Assert.False(flush.IsCompleted || flush.IsCanceled);
        Assert.Equal(0, pipe.UnflushedBytes);

        var read = await pipe.ReadAsync();
        Assert.Equal(expected.ToArray(), read.Buffer.ToArray());
        Assert.True(pool.Outstanding > 0);
        pipe.AdvanceToEnd();
        Assert.Equal(0, pool.Outstanding);

        // Idle again: the next write takes a block anew and gives it back the same way.
        pipe.Write("next"u8);
        await pipe.FlushAsync(TestContext.Current.CancellationToken);
        read = await pipe.ReadAsync();
        Assert.Equal("next"u8.ToArray(), read.Buffer.ToArray());
        pipe.AdvanceToEnd();
        Assert.Equal(0, pool.Outstanding);
    }

    [Fact]
    public async Task A_read_waits_for_a_flush_and_sees_only_what_was_flushed()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool));
        var pending = pipe.ReadAsync();
        pipe.Write("unflushed"u8);
        await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.False(pending.IsCompleted);

        await pipe.FlushAsync(TestContext.Current.CancellationToken);
        var read = await pending.AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken);
        Assert.Equal("unflushed"u8.ToArray(), read.Buffer.ToArray());
        Assert.False(read.IsCompleted);

        // Written while the first read's bytes are being sent: the writer goes on in the same block,
        // and the bytes the reader holds stay as they were.
        pipe.Write("-more"u8);
        Assert.Equal("unflushed"u8.ToArray(), read.Buffer.ToArray());
        pipe.AdvanceToEnd();
        await pipe.FlushAsync(TestContext.Current.CancellationToken);
        read = await pipe.ReadAsync();
        Assert.Equal("-more"u8.ToArray(), read.Buffer.ToArray());
        pipe.AdvanceToEnd();
        Assert.Equal(0, pool.Outstanding);
    }

    [Fact]
    public async Task A_flush_pauses_at_the_pause_threshold_and_resumes_only_under_the_resume_threshold()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool, pause: 10_000, resume: 5_000));
        pipe.Write(new byte[9_999]);
        Assert.True((await pipe.FlushAsync(TestContext.Current.CancellationToken)) is { IsCompleted: false, IsCanceled: false });

        pipe.Write(new byte[1]);
        var paused = pipe.FlushAsync(TestContext.Current.CancellationToken);
        Assert.False(paused.IsCompleted);

        // The reader takes all 10,000 and sends them; until it says so, the writer stays paused.
        var read = await pipe.ReadAsync();
        Assert.Equal(10_000, read.Buffer.Length);
        await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.False(paused.IsCompleted);
        pipe.AdvanceToEnd();
        var resumed = await paused.AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken);
        Assert.False(resumed.IsCompleted || resumed.IsCanceled);
        Assert.Equal(0, pool.Outstanding);
    }

    [Fact]
    public async Task CancelPendingFlush_ends_a_paused_flush_and_one_called_first_cancels_the_next_flush()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool, pause: 100, resume: 50));
        pipe.Write(new byte[200]);
        var paused = pipe.FlushAsync(TestContext.Current.CancellationToken);
        Assert.False(paused.IsCompleted);
        pipe.CancelPendingFlush();
        Assert.True((await paused.AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken)).IsCanceled);

        pipe.CancelPendingFlush();
        var next = await pipe.FlushAsync(TestContext.Current.CancellationToken);
        Assert.True(next.IsCanceled);
        // Cancelling a flush loses nothing: the bytes are still there for the reader.
        Assert.Equal(200, (await pipe.ReadAsync()).Buffer.Length);
        pipe.AdvanceToEnd();
    }

    [Fact]
    public async Task A_paused_flush_ends_with_OperationCanceledException_when_its_token_is_cancelled()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool, pause: 100, resume: 50));
        using var cts = new CancellationTokenSource();
        pipe.Write(new byte[200]);
        var paused = pipe.FlushAsync(cts.Token);
        Assert.False(paused.IsCompleted);
        cts.Cancel();
        var ex = await Assert.ThrowsAnyAsync<OperationCanceledException>(() => paused.AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken));
        Assert.Equal(cts.Token, ex.CancellationToken);

        // A flush with a token cancelled before it ends cancelled and commits nothing, as a Pipe's does:
        // the reader gets what the paused flush committed, and the byte only with the next flush.
        pipe.Write(new byte[1]);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await pipe.FlushAsync(cts.Token));
        Assert.Equal(1, pipe.UnflushedBytes);
        Assert.Equal(200, (await pipe.ReadAsync()).Buffer.Length);
        pipe.AdvanceToEnd();
        await pipe.FlushAsync(TestContext.Current.CancellationToken);
        Assert.Equal(1, (await pipe.ReadAsync()).Buffer.Length);
        pipe.AdvanceToEnd();
    }

    [Fact]
    public async Task CancelPendingRead_ends_the_pending_read_as_cancelled_and_the_next_read_waits_again()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool));
        var pending = pipe.ReadAsync();
        pipe.CancelPendingRead();
        var read = await pending.AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken);
        Assert.True(read.IsCanceled);
        Assert.True(read.Buffer.IsEmpty);
        pipe.AdvanceToEnd();
        var next = pipe.ReadAsync().AsTask();
        await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.False(next.IsCompleted);
        pipe.CancelPendingRead();
        Assert.True((await next.WaitAsync(Timeout, TestContext.Current.CancellationToken)).IsCanceled);
    }

    [Fact]
    public async Task The_writer_completing_sends_what_it_had_not_flushed_then_ends_the_reads_and_its_error_reaches_the_reader()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool));
        var pending = pipe.ReadAsync();
        pipe.Write("last"u8);
        pipe.Complete();
        var read = await pending.AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken);
        Assert.Equal("last"u8.ToArray(), read.Buffer.ToArray());
        Assert.True(read.IsCompleted);
        pipe.AdvanceToEnd();
        Assert.Throws<InvalidOperationException>(() => pipe.GetMemory());
        Assert.True((await pipe.ReadAsync()).IsCompleted);
        pipe.CompleteReader();
        Assert.Equal(0, pool.Outstanding);

        pipe.Reset();
        var failure = new InvalidOperationException("the application failed");
        pending = pipe.ReadAsync();
        pipe.Complete(failure);
        Assert.Same(failure, await Assert.ThrowsAsync<InvalidOperationException>(() => pending.AsTask()));
    }

    [Fact]
    public async Task The_reader_completing_ends_a_paused_flush_and_later_flushes_with_IsCompleted_or_its_error()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool, pause: 100, resume: 50));
        pipe.Write(new byte[200]);
        var paused = pipe.FlushAsync(TestContext.Current.CancellationToken);
        pipe.CompleteReader();
        Assert.True((await paused.AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken)).IsCompleted);

        // Nobody will send what is written now: it is dropped at the flush, and its memory with it.
        pipe.Write(new byte[5000]);
        Assert.True((await pipe.FlushAsync(TestContext.Current.CancellationToken)).IsCompleted);
        Assert.Equal(0, pool.Outstanding);
        pipe.Complete();
        pipe.Reset();

        var sendFailure = new IOException("the send failed");
        pipe.CompleteReader(sendFailure);
        pipe.Write(new byte[1]);
        Assert.Same(sendFailure, await Assert.ThrowsAsync<IOException>(async () => await pipe.FlushAsync(TestContext.Current.CancellationToken)));
        pipe.Complete();
        Assert.Equal(0, pool.Outstanding);
    }

    [Fact]
    public void Reset_refuses_a_pipe_with_a_side_still_open()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new OutputPipe(OptionsFor(pool));
        Assert.Throws<InvalidOperationException>(pipe.Reset);
        pipe.Complete();
        Assert.Throws<InvalidOperationException>(pipe.Reset);
        pipe.CompleteReader();
        pipe.Reset();
    }

    [Fact]
    public async Task Continuations_run_on_their_side_schedulers_and_keep_the_execution_context()
    {
        using var pool = new CountingMemoryPool(4096);
        var readerScheduler = new CountingScheduler();
        var writerScheduler = new CountingScheduler();
        var pipe = new OutputPipe(OptionsFor(pool, 100, 50, readerScheduler, writerScheduler));
        var flowed = new AsyncLocal<string?>();

        // OnCompleted (not an async method's await, which restores the context itself) asks for the
        // execution context to flow.
        var seen = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
#pragma warning disable CA2012, xUnit1031 // The awaiter is used as an awaiter: OnCompleted, then GetResult once it has run.
        var read = pipe.ReadAsync().GetAwaiter();
        flowed.Value = "reader";
        read.OnCompleted(() => seen.SetResult(flowed.Value));
        flowed.Value = null;
        pipe.Write(new byte[200]);
        var paused = pipe.FlushAsync(TestContext.Current.CancellationToken);
        Assert.Equal("reader", await seen.Task.WaitAsync(Timeout, TestContext.Current.CancellationToken));
        Assert.Equal(1, readerScheduler.Scheduled);
        Assert.Equal(200, read.GetResult().Buffer.Length);
#pragma warning restore CA2012, xUnit1031

        var resumed = paused.AsTask();
        Assert.False(resumed.IsCompleted);
        pipe.AdvanceToEnd();
        await resumed.WaitAsync(Timeout, TestContext.Current.CancellationToken);
        Assert.Equal(1, writerScheduler.Scheduled);
    }
}
