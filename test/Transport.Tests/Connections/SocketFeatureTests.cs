using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Transport.Tests.Infrastructure;
using Transport.Winsock;
using Transport.Winsock.Engines.IoUring;

namespace Transport.Tests.Connections;

/// <summary>
/// IConnectionSocketFeature, as Kestrel's Sockets transport offers it: the connection's socket, for
/// per-connection options and TCP_INFO. On io_uring it is a Socket over a duplicate of the descriptor;
/// on the sockets engine the connection's own Socket, which is then never recycled. Either way what an
/// application kept is disposed when its connection ends, and never reaches the next connection, which
/// on io_uring usually gets the same descriptor number and on the sockets engine with reuse the same
/// Socket object.
/// </summary>
public sealed class SocketFeatureTests
{
    private const int IPPROTO_TCP = 6;
    private const int TCP_INFO = 11;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    public static bool IoUringRuns => IoUringProbe.Result.Passed;

    public static TheoryData<string> Engines()
    {
        var engines = new TheoryData<string> { nameof(WinsockEngine.Sockets) };
        if (IoUringRuns)
        {
            engines.Add(nameof(WinsockEngine.IoUring));
        }

        return engines;
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task The_feature_gives_the_connections_own_socket(string engine)
    {
        var seen = Channel.CreateUnbounded<string>();
        await using var server = await ConnectionServer.StartAsync(TransportKind.Winsock, async context =>
        {
            var feature = context.Features.Get<IConnectionSocketFeature>();
            if (feature is null)
            {
                await seen.Writer.WriteAsync("no IConnectionSocketFeature");
                return;
            }

            var socket = feature.Socket;
            var report = $"remote={socket.RemoteEndPoint} local={socket.LocalEndPoint} nodelay={socket.NoDelay}";
            if (OperatingSystem.IsLinux())
            {
                // struct tcp_info starts with tcpi_state: 1 is TCP_ESTABLISHED.
                var info = new byte[104];
                var length = socket.GetRawSocketOption(IPPROTO_TCP, TCP_INFO, info);
                report += $" tcp_info={length} state={info[0]}";
            }

            await seen.Writer.WriteAsync(report);
            await context.Transport.Output.WriteAsync("done"u8.ToArray());
        }, options => options.Engine = Enum.Parse<WinsockEngine>(engine));

        using var client = await RawClient.ConnectAsync(server.EndPoint);
        Assert.Equal("done"u8.ToArray(), await RawClient.ReadToFinAsync(client, Timeout));
        var report = await seen.Reader.ReadAsync(TestContext.Current.CancellationToken).AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken);
        Assert.Contains($"remote={client.LocalEndPoint} local={client.RemoteEndPoint} nodelay=True", report, StringComparison.Ordinal);
        if (OperatingSystem.IsLinux())
        {
            Assert.EndsWith(" state=1", report, StringComparison.Ordinal);
        }
    }

    /// <summary>
    /// Asked for after its connection was aborted (an application logging a connection the client reset),
    /// the feature answers as Kestrel's Sockets transport does: a socket, disposed once the connection's
    /// is, never a throw from the property itself (on io_uring it threw ObjectDisposedException).
    /// </summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task After_an_abort_the_feature_gives_a_disposed_socket_rather_than_throwing(string engine)
    {
        var outcome = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await ConnectionServer.StartAsync(TransportKind.Winsock, async context =>
        {
            var feature = context.Features.Get<IConnectionSocketFeature>()!;
            try
            {
                // Once the client has sent something: its connect has finished by then, and the reset
                // cannot reach it first.
                await context.Transport.Input.ReadAsync();
                context.Abort(new ConnectionAbortedException("The test aborts."));
                var until = DateTime.UtcNow + Timeout;
                while (DateTime.UtcNow < until)
                {
                    var socket = feature.Socket;
                    try
                    {
                        _ = socket.Available;
                    }
                    catch (ObjectDisposedException)
                    {
                        outcome.TrySetResult("disposed");
                        return;
                    }
                    catch (SocketException)
                    {
                    }

                    await Task.Delay(10);
                }

                outcome.TrySetResult("the socket was never disposed");
            }
            catch (Exception ex)
            {
                outcome.TrySetResult($"the property threw {ex.GetType().Name}: {ex.Message}");
            }
        }, options => options.Engine = Enum.Parse<WinsockEngine>(engine));

        using var client = await RawClient.ConnectAsync(server.EndPoint);
        await RawClient.SendAsync(client, "x");
        Assert.Equal("disposed", await outcome.Task.WaitAsync(Timeout, TestContext.Current.CancellationToken));
    }

    /// <summary>
    /// The first connection's handler keeps the socket it was given; the client closes first (on the
    /// sockets engine with reuse forced, a socket that would be recycled); then a second connection comes,
    /// and a send on the kept socket must fail as disposed and never reach the second client.
    /// </summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task A_socket_kept_after_its_connection_ended_never_reaches_the_next_connection(string engine)
    {
        var kept = new TaskCompletionSource<Socket>(TaskCreationOptions.RunContinuationsAsynchronously);
        var first = true;
        await using var server = await ConnectionServer.StartAsync(TransportKind.Winsock, async context =>
        {
            if (first)
            {
                first = false;
                kept.SetResult(context.Features.Get<IConnectionSocketFeature>()!.Socket);
            }

            await context.Transport.Output.WriteAsync("hello"u8.ToArray());
            // Until the client's FIN: the client closes first, so the sockets engine would recycle.
            while (!(await context.Transport.Input.ReadAsync()).IsCompleted)
            {
            }
        }, options =>
        {
            options.Engine = Enum.Parse<WinsockEngine>(engine);
            options.PendingAccepts = 1;
            if (options.Engine == WinsockEngine.Sockets)
            {
                options.ReuseSockets = ReusePlatform.ForcedWhereItWorks;
            }
        });

        using (var client = await RawClient.ConnectAsync(server.EndPoint))
        {
            await ReadExactlyAsync(client, "hello"u8.Length);
            client.Shutdown(SocketShutdown.Send);
            Assert.Empty(await RawClient.ReadToFinAsync(client, Timeout));
        }

        var socket = await kept.Task.WaitAsync(Timeout, TestContext.Current.CancellationToken);
        Assert.True(await Eventually.TrueAsync(() => server.Counters!.GracefulCloses >= 1, Timeout), Eventually.Describe(server.Counters!));

        // With one accept posted, a later connection's accept takes a recycled socket once one has finished
        // its reuse disconnect and reached the pool: on the sockets engine with reuse, connections go on
        // (at most 20) until one has.
        var reuseExpected = engine == nameof(WinsockEngine.Sockets) && !WinePlatform.IsWine;
        for (var i = 0; i < 20 && (i < 3 || (reuseExpected && server.Counters!.SocketsReused == 0)); i++)
        {
            if (reuseExpected)
            {
                await Eventually.TrueAsync(() => server.Counters!.PendingDisconnects == 0, Timeout);
            }

            using var next = await RawClient.ConnectAsync(server.EndPoint);
            await ReadExactlyAsync(next, "hello"u8.Length);
            Assert.Throws<ObjectDisposedException>(() => socket.Send("LEAK"u8));
            next.Shutdown(SocketShutdown.Send);
            // Nothing after this connection's own response: the kept socket reached nothing.
            Assert.Empty(await RawClient.ReadToFinAsync(next, Timeout));
            Assert.True(await Eventually.TrueAsync(() => server.Counters!.GracefulCloses >= 2 + i, Timeout), Eventually.Describe(server.Counters!));
        }

        if (reuseExpected)
        {
            // Reuse worked for the sockets that were not asked for; the first one was closed instead.
            Assert.True(server.Counters!.SocketsReused >= 1, Eventually.Describe(server.Counters!));
        }
    }

    /// <summary>
    /// An application sampling TCP_INFO on another thread while its connection ends: the response (256 KB,
    /// written after the client's FIN) still arrives whole and ends with a FIN. Disposing a socket with a
    /// call in flight makes .NET unblock it, abortively unless a shutdown of the send side was recorded,
    /// which reset the shared socket (23 of 40 such connections on io_uring before the fix, 35 of 40 on
    /// the sockets engine).
    /// </summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Sampling_TCP_INFO_while_the_connection_ends_does_not_reset_it(string engine)
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "TCP_INFO is Linux's.");
        var body = new byte[256 * 1024];
        await using var server = await ConnectionServer.StartAsync(TransportKind.Winsock, async context =>
        {
            var socket = context.Features.Get<IConnectionSocketFeature>()!.Socket;
            using var stop = new CancellationTokenSource();
            var sampler = new Thread(() =>
            {
                var info = new byte[104];
                while (!stop.IsCancellationRequested)
                {
                    try
                    {
                        socket.GetRawSocketOption(IPPROTO_TCP, TCP_INFO, info);
                    }
                    catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
                    {
                        return;
                    }
                }
            }) { IsBackground = true };
            sampler.Start();
            while (!(await context.Transport.Input.ReadAsync()).IsCompleted)
            {
            }

            await context.Transport.Output.WriteAsync(body);
            // The sampler runs on while Kestrel disposes the connection, and stops a little after.
            stop.CancelAfter(50);
        }, options => options.Engine = Enum.Parse<WinsockEngine>(engine));

        var resets = 0;
        for (var i = 0; i < 20; i++)
        {
            using var client = await RawClient.ConnectAsync(server.EndPoint);
            client.Shutdown(SocketShutdown.Send);
            try
            {
                Assert.Equal(body.Length, (await RawClient.ReadToFinAsync(client, Timeout)).Length);
            }
            catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionReset)
            {
                resets++;
            }
        }

        Assert.Equal(0, resets);
    }

    private static async Task ReadExactlyAsync(Socket socket, int count)
    {
        var buffer = new byte[count];
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(Timeout);
        var read = 0;
        while (read < count)
        {
            read += await socket.ReceiveAsync(buffer.AsMemory(read), SocketFlags.None, cts.Token);
        }
    }
}
