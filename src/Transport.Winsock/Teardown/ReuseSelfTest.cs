using System.Net;
using System.Net.Sockets;
using Transport.Winsock.Io;

namespace Transport.Winsock.Teardown;

/// <summary>
/// Proves socket reuse on this machine before the transport trusts it: on a private loopback listener,
/// accept into a socket, move bytes both ways, close gracefully (the client first, so no TIME_WAIT holds
/// the disconnect), disconnect with reuse, accept into the same socket again and move bytes both ways
/// again; all with the transport's own event args, within a short timeout. Wine, for one, accepts into
/// such a socket but never completes the disconnect and cannot send on it afterwards.
/// <para>
/// Reuse is also declined where the runtime only emulates it: where an accept into a given socket does
/// not keep that socket's handle (.NET on Linux accepts into a new descriptor and swaps it in, and its
/// reuse disconnect opens yet another), "reusing" costs system calls and saves none.
/// </para>
/// Runs once per process; every listener shares the verdict.
/// </summary>
internal static class ReuseSelfTest
{
    internal static readonly TimeSpan Timeout = TimeSpan.FromSeconds(5);

    private static readonly Lock s_lock = new();
    private static Task<string?>? s_verdict;

    /// <summary>The verdict where the runtime only emulates reuse: expected, not a fault.</summary>
    internal const string Emulated = "the runtime emulates socket reuse here (an accept into a given socket got a new handle), so reuse would add system calls and save none";

    /// <summary>Null when reuse works; otherwise why the transport should not reuse sockets here.</summary>
    public static Task<string?> RunOnceAsync()
    {
        lock (s_lock)
        {
            return s_verdict ??= Task.Run(RunAsync);
        }
    }

    private static async Task<string?> RunAsync()
    {
        var step = "setting up a loopback listener";
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        using var acceptor = new SocketAcceptor();
        using var receiver = new SocketReceiver();
        using var sender = new SocketSender();
        using var disconnector = new SocketDisconnector();
        var deadline = Task.Delay(Timeout);
        try
        {
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen(2);
            for (var round = 1; round <= 2; round++)
            {
                using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                step = round == 1 ? "accepting into a new socket" : "accepting into the recycled socket";
                var connecting = client.ConnectAsync(listener.LocalEndPoint!);
                var handle = socket.Handle;
                await Within(acceptor.AcceptAsync(listener, socket).AsTask(), deadline).ConfigureAwait(false);
                acceptor.AcceptSocket = null;
                await Within(connecting, deadline).ConfigureAwait(false);
                if (socket.Handle != handle)
                {
                    return Emulated;
                }

                step = round == 1 ? "sending on a new socket" : "sending on the recycled socket";
                await Within(sender.SendAsync(socket, new System.Buffers.ReadOnlySequence<byte>(new byte[] { 1 })).AsTask(), deadline).ConfigureAwait(false);
                await Within(client.ReceiveAsync(new byte[1], SocketFlags.None), deadline).ConfigureAwait(false);

                step = round == 1 ? "receiving on a new socket" : "receiving on the recycled socket";
                await Within(client.SendAsync(new byte[] { 2 }, SocketFlags.None), deadline).ConfigureAwait(false);
                await Within(receiver.ReceiveAsync(socket, new byte[1]).AsTask(), deadline).ConfigureAwait(false);

                step = "closing gracefully";
                client.Shutdown(SocketShutdown.Send);
                await Within(receiver.ReceiveAsync(socket, new byte[1]).AsTask(), deadline).ConfigureAwait(false);
                HalfClose.SendFin(socket);
                await Within(client.ReceiveAsync(new byte[1], SocketFlags.None), deadline).ConfigureAwait(false);

                if (round == 1)
                {
                    step = "the reuse disconnect (DisconnectEx with TF_REUSE_SOCKET)";
                    await Within(disconnector.DisconnectAsync(socket).AsTask(), deadline).ConfigureAwait(false);
                }
            }

            return null;
        }
        catch (TimeoutException)
        {
            return $"the reuse self-test failed: {step} did not finish within {Timeout.TotalSeconds:0} s";
        }
        catch (SocketException ex)
        {
            return $"the reuse self-test failed: {step} failed with {ex.SocketErrorCode}";
        }
        catch (Exception ex) when (ex is InvalidOperationException or NotSupportedException or ObjectDisposedException)
        {
            return $"the reuse self-test failed: {step} failed: {ex.Message}";
        }
    }

    private static async Task Within(Task operation, Task deadline)
    {
        if (await Task.WhenAny(operation, deadline).ConfigureAwait(false) == deadline)
        {
            // Whatever is still pending is abandoned with its sockets, which the caller disposes.
            _ = operation.ContinueWith(static t => t.Exception, TaskScheduler.Default);
            throw new TimeoutException();
        }

        await operation.ConfigureAwait(false);
    }
}
