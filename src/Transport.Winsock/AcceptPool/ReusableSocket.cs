using System.Net.Sockets;
using Transport.Winsock.Io;
using Transport.Winsock.Teardown;

namespace Transport.Winsock.AcceptPool;

/// <summary>
/// A socket with everything that is per socket rather than per connection: its receive, send and
/// disconnect event args and its teardown deadline. The whole bundle is recycled with the socket, so a
/// reused socket's connection allocates none of them again.
/// </summary>
internal sealed class ReusableSocket : IDisposable
{
    private SocketDisconnector? _disconnector;
    private int _disposed;

    public ReusableSocket(Socket socket)
    {
        Socket = socket;
    }

    public Socket Socket { get; }

    public SocketReceiver Receiver { get; } = new();

    public SocketSender Sender { get; } = new();

    public SocketDisconnector Disconnector => _disconnector ??= new SocketDisconnector();

    public SocketDeadline Deadline { get; } = new();

    /// <summary>When its current reuse disconnect started (a Stopwatch timestamp).</summary>
    public long DisconnectStarted { get; set; }

    /// <summary>How many connections this socket has carried.</summary>
    public int Connections { get; private set; }

    public void OnAccepted() => Connections++;

    /// <summary>
    /// Closes the socket handle, which also ends any operation pending on it. An abortive close sets a
    /// zero linger first, so the peer gets an RST instead of a FIN.
    /// </summary>
    public void Close(bool abortive)
    {
        if (abortive)
        {
            try
            {
                Socket.LingerState = new LingerOption(enable: true, seconds: 0);
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                // Already closed or already reset: there is nothing left to abort.
            }
        }

        Socket.Dispose();
    }

    /// <summary>Closes the socket and frees the event args; only once no operation is pending on them.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        Socket.Dispose();
        Receiver.Dispose();
        Sender.Dispose();
        _disconnector?.Dispose();
        Deadline.Dispose();
    }
}
