using System.Buffers;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Connections;

/// <summary>
/// ConnectionClosed and the input pipe's end, run on both transports the way Kestrel's shared transport
/// suite does: ours must behave as Kestrel's own Sockets transport.
/// </summary>
public sealed class ConnectionClosedTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    [Theory]
    [InlineData(TransportKind.Winsock)]
    [InlineData(TransportKind.Sockets)]
    public async Task Client_fin_fires_ConnectionClosed(TransportKind transport)
    {
        var ct = TestContext.Current.CancellationToken;
        var greeted = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await ConnectionServer.StartAsync(transport, async context =>
        {
            using var registration = context.ConnectionClosed.Register(() => closed.TrySetResult());
            var input = context.Transport.Input;
            var result = await input.ReadAtLeastAsync(5, ct);
            input.AdvanceTo(result.Buffer.End);
            // The connection is live: ConnectionClosed must not have fired yet.
            greeted.TrySetResult(context.ConnectionClosed.IsCancellationRequested);
            // Not reading: the token alone has to report the peer's FIN.
            await closed.Task.WaitAsync(Timeout, ct);
        });

        using var client = await RawClient.ConnectAsync(server.EndPoint);
        await RawClient.SendAsync(client, "hello");
        Assert.False(await greeted.Task.WaitAsync(Timeout, ct), "ConnectionClosed fired before the client closed anything");
        Assert.False(closed.Task.IsCompleted);

        client.Shutdown(SocketShutdown.Send);
        await closed.Task.WaitAsync(Timeout, ct);

        // The handler returns and the server ends its side with a FIN, having sent nothing.
        Assert.Empty(await RawClient.ReadToFinAsync(client, Timeout));
    }

    [Theory]
    [InlineData(TransportKind.Winsock)]
    [InlineData(TransportKind.Sockets)]
    public async Task Client_reset_mid_send_fires_ConnectionClosed_ends_the_pending_read_and_the_server_goes_on(TransportKind transport)
    {
        const int Sent = 16 * 1024;
        var ct = TestContext.Current.CancellationToken;
        var connections = 0;
        var firstChunkRead = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var readEnded = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);

        await using var server = await ConnectionServer.StartAsync(transport, async context =>
        {
            if (Interlocked.Increment(ref connections) > 1)
            {
                await EchoOnceAsync(context);
                return;
            }

            using var registration = context.ConnectionClosed.Register(() => closed.TrySetResult());
            using var bounded = CancellationTokenSource.CreateLinkedTokenSource(ct);
            bounded.CancelAfter(Timeout);
            readEnded.TrySetResult(await ReadUntilEndAsync(context, Sent, firstChunkRead, bounded.Token));
            // The input can end before the ConnectionClosed callbacks run (both transports fire the token
            // from the thread pool): stay registered until it fires.
            await closed.Task.WaitAsync(Timeout, ct);
        });

        var client = await RawClient.ConnectAsync(server.EndPoint);
        // The first part of a larger upload, then the client dies: an RST in the middle of the data.
        await client.SendAsync(new byte[Sent], SocketFlags.None, ct);
        await firstChunkRead.Task.WaitAsync(Timeout, ct);
        RawClient.Reset(client);

        await closed.Task.WaitAsync(Timeout, ct);
        var error = await readEnded.Task.WaitAsync(Timeout, ct);
        // Both transports complete the input with ConnectionResetException on a peer's reset.
        var reset = Assert.IsType<ConnectionResetException>(error);
        Assert.IsType<SocketException>(reset.InnerException);

        if (server.Counters is { } counters)
        {
            Assert.True(await Eventually.TrueAsync(() => counters.ConnectionResets == 1, Timeout), Eventually.Describe(counters));
            Assert.Equal(0, counters.AbortiveCloses);
        }

        // The server still serves new connections.
        using var next = await RawClient.ConnectAsync(server.EndPoint);
        await RawClient.SendAsync(next, "ping");
        next.Shutdown(SocketShutdown.Send);
        Assert.Equal("ping", Encoding.ASCII.GetString(await RawClient.ReadToFinAsync(next, Timeout)));
    }

    /// <summary>Reads the first chunk, then keeps a read pending; returns what ended it (null for a FIN).</summary>
    private static async Task<Exception?> ReadUntilEndAsync(ConnectionContext context, int firstChunk, TaskCompletionSource firstChunkRead, CancellationToken token)
    {
        var input = context.Transport.Input;
        try
        {
            var result = await input.ReadAtLeastAsync(firstChunk, token);
            input.AdvanceTo(result.Buffer.End);
            firstChunkRead.TrySetResult();
            while (!result.IsCompleted)
            {
                result = await input.ReadAsync(token);
                input.AdvanceTo(result.Buffer.End);
            }

            return null;
        }
        catch (Exception ex)
        {
            return ex;
        }
    }

    private static async Task EchoOnceAsync(ConnectionContext context)
    {
        using var bounded = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        bounded.CancelAfter(Timeout);
        var input = context.Transport.Input;
        while (true)
        {
            var result = await input.ReadAsync(bounded.Token);
            foreach (var segment in result.Buffer)
            {
                await context.Transport.Output.WriteAsync(segment, bounded.Token);
            }

            input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return;
            }
        }
    }
}
