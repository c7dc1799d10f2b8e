using System.Net.Sockets;
using System.Security.Cryptography;
using Microsoft.AspNetCore.Connections;
using Transport.Tests.Infrastructure;
using Transport.Winsock;

namespace Transport.Tests.Connections;

/// <summary>
/// How a connection ends, as the peer sees it on the wire and as the counters record it: a graceful end
/// is a FIN after every byte and recycles the socket; an abort is an RST and the socket is never reused.
/// </summary>
public sealed class TeardownTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    [Theory]
    [InlineData(TransportKind.Winsock)]
    [InlineData(TransportKind.Sockets)]
    public async Task Graceful_end_delivers_every_byte_then_a_fin(TransportKind transport)
    {
        var payload = RandomNumberGenerator.GetBytes(1024 * 1024);
        await using var server = await ConnectionServer.StartAsync(transport, async context =>
            await context.Transport.Output.WriteAsync(payload, TestContext.Current.CancellationToken));

        using (var client = await RawClient.ConnectAsync(server.EndPoint))
        {
            // Throws on an RST; returns only after a read of 0, the FIN.
            var received = await RawClient.ReadToFinAsync(client, Timeout);
            Assert.Equal(payload.Length, received.Length);
            Assert.True(payload.AsSpan().SequenceEqual(received), "the payload arrived altered");
        }

        if (server.Counters is { } counters)
        {
            // The client closed after our FIN: this side is in TIME_WAIT, so the socket is closed, not
            // handed to a reuse disconnect that would wait it out, wherever reuse is on.
            Assert.True(await Eventually.TrueAsync(() => counters.GracefulCloses == 1 && counters.TimeWaitCloses == 1, Timeout), Eventually.Describe(counters));
            Assert.Equal(0, counters.AbortiveCloses);
            Assert.Equal(0, counters.ReuseDisconnects);
            Assert.Equal(0, counters.PooledSockets);
            Assert.Equal(ReusePlatform.ReusesByDefault, counters.ReuseActive);
        }
    }

    [NotUnderWineFact(WinePlatform.ResetReadsAsEnd)]
    public async Task Abort_reaches_the_peer_as_an_rst()
    {
        await using var server = await ConnectionServer.StartAsync(TransportKind.Winsock, async context =>
        {
            var ct = TestContext.Current.CancellationToken;
            await context.Transport.Output.WriteAsync("partial"u8.ToArray(), ct);
            // Abort once the client has spoken, so the RST cannot beat the client's connect completion.
            await context.Transport.Input.ReadAsync(ct);
            context.Abort();
        });

        using var client = await RawClient.ConnectAsync(server.EndPoint);
        await RawClient.SendAsync(client, "x");
        var reset = await Assert.ThrowsAsync<SocketException>(() => RawClient.ReadToFinAsync(client, Timeout));
        Assert.Equal(SocketError.ConnectionReset, reset.SocketErrorCode);
        Assert.True(await Eventually.TrueAsync(() => server.Counters!.AbortiveCloses == 1, Timeout), Eventually.Describe(server.Counters!));
        Assert.Equal(0, server.Counters!.GracefulCloses);
    }

    [NotUnderWineFact(WinePlatform.NoSocketReuse)]
    public async Task Abort_sends_an_rst_and_its_socket_is_never_reused()
    {
        var connection = 0;
        WinsockTransportCounters? started = null;
        await using var server = await ConnectionServer.StartAsync(
            TransportKind.Winsock,
            async context =>
            {
                var ct = TestContext.Current.CancellationToken;
                var n = Interlocked.Increment(ref connection);
                // A connection ends only once the slot has posted the next accept (into S2, S1 from the
                // pool, S3): otherwise, on a loaded machine, the slot's thread can lose the CPU long enough
                // for this connection's socket to be recycled first and taken by that very repost.
                var counters = Volatile.Read(ref started)!;
                Assert.True(
                    await Eventually.TrueAsync(() => n switch { 1 => counters.SocketsCreated == 2, 2 => counters.PooledSockets == 0, _ => counters.SocketsCreated == 3 }, Timeout),
                    $"connection {n}: the next accept was not posted: {Eventually.Describe(counters)}");
                if (n == 2)
                {
                    await context.Transport.Output.WriteAsync("partial"u8.ToArray(), ct);
                    // Abort only once the client has spoken: an RST that beats the client's connect
                    // completion surfaces as a failed connect instead of a reset read.
                    await context.Transport.Input.ReadAsync(ct);
                    context.Abort();
                    return;
                }

                // The graceful ones are passive closes, so that their sockets recycle: the client's FIN
                // comes first, then the output ends.
                await ReadToEndAsync(context.Transport.Input);
                await context.Transport.Output.WriteAsync("partial"u8.ToArray(), ct);
            },
            // One posted accept: which socket each connection gets is fully determined.
            options =>
            {
                options.PendingAccepts = 1;
                options.ReuseSockets = true;
            });
        var counters = server.Counters!;
        Volatile.Write(ref started, counters);

        // Connection 1, graceful, into new socket S1; the slot reposts into new socket S2; S1 is recycled.
        await ExpectFinAfterOursAsync(server);
        Assert.True(await Eventually.TrueAsync(() => counters.PooledSockets == 1 && counters.PendingDisconnects == 0, Timeout), Eventually.Describe(counters));
        Assert.True(counters is { SocketsCreated: 2, SocketsReused: 0 }, Eventually.Describe(counters));

        // Connection 2, aborted, on S2; the slot reposts into S1 from the pool.
        using (var aborted = await RawClient.ConnectAsync(server.EndPoint))
        {
            await RawClient.SendAsync(aborted, "x");
            var reset = await Assert.ThrowsAsync<SocketException>(() => RawClient.ReadToFinAsync(aborted, Timeout));
            Assert.Equal(SocketError.ConnectionReset, reset.SocketErrorCode);
        }

        Assert.True(await Eventually.TrueAsync(() => counters.AbortiveCloses == 1, Timeout), Eventually.Describe(counters));

        // Connection 3, graceful, on S1 (a reuse). If S2 had gone back to the pool, this accept's repost
        // would take it instead of creating S3, and S1 coming back would make two pooled sockets.
        await ExpectFinAfterOursAsync(server);
        Assert.True(await Eventually.TrueAsync(() => counters.PooledSockets >= 1 && counters.PendingDisconnects == 0, Timeout), Eventually.Describe(counters));
        Assert.True(
            counters is
            {
                ConnectionsAccepted: 3, SocketsReused: 1, SocketsCreated: 3, PooledSockets: 1, GracefulCloses: 2,
                AbortiveCloses: 1, DisconnectFailures: 0, TimeWaitCloses: 0,
            },
            Eventually.Describe(counters));
    }

    [Fact]
    public async Task App_that_stops_reading_early_still_ends_with_a_fin_not_an_rst()
    {
        var response = RandomNumberGenerator.GetBytes(32 * 1024);
        await using var server = await ConnectionServer.StartAsync(TransportKind.Winsock, async context =>
            await context.Transport.Output.WriteAsync(response, TestContext.Current.CancellationToken));
        var counters = server.Counters!;

        using var client = await RawClient.ConnectAsync(server.EndPoint);
        // Far more than the default 1 MiB read buffer, all of it unread by the application.
        var chunk = new byte[64 * 1024];
        for (var i = 0; i < 64; i++)
        {
            await client.SendAsync(chunk, SocketFlags.None, TestContext.Current.CancellationToken);
        }

        client.Shutdown(SocketShutdown.Send);
        var received = await RawClient.ReadToFinAsync(client, Timeout);
        Assert.True(response.AsSpan().SequenceEqual(received), $"got {received.Length} of {response.Length} response bytes, or altered");

        // Whether this side's FIN or the client's came first depends on how fast the discarding drain
        // reaches the client's FIN; either way the end is a FIN, not an RST.
        Assert.True(await Eventually.TrueAsync(() => counters.GracefulCloses == 1 && counters.PendingDisconnects == 0, Timeout), Eventually.Describe(counters));
        Assert.Equal(0, counters.AbortiveCloses);
        Assert.Equal(0, counters.DrainTimeouts);
    }

    [Fact]
    public async Task Input_sent_after_the_output_ended_reaches_the_application_intact()
    {
        // After the output ends the next receive is a one-byte probe for the peer's FIN; data that comes
        // instead must reach the application whole, and the rest of it by ordinary receives.
        var ct = TestContext.Current.CancellationToken;
        var upload = RandomNumberGenerator.GetBytes(256 * 1024);
        var received = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await ConnectionServer.StartAsync(TransportKind.Winsock, async context =>
        {
            await context.Transport.Output.CompleteAsync();
            var input = context.Transport.Input;
            var all = new MemoryStream();
            while (true)
            {
                var result = await input.ReadAsync(ct);
                foreach (var segment in result.Buffer)
                {
                    all.Write(segment.Span);
                }

                input.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted)
                {
                    break;
                }
            }

            received.TrySetResult(all.ToArray());
        });
        var counters = server.Counters!;

        using var client = await RawClient.ConnectAsync(server.EndPoint);
        Assert.Empty(await RawClient.ReadToFinAsync(client, Timeout));
        await client.SendAsync(upload, SocketFlags.None, ct);
        client.Shutdown(SocketShutdown.Send);

        var all = await received.Task.WaitAsync(Timeout, ct);
        Assert.Equal(upload.Length, all.Length);
        Assert.True(upload.AsSpan().SequenceEqual(all), "the input arrived altered");
        Assert.True(await Eventually.TrueAsync(() => counters.GracefulCloses == 1, Timeout), Eventually.Describe(counters));
        Assert.Equal(0, counters.AbortiveCloses);
    }

    [Fact]
    public async Task Peer_that_never_closes_hits_the_drain_timeout_and_its_socket_is_not_reused()
    {
        await using var server = await ConnectionServer.StartAsync(
            TransportKind.Winsock,
            async context => await context.Transport.Output.WriteAsync("bye"u8.ToArray(), TestContext.Current.CancellationToken),
            options =>
            {
                options.DrainTimeout = TimeSpan.FromMilliseconds(300);
                options.PendingAccepts = 1;
                options.ReuseSockets = ReusePlatform.ForcedWhereItWorks;
            });
        var counters = server.Counters!;

        // Connection 1 on new socket S1; the slot reposts into new socket S2.
        using var lingering = await RawClient.ConnectAsync(server.EndPoint);
        Assert.Equal("bye"u8.ToArray(), await RawClient.ReadToFinAsync(lingering, Timeout));
        // The client never closes its side.
        Assert.True(await Eventually.TrueAsync(() => counters.DrainTimeouts == 1, Timeout), Eventually.Describe(counters));
        // Closed under its pending receive, after our FIN, and still gracefully: .NET saw the shutdown, so
        // its close sends nothing more. An RST would make this read fail (on Linux and Windows; Wine reads
        // a later reset as end of stream too).
        Assert.Equal(0, await lingering.ReceiveAsync(new byte[1], SocketFlags.None, TestContext.Current.CancellationToken));
        Assert.Equal(1, counters.GracefulCloses);
        Assert.Equal(0, counters.PooledSockets);
        Assert.Equal(0, counters.PendingDisconnects);

        // Connection 2 on S2: with S1 closed, not pooled, the repost has to create S3. Without reuse
        // (Wine) each accept makes its own socket: two in all.
        await ExpectFinAsync(server, "bye"u8.ToArray());
        var created = counters.ReuseActive ? 3 : 2;
        Assert.True(await Eventually.TrueAsync(() => counters.SocketsCreated == created, Timeout), Eventually.Describe(counters));
        Assert.Equal(0, counters.SocketsReused);
        Assert.Equal(0, counters.AbortiveCloses);
        Assert.Equal(0, counters.DisconnectFailures);
        // Connection 2 closed first on our side: TIME_WAIT here, closed, never a reuse disconnect.
        Assert.True(await Eventually.TrueAsync(() => counters.TimeWaitCloses == 1, Timeout), Eventually.Describe(counters));
        Assert.Equal(0, counters.ReuseDisconnects);
    }

    [Fact]
    public async Task Read_backpressure_stops_receiving_at_MaxReadBufferSize_and_loses_nothing()
    {
        const int MaxRead = 64 * 1024;
        var ct = TestContext.Current.CancellationToken;
        var payload = RandomNumberGenerator.GetBytes(4 * 1024 * 1024);
        var startReading = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var firstRead = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
        var received = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);

        await using var server = await ConnectionServer.StartAsync(
            TransportKind.Winsock,
            async context =>
            {
                await startReading.Task.WaitAsync(Timeout, ct);
                var input = context.Transport.Input;
                var all = new MemoryStream();
                var result = await input.ReadAsync(ct);
                firstRead.TrySetResult(result.Buffer.Length);
                for (var reads = 0; reads < 100_000; reads++)
                {
                    foreach (var segment in result.Buffer)
                    {
                        all.Write(segment.Span);
                    }

                    input.AdvanceTo(result.Buffer.End);
                    if (result.IsCompleted)
                    {
                        break;
                    }

                    result = await input.ReadAsync(ct);
                }

                received.TrySetResult(all.ToArray());
            },
            options => options.MaxReadBufferSize = MaxRead);

        using var client = await RawClient.ConnectAsync(server.EndPoint);
        long sent = 0;
        var sending = Task.Run(
            async () =>
            {
                for (var offset = 0; offset < payload.Length; offset += 64 * 1024)
                {
                    await client.SendAsync(payload.AsMemory(offset, 64 * 1024), SocketFlags.None, ct);
                    Interlocked.Add(ref sent, 64 * 1024);
                }

                client.Shutdown(SocketShutdown.Send);
            },
            ct);

        // Let the client push until the connection is full (its sends stop progressing) or it is done.
        await WaitUntilStalledAsync(() => Interlocked.Read(ref sent), sending);
        var sentBeforeReading = Interlocked.Read(ref sent);
        Assert.True(sentBeforeReading >= 512 * 1024, $"the client got only {sentBeforeReading} bytes out: nothing to push back on");
        startReading.SetResult();

        // Everything the transport buffered while nobody read: the threshold plus at most one receive.
        var buffered = await firstRead.Task.WaitAsync(Timeout, ct);
        TestContext.Current.SendDiagnosticMessage($"backpressure: client sent {sentBeforeReading} bytes before the first read, which saw {buffered}");
        Assert.InRange(buffered, MaxRead, MaxRead + (64 * 1024));

        var all = await received.Task.WaitAsync(TimeSpan.FromSeconds(30), ct);
        await sending.WaitAsync(Timeout, ct);
        Assert.Equal(payload.Length, all.Length);
        Assert.True(payload.AsSpan().SequenceEqual(all), "the upload arrived altered");
    }

    /// <summary>A connection whose handler writes and returns: the client reads up to the FIN, then closes.</summary>
    private static async Task ExpectFinAsync(ConnectionServer server, byte[] expected)
    {
        using var client = await RawClient.ConnectAsync(server.EndPoint);
        Assert.Equal(expected, await RawClient.ReadToFinAsync(client, Timeout));
    }

    /// <summary>A passive close: the client sends its FIN first, then reads the server's output and FIN.</summary>
    private static async Task ExpectFinAfterOursAsync(ConnectionServer server)
    {
        using var client = await RawClient.ConnectAsync(server.EndPoint);
        client.Shutdown(SocketShutdown.Send);
        Assert.Equal("partial"u8.ToArray(), await RawClient.ReadToFinAsync(client, Timeout));
    }

    /// <summary>Reads and discards the input until the peer's FIN ends it.</summary>
    internal static async Task ReadToEndAsync(System.IO.Pipelines.PipeReader input)
    {
        while (true)
        {
            var result = await input.ReadAsync(TestContext.Current.CancellationToken);
            input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return;
            }
        }
    }

    private static async Task WaitUntilStalledAsync(Func<long> progress, Task done)
    {
        var last = -1L;
        var unchanged = 0;
        for (var polls = 0; polls < 100 && unchanged < 3 && !done.IsCompleted; polls++)
        {
            await Task.Delay(100, TestContext.Current.CancellationToken);
            var now = progress();
            unchanged = now == last ? unchanged + 1 : 0;
            last = now;
        }
    }
}
