using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Transport.Tests.Infrastructure;
using Transport.Winsock.Engines.Sockets;

namespace Transport.Tests.Teardown;

/// <summary>
/// What TIME_WAIT does to DisconnectEx(TF_REUSE_SOCKET) on real Windows, the reason the transport recycles
/// only passive closes: the reuse disconnect of a socket whose side sent the first FIN waits TIME_WAIT out;
/// after the peer closed first it completes at once, and the next accept goes into the same handle.
/// </summary>
public sealed class WindowsReuseDisconnectTests
{
    private static readonly TimeSpan ActiveWait = TimeSpan.FromSeconds(3);

    [Fact(Skip = WinePlatform.NotRealWindows, SkipUnless = nameof(WinePlatform.IsRealWindows), SkipType = typeof(WinePlatform))]
    public async Task A_passive_close_recycles_into_the_same_handle_and_an_active_close_is_recorded()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();

        using (var activeSocket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            var active = await ServeAndDisconnectAsync(listener, activeSocket, serverClosesFirst: true, ActiveWait);
            TestContext.Current.SendDiagnosticMessage(active is { } took
                ? $"reuse disconnect after an active close (server FIN first): {took.TotalMilliseconds:0} ms"
                : $"reuse disconnect after an active close (server FIN first): still pending after {ActiveWait.TotalSeconds:0} s (TIME_WAIT)");
        }

        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        var handle = socket.Handle;
        var passive = await ServeAndDisconnectAsync(listener, socket, serverClosesFirst: false, TimeSpan.FromSeconds(10));
        TestContext.Current.SendDiagnosticMessage($"reuse disconnect after a passive close (client FIN first): {passive?.TotalMilliseconds:0} ms");
        Assert.NotNull(passive);
        Assert.True(passive < TimeSpan.FromSeconds(2), $"the passive close's reuse disconnect took {passive}");

        // The next accept goes into the same handle, and the connection works both ways.
        var again = await ServeAndDisconnectAsync(listener, socket, serverClosesFirst: false, TimeSpan.FromSeconds(10));
        Assert.Equal(handle, socket.Handle);
        Assert.NotNull(again);
    }

    /// <summary>
    /// Accepts a client into <paramref name="socket"/>, moves a byte each way, closes gracefully with the
    /// given side first, then starts the reuse disconnect: how long it took, or null if still pending
    /// after <paramref name="wait"/> (then the socket is closed, which ends it).
    /// </summary>
    private static async Task<TimeSpan?> ServeAndDisconnectAsync(Socket listener, Socket socket, bool serverClosesFirst, TimeSpan wait)
    {
        var ct = TestContext.Current.CancellationToken;
        using var acceptor = new SocketAcceptor();
        using var receiver = new SocketReceiver();
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        var connecting = client.ConnectAsync(listener.LocalEndPoint!, ct);
        await acceptor.AcceptAsync(listener, socket);
        await connecting;
        Assert.Same(socket, acceptor.AcceptSocket);

        await socket.SendAsync(new byte[] { 1 }, SocketFlags.None, ct);
        Assert.Equal(1, await client.ReceiveAsync(new byte[1], SocketFlags.None, ct));
        await client.SendAsync(new byte[] { 2 }, SocketFlags.None, ct);
        Assert.Equal(1, await receiver.ReceiveAsync(socket, new byte[1]));

        var (first, second) = serverClosesFirst ? (socket, client) : (client, socket);
        first.Shutdown(SocketShutdown.Send);
        Assert.Equal(0, await second.ReceiveAsync(new byte[1], SocketFlags.None, ct));
        second.Shutdown(SocketShutdown.Send);
        Assert.Equal(0, await first.ReceiveAsync(new byte[1], SocketFlags.None, ct));

        var disconnector = new SocketDisconnector();
        var started = Stopwatch.StartNew();
        var disconnect = disconnector.DisconnectAsync(socket).AsTask();
        if (await Task.WhenAny(disconnect, Task.Delay(wait, ct)) == disconnect)
        {
            await disconnect;
            disconnector.Dispose();
            return started.Elapsed;
        }

        // Closing the handle ends the pending disconnect, with an error or, at the last moment, without.
        socket.Dispose();
        try
        {
            await disconnect;
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
        }

        disconnector.Dispose();
        return null;
    }
}
