#pragma warning disable xUnit1051, xUnit1031, CA1305 // Probes: some reads without the test's token, some waits by hand.
using System.Buffers;
using System.IO.Pipelines;
using Transport.Tests.Infrastructure;
using Transport.Winsock.Connections;
using static Transport.Tests.Infrastructure.PipeTestKit;

namespace Transport.Tests.Connections;

/// <summary>
/// What an independent review found InputPipe doing otherwise than a <see cref="Pipe"/> (the first four
/// failed on the first version): a read still pending when the reader completed never woke; a pooled
/// pipe's late read saw the next connection's bytes, and its token cancelled the next connection's read;
/// a refused position changed what the next read returned. And two stress probes it ran, kept.
/// </summary>
public sealed class InputPipeParityTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(5);

    [Fact]
    public async Task A_read_pending_when_the_reader_completes_ends_when_the_writer_completes()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new InputPipe(OptionsFor(pool));
        var pending = pipe.ReadAsync().AsTask();
        pipe.Complete();
        pipe.CompleteWriter();
        var read = await pending.WaitAsync(Timeout);
        Assert.True(read.IsCompleted);
    }

    [Fact]
    public async Task A_stale_read_from_the_previous_connection_never_gets_the_next_connections_bytes()
    {
        // The stale read's continuation is held until the pipe serves the next connection, so the read's
        // result is taken after Reset on every run (on the thread pool it may run before Reset, where a
        // completed read of nothing is the right answer and proves nothing).
        using var pool = new CountingMemoryPool(4096);
        var held = new HeldScheduler();
        var pipe = new InputPipe(OptionsFor(pool, readerScheduler: held));
        var stale = pipe.ReadAsync().AsTask();
        pipe.Complete();
        pipe.CompleteWriter();
        Assert.Equal(1, held.Count);
        pipe.Reset();

        "secret"u8.CopyTo(pipe.GetSpan(6));
        pipe.Advance(6);
        await pipe.FlushAsync();
        held.RunAll();
        var outcome = await Record.ExceptionAsync(() => stale.WaitAsync(Timeout));
        if (outcome is null)
        {
            Assert.Fail($"the previous connection's read got {stale.Result.Buffer.Length} bytes of the next connection: '{System.Text.Encoding.ASCII.GetString(stale.Result.Buffer.ToArray())}'");
        }

        Assert.IsNotType<TimeoutException>(outcome);
        Assert.True(pipe.TryRead(out var next));
        Assert.Equal("secret", System.Text.Encoding.ASCII.GetString(next.Buffer.ToArray()));
    }

    [Fact]
    public async Task The_previous_connections_read_token_does_not_cancel_the_next_connections_read()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new InputPipe(OptionsFor(pool));
        using var old = new CancellationTokenSource();
        _ = pipe.ReadAsync(old.Token).AsTask();
        pipe.Complete();
        pipe.CompleteWriter();
        pipe.Reset();

        var next = pipe.ReadAsync().AsTask();
        old.Cancel();
        "x"u8.CopyTo(pipe.GetSpan(1));
        pipe.Advance(1);
        await pipe.FlushAsync();
        var read = await next.WaitAsync(Timeout);
        Assert.Equal(1, read.Buffer.Length);
    }

    [Fact]
    public async Task A_refused_position_leaves_the_data_readable()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new InputPipe(OptionsFor(pool));
        var other = new InputPipe(OptionsFor(pool));
        await WriteAsync(pipe, new byte[100]);
        await WriteAsync(other, new byte[100]);
        _ = await pipe.ReadAsync();
        var foreign = (await other.ReadAsync()).Buffer.End;
        Assert.Throws<InvalidOperationException>(() => pipe.AdvanceTo(foreign));
        Assert.True(pipe.TryRead(out var again));
        Assert.Equal(100, again.Buffer.Length);
    }

    [Fact]
    public async Task Concurrent_writer_and_reader_keep_every_byte_in_order_and_every_block_once()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new InputPipe(OptionsFor(pool, pause: 64 * 1024, resume: 32 * 1024));
        // 16 MiB: seconds on Linux, and well inside the bound under Wine, where the CLR runs it slower.
        const long total = 16L * 1024 * 1024;
        var writer = Task.Run(async () =>
        {
            var rng = new Random(1);
            long next = 0;
            while (next < total)
            {
                var memory = pipe.GetMemory(2048);
                var n = (int)Math.Min(rng.Next(1, memory.Length + 1), total - next);
                var span = memory.Span;
                for (var i = 0; i < n; i++) span[i] = (byte)(next + i);
                if (rng.Next(4) == 0) await Task.Yield();
                pipe.Advance(n);
                next += n;
                var result = await pipe.FlushAsync();
                Assert.False(result.IsCompleted);
            }
            pipe.CompleteWriter();
        });

        var reader = Task.Run(async () =>
        {
            var rng = new Random(2);
            long expected = 0;
            while (true)
            {
                var result = await pipe.ReadAsync();
                var buffer = result.Buffer;
                var consume = buffer.Length == 0 ? 0 : rng.Next(3) switch { 0 => buffer.Length, 1 => rng.NextInt64(buffer.Length + 1), _ => 0 };
                var consumedPart = buffer.Slice(0, consume);
                foreach (var segment in consumedPart)
                {
                    foreach (var b in segment.Span)
                    {
                        if (b != (byte)expected)
                        {
                            Assert.Fail($"byte {expected} read as {b}");
                        }

                        expected++;
                    }
                }
                var examine = consume + (buffer.Length == consume ? 0 : rng.NextInt64(buffer.Length - consume + 1));
                if (examine == consume && consume == 0 && !result.IsCompleted) examine = buffer.Length;
                pipe.AdvanceTo(buffer.GetPosition(consume), buffer.GetPosition(examine));
                if (result.IsCompleted && consume == buffer.Length) break;
            }
            pipe.Complete();
            return expected;
        });

        await writer.WaitAsync(TimeSpan.FromSeconds(120));
        Assert.Equal(total, await reader.WaitAsync(TimeSpan.FromSeconds(120)));
        Assert.Equal(0, pool.Outstanding);
    }

    [Fact]
    public async Task Reads_cancelled_by_token_or_CancelPendingRead_racing_the_bytes_lose_nothing()
    {
        using var pool = new CountingMemoryPool(4096);
        var pipe = new InputPipe(OptionsFor(pool, pause: 16 * 1024, resume: 8 * 1024));
        const int total = 200_000;
        var writer = Task.Run(async () =>
        {
            var rng = new Random(3);
            var next = 0;
            while (next < total)
            {
                var n = Math.Min(rng.Next(1, 700), total - next);
                var span = pipe.GetSpan(n);
                for (var i = 0; i < n; i++) span[i] = (byte)(next + i);
                pipe.Advance(n);
                next += n;
                await pipe.FlushAsync();
                if (rng.Next(8) == 0) pipe.CancelPendingRead();
            }
            pipe.CompleteWriter();
        });
        var reader = Task.Run(async () =>
        {
            var rng = new Random(4);
            long expected = 0;
            while (true)
            {
                using var cts = new CancellationTokenSource();
                var vt = pipe.ReadAsync(cts.Token);
                if (rng.Next(3) == 0) cts.Cancel();
                ReadResult result;
                try
                {
                    result = await vt;
                }
                catch (OperationCanceledException)
                {
                    continue;
                }
                foreach (var segment in result.Buffer)
                {
                    foreach (var b in segment.Span)
                    {
                        if (b != (byte)expected)
                        {
                            Assert.Fail($"byte {expected} read as {b}");
                        }

                        expected++;
                    }
                }
                pipe.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted) break;
            }
            pipe.Complete();
            return expected;
        });
        await writer.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(total, await reader.WaitAsync(TimeSpan.FromSeconds(60)));
        Assert.Equal(0, pool.Outstanding);
    }
}
