using System.Buffers;
using System.IO.Pipelines;
using System.Security.Cryptography;
using Transport.Tests.Infrastructure;
using Transport.Winsock.Connections;
using static Transport.Tests.Infrastructure.PipeTestKit;

namespace Transport.Tests.Connections;

/// <summary>
/// The connection's input pipe against what a <see cref="Pipe"/> promises its reader (the application)
/// and its writer (the receive loop): examined versus consumed, backpressure on what is unexamined,
/// cancellation, completion and the writer's error, and memory: none held once all is consumed, and
/// never the block a receive is writing into.
/// </summary>
public sealed class InputPipeTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task Bytes_arrive_in_order_across_segments_and_every_block_goes_back_once_consumed()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new InputPipe(OptionsFor(pool));
        var expected = new List<byte>();
        foreach (var size in new[] { 1, 3000, 4096, 9000, 2 })
        {
            var chunk = RandomNumberGenerator.GetBytes(size);
            expected.AddRange(chunk);
            chunk.CopyTo(pipe.GetSpan(size));
            pipe.Advance(size);
        }

        await pipe.FlushAsync();
        var read = await pipe.ReadAsync(TestContext.Current.CancellationToken);
        Assert.Equal(expected.ToArray(), read.Buffer.ToArray());

        // Consumed in two steps: the first part's blocks go back at once, the rest at the end.
        pipe.AdvanceTo(read.Buffer.GetPosition(5000));
        read = await pipe.ReadAsync(TestContext.Current.CancellationToken);
        Assert.Equal(expected.Skip(5000).ToArray(), read.Buffer.ToArray());
        pipe.AdvanceTo(read.Buffer.End);
        Assert.Equal(0, pool.Outstanding);
    }

    [Fact]
    public async Task A_read_that_examined_everything_waits_for_new_bytes_and_one_that_did_not_returns_at_once()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new InputPipe(OptionsFor(pool));
        await WriteAsync(pipe, "GET / HTTP/1.1\r\n"u8.ToArray());

        var read = await pipe.ReadAsync(TestContext.Current.CancellationToken);
        // A parser that needs more: nothing consumed, everything examined.
        pipe.AdvanceTo(read.Buffer.Start, read.Buffer.End);
        var next = pipe.ReadAsync(TestContext.Current.CancellationToken).AsTask();
        await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.False(next.IsCompleted);
        Assert.False(pipe.TryRead(out _));

        await WriteAsync(pipe, "Host: x\r\n\r\n"u8.ToArray());
        read = await next.WaitAsync(Timeout, TestContext.Current.CancellationToken);
        Assert.Equal("GET / HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray(), read.Buffer.ToArray());

        // Only part examined: the rest is still there to read, at once.
        pipe.AdvanceTo(read.Buffer.GetPosition(4), read.Buffer.GetPosition(10));
        Assert.True(pipe.TryRead(out read));
        Assert.Equal(read.Buffer.Length, "GET / HTTP/1.1\r\nHost: x\r\n\r\n".Length - 4);
        pipe.AdvanceTo(read.Buffer.End);
        Assert.Equal(0, pool.Outstanding);
    }

    [Fact]
    public async Task Backpressure_counts_what_is_unexamined_so_a_reader_waiting_for_more_never_stalls_the_writer()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new InputPipe(OptionsFor(pool, pause: 10_000, resume: 5_000));
        pipe.Advance(FillAndCount(pipe.GetMemory(4096)));
        for (var written = 4096; written < 10_000; written += 4096)
        {
            pipe.Advance(FillAndCount(pipe.GetMemory(4096)));
        }

        var paused = pipe.FlushAsync().AsTask();
        Assert.False(paused.IsCompleted);

        // Examined all, consumed none (a frame not complete yet): the writer goes on.
        var read = await pipe.ReadAsync(TestContext.Current.CancellationToken);
        pipe.AdvanceTo(read.Buffer.Start, read.Buffer.End);
        Assert.False((await paused.WaitAsync(Timeout, TestContext.Current.CancellationToken)).IsCompleted);

        // Examining part of it does not release the writer until under the resume threshold.
        pipe.Advance(FillAndCount(pipe.GetMemory(4096)));
        pipe.Advance(FillAndCount(pipe.GetMemory(4096)));
        pipe.Advance(FillAndCount(pipe.GetMemory(4096)));
        paused = pipe.FlushAsync().AsTask();
        Assert.False(paused.IsCompleted);
        read = await pipe.ReadAsync(TestContext.Current.CancellationToken);
        pipe.AdvanceTo(read.Buffer.Start, read.Buffer.GetPosition(read.Buffer.Length - 6_000));
        await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.False(paused.IsCompleted);
        pipe.AdvanceTo(read.Buffer.End);
        await paused.WaitAsync(Timeout, TestContext.Current.CancellationToken);
    }

    [Fact]
    public async Task A_pending_read_ends_on_CancelPendingRead_as_cancelled_and_on_its_token_with_OperationCanceledException()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new InputPipe(OptionsFor(pool));
        var pending = pipe.ReadAsync(TestContext.Current.CancellationToken).AsTask();
        pipe.CancelPendingRead();
        Assert.True((await pending.WaitAsync(Timeout, TestContext.Current.CancellationToken)).IsCanceled);
        pipe.AdvanceTo(default(SequencePosition));

        using var cts = new CancellationTokenSource();
        pending = pipe.ReadAsync(cts.Token).AsTask();
        cts.Cancel();
        var ex = await Assert.ThrowsAnyAsync<OperationCanceledException>(() => pending.WaitAsync(Timeout, TestContext.Current.CancellationToken));
        Assert.Equal(cts.Token, ex.CancellationToken);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await pipe.ReadAsync(cts.Token));

        // The pipe still works after both.
        await WriteAsync(pipe, "x"u8.ToArray());
        var read = await pipe.ReadAsync(TestContext.Current.CancellationToken);
        Assert.Equal("x"u8.ToArray(), read.Buffer.ToArray());
        pipe.AdvanceTo(read.Buffer.End);
    }

    [Fact]
    public async Task The_writer_completing_ends_reads_and_its_error_is_thrown_by_every_read_after_it()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new InputPipe(OptionsFor(pool));
        var pending = pipe.ReadAsync(TestContext.Current.CancellationToken).AsTask();
        "tail"u8.CopyTo(pipe.GetSpan(4));
        pipe.Advance(4);
        pipe.CompleteWriter();
        var read = await pending.WaitAsync(Timeout, TestContext.Current.CancellationToken);
        Assert.True(read.IsCompleted);
        Assert.Equal("tail"u8.ToArray(), read.Buffer.ToArray());
        pipe.AdvanceTo(read.Buffer.End);
        Assert.True((await pipe.ReadAsync(TestContext.Current.CancellationToken)).IsCompleted);
        pipe.Complete();
        Assert.Equal(0, pool.Outstanding);

        pipe.Reset();
        var reset = new IOException("reset by peer");
        pending = pipe.ReadAsync(TestContext.Current.CancellationToken).AsTask();
        pipe.CompleteWriter(reset);
        Assert.Same(reset, await Assert.ThrowsAsync<IOException>(() => pending));
        Assert.Same(reset, await Assert.ThrowsAsync<IOException>(async () => await pipe.ReadAsync(TestContext.Current.CancellationToken)));
        pipe.Complete();
        pipe.Reset();
    }

    [Fact]
    public async Task The_reader_completing_keeps_the_block_a_receive_writes_into_and_the_next_flush_says_IsCompleted()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new InputPipe(OptionsFor(pool, pause: 100, resume: 50));
        await WriteAsync(pipe, new byte[10]);

        // A receive in flight: the loop holds memory of the pipe's while the application completes.
        var receiving = pipe.GetMemory(1024);
        pipe.Complete();
        Assert.Equal(1, pool.Outstanding);
        receiving.Span.Fill(7);
        pipe.Advance(receiving.Length);
        Assert.True((await pipe.FlushAsync()).IsCompleted);
        Assert.Equal(0, pool.Outstanding);

        pipe.CompleteWriter();
        pipe.Reset();

        // A flush paused by backpressure ends as IsCompleted when the reader completes.
        pipe.Advance(FillAndCount(pipe.GetMemory(200)));
        var paused = pipe.FlushAsync().AsTask();
        Assert.False(paused.IsCompleted);
        pipe.Complete();
        Assert.True((await paused.WaitAsync(Timeout, TestContext.Current.CancellationToken)).IsCompleted);
        pipe.CompleteWriter();
        Assert.Equal(0, pool.Outstanding);
    }

    [Fact]
    public async Task Consuming_everything_while_a_receive_holds_memory_keeps_that_block()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new InputPipe(OptionsFor(pool));
        await WriteAsync(pipe, new byte[100]);
        var read = await pipe.ReadAsync(TestContext.Current.CancellationToken);
        var receiving = pipe.GetMemory(1);
        pipe.AdvanceTo(read.Buffer.End);
        Assert.Equal(1, pool.Outstanding);
        receiving.Span[0] = 42;
        pipe.Advance(1);
        await pipe.FlushAsync();
        read = await pipe.ReadAsync(TestContext.Current.CancellationToken);
        Assert.Equal(new byte[] { 42 }, read.Buffer.ToArray());
        pipe.AdvanceTo(read.Buffer.End);
        Assert.Equal(0, pool.Outstanding);
    }

    [Fact]
    public async Task Positions_outside_the_last_buffer_are_refused_and_change_nothing()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new InputPipe(OptionsFor(pool));
        var other = new InputPipe(OptionsFor(pool));
        await WriteAsync(pipe, new byte[5000]);
        await WriteAsync(other, new byte[10]);
        var read = await pipe.ReadAsync(TestContext.Current.CancellationToken);
        var foreign = (await other.ReadAsync(TestContext.Current.CancellationToken)).Buffer.End;
        Assert.Throws<InvalidOperationException>(() => pipe.AdvanceTo(foreign));
        Assert.Throws<InvalidOperationException>(() => pipe.AdvanceTo(read.Buffer.End, read.Buffer.Start));
        read = await pipe.ReadAsync(TestContext.Current.CancellationToken);
        Assert.Equal(5000, read.Buffer.Length);
        pipe.AdvanceTo(read.Buffer.End);
    }

    private static int FillAndCount(Memory<byte> memory)
    {
        memory.Span.Fill(1);
        return memory.Length;
    }
}
