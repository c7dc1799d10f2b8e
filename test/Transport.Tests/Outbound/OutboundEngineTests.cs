using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Transport.Tests.Infrastructure;
using Transport.Winsock;
using Transport.Winsock.Connections;
using Transport.Winsock.Engines;
using Transport.Winsock.Engines.IoUring;
using Transport.Winsock.Engines.Sockets;

namespace Transport.Tests.Outbound;

/// <summary>
/// Which engine the outbound side runs on (<see cref="WinsockOutboundOptions.Engine"/>): on Linux, where
/// io_uring runs, Auto connects on a ring of the factory's own; Sockets keeps .NET's sockets; a
/// combination that cannot work fails at construction naming the options. Real connects to a real
/// Kestrel server on 127.0.0.1.
/// </summary>
[Collection(nameof(ProcessWideTests))]
public sealed class OutboundEngineTests
{
    private const string NoIoUring = "io_uring does not run here (not Linux, or refused: seccomp, kernel.io_uring_disabled or a kernel below the floor), so the outbound side runs on .NET's sockets";

    public static bool IoUringRuns => IoUringProbe.Result.Passed && OutboundEngine.Current == WinsockEngine.Auto;

    [Fact(Skip = NoIoUring, SkipUnless = nameof(IoUringRuns))]
    public async Task Auto_connects_on_io_uring_and_the_caller_resumes_off_the_ring_thread()
    {
        await using var server = await SampleServer.StartAsync(TransportKind.Sockets);
        await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { DeferFinTimeout = TimeSpan.FromSeconds(2) });
        Assert.Equal("not decided: no connect yet", factory.Engine);

        for (var i = 0; i < 20; i++)
        {
            var connection = (WinsockConnection)await factory.ConnectAsync(new IPEndPoint(IPAddress.Loopback, server.Port), TestContext.Current.CancellationToken);
            // The connect completed on the ring thread; the caller's code must never run there.
            Assert.False(EngineThread.IsCurrent, "the caller resumed on the ring thread");
            Assert.IsType<IoUringConnectionIo>(connection.Io);
            // The connection's own local endpoint (getsockname), the one the server sees as its remote.
            var local = Assert.IsType<IPEndPoint>(connection.LocalEndPoint);
            Assert.Equal(IPAddress.Loopback, local.Address);
            Assert.NotEqual(0, local.Port);
            Assert.Equal(new IPEndPoint(IPAddress.Loopback, server.Port), connection.RemoteEndPoint);

            await connection.Transport.Output.WriteAsync(Encoding.ASCII.GetBytes("GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), TestContext.Current.CancellationToken);
            var response = await ReadToEndAsync(connection);
            Assert.StartsWith("HTTP/1.1 200", response, StringComparison.Ordinal);
            Assert.EndsWith("Hello, World!", response, StringComparison.Ordinal);
            await connection.DisposeAsync();
        }

        Assert.StartsWith("io_uring", factory.Engine, StringComparison.Ordinal);
        var c = factory.Counters;
        Assert.True(await Eventually.TrueAsync(() => c.GracefulCloses == 20, TimeSpan.FromSeconds(10)), $"graceful {c.GracefulCloses}, resets {c.ConnectionResets}, aborts {c.AbortiveCloses}");
        Assert.Equal(20, c.Connects);
        Assert.Equal(20, c.SocketsCreated);
        Assert.Equal(20, c.PeerClosedFirst);
        Assert.Equal(0, c.SocketsReused + c.ReuseDisconnects);
        Assert.StartsWith("IPv4: off: connections run on io_uring", c.ReuseStatus, StringComparison.Ordinal);
    }

    [Fact(Skip = NoIoUring, SkipUnless = nameof(IoUringRuns))]
    public async Task A_connection_still_open_when_the_factory_is_disposed_keeps_running_and_ends_with_a_fin()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(8);
        var factory = new WinsockOutboundConnectionFactory();
        var connection = await factory.ConnectAsync(listener.LocalEndPoint!, TestContext.Current.CancellationToken);
        using var peer = await listener.AcceptAsync(TestContext.Current.CancellationToken);
        Assert.StartsWith("io_uring", factory.Engine, StringComparison.Ordinal);

        await factory.DisposeAsync();
        // The ring outlives the factory while a connection is on it: bytes still move both ways.
        await Task.Delay(300, TestContext.Current.CancellationToken);
        await connection.Transport.Output.WriteAsync("ping"u8.ToArray(), TestContext.Current.CancellationToken);
        var buffer = new byte[16];
        Assert.Equal(4, await peer.ReceiveAsync(buffer, TestContext.Current.CancellationToken));
        await peer.SendAsync("pong"u8.ToArray(), TestContext.Current.CancellationToken);
        var read = await connection.Transport.Input.ReadAtLeastAsync(4, TestContext.Current.CancellationToken);
        Assert.Equal("pong", Encoding.ASCII.GetString(read.Buffer.FirstSpan[..4]));
        connection.Transport.Input.AdvanceTo(read.Buffer.End);

        // Its end is a FIN the peer reads as the end of the stream, not a reset.
        var disposal = connection.DisposeAsync().AsTask();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(10));
        Assert.Equal(0, await peer.ReceiveAsync(buffer, timeout.Token));
        peer.Shutdown(SocketShutdown.Send);
        await disposal.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        Assert.Equal(1, factory.Counters.GracefulCloses);
        // With its last connection gone, the disposed factory's ring thread ends.
        var ring = factory.RingForTests;
        Assert.NotNull(ring);
        await ring.Exited.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
    }

    [Fact(Skip = NoIoUring, SkipUnless = nameof(IoUringRuns))]
    public async Task A_failed_connect_reaches_the_caller_off_the_ring_thread_with_its_socket_error()
    {
        int port;
        using (var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            // Bound, never listening, then closed: nothing listens on the port.
            probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        }

        await using var factory = new WinsockOutboundConnectionFactory();
        for (var i = 0; i < 5; i++)
        {
            try
            {
                await factory.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), TestContext.Current.CancellationToken);
                Assert.Fail("the connect to a closed port succeeded");
            }
            catch (SocketException ex)
            {
                // The caller's handler runs here: never on the ring thread.
                Assert.False(EngineThread.IsCurrent, "the failure reached the caller on the ring thread");
                Assert.Equal(SocketError.ConnectionRefused, ex.SocketErrorCode);
            }
        }

        Assert.StartsWith("io_uring", factory.Engine, StringComparison.Ordinal);
        Assert.Equal(5, factory.Counters.ConnectFailures);
        Assert.Equal(0, factory.RingForTests!.Connections);
    }

    [Fact(Skip = NoIoUring, SkipUnless = nameof(IoUringRuns))]
    public async Task A_connect_whose_token_is_already_canceled_never_connects()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(8);
        await using var factory = new WinsockOutboundConnectionFactory();
        // The first connect decides the engine and starts the ring.
        await using (await factory.ConnectAsync(listener.LocalEndPoint!, TestContext.Current.CancellationToken))
        {
        }

        using var canceled = new CancellationTokenSource();
        canceled.Cancel();
        var ex = await Assert.ThrowsAnyAsync<OperationCanceledException>(() => factory.ConnectAsync(listener.LocalEndPoint!, canceled.Token).AsTask());
        Assert.Equal(canceled.Token, ex.CancellationToken);
        Assert.Equal(1, factory.Counters.Connects);
        Assert.Equal(1, factory.Counters.ConnectFailures);
    }

    public static bool IoUringAndIPv6Run => IoUringRuns && Socket.OSSupportsIPv6;

    [Fact(Skip = "needs io_uring and IPv6 (not Linux, io_uring refused, or no IPv6 on this host)", SkipUnless = nameof(IoUringAndIPv6Run))]
    public async Task An_IPv6_connect_on_io_uring_has_its_own_endpoints()
    {
        using var listener = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.IPv6Loopback, 0));
        listener.Listen(8);
        await using var factory = new WinsockOutboundConnectionFactory();
        await using var connection = (WinsockConnection)await factory.ConnectAsync(listener.LocalEndPoint!, TestContext.Current.CancellationToken);
        using var peer = await listener.AcceptAsync(TestContext.Current.CancellationToken);
        Assert.IsType<IoUringConnectionIo>(connection.Io);
        Assert.Equal(peer.RemoteEndPoint, connection.LocalEndPoint);
        Assert.Equal(listener.LocalEndPoint, connection.RemoteEndPoint);
        await connection.Transport.Output.WriteAsync("v6"u8.ToArray(), TestContext.Current.CancellationToken);
        var buffer = new byte[4];
        Assert.Equal(2, await peer.ReceiveAsync(buffer, TestContext.Current.CancellationToken));
    }

    [Fact]
    public async Task Sockets_keeps_the_connections_on_dotnet_sockets()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(8);
        await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = WinsockEngine.Sockets });
        await using var connection = (WinsockConnection)await factory.ConnectAsync(listener.LocalEndPoint!, TestContext.Current.CancellationToken);
        Assert.IsType<SocketConnectionIo>(connection.Io);
        Assert.Equal("sockets: WinsockOutboundOptions.Engine is Sockets", factory.Engine);
    }

    [Fact]
    public void IoUring_with_ReuseSockets_true_fails_at_construction_naming_both_options()
    {
        var ex = Assert.Throws<ArgumentException>(() => new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = WinsockEngine.IoUring, ReuseSockets = true }));
        Assert.Contains("WinsockOutboundOptions.Engine is IoUring and ReuseSockets is true", ex.Message, StringComparison.Ordinal);
        ex = Assert.Throws<ArgumentException>(() => new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = (WinsockEngine)7 }));
        Assert.Contains("WinsockOutboundOptions.Engine must be Auto, Sockets or IoUring; it was 7", ex.Message, StringComparison.Ordinal);
    }

    public static bool IoUringCannotRun => !IoUringProbe.Result.Passed;

    [Fact(Skip = "io_uring runs here, so IoUring is accepted", SkipUnless = nameof(IoUringCannotRun))]
    public void IoUring_where_it_cannot_run_fails_at_construction_naming_the_option()
    {
        var ex = Assert.Throws<NotSupportedException>(() => new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = WinsockEngine.IoUring }));
        Assert.Contains("WinsockOutboundOptions.Engine is IoUring, but io_uring cannot run here", ex.Message, StringComparison.Ordinal);
    }

    private static async Task<string> ReadToEndAsync(ConnectionContext connection)
    {
        var text = new StringBuilder();
        while (true)
        {
            var result = await connection.Transport.Input.ReadAsync(TestContext.Current.CancellationToken);
            foreach (var segment in result.Buffer)
            {
                text.Append(Encoding.ASCII.GetString(segment.Span));
            }

            connection.Transport.Input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return text.ToString();
            }
        }
    }
}
